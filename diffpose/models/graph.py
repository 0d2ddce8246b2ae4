"""Graph layers over the 17-joint skeleton, shared by the context encoder, the denoiser and SemGCN.

Every layer takes and returns per-joint features ``(B, J, C)``. A graph convolution with K operators

    y_i = sum_k sum_j A_k[i, j] x_j W_k + b

runs as two matmuls and no copy: one linear layer ``x W`` for all K weights at once, giving (B, J*K, C_out)
with row ``j*K + k`` holding ``x_j W_k``, then one batched matmul (bias added in it) with the operators laid
side by side as a (J, J*K) matrix. Chebyshev (GraFormer, DiffPose), semantic (SemGCN) and learned-graph
(GraFormer's feed-forward) convolutions differ only in their operators A_k.

Speed on the CPU, where training and CI run: ``dropout`` draws its mask from 64-bit random words instead of
torch's Bernoulli sampler; ``attention`` uses three plain ops instead of SDPA's CPU kernels; residual sums
reuse the branch's buffer when no autograd graph is recorded (``residual``). On other devices dropout and
attention are ``F.dropout`` and ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffpose.data import skeleton

# Dropout draws 16-bit uniforms, so the rate is rounded to a multiple of 2^-16 (0.1 -> 0.100006).
_DROPOUT_LEVELS = 65536


def chebyshev_basis(laplacian: np.ndarray | torch.Tensor, order: int) -> torch.Tensor:
    """Chebyshev polynomials of a graph operator: T_0 = I, T_1 = L, T_k = 2 L T_{k-1} - T_{k-2}.

    laplacian: (J, J), normally the scaled Laplacian 2 L / lambda_max - I. Returns (order + 1, J, J), float64.
    """
    lap = torch.as_tensor(np.asarray(laplacian), dtype=torch.float64)
    terms = [torch.eye(lap.shape[0], dtype=torch.float64), lap]
    for _ in range(2, order + 1):
        terms.append(2.0 * lap @ terms[-1] - terms[-2])
    return torch.stack(terms[: order + 1])


def side_by_side(operators: torch.Tensor) -> torch.Tensor:
    """Lay K operators (K, J, J) side by side as (J, J*K): column ``j*K + k`` is column j of operator k."""
    k, j, _ = operators.shape
    return operators.permute(1, 2, 0).reshape(j, j * k)


def graph_conv(x: torch.Tensor, operator: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
    """y_i = sum_k sum_j A_k[i, j] x_j W_k + b.

    x: (B, J, C_in); operator: (J, J*K) from ``side_by_side``; weight: (K*C_out, C_in), row ``k*C_out + o``
    holding column o of W_k; bias: (C_out,). Returns (B, J, C_out).
    """
    b, j, _ = x.shape
    k = operator.shape[1] // j
    y = F.linear(x, weight).view(b, j * k, -1)  # (B, J*K, C_out), row j*K + k is x_j W_k
    operators = operator.expand(b, -1, -1)  # a view: bmm reads the one (J, J*K) matrix B times
    if bias is None:
        return torch.bmm(operators, y)
    return torch.baddbmm(bias, operators, y)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: x * m / (1 - p), m ~ Bernoulli(1 - p) per element.

    On the CPU the mask comes from 16-bit slices of 64-bit random integers (three times faster than
    ``F.dropout``, whose Bernoulli sampler dominated a training step), with p rounded to a multiple of 2^-16.
    Elsewhere it is ``F.dropout``. Both draw from torch's global generator.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    n = x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    uniform16 = words.view(torch.int16)[:n].view(x.shape)  # uniform on [-2^15, 2^15)
    threshold = round(p * _DROPOUT_LEVELS) - _DROPOUT_LEVELS // 2
    keep = 1.0 - (threshold + _DROPOUT_LEVELS // 2) / _DROPOUT_LEVELS
    mask = (uniform16 >= threshold).to(x.dtype).mul_(1.0 / keep)
    return x * mask


class Dropout(nn.Module):
    """``dropout`` as a module; p is the rate."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V with dropout p on the weights while training; (B, H, J, d) each.

    ``F.scaled_dot_product_attention`` on accelerators. On the CPU three plain ops instead: for 17 tokens
    SDPA's CPU kernels are slower (batch 1024, 4 heads of 24, 2 threads: 12.5 vs 8.2 ms forward, 46 vs 19 ms
    forward + backward) and dropout > 0 sends SDPA to its unfused path with the slow Bernoulli sampler.
    """
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p if training else 0.0)
    weights = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)  # (B, H, J, J)
    return dropout(weights, p, training) @ v


def residual(x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """x + branch. Without autograd recording, added into ``branch`` (a fresh output) to spare a buffer."""
    if torch.is_grad_enabled() and (x.requires_grad or branch.requires_grad):
        return x + branch
    return branch.add_(x)


class ChebConv(nn.Module):
    """Chebyshev graph convolution (Defferrard et al. 2016): y = sum_{k=0}^{order} T_k(L~) x W_k + b.

    L~ is ``skeleton.scaled_laplacian()`` unless given. Weights are initialised as the released DiffPose code
    does (Xavier-normal over a (order+1, 1, in, out) tensor: std = sqrt(2 / ((order + 2) in out))), bias 0.
    (B, J, in_dim) -> (B, J, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, order: int = 2,
                 laplacian: np.ndarray | None = None) -> None:
        super().__init__()
        lap = skeleton.scaled_laplacian() if laplacian is None else laplacian
        terms = chebyshev_basis(lap, order)
        self.in_dim, self.out_dim, self.order = in_dim, out_dim, order
        self.register_buffer("operator", side_by_side(terms).float(), persistent=False)  # (J, J*(order+1))
        self.weight = nn.Parameter(torch.empty((order + 1) * out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        std = math.sqrt(2.0 / ((order + 2) * in_dim * out_dim))
        nn.init.normal_(self.weight, 0.0, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return graph_conv(x, self.operator, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_dim}, {self.out_dim}, order={self.order}"


class SemGraphConv(nn.Module):
    """Semantic graph convolution (Zhao et al., CVPR 2019): y_i = M_ii x_i W_0 + sum_{j!=i} M_ij x_j W_1 + b.

    M = softmax_j(e_ij) over the skeleton's neighbours of i and i itself (A + I), with one learnable logit e
    per nonzero of A + I (initialised to 1, so M starts as the row-normalised A + I); joints that are not
    neighbours never mix. Initialisation as SemGCN: W Xavier-uniform with gain 1.414 over (2, in, out), bias
    U(-1/sqrt(out), 1/sqrt(out)). (B, J, in_dim) -> (B, J, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, adjacency: np.ndarray | None = None) -> None:
        super().__init__()
        adj = skeleton.adjacency(self_loops=True) if adjacency is None else adjacency
        mask = torch.as_tensor(np.asarray(adj) > 0)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.register_buffer("mask", mask, persistent=False)  # (J, J) bool
        self.register_buffer("eye", torch.eye(mask.shape[0]), persistent=False)
        self.weight = nn.Parameter(torch.empty(2 * out_dim, in_dim))  # rows [W_0^T; W_1^T]
        self.logits = nn.Parameter(torch.ones(int(mask.sum())))  # e, row-major over the nonzeros of A + I
        self.bias = nn.Parameter(torch.empty(out_dim))
        bound = 1.414 * math.sqrt(6.0 / (out_dim * (in_dim + 2)))  # fan_in in*out, fan_out 2*out
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -1.0 / math.sqrt(out_dim), 1.0 / math.sqrt(out_dim))

    def affinity(self) -> torch.Tensor:
        """M, the (J, J) row-stochastic mixing matrix, zero off the skeleton's edges and self-loops."""
        full = self.logits.new_full(self.mask.shape, float("-inf")).masked_scatter(self.mask, self.logits)
        return torch.softmax(full, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.affinity()
        eye = self.eye.to(m.dtype)
        operator = side_by_side(torch.stack((m * eye, m * (1.0 - eye))))  # (J, 2J)
        return graph_conv(x, operator.to(x.dtype), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_dim}, {self.out_dim}"


class GraphAttention(nn.Module):
    """Multi-head self-attention across joints: per head softmax(Q K^T / sqrt(d)) V, then a projection.

    As in GraFormer every joint attends to every joint (the released code's mask is all true). Q, K and V come
    from one fused (C, 3C) linear layer. attn_dropout acts on the attention weights while training; see
    ``attention`` for the kernels. (B, J, C) -> (B, J, C).
    """

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.attn_dropout = heads, attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, j, c = x.shape
        qkv = self.qkv(x).view(b, j, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, J, d) each
        out = attention(q, k, v, self.attn_dropout, self.training)  # (B, H, J, d)
        return self.proj(out.transpose(1, 2).reshape(b, j, c))


class GraphFeedForward(nn.Module):
    """GraFormer's feed-forward on a learned graph: y = W_2 (L relu(W_1 (L x) + b_1)) + b_2.

    L = D^-1/2 A D^-1/2 with a learnable (J, J) matrix A initialised to the identity and
    D = diag(column sums of A + 1e-5), as the released ``GraphNet``/``LAM_Gconv``. Hidden width 2C.
    Computed as ``graph_conv`` with the one operator L, so the bias add rides on the batched matmul.
    (B, J, C) -> (B, J, C).
    """

    def __init__(self, dim: int, joints: int = skeleton.NUM_JOINTS) -> None:
        super().__init__()
        self.graph = nn.Parameter(torch.eye(joints))
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def propagation(self) -> torch.Tensor:
        """L = D^-1/2 A D^-1/2, (J, J)."""
        d = (self.graph.sum(0) + 1e-5).rsqrt()
        return d[:, None] * self.graph * d[None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lap = self.propagation().to(x.dtype)
        h = F.relu(graph_conv(x, lap, self.fc1.weight, self.fc1.bias), inplace=True)  # (B, J, 2C)
        return graph_conv(h, lap, self.fc2.weight, self.fc2.bias)


class AttentionBlock(nn.Module):
    """Pre-norm transformer block of GraFormer: x += drop(attn(LN(x))); x += drop(ff(LN(x))). (B, J, C)."""

    def __init__(self, dim: int, heads: int, dropout: float, attn_dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = GraphAttention(dim, heads, attn_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ff = GraphFeedForward(dim)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = residual(x, self.drop(self.attn(self.norm1(x))))
        return residual(x, self.drop(self.ff(self.norm2(x))))


class ChebResBlock(nn.Module):
    """Residual pair of Chebyshev convolutions: x + drop(relu(cheb_2(drop(relu(cheb_1 x)) + W_e e))).

    The embedding term W_e e (B, emb_dim) -> (B, 1, C), broadcast over joints, exists when emb_dim > 0: the
    denoiser's diffusion-step embedding. (B, J, C) -> (B, J, C).
    """

    def __init__(self, dim: int, order: int = 2, dropout: float = 0.1, emb_dim: int = 0,
                 laplacian: np.ndarray | None = None) -> None:
        super().__init__()
        self.cheb1 = ChebConv(dim, dim, order, laplacian)
        self.cheb2 = ChebConv(dim, dim, order, laplacian)
        self.emb = nn.Linear(emb_dim, dim) if emb_dim > 0 else None
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.drop(F.relu(self.cheb1(x), inplace=True))
        if self.emb is not None:
            if emb is None:
                raise ValueError("this block was built with an embedding and needs one")
            h = residual(self.emb(emb)[:, None, :], h)
        return residual(x, self.drop(F.relu(self.cheb2(h), inplace=True)))
