"""The DiffPose denoiser: GraFormer-style blocks over the skeleton, conditioned on the diffusion step.

Architecture of the released ``models/gcndiff.py``: a Chebyshev input layer, ``blocks`` pairs of (attention
block, residual Chebyshev block whose middle receives the step embedding), a Chebyshev output layer. The step
k enters as a sinusoidal embedding (hidden) -> Linear -> swish -> Linear (4 hidden), then swish and one
Linear (4 hidden -> hidden) per block. At x_dim=5, cond_dim=0 (the released "uvxyz" model) it has 1,025,674
parameters, the released count.

Conditioning (the paper's context f and the 2D input) is concatenated with x_k before the input layer.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffpose.models.graph import AttentionBlock, ChebConv, ChebResBlock


def step_embedding(t: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal step embedding (DDPM): [sin(t w_i), cos(t w_i)], w_i = 10000^(-i / (dim/2 - 1)), i < dim/2.

    t: (B,) integer or real steps. Returns (B, dim) in dtype; odd dim is zero-padded.
    """
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=t.device, dtype=dtype) * (-math.log(10000.0) / (half - 1)))
    angle = t.to(dtype)[:, None] * freq[None, :]  # (B, half)
    emb = torch.cat((angle.sin(), angle.cos()), dim=1)
    return F.pad(emb, (0, dim % 2))


class GraphDenoiser(nn.Module):
    """epsilon_theta(x_k, k, c): (B, J, x_dim), (B,) or (), (B, J, cond_dim) or None -> (B, J, x_dim).

    What the output means (noise or x_0) is the caller's convention. dropout, attn_dropout and cheb_dropout
    as in ``GraFormer``; laplacian replaces the skeleton's scaled Laplacian.
    """

    def __init__(self, x_dim: int = 3, cond_dim: int = 0, hidden: int = 96, blocks: int = 5, heads: int = 4,
                 dropout: float = 0.25, order: int = 2, *, attn_dropout: float = 0.1,
                 cheb_dropout: float = 0.1, laplacian: np.ndarray | None = None) -> None:
        super().__init__()
        emb_dim = 4 * hidden
        self.x_dim, self.cond_dim, self.hidden = x_dim, cond_dim, hidden
        self.time = nn.Sequential(nn.Linear(hidden, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input = ChebConv(x_dim + cond_dim, hidden, order, laplacian)
        self.attention = nn.ModuleList(
            AttentionBlock(hidden, heads, dropout, attn_dropout) for _ in range(blocks)
        )
        self.graph = nn.ModuleList(
            ChebResBlock(hidden, order, cheb_dropout, emb_dim, laplacian) for _ in range(blocks)
        )
        self.head = ChebConv(hidden, x_dim, order, laplacian)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_dim > 0:
            if cond is None or cond.shape[-1] != self.cond_dim:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"denoiser expects cond (B, J, {self.cond_dim}), got {got}")
            x = torch.cat((x, cond.to(x.dtype)), dim=-1)  # (B, J, x_dim + cond_dim)
        elif cond is not None:
            raise ValueError("denoiser was built with cond_dim=0 but received cond")
        weight = self.time[0].weight
        t = t.to(weight.device).expand(x.shape[0])
        # sin/cos in at least float32 even when the weights are half precision: steps reach the hundreds
        sinusoid = step_embedding(t, self.hidden, torch.promote_types(weight.dtype, torch.float32))
        emb = F.silu(self.time(sinusoid.to(weight.dtype)))  # (B, 4 hidden)
        h = self.input(x)
        for attention, graph in zip(self.attention, self.graph, strict=True):
            h = graph(attention(h), emb)
        return self.head(h)
