"""`diffpose-bench`: prepare stores, train and evaluate lifters, run suites and searches, build reports.

Bad input (a missing or malformed file, an unknown config key) prints one line naming the file and the
problem to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from diffpose.config import ConfigError
from diffpose.data.source import DataError

EXIT_BAD_INPUT = 2


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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=1, sort_keys=True))
