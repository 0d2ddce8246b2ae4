"""`diffpose-bench`: prepare stores, train and evaluate lifters, run suites and searches, build reports.

Bad input (a missing or malformed file, an unknown config key) prints one line naming the file and the
problem to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import time
import tomllib
from pathlib import Path

from diffpose.config import VARIANTS, Config, ConfigError, read_toml
from diffpose.data.source import DataError

EXIT_BAD_INPUT = 2
USER_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EISDIR,
                         errno.ENOTDIR, errno.ENAMETOOLONG})


def _cmd_prepare(args: argparse.Namespace) -> int:
    from diffpose.data.store import prepare

    t0 = time.perf_counter()
    meta = prepare(args.dataset, args.root, args.out, detector=args.detector, annotation=args.annotation,
                   seed=args.seed)
    seconds = time.perf_counter() - t0
    print(f"wrote {args.out} in {seconds:.1f} s: {meta['rows']} rows, {meta['clips']} clips, "
          f"{len(meta['subjects'])} subjects, {meta['kernels']} GMM kernels, detector {meta['detector']}")
    for split, rows in meta["rows_per_split"].items():
        print(f"  {split:5s} {rows:>9d} rows  subjects: {', '.join(meta['splits'][split])}")
    print(f"  validation subjects (default): {', '.join(meta['default_val'])}")
    print(f"  fingerprint {meta['fingerprint'][:16]}")
    return 0


def _changes(args: argparse.Namespace) -> list[tuple[dict[str, object], str]]:
    """The config changes the command line asks for, in the order they apply: --config FILE, --variant V,
    then --set KEY=VALUE."""
    out: list[tuple[dict[str, object], str]] = []
    if args.config:
        out.append((read_toml(args.config, what="config file"), str(args.config)))
    if args.variant:
        if args.variant not in VARIANTS:
            raise ConfigError(f"--variant: unknown variant {args.variant!r} (known: {', '.join(VARIANTS)})")
        out.append((VARIANTS[args.variant][2], f"--variant {args.variant}"))
    changes = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        changes[key.strip()] = _parse_value(value.strip())
    if changes:
        out.append((changes, "--set"))
    return out


def _config(args: argparse.Namespace) -> Config:
    cfg = Config()
    for changes, source in _changes(args):
        cfg = cfg.override(changes, source=source)
    return cfg


def _parse_value(text: str) -> object:
    """TOML scalar syntax for --set values (true, 3, 1e-3, "x"); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _output_file(path: Path | None, flag: str = "--out") -> None:
    """Refuse, before any work, an output file that cannot be one (a directory; a parent that is a file)."""
    if path is None:
        return
    if path.is_dir():
        raise DataError(path, f"{flag} is a directory; give a file name")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise DataError(parent, f"{flag}: {parent} is a file, not a directory")


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file renamed into place)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        raise DataError(path, f"cannot write ({e.strerror or e})") from None


def _cmd_train(args: argparse.Namespace) -> int:
    from diffpose.train import fit

    cfg = _config(args)
    out = args.out or Path("results") / "runs" / f"{cfg.model.lifter}-{cfg.hash()[:8]}"
    result = fit(cfg, out, cache=args.encoder_cache)
    state = "converged" if result.converged else "not converged"
    print(f"trained {cfg.model.lifter} for {result.epochs} epochs ({state}) in {result.seconds / 60:.1f} min: best "
          f"validation {cfg.train.metric} {result.best_metric:.1f} mm at epoch {result.best_epoch}; "
          f"{result.best_checkpoint}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """The checkpoint's own config, with evaluation-only changes from --config/--variant/--set on top."""
    from diffpose.train import checkpoint_config, evaluate, load_checkpoint

    _output_file(args.out)
    cfg = checkpoint_config(load_checkpoint(args.checkpoint), args.checkpoint)
    for changes, source in _changes(args):
        cfg = cfg.for_evaluation(changes, source=source)
    result = evaluate(cfg, args.checkpoint, args.split)
    text = json.dumps(result, indent=1)
    if args.out:
        _write_text(args.out, text)
    print(text if not args.out else f"wrote {args.out}: P1 {result['p1']:.1f} mm, P2 {result['p2']:.1f} mm "
                                    f"over {result['frames']} frames of {', '.join(result['subjects'])}")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from benchmark.runner import run_suite
    from benchmark.suite import apply_overrides

    suite = apply_overrides(args.suite, args.overrides, args.results / "suites") if args.overrides else args.suite
    summary = run_suite(suite, args.results, address=args.address, storage=args.storage)
    if not args.no_report:
        summary.report_dir = _report(summary.tracking_uri, summary.suite, args.results)
    print("\n".join(summary.lines()))
    return 1 if summary.failed else 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from benchmark.search import run_search

    summary = run_search(args.search, args.results, address=args.address, storage=args.storage,
                         study_storage=args.study_storage)
    if not args.no_report:
        summary.report_dir = _report(summary.tracking_uri, summary.search, args.results)
    print("\n".join(summary.lines()))
    return 0 if summary.best is not None else 1


def _report(uri: str, experiment: str, results: Path) -> Path:
    from reports.build import build_report

    out = results / "report" / experiment
    report = build_report(uri, experiment, out, parquet=results / f"{experiment}.parquet")
    if not report.ok:
        print(f"report: {report.message}")
    for warning in report.warnings:
        print(f"report: {warning}")
    return out


def _experiment_of(path: Path, results: Path) -> str:
    """The MLflow experiment a suite file or a search file (one with a [search] table) logs to: its name."""
    from benchmark.search import load_search
    from benchmark.suite import SuiteError, load_suite

    is_search = "search" in read_toml(path, SuiteError, "suite or search file")
    if is_search:
        return load_search(path, results_dir=results, check_data=False).name
    return load_suite(path, check_data=False).name


def _cmd_report(args: argparse.Namespace) -> int:
    from benchmark.tracking import experiment_exists, tracking_uri

    experiment = args.experiment or _experiment_of(args.suite, args.results)
    uri = tracking_uri(args.results, args.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise DataError(uri.removeprefix("sqlite:///"), "no tracking database: nothing has run with these "
                                                        "--results (or give --tracking-uri)")
    if not experiment_exists(uri, experiment):
        raise DataError(uri, f"no experiment {experiment!r} (nothing of that suite or search has run here)")
    out = _report(uri, experiment, args.results)
    print(f"report written to {out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from benchmark.speed import run_bench, summary_lines

    _output_file(args.out)
    result = run_bench(args.store, args.out, threads=args.threads, quick=args.quick)
    print("\n".join(summary_lines(result)))
    print(f"wrote {args.out}")
    return 0


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="a TOML config (default: the built-in defaults)")
    p.add_argument("--variant", help="a named variant applied on top: " + ", ".join(VARIANTS))
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=1e-3")



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffpose-bench", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="convert a dataset into the canonical Parquet store")
    prep.add_argument("--dataset", required=True, choices=["h36m", "mpi3dhp", "mocap17"])
    prep.add_argument("--root", required=True, type=Path, help="directory holding the source files")
    prep.add_argument("--out", required=True, type=Path, help="store directory to write")
    prep.add_argument("--detector", default=None,
                      help="2D source: h36m 'cpn_ft_h36m_dbb' (default), 'gt', ...; mocap17 'synth' "
                           "(default: synthesised detections with GMMs) or 'gt'")
    prep.add_argument("--annotation", default="univ_annot3", choices=["univ_annot3", "annot3"],
                      help="mpi3dhp: which 3D annotation the files hold (recorded in the store)")
    prep.add_argument("--seed", type=int, default=0, help="mocap17: seed of the detection synthesiser")
    prep.set_defaults(func=_cmd_prepare)

    tr = sub.add_parser("train", help="train one lifter (one loop for all of them)")
    _config_args(tr)
    tr.add_argument("--encoder-cache", type=Path, default=None,
                    help="where DiffPose's context encoders are trained once and found again (default: "
                         "OUT/../encoders)")
    tr.add_argument("--out", type=Path, help="output directory (checkpoints; resumes if it holds one)")
    tr.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint: per-action P1/P2 (PCK/AUC on 3DHP) as JSON")
    ev.add_argument("checkpoint", type=Path)
    _config_args(ev)
    ev.add_argument("--split", choices=["test", "val"], default="test")
    ev.add_argument("--out", type=Path, help="write the JSON here (default: print it)")
    ev.set_defaults(func=_cmd_evaluate)

    ab = sub.add_parser("ablate", help="run an ablation suite on Ray Tune, tracked in MLflow, then the report")
    ab.add_argument("--suite", type=Path, default=Path("ablations/demo.toml"))
    ab.add_argument("--results", type=Path, default=Path("results"))
    ab.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    ab.add_argument("--storage", help="Ray Tune storage: a shared path or s3://... (default: RESULTS/ray)")
    ab.add_argument("--overrides", type=Path, metavar="FILE",
                    help="a TOML with one [base] table merged into the suite's base (e.g. the best config that "
                         "`tune` exports); the runs go to the experiment '<suite>+<file stem>'")
    ab.add_argument("--no-report", action="store_true")
    ab.set_defaults(func=_cmd_ablate)

    tu = sub.add_parser("tune", help="a hyperparameter search (Optuna on Ray Tune, tracked in MLflow): exports "
                                     "the best config, then the report")
    tu.add_argument("--search", type=Path, default=Path("ablations/search_demo.toml"))
    tu.add_argument("--results", type=Path, default=Path("results"))
    tu.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    tu.add_argument("--storage", help="Ray Tune storage: a shared path or s3://... (default: RESULTS/ray)")
    tu.add_argument("--study-storage", metavar="URL",
                    help="the Optuna study's database (default: OPTUNA_STORAGE, else the file's search.storage, "
                         "else sqlite:///RESULTS/optuna.db); drivers on one URL and study share the search")
    tu.add_argument("--no-report", action="store_true")
    tu.set_defaults(func=_cmd_tune)

    rp = sub.add_parser("report", help="rebuild the report of a suite or a search from MLflow, without running "
                                       "trials")
    rp.add_argument("--suite", type=Path, default=Path("ablations/demo.toml"),
                    help="the suite or search file whose report to build")
    rp.add_argument("--experiment", help="the MLflow experiment (default: the file's name)")
    rp.add_argument("--results", type=Path, default=Path("results"))
    rp.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else RESULTS/mlflow.db")
    rp.set_defaults(func=_cmd_report)

    be = sub.add_parser("bench", help="speed and memory benchmarks -> JSON")
    be.add_argument("--store", type=Path, default=Path("stores/mocap17"))
    be.add_argument("--out", type=Path, default=Path("bench.json"))
    be.add_argument("--threads", type=int, default=0, help="torch threads (default: all CPUs)")
    be.add_argument("--quick", action="store_true", help="fewer repeats")
    be.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    from benchmark.suite import SuiteError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (DataError, ConfigError, SuiteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        # A path the user gave that cannot be written or read as asked (read-only, no permission, full, a
        # directory where a file should be): theirs to fix, so one line. Any other OSError is a bug.
        if e.filename is None or e.errno not in USER_ERRNOS:
            raise
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT

