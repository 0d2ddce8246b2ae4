"""The contract every entry of LIFTERS meets: shapes, gradients, and it can fit 64 samples; temporal lifters
and DiffPose with a MixSTE encoder on windows of T frames."""

import numpy as np
import pytest
import torch

from diffpose.config import VARIANTS, Config
from diffpose.data.source import Clip, SourceInfo
from diffpose.data.store import PoseStore, Sampler, write_store
from diffpose.lifters import LIFTERS, DiffPose, Prediction, build_lifter
from diffpose.models.temporal import MixSTE


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """64 frames of a moving body seen by one camera: 2D is the projection of the 3D (so 2D -> 3D is
    learnable), GMMs of 2 kernels around it."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 4 * np.pi, 64)[:, None, None]
    base = rng.normal(0, 0.25, (1, 17, 3)) + np.array([0, 0, 4.0])
    wobble = rng.normal(0, 0.1, (1, 17, 3))
    pose_3d = (base + wobble * np.sin(t + np.arange(17)[None, :, None])).astype(np.float32)
    pose_3d[:, 0] = base[:, 0]
    pose_2d = (1000 * pose_3d[..., :2] / pose_3d[..., 2:] + 500).astype(np.float32)
    gmm = np.zeros((64, 17, 2, 5), np.float32)
    gmm[..., 0] = [0.8, 0.2]
    gmm[..., 1:3] = pose_2d[:, :, None] + rng.normal(0, 2, (64, 17, 2, 2))
    gmm[..., 3:5] = 3.0
    clip = Clip(subject="A", action="Walk 1", camera=0, width=1000, height=1000, pose_2d=pose_2d, gmm=gmm,
                pose_3d=pose_3d, world_3d=None, valid=np.ones(64, bool))
    info = SourceInfo(dataset="toy", detector="synth", splits={"train": ("A",), "test": ()}, fps=50.0, files=())
    out = tmp_path_factory.mktemp("tiny") / "store"
    write_store(info, [clip], out, default_val=())
    return PoseStore.open(out)


# Small temporal settings: windows of 5 frames for MixSTE (any odd T), VideoPose3D's smallest receptive field.
TEMPORAL = {
    "mixste": {"data.frames": 5, "model.blocks": 1, "model.heads": 4},
    "videopose3d": {"data.frames": 27},
}
VIDEO_ENCODER = {"encoder.lifter": "mixste", "data.frames": 5, "encoder.blocks": 1, "encoder.heads": 4}


def configs():
    for name in LIFTERS:
        if name == "diffpose":
            for variant in ("full", "no_gmm", "no_context", "refiner"):
                yield f"diffpose:{variant}", VARIANTS[variant][2]
            # The video refiner is left out: it starts from the fitted encoder's pose and is not expected to
            # beat it on 64 samples (test_video checks that its start reads the whole window).
            yield "diffpose:video_full", {**VARIANTS["full"][2], **VIDEO_ENCODER}
        else:
            yield name, {"model.lifter": name, **TEMPORAL.get(name, {})}


def make(store, overrides):
    cfg = Config().override({"data.store": str(store.path), "train.seed": 0, **overrides,
                             "model.hidden": 256 if overrides.get("model.lifter") == "simple_baseline" else 32,
                             "model.dropout": 0.0, "encoder.hidden": 32, "encoder.dropout": 0.0})
    torch.manual_seed(0)
    rows = np.arange(len(store))
    lifter = build_lifter(cfg, store, rows, device=torch.device("cpu"), encoder_cache=store.path, train_encoder=False)
    if isinstance(lifter, DiffPose):
        if lifter.encoder is not None:  # a quickly fitted encoder stands in for the cached one
            _fit_encoder(lifter.encoder, Sampler(store, frames=cfg.data.frames))
        lifter.fit_statistics(store, rows, torch.Generator().manual_seed(0))
    return cfg, lifter


def _fit_encoder(encoder: torch.nn.Module, sampler: Sampler) -> None:
    """Fit the encoder on every window (MixSTE, seq2seq) or centre frame (GraFormer) of the store."""
    batch = sampler.batch(torch.arange(len(sampler.store)))
    x, y = batch.pose_2d, batch.pose_3d                                 # (N, T, J, 2), (N, T, J, 3)
    if not isinstance(encoder, MixSTE):
        x, y = x[:, sampler.frames // 2], y[:, sampler.frames // 2]
    encoder.requires_grad_(True)
    opt = torch.optim.Adam(encoder.parameters(), lr=3e-3)
    for _ in range(300 if isinstance(encoder, MixSTE) else 150):
        loss = (encoder(x) - y).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    encoder.requires_grad_(False).eval()


@pytest.mark.parametrize(("name", "overrides"), list(configs()), ids=[n for n, _ in configs()])
def test_every_lifter_meets_the_contract(tiny_store, name, overrides):
    cfg, lifter = make(tiny_store, overrides)
    sampler = Sampler(tiny_store, frames=cfg.data.frames)
    centre = cfg.data.frames // 2
    g = torch.Generator().manual_seed(0)
    rows = torch.arange(64)
    batch = sampler.batch(rows, draw_kernels=True, generator=g)

    # gradients reach every trainable parameter
    lifter.train()
    loss = lifter.loss(batch, g)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = [(n, p) for n, p in lifter.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    if isinstance(lifter, DiffPose) and lifter.encoder is not None:
        assert all(not p.requires_grad for p in lifter.encoder.parameters())  # frozen

    # predictions: (B, J, 3), root-relative
    def error() -> float:
        lifter.eval()
        with torch.inference_mode():
            out = lifter.predict(sampler.batch(rows), torch.Generator().manual_seed(1))
        assert isinstance(out, Prediction) and out.pose.shape == (64, 17, 3)
        assert torch.all(out.pose[:, 0] == 0)
        return float((out.pose - batch.pose_3d[:, centre]).norm(dim=-1).mean())

    before = error()
    # it fits 64 samples
    opt = torch.optim.Adam([p for _, p in trainable], lr=3e-3)
    lifter.train()
    # SimpleBaseline's wide MLP fits these jittered inputs more slowly than the graph networks
    for _ in range(600 if name == "simple_baseline" else 300):
        b = sampler.batch(rows, draw_kernels=True, generator=g)
        loss = lifter.loss(b, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _recalibrate_batchnorm(lifter, sampler.batch(rows))
    after = error()
    assert after < before and after < 0.1, (before, after)  # metres
    assert after < 0.5 * before or before < 0.05  # the refiner starts from a fitted encoder's pose

    # every frame of a window (chunked evaluation): (B, T, J, 3), root-relative; its centre frame is the
    # centre-frame prediction wherever the prediction is deterministic (no draws from H_K)
    if lifter.predicts_frames:
        with torch.inference_mode():
            frames = lifter.predict_frames(sampler.batch(rows), torch.Generator().manual_seed(1))
            single = lifter.predict(sampler.batch(rows), torch.Generator().manual_seed(1))
        assert frames.pose.shape == (64, cfg.data.frames, 17, 3) and torch.all(frames.pose[..., 0, :] == 0)
        if not isinstance(lifter, DiffPose) or lifter.refiner:
            torch.testing.assert_close(frames.pose[:, centre], single.pose, atol=1e-5, rtol=1e-4)
    else:
        assert name == "videopose3d"  # one output per receptive field


def _recalibrate_batchnorm(lifter, batch) -> None:
    """BatchNorm's running statistics lag the weights after a few hundred full-batch steps on 64 samples;
    estimate them on the training batch, as a long training run would have."""
    norms = [m for m in lifter.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    lifter.train()
    with torch.no_grad():
        lifter.loss(batch, torch.Generator().manual_seed(2))
