"""diffpose.models: shapes, pinned sizes, graph layers against naive references, fitting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffpose.data import skeleton
from diffpose.models.baselines import GraphNonLocal, SemGCN, SimpleBaseline
from diffpose.models.denoiser import GraphDenoiser, step_embedding
from diffpose.models.graformer import GraFormer
from diffpose.models.graph import (
    ChebConv,
    GraphAttention,
    GraphFeedForward,
    SemGraphConv,
    attention,
    chebyshev_basis,
    dropout,
    graph_conv,
    side_by_side,
)

J = skeleton.NUM_JOINTS


def lifters() -> dict[str, nn.Module]:
    return {
        "graformer": GraFormer(),
        "simple_baseline": SimpleBaseline(),
        "semgcn": SemGCN(),
        "semgcn_nonlocal": SemGCN(nonlocal_layer=True),
    }


def run(model: nn.Module, b: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Forward a random batch of b poses through any of the networks."""
    g = generator or torch.Generator().manual_seed(0)
    if isinstance(model, GraphDenoiser):
        x = torch.randn(b, J, model.x_dim, generator=g)
        t = torch.randint(0, 50, (b,), generator=g)
        cond = torch.randn(b, J, model.cond_dim, generator=g) if model.cond_dim else None
        return model(x, t, cond)
    return model(torch.randn(b, J, 2, generator=g))


# ---- sizes and shapes ------------------------------------------------------------------------------------
# Hand-counted from the released code: GraFormer = GCNpose without its unused time MLP (185,088 more);
# the refiner denoiser = GCNdiff at coords_dim (5, 5); the paper's denoiser differs from it only in the
# input (104 -> 96) and output (96 -> 3) Chebyshev layers: + 3 * 99 * 96 - 3 * 96 * 2 - 2 = 27,934.
# SemGCN 0.27 M / 0.43 M and SimpleBaseline 4.3 M as published, with 17 joints in and out.
PINNED = {
    "graformer": (GraFormer, {}, 654_344),
    "denoiser_refiner": (GraphDenoiser, {"x_dim": 5, "cond_dim": 0}, 1_025_674),
    "denoiser_paper": (GraphDenoiser, {"x_dim": 3, "cond_dim": 2 + 3 + 96}, 1_053_608),
    "simple_baseline": (SimpleBaseline, {}, 4_296_755),
    "semgcn": (SemGCN, {}, 267_373),
    "semgcn_nonlocal": (SemGCN, {"nonlocal_layer": True}, 434_733),
}


def build(name: str) -> nn.Module:
    cls, kwargs, _ = PINNED[name]
    return cls(**kwargs)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_parameter_counts_are_pinned(name: str) -> None:
    assert sum(p.numel() for p in build(name).parameters()) == PINNED[name][2]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_output_shapes(name: str) -> None:
    model = build(name).eval()
    out = run(model, 3)
    width = model.x_dim if isinstance(model, GraphDenoiser) else 3
    assert out.shape == (3, J, width)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(PINNED))
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = build(name).train()
    for m in model.modules():
        if isinstance(m, GraphNonLocal):
            nn.init.ones_(m.norm.weight)  # 0 at first (an identity layer), which blocks the gradient upstream
    out = run(model, 8)
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


# ---- the graph layers ------------------------------------------------------------------------------------
def test_chebyshev_basis_is_cos_k_theta_on_the_spectrum() -> None:
    """T_k(cos theta) = cos(k theta): if L~ v = cos(theta) v, then T_k(L~) v = cos(k theta) v."""
    lap = skeleton.scaled_laplacian().astype(np.float64)
    lam, vec = np.linalg.eigh(lap)
    assert lam.min() >= -1 - 1e-6 and lam.max() <= 1 + 1e-6
    terms = chebyshev_basis(lap, 4).numpy()
    theta = np.arccos(np.clip(lam, -1, 1))
    for k in range(5):
        np.testing.assert_allclose(terms[k] @ vec, vec * np.cos(k * theta)[None, :], atol=1e-5)


def naive_cheb(x: torch.Tensor, lap: torch.Tensor, weights: list[torch.Tensor],
               bias: torch.Tensor) -> torch.Tensor:
    """y[:, i] = sum_k sum_j T_k[i, j] x[:, j] @ W_k + bias, looping over joints and orders."""
    n = lap.shape[0]
    t = [torch.eye(n, dtype=lap.dtype), lap]
    for _ in range(2, len(weights)):
        t.append(2 * lap @ t[-1] - t[-2])
    y = torch.zeros(x.shape[0], n, weights[0].shape[1], dtype=x.dtype)
    for i in range(n):
        for k, w in enumerate(weights):
            for j in range(n):
                y[:, i] += t[k][i, j] * (x[:, j] @ w)
        y[:, i] += bias
    return y


@pytest.mark.parametrize("order", [1, 2, 3])
def test_cheb_conv_matches_a_naive_loop(order: int) -> None:
    torch.manual_seed(1)
    conv = ChebConv(4, 5, order=order).double()
    nn.init.normal_(conv.bias)
    x = torch.randn(3, J, 4, dtype=torch.float64)
    lap = torch.from_numpy(skeleton.scaled_laplacian().astype(np.float64))
    weights = [conv.weight[k * 5:(k + 1) * 5].T for k in range(order + 1)]  # W_k: (in, out)
    # the buffer was rounded to float32 before .double(); rebuild it in float64 for an exact comparison
    conv.operator = side_by_side(chebyshev_basis(lap, order))
    expected = naive_cheb(x, lap, weights, conv.bias)
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-12)


def test_initialisations_follow_the_released_code() -> None:
    """ChebConv: Xavier-normal over (3, 1, 96, 96), std sqrt(2 / (96*96 + 3*96*96)); SemGraphConv:
    Xavier-uniform with gain 1.414 over (2, 128, 128), bound 1.414 sqrt(6 / (128*128 + 2*128))."""
    torch.manual_seed(11)
    w = ChebConv(96, 96).weight
    assert abs(w.std().item() / math.sqrt(2 / (4 * 96 * 96)) - 1) < 0.02
    w = SemGraphConv(128, 128).weight
    bound = 1.414 * math.sqrt(6 / (128 * 128 + 2 * 128))
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.99 * bound


def test_graph_conv_gradcheck() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    op = torch.randn(5, 10, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(8, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(graph_conv, (x, op, w, b))


def test_sem_graph_conv_mixes_only_along_skeleton_edges() -> None:
    torch.manual_seed(3)
    conv = SemGraphConv(4, 6).double()
    nn.init.normal_(conv.logits)
    x = torch.randn(2, J, 4, dtype=torch.float64)
    base = conv(x)
    adj = skeleton.adjacency(self_loops=True) > 0
    for j in range(J):
        bumped = x.clone()
        bumped[:, j] += 1.0
        changed = (conv(bumped) - base).abs().amax(dim=(0, 2)) > 1e-12
        np.testing.assert_array_equal(changed.numpy(), adj[:, j], err_msg=f"joint {j}")


def test_sem_graph_conv_starts_as_row_normalised_adjacency() -> None:
    a = skeleton.adjacency(self_loops=True)
    expected = a / a.sum(1, keepdims=True)
    np.testing.assert_allclose(SemGraphConv(2, 3).affinity().detach().numpy(), expected, atol=1e-7)


def test_graph_attention_matches_explicit_softmax() -> None:
    torch.manual_seed(4)
    attn = GraphAttention(8, heads=2).double().eval()
    x = torch.randn(3, J, 8, dtype=torch.float64)
    q, k, v = attn.qkv(x).split(8, dim=-1)
    heads = [slice(0, 4), slice(4, 8)]
    out = torch.cat([torch.softmax(q[..., h] @ k[..., h].mT / 2.0, -1) @ v[..., h] for h in heads], -1)
    torch.testing.assert_close(attn(x), attn.proj(out))


def test_cpu_attention_matches_sdpa_and_drops_weights_while_training() -> None:
    g = torch.Generator().manual_seed(10)
    q, k, v = (torch.randn(5, 4, J, 24, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, 0.1, False), F.scaled_dot_product_attention(q, k, v))
    torch.manual_seed(10)
    a, b = attention(q, k, v, 0.5, True), attention(q, k, v, 0.5, True)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(attention(q, k, v, 0.0, True), attention(q, k, v, 0.0, False))


def test_graph_feed_forward_starts_as_a_per_joint_mlp() -> None:
    torch.manual_seed(5)
    ff = GraphFeedForward(6).double()
    x = torch.randn(2, J, 6, dtype=torch.float64)
    s = 1.0 / (1.0 + 1e-5)  # L = I / (1 + 1e-5) at initialisation
    expected = ff.fc2(s * F.relu(ff.fc1(s * x)))
    torch.testing.assert_close(ff(x), expected)


def test_dropout_rate_and_mean() -> None:
    torch.manual_seed(6)
    x = torch.ones(1_000_000)
    y = dropout(x, 0.25, training=True)
    assert abs((y == 0).double().mean().item() - 0.25) < 0.003
    assert abs(y.mean().item() - 1.0) < 0.005
    torch.testing.assert_close(torch.unique(y), torch.tensor([0.0, 4.0 / 3.0]))
    assert dropout(x, 0.25, training=False) is x


# ---- model-level behaviour --------------------------------------------------------------------------------
def test_step_embedding_known_values() -> None:
    emb = step_embedding(torch.tensor([0, 3]), 8)
    w = 10000.0 ** (-torch.arange(4) / 3.0)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(emb[1], torch.cat([torch.sin(3 * w), torch.cos(3 * w)]))


def test_denoiser_depends_on_step_and_condition() -> None:
    torch.manual_seed(7)
    model = GraphDenoiser(x_dim=3, cond_dim=4).eval()
    x, cond = torch.randn(2, J, 3), torch.randn(2, J, 4)
    t = torch.tensor([5, 5])
    with torch.no_grad():
        out = model(x, t, cond)
        assert not torch.allclose(out, model(x, torch.tensor([30, 30]), cond))
        assert not torch.allclose(out, model(x, t, cond + 0.5))
        torch.testing.assert_close(model(x, torch.tensor(5), cond), out)  # a scalar step is broadcast
    with pytest.raises(ValueError):
        model(x, t, None)


def test_forward_with_features_is_forward() -> None:
    torch.manual_seed(8)
    model = GraFormer().eval()
    x = torch.randn(4, J, 2)
    with torch.no_grad():
        pose, feats = model.forward_with_features(x)
        torch.testing.assert_close(pose, model(x))
        torch.testing.assert_close(feats, model.features(x))
    assert feats.shape == (4, J, 96)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_eval_mode_is_deterministic(name: str) -> None:
    model = build(name).eval()
    with torch.no_grad():
        torch.testing.assert_close(run(model, 4), run(model, 4), rtol=0, atol=0)


def test_inference_leaves_inputs_untouched() -> None:
    """Blocks add residuals in place when no graph is recorded; never into the caller's tensors."""
    model = GraphDenoiser(x_dim=3, cond_dim=4).eval()
    x, t, cond = torch.randn(2, J, 3), torch.tensor([3, 7]), torch.randn(2, J, 4)
    saved = (x.clone(), t.clone(), cond.clone())
    encoder = GraFormer().eval()
    pose_2d = torch.randn(2, J, 2)
    saved_2d = pose_2d.clone()
    with torch.inference_mode():
        model(x, t, cond)
        encoder.forward_with_features(pose_2d)
    for before, after in zip(saved, (x, t, cond), strict=True):
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    torch.testing.assert_close(saved_2d, pose_2d, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_bfloat16_autocast_runs(name: str) -> None:
    model = build(name).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(model, 4)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


# ---- fitting ----------------------------------------------------------------------------------------------
class ConditionedDenoiser(nn.Module):
    """The denoiser as a 2D -> 3D map: x_k fixed at 0 and step 10, the 2D pose as the condition."""

    def __init__(self) -> None:
        super().__init__()
        self.net = GraphDenoiser(x_dim=3, cond_dim=2, hidden=32, blocks=2, heads=4, dropout=0.0,
                                 attn_dropout=0.0, cheb_dropout=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = x.new_zeros(x.shape[0], J, 3)
        return self.net(zeros, torch.full((x.shape[0],), 10), x)


SMALL = {  # (network, Adam learning rate)
    "graformer": (lambda: GraFormer(hidden=32, blocks=2, dropout=0.0, attn_dropout=0.0, cheb_dropout=0.0),
                  3e-3),
    "denoiser": (ConditionedDenoiser, 3e-3),
    "simple_baseline": (lambda: SimpleBaseline(hidden=256, dropout=0.0), 3e-3),
    "semgcn": (lambda: SemGCN(hidden=64, blocks=2), 3e-3),
}


@pytest.fixture
def one_thread():
    """Batches of 64 small poses are overhead-bound: a second thread only adds synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_overfits_64_random_poses(name: str, one_thread: None) -> None:
    torch.manual_seed(9)
    factory, lr = SMALL[name]
    model = factory()
    x, y = torch.randn(64, J, 2), torch.randn(64, J, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(200):
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        final = F.mse_loss(model(x), y).item()
    assert final < 0.05, f"{name}: MSE {final:.3f} after 200 steps (targets have variance 1)"
