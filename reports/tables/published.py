"""Published numbers (``published.csv``): one row per (method, input, protocol) with its primary source and
whether the number was verified there; their rows, footnote letters and notes in a table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports.tables.model import INPUT_UNSTATED, UNVERIFIED, Cell, Row

PUBLISHED_CSV = Path(__file__).parent.with_name("published.csv")


def load_published(path: Path = PUBLISHED_CSV) -> pd.DataFrame:
    """The published-numbers data file: one row per (method, input, protocol), source, verified flag."""
    frame = pd.read_csv(path)
    missing = {"dataset", "method", "frames", "input", "protocol", "avg", "source", "verified", "oracle"} \
        - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    frame["input"] = frame["input"].fillna("")
    frame["note"] = frame["note"].fillna("") if "note" in frame.columns else ""
    return frame


def source_marks(published: pd.DataFrame) -> dict[str, str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return {s: letters[i % 26] for i, s in enumerate(dict.fromkeys(published["source"]))}


def published_rows(published: pd.DataFrame, panel: str, keys: dict[str, str], section: str,
                   marks: dict[str, str], ranked: bool) -> list[Row]:
    rows = []
    for _, p in published.iterrows():
        frames = "" if pd.isna(p["frames"]) else str(int(p["frames"]))
        cells = {"T": Cell(text=frames), "n": Cell(text="")}
        for key, src in keys.items():
            value = p.get(src)
            cells[key] = Cell(mean=None if value is None or pd.isna(value) else float(value))
        flags = (marks[p["source"]],) + (() if bool(p["verified"]) else (UNVERIFIED,)) \
            + ((INPUT_UNSTATED,) if not p["input"] else ())
        label = str(p["method"]) + (" (oracle)" if bool(p["oracle"]) else "")
        rows.append(Row(label, cells, panel=panel, section=section, ranked=ranked, marks=flags))
    return rows


def published_notes(published: pd.DataFrame, marks: dict[str, str]) -> list[str]:
    notes = []
    if len(published):
        notes.append("Sources: " + "; ".join(f"{m}: {s}" for s, m in marks.items()
                                              if s in set(published["source"])) + ".")
        noted = published[published["note"] != ""]
        extra = [f"{method} ({', '.join(g['protocol'].str.upper())}): {note}"
                 for (method, note), g in noted.groupby(["method", "note"], sort=False)]
        if extra:
            notes.append("Notes on published rows: " + "; ".join(extra) + ".")
        if not published["verified"].astype(bool).all():
            notes.append(f"{UNVERIFIED} not verified in its primary source (see its source); treat with care.")
        if (published["input"] == "").any():
            notes.append(f"{INPUT_UNSTATED} the source does not state the 2D input.")
    return notes


def one_row_per_method(published: pd.DataFrame, protocols: tuple[str, ...]) -> pd.DataFrame:
    """Published rows (one per metric) merged into one row per method, input, frames and source."""
    keys = ["method", "frames", "input", "source", "mark", "verified"]
    records = []
    unstated = published.assign(frames=published["frames"].fillna(-1))      # groupby drops NaN keys
    for key, group in unstated.groupby(keys, sort=False):
        values = dict(zip(group["protocol"], group["avg"], strict=True))
        records.append(dict(zip(keys, key, strict=True)) | values)
    merged = pd.DataFrame(records, columns=keys + list(protocols))
    merged["frames"] = merged["frames"].where(merged["frames"] >= 0)
    return merged.assign(oracle=False, note="")
