"""The CMU motion-capture stand-in for Human3.6M (``shared/data/mocap17``), read as VideoPose3D format.

Files in ``root``: ``data_3d_cmu_mocap17.npz`` (17 joints, world metres), ``cameras_cmu_mocap17.json``,
``meta_cmu_mocap17.json`` (split, fps) and the 2D files ``data_2d_cmu_mocap17_<detector>.npz`` and/or
``data_2d_cmu_mocap17_<detector>_gmm.npz``, looked up in ``detections_dir`` first, then in ``root``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from diffpose.data.h36m import DEFAULT_SIGMA_PX, read_cameras, read_h36m_format, read_poses_2d, read_subjects
from diffpose.data.source import Clip, DataError, SourceInfo

PREFIX = "cmu_mocap17"


def _meta(path: Path) -> tuple[dict[str, tuple[str, ...]], float]:
    """Split (``train``/``test`` -> subjects) and frame rate from ``meta_cmu_mocap17.json``."""
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(path, "file not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"cannot read json: {e}") from e
    if not isinstance(meta, dict):
        raise DataError(path, "expected a json object")
    split, fps = meta.get("split"), meta.get("fps")
    if not isinstance(split, dict) or not all(isinstance(v, list) for v in split.values()):
        raise DataError(path, "'split' must map split names to lists of subjects")
    if not isinstance(fps, int | float) or fps <= 0:
        raise DataError(path, f"'fps' must be a positive number, got {fps!r}")
    return {k: tuple(str(s) for s in v) for k, v in split.items()}, float(fps)


def check_mocap17(root: str | Path, detector: str = "gt") -> None:
    """Check the files every reading of ``root`` needs (cameras, split, 3D poses, the ``detector``'s 2D file),
    in about half a second: before the detections are synthesised from the ground truth, not after."""
    root = Path(root)
    meta_path = root / f"meta_{PREFIX}.json"
    splits, _fps = _meta(meta_path)
    read_subjects(root / f"data_3d_{PREFIX}.npz", read_cameras(root / f"cameras_{PREFIX}.json"), splits,
                  split_source=meta_path)
    path_2d = root / f"data_2d_{PREFIX}_{detector}.npz"
    if not path_2d.is_file():
        raise DataError(path_2d, "file not found")
    read_poses_2d(path_2d)


def _find(name: str, dirs: Sequence[Path]) -> Path | None:
    return next((d / name for d in dirs if (d / name).is_file()), None)


def read_mocap17(
    root: str | Path,
    detector: str = "gt",
    detections_dir: str | Path | None = None,
    subjects: Sequence[str] | None = None,
    sigma_px: float = DEFAULT_SIGMA_PX,
) -> tuple[SourceInfo, list[Clip]]:
    """Clips of the CMU stand-in; see :func:`~diffpose.data.h36m.read_h36m_format`."""
    root = Path(root)
    dirs = [Path(detections_dir), root] if detections_dir is not None else [root]
    name_2d, name_gmm = f"data_2d_{PREFIX}_{detector}.npz", f"data_2d_{PREFIX}_{detector}_gmm.npz"
    path_2d, path_gmm = _find(name_2d, dirs), _find(name_gmm, dirs)
    if path_2d is None and path_gmm is None:
        looked = ", ".join(str(d) for d in dirs)
        raise DataError(dirs[0] / name_2d, f"file not found, nor {name_gmm} (looked in {looked})")
    meta_path = root / f"meta_{PREFIX}.json"
    splits, fps = _meta(meta_path)
    return read_h36m_format(
        root / f"data_3d_{PREFIX}.npz",
        path_2d,
        path_gmm,
        read_cameras(root / f"cameras_{PREFIX}.json"),
        dataset="mocap17",
        detector=detector,
        splits=splits,
        fps=fps,
        subjects=subjects,
        sigma_px=sigma_px,
        split_source=meta_path,
    )
