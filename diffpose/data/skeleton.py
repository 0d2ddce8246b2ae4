"""The 17-joint Human3.6M skeleton (VideoPose3D order): joints, parents, symmetry and graph.

Every graph the models use is built here from ``PARENTS``, nowhere else.
"""

from __future__ import annotations

import numpy as np

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine", "thorax",
    "neck_nose", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist",
)
NUM_JOINTS = len(JOINT_NAMES)
ROOT = 0
PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
LEFT: tuple[int, ...] = (4, 5, 6, 11, 12, 13)
RIGHT: tuple[int, ...] = (1, 2, 3, 14, 15, 16)

# Human3.6M's 32 joints as VideoPose3D stores them; these 17 are kept (``remove_joints`` of the rest).
H36M32_TO_17: tuple[int, ...] = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)

# Joints whose 2D detections are least certain (wrists, ankles), used by the detection synthesiser.
EXTREMITIES: tuple[int, ...] = (3, 6, 13, 16)


def flip_permutation() -> np.ndarray:
    """Index array that swaps left and right joints: ``pose[..., perm, :]`` is the mirrored labelling."""
    perm = np.arange(NUM_JOINTS)
    perm[list(LEFT)] = RIGHT
    perm[list(RIGHT)] = LEFT
    return perm


def edges() -> list[tuple[int, int]]:
    """Bones as (parent, child) pairs."""
    return [(p, c) for c, p in enumerate(PARENTS) if p >= 0]


def adjacency(self_loops: bool = False) -> np.ndarray:
    """Symmetric 0/1 adjacency of the skeleton graph, shape (17, 17), float32."""
    a = np.zeros((NUM_JOINTS, NUM_JOINTS), dtype=np.float32)
    for p, c in edges():
        a[p, c] = a[c, p] = 1.0
    if self_loops:
        a += np.eye(NUM_JOINTS, dtype=np.float32)
    return a


def scaled_laplacian() -> np.ndarray:
    """2 L / lambda_max - I with L = I - D^-1/2 A D^-1/2, the argument of Chebyshev graph filters."""
    a = adjacency(self_loops=False)
    d = 1.0 / np.sqrt(a.sum(1))
    lap = np.eye(NUM_JOINTS, dtype=np.float64) - a * d[:, None] * d[None, :]
    lam = np.linalg.eigvalsh(lap).max()
    return (2.0 * lap / lam - np.eye(NUM_JOINTS)).astype(np.float32)
