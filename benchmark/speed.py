"""`make bench`: speed and memory of the data path and of every lifter, written as JSON.

Timings are medians over repeats after a warm-up, at the thread count torch is given (``--threads``).
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffpose.config import VARIANTS, Config
from diffpose.data.store import PoseStore, Sampler
from diffpose.lifters import build_lifter
from diffpose.train import set_threads, splits

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


def _flops_per_call(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def bench_lifter(cfg: Config, store: PoseStore, batch_size: int, repeats: int, cache: Path) -> dict[str, Any]:
    """Training samples/s (loss, backward, Adam step), inference poses/s, parameters and FLOPs per pose, with
    random weights (speed does not depend on them). DiffPose's encoder is built untrained."""
    rows = splits(cfg, store)
    sampler = Sampler(store, frames=cfg.data.frames, kernels=cfg.data.kernels)
    lifter = build_lifter(cfg, store, rows.train, device=torch.device("cpu"), encoder_cache=cache,
                          train_encoder=False)
    g = torch.Generator().manual_seed(0)
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
    train_s = _median_seconds(train_step, repeats)
    lifter.eval()
    infer_s = _median_seconds(infer, repeats)
    one = sampler.batch(idx[:1])
    with torch.inference_mode():
        flops = _flops_per_call(lambda: lifter.predict(one, g))
    return {
        "train_samples_per_second": batch_size / train_s,
        "inference_poses_per_second": batch_size / infer_s,
        "params": sum(p.numel() for p in lifter.parameters()),
        "trainable_params": sum(p.numel() for p in params),
        "flops_per_pose": flops,
    }


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
    cases = {name: VARIANTS[name][2] for name in ("graformer", "semgcn", "simple_baseline")}
    for k, n in ((2, 1), (5, 5), (50, 1)):
        cases[f"diffpose_K{k}_N{n}"] = {"diffusion.steps": k, "diffusion.hypotheses": n}
    cases["diffpose_refiner"] = VARIANTS["refiner"][2]
    cache = out.parent / ".bench-encoders"
    for name, overrides in cases.items():
        cfg = base.override(overrides)
        lifters[name] = bench_lifter(cfg, store, batch_size, 2 if quick else repeats, cache)
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
        lines.append(f"{name:22s} train {r['train_samples_per_second']:8,.0f}/s  infer "
                     f"{r['inference_poses_per_second']:9,.0f}/s  params {r['params'] / 1e6:6.2f} M  "
                     f"{r['flops_per_pose'] / 1e6:7.1f} MFLOP/pose  ({gflops:5.1f} GFLOP/s inference)")
    return lines


__all__ = ["run_bench", "summary_lines", "bench_store", "bench_lifter", "np"]
