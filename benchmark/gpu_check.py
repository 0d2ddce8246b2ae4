"""`make gpu-check`: what the CPU-only CI cannot check, on a CUDA machine, in at most five minutes; one JSON.

1. the tests marked for CUDA (``pytest -k cuda``: the parametrisations skipped where
   ``torch.cuda.is_available()`` is False), in a subprocess with its own time limit;
2. one epoch of DiffPose ``full`` and of the ``refiner`` under bf16 autocast (the loop's ``train.amp``) on
   the stand-in, each with its GraFormer context encoder trained for one epoch first: seconds, samples/s,
   loss, validation P1 and peak GPU memory;
3. ``diffpose-bench bench --device cuda --quick`` (what ``make bench`` runs, fewer repeats), in a subprocess
   with its own time limit; its figures are copied in.

A step that fails or runs out of time is recorded and the next one runs. Exit status 0 when every step
passed, 1 otherwise, 2 without a CUDA device (nothing is written).

    python -m benchmark.gpu_check --store stores/mocap17 --out results/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch

BUDGET_SECONDS = 300.0
TESTS_SECONDS = 90.0
BENCH_SECONDS = 150.0

log = logging.getLogger(__name__)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])


def cuda_tests(root: Path, timeout: float) -> dict[str, Any]:
    """``pytest -k cuda`` over ``tests/``: counts from its JUnit XML (our own file)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-k", "cuda", "-p", "no:cacheprovider", f"--junitxml={report}",
               str(root / "tests")]
        t0 = time.perf_counter()
        try:
            done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout:.0f} s", "seconds": time.perf_counter() - t0}
        out: dict[str, Any] = {"returncode": done.returncode, "seconds": time.perf_counter() - t0}
        if report.is_file():
            suite = ET.parse(report).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            out.update(counts, passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"])
            out["ran"] = [case.get("classname", "") + "::" + case.get("name", "") for case in suite.iter("testcase")
                          if case.find("skipped") is None]
        out["ok"] = done.returncode == 0 and out.get("passed", 0) > 0
        if not out["ok"]:
            out["output"] = _tail(done.stdout + done.stderr)
        return out


def one_epoch(store: Path, variant: str, work: Path) -> dict[str, Any]:
    """One autocast epoch of a DiffPose variant (its encoder one epoch first) on CUDA."""
    from diffpose.config import VARIANTS, Config
    from diffpose.train import fit

    cfg = Config().override({"data.store": str(store), **VARIANTS[variant][2], "train.epochs": 1,
                             "encoder.epochs": 1, "train.device": "cuda", "train.amp": True,
                             "train.val_max_frames": 5000, "train.eval_batch_size": 16384})
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = fit(cfg, work / variant, cache=work / "encoders", progress=False)
    seconds = time.perf_counter() - t0
    record = result.history[-1]
    return {
        "ok": math.isfinite(record["train_loss"]) and math.isfinite(record["val_p1"]),
        "seconds_with_encoder": seconds, "epoch_seconds": record["epoch_seconds"],
        "train_samples_per_second": record["samples_per_second"], "train_loss": record["train_loss"],
        "val_p1_mm": record["val_p1"], "batch_size": cfg.train.batch_size, "autocast": "bf16",
        "peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
    }


def bench(store: Path, out: Path, timeout: float) -> dict[str, Any]:
    """``diffpose-bench bench --device cuda --quick``; the device and each case's speed and peak memory."""
    cmd = [sys.executable, "-m", "benchmark", "bench", "--store", str(store), "--out", str(out), "--device", "cuda",
           "--quick"]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "seconds": time.perf_counter() - t0}
    result: dict[str, Any] = {"ok": done.returncode == 0 and out.is_file(), "returncode": done.returncode,
                              "seconds": time.perf_counter() - t0, "path": str(out)}
    if not result["ok"]:
        result["output"] = _tail(done.stdout + done.stderr)
        return result
    figures = json.loads(out.read_text())
    result["device"] = figures["device"]
    keep = ("batch_size", "train_samples_per_second", "inference_poses_per_second", "chunk_poses_per_second",
            "peak_gpu_memory_mib", "flops_per_pose")
    result["lifters"] = {name: {k: r[k] for k in keep if k in r} for name, r in figures["lifters"].items()}
    result["store"] = figures["store"]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=Path("stores/mocap17"))
    p.add_argument("--out", type=Path, default=Path("results/gpu_check.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    if not torch.cuda.is_available():
        print("error: gpu-check needs a CUDA device (torch.cuda.is_available() is False); nothing written",
              file=sys.stderr)
        return 2
    if not (args.store / "meta.json").is_file():
        print(f"error: {args.store}: not a store (run `make prepare`)", file=sys.stderr)
        return 2
    root = Path(__file__).resolve().parents[1]
    t0 = time.perf_counter()
    props = torch.cuda.get_device_properties(0)
    report: dict[str, Any] = {
        "device": {"name": props.name, "capability": f"{props.major}.{props.minor}",
                   "memory_mib": props.total_memory / 2**20, "count": torch.cuda.device_count()},
        "torch": torch.__version__, "cuda": torch.version.cuda, "budget_seconds": BUDGET_SECONDS,
    }
    log.info("1/3 tests marked for CUDA")
    report["cuda_tests"] = cuda_tests(root, TESTS_SECONDS)
    log.info("2/3 one autocast epoch of DiffPose full and refiner")
    report["train"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("full", "refiner"):
            try:
                report["train"][variant] = one_epoch(args.store, variant, Path(tmp))
            except Exception as e:  # recorded, and the next step runs: this is a report, not a test runner
                report["train"][variant] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    log.info("3/3 bench on CUDA")
    left = BUDGET_SECONDS - (time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report["bench"] = bench(args.store, args.out.with_name("bench_cuda.json"), max(30.0, min(BENCH_SECONDS, left)))
    report["seconds"] = time.perf_counter() - t0
    steps = [report["cuda_tests"], *report["train"].values(), report["bench"]]
    report["ok"] = all(s.get("ok") for s in steps)
    tmp_out = args.out.with_name(f".{args.out.name}.tmp")
    tmp_out.write_text(json.dumps(report, indent=1))
    tmp_out.replace(args.out)
    print(f"wrote {args.out}: {'all steps passed' if report['ok'] else 'some steps FAILED'} in "
          f"{report['seconds']:.0f} s on {props.name}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
