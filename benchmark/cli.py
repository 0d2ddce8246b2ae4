"""`diffpose-bench`: prepare stores, train and evaluate lifters, lift a user's 2D keypoints, fit GMMs to
heatmaps, run suites and searches, build reports.

Bad input (a missing or malformed file, an unknown config key) prints one line naming the file and the
problem to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import re
import sys
import time
import tomllib
from pathlib import Path

from diffpose.config import VARIANTS, Config, ConfigError, compose, merge, read_toml
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
    """--config, --variant and --set as one change, later ones winning key by key, composed as a suite's: the
    file and the settings are its [base] (as `ablate --overrides` joins a suite's), so the context encoder
    follows their recipe keys, and a key they give survives the variant's lifter, whose recipe fills the rest."""
    steps = _changes(args)
    source = ", ".join(s for _, s in steps) or "the defaults"
    variant = f"--variant {args.variant}"
    base = merge(*(c for c, s in steps if s != variant), source=source)
    later = [c for c, s in steps if s in (variant, "--set")]   # the settings again, to win over the variant
    return Config().override(compose(base, *later, source=source), source=source)


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
        summary.report_dir = _report(summary.tracking_uri, summary.suite, args.results, carried=summary.carry)
    print("\n".join(summary.lines()))
    return 1 if summary.failed else 0


def _cmd_carry(args: argparse.Namespace) -> int:
    from benchmark.trainings import carry

    print("\n".join(carry(args.suite, args.results, args.to)))
    return 0


def _cmd_progress(args: argparse.Namespace) -> int:
    from benchmark.trainings import progress

    print("\n".join(progress(args.suite, args.results)))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from benchmark.search import run_search

    summary = run_search(args.search, args.results, address=args.address,
                         study_storage=args.study_storage)
    if not args.no_report:
        summary.report_dir = _report(summary.tracking_uri, summary.search, args.results)
    print("\n".join(summary.lines()))
    return 0 if summary.best is not None else 1


def _report(uri: str, experiment: str, results: Path, reference: Path | None = None,
            carried: Path | None = None) -> Path:
    from reports.build import build_report

    out = results / "report" / experiment
    report = build_report(uri, experiment, out, parquet=results / f"{experiment}.parquet", reference=reference,
                          carried=carried)
    if not report.ok:
        print(f"report: {report.message}")
    for warning in report.warnings:
        print(f"report: {warning}")
    return out


def _experiment_of(path: Path, results: Path) -> tuple[str, Path | None]:
    """The MLflow experiment a suite file or a search file (one with a [search] table) logs to (its name), and
    the folder a suite's trainings and invocations travel in (``carry``), if any."""
    from benchmark.search import load_search
    from benchmark.suite import SuiteError, load_suite

    is_search = "search" in read_toml(path, SuiteError, "suite or search file")
    if is_search:
        return load_search(path, results_dir=results, check_data=False).name, None
    suite = load_suite(path, check_data=False)
    return suite.name, suite.carry


def _cmd_report(args: argparse.Namespace) -> int:
    from benchmark.tracking import experiment_exists, tracking_uri

    experiment, carried = (args.experiment, None) if args.experiment else _experiment_of(args.suite, args.results)
    uri = tracking_uri(args.results, args.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise DataError(uri.removeprefix("sqlite:///"), "no tracking database: nothing has run with these "
                                                        "--results (or give --tracking-uri)")
    if not experiment_exists(uri, experiment):
        raise DataError(uri, f"no experiment {experiment!r} (nothing of that suite or search has run here)")
    if args.publish is not None:  # refused before the build, as the publish would refuse it after
        from reports.build import check_publishable

        check_publishable(args.publish)
    out = _report(uri, experiment, args.results, args.reference, carried)
    print(f"report written to {out}")
    if args.publish is not None:
        from reports.build import publish

        target, assets = publish(out, args.publish, args.results / f"{experiment}.parquet")
        print(f"report published to {target} (figures, tables and results store in {assets})")
    return 0


def _device(name: str, flag: str = "--device") -> str:
    """A device name this machine has (``auto``: CUDA, then MPS, else the CPU); else a :class:`ConfigError`
    naming ``flag``."""
    from diffpose.train import pick_device

    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name) is None:
        raise ConfigError(f"{flag}: must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}")
    try:
        pick_device(name)
    except ConfigError:
        raise ConfigError(f"{flag}: {name!r} is not available on this machine") from None
    return name


def _cmd_bench(args: argparse.Namespace) -> int:
    from benchmark.speed import run_bench, summary_lines

    _output_file(args.out)
    device = _device(args.device)
    result = run_bench(args.store, args.out, threads=args.threads, quick=args.quick, device=device)
    print("\n".join(summary_lines(result)))
    print(f"wrote {args.out}")
    return 0


def _animations(kind: str) -> list[str]:
    """The animations ``--animation`` asks for: ``auto`` is a GIF, and an MP4 where ffmpeg exists."""
    from reports.animation import ffmpeg_available

    if kind == "mp4" and not ffmpeg_available():
        raise ConfigError("--animation mp4: ffmpeg is not on this machine (or take --animation gif)")
    return {"auto": ["gif"] + (["mp4"] if ffmpeg_available() else []), "gif": ["gif"], "mp4": ["mp4"],
            "none": []}[kind]


def _cmd_lift(args: argparse.Namespace) -> int:
    """Read and check everything first; the outputs appear together at the end, or not at all."""
    from diffpose.data.keypoints import read_keypoints
    from diffpose.lift import lift, save_json, save_npz, write_outputs
    from reports.animation import save_animation, save_png, scene

    if args.out.exists() and not args.out.is_dir():
        raise DataError(args.out, "--out is a file; give a directory")
    device = _device(args.device)
    kinds = _animations(args.animation)
    if not args.fps > 0:
        raise ConfigError(f"--fps: must be > 0, got {args.fps}")
    kp = read_keypoints(args.keypoints, args.format, width=args.width, height=args.height,
                        min_score=args.min_score, sigma_px=args.sigma, subject=args.subject, action=args.action,
                        camera=args.camera)
    frame = kp.frames // 2 if args.frame is None else args.frame
    if not 0 <= frame < kp.frames:
        raise ConfigError(f"--frame: {frame} is not a frame of the sequence (0 to {kp.frames - 1})")
    cfg = None
    changes = _changes(args)
    if changes:  # evaluation-only keys on top of the checkpoint's config, as `evaluate` takes them
        from diffpose.train import checkpoint_config, load_checkpoint

        cfg = checkpoint_config(load_checkpoint(args.checkpoint), args.checkpoint)
        for change, source in changes:
            cfg = cfg.for_evaluation(change, source=source)
    lifted = lift(args.checkpoint, kp, device=device, threads=args.threads, config=cfg)
    picture = scene(lifted, kp)
    files = {"lifted.npz": lambda p: save_npz(p, lifted, kp), "lifted.json": lambda p: save_json(p, lifted, kp),
             f"lifted_frame{frame:05d}.png": lambda p: save_png(picture, frame, p)}
    for kind in kinds:
        files[f"lifted.{kind}"] = lambda p, kind=kind: save_animation(picture, p, kind, fps=args.fps)
    write_outputs(args.out, files)
    clip = f", {kp.notes['clip']}" if "clip" in kp.notes else ""
    spread = "" if lifted.spread is None else (f"; hypotheses' spread {lifted.spread.mean() * 1000:.1f} mm "
                                               f"(mean over joints and frames, N = {lifted.hypotheses})")
    print(f"lifted {kp.frames} frames of {kp.path} ({kp.format}{clip}; {int(kp.filled.sum())} joint-frames filled "
          f"in) with {lifted.config.model.lifter} on {lifted.device}{spread}")
    print(f"wrote {args.out}: {', '.join(files)}")
    return 0


def _cmd_fit_gmm(args: argparse.Namespace) -> int:
    """Every file is read and checked, and the clips' keys too, before anything is fitted or written."""
    import numpy as np

    from diffpose.data.detections import detection_paths
    from diffpose.data.heatmaps import FittedClip, check_keys, fit_clip, read_heatmaps, write_gmm_files

    if args.out.exists() and not args.out.is_dir():
        raise DataError(args.out, "--out is a file; give a directory")
    try:
        detection_paths(args.out, args.name, args.detector)
    except ValueError as e:
        raise ConfigError(f"--name/--detector: {e}") from None
    if args.kernels < 1:
        raise ConfigError(f"--kernels: must be >= 1, got {args.kernels}")
    if not 0.0 <= args.peak_ratio <= 1.0:
        raise ConfigError(f"--peak-ratio: must be in [0, 1], got {args.peak_ratio}")
    if args.camera is not None and args.camera < 0:
        raise ConfigError(f"--camera: must be >= 0, got {args.camera}")
    clips = [read_heatmaps(p) for p in args.heatmaps]
    keys = [(c.subject or args.subject or c.path.stem, c.action or args.action or "custom",
             c.camera if c.camera is not None else args.camera or 0) for c in clips]
    check_keys([(k, c.path) for k, c in zip(keys, clips, strict=True)])
    fitted = [FittedClip(subject=k[0], action=k[1], camera=k[2], gmm=fit_clip(c, args.kernels, args.layout,
                                                                              args.peak_ratio),
                         image_size=c.image_size, path=c.path) for k, c in zip(keys, clips, strict=True)]
    plain, gmm = write_gmm_files(args.out, args.name, args.detector, fitted)
    live = np.concatenate([(f.gmm[..., 0] > 0).sum(-1).ravel() for f in fitted])
    frames = sum(f.gmm.shape[0] for f in fitted)
    print(f"fitted {args.kernels}-kernel mixtures to {frames} frames x 17 joints of {len(fitted)} clip(s) "
          f"({args.layout} heatmaps): {live.mean():.2f} live kernels per joint on average")
    print(f"wrote {gmm} and {plain}")
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

    ca = sub.add_parser("carry", help="write a suite's finished and part-way trainings into the folder they "
                                      "travel in (suite.carry, or --to), for another machine to continue from")
    ca.add_argument("--suite", type=Path, required=True)
    ca.add_argument("--results", type=Path, default=Path("results"))
    ca.add_argument("--to", type=Path, metavar="FOLDER", help="default: the suite's suite.carry")
    ca.set_defaults(func=_cmd_carry)

    tu = sub.add_parser("tune", help="a hyperparameter search (Optuna drives, trials train as Ray tasks, tracked "
                                     "in MLflow): exports the best config, then the report")
    tu.add_argument("--search", type=Path, default=Path("ablations/search_demo.toml"))
    tu.add_argument("--results", type=Path, default=Path("results"))
    tu.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    tu.add_argument("--study-storage", metavar="URL",
                    help="the Optuna study's database (default: OPTUNA_STORAGE, else the file's search.storage, "
                         "else sqlite:///RESULTS/optuna.db); drivers on one URL and study share the search")
    tu.add_argument("--no-report", action="store_true")
    tu.set_defaults(func=_cmd_tune)

    pg = sub.add_parser("progress", help="where each training of a suite stands (converged, finished short of "
                                         "convergence, part-way, not started), from the trainings' own files")
    pg.add_argument("--suite", type=Path, required=True, metavar="FILE")
    pg.add_argument("--results", type=Path, default=Path("results"))
    pg.set_defaults(func=_cmd_progress)

    rp = sub.add_parser("report", help="rebuild the report of a suite or a search from MLflow, without running "
                                       "trials")
    rp.add_argument("--suite", type=Path, default=Path("ablations/demo.toml"),
                    help="the suite or search file whose report to build")
    rp.add_argument("--experiment", help="the MLflow experiment (default: the file's name)")
    rp.add_argument("--results", type=Path, default=Path("results"))
    rp.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else RESULTS/mlflow.db")
    rp.add_argument("--publish", type=Path, metavar="FILE.md",
                    help="also copy the report to commit: FILE.md, and its figures, tables and results store in "
                         "FILE/")
    rp.add_argument("--reference", type=Path, metavar="RESULTS.parquet",
                    help="another study's results store (a published one: docs/results/NAME/results.parquet): "
                         "a table of this suite's rows against its")
    rp.set_defaults(func=_cmd_report)

    be = sub.add_parser("bench", help="speed and memory benchmarks -> JSON")
    be.add_argument("--store", type=Path, default=Path("stores/mocap17"))
    be.add_argument("--out", type=Path, default=Path("bench.json"))
    be.add_argument("--threads", type=int, default=0, help="torch threads (default: all CPUs)")
    be.add_argument("--quick", action="store_true", help="fewer repeats")
    be.add_argument("--device", default="auto",
                    help="where to measure: auto (CUDA with bf16 autocast, then MPS, else the CPU), cpu, cuda, "
                         "cuda:N, mps")
    be.set_defaults(func=_cmd_bench)

    li = sub.add_parser("lift", help="lift a 2D keypoint sequence (MMPose JSON, npz, CSV, VideoPose3D file, store "
                                     "clip) with a trained checkpoint: 3D npz, PNG, GIF/MP4")
    li.add_argument("checkpoint", type=Path, help="a checkpoint written by `train` (best.pt)")
    li.add_argument("--keypoints", required=True, type=Path,
                    help="the 2D file (or a store, or a directory of MMPose per-image JSON files)")
    li.add_argument("--out", required=True, type=Path, help="output directory")
    li.add_argument("--format", default="auto", choices=["auto", "coco", "npz", "csv", "videopose3d", "store"],
                    help="the keypoint file's format (default: told by its content)")
    li.add_argument("--width", type=int, help="image width in pixels (where the file records none)")
    li.add_argument("--height", type=int, help="image height in pixels")
    li.add_argument("--min-score", type=float, default=0.3,
                    help="joints scored below this are filled in by interpolation in time (default 0.3)")
    li.add_argument("--sigma", type=float, default=5.0,
                    help="std (pixels) of the one GMM kernel given to a file without GMMs (filled joints 3x)")
    li.add_argument("--subject", help="store / VideoPose3D file: the clip's subject")
    li.add_argument("--action", help="store / VideoPose3D file: the clip's action")
    li.add_argument("--camera", type=int, help="store / VideoPose3D file: the clip's camera index")
    li.add_argument("--device", default="auto", help="auto (CUDA, then MPS, else the CPU), cpu, cuda, cuda:N, mps")
    li.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    li.add_argument("--frame", type=int, help="the frame (index from 0) drawn as PNG (default: the middle one)")
    li.add_argument("--animation", default="auto", choices=["auto", "gif", "mp4", "none"],
                    help="auto: a GIF, and an MP4 where ffmpeg exists")
    li.add_argument("--fps", type=float, default=25.0, help="frame rate of the animation")
    _config_args(li)
    li.set_defaults(func=_cmd_lift)

    fg = sub.add_parser("fit-gmm", help="fit M-kernel 2D GMMs to heatmaps: DiffPose's GMM npz (and the plain "
                                        "detections) that `prepare` reads")
    fg.add_argument("heatmaps", nargs="+", type=Path,
                    help="npz per clip: heatmaps (T, 17, H, W) and boxes (T, 4) or affine (T, 2, 3); optional "
                         "image_size, subject, action, camera")
    fg.add_argument("--out", required=True, type=Path, help="output directory")
    fg.add_argument("--name", default="custom", help="file name part: data_2d_<name>_<detector>_gmm.npz (h36m for "
                                                     "`prepare --dataset h36m`)")
    fg.add_argument("--detector", default="heatmap", help="file name part (prepare's --detector)")
    fg.add_argument("--kernels", type=int, default=3, help="M, kernels per joint (default 3, as DiffPose's files)")
    fg.add_argument("--layout", default="coco", choices=["coco", "h36m"],
                    help="the heatmaps' joint order: COCO-17 (mapped to ours) or ours")
    fg.add_argument("--peak-ratio", type=float, default=0.1,
                    help="a peak below this fraction of the highest seeds no kernel (default 0.1)")
    fg.add_argument("--subject", help="the clips' subject where a file names none (default: the file's stem)")
    fg.add_argument("--action", help="the clips' action where a file names none (default: custom)")
    fg.add_argument("--camera", type=int, help="the clip's camera index where a file names none (default 0)")
    fg.set_defaults(func=_cmd_fit_gmm)
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

