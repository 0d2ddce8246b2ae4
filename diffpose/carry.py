"""Trainings that travel: a folder holding the finished and part-way trainings of a trainings cache
(:func:`diffpose.train.trained`), small enough to commit or copy, from which the cache of another machine goes on
where this one stopped. A study of many hours can then run in pieces on machines that do not keep their disks.

A carried training is a folder named by its identity (:meth:`diffpose.config.Config.identity`) holding

- when finished: ``done.json`` and ``best.pt``, and ``checkpoint.pt`` too unless the convergence rule stopped it:
  one that ran to its epoch cap continues from it when the cap is raised (:func:`diffpose.train.shorter_training`),
  while one the rule stopped never trains again, so its checkpoint and optimiser state stay behind;
- when part-way: ``checkpoint.pt`` (weights, optimiser, schedule, random state, history) and ``best.pt``: it
  resumes epoch for epoch.

A trial of a carried training evaluates its ``best.pt`` on the test split again on the new machine (with the
same seed: on this kind of machine the same P1 and P2, tests/test_cluster.py); the trials' tracked results do
not travel.
"""

from __future__ import annotations

import fcntl
import filecmp
import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from diffpose.data.source import DataError
from diffpose.train import BEST, CHECKPOINT, DONE, FitResult, load_checkpoint

log = logging.getLogger(__name__)

IDENTITY = re.compile(r"^[a-z0-9_]+-[0-9a-f]{16}$")  # Config.identity: "<lifter>-<16 hex>"


@dataclass
class Carried:
    """What one call wrote, by training identity: finished, part-way (with the epochs it has done), left as it
    was."""

    finished: list[str] = field(default_factory=list)
    partway: dict[str, int] = field(default_factory=dict)  # identity -> epochs done (its checkpoint's, 1-based)
    unchanged: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # being trained in the cache now (carry_in leaves them)

    def line(self, verb: str) -> str:
        parts = [f"{len(self.finished)} finished", f"{len(self.partway)} part-way"]
        if self.unchanged:
            parts.append(f"{len(self.unchanged)} already there")
        if self.busy:
            parts.append(f"{len(self.busy)} training here now, left alone")
        return f"{verb} {', '.join(parts)}"


def _copy(src: Path, dst: Path) -> bool:
    """``src`` to ``dst`` through a temporary file, unless ``dst`` already holds the same bytes. Whether it wrote."""
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        return False
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return True


def _epoch(folder: Path) -> int:
    """The last epoch of the checkpoint in ``folder`` (0-based), -1 without one; the checkpoint must be this
    training's (its identity is the folder's name)."""
    path = folder / CHECKPOINT
    if not path.exists():
        return -1
    return int(load_checkpoint(path, identity=folder.name)["epoch"])


def _names(folder: Path) -> list[str]:
    """The files of the training in ``folder`` that travel, the checkpoint before the best weights (read in that
    order while the training runs, the best weights are at least as new as the checkpoint's best epoch), or []."""
    if (folder / DONE).is_file():
        FitResult.read(folder)  # refused here when it is not a record of ours
        checkpoint = folder / CHECKPOINT
        stopped = not checkpoint.is_file() or load_checkpoint(checkpoint).get("stopped", False)
        return [DONE, BEST] if stopped else [CHECKPOINT, DONE, BEST]
    if (folder / CHECKPOINT).is_file() and (folder / BEST).is_file():
        return [CHECKPOINT, BEST]
    return []


def carry_out(identities: Iterable[str], cache: str | Path, folder: str | Path) -> Carried:
    """Write the trainings ``identities`` that ``cache`` holds into ``folder`` (made if missing), each as the
    module says; a file that a training no longer needs there (the checkpoint of one the rule has stopped since)
    goes. Trainings the cache lacks, or that have not finished an epoch, are left out."""
    cache, folder = Path(cache), Path(folder)
    out = Carried()
    for identity in sorted(set(identities)):
        src, dst = cache / identity, folder / identity
        names = _names(src) if src.is_dir() else []
        if not names:
            continue
        dst.mkdir(parents=True, exist_ok=True)
        wrote = [_copy(src / name, dst / name) for name in names]
        for stale in {DONE, BEST, CHECKPOINT} - set(names):
            (dst / stale).unlink(missing_ok=True)
        if not any(wrote):
            out.unchanged.append(identity)
        elif DONE in names:
            out.finished.append(identity)
        else:
            out.partway[identity] = _epoch(dst) + 1
    return out


def carry_in(folder: str | Path, cache: str | Path) -> Carried:
    """Bring the trainings carried in ``folder`` into ``cache`` where they are further than the cache's own:
    finished there and not here, or part-way there at a later epoch. A training that a process of this cache is
    training now is left to it. Every carried file is checked first (a torch file of tensors and plain data, of
    the training its folder names): a foreign one is a :class:`DataError` naming it, and nothing is copied."""
    folder, cache = Path(folder), Path(cache)
    if not folder.is_dir():
        raise DataError(folder, "no such folder of carried trainings" if not folder.exists() else "not a folder")
    plan: list[tuple[Path, list[str], int]] = []
    for src in sorted(p for p in folder.iterdir() if p.is_dir() and IDENTITY.match(p.name)):
        names = _names(src)
        epoch = _epoch(src)  # checks the carried checkpoint, when there is one
        if BEST in names:
            load_checkpoint(src / BEST, identity=src.name)
        if names:
            plan.append((src, names, epoch))
    out = Carried()
    for src, names, epoch in plan:
        dst = cache / src.name
        if (dst / DONE).is_file() or (DONE not in names and epoch <= _epoch(dst)):
            out.unchanged.append(src.name)
            continue
        dst.mkdir(parents=True, exist_ok=True)
        with open(dst / ".lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                out.busy.append(src.name)
                continue
            # the done record last: until it is there, the cache sees a training to resume, never a finished
            # one without its weights
            for name in sorted(names, key=lambda n: n == DONE):
                _copy(src / name, dst / name)
        if DONE in names:
            out.finished.append(src.name)
        else:
            out.partway[src.name] = epoch + 1
    for identity in out.busy:
        log.info("not carrying %s into %s: a process is training it now", identity, cache)
    return out
