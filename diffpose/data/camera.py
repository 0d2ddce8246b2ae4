"""Camera maths as small pure torch functions (VideoPose3D conventions).

Quaternions are (w, x, y, z). A camera's ``orientation`` rotates camera coordinates into world
coordinates and its ``translation`` is the camera centre in world coordinates, so
``X_cam = R^T (X_world - t)``. Camera axes: x right, y down, z forward.
"""

from __future__ import annotations

import torch


def qrot(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate vectors ``v`` (..., 3) by unit quaternions ``q`` (..., 4); shapes broadcast."""
    qvec = q[..., 1:]
    uv = torch.cross(qvec.expand_as(v), v, dim=-1)
    uuv = torch.cross(qvec.expand_as(v), uv, dim=-1)
    return v + 2.0 * (q[..., :1] * uv + uuv)


def qinverse(q: torch.Tensor) -> torch.Tensor:
    """Inverse of unit quaternions: the conjugate."""
    return torch.cat([q[..., :1], -q[..., 1:]], dim=-1)


def world_to_camera(x: torch.Tensor, orientation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """World points (..., 3) into camera coordinates: ``R^T (x - t)``; ``orientation`` (4,), ``translation`` (3,)."""
    q = qinverse(orientation).expand(*x.shape[:-1], 4)
    return qrot(q, x - translation)


def project(
    x: torch.Tensor,
    focal: torch.Tensor,
    center: torch.Tensor,
    radial: torch.Tensor | None = None,
    tangential: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pinhole projection of camera points (..., 3) to pixels (..., 2), with lens distortion.

    ``focal`` and ``center`` (2,) in pixels; ``radial`` (k1, k2, k3) and ``tangential`` (p1, p2) as in
    Human3.6M's camera files. The distortion is VideoPose3D's ``project_to_2d``: with ``xy = x[:2] / x[2]``
    clamped to [-1, 1] and ``r2 = |xy|^2``, ``xy' = xy (1 + k1 r2 + k2 r2^2 + k3 r2^3 + p.xy) + p r2``.
    Without distortion terms this is ``f * x[:2] / x[2] + c``.
    """
    xy = x[..., :2] / x[..., 2:3]
    if radial is not None and tangential is not None:
        xy = xy.clamp(-1.0, 1.0)
        r2 = (xy**2).sum(-1, keepdim=True)
        gain = 1.0 + radial[0] * r2 + radial[1] * r2**2 + radial[2] * r2**3
        xy = xy * (gain + (tangential * xy).sum(-1, keepdim=True)) + tangential * r2
    return focal * xy + center


def normalize_screen(uv: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Pixels to [-1, 1] along x keeping the aspect ratio: ``uv / w * 2 - [1, h / w]`` (VideoPose3D)."""
    offset = torch.tensor([1.0, height / width], dtype=uv.dtype, device=uv.device)
    return uv / width * 2.0 - offset


def image_coordinates(uv: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Inverse of :func:`normalize_screen`."""
    offset = torch.tensor([1.0, height / width], dtype=uv.dtype, device=uv.device)
    return (uv + offset) * width / 2.0
