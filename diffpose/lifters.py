"""Every 2D-to-3D lifter behind one interface, named in one registry: ``LIFTERS``.

A :class:`Lifter` is an ``nn.Module`` with ``loss(batch, generator)`` (a scalar to minimise) and
``predict(batch, generator)`` (the centre frame of each window, root-relative metres); lifters that give a
pose for every frame of a window also have ``predict_frames`` (chunked evaluation). The training loop in
``train.py`` serves all of them. Baselines are plain networks: frame-based ones (:class:`DirectLifter`) read
the centre frame, temporal ones (:class:`SequenceLifter`) the whole window. :class:`DiffPose` adds the
diffusion around a denoiser and a frozen context encoder that is itself a baseline lifter (GraFormer on the
centre frame, or MixSTE on the window), trained first and cached by its config.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffpose.config import Config
from diffpose.data.store import Batch, PoseStore
from diffpose.diffusion.gmm import DepthPrior, GaussianMixture, gmm_q_sample, initial_distribution, standard_normal
from diffpose.diffusion.sampler import aggregate, sample
from diffpose.diffusion.schedule import Schedule
from diffpose.models.baselines import SemGCN, SimpleBaseline
from diffpose.models.denoiser import GraphDenoiser
from diffpose.models.graformer import GraFormer
from diffpose.models.temporal import FILTER_WIDTHS, MixSTE, VideoPose3D

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    pose: torch.Tensor                      # (B, J, 3) root-relative, metres
    hypotheses: torch.Tensor | None = None  # (H, B, J, 3) root-relative, metres, when the lifter samples


class Lifter(nn.Module):
    """The interface the training loop sees.

    ``predicts_frames``: whether :meth:`predict_frames` gives a pose for every frame of a window (every
    lifter but those with one output per window, like VideoPose3D)."""

    predicts_frames: bool = True

    def loss(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, batch: Batch, generator: torch.Generator) -> Prediction:
        """The centre frame of each window: pose (B, J, 3), hypotheses (H, B, J, 3)."""
        raise NotImplementedError

    def predict_frames(self, batch: Batch, generator: torch.Generator) -> Prediction:
        """Every frame of each window: pose (B, T, J, 3), hypotheses (H, B, T, J, 3)."""
        raise NotImplementedError(f"{type(self).__name__} gives one pose per window")


def _centre(x: torch.Tensor) -> torch.Tensor:
    """The centre frame of (B, T, ...) windows."""
    return x[:, x.shape[1] // 2]


def _root_relative(pose: torch.Tensor) -> torch.Tensor:
    return pose - pose[..., :1, :]


def _frames(x: torch.Tensor) -> torch.Tensor:
    """Every frame of (B, T, ...) windows as a batch of frames (B*T, ...)."""
    return x.flatten(0, 1)


class DirectLifter(Lifter):
    """A network that maps the centre frame's 2D (B, J, 2) to 3D (B, J, 3): every frame-based baseline.

    loss "mpjpe" (GraFormer, SemGCN) or "mse" (SimpleBaseline, as published)."""

    def __init__(self, net: nn.Module, loss: str = "mpjpe"):
        super().__init__()
        self.net = net
        self.loss_kind = loss

    def forward(self, pose_2d: torch.Tensor) -> torch.Tensor:
        return self.net(pose_2d)

    def loss(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        pred = self.net(_centre(batch.pose_2d))
        target = _centre(batch.pose_3d)
        if self.loss_kind == "mse":
            return (pred - target).square().mean()
        return (pred - target).norm(dim=-1).mean()

    def predict(self, batch: Batch, generator: torch.Generator) -> Prediction:
        return Prediction(pose=_root_relative(self.net(_centre(batch.pose_2d))))

    def predict_frames(self, batch: Batch, generator: torch.Generator) -> Prediction:
        b, t = batch.pose_2d.shape[:2]
        pose = self.net(_frames(batch.pose_2d))                              # (B*T, J, 3)
        return Prediction(pose=_root_relative(pose).unflatten(0, (b, t)))


class SequenceLifter(Lifter):
    """A network that maps a window of 2D poses (B, T, J, 2) to 3D: the temporal baselines.

    ``seq2seq`` (MixSTE): one pose per input frame (B, T, J, 3); the loss is MPJPE over every frame of the
    window plus ``velocity_weight`` times the velocity error (MixSTE's training loss without its per-joint
    weights and temporal-consistency term). Otherwise (VideoPose3D, T = its receptive field): one pose, the
    centre frame's (B, 1, J, 3), trained with MPJPE. Both predict the centre frame.
    """

    def __init__(self, net: MixSTE | VideoPose3D, seq2seq: bool, velocity_weight: float = 2.0):
        super().__init__()
        self.net = net
        self.seq2seq = seq2seq
        self.predicts_frames = seq2seq
        self.velocity_weight = velocity_weight

    def forward(self, pose_2d: torch.Tensor) -> torch.Tensor:
        return self.net(pose_2d)

    def loss(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        pred = self.net(batch.pose_2d)                                       # (B, T or 1, J, 3)
        if not self.seq2seq:
            return (pred[:, 0] - _centre(batch.pose_3d)).norm(dim=-1).mean()
        target = batch.pose_3d                                               # (B, T, J, 3)
        loss = (pred - target).norm(dim=-1).mean()
        if self.velocity_weight and pred.shape[1] > 1:
            velocity = torch.diff(pred, dim=1) - torch.diff(target, dim=1)   # (B, T-1, J, 3)
            loss = loss + self.velocity_weight * velocity.norm(dim=-1).mean()
        return loss

    def predict(self, batch: Batch, generator: torch.Generator) -> Prediction:
        pred = self.net(batch.pose_2d)
        pose = _centre(pred) if self.seq2seq else pred[:, 0]
        return Prediction(pose=_root_relative(pose))

    def predict_frames(self, batch: Batch, generator: torch.Generator) -> Prediction:
        if not self.seq2seq:
            return super().predict_frames(batch, generator)
        return Prediction(pose=_root_relative(self.net(batch.pose_2d)))


class DiffPose(Lifter):
    """DiffPose with the switches of ``cfg.diffusion``.

    mode "paper": the diffused variable is the root-relative 3D pose divided by ``pose_scale``; the forward
    process moves it toward the initial distribution H_K (a GMM per joint from the 2D GMM and a per-joint
    depth prior; ``gmm = false``: toward N(0, I)); the denoiser is conditioned on the 2D input and, with
    ``context``, on the frozen encoder's pose and per-joint features (of the centre frame; a MixSTE encoder
    reads the whole window for them); N hypotheses are drawn from H_K
    (``heatmap_init = false``: from N(0, I)) and denoised in K DDIM steps, then aggregated.

    mode "refiner" (the released code): the diffused variable is "uvxyz" = (2D input, 3D); training noise is
    N(0, 1) scaled by (sigma_u, sigma_v, 1, 1, 1) of the drawn 2D kernel, without a mean shift; inference
    starts from (2D, encoder's pose) at ``t_start`` without added noise and runs K DDIM steps.
    """

    def __init__(self, cfg: Config, encoder: GraFormer | MixSTE | None):
        super().__init__()
        d, m = cfg.diffusion, cfg.model
        self.cfg = d
        self.refiner = d.mode == "refiner"
        self.schedule = Schedule.make(kind=d.schedule, steps=d.train_steps, beta_start=d.beta_start,
                                      beta_end=d.beta_end)
        self.encoder = encoder
        self.temporal_encoder = isinstance(encoder, MixSTE)
        if encoder is not None:
            encoder.requires_grad_(False)
        x_dim = 5 if self.refiner else 3
        cond_dim = 0 if self.refiner else 2 + (3 + cfg.encoder.hidden if d.context else 0)
        self.denoiser = GraphDenoiser(x_dim=x_dim, cond_dim=cond_dim, hidden=m.hidden, blocks=m.blocks,
                                      heads=m.heads, dropout=m.dropout)
        # Fitted on the training split by `fit_statistics` (buffers: saved and restored with the weights).
        self.register_buffer("pose_scale", torch.ones(()))
        self.prior = DepthPrior.empty(kernels=d.depth_kernels)
        for name, value in self.prior.state_dict().items():
            self.register_buffer(f"prior_{name}", value.clone())

    # ---- statistics of the training split ---------------------------------------------------------------
    @torch.no_grad()
    def fit_statistics(self, store: PoseStore, rows: np.ndarray, generator: torch.Generator) -> None:
        """pose_scale = std of root-relative training coordinates; the depth prior on scaled poses."""
        if len(rows) > 100_000:
            rows = rows[np.linspace(0, len(rows) - 1, 100_000).astype(np.int64)]
        pose_3d = torch.from_numpy(store.pose_3d[rows])
        pose_2d = torch.from_numpy(store.pose_2d[rows])
        scale = pose_3d[:, 1:].std()
        self.pose_scale.copy_(scale)
        prior = DepthPrior.fit(pose_2d, pose_3d / scale, kernels=self.cfg.depth_kernels,
                               generator=torch.Generator().manual_seed(int(generator.initial_seed())))
        for name, value in prior.state_dict().items():
            getattr(self, f"prior_{name}").copy_(value)

    def _prior(self) -> DepthPrior:
        return DepthPrior.from_state_dict({n: getattr(self, f"prior_{n}") for n in self.prior.state_dict()})

    # ---- pieces -------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> DiffPose:
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()  # frozen: dropout off in training too
        return self

    def _encode(self, batch: Batch, every_frame: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen encoder's root-relative pose (N, J, 3) and per-joint features (N, J, C) for the centre
        frames (N = B) or every frame (N = B*T). MixSTE reads the whole window (B, T, J, 2); GraFormer each
        frame on its own."""
        assert self.encoder is not None
        pick = _frames if every_frame else _centre
        with torch.no_grad():
            if self.temporal_encoder:
                pose, feats = self.encoder.forward_with_features(batch.pose_2d)       # (B, T, J, 3 | C)
                pose, feats = pick(pose), pick(feats)
            else:
                pose, feats = self.encoder.forward_with_features(pick(batch.pose_2d))
        return _root_relative(pose), feats

    def _condition(self, pose_2d: torch.Tensor, batch: Batch, every_frame: bool) -> torch.Tensor:
        if not self.cfg.context:
            return pose_2d
        pose, feats = self._encode(batch, every_frame)
        return torch.cat([pose_2d, pose / self.pose_scale, feats], dim=-1)

    def _mixture(self, gmm_2d: torch.Tensor, for_sampling: bool) -> GaussianMixture:
        shape = gmm_2d.shape[:2] + (3,)
        if not self.cfg.gmm or (for_sampling and not self.cfg.heatmap_init):
            return standard_normal(shape, device=gmm_2d.device, dtype=gmm_2d.dtype)
        return initial_distribution(gmm_2d, self._prior())

    @staticmethod
    def _refiner_noise_scale(sigma_2d: torch.Tensor) -> torch.Tensor:
        """(N, J, 2) -> (N, J, 5): (sigma_u, sigma_v, 1, 1, 1)."""
        return torch.cat([sigma_2d, torch.ones_like(sigma_2d[..., :1]).expand(*sigma_2d.shape[:-1], 3)], -1)

    # ---- the Lifter interface ------------------------------------------------------------------------------
    def loss(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        pose_2d, pose_3d = _centre(batch.pose_2d), _centre(batch.pose_3d)
        n = pose_2d.shape[0]
        t = self.schedule.sample_timesteps(n, generator)
        if self.refiner:
            x0 = torch.cat([pose_2d, pose_3d], dim=-1)                      # (B, J, 5)
            eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            sigma = self._refiner_noise_scale(_centre(batch.sigma_2d))
            x_t = self.schedule.q_sample(x0, t, eps, mu=0.0, sigma=sigma)
            cond = None
        else:
            x0 = pose_3d / self.pose_scale                                  # (B, J, 3)
            mixture = self._mixture(_centre(batch.gmm_2d), False)
            x_t, eps, _, sigma = gmm_q_sample(self.schedule, x0, t, mixture, generator)
            cond = self._condition(pose_2d, batch, every_frame=False)
        out = self.denoiser(x_t, t, cond)
        target = {"eps": eps, "noise": sigma * eps, "x0": x0}[self.cfg.predict]
        # The released loss: squared error summed over joints and channels, mean over the batch.
        return (out - target).square().sum(dim=(1, 2)).mean()

    def predict(self, batch: Batch, generator: torch.Generator) -> Prediction:
        return self._sample(batch, generator, every_frame=False)

    def predict_frames(self, batch: Batch, generator: torch.Generator) -> Prediction:
        """Every frame of each window, each denoised as a frame of its own (the encoder reads the window
        once): the released video evaluation."""
        b, t = batch.pose_2d.shape[:2]
        out = self._sample(batch, generator, every_frame=True)
        return Prediction(pose=out.pose.unflatten(0, (b, t)), hypotheses=out.hypotheses.unflatten(1, (b, t)))

    def _sample(self, batch: Batch, generator: torch.Generator, every_frame: bool) -> Prediction:
        """Reverse diffusion for the centre frames (N = B) or every frame (N = B*T) of the windows:
        pose (N, J, 3), hypotheses (H, N, J, 3)."""
        d = self.cfg
        pick = _frames if every_frame else _centre
        pose_2d = pick(batch.pose_2d)                                        # (N, J, 2)
        h = d.hypotheses
        t_start = None if d.t_start < 0 else d.t_start
        if self.refiner:
            enc_pose, _ = self._encode(batch, every_frame)
            start = torch.cat([pose_2d, enc_pose], dim=-1)                  # (N, J, 5)
            sigma = self._refiner_noise_scale(pick(batch.sigma_2d))
            init = GaussianMixture(pi=torch.ones_like(sigma[..., :1]), mu=torch.zeros_like(sigma)[..., None, :],
                                   sigma=sigma[..., None, :])

            def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self.denoiser(x, t, None)

            samples = sample(denoise, self.schedule, steps=d.steps, hypotheses=h, init=init,
                             start=start, t_start=t_start, eta=d.eta, predict=d.predict, generator=generator)
            hyps = samples[..., 2:]
        else:
            cond = self._condition(pose_2d, batch, every_frame)
            cond_h = cond.repeat(h, 1, 1)

            def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self.denoiser(x, t, cond_h)

            samples = sample(denoise, self.schedule, steps=d.steps, hypotheses=h,
                             init=self._mixture(pick(batch.gmm_2d), True), t_start=t_start, eta=d.eta,
                             predict=d.predict, generator=generator)
            hyps = samples * self.pose_scale
        hyps = _root_relative(hyps)                                          # (H, N, J, 3)
        pose = _root_relative(aggregate(hyps, d.aggregate))
        return Prediction(pose=pose, hypotheses=hyps)


# ---------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------
def _network(lifter: str, hidden: int, blocks: int, heads: int, dropout: float, frames: int = 1) -> nn.Module:
    """The network of a baseline lifter; ``frames`` is the window length T of the temporal ones."""
    if lifter == "graformer":
        return GraFormer(in_dim=2, out_dim=3, hidden=hidden, blocks=blocks, heads=heads, dropout=dropout)
    if lifter == "simple_baseline":
        return SimpleBaseline(in_dim=2, out_dim=3, hidden=hidden, blocks=blocks, dropout=dropout)
    if lifter == "semgcn":
        return SemGCN(in_dim=2, out_dim=3, hidden=hidden, blocks=blocks, dropout=dropout)
    if lifter == "mixste":
        return MixSTE(in_dim=2, out_dim=3, frames=frames, dim=hidden, depth=blocks, heads=heads,
                      dropout=dropout)
    if lifter == "videopose3d":
        if frames not in FILTER_WIDTHS:
            raise ValueError(f"VideoPose3D takes data.frames in {sorted(FILTER_WIDTHS)}, got {frames}")
        return VideoPose3D(in_dim=2, out_dim=3, filter_widths=FILTER_WIDTHS[frames], channels=hidden,
                           dropout=dropout)
    raise KeyError(lifter)


def _baseline(loss: str) -> Callable[..., Lifter]:
    def build(cfg: Config, **_: object) -> Lifter:
        m = cfg.model
        return DirectLifter(_network(m.lifter, m.hidden, m.blocks, m.heads, m.dropout), loss=loss)

    return build


def _sequence(seq2seq: bool) -> Callable[..., Lifter]:
    def build(cfg: Config, **_: object) -> Lifter:
        m = cfg.model
        net = _network(m.lifter, m.hidden, m.blocks, m.heads, m.dropout, frames=cfg.data.frames)
        return SequenceLifter(net, seq2seq=seq2seq)

    return build


def _diffpose(cfg: Config, *, store: PoseStore, train_rows: np.ndarray, device: torch.device,
              encoder_cache: Path, progress: bool = True, train_encoder: bool = True) -> Lifter:
    encoder = None
    if needs_encoder(cfg):
        e = cfg.encoder
        encoder = _network(e.lifter, e.hidden, e.blocks, e.heads, e.dropout, frames=cfg.data.frames)
        if not hasattr(encoder, "forward_with_features"):
            raise ValueError(f"encoder.lifter {e.lifter!r} gives no per-joint features; use 'graformer' "
                             "(frames) or 'mixste' (video)")
        if train_encoder:
            ckpt = ensure_encoder(cfg.encoder_config(), store, encoder_cache, progress=progress)
            state = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
            encoder.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    lifter = DiffPose(cfg, encoder)
    if train_encoder:
        lifter.fit_statistics(store, train_rows, torch.Generator().manual_seed(cfg.train.seed))
    return lifter


LIFTERS: dict[str, Callable[..., Lifter]] = {
    "diffpose": _diffpose,
    "graformer": _baseline("mpjpe"),
    "semgcn": _baseline("mpjpe"),
    "simple_baseline": _baseline("mse"),
    "mixste": _sequence(seq2seq=True),
    "videopose3d": _sequence(seq2seq=False),
}


def build_lifter(cfg: Config, store: PoseStore, train_rows: np.ndarray, *, device: torch.device,
                 encoder_cache: Path, progress: bool = True, train_encoder: bool = True) -> Lifter:
    """The lifter ``cfg.model.lifter``, with its training-split statistics (and, for DiffPose, its trained
    context encoder) in place. ``train_encoder=False`` builds the bare architecture, for loading a
    checkpoint that holds every weight and statistic."""
    return LIFTERS[cfg.model.lifter](cfg, store=store, train_rows=train_rows, device=device,
                                     encoder_cache=Path(encoder_cache), progress=progress,
                                     train_encoder=train_encoder)


def needs_encoder(cfg: Config) -> bool:
    """Whether ``cfg`` trains a DiffPose that uses a context encoder (conditioning or refiner start)."""
    return cfg.model.lifter == "diffpose" and (cfg.diffusion.context or cfg.diffusion.mode == "refiner")


def encoder_key(encoder_cfg: Config, fingerprint: str) -> str:
    """Identity of a context encoder: its own config without machine-specific keys, plus the store's
    content (so the same encoder is found again on any node, whatever the store's path there)."""
    portable = encoder_cfg.override({"data.store": "", "train.device": "auto", "train.threads": 0})
    return f"{portable.model.lifter}-{portable.hash()[:10]}-{fingerprint[:10]}"


def encoder_ready(encoder_cfg: Config, fingerprint: str, cache: Path) -> bool:
    """Whether the context encoder ``encoder_cfg`` is already trained in ``cache``."""
    return (Path(cache) / encoder_key(encoder_cfg, fingerprint) / "DONE").exists()


def ensure_encoder(
    encoder_cfg: Config,
    store: PoseStore,
    cache: Path,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float], Path], None] | None = None,
) -> Path:
    """The best checkpoint of the context encoder ``encoder_cfg`` (``Config.encoder_config()``), trained
    now unless already in ``cache``.

    Trained once per (store, encoder config, seed) and shared by every variant; a file lock makes
    concurrent trials on one shared cache wait for the first one instead of training it twice."""
    from diffpose.train import BEST, fit  # train imports this module

    key = encoder_key(encoder_cfg, store.meta["fingerprint"])
    out = Path(cache) / key
    out.mkdir(parents=True, exist_ok=True)
    with open(Path(cache) / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = out / "DONE"
        if not done.exists():
            log.info("training the context encoder %s (cached in %s)", key, out)
            fit(encoder_cfg, out, progress=progress, on_epoch=on_epoch)
            done.write_text("ok\n")
        else:
            log.info("using the cached context encoder %s", key)
    return out / BEST
