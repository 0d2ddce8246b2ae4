"""`make bench`: speed and memory of the data path and of every lifter, written as JSON.

Timings are medians over repeats after a warm-up, at the thread count torch is given (``--threads``). The
video models at T = 243 are timed on a few windows, once, without warm-up (each case records its batch size,
repeats and warm-up).

The device is the one the training loop would pick (``diffpose.train.pick_device``: CUDA, then MPS, else the
CPU) or ``--device``; the store's arrays, the batches and the lifters live there, and a GPU's work is
synchronised before each clock reading. On CUDA, training and inference run under bf16 autocast, as the loop
trains (``train.amp``); the frame-based lifters are timed again at the batch sizes a GPU user runs
(``GPU_BATCH_SIZES``: cases named ``<case>@<batch>``), and every case records its peak GPU memory.
``bench.json`` names the device (type, name, autocast, fp32 and bf16 matmul peak, peak memory).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffpose.config import VARIANTS, Config
from diffpose.data.store import PoseStore, Sampler
from diffpose.lifters import build_lifter, encoder_network
from diffpose.train import count_flops, pick_device, set_threads, splits

log = logging.getLogger(__name__)


CPU = torch.device("cpu")
# Batch sizes a GPU user trains and evaluates frame-based lifters at (the CPU run keeps its one batch size).
GPU_BATCH_SIZES = (1024, 4096, 16384)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a clock read after a CUDA or MPS call would time the launch only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1,
                    device: torch.device = CPU) -> float:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (as the training loop runs with ``train.amp``); nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextlib.contextmanager
def peak_gpu_memory(device: torch.device, into: dict[str, Any]) -> Iterator[None]:
    """Record the peak memory CUDA allocates inside the block as ``into["peak_gpu_memory_mib"]`` (CUDA only)."""
    if device.type != "cuda":
        yield
        return
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield
    synchronize(device)
    into["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, device: torch.device = CPU,
                       dtype: torch.dtype = torch.float32) -> float:
    """Matmul throughput of ``device`` in ``dtype`` at the current thread count (the roofline for % of peak)."""
    if device.type != "cpu":
        n = max(n, 8192)  # a GPU needs a large product to reach its peak
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _median_seconds(lambda: a @ b, repeats, device=device) / 1e9


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    """The device's type, name, autocast and matmul peaks (fp32; bf16 on CUDA)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info: dict[str, Any] = {"type": "cuda", "index": device.index or 0, "name": props.name,
                                "memory_mib": props.total_memory / 2**20, "capability": f"{props.major}.{props.minor}",
                                "cuda": torch.version.cuda, "autocast": "bf16"}
    elif device.type == "mps":
        info = {"type": "mps", "name": f"Apple MPS ({platform.machine()})", "autocast": None}
    else:
        info = {"type": "cpu", "name": cpu_name(), "cpus": len(os.sched_getaffinity(0)), "autocast": None}
    info["fp32_matmul_peak_gflops"] = matmul_peak_gflops(device=device)
    if device.type == "cuda":
        info["bf16_matmul_peak_gflops"] = matmul_peak_gflops(device=device, dtype=torch.bfloat16)
    return info


def bench_store(store_path: Path, batch_size: int = 1024, repeats: int = 20,
                device: torch.device = CPU) -> dict[str, Any]:
    """Opening the store, and batches/s of the sampler on ``device``: frames with kernel draws and flips, and
    windows."""
    t0 = time.perf_counter()
    store = PoseStore.open(store_path)
    open_seconds = time.perf_counter() - t0
    rows = torch.from_numpy(store.rows(store.split_subjects("train"))).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    out: dict[str, Any] = {"open_seconds": open_seconds, "rows": len(store), "batch_size": batch_size}
    for frames in (1, 27, 243):
        sampler = Sampler(store, frames=frames, device=device)

        def one(sampler: Sampler = sampler) -> None:
            idx = rows[torch.randint(len(rows), (batch_size,), generator=g, device=device)]
            flip = torch.rand(batch_size, generator=g, device=device) < 0.5
            sampler.batch(idx, draw_kernels=True, flip=flip, generator=g)

        seconds = _median_seconds(one, repeats, warmup=2, device=device)
        out[f"sampler_T{frames}_samples_per_second"] = batch_size / seconds
    return out


def bench_lifter(cfg: Config, store: PoseStore, batch_size: int, repeats: int, warmup: int = 1,
                 device: torch.device = CPU) -> dict[str, Any]:
    """Training samples/s (loss, backward, Adam step), inference poses/s, parameters and FLOPs per pose, with
    random weights (speed does not depend on them), on ``device`` (bf16 autocast on CUDA; peak GPU memory).
    DiffPose's encoder is built untrained. A sample is a window of ``data.frames``; inference gives its centre
    frame (sliding evaluation) and, for lifters that predict every frame, all T of them (chunked evaluation:
    ``chunk_poses_per_second``)."""
    rows = splits(cfg, store)
    sampler = Sampler(store, frames=cfg.data.frames, kernels=cfg.data.kernels, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    lifter = build_lifter(cfg, encoder_network(cfg) if cfg.uses_encoder else None)
    lifter.fit_statistics(store, rows.train, torch.Generator().manual_seed(0))
    lifter.to(device)
    idx = torch.from_numpy(rows.train[:batch_size])
    train_batch = sampler.batch(idx, draw_kernels=True, generator=g)
    eval_batch = sampler.batch(idx)
    params = [p for p in lifter.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)

    def train_step() -> None:
        with autocast(device):
            loss = lifter.loss(train_batch, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer() -> None:
        with torch.inference_mode(), autocast(device):
            lifter.predict(eval_batch, g)

    out: dict[str, Any] = {}
    with peak_gpu_memory(device, out):
        lifter.train()
        train_s = _median_seconds(train_step, repeats, warmup, device)
        lifter.eval()
        infer_s = _median_seconds(infer, repeats, warmup, device)
    one = sampler.batch(idx[:1])
    with torch.inference_mode():
        flops = count_flops(lambda: lifter.predict(one, g))
    out = {
        "frames": cfg.data.frames,
        "batch_size": len(idx),
        "repeats": repeats,
        "warmup": warmup,
        "train_samples_per_second": len(idx) / train_s,
        "inference_poses_per_second": len(idx) / infer_s,
        "params": sum(p.numel() for p in lifter.parameters()),
        "trainable_params": sum(p.numel() for p in params),
        "flops_per_pose": flops,
        **out,
    }
    if cfg.data.frames > 1 and lifter.predicts_frames:
        def infer_frames() -> None:
            with torch.inference_mode(), autocast(device):
                lifter.predict_frames(eval_batch, g)

        seconds = _median_seconds(infer_frames, repeats, warmup, device)
        out["chunk_poses_per_second"] = len(idx) * cfg.data.frames / seconds
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
              quick: bool = False, device: str = "auto") -> dict[str, Any]:
    """Every case of :func:`bench_cases` on ``device`` (``auto``: the loop's pick); on CUDA the frame-based
    cases again at each of ``GPU_BATCH_SIZES`` but ``batch_size``. Writes ``out`` (atomically) and returns it."""
    threads = set_threads(threads)
    dev = pick_device(device)
    torch.manual_seed(0)
    info = device_info(dev)
    result: dict[str, Any] = {
        "machine": {"processor": platform.processor() or platform.machine(), "threads": threads,
                    "torch": torch.__version__, "python": platform.python_version()},
        "device": info,
        # The CPU's, whatever the device (the CPU's roofline of earlier bench.json files).
        "fp32_matmul_peak_gflops": info["fp32_matmul_peak_gflops"] if dev.type == "cpu" else matmul_peak_gflops(),
        "store": bench_store(store_path, batch_size, repeats=5 if quick else 20, device=dev),
    }
    log.info("device: %s; store: %s", result["device"], result["store"])
    store = PoseStore.open(store_path)
    base = Config().override({"data.store": str(store_path)})
    lifters: dict[str, Any] = {}
    for name, case in bench_cases().items():
        cfg = base.override(case.overrides)
        reps = min(case.repeats or repeats, 2 if quick else repeats)
        lifters[name] = bench_lifter(cfg, store, case.batch_size or batch_size, reps, case.warmup, dev)
        log.info("%s: %s", name, lifters[name])
        if dev.type == "cuda" and not case.batch_size and cfg.data.frames == 1:
            for size in GPU_BATCH_SIZES:
                if size != batch_size:
                    lifters[f"{name}@{size}"] = bench_lifter(cfg, store, size, reps, case.warmup, dev)
                    log.info("%s@%d: %s", name, size, lifters[f"{name}@{size}"])
    result["lifters"] = lifters
    result["peak_rss_mib"] = peak_rss_mib()
    if dev.type == "cuda":
        result["device"]["peak_memory_mib"] = torch.cuda.max_memory_reserved(dev) / 2**20
        result["device"]["peak_memory"] = "torch.cuda.max_memory_reserved over the run"
    else:
        result["device"]["peak_memory_mib"] = result["peak_rss_mib"]
        result["device"]["peak_memory"] = "peak resident set size of the process"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    s, d = result["store"], result["device"]
    lines = [f"device {d['type']} ({d['name']}), autocast {d['autocast'] or 'off'}, fp32 matmul peak "
             f"{d['fp32_matmul_peak_gflops']:.0f} GFLOP/s"
             + (f", bf16 {d['bf16_matmul_peak_gflops']:.0f} GFLOP/s" if "bf16_matmul_peak_gflops" in d else "")
             + f", peak memory {d['peak_memory_mib']:.0f} MiB",
             f"threads {result['machine']['threads']}, CPU fp32 matmul peak {result['fp32_matmul_peak_gflops']:.0f} "
             f"GFLOP/s, peak RSS {result['peak_rss_mib']:.0f} MiB",
             f"store: {s['rows']} rows opened in {s['open_seconds']:.2f} s; sampler samples/s: "
             + ", ".join(f"T={t} {s[f'sampler_T{t}_samples_per_second']:,.0f}" for t in (1, 27, 243))]
    for name, r in result["lifters"].items():
        gflops = r["flops_per_pose"] * r["inference_poses_per_second"] / 1e9
        chunks = f"  chunks {r['chunk_poses_per_second']:9,.1f}/s" if "chunk_poses_per_second" in r else ""
        chunks += f"  GPU peak {r['peak_gpu_memory_mib']:,.0f} MiB" if "peak_gpu_memory_mib" in r else ""
        lines.append(f"{name:28s} train {r['train_samples_per_second']:8,.1f}/s  infer "
                     f"{r['inference_poses_per_second']:9,.1f}/s  params {r['params'] / 1e6:6.2f} M  "
                     f"{r['flops_per_pose'] / 1e6:9.1f} MFLOP/pose  ({gflops:5.1f} GFLOP/s inference)"
                     + chunks)
    return lines


__all__ = ["run_bench", "summary_lines", "bench_store", "bench_lifter", "bench_cases", "device_info", "Case", "np"]
