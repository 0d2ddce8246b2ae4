"""Frame-based baseline lifters: SimpleBaseline (Martinez et al., ICCV 2017), SemGCN (Zhao et al., CVPR 2019).

Both map 2D joints (B, J, in_dim) to 3D joints (B, J, out_dim) and use their published hyperparameters as
defaults. Parameter counts with J = 17: SimpleBaseline 4,296,755 (4,291,632 with the paper's 16 input and
16 output joints; "4-5 M" in the paper); SemGCN 267,373 without and 434,733 with the non-local layers
(0.27 M and 0.43 M in the SemGCN paper). Martinez's max-norm weight constraint is part of the model here;
SemGCN's gradient clipping belongs to the training loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffpose.data import skeleton
from diffpose.models.graph import Dropout, SemGraphConv, residual

# SemGCN's grouping of the 17 Human3.6M joints for its non-local layers (pairs of related joints; the head
# alone), from its ``h36m_dataset.py``; the non-local layer max-pools keys and values over each pair.
SEMGCN_JOINT_GROUPS: tuple[tuple[int, ...], ...] = (
    (2, 3), (5, 6), (1, 4), (0, 7), (8, 9), (15, 16), (12, 13), (11, 14), (10,),
)


class MaxNormLinear(nn.Linear):
    """A linear layer whose weight matrix is used scaled down to Frobenius norm 1 when above it: the official
    SimpleBaseline's --max_norm (``tf.clip_by_norm(w, 1)`` on every weight matrix in linear_model.py's forward
    pass; the PyTorch ports clip gradients instead)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = (1.0 / torch.linalg.matrix_norm(self.weight)).clamp(max=1.0)
        return F.linear(x, self.weight * scale, self.bias)


class ResidualLinear(nn.Module):
    """Martinez's residual block: x + drop(relu(BN(W_2 drop(relu(BN(W_1 x))))). (B, C) -> (B, C)."""

    def __init__(self, dim: int, dropout: float, linear: type[nn.Linear] = nn.Linear) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True), Dropout(dropout),
            linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True), Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual(x, self.layers(x))


class SimpleBaseline(nn.Module):
    """Martinez et al. 2017 on flattened joints: Linear(hidden)-BN-ReLU-Dropout, ``blocks`` ResidualLinear,
    Linear. Linear weights Kaiming-normal as in the PyTorch port; with ``max_norm`` every weight matrix is used
    clipped to norm 1 (:class:`MaxNormLinear`). (B, J, in_dim) -> (B, J, out_dim).
    """

    def __init__(self, in_dim: int = 2, out_dim: int = 3, hidden: int = 1024, blocks: int = 2,
                 dropout: float = 0.5, joints: int = skeleton.NUM_JOINTS, max_norm: bool = True) -> None:
        super().__init__()
        self.joints, self.out_dim = joints, out_dim
        linear = MaxNormLinear if max_norm else nn.Linear
        self.input = nn.Sequential(
            linear(joints * in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            Dropout(dropout),
        )
        self.blocks = nn.Sequential(*(ResidualLinear(hidden, dropout, linear) for _ in range(blocks)))
        self.head = linear(hidden, joints * out_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = self.blocks(self.input(x.reshape(b, -1)))  # (B, hidden)
        return self.head(h).view(b, self.joints, self.out_dim)


class SemGraphBlock(nn.Module):
    """SemGraphConv -> BatchNorm over channels (statistics over batch and joints) -> ReLU. (B, J, C)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = SemGraphConv(in_dim, out_dim)
        self.norm = nn.BatchNorm1d(out_dim)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)  # (B, J, C)
        h = self.norm(h.reshape(-1, h.shape[-1])).view(h.shape)
        return self.drop(F.relu(h, inplace=True))


class GraphNonLocal(nn.Module):
    """SemGCN's non-local layer (Wang et al. 2018, concatenation form) over grouped joints.

    With theta, phi, g 1x1 projections to C/2 channels, phi and g max-pooled over each group of joints:
        f_ij = relu(w^T [theta(x_i); phi(x_j)]),  y_i = sum_j f_ij g(x_j) / N,  z = x + BN(W y),
    N the number of pooled groups. BN's scale starts at 0, so the layer starts as the identity. Joints in
    ``groups`` order, with the (shorter) last group left out of the pooling, as SemGCN's MaxPool1d does.
    (B, J, C) -> (B, J, C).
    """

    def __init__(self, dim: int, groups: tuple[tuple[int, ...], ...] = SEMGCN_JOINT_GROUPS) -> None:
        super().__init__()
        order = [j for g in groups for j in g]
        if sorted(order) != list(range(len(order))):
            raise ValueError(f"joint groups must cover every joint once, got {groups}")
        self.group_size = len(groups[0])
        self.pooled = len(order) // self.group_size
        self.register_buffer("order", torch.tensor(order), persistent=False)
        self.register_buffer("restore", torch.argsort(torch.tensor(order)), persistent=False)
        inner = dim // 2
        self.theta = nn.Linear(dim, inner)
        self.phi = nn.Linear(dim, inner)
        self.g = nn.Linear(dim, inner)
        self.pair = nn.Parameter(torch.empty(2 * inner))  # w, acting on [theta; phi]
        self.out = nn.Linear(inner, dim)
        self.norm = nn.BatchNorm1d(dim)
        for m in (self.theta, self.phi, self.g, self.out):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
        nn.init.normal_(self.pair, 0.0, math.sqrt(2.0 / (2 * inner)))
        nn.init.zeros_(self.norm.weight)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Max over each full group of consecutive (grouped-order) joints: (B, J, C) -> (B, N, C)."""
        b, _, c = x.shape
        n = self.pooled * self.group_size
        return x[:, :n].reshape(b, self.pooled, self.group_size, c).amax(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x[:, self.order]  # (B, J, C) in grouped order
        inner = self.theta.out_features
        a = self.theta(xs) @ self.pair[:inner].to(xs.dtype)  # (B, J)
        key = self.pool(self.phi(xs)) @ self.pair[inner:].to(xs.dtype)  # (B, N)
        f = F.relu(a[:, :, None] + key[:, None, :]) / self.pooled  # (B, J, N)
        y = torch.bmm(f, self.pool(self.g(xs)))  # (B, J, C/2)
        wy = self.out(y)
        wy = self.norm(wy.reshape(-1, wy.shape[-1])).view(wy.shape)
        return (xs + wy)[:, self.restore]


class SemResBlock(nn.Module):
    """x + SemGraphBlock(SemGraphBlock(x)). (B, J, C)."""

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.block1 = SemGraphBlock(dim, dim, dropout)
        self.block2 = SemGraphBlock(dim, dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual(x, self.block2(self.block1(x)))


class SemGCN(nn.Module):
    """Zhao et al. 2019: SemGraphBlock (in_dim -> hidden), ``blocks`` SemResBlocks, SemGraphConv (-> out_dim).

    With nonlocal_layer a GraphNonLocal follows the input block and every residual block (SemGCN's
    ``--non_local``). dropout after each ReLU (0 in SemGCN). (B, J, in_dim) -> (B, J, out_dim).
    """

    def __init__(self, in_dim: int = 2, out_dim: int = 3, hidden: int = 128, blocks: int = 4,
                 dropout: float = 0.0, nonlocal_layer: bool = False) -> None:
        super().__init__()
        self.input = SemGraphBlock(in_dim, hidden, dropout)
        layers: list[nn.Module] = [GraphNonLocal(hidden)] if nonlocal_layer else []
        for _ in range(blocks):
            layers.append(SemResBlock(hidden, dropout))
            if nonlocal_layer:
                layers.append(GraphNonLocal(hidden))
        self.layers = nn.Sequential(*layers)
        self.head = SemGraphConv(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.input(x)))
