"""The contract every entry of LIFTERS meets: shapes, gradients, and it can fit 64 samples; temporal lifters
and DiffPose with a MixSTE encoder on windows of T frames."""

import numpy as np
import pytest
import torch

from diffpose.config import VARIANTS, Config
from diffpose.data.source import Clip, SourceInfo
from diffpose.data.store import PoseStore, Sampler, write_store
from diffpose.lifters import LIFTERS, DiffPose, DirectLifter, Prediction, Sampled, build_lifter, encoder_network
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
    for variant in ("full", "no_gmm", "no_context", "refiner"):
        yield f"diffpose:{variant}", VARIANTS[variant][2]
    # The video refiner is left out: it starts from the fitted encoder's pose and is not expected to
    # beat it on 64 samples (test_video checks that its start reads the whole window).
    yield "diffpose:video_full", {**VARIANTS["full"][2], **VIDEO_ENCODER}
    for name in LIFTERS:
        if name != "mean_pose":  # nothing to train: test_the_mean_pose_is_the_training_mean
            yield name, {"model.lifter": name, **TEMPORAL.get(name, {})}


def make(store, overrides):
    cfg = Config().override({"data.store": str(store.path), "train.seed": 0, **overrides,
                             "model.hidden": 256 if overrides.get("model.lifter") == "simple_baseline" else 32,
                             "model.dropout": 0.0, "encoder.hidden": 32, "encoder.dropout": 0.0})
    torch.manual_seed(0)
    rows = np.arange(len(store))
    encoder = encoder_network(cfg) if cfg.uses_encoder else None
    if encoder is not None:  # a quickly fitted encoder stands in for the trained one
        _fit_encoder(encoder, Sampler(store, frames=cfg.data.frames))
    lifter = build_lifter(cfg, encoder)
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
    norms = [m for m in lifter.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    lifter.train()
    with torch.no_grad():
        lifter.loss(batch, torch.Generator().manual_seed(2))


def test_the_mean_pose_is_the_training_mean(tiny_store):
    cfg, lifter = make(tiny_store, {"model.lifter": "mean_pose"})
    assert not any(p.requires_grad for p in lifter.parameters())
    sampler = Sampler(tiny_store)
    out = lifter.predict(sampler.batch(torch.arange(10)), torch.Generator())
    expect = torch.from_numpy(tiny_store.pose_3d).mean(dim=0)
    torch.testing.assert_close(out.pose, expect.expand(10, -1, -1))


class _Arrays:
    """What fit_statistics reads of a store."""

    def __init__(self, pose_2d: np.ndarray, pose_3d: np.ndarray):
        self.pose_2d, self.pose_3d = pose_2d, pose_3d


def _batch(pose_2d: torch.Tensor, pose_3d: torch.Tensor):
    from diffpose.data.store import Batch

    n = len(pose_2d)
    return Batch(pose_2d=pose_2d[:, None], sigma_2d=torch.ones(n, 1, 17, 2), gmm_2d=torch.ones(n, 1, 17, 1, 5),
                 pose_3d=pose_3d[:, None], rows=torch.arange(n), flipped=torch.zeros(n, dtype=torch.bool))


def test_simple_baseline_z_scores_so_a_constant_offset_of_the_targets_is_learnt_exactly():
    """Martinez et al.'s normalisation: the network sees z-scores, so targets moved by a constant pose (10 m
    on every joint but the root) give the same training and predictions moved by exactly that pose."""
    rng = np.random.default_rng(0)
    pose_2d = rng.normal(0, 0.3, (256, 17, 2)).astype(np.float32)
    pose_3d = np.concatenate([np.zeros((256, 1, 3)), rng.normal(0, 0.2, (256, 16, 3))], 1).astype(np.float32)
    offset = np.concatenate([np.zeros((1, 1, 3)), np.full((1, 16, 3), 10.0)], 1).astype(np.float32)
    cfg = Config().override({"model.lifter": "simple_baseline", "model.hidden": 64})
    predictions = []
    for targets in (pose_3d, pose_3d + offset):
        torch.manual_seed(0)
        lifter = build_lifter(cfg)
        assert isinstance(lifter, DirectLifter) and lifter.loss_kind == "zscore"
        lifter.fit_statistics(_Arrays(pose_2d, targets), np.arange(256), torch.Generator())
        opt = torch.optim.Adam(lifter.parameters(), lr=1e-3)
        batch = _batch(torch.from_numpy(pose_2d), torch.from_numpy(targets))
        lifter.train()
        for _ in range(20):
            loss = lifter.loss(batch, torch.Generator())
            opt.zero_grad()
            loss.backward()
            opt.step()
        lifter.eval()
        with torch.no_grad():
            predictions.append(lifter.predict(batch, torch.Generator()).pose)
    # float32 at 10 m: the same to a fraction of a millimetre (a network without z-scores is metres off)
    torch.testing.assert_close(predictions[1] - predictions[0], torch.from_numpy(offset).expand(256, -1, -1),
                               atol=5e-4, rtol=0)
    assert torch.all(predictions[1][:, 0] == 0)


def test_simple_baseline_uses_every_weight_matrix_at_norm_one_at_most():
    from diffpose.models.baselines import MaxNormLinear

    cfg = Config().override({"model.lifter": "simple_baseline"})
    net = build_lifter(cfg).net
    layers = [m for m in net.modules() if isinstance(m, MaxNormLinear)]
    assert len(layers) == 2 + 2 * cfg.model.blocks  # input, two per residual block, head
    x = torch.randn(7, layers[0].in_features)
    layer = layers[0]
    used = layer.weight / torch.linalg.matrix_norm(layer.weight)  # Kaiming init: norm ~45, clipped to 1
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, used, layer.bias))


def test_sampled_baselines_give_hypotheses_with_the_spread_they_claim(tiny_store):
    cfg, lifter = make(tiny_store, {"model.lifter": "graformer", "model.dropout": 0.25})
    lifter.net.attention[0].dropout = 0.25  # make() turned dropout off; MC dropout needs it
    cfg = cfg.override({"model.dropout": 0.25})
    batch = Sampler(tiny_store).batch(torch.arange(64))
    g = torch.Generator().manual_seed(0)
    lifter.eval()
    mc = Sampled(lifter, "mc_dropout", hypotheses=6)
    with torch.inference_mode():
        out = mc.predict(batch, g)
    assert out.hypotheses.shape == (6, 64, 17, 3) and torch.all(out.hypotheses[..., 0, :] == 0)
    assert out.hypotheses.std(dim=0).mean() > 0, "dropout on: the hypotheses differ"
    assert not lifter.training, "the lifter is left as it was"
    torch.testing.assert_close(out.pose, out.hypotheses.mean(dim=0))

    # residual: draws around the pose whose per-joint covariance is the one fitted
    residual = Sampled(lifter, "residual", hypotheses=4000)
    scale = torch.tensor([0.01, 0.02, 0.05])
    residuals = torch.randn(20000, 17, 3) * scale
    residuals[:, 0] = 0  # root-relative: the root's residual is 0
    residual.fit_residuals(residuals)
    with torch.inference_mode():
        out = residual.predict(batch, g)
        pose = lifter.predict(batch, g).pose
    noise = out.hypotheses[:, 0, 5] - pose[0, 5]  # joint 5 of sample 0
    torch.testing.assert_close(noise.std(dim=0), scale, rtol=0.05, atol=0)
    assert torch.all(out.hypotheses[..., 0, :] == 0)


def test_one_set_of_lifter_names_everywhere():
    from diffpose.config import LIFTER_DEFAULTS, LIFTER_NAMES

    assert set(LIFTERS) | {"diffpose"} == set(LIFTER_DEFAULTS) == set(LIFTER_NAMES)
