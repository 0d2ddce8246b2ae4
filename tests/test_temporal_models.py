from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from diffpose.models.temporal import FILTER_WIDTHS, Attention, MixSTE, VideoPose3D, drop_path

J = 17


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """These tiny models are bound by per-op overhead: two OpenMP threads on a busy two-core machine
    spin-wait and run several times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# A standing pose (metres; x right, y up, z away from the camera) with knees and arms bent towards +z, so the
# direction a person turns is visible in 2D.
REST_POSE = torch.tensor([
    [0.0, 0.0, 0.0], [-0.13, 0.0, 0.0], [-0.13, -0.45, 0.1], [-0.13, -0.9, 0.0], [0.13, 0.0, 0.0],
    [0.13, -0.45, 0.1], [0.13, -0.9, 0.0], [0.0, 0.23, 0.0], [0.0, 0.48, 0.0], [0.0, 0.58, 0.05],
    [0.0, 0.7, 0.0], [0.15, 0.45, 0.0], [0.2, 0.2, 0.15], [0.15, 0.1, 0.35], [-0.15, 0.45, 0.0],
    [-0.2, 0.2, 0.15], [-0.15, 0.1, 0.35],
])  # fmt: skip


def _turning_windows(windows: int, frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of the rest pose turning about the vertical axis, 5 m in front of a camera.

    Returns 2D (N, T, 17, 2) = 5 (x, y) / z (about +-1, like normalised screen coordinates) and
    root-relative 3D (N, T, 17, 3) in metres.
    """
    g = torch.Generator().manual_seed(seed)
    start = 2.0 * torch.rand(windows, 1, generator=g) - 1.0  # radians
    speed = 0.05 * torch.randn(windows, 1, generator=g)  # radians per frame
    yaw = (start + speed * torch.arange(frames)).unsqueeze(-1)  # (N, T, 1)
    x, y, z = REST_POSE.unbind(-1)  # (17,)
    pose = torch.stack(
        [yaw.cos() * x + yaw.sin() * z, (-y).expand(windows, frames, J), yaw.cos() * z - yaw.sin() * x], -1
    )
    camera = pose + torch.tensor([0.0, 0.0, 5.0])
    return 5.0 * camera[..., :2] / camera[..., 2:], pose - pose[:, :, :1]


def _mpjpe_mm(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return 1000.0 * (prediction - target).norm(dim=-1).mean().item()


# ----------------------------------------------------------------------------------------------- MixSTE


def _small_mixste(frames: int = 9, depth: int = 2, **kwargs: float) -> MixSTE:
    torch.manual_seed(0)
    return MixSTE(frames=frames, dim=16, depth=depth, heads=2, drop_path=0.0, **kwargs)


@pytest.mark.parametrize("frames", [1, 27, 81])
def test_mixste_maps_every_frame_to_a_pose_and_a_feature(frames: int) -> None:
    torch.manual_seed(0)
    model = MixSTE(frames=81, dim=32, depth=2, heads=4).eval()
    x = _inputs((2, frames, J, 2))
    pose, features = model.forward_with_features(x)
    assert pose.shape == (2, frames, J, 3)
    assert features.shape == (2, frames, J, 32)
    torch.testing.assert_close(model(x), pose)


def test_mixste_rejects_more_frames_than_its_embedding() -> None:
    with pytest.raises(ValueError, match="T <= 9"):
        _small_mixste()(_inputs((1, 10, J, 2)))


class _Silent(nn.Module):
    """Stands in for an attention layer: contributes nothing, so its tokens do not mix."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def _changed(model: nn.Module, frame: int, joint: int) -> torch.Tensor:
    """Which outputs (T, J) move when input (frame, joint) of sample 0 is perturbed."""
    x = _inputs((2, 9, J, 2))
    y = x.clone()
    y[0, frame, joint] += 1.0
    with torch.no_grad():
        delta = (model(y) - model(x)).abs().amax(-1)  # (B, T, J)
    assert delta[1].max() < 1e-6, "another sample moved"
    return delta[0] > 1e-6


def test_spatial_attention_mixes_joints_within_a_frame_only() -> None:
    model = _small_mixste().eval()
    for block in model.temporal:
        block.attention = _Silent()
    changed = _changed(model, frame=4, joint=13)
    expected = torch.zeros(9, J, dtype=torch.bool)
    expected[4] = True
    assert torch.equal(changed, expected)


def test_temporal_attention_mixes_frames_within_a_joint_only() -> None:
    model = _small_mixste().eval()
    for block in model.spatial:
        block.attention = _Silent()
    changed = _changed(model, frame=4, joint=13)
    expected = torch.zeros(9, J, dtype=torch.bool)
    expected[:, 13] = True
    assert torch.equal(changed, expected)


def test_mixste_with_both_attentions_reaches_every_frame_and_joint() -> None:
    assert _changed(_small_mixste().eval(), frame=4, joint=13).all()


def test_mixste_gradients_reach_every_parameter() -> None:
    model = _small_mixste(dropout=0.1).train()
    model(_inputs((2, 9, J, 2))).square().mean().backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert silent == []


def test_mixste_parameter_count() -> None:
    # Per block: two LayerNorms 4C, qkv 3C^2 + 3C, projection C^2 + C, MLP 2 C H + H + C (H = 2C).
    # Plus the input embedding 3C, joint and frame embeddings (17 + F) C, two shared LayerNorms 4C,
    # head LayerNorm 2C and linear 3C + 3. C = 32, F = 27, depth 2 (4 blocks):
    c, h, f = 32, 64, 27
    block = 4 * c + 3 * c * c + 3 * c + c * c + c + 2 * c * h + h + c
    assert block == 8544
    expected = 4 * block + 3 * c + (J + f) * c + 4 * c + 2 * c + 3 * c + 3
    assert _param_count(MixSTE(frames=27, dim=32, depth=2)) == expected == 35_971
    with torch.device("meta"):
        released = MixSTE(frames=243, dim=512, depth=8, heads=8)
    assert _param_count(released) == 33_783_811  # DiffPose's video context encoder: 33.8 M


def test_mixste_overfits_a_few_windows() -> None:
    uv, pose = _turning_windows(32, 3)
    mean_pose_mm = _mpjpe_mm(pose.mean((0, 1), keepdim=True), pose)
    torch.manual_seed(0)
    model = MixSTE(frames=3, dim=32, depth=2, heads=4, drop_path=0.0)
    steps, lr = 400, 3e-3
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        batch = torch.arange(8 * step, 8 * step + 8) % 32
        loss = (model(uv[batch]) - pose[batch]).norm(dim=-1).mean()
        optimizer.param_groups[0]["lr"] = lr * (1 - step / steps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        error_mm = _mpjpe_mm(model.eval()(uv), pose)
    assert mean_pose_mm > 60.0
    assert error_mm < 25.0


# ------------------------------------------------------------------------------------------ VideoPose3D


@pytest.mark.parametrize("frames", [27, 81, 243])
def test_receptive_field_of_the_released_architectures(frames: int) -> None:
    model = VideoPose3D(filter_widths=FILTER_WIDTHS[frames], channels=8)
    assert model.receptive_field == model.frames == frames
    assert model.output_offset == frames // 2
    assert VideoPose3D(filter_widths=FILTER_WIDTHS[frames], channels=8, causal=True).output_offset == frames - 1


@pytest.mark.parametrize(("widths", "frames", "out_frames"), [((3, 3, 3), 27, 1), ((3, 3, 3), 81, 55),
                                                              ((3, 3, 3, 3), 81, 1)])  # fmt: skip
def test_videopose3d_output_is_a_valid_convolution(widths: tuple[int, ...], frames: int, out_frames: int) -> None:
    model = VideoPose3D(filter_widths=widths, channels=16).eval()
    assert model(_inputs((2, frames, J, 2))).shape == (2, out_frames, J, 3)
    with pytest.raises(ValueError, match="T >="):
        model(_inputs((2, model.receptive_field - 1, J, 2)))


def _support(model: VideoPose3D, frames: int, out_frame: int) -> list[int]:
    """Input frames with a nonzero gradient on output frame ``out_frame``."""
    x = _inputs((2, frames, J, 2)).requires_grad_()
    model(x, strided=False)[:, out_frame].sum().backward()
    return torch.nonzero(x.grad.abs().sum((0, 2, 3))).flatten().tolist()


@pytest.mark.parametrize("frames", [27, 81, 243])
@pytest.mark.parametrize("causal", [False, True])
def test_an_output_frame_sees_exactly_its_window(frames: int, causal: bool) -> None:
    torch.manual_seed(0)
    model = VideoPose3D(filter_widths=FILTER_WIDTHS[frames], channels=16, causal=causal).eval()
    assert _support(model, frames + 4, out_frame=2) == list(range(2, 2 + frames))


def test_perturbing_outside_the_window_changes_nothing() -> None:
    torch.manual_seed(0)
    model = VideoPose3D(channels=16).eval()
    x = _inputs((1, 40, J, 2))
    out_frame = 5  # window: input frames 5..31, centre 18
    for frame, moves in [(4, False), (5, True), (18, True), (31, True), (32, False)]:
        y = x.clone()
        y[:, frame] += 1.0
        with torch.no_grad():
            delta = (model(y) - model(x))[:, out_frame].abs().max().item()
        assert (delta > 1e-6) == moves, frame


@pytest.mark.parametrize("causal", [False, True])
def test_the_residual_path_carries_the_output_frame(causal: bool) -> None:
    # With every block's last BatchNorm at gamma = beta = 0 a block passes its residual alone, so the
    # output sees only the first layer's 3 frames around the aligned frame: the centre (13 of 27) or, when
    # causal, the last (26): no future frame reaches a causal output.
    torch.manual_seed(0)
    model = VideoPose3D(channels=16, causal=causal).eval()
    for block in model.blocks:
        nn.init.zeros_(block.pointwise_norm.weight)
        nn.init.zeros_(block.pointwise_norm.bias)
    aligned = 3 + model.output_offset
    expected = [aligned - 2, aligned - 1, aligned] if causal else [aligned - 1, aligned, aligned + 1]
    assert _support(model, 40, out_frame=3) == expected


@pytest.mark.parametrize("frames", [27, 243])
@pytest.mark.parametrize("causal", [False, True])
def test_strided_form_equals_the_dilated_form(frames: int, causal: bool) -> None:
    torch.manual_seed(0)
    model = VideoPose3D(filter_widths=FILTER_WIDTHS[frames], channels=16, causal=causal).eval()
    sequence = _inputs((2, frames + 3, J, 2))
    dilated = model(sequence)  # (2, 4, J, 3)
    windows = sequence.unfold(1, frames, 1).permute(0, 1, 4, 2, 3).reshape(8, frames, J, 2)
    strided = model(windows, strided=True)  # (8, 1, J, 3)
    torch.testing.assert_close(strided.view(2, 4, J, 3), dilated, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exactly"):
        model(sequence, strided=True)


@pytest.mark.parametrize("frames", [27, 29])
def test_videopose3d_gradients_reach_every_parameter(frames: int) -> None:
    torch.manual_seed(0)
    model = VideoPose3D(channels=16).train()
    model(_inputs((4, frames, J, 2))).square().mean().backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert silent == []


def test_videopose3d_parameter_count() -> None:
    def expected(channels: int, widths: tuple[int, ...]) -> int:
        expand = J * 2 * channels * widths[0] + 2 * channels  # bias-free conv + BatchNorm
        blocks = sum(channels * channels * w + 2 * channels + channels * channels + 2 * channels for w in widths[1:])
        return expand + blocks + channels * J * 3 + J * 3

    assert _param_count(VideoPose3D(channels=64)) == expected(64, (3, 3, 3)) == 43_251
    with torch.device("meta"):
        released = VideoPose3D(filter_widths=FILTER_WIDTHS[243], channels=1024)
    assert _param_count(released) == expected(1024, FILTER_WIDTHS[243]) == 16_952_371  # VideoPose3D paper: 16.95 M


def test_videopose3d_rejects_even_filter_widths() -> None:
    with pytest.raises(ValueError, match="odd"):
        VideoPose3D(filter_widths=(3, 4, 3))


def test_set_bn_momentum_reaches_every_batch_norm() -> None:
    from diffpose.config import Config
    from diffpose.train import bn_momentum, set_bn_momentum

    model = VideoPose3D(channels=8)
    set_bn_momentum(model, 0.001)
    momenta = {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm1d)}
    assert momenta == {0.001}
    # VideoPose3D's schedule (run.py): 0.1 at the first epoch, 0.001 at train.epochs, exponential between.
    t = Config().override({"model.lifter": "videopose3d", "data.frames": 27}).train
    assert (t.bn_momentum_end, t.epochs) == (0.001, 80)
    assert bn_momentum(t, 0) == pytest.approx(0.1)
    assert bn_momentum(t, 40) == pytest.approx(0.01)
    assert bn_momentum(t, 80) == pytest.approx(0.001)


def test_videopose3d_overfits_a_few_windows() -> None:
    torch.manual_seed(0)
    uv, pose = _turning_windows(32, 27)
    model = VideoPose3D(channels=64, dropout=0.0)
    target = pose[:, model.output_offset : model.output_offset + 1]  # (32, 1, J, 3)
    steps, lr = 200, 3e-3
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        loss = (model(uv) - target).norm(dim=-1).mean()
        optimizer.param_groups[0]["lr"] = lr * (1 - step / steps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert _mpjpe_mm(model.eval()(uv), target) < 20.0


# ------------------------------------------------------------------------------------------------ shared


@pytest.mark.parametrize(
    ("model", "frames"),
    [
        pytest.param(lambda: MixSTE(frames=9, dim=32, depth=2, heads=4), 9, id="mixste"),
        pytest.param(lambda: VideoPose3D(channels=32), 27, id="videopose3d-strided"),
        pytest.param(lambda: VideoPose3D(channels=32), 30, id="videopose3d-dilated"),
    ],
)
def test_bfloat16_autocast_runs_and_agrees_with_float32(model: Callable[[], MixSTE | VideoPose3D], frames: int) -> None:
    torch.manual_seed(0)
    net = model().eval()
    x = _inputs((2, frames, J, 2))
    with torch.no_grad():
        reference = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
    assert torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() < 0.05 * reference.abs().max()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net.train()(x).float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_attention_is_softmax_of_scaled_dot_products() -> None:
    torch.manual_seed(0)
    attention = Attention(dim=6, heads=2, dropout=0.0)
    x = _inputs((3, 5, 6))  # (N, L, C)
    q, k, v = attention.qkv(x).split(6, dim=-1)
    heads = []
    for h in range(2):
        cols = slice(3 * h, 3 * h + 3)
        weights = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(3), dim=-1)
        heads.append(weights @ v[..., cols])
    expected = attention.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attention(x), expected)


def test_drop_path_drops_whole_rows_and_keeps_the_mean() -> None:
    x = torch.ones(20_000, 4)
    assert drop_path(x, 0.25, training=False) is x
    assert drop_path(x, 0.0, training=True) is x
    torch.manual_seed(0)
    y = drop_path(x, 0.25, training=True)
    rows = y[:, 0]
    assert torch.equal(y, rows[:, None].expand_as(y))
    assert rows.unique().tolist() == pytest.approx([0.0, 1.0 / 0.75])
    assert math.isclose((rows == 0).float().mean().item(), 0.25, abs_tol=0.02)
    assert math.isclose(y.mean().item(), 1.0, abs_tol=0.03)
