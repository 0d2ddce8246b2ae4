"""Video lifters: 2D pose sequences (B, T, J, 2), normalised screen units -> root-relative 3D (metres).

Two networks, both without a device of their own (the caller moves them) and safe under ``torch.autocast``:

- ``MixSTE`` (Zhang et al., CVPR 2022): a sequence-to-sequence transformer whose blocks alternate attention
  over the joints of one frame (spatial) and over the frames of one joint (temporal). DiffPose's video model
  uses it, frozen, as its context encoder (243 frames, dim 512, depth 8: 33.78 M parameters).
- ``VideoPose3D`` (Pavllo et al., CVPR 2019): dilated temporal convolutions with residual blocks; a window of
  ``receptive_field`` frames gives one 3D pose, the centre frame's (the last frame's when causal).

Both expose ``frames``: the window length a caller should cut from a sequence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffpose.data.skeleton import NUM_JOINTS

# VideoPose3D's released architectures, by receptive field in frames (``-arc`` in its run.py).
FILTER_WIDTHS: dict[int, tuple[int, ...]] = {
    27: (3, 3, 3),
    81: (3, 3, 3, 3),
    243: (3, 3, 3, 3, 3),
}


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a whole residual branch per row of ``x`` with probability ``rate``.

    x: (N, ...). Survivors are scaled by 1 / (1 - rate) so that E[output] = x. Identity when not training.
    """
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class Attention(nn.Module):
    """Multi-head self-attention over the middle axis of (N, L, C): softmax(Q K^T / sqrt(C / heads)) V."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.unbind(2)  # each (N, L, H, d)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.drop(self.proj(out.transpose(1, 2).reshape(n, length, dim)))  # (N, L, C)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then x + MLP(LN(x)); each branch under stochastic depth."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, drop_path: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, C) -> (N, L, C)
        x = x + drop_path(self.attention(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class MixSTE(nn.Module):
    """Mixed spatio-temporal encoder: per layer, attention over joints within each frame, then over frames
    within each joint.

    x (B, T, J, in_dim) -> embed + joint embedding -> [spatial block -> LN_s -> (+ frame embedding, first
    layer only) -> temporal block -> LN_t] x depth -> LN -> linear -> (B, T, J, out_dim).

    As in the released model, the two post-block LayerNorms (LN_s, LN_t) are shared by all layers, the
    position embeddings start at zero, and the stochastic-depth rate grows linearly from 0 to ``drop_path``
    over the layers. Any T <= ``frames`` works: the frame embedding is sliced to the first T rows.
    """

    def __init__(
        self,
        in_dim: int = 2,
        out_dim: int = 3,
        frames: int = 243,
        dim: int = 512,
        depth: int = 8,
        heads: int = 8,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        drop_path: float = 0.1,
        joints: int = NUM_JOINTS,
    ) -> None:
        super().__init__()
        self.frames = frames
        self.joints = joints
        self.embedding = nn.Linear(in_dim, dim)
        self.joint_embedding = nn.Parameter(torch.zeros(joints, dim))
        self.frame_embedding = nn.Parameter(torch.zeros(frames, dim))
        self.drop = nn.Dropout(dropout)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.spatial = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, dropout, r) for r in rates)
        self.temporal = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, dropout, r) for r in rates)
        self.spatial_norm = nn.LayerNorm(dim, eps=1e-6)
        self.temporal_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out_dim))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, J, in_dim) -> (pose (B, T, J, out_dim), features (B, T, J, dim)).

        The features are the last hidden layer (after the final temporal LayerNorm): per-frame, per-joint
        context for a frame-level denoiser.
        """
        b, t, j, _ = x.shape
        if t > self.frames or j != self.joints:
            raise ValueError(f"MixSTE built for T <= {self.frames}, J = {self.joints}; got T = {t}, J = {j}")
        h = self.drop(self.embedding(x) + self.joint_embedding)  # (B, T, J, C)
        dim = h.shape[-1]
        h = h.reshape(b * t, j, dim)
        for layer, (spatial, temporal) in enumerate(zip(self.spatial, self.temporal, strict=True)):
            h = self.spatial_norm(spatial(h))  # (B*T, J, C): joints of one frame attend to each other
            h = h.view(b, t, j, dim).transpose(1, 2).reshape(b * j, t, dim)
            if layer == 0:
                h = self.drop(h + self.frame_embedding[:t])
            h = self.temporal_norm(temporal(h))  # (B*J, T, C): frames of one joint attend to each other
            h = h.view(b, j, t, dim).transpose(1, 2).reshape(b * t, j, dim)
        features = h.view(b, t, j, dim)
        return self.head(features), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, J, in_dim) -> (B, T, J, out_dim), one pose per input frame."""
        return self.forward_with_features(x)[0]


def grouped(x: torch.Tensor, width: int) -> torch.Tensor:
    """Consecutive frames side by side: (B, L, C) -> (B, L / width, width * C), frame-major within a group."""
    b, length, channels = x.shape
    return x.reshape(b, length // width, width * channels)


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Conv1d weight (C_out, C_in, w) -> (C_out, w * C_in), matching ``grouped``'s layout."""
    return weight.permute(0, 2, 1).reshape(weight.shape[0], -1)


def batch_norm_last(norm: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over the last axis of (B, L, C): the same statistics as over (B, C, L)."""
    return norm(x.reshape(-1, x.shape[-1])).view(x.shape)


class ResidualBlock(nn.Module):
    """x[aligned] + ReLU(BN(conv1x1(ReLU(BN(conv_w,d(x)))))): one VideoPose3D block (dropout after each ReLU).

    The width-w convolution has dilation d over whole sequences (``forward``, channels first). On a window
    of exactly the receptive field only one output frame is needed, and the same weights act with stride w
    and no dilation (``forward_strided``): each output frame is one matrix product with w input frames
    side by side, channels last. The residual is the input frame the convolution is centred on, or its last
    frame when causal.
    """

    def __init__(self, channels: int, width: int, dilation: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.width = width
        self.dilation = dilation
        self.causal = causal
        self.conv = nn.Conv1d(channels, channels, width, dilation=dilation, bias=False)
        self.norm = nn.BatchNorm1d(channels, momentum=0.1)
        self.pointwise = nn.Conv1d(channels, channels, 1, bias=False)
        self.pointwise_norm = nn.BatchNorm1d(channels, momentum=0.1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L) -> (B, C, L - (w - 1) d)
        span = (self.width - 1) * self.dilation
        first = span if self.causal else span // 2
        residual = x[:, :, first : x.shape[2] - span + first]
        y = self.drop(F.relu(self.norm(self.conv(x))))
        return residual + self.drop(F.relu(self.pointwise_norm(self.pointwise(y))))

    def forward_strided(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, L / w, C)
        first = self.width - 1 if self.causal else self.width // 2
        residual = x.view(x.shape[0], -1, self.width, x.shape[2])[:, :, first]
        y = F.linear(grouped(x, self.width), as_matrix(self.conv.weight))
        y = self.drop(F.relu(batch_norm_last(self.norm, y)))
        y = F.linear(y, self.pointwise.weight[:, :, 0])
        return residual + self.drop(F.relu(batch_norm_last(self.pointwise_norm, y)))


class VideoPose3D(nn.Module):
    """Dilated temporal convolution lifter (valid convolution, no padding).

    x (B, T, J, in_dim) -> conv_w0 -> BN -> ReLU -> [residual block, dilation w0*...*w_{i-1}] -> conv1x1
    -> (B, T - receptive_field + 1, J, out_dim). Output frame o belongs to input frame o + ``output_offset``
    (the window's centre, or its last frame when causal), and depends only on input frames
    o .. o + receptive_field - 1.

    When T == receptive_field, ``forward`` runs the strided form of the same weights (VideoPose3D's
    ``TemporalModelOptimized1f``, here as matrix products): in eval mode it gives the dilated result; in
    training mode BatchNorm sees the statistics of the frames the output needs, as in the original training.
    """

    def __init__(
        self,
        in_dim: int = 2,
        out_dim: int = 3,
        filter_widths: tuple[int, ...] = (3, 3, 3),
        channels: int = 1024,
        dropout: float = 0.25,
        causal: bool = False,
        joints: int = NUM_JOINTS,
    ) -> None:
        super().__init__()
        if not filter_widths or any(w < 1 or w % 2 == 0 for w in filter_widths):
            raise ValueError(f"filter widths must be odd and positive, got {filter_widths}")
        self.filter_widths = tuple(filter_widths)
        self.causal = causal
        self.joints = joints
        self.out_dim = out_dim
        self.expand = nn.Conv1d(joints * in_dim, channels, filter_widths[0], bias=False)
        self.expand_norm = nn.BatchNorm1d(channels, momentum=0.1)
        dilations = [math.prod(filter_widths[:i]) for i in range(1, len(filter_widths))]
        self.blocks = nn.ModuleList(
            ResidualBlock(channels, w, d, dropout, causal) for w, d in zip(filter_widths[1:], dilations, strict=True)
        )
        self.shrink = nn.Conv1d(channels, joints * out_dim, 1)
        self.drop = nn.Dropout(dropout)

    @property
    def receptive_field(self) -> int:
        """Frames in one window: the product of the filter widths (27, 81, 243 for the released ones)."""
        return math.prod(self.filter_widths)

    @property
    def frames(self) -> int:
        """Window length a caller should cut: the receptive field."""
        return self.receptive_field

    @property
    def output_offset(self) -> int:
        """Index within a window of the frame its output pose belongs to: centre, or last when causal."""
        return self.receptive_field - 1 if self.causal else self.receptive_field // 2

    def forward(self, x: torch.Tensor, strided: bool | None = None) -> torch.Tensor:
        """x: (B, T, J, in_dim), T >= receptive_field -> (B, T - receptive_field + 1, J, out_dim).

        strided: None picks the strided form exactly when T == receptive_field; True demands it (and that
        T), False forces the dilated form.
        """
        b, t, j, c = x.shape
        if t < self.receptive_field or j != self.joints:
            raise ValueError(
                f"VideoPose3D needs T >= {self.receptive_field} and J = {self.joints}; got T = {t}, J = {j}"
            )
        if strided is None:
            strided = t == self.receptive_field
        elif strided and t != self.receptive_field:
            raise ValueError(f"the strided form takes exactly {self.receptive_field} frames, got {t}")
        h = x.reshape(b, t, j * c)  # (B, T, J*in)
        if strided:
            h = F.linear(grouped(h, self.filter_widths[0]), as_matrix(self.expand.weight))
            h = self.drop(F.relu(batch_norm_last(self.expand_norm, h)))  # (B, RF / w0, C)
            for block in self.blocks:
                h = block.forward_strided(h)
            out = F.linear(h, self.shrink.weight[:, :, 0], self.shrink.bias)  # (B, 1, J*out)
        else:
            h = self.drop(F.relu(self.expand_norm(self.expand(h.transpose(1, 2)))))  # (B, C, T - w0 + 1)
            for block in self.blocks:
                h = block(h)
            out = self.shrink(h).transpose(1, 2)  # (B, T', J*out)
        return out.reshape(b, -1, j, self.out_dim)
