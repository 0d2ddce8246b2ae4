"""Throughput of the networks in ``diffpose.models`` on this machine, printed as one JSON dict.

For the GraFormer encoder, the DiffPose denoiser, SimpleBaseline and SemGCN: parameters, multiply-accumulates
per pose (as executed: dense graph operators, attention included), training samples/s (forward, loss,
backward, Adam step) and inference poses/s (``torch.inference_mode``). For the DiffPose pipeline: the
encoder once, then K denoiser steps on N hypotheses per pose, in the released "refiner" form (x = 5-channel
uvxyz, no conditioning) and the paper's form (x = 3D pose, conditioned on the 2D input, the encoder's pose
and its features). Also the fp32 matmul peak of the machine, so each number has its % of peak
(training FLOPs counted as 3 x forward).

Timings are medians over ``--repeats`` after ``--warmup`` untimed runs (and the best run, which on a shared
machine is the least disturbed), at ``--threads`` threads (2 by default, the CI machine). The peak is the
best of its runs. Run: ``python benches/models_speed.py [--quick] [--compile]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from diffpose.data.skeleton import NUM_JOINTS
from diffpose.models.baselines import SemGCN, SimpleBaseline
from diffpose.models.denoiser import GraphDenoiser
from diffpose.models.graformer import GraFormer

# The released DiffPose frame networks (GONGJIA0208/Diffpose gcnpose.py + gcndiff.py) measured on this CPU
# (2 threads, batch 1024, torch 2.13, random weights); see the project's DIFFPOSE.md.
RELEASED = {"denoiser_train_samples_per_s": 337.0, "refiner_K2_N1_poses_per_s": 285.0}
PIPELINES = (("refiner", 2, 1), ("paper", 2, 1), ("paper", 5, 5), ("paper", 50, 1))


def seconds(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def rates(n: int, times: list[float]) -> tuple[float, float]:
    """(median, best) of n / seconds: the best run is the one least disturbed by other processes."""
    return n / statistics.median(times), n / min(times)


def matmul_peak_gflops(repeats: int, n: int = 2048) -> float:
    """fp32 GFLOP/s of one big square matmul: the roofline the % of peak refers to."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return rates(2 * n**3, seconds(lambda: a @ b, repeats, warmup=2))[1] / 1e9


def macs_per_pose(model: nn.Module, *inputs: torch.Tensor) -> float:
    """Multiply-accumulates of one forward pass per pose; attention runs on the math backend to be counted."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(*inputs)
    model.train(was_training)
    return counter.get_total_flops() / 2 / inputs[0].shape[0]


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def networks(compile_models: bool) -> dict[str, tuple[nn.Module, Callable[[int], tuple[torch.Tensor, ...]]]]:
    """name -> (network, batch maker returning (inputs..., target))."""
    j = NUM_JOINTS

    def lifter_batch(b: int) -> tuple[torch.Tensor, ...]:
        return torch.randn(b, j, 2), torch.randn(b, j, 3)

    def denoiser_batch(b: int) -> tuple[torch.Tensor, ...]:
        return torch.randn(b, j, 5), torch.randint(0, 51, (b,)), torch.randn(b, j, 5)

    nets: dict[str, tuple[nn.Module, Callable[[int], tuple[torch.Tensor, ...]]]] = {
        "graformer": (GraFormer(), lifter_batch),
        "denoiser_refiner": (GraphDenoiser(x_dim=5, cond_dim=0), denoiser_batch),
        "simple_baseline": (SimpleBaseline(), lifter_batch),
        "semgcn": (SemGCN(), lifter_batch),
        "semgcn_nonlocal": (SemGCN(nonlocal_layer=True), lifter_batch),
    }
    if compile_models:
        nets = {k: (torch.compile(m), f) for k, (m, f) in nets.items()}
    return nets


def bench_network(model: nn.Module, make_batch: Callable[[int], tuple[torch.Tensor, ...]], batch: int,
                  repeats: int, warmup: int, peak: float) -> dict[str, Any]:
    *inputs, target = make_batch(batch)
    macs = macs_per_pose(model, *make_batch(8)[:-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step() -> None:
        loss = (model(*inputs) - target).square().sum(dim=(1, 2)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer() -> None:
        with torch.inference_mode():
            model(*inputs)

    model.train()
    train, train_best = rates(batch, seconds(train_step, repeats, warmup))
    model.eval()
    infer_rate, infer_best = rates(batch, seconds(infer, repeats, warmup))
    return {
        "params": parameters(model),
        "macs_per_pose": round(macs),
        "train_samples_per_s": round(train, 1),
        "train_samples_per_s_best": round(train_best, 1),
        "infer_poses_per_s": round(infer_rate, 1),
        "infer_poses_per_s_best": round(infer_best, 1),
        "train_pct_peak": round(100 * 3 * 2 * macs * train / 1e9 / peak, 1),
        "infer_pct_peak": round(100 * 2 * macs * infer_rate / 1e9 / peak, 1),
    }


def bench_pipeline(mode: str, steps: int, hypotheses: int, batch: int, repeats: int, warmup: int,
                   peak: float, compile_models: bool) -> dict[str, Any]:
    """Encoder once, then ``steps`` denoiser calls on ``hypotheses`` x batch poses; poses/s of the whole."""
    j = NUM_JOINTS
    encoder = GraFormer().eval()
    if mode == "refiner":
        denoiser = GraphDenoiser(x_dim=5, cond_dim=0).eval()
    else:
        denoiser = GraphDenoiser(x_dim=3, cond_dim=2 + 3 + encoder.hidden).eval()
    encode = torch.compile(encoder.forward_with_features) if compile_models else encoder.forward_with_features
    den = torch.compile(denoiser) if compile_models else denoiser
    pose_2d = torch.randn(batch, j, 2)
    ts = torch.linspace(50, 0, steps).long()

    def run() -> torch.Tensor:
        with torch.inference_mode():
            pose, feats = encode(pose_2d)
            if mode == "refiner":
                x = torch.cat((pose_2d, pose), dim=-1)  # (B, J, 5)
                cond = None
            else:
                cond = torch.cat((pose_2d, pose, feats), dim=-1).repeat(hypotheses, 1, 1)  # (N B, J, 101)
                x = torch.randn(hypotheses * batch, j, 3)
            for t in ts:
                x = x - 0.1 * den(x, t.expand(x.shape[0]), cond)
            return x

    rate, best = rates(batch, seconds(run, repeats, warmup))
    macs = macs_per_pose(encoder, pose_2d[:8])
    cond8 = None if mode == "refiner" else torch.randn(8, j, denoiser.cond_dim)
    macs += steps * hypotheses * macs_per_pose(denoiser, torch.randn(8, j, denoiser.x_dim),
                                               torch.zeros(8, dtype=torch.long), cond8)
    return {"poses_per_s": round(rate, 1), "poses_per_s_best": round(best, 1), "macs_per_pose": round(macs),
            "pct_peak": round(100 * 2 * macs * rate / 1e9 / peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="batch 256, 2 repeats, 1 warm-up: a smoke run")
    parser.add_argument("--compile", action="store_true", help="torch.compile every network (slow start)")
    parser.add_argument("--no-pipeline", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats, args.warmup = 256, 2, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    peak = matmul_peak_gflops(args.repeats)
    result: dict[str, Any] = {
        "machine": {"threads": args.threads, "torch": torch.__version__, "processor": platform.processor(),
                    "matmul_peak_gflops": round(peak, 1)},
        "settings": {"batch": args.batch, "repeats": args.repeats, "warmup": args.warmup,
                     "compile": args.compile},
        "models": {},
        "pipeline": {},
    }
    for name, (model, make_batch) in networks(args.compile).items():
        result["models"][name] = bench_network(model, make_batch, args.batch, args.repeats, args.warmup, peak)
    if not args.no_pipeline:
        for mode, steps, hyps in PIPELINES:
            key = f"{mode}_K{steps}_N{hyps}"
            # long pipelines (seconds per run at batch 1024) are timed 3 times at most
            reps = args.repeats if steps * hyps <= 4 else min(args.repeats, 3)
            result["pipeline"][key] = bench_pipeline(mode, steps, hyps, args.batch, reps, 1, peak,
                                                     args.compile)
    result["released"] = RELEASED
    den = result["models"]["denoiser_refiner"]["train_samples_per_s"]
    result["speedup_vs_released"] = {
        "denoiser_train": round(den / RELEASED["denoiser_train_samples_per_s"], 2),
    }
    if "refiner_K2_N1" in result["pipeline"]:
        rate = result["pipeline"]["refiner_K2_N1"]["poses_per_s"]
        released = RELEASED["refiner_K2_N1_poses_per_s"]
        result["speedup_vs_released"]["refiner_K2_N1"] = round(rate / released, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
