"""The 2D input and the lifted 3D side by side: a PNG of one frame, and the whole sequence as a GIF
(matplotlib's ``PillowWriter``) and, where ffmpeg exists, an MP4 (``FFMpegWriter``).

Uncertain joints are drawn wider. Left: the 2D input, each joint's marker radius 3 pt + 0.3 pt per pixel of
its heaviest kernel's sigma (filled-in joints, not detected, hollow). Right: the 3D output, root-relative, the
camera's axes turned so that up is up (x right, z forward into the picture, -y up), each joint's radius
3 pt + 0.1 pt per millimetre of the hypotheses' spread (lifters that sample; else 3 pt). Left limbs blue,
right limbs red. Matplotlib ``Figure`` objects, no pyplot state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import animation
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from diffpose.data.keypoints import Keypoints
from diffpose.data.skeleton import LEFT, NUM_JOINTS, PARENTS, RIGHT
from diffpose.lift import Lifted

RADIUS_PT = 3.0
PT_PER_PX_SIGMA = 0.3
PT_PER_MM_SPREAD = 0.1
NOMINAL_WIDTH_PX = 1000.0  # normalised sigmas (a store's, image size unknown) are drawn as on this width


def _side(j: int) -> str:
    return "tab:blue" if j in LEFT else "tab:red" if j in RIGHT else "0.25"


@dataclass(frozen=True)
class Scene:
    """What is drawn, per frame t."""

    pose_2d: np.ndarray        # (T, 17, 2) pixels (normalised units where the image size is unknown)
    sigma_px: np.ndarray       # (T, 17) the input's 2D sigma, pixels
    filled: np.ndarray         # (T, 17) bool
    pose_3d: np.ndarray        # (T, 17, 3) metres, root-relative, camera axes
    spread_mm: np.ndarray      # (T, 17) mm (zeros for a lifter that does not sample)
    frame_id: np.ndarray       # (T,)
    unit_2d: str
    title: str

    @property
    def frames(self) -> int:
        return self.pose_2d.shape[0]


def scene(lifted: Lifted, kp: Keypoints) -> Scene:
    sigma = kp.sigma_pixels() * (1.0 if kp.width is not None else NOMINAL_WIDTH_PX / 2.0)
    spread = np.zeros(lifted.pose.shape[:2]) if lifted.spread is None else lifted.spread * 1000.0
    return Scene(pose_2d=kp.pixels(), sigma_px=sigma, filled=kp.filled, pose_3d=lifted.pose.astype(np.float64),
                 spread_mm=spread, frame_id=kp.frame_id, unit_2d="px" if kp.width is not None else "normalised",
                 title=f"{lifted.config.model.lifter} on {kp.path.name}")


class _Drawing:
    """One figure whose artists are updated in place frame by frame."""

    def __init__(self, s: Scene, dpi: int):
        self.s = s
        self.fig = Figure(figsize=(10.0, 5.0), dpi=dpi)
        FigureCanvasAgg(self.fig)
        self.ax2 = self.fig.add_subplot(1, 2, 1)
        self.ax3 = self.fig.add_subplot(1, 2, 2, projection="3d")
        lo, hi = s.pose_2d.reshape(-1, 2).min(0), s.pose_2d.reshape(-1, 2).max(0)
        centre, half = (lo + hi) / 2.0, (hi - lo).max() / 2.0 * 1.1 + 1e-6
        self.ax2.set_xlim(centre[0] - half, centre[0] + half)
        self.ax2.set_ylim(centre[1] + half, centre[1] - half)  # image rows grow downwards
        self.ax2.set_aspect("equal")
        self.ax2.set_title(f"2D input ({s.unit_2d}); radius ~ 2D sigma, hollow = filled in", fontsize=9)
        reach = float(np.abs(s.pose_3d).max()) * 1.1 + 1e-6
        for set_lim in (self.ax3.set_xlim, self.ax3.set_ylim, self.ax3.set_zlim):
            set_lim(-reach, reach)
        self.ax3.set_box_aspect((1.0, 1.0, 1.0))
        self.ax3.set_xlabel("x (m)")
        self.ax3.set_ylabel("z (m)")
        self.ax3.set_zlabel("-y (m)")
        self.ax3.set_title("3D output (root-relative); radius ~ hypotheses' spread", fontsize=9)
        self.ax3.view_init(elev=10.0, azim=-80.0)
        self.ax3.locator_params(nbins=4)
        self.ax3.tick_params(labelsize=7)
        bones = [(p, c) for c, p in enumerate(PARENTS) if p >= 0]
        self.bones2 = [(p, c, self.ax2.plot([], [], color=_side(c), lw=2)[0]) for p, c in bones]
        self.bones3 = [(p, c, self.ax3.plot([], [], [], color=_side(c), lw=2)[0]) for p, c in bones]
        self.joints2 = [self.ax2.plot([], [], "o", color=_side(j), mec=_side(j))[0] for j in range(NUM_JOINTS)]
        self.joints3 = [self.ax3.plot([], [], [], "o", color=_side(j), alpha=0.6)[0] for j in range(NUM_JOINTS)]
        self.label = self.fig.suptitle("")

    def draw(self, t: int) -> None:
        s = self.s
        uv, xyz = s.pose_2d[t], s.pose_3d[t]
        up = np.stack([xyz[:, 0], xyz[:, 2], -xyz[:, 1]], -1)  # camera axes -> (right, forward, up)
        for p, c, line in self.bones2:
            line.set_data(uv[[p, c], 0], uv[[p, c], 1])
        for p, c, line in self.bones3:
            line.set_data_3d(up[[p, c], 0], up[[p, c], 1], up[[p, c], 2])
        for j, marker in enumerate(self.joints2):
            marker.set_data(uv[j:j + 1, 0], uv[j:j + 1, 1])
            marker.set_markersize(2.0 * (RADIUS_PT + PT_PER_PX_SIGMA * s.sigma_px[t, j]))
            marker.set_markerfacecolor("none" if s.filled[t, j] else _side(j))
        for j, marker in enumerate(self.joints3):
            marker.set_data_3d(up[j:j + 1, 0], up[j:j + 1, 1], up[j:j + 1, 2])
            marker.set_markersize(2.0 * (RADIUS_PT + PT_PER_MM_SPREAD * s.spread_mm[t, j]))
        self.label.set_text(f"{s.title}: frame {int(s.frame_id[t])}")


def save_png(s: Scene, frame: int, path: Path, dpi: int = 100) -> None:
    """Frame ``frame`` (an index into the sequence) as a PNG."""
    d = _Drawing(s, dpi)
    d.draw(frame)
    d.fig.savefig(path, format="png")


def ffmpeg_available() -> bool:
    return animation.writers.is_available("ffmpeg")


def save_animation(s: Scene, path: Path, kind: str = "gif", fps: float = 25.0, dpi: int = 72) -> None:
    """Every frame, as a GIF (``kind = "gif"``) or an MP4 (``"mp4"``, needs ffmpeg)."""
    if kind == "gif":
        writer: animation.AbstractMovieWriter = animation.PillowWriter(fps=fps)
    elif kind == "mp4":
        writer = animation.FFMpegWriter(fps=fps, codec="libx264", extra_args=["-pix_fmt", "yuv420p"])
    else:
        raise ValueError(f"kind must be 'gif' or 'mp4', got {kind!r}")
    d = _Drawing(s, dpi)
    with writer.saving(d.fig, str(path), dpi):
        for t in range(s.frames):
            d.draw(t)
            writer.grab_frame()
