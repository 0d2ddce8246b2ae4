"""`diffpose-bench lift` against evaluation on the same frames of the stand-in: the exact path (our 17 joints in
pixels) to numerical precision, MMPose's COCO JSON within the stated tolerance of the COCO mapping, video
lifters' edge-padded windows, DiffPose's hypotheses' spread, the rendering; and the speed benchmark's device."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MOCAP_ROOT
from PIL import Image
from test_keypoints import mmpose_video, ours_to_coco

from benchmark.cli import main
from diffpose import metrics
from diffpose.config import Config
from diffpose.data.camera import image_coordinates
from diffpose.data.keypoints import coco_to_ours, read_keypoints
from diffpose.data.skeleton import flip_permutation
from diffpose.data.store import PoseStore, Sampler, mirror
from diffpose.lift import lift
from diffpose.lifters import build_lifter, encoder_network
from diffpose.train import checkpoint_config, evaluate_rows, fit, load_checkpoint, load_lifter, predict_rows
from reports.animation import PT_PER_MM_SPREAD, PT_PER_PX_SIGMA, RADIUS_PT, ffmpeg_available, save_png, scene

SUBJECT, ACTION, CAMERA = "cmu02", "Running 02_03", 0     # a test-split clip of 71 frames, camera 0: 1000 x 1002
TINY = {"train.epochs": 2, "train.steps_per_epoch": 15, "train.batch_size": 256, "train.val_max_frames": 300,
        "data.eval_stride": 50, "train.eval_batch_size": 1024, "model.hidden": 32, "train.threads": 1,
        "train.lr": 2e-3}
# On the CPU whatever the machine: these compare with evaluation on the CPU to its precision (the CUDA test
# below compares across devices).
NO_ANIMATION = ["--animation", "none", "--threads", "1", "--device", "cpu"]


def trained(store: Path, out: Path, **more) -> Path:
    cfg = Config().override({"data.store": str(store), **TINY, **more})
    return fit(cfg, out, cache=out.parent / "encoders", progress=False).best_checkpoint


@pytest.fixture(scope="module")
def graformer(mocap_store, tmp_path_factory) -> Path:
    return trained(mocap_store, tmp_path_factory.mktemp("lift") / "graformer", **{"model.lifter": "graformer"})


@pytest.fixture(scope="module")
def clip(mocap_store) -> tuple[PoseStore, np.ndarray, int, int]:
    """The store, the clip's rows, and its camera's image size (the cameras json: the store keeps none)."""
    store = PoseStore.open(mocap_store)
    rows = np.flatnonzero((store.subject == store.subjects.index(SUBJECT))
                          & (store.action == store.actions.index(ACTION)) & (store.camera == CAMERA))
    intrinsics = json.loads((MOCAP_ROOT / "cameras_cmu_mocap17.json").read_text())["intrinsics"][CAMERA]
    return store, rows, intrinsics["res_w"], intrinsics["res_h"]


def evaluation(checkpoint: Path, store: PoseStore, rows: np.ndarray, **changes) -> tuple[dict, dict]:
    """predict_rows and evaluate_rows of the checkpoint on ``rows`` of the store, as `evaluate` runs them."""
    state = load_checkpoint(checkpoint)
    cfg = checkpoint_config(state, checkpoint)
    cfg = cfg.for_evaluation(changes) if changes else cfg
    lifter = build_lifter(cfg, encoder_network(cfg) if cfg.uses_encoder else None)
    lifter.load_state_dict(state["model"])
    sampler = Sampler(store, frames=cfg.data.frames, kernels=cfg.data.kernels)
    pred = predict_rows(lifter, sampler, rows, cfg, generator_seed=cfg.train.seed)
    return pred, evaluate_rows(lifter, sampler, store, rows, cfg, generator_seed=cfg.train.seed)


def p1_mm(pose: np.ndarray, target: torch.Tensor) -> float:
    return float(metrics.mpjpe(torch.from_numpy(pose), target).mean() * metrics.MM_PER_M)


def pixels(store: PoseStore, rows: np.ndarray, width: int, height: int) -> np.ndarray:
    """The clip's detections in pixels: normalize_screen inverted with its camera's size."""
    return image_coordinates(torch.from_numpy(store.pose_2d[rows].astype(np.float64)), width, height).numpy()


def lifted(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "lifted.npz") as f:
        return {k: f[k] for k in f.files}


def test_our_joints_in_pixels_lift_as_evaluation_does(graformer, clip, tmp_path, capsys):
    store, rows, width, height = clip
    path = tmp_path / "clip.npz"
    np.savez(path, keypoints=pixels(store, rows, width, height), image_size=np.array([width, height]))
    out = tmp_path / "out"
    assert main(["lift", str(graformer), "--keypoints", str(path), "--out", str(out), *NO_ANIMATION]) == 0
    assert "lifted 71 frames" in capsys.readouterr().out
    got = lifted(out)
    pred, ev = evaluation(graformer, store, rows)
    assert got["pose"].shape == (71, 17, 3) and "spread" not in got
    diff_mm = np.abs(got["pose"] - pred["pose"].numpy()).max() * 1000
    p1 = p1_mm(got["pose"], pred["target"])
    print(f"exact path: max |lift - evaluation| {diff_mm:.2e} mm; P1 {p1:.4f} mm vs evaluation {ev['p1_frames']:.4f}")
    assert diff_mm < 1e-3                                        # float32 pixels round trip: 1e-4 mm measured
    assert abs(p1 - ev["p1_frames"]) < 1e-3
    summary = json.loads((out / "lifted.json").read_text())
    assert summary["format"] == "npz" and summary["image_size"] == [width, height] and summary["frames"] == 71
    assert (out / "lifted_frame00035.png").is_file() and not (out / "lifted.gif").exists()
    assert np.allclose(got["pose_2d"], pixels(store, rows, width, height), atol=1e-3)


def test_mmpose_coco_json_of_the_clip_lifts_within_the_mappings_tolerance(graformer, clip, tmp_path, capsys):
    """Our joints written as MMPose's COCO JSON (test_keypoints.ours_to_coco) and mapped back: every joint
    returns but pelvis, spine and thorax, which become the means of the hips and shoulders. On this clip that
    moves those 2D inputs by about 4.5, 8.7 and 16 px (the rig's thorax is not the shoulders' midpoint). The
    COCO lift is the exact lift of that mapped-back 2D, to numerical precision; against evaluation on the
    rig's own 2D the difference is the mapping's alone: measured 8.9 mm mean per-joint 3D shift and +0.1 mm
    P1 here (13-14 mm and +0.1 to +1.4 mm with a GraFormer trained 8x longer, on this clip and
    Walking 02_01). Tolerances: 25 mm and 5 mm."""
    store, rows, width, height = clip
    ours = pixels(store, rows, width, height)
    coco = ours_to_coco(ours)
    path = tmp_path / "clip.json"
    path.write_text(json.dumps(mmpose_video(coco, np.full((len(rows), 17), 0.95))))
    out = tmp_path / "out"
    assert main(["lift", str(graformer), "--keypoints", str(path), "--out", str(out), "--width", str(width),
                 "--height", str(height), *NO_ANIMATION]) == 0
    capsys.readouterr()
    got = lifted(out)
    mapped = tmp_path / "mapped.npz"
    np.savez(mapped, keypoints=coco_to_ours(coco)[0], image_size=np.array([width, height]))
    exact = lift(graformer, read_keypoints(mapped), device="cpu")
    assert np.abs(got["pose"] - exact.pose).max() < 1e-5           # the JSON path adds nothing to the mapping
    pred, ev = evaluation(graformer, store, rows)
    moved_px = np.linalg.norm(got["pose_2d"] - ours, axis=-1)           # (T, 17): the mapping's 2D change
    assert moved_px[:, [j for j in range(17) if j not in (0, 7, 8)]].max() < 1e-3
    shift_mm = float(np.linalg.norm(got["pose"] - pred["pose"].numpy(), axis=-1).mean() * 1000)
    p1 = p1_mm(got["pose"], pred["target"])
    print(f"COCO path: 2D moved at pelvis/spine/thorax by {moved_px[:, [0, 7, 8]].mean(0).round(2)} px (mean); "
          f"3D {shift_mm:.2f} mm from evaluation's (mean per joint); P1 {p1:.2f} mm vs evaluation "
          f"{ev['p1_frames']:.2f} mm")
    assert shift_mm < 25.0 and abs(p1 - ev["p1_frames"]) < 5.0


def test_video_lifters_read_edge_padded_windows_as_evaluation_does(mocap_store, clip, tmp_path, capsys):
    store, rows, width, height = clip
    ckpt = trained(mocap_store, tmp_path / "mixste", **{"model.lifter": "mixste", "data.frames": 9,
                                                        "model.hidden": 16, "model.blocks": 1, "model.heads": 2})
    path = tmp_path / "clip.csv"
    path.write_text("\n".join(",".join(f"{v:.17g}" for v in f.ravel()) for f in pixels(store, rows, width, height)))
    for mode in ("sliding", "chunks"):
        out = tmp_path / mode
        assert main(["lift", str(ckpt), "--keypoints", str(path), "--out", str(out), "--width", str(width),
                     "--height", str(height), "--set", f'data.eval_mode="{mode}"', *NO_ANIMATION]) == 0
        got = lifted(out)["pose"]
        pred, _ = evaluation(ckpt, store, rows, **{"data.eval_mode": mode})
        assert np.abs(got - pred["pose"].numpy()).max() < 1e-5, mode
    capsys.readouterr()
    # The first frame's window by hand: frame 0 repeated four times, then frames 0..4 (edge padding), and
    # MixSTE's flip test (its published default): the mirrored window's pose mirrored back, averaged in.
    lifter = load_lifter(ckpt)[0].eval()
    perm = torch.from_numpy(flip_permutation())
    window = torch.from_numpy(store.pose_2d[rows[[0, 0, 0, 0, 0, 1, 2, 3, 4]]])[None]     # (1, 9, 17, 2)
    with torch.no_grad():
        centre = 0.5 * (lifter.net(window)[0, 4] + mirror(lifter.net(mirror(window, perm))[0, 4], perm))
    first = lifted(tmp_path / "sliding")["pose"][0]
    assert np.abs(first - (centre - centre[:1]).numpy()).max() < 1e-5


def test_diffpose_hypotheses_spread_from_a_store_clip(mocap_store, clip, tmp_path, capsys):
    store, rows, _, _ = clip
    ckpt = trained(mocap_store, tmp_path / "diffpose", **{"encoder.hidden": 32, "encoder.epochs": 1,
                                                          "train.steps_per_epoch": 3})
    out = tmp_path / "out"
    assert main(["lift", str(ckpt), "--keypoints", str(mocap_store), "--subject", SUBJECT, "--action", ACTION,
                 "--camera", str(CAMERA), "--out", str(out), "--set", "sample.hypotheses=4", *NO_ANIMATION]) == 0
    assert "hypotheses' spread" in capsys.readouterr().out
    got = lifted(out)
    pred, ev = evaluation(ckpt, store, rows, **{"sample.hypotheses": 4})
    spread = metrics.joint_spread(pred["hypotheses"]).numpy()
    assert got["spread"].shape == (71, 17) and (got["spread"][:, 1:] > 0).all()
    assert np.abs(got["pose"] - pred["pose"].numpy()).max() < 1e-5
    assert np.abs(got["spread"] - spread).max() < 1e-5
    assert abs(p1_mm(got["pose"], pred["target"]) - ev["p1_frames"]) < 1e-3
    assert json.loads((out / "lifted.json").read_text())["hypotheses"] == 4


def test_the_animation_and_the_png_with_uncertain_joints_drawn_wider(graformer, clip, tmp_path, capsys):
    store, rows, width, height = clip
    path = tmp_path / "short.npz"
    np.savez(path, keypoints=pixels(store, rows[:6], width, height), image_size=np.array([width, height]))
    out = tmp_path / "out"
    assert main(["lift", str(graformer), "--keypoints", str(path), "--out", str(out), "--frame", "2",
                 "--animation", "gif", "--threads", "1", "--device", "cpu"]) == 0
    capsys.readouterr()
    with Image.open(out / "lifted.gif") as gif:
        assert gif.n_frames == 6
    with Image.open(out / "lifted_frame00002.png") as png:
        assert png.size == (1000, 500)
    # The markers: 3 pt + 0.1 pt per mm of spread in 3D, + 0.3 pt per pixel of sigma in 2D (5 px: 4.5 pt).
    from reports.animation import _Drawing

    kp = read_keypoints(path)
    result = lift(graformer, kp, device="cpu")
    spread = np.zeros((6, 17))
    spread[:, 13] = 0.05                                             # 50 mm at the left wrist
    picture = scene(dataclasses.replace(result, spread=spread), kp)
    drawing = _Drawing(picture, 50)
    drawing.draw(0)
    sizes = [m.get_markersize() for m in drawing.joints3]
    assert sizes[13] == pytest.approx(2 * (RADIUS_PT + PT_PER_MM_SPREAD * 50.0)) and sizes[12] == 2 * RADIUS_PT
    assert [m.get_markersize() for m in drawing.joints2][0] == pytest.approx(2 * (RADIUS_PT + PT_PER_PX_SIGMA * 5.0))
    save_png(picture, 0, tmp_path / "wide.png")


@pytest.mark.skipif(not ffmpeg_available(), reason="no ffmpeg")
def test_an_mp4_where_ffmpeg_exists(graformer, clip, tmp_path, capsys):
    store, rows, width, height = clip
    path = tmp_path / "short.npz"
    np.savez(path, keypoints=pixels(store, rows[:4], width, height), image_size=np.array([width, height]))
    assert main(["lift", str(graformer), "--keypoints", str(path), "--out", str(tmp_path / "o"), "--animation",
                 "mp4"]) == 0
    assert (tmp_path / "o" / "lifted.mp4").stat().st_size > 0


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_lift_on_each_device_matches_the_cpus_evaluation(graformer, clip, device):
    store, rows, _, _ = clip
    kp = read_keypoints(store.path, subject=SUBJECT, action=ACTION, camera=CAMERA)
    got = lift(graformer, kp, device=device)
    pred, _ = evaluation(graformer, store, rows)
    assert got.device.startswith(device)
    assert np.abs(got.pose - pred["pose"].numpy()).max() < (1e-5 if device == "cpu" else 1e-3)


# ---- the speed benchmark names and measures the device it runs on -----------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_bench_lifter_runs_on_the_device_and_records_its_peak_memory(mocap_store, device):
    from benchmark.speed import bench_lifter

    store = PoseStore.open(mocap_store)
    cfg = Config().override({"data.store": str(mocap_store), "model.lifter": "graformer", "model.hidden": 16})
    r = bench_lifter(cfg, store, batch_size=8, repeats=1, warmup=0, device=torch.device(device))
    assert r["batch_size"] == 8 and r["train_samples_per_second"] > 0 and r["inference_poses_per_second"] > 0
    assert ("peak_gpu_memory_mib" in r) == (device == "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_bench_names_the_cuda_device():
    from benchmark.speed import device_info

    info = device_info(torch.device("cuda"))
    assert info["type"] == "cuda" and info["name"] == torch.cuda.get_device_name(0) and info["autocast"] == "bf16"
    assert info["bf16_matmul_peak_gflops"] > info["fp32_matmul_peak_gflops"] > 0
