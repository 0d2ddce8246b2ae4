"""Video-based lifting: windows at clip edges, chunked and sliding evaluation, MPJVE, the temporal lifters'
config and construction, and DiffPose's MixSTE encoder reading the whole window."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diffpose.config import Config, ConfigError
from diffpose.data.source import Clip, SourceInfo
from diffpose.data.store import Batch, PoseStore, Sampler, write_store
from diffpose.lifters import DiffPose, Lifter, Prediction, SequenceLifter, build_lifter, encoder_network
from diffpose.models.temporal import MixSTE, VideoPose3D
from diffpose.train import chunk_windows, consecutive_pairs, evaluate_rows

LENGTHS = (10, 12, 2, 7)  # frames of the four clips, in store order; the third is shorter than any window


def _clip(action: str, camera: int, frames: int, rng: np.random.Generator) -> Clip:
    pose_3d = rng.normal(0, 0.3, (frames, 17, 3)).astype(np.float32) + np.array([0, 0, 5], np.float32)
    pose_2d = rng.uniform(0, 1000, (frames, 17, 2)).astype(np.float32)
    gmm = np.zeros((frames, 17, 2, 5), np.float32)
    gmm[..., 0] = [0.7, 0.3]
    gmm[..., 1:3] = pose_2d[:, :, None] + rng.normal(0, 5, (frames, 17, 2, 2))
    gmm[..., 3:5] = 4.0
    return Clip(subject="A", action=action, camera=camera, width=1000, height=1000, pose_2d=pose_2d, gmm=gmm,
                pose_3d=pose_3d, world_3d=None, valid=np.ones(frames, bool))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> PoseStore:
    """Four clips of random poses, back to back in the store: rows 0-9, 10-21, 22-23, 24-30."""
    rng = np.random.default_rng(0)
    names = [("Walk 1", 0), ("Walk 1", 1), ("Sit 2", 0), ("Eat", 0)]
    clips = [_clip(a, c, n, rng) for (a, c), n in zip(names, LENGTHS, strict=True)]
    info = SourceInfo(dataset="toy", detector="synth", splits={"train": ("A",), "test": ()}, fps=50.0,
                      files=())
    out = tmp_path_factory.mktemp("video") / "store"
    write_store(info, clips, out, default_val=())
    return PoseStore.open(out)


def _first_rows() -> np.ndarray:
    return np.cumsum((0,) + LENGTHS[:-1])


# ---- windows -----------------------------------------------------------------------------------------------
def test_every_window_is_centred_on_its_row_and_stays_in_its_clip(store):
    sampler = Sampler(store, frames=7)
    rows = torch.arange(len(store))
    win = sampler.window_rows(rows)                                          # (N, 7)
    assert win.shape == (len(store), 7)
    assert torch.equal(win[:, 3], rows)                                      # centred
    clip = torch.from_numpy(store.clip.astype(np.int64))
    assert torch.equal(clip[win], clip[rows, None].expand_as(win))          # never in the neighbouring clip
    assert torch.all(torch.diff(win, dim=1) >= 0)                            # in frame order, edges repeated
    # the first frame of the second clip repeats itself instead of reaching back into the first clip
    assert win[10].tolist() == [10, 10, 10, 10, 11, 12, 13]
    assert win[9].tolist() == [6, 7, 8, 9, 9, 9, 9]
    # a clip shorter than the window is padded at both ends by its own edge frames
    assert win[22].tolist() == [22, 22, 22, 22, 23, 23, 23]
    assert win[23].tolist() == [22, 22, 22, 23, 23, 23, 23]


def test_window_batches_gather_the_padded_frames_without_copying_the_store(store):
    sampler = Sampler(store, frames=27)
    assert sampler.pose_2d.shape == (len(store), 17, 2)                      # one copy, whatever T
    batch = sampler.batch(torch.tensor([0, 15]))
    assert batch.pose_2d.shape == (2, 27, 17, 2) and batch.pose_3d.shape == (2, 27, 17, 3)
    assert batch.gmm_2d.shape == (2, 27, 17, 2, 5) and batch.sigma_2d.shape == (2, 27, 17, 2)
    p2d = torch.from_numpy(store.pose_2d)
    # row 0 (frame 0 of a 10-frame clip): frames -13..13 clamped to 0..9, i.e. frame 0 fourteen times,
    # frames 1..9, then frame 9 four more times
    expect = torch.cat([p2d[0].expand(14, 17, 2), p2d[1:10], p2d[9].expand(4, 17, 2)])
    torch.testing.assert_close(batch.pose_2d[0], expect)
    torch.testing.assert_close(batch.pose_3d[1, 13], torch.from_numpy(store.pose_3d[15]))


# ---- chunked evaluation windows ----------------------------------------------------------------------------
def test_chunk_windows_tile_each_clip_and_end_the_last_one_at_the_clip_end(store):
    first = _first_rows()
    centres, lo, hi = chunk_windows(store, np.arange(len(store)), frames=3)
    # clip of 10: windows start at 0, 3, 6 and 7 (the last ends at frame 9); it owns frame 9 only
    # clip of 12: 0, 3, 6, 9; clip of 2: one window centred on its last frame; clip of 7: 0, 3, 4
    assert (store.frame[centres]).tolist() == [1, 4, 7, 8, 1, 4, 7, 10, 1, 1, 4, 5]
    assert lo.tolist() == [0, 3, 6, 9, 0, 3, 6, 9, 0, 0, 3, 6]
    assert hi.tolist() == [3, 6, 9, 10, 3, 6, 9, 12, 2, 3, 6, 7]
    assert store.clip[centres].tolist() == [0] * 4 + [1] * 4 + [2] + [3] * 3
    # every frame is owned by exactly one window
    assert int((hi - lo).sum()) == len(store)
    # only the windows that own requested rows
    c, lo, hi = chunk_windows(store, np.array([first[0] + 4, first[0] + 5, first[3] + 6]), frames=3)
    assert c.tolist() == [first[0] + 4, first[3] + 5] and lo.tolist() == [3, 6] and hi.tolist() == [6, 7]


class Oracle(Lifter):
    """Returns the windows' own targets: any mix-up of rows, windows or mirroring shows as a non-zero error.
    ``offset`` (metres per frame) drifts joint 5 along x with the frame number."""

    def __init__(self, store: PoseStore, offset: float = 0.0):
        super().__init__()
        self.frame = torch.from_numpy(store.frame.astype(np.float32))
        self.offset = offset
        self.windows: list[torch.Tensor] = []

    def _drift(self, pose: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        out = pose.clone()
        out[..., 5, 0] += self.offset * frames
        return out

    def predict(self, batch: Batch, generator: torch.Generator) -> Prediction:
        self.windows.append(batch.rows)
        t = batch.pose_3d.shape[1]
        return Prediction(pose=self._drift(batch.pose_3d[:, t // 2], self.frame[batch.rows]))

    def predict_frames(self, batch: Batch, generator: torch.Generator) -> Prediction:
        self.windows.append(batch.rows)
        t = batch.pose_3d.shape[1]
        frames = self.frame[batch.rows, None] - t // 2 + torch.arange(t)
        return Prediction(pose=self._drift(batch.pose_3d, frames))


@pytest.mark.parametrize("mode", ["sliding", "chunks"])
@pytest.mark.parametrize("flip_test", [False, True])
def test_every_row_gets_its_own_frame_in_either_evaluation_mode(store, mode, flip_test):
    cfg = Config().override({"data.frames": 5, "data.eval_mode": mode, "data.flip_test": flip_test,
                             "train.eval_batch_size": 12})
    rows = np.arange(len(store))
    oracle = Oracle(store)
    out = evaluate_rows(oracle, Sampler(store, frames=5), store, rows, cfg)
    assert out["frames"] == len(store)
    assert out["p1"] < 1e-4 and out["p2"] < 1e-3 and out["mpjve"] < 1e-4   # mm
    windows = torch.cat(oracle.windows).unique()
    # sliding: one window per row; chunks: ceil(L / 5) per clip (2 + 3 + 1 + 2), on flipped input too
    assert len(windows) == (len(store) if mode == "sliding" else 8)
    assert len(torch.cat(oracle.windows)) == len(windows) * (2 if flip_test else 1)


def test_a_lifter_with_one_output_per_window_is_evaluated_sliding(store):
    cfg = Config().override({"data.frames": 27, "data.eval_mode": "chunks", "model.lifter": "videopose3d",
                             "model.hidden": 16})
    lifter = build_lifter(cfg)
    assert isinstance(lifter, SequenceLifter) and not lifter.predicts_frames
    out = evaluate_rows(lifter, Sampler(store, frames=27), store, np.arange(len(store)), cfg)
    assert out["frames"] == len(store) and np.isfinite(out["p1"])


# ---- MPJVE -------------------------------------------------------------------------------------------------
def test_consecutive_pairs_stay_within_a_clip_and_skip_gaps(store):
    first = _first_rows()
    rows = np.array([0, 1, 2, 5, 6, 9, 10, 11, 22])  # 9 -> 10 and 11 -> 22 cross clips; 2 -> 5 is a gap
    assert consecutive_pairs(store, rows).tolist() == [0, 1, 3, 6]
    assert first[1] == 10 and first[2] == 22
    assert consecutive_pairs(store, np.arange(0, len(store), 2)).tolist() == []


def test_mpjve_of_a_drifting_joint_is_its_speed_over_the_joints(store):
    """Joint 5 drifts by 3 mm per frame, the others are exact: the velocity error is 3 mm on one joint of 17
    in every pair of consecutive frames, so MPJVE = 3 / 17 mm/frame in every action and overall."""
    cfg = Config().override({"data.frames": 3})
    sampler = Sampler(store, frames=3)
    out = evaluate_rows(Oracle(store, offset=0.003), sampler, store, np.arange(len(store)), cfg)
    assert out["mpjve"] == pytest.approx(3 / 17, rel=1e-4)
    assert out["mpjve_frames"] == pytest.approx(3 / 17, rel=1e-4)
    assert {a: m["mpjve"] for a, m in out["per_action"].items()} == pytest.approx(
        {a: 3 / 17 for a in out["per_action"]}, rel=1e-4)
    assert out["p1"] > 0.1  # positions are off; only the velocity is exactly known
    strided = evaluate_rows(Oracle(store, offset=0.003), sampler, store, np.arange(0, len(store), 2), cfg)
    assert "mpjve" not in strided  # no consecutive frames at stride 2


# ---- config and construction -------------------------------------------------------------------------------
def test_videopose3d_takes_its_filter_widths_from_the_window_and_rejects_other_lengths(store):
    with pytest.raises(ConfigError, match="data.frames must be a receptive field of VideoPose3D"):
        Config().override({"model.lifter": "videopose3d"})
    with pytest.raises(ConfigError, match="data.frames"):
        Config().override({"model.lifter": "videopose3d", "data.frames": 25})
    for frames, widths in ((27, (3, 3, 3)), (81, (3, 3, 3, 3)), (243, (3, 3, 3, 3, 3))):
        cfg = Config().override({"model.lifter": "videopose3d", "data.frames": frames, "model.hidden": 8})
        net = build_lifter(cfg).net
        assert isinstance(net, VideoPose3D) and net.filter_widths == widths and net.receptive_field == frames
        assert net.expand.out_channels == 8


def test_mixste_takes_width_depth_heads_and_window_from_the_config(store):
    cfg = Config().override({"model.lifter": "mixste", "data.frames": 9, "model.hidden": 24,
                             "model.blocks": 3, "model.heads": 6})
    net = build_lifter(cfg).net
    assert isinstance(net, MixSTE) and net.frames == 9 and len(net.spatial) == 3
    assert net.embedding.out_features == 24 and net.spatial[0].attention.heads == 6
    published = Config().override({"model.lifter": "mixste"}).model
    assert (published.hidden, published.blocks, published.heads, published.dropout) == (512, 8, 8, 0.0)


def test_the_encoder_takes_its_lifters_defaults_and_a_video_encoder_keeps_the_window():
    video = Config().override({"encoder.lifter": "mixste", "data.frames": 27})
    assert (video.encoder.hidden, video.encoder.blocks, video.encoder.heads) == (512, 8, 8)
    enc = video.encoder_config()
    assert enc.model.lifter == "mixste" and enc.data.frames == 27 and enc.model.hidden == 512
    small = Config().override({"encoder.lifter": "mixste", "encoder.hidden": 64, "encoder.heads": 4})
    assert (small.encoder.hidden, small.encoder.blocks, small.encoder.heads) == (64, 8, 4)
    assert small.override({"encoder.lifter": "graformer"}).encoder.hidden == 96  # back to GraFormer's
    frame = Config().override({"data.frames": 27})  # a GraFormer encoder is trained on single frames
    assert frame.encoder_config().data.frames == 1
    assert Config() == Config.from_dict(Config().to_dict())  # the defaults are GraFormer's, as before
    with pytest.raises(ConfigError, match="data.eval_mode"):
        Config().override({"data.eval_mode": "whole"})
    with pytest.raises(ConfigError, match="encoder.hidden"):
        Config().override({"encoder.lifter": "mixste", "encoder.hidden": 100})


# ---- DiffPose with a MixSTE encoder ------------------------------------------------------------------------
def _video_diffpose(store: PoseStore, encoder: str, mode: str) -> DiffPose:
    overrides = {"encoder.lifter": encoder, "data.frames": 5, "encoder.hidden": 16, "encoder.blocks": 1,
                 "encoder.heads": 4, "model.hidden": 16, "model.blocks": 1, "model.dropout": 0.0}
    if mode == "refiner":
        overrides |= {"diffusion.mode": "refiner", "diffusion.gmm": False, "diffusion.predict": "noise",
                      "diffusion.t_start": 12, "diffusion.steps": 2, "diffusion.schedule": "linear",
                      "diffusion.train_steps": 51, "diffusion.beta_end": 1e-3}
    torch.manual_seed(0)
    cfg = Config().override(overrides)
    lifter = build_lifter(cfg, encoder_network(cfg))
    lifter.fit_statistics(store, np.arange(len(store)), torch.Generator().manual_seed(0))
    return lifter.eval()


@pytest.mark.parametrize("mode", ["paper", "refiner"])
def test_a_mixste_encoder_reads_the_whole_window_a_graformer_encoder_only_its_centre(store, mode):
    sampler = Sampler(store, frames=5)
    batch = sampler.batch(torch.arange(8))
    moved = dataclasses.replace(batch, pose_2d=batch.pose_2d.clone())
    moved.pose_2d[:, 0] += 0.2                                               # the window's first frame only

    def predict(lifter: DiffPose, b: Batch) -> torch.Tensor:
        with torch.inference_mode():
            return lifter.predict(b, torch.Generator().manual_seed(0)).pose

    video = _video_diffpose(store, "mixste", mode)
    assert video.temporal_encoder and isinstance(video.encoder, MixSTE)
    assert (predict(video, batch) - predict(video, moved)).abs().max() > 1e-4
    frame = _video_diffpose(store, "graformer", mode)
    assert not frame.temporal_encoder
    torch.testing.assert_close(predict(frame, batch), predict(frame, moved))


def test_the_video_refiner_starts_every_frame_from_the_encoders_pose_of_that_frame(store):
    lifter = _video_diffpose(store, "mixste", "refiner")
    batch = Sampler(store, frames=5).batch(torch.arange(8))
    with torch.inference_mode():
        frames = lifter.predict_frames(batch, torch.Generator().manual_seed(0))
        centre = lifter.predict(batch, torch.Generator().manual_seed(0))
        enc_pose, feats = lifter._encode(batch, every_frame=True)
    assert frames.pose.shape == (8, 5, 17, 3) and frames.hypotheses.shape == (1, 8, 5, 17, 3)
    assert enc_pose.shape == (40, 17, 3) and feats.shape == (40, 17, 16)
    torch.testing.assert_close(frames.pose[:, 2], centre.pose, atol=1e-6, rtol=1e-5)
    # the refiner moves the start only by a small-noise correction (sqrt(1 - abar_12) = 0.05)
    assert (frames.pose - enc_pose.view(8, 5, 17, 3)).norm(dim=-1).mean() < 0.5 * enc_pose.norm(dim=-1).mean()


def test_flop_count_includes_attention_on_the_cpu():
    """torch's counter knows SDPA's CUDA kernels only; count_flops adds the CPU kernel MixSTE runs here:
    4 N L^2 C per attention layer (QK^T and the weighted sum), spatial (N = T windows of L = J) and temporal
    (N = J sequences of L = T)."""
    from torch.utils.flop_counter import FlopCounterMode

    from diffpose.train import count_flops

    t, c = 9, 32
    net = MixSTE(in_dim=2, out_dim=3, frames=t, dim=c, depth=1, heads=4).eval()
    x = torch.randn(1, t, 17, 2)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as plain:
            net(x)
        counted = count_flops(lambda: net(x))
    assert counted - plain.get_total_flops() == 4 * t * 17**2 * c + 4 * 17 * t**2 * c
