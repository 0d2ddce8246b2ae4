"""GraFormer (Zhao et al., CVPR 2022): the frame-based 2D-to-3D lifter, DiffPose's context encoder.

Architecture of the released DiffPose ``models/gcnpose.py``: a Chebyshev input layer, ``blocks`` pairs of
(attention block, residual Chebyshev block), a Chebyshev output layer. At the defaults it has 654,344
parameters, exactly the released count without the time-embedding MLP that ``GCNpose`` builds but never calls
(839,432 with it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from diffpose.models.graph import AttentionBlock, ChebConv, ChebResBlock


class GraFormer(nn.Module):
    """2D joints (B, J, in_dim) -> 3D joints (B, J, out_dim); the last hidden layer (B, J, hidden) is f.

    dropout acts after each attention/feed-forward sublayer; attn_dropout on the attention weights and
    cheb_dropout inside the residual Chebyshev blocks are the released code's fixed 0.1. laplacian replaces
    the skeleton's scaled Laplacian as the Chebyshev operator.
    """

    def __init__(self, in_dim: int = 2, out_dim: int = 3, hidden: int = 96, blocks: int = 5, heads: int = 4,
                 dropout: float = 0.25, order: int = 2, *, attn_dropout: float = 0.1,
                 cheb_dropout: float = 0.1, laplacian: np.ndarray | None = None) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.hidden = in_dim, out_dim, hidden
        self.input = ChebConv(in_dim, hidden, order, laplacian)
        self.attention = nn.ModuleList(
            AttentionBlock(hidden, heads, dropout, attn_dropout) for _ in range(blocks)
        )
        self.graph = nn.ModuleList(
            ChebResBlock(hidden, order, cheb_dropout, laplacian=laplacian) for _ in range(blocks)
        )
        self.head = ChebConv(hidden, out_dim, order, laplacian)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-joint context features f, the input of the output layer: (B, J, in_dim) -> (B, J, hidden)."""
        h = self.input(x)
        for attention, graph in zip(self.attention, self.graph, strict=True):
            h = graph(attention(h))
        return h

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pose (B, J, out_dim), features (B, J, hidden)) from one pass."""
        f = self.features(x)
        return self.head(f), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
