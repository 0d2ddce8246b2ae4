"""`make bench`: speed and memory of the data path and of every lifter, written as JSON.

Timings are medians over repeats after a warm-up, at the thread count torch is given (``--threads``). The
video models at T = 243 are timed on a few windows, once, without warm-up (each case records its batch size,
repeats and warm-up).
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffpose.config import VARIANTS, Config
from diffpose.data.store import PoseStore, Sampler
from diffpose.lifters import build_lifter, encoder_network
from diffpose.train import count_flops, set_threads, splits

log = logging.getLogger(__name__)


def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul throughput of this machine at the current thread count (the roofline for % of peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _median_seconds(lambda: a @ b, repeats) / 1e9


def bench_store(store_path: Path, batch_size: int = 1024, repeats: int = 20) -> dict[str, Any]:
    """Opening the store, and batches/s of the sampler: frames with kernel draws and flips, and windows."""
    t0 = time.perf_counter()
    store = PoseStore.open(store_path)
    open_seconds = time.perf_counter() - t0
    rows = torch.from_numpy(store.rows(store.split_subjects("train")))
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"open_seconds": open_seconds, "rows": len(store), "batch_size": batch_size}
    for frames in (1, 27, 243):
        sampler = Sampler(store, frames=frames)

        def one(sampler: Sampler = sampler) -> None:
            idx = rows[torch.randint(len(rows), (batch_size,), generator=g)]
            flip = torch.rand(batch_size, generator=g) < 0.5
            sampler.batch(idx, draw_kernels=True, flip=flip, generator=g)

        seconds = _median_seconds(one, repeats, warmup=2)
        out[f"sampler_T{frames}_samples_per_second"] = batch_size / seconds
    return out


def bench_lifter(cfg: Config, store: PoseStore, batch_size: int, repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Training samples/s (loss, backward, Adam step), inference poses/s, parameters and FLOPs per pose, with
    random weights (speed does not depend on them). DiffPose's encoder is built untrained. A sample is a
    window of ``data.frames``; inference gives its centre frame (sliding evaluation) and, for lifters that
    predict every frame, all T of them (chunked evaluation: ``chunk_poses_per_second``)."""
    rows = splits(cfg, store)
    sampler = Sampler(store, frames=cfg.data.frames, kernels=cfg.data.kernels)
    g = torch.Generator().manual_seed(0)
    lifter = build_lifter(cfg, encoder_network(cfg) if cfg.uses_encoder else None)
    lifter.fit_statistics(store, rows.train, g)
    idx = torch.from_numpy(rows.train[:batch_size])
    train_batch = sampler.batch(idx, draw_kernels=True, generator=g)
    eval_batch = sampler.batch(idx)
    params = [p for p in lifter.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)

    def train_step() -> None:
        loss = lifter.loss(train_batch, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer() -> None:
        with torch.inference_mode():
            lifter.predict(eval_batch, g)

    lifter.train()
    train_s = _median_seconds(train_step, repeats, warmup)
    lifter.eval()
    infer_s = _median_seconds(infer, repeats, warmup)
    one = sampler.batch(idx[:1])
    with torch.inference_mode():
        flops = count_flops(lambda: lifter.predict(one, g))
    out = {
        "frames": cfg.data.frames,
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "train_samples_per_second": batch_size / train_s,
        "inference_poses_per_second": batch_size / infer_s,
        "params": sum(p.numel() for p in lifter.parameters()),
        "trainable_params": sum(p.numel() for p in params),
        "flops_per_pose": flops,
    }
    if cfg.data.frames > 1 and lifter.predicts_frames:
        def infer_frames() -> None:
            with torch.inference_mode():
                lifter.predict_frames(eval_batch, g)

        seconds = _median_seconds(infer_frames, repeats, warmup)
        out["chunk_poses_per_second"] = batch_size * cfg.data.frames / seconds
    return out


@dataclass(frozen=True)
class Case:
    """One lifter setting to time. ``batch_size`` / ``repeats`` of 0 take the run's; the slow video models
    use fewer windows and repeats (recorded in the result)."""

    overrides: dict[str, Any]
    batch_size: int = 0
    repeats: int = 0
    warmup: int = 1


def bench_cases() -> dict[str, Case]:
    """Frame-based lifters and DiffPose settings, then the video models at T = 27 and 243 (released widths:
    VideoPose3D 1024 channels, MixSTE 512 wide and 8 deep, about 2-4 s per 243-frame window on a 2-core CPU,
    so a few windows and a single repeat)."""
    cases = {name: Case(VARIANTS[name][2]) for name in ("graformer", "semgcn", "simple_baseline")}
    for k, n in ((2, 1), (5, 5), (50, 1)):
        cases[f"diffpose_K{k}_N{n}"] = Case({"diffusion.steps": k, "sample.hypotheses": n})
    cases["diffpose_refiner"] = Case(VARIANTS["refiner"][2])
    video = {"encoder.lifter": "mixste"}
    for t, vp_batch, mix_batch, repeats in ((27, 256, 4, 2), (243, 32, 1, 1)):
        warmup = 1 if t == 27 else 0
        cases[f"videopose3d_T{t}"] = Case({**VARIANTS["videopose3d"][2], "data.frames": t}, vp_batch, repeats,
                                          warmup)
        cases[f"mixste_T{t}"] = Case({**VARIANTS["mixste"][2], "data.frames": t}, mix_batch, repeats, warmup)
        cases[f"diffpose_video_refiner_T{t}"] = Case({**VARIANTS["refiner"][2], **video, "data.frames": t},
                                                     mix_batch, repeats, warmup)
    cases["diffpose_video_T27"] = Case({**video, "data.frames": 27}, 4, 2)
    return cases


def run_bench(store_path: Path, out: Path, *, threads: int = 0, batch_size: int = 1024, repeats: int = 5,
              quick: bool = False) -> dict[str, Any]:
    threads = set_threads(threads)
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "machine": {"processor": platform.processor() or platform.machine(), "threads": threads,
                    "torch": torch.__version__, "python": platform.python_version()},
        "fp32_matmul_peak_gflops": matmul_peak_gflops(),
        "store": bench_store(store_path, batch_size, repeats=5 if quick else 20),
    }
    log.info("store: %s", result["store"])
    store = PoseStore.open(store_path)
    base = Config().override({"data.store": str(store_path)})
    lifters: dict[str, Any] = {}
    for name, case in bench_cases().items():
        cfg = base.override(case.overrides)
        reps = min(case.repeats or repeats, 2 if quick else repeats)
        lifters[name] = bench_lifter(cfg, store, case.batch_size or batch_size, reps, case.warmup)
        log.info("%s: %s", name, lifters[name])
    result["lifters"] = lifters
    result["peak_rss_mib"] = peak_rss_mib()
    out.write_text(json.dumps(result, indent=1))
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    s = result["store"]
    lines = [f"threads {result['machine']['threads']}, fp32 matmul peak {result['fp32_matmul_peak_gflops']:.0f} "
             f"GFLOP/s, peak RSS {result['peak_rss_mib']:.0f} MiB",
             f"store: {s['rows']} rows opened in {s['open_seconds']:.2f} s; sampler samples/s: "
             + ", ".join(f"T={t} {s[f'sampler_T{t}_samples_per_second']:,.0f}" for t in (1, 27, 243))]
    for name, r in result["lifters"].items():
        gflops = r["flops_per_pose"] * r["inference_poses_per_second"] / 1e9
        chunks = f"  chunks {r['chunk_poses_per_second']:9,.1f}/s" if "chunk_poses_per_second" in r else ""
        lines.append(f"{name:28s} train {r['train_samples_per_second']:8,.1f}/s  infer "
                     f"{r['inference_poses_per_second']:9,.1f}/s  params {r['params'] / 1e6:6.2f} M  "
                     f"{r['flops_per_pose'] / 1e6:9.1f} MFLOP/pose  ({gflops:5.1f} GFLOP/s inference)"
                     + chunks)
    return lines


__all__ = ["run_bench", "summary_lines", "bench_store", "bench_lifter", "bench_cases", "Case", "np"]
