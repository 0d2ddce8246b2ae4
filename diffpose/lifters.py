"""Every 2D-to-3D lifter behind one interface, named in one registry: ``LIFTERS``.

A :class:`Lifter` is an ``nn.Module`` with ``loss(batch, generator)`` (a scalar to minimise) and
``predict(batch, generator)`` (the centre frame of each window, root-relative metres); lifters that give a
pose for every frame of a window also have ``predict_frames`` (chunked evaluation). The training loop in
``train.py`` serves all of them. Baselines are plain networks: frame-based ones (:class:`DirectLifter`) read
the centre frame, temporal ones (:class:`SequenceLifter`) the whole window. :class:`DiffPose` adds the
diffusion around a denoiser and a frozen context encoder that is itself a baseline lifter (GraFormer on the
centre frame, or MixSTE on the window), trained first (by the loop, ``diffpose.train.trained``) and handed in.

Each lifter's loss and input/target normalisation follow its released training code; the sources are named at
each. Building a lifter never trains anything: the loop fits its training-split statistics
(:meth:`Lifter.fit_statistics`) and trains it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from diffpose.config import Config
from diffpose.data.skeleton import NUM_JOINTS
from diffpose.data.store import Batch, PoseStore
from diffpose.diffusion.gmm import DepthPrior, GaussianMixture, gmm_q_sample, initial_distribution, standard_normal
from diffpose.diffusion.sampler import sample
from diffpose.diffusion.schedule import Schedule
from diffpose.metrics import aggregate_hypotheses
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

    def fit_statistics(self, store: PoseStore, rows: np.ndarray, generator: torch.Generator) -> None:
        """Fit what the lifter takes from the training split (normalisation, priors) into its buffers."""

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


def _training_sample(store: PoseStore, rows: np.ndarray, most: int = 100_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Detected 2D (N, J, 2) and root-relative 3D (N, J, 3) of at most ``most`` evenly spaced training rows."""
    if len(rows) > most:
        rows = rows[np.linspace(0, len(rows) - 1, most).astype(np.int64)]
    return torch.from_numpy(store.pose_2d[rows]), torch.from_numpy(store.pose_3d[rows])


class ZScore(nn.Module):
    """Per-coordinate mean and standard deviation of the training split, for input (J, 2) and target (J, 3):
    Martinez et al.'s normalisation (``data_utils.normalization_stats``). The root, always 0 in a root-relative
    target, keeps std 1 and is left out of the loss (they drop it from the target)."""

    def __init__(self) -> None:
        super().__init__()
        for name, dim in (("in", 2), ("out", 3)):
            self.register_buffer(f"{name}_mean", torch.zeros(NUM_JOINTS, dim))
            self.register_buffer(f"{name}_std", torch.ones(NUM_JOINTS, dim))

    @torch.no_grad()
    def fit(self, pose_2d: torch.Tensor, pose_3d: torch.Tensor) -> None:
        for name, x in (("in", pose_2d), ("out", pose_3d)):
            std = x.std(dim=0)
            getattr(self, f"{name}_mean").copy_(x.mean(dim=0))
            getattr(self, f"{name}_std").copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))


class DirectLifter(Lifter):
    """A network that maps the centre frame's 2D (B, J, 2) to 3D (B, J, 3): every frame-based baseline.

    ``loss``: "mse" (GraFormer, SemGCN: squared error in metres, mean over joints and coordinates), "mpjpe", or
    "zscore" (SimpleBaseline: input and target z-scored by :class:`ZScore`, squared error on the z-scores of the
    non-root joints; the network predicts z-scores)."""

    def __init__(self, net: nn.Module, loss: str = "mse"):
        super().__init__()
        if loss not in ("mse", "mpjpe", "zscore"):
            raise ValueError(f"loss must be 'mse', 'mpjpe' or 'zscore', got {loss!r}")
        self.net = net
        self.loss_kind = loss
        self.zscore = ZScore() if loss == "zscore" else None

    def fit_statistics(self, store: PoseStore, rows: np.ndarray, generator: torch.Generator) -> None:
        if self.zscore is not None:
            self.zscore.fit(*_training_sample(store, rows))

    def _normalised(self, pose_2d: torch.Tensor) -> torch.Tensor:
        """(B, J, 2) -> the network's output, z-scored when the lifter z-scores (B, J, 3)."""
        if self.zscore is None:
            return self.net(pose_2d)
        return self.net((pose_2d - self.zscore.in_mean) / self.zscore.in_std)

    def forward(self, pose_2d: torch.Tensor) -> torch.Tensor:
        """(B, J, 2) -> (B, J, 3) metres."""
        out = self._normalised(pose_2d)
        if self.zscore is None:
            return out
        pose = out * self.zscore.out_std + self.zscore.out_mean
        return torch.cat([torch.zeros_like(pose[:, :1]), pose[:, 1:]], dim=1)  # the root, never trained, is 0

    def loss(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        target = _centre(batch.pose_3d)
        if self.zscore is not None:
            z = (target - self.zscore.out_mean) / self.zscore.out_std
            return (self._normalised(_centre(batch.pose_2d)) - z)[:, 1:].square().mean()
        pred = self.net(_centre(batch.pose_2d))
        if self.loss_kind == "mse":
            return (pred - target).square().mean()
        return (pred - target).norm(dim=-1).mean()

    def predict(self, batch: Batch, generator: torch.Generator) -> Prediction:
        return Prediction(pose=_root_relative(self(_centre(batch.pose_2d))))

    def predict_frames(self, batch: Batch, generator: torch.Generator) -> Prediction:
        b, t = batch.pose_2d.shape[:2]
        pose = self(_frames(batch.pose_2d))                                  # (B*T, J, 3)
        return Prediction(pose=_root_relative(pose).unflatten(0, (b, t)))


class MeanPose(Lifter):
    """The mean root-relative 3D pose of the training split for every input: the reference a lifter must beat.
    Nothing to train."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(NUM_JOINTS, 3))

    def fit_statistics(self, store: PoseStore, rows: np.ndarray, generator: torch.Generator) -> None:
        self.mean.copy_(_training_sample(store, rows)[1].mean(dim=0))

    def loss(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        raise RuntimeError("the mean pose has nothing to train")

    def predict(self, batch: Batch, generator: torch.Generator) -> Prediction:
        return Prediction(pose=self.mean.expand(len(batch), -1, -1).clone())

    def predict_frames(self, batch: Batch, generator: torch.Generator) -> Prediction:
        b, t = batch.pose_2d.shape[:2]
        return Prediction(pose=self.mean.expand(b, t, -1, -1).clone())


# MixSTE's per-joint weights of its weighted MPJPE and temporal-consistency terms (run.py, h36m): the limbs'
# ends count most.
MIXSTE_JOINT_WEIGHTS = (1.0, 1.0, 2.5, 2.5, 1.0, 2.5, 2.5, 1.0, 1.0, 1.0, 1.5, 1.5, 4.0, 4.0, 1.5, 4.0, 4.0)


class SequenceLifter(Lifter):
    """A network that maps a window of 2D poses (B, T, J, 2) to 3D: the temporal baselines. Both predict the
    centre frame.

    ``seq2seq`` (MixSTE): one pose per input frame (B, T, J, 3), trained with MixSTE's loss (JinluZhang1126/
    MixSTE run.py) in metres over every frame of the window: weighted MPJPE + 0.5 x the weighted mean squared
    frame-to-frame change of the prediction (temporal consistency) + 2 x the velocity error (MPJVE). The
    released code calls ``backward(loss)`` on the scalar, which scales every gradient by the loss itself; we
    take the plain gradient. Otherwise (VideoPose3D, T = its receptive field): one pose, the centre frame's
    (B, 1, J, 3), trained with MPJPE (facebookresearch/VideoPose3D run.py).
    """

    def __init__(self, net: MixSTE | VideoPose3D, seq2seq: bool):
        super().__init__()
        self.net = net
        self.seq2seq = seq2seq
        self.predicts_frames = seq2seq
        self.register_buffer("joint_weights", torch.tensor(MIXSTE_JOINT_WEIGHTS), persistent=False)

    def forward(self, pose_2d: torch.Tensor) -> torch.Tensor:
        return self.net(pose_2d)

    def loss(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        pred = self.net(batch.pose_2d)                                       # (B, T or 1, J, 3)
        if not self.seq2seq:
            return (pred[:, 0] - _centre(batch.pose_3d)).norm(dim=-1).mean()
        target = batch.pose_3d                                               # (B, T, J, 3)
        w = self.joint_weights
        loss = (w * (pred - target).norm(dim=-1)).mean()
        if pred.shape[1] > 1:
            change = torch.diff(pred, dim=1)                                 # (B, T-1, J, 3)
            consistency = (w[:, None] * change.square()).mean()
            velocity = (change - torch.diff(target, dim=1)).norm(dim=-1).mean()
            loss = loss + 0.5 * consistency + 2.0 * velocity
        return loss

    def predict(self, batch: Batch, generator: torch.Generator) -> Prediction:
        pred = self.net(batch.pose_2d)
        pose = _centre(pred) if self.seq2seq else pred[:, 0]
        return Prediction(pose=_root_relative(pose))

    def predict_frames(self, batch: Batch, generator: torch.Generator) -> Prediction:
        if not self.seq2seq:
            return super().predict_frames(batch, generator)
        return Prediction(pose=_root_relative(self.net(batch.pose_2d)))


class Sampled(Lifter):
    """A deterministic lifter made to give ``hypotheses`` poses (a probabilistic baseline, evaluation only).

    "mc_dropout": the lifter run N times with its dropout on and everything else as at evaluation (Gal and
    Ghahramani 2016). "residual": its pose plus N draws of per-joint Gaussian noise whose covariance (J, 3, 3) is
    that of its residuals on the validation subjects (:meth:`fit_residuals`). The pose is the hypotheses'
    ``aggregate``.
    """

    def __init__(self, lifter: Lifter, method: str, hypotheses: int, aggregate: str = "mean"):
        super().__init__()
        if method not in ("mc_dropout", "residual"):
            raise ValueError(f"method must be 'mc_dropout' or 'residual', got {method!r}")
        self.lifter = lifter
        self.method, self.hypotheses, self.how = method, hypotheses, aggregate
        self.predicts_frames = lifter.predicts_frames
        self.register_buffer("residual_chol", torch.zeros(NUM_JOINTS, 3, 3), persistent=False)

    def fit_residuals(self, residuals: torch.Tensor) -> None:
        """Residuals (N, J, 3), target minus prediction, root-relative metres: their per-joint covariance."""
        r = residuals - residuals.mean(dim=0)
        cov = torch.einsum("nja,njb->jab", r, r) / max(len(r) - 1, 1)               # (J, 3, 3)
        eye = torch.eye(3, dtype=cov.dtype, device=cov.device)
        self.residual_chol.copy_(torch.linalg.cholesky(cov + 1e-10 * eye))

    def _draws(self, run: Callable[[], Prediction], generator: torch.Generator) -> Prediction:
        if self.method == "mc_dropout":
            modes = {m: m.training for m in self.lifter.modules()}
            self.lifter.train()
            for m in self.lifter.modules():
                if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                    m.eval()  # running statistics, as at evaluation: only dropout is switched on
            try:
                hyps = torch.stack([run().pose for _ in range(self.hypotheses)])         # (H, ..., J, 3)
            finally:
                for m, mode in modes.items():
                    m.train(mode)
        else:
            pose = run().pose                                                           # (..., J, 3)
            eps = torch.randn((self.hypotheses, *pose.shape), generator=generator, device=pose.device,
                              dtype=pose.dtype)
            noise = torch.einsum("jab,...jb->...ja", self.residual_chol.to(pose.dtype), eps)
            hyps = _root_relative(pose + noise)
        return Prediction(pose=_root_relative(aggregate_hypotheses(hyps, self.how)), hypotheses=hyps)

    def predict(self, batch: Batch, generator: torch.Generator) -> Prediction:
        return self._draws(lambda: self.lifter.predict(batch, generator), generator)

    def predict_frames(self, batch: Batch, generator: torch.Generator) -> Prediction:
        return self._draws(lambda: self.lifter.predict_frames(batch, generator), generator)


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
        self.hypotheses, self.how = cfg.sample.hypotheses, cfg.sample.aggregate
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
        pose_2d, pose_3d = _training_sample(store, rows)
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
        h = self.hypotheses
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
        pose = _root_relative(aggregate_hypotheses(hyps, self.how))
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


def _direct(loss: str) -> Callable[[Config], Lifter]:
    def build(cfg: Config) -> Lifter:
        m = cfg.model
        return DirectLifter(_network(m.lifter, m.hidden, m.blocks, m.heads, m.dropout), loss=loss)

    return build


def _sequence(seq2seq: bool) -> Callable[[Config], Lifter]:
    def build(cfg: Config) -> Lifter:
        m = cfg.model
        net = _network(m.lifter, m.hidden, m.blocks, m.heads, m.dropout, frames=cfg.data.frames)
        return SequenceLifter(net, seq2seq=seq2seq)

    return build


def _mean_pose(cfg: Config) -> Lifter:
    return MeanPose()


def encoder_network(cfg: Config) -> nn.Module:
    """The context encoder's network (untrained) of a DiffPose config: the ``net`` of its encoder lifter."""
    e = cfg.encoder
    net = _network(e.lifter, e.hidden, e.blocks, e.heads, e.dropout, frames=cfg.data.frames)
    if not hasattr(net, "forward_with_features"):
        raise ValueError(f"encoder.lifter {e.lifter!r} gives no per-joint features")
    return net


def _diffpose(cfg: Config, encoder: nn.Module | None) -> Lifter:
    if cfg.uses_encoder and encoder is None:
        raise ValueError("this DiffPose needs its trained context encoder (diffpose.train.trained)")
    return DiffPose(cfg, encoder if cfg.uses_encoder else None)


# Baselines: built from their config alone. DiffPose also takes its frozen context encoder (build_lifter).
LIFTERS: dict[str, Callable[[Config], Lifter]] = {
    "graformer": _direct("mse"),
    "semgcn": _direct("mse"),
    "simple_baseline": _direct("zscore"),
    "mixste": _sequence(seq2seq=True),
    "videopose3d": _sequence(seq2seq=False),
    "mean_pose": _mean_pose,
}


def build_lifter(cfg: Config, encoder: nn.Module | None = None) -> Lifter:
    """The (untrained) lifter ``cfg.model.lifter``; DiffPose with ``encoder``, its trained context encoder's
    network (or an untrained one of the right shape, :func:`encoder_network`, for loading a checkpoint that holds
    every weight)."""
    if cfg.model.lifter == "diffpose":
        return _diffpose(cfg, encoder)
    return LIFTERS[cfg.model.lifter](cfg)


def sampled(lifter: Lifter, cfg: Config) -> Lifter:
    """``lifter`` (trained) as ``sample.method`` evaluates it: itself, or a :class:`Sampled` baseline."""
    if cfg.sample.method == "model":
        return lifter
    return Sampled(lifter, cfg.sample.method, cfg.sample.hypotheses, cfg.sample.aggregate)
