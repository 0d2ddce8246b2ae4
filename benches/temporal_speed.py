"""Throughput of the video lifters on this machine (random weights, float32); prints one JSON object.

    python benches/temporal_speed.py [--threads N] [--min-seconds S] [--quick]

Inference counts poses per second the way each model is evaluated with one pose per window (the centre
frame's): ``windows_per_s``. MixSTE also predicts every frame of its window (``frames_per_s``), and
VideoPose3D also runs over a whole sequence at once with its dilated form (one pose per frame past the
first receptive_field - 1). Training counts windows per second through forward, backward and an Adam step.

Times are the fastest of at least 3 calls after a warm-up, with the median beside it: on a shared machine
other processes only ever add time. FLOPs are counted by torch's FlopCounterMode (matmuls, convolutions)
plus 4 N L^2 C per attention layer, which the counter does not see on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from diffpose.models.temporal import FILTER_WIDTHS, MixSTE, VideoPose3D

J = 17


def call_times(step: Callable[[], object], min_seconds: float, max_calls: int) -> dict[str, float]:
    """Seconds per call of ``step`` after one warm-up call, over at least 3 calls and ``min_seconds``.

    The fastest wall time is the estimate (other processes only ever add time), the median shows the
    spread, and the fastest process CPU time is the figure to trust on a busy machine with one thread.
    """
    step()
    wall: list[float] = []
    cpu: list[float] = []
    while len(wall) < 3 or (sum(wall) < min_seconds and len(wall) < max_calls):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "seconds_per_call": round(min(wall), 4),
        "median_seconds_per_call": round(statistics.median(wall), 4),
        "cpu_seconds_per_call": round(min(cpu), 4),
    }


def attention_flops(model: nn.Module, frames: int) -> int:
    """4 N L^2 C per attention layer for one window: spatial N = T, L = J; temporal N = J, L = T."""
    if not isinstance(model, MixSTE):
        return 0
    dim = model.embedding.out_features
    return len(model.spatial) * 4 * dim * (frames * J * J + J * frames * frames)


def flops_per_window(model: nn.Module, frames: int) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, frames, J, 2))
    return counter.get_total_flops() + attention_flops(model, frames)


def inference(name: str, model: nn.Module, frames: int, batch: int, args: argparse.Namespace) -> dict:
    model.eval()
    x = torch.randn(batch, frames, J, 2)

    def step() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    timing = call_times(step, args.min_seconds, args.max_calls)
    seconds = timing["seconds_per_call"]
    flops = flops_per_window(model, frames)
    result = {
        "name": name,
        "mode": "inference",
        "frames": frames,
        "batch": batch,
        "params": sum(p.numel() for p in model.parameters()),
        **timing,
        "windows_per_s": round(batch / seconds, 2),
        "gflop_per_window": round(flops / 1e9, 3),
        "gflop_per_s": round(flops * batch / seconds / 1e9, 1),
    }
    if isinstance(model, MixSTE):
        result["frames_per_s"] = round(batch * frames / seconds, 1)
    return result


def sequence_inference(name: str, model: VideoPose3D, frames: int, args: argparse.Namespace) -> dict:
    """VideoPose3D's evaluation: one pass of the dilated form over a whole sequence."""
    model.eval()
    x = torch.randn(1, frames, J, 2)

    def step() -> torch.Tensor:
        with torch.no_grad():
            return model(x, strided=False)

    timing = call_times(step, args.min_seconds, args.max_calls)
    seconds = timing["seconds_per_call"]
    poses = frames - model.receptive_field + 1
    return {
        "name": name,
        "mode": "inference, whole sequence",
        "frames": frames,
        "poses": poses,
        "params": sum(p.numel() for p in model.parameters()),
        **timing,
        "poses_per_s": round(poses / seconds, 1),
    }


def training(name: str, model: nn.Module, frames: int, batch: int, args: argparse.Namespace) -> dict:
    model.train()
    x = torch.randn(batch, frames, J, 2)
    out_frames = frames - model.receptive_field + 1 if isinstance(model, VideoPose3D) else frames
    target = torch.randn(batch, out_frames, J, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = (model(x) - target).norm(dim=-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    timing = call_times(step, args.min_seconds, args.max_calls)
    seconds = timing["seconds_per_call"]
    return {
        "name": name,
        "mode": "train",
        "frames": frames,
        "batch": batch,
        "params": sum(p.numel() for p in model.parameters()),
        **timing,
        "windows_per_s": round(batch / seconds, 2),
        "supervised_frames_per_s": round(batch * out_frames / seconds, 1),
    }


def released_mixste() -> MixSTE:
    return MixSTE(frames=243, dim=512, depth=8, heads=8, mlp_ratio=2.0)


def videopose3d(frames: int) -> VideoPose3D:
    return VideoPose3D(filter_widths=FILTER_WIDTHS[frames], channels=1024, dropout=0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time each measurement at least this long")
    parser.add_argument("--max-calls", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="skip MixSTE at 243 frames (about 3 s per window)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    results = [
        inference("mixste_released_t27", released_mixste(), 27, 4, args),
        inference("videopose3d_27", videopose3d(27), 27, 1024, args),
        inference("videopose3d_243", videopose3d(243), 243, 256, args),
        sequence_inference("videopose3d_243_sequence", videopose3d(243), 2242, args),
        training("mixste_small_t27", MixSTE(frames=27, dim=64, depth=4, heads=8), 27, 32, args),
        training("mixste_released_t27", released_mixste(), 27, 4, args),
        training("videopose3d_27", videopose3d(27), 27, 256, args),
    ]
    if not args.quick:
        results.insert(1, inference("mixste_released_t243", released_mixste(), 243, 1, args))

    report = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "dtype": "float32",
        "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
