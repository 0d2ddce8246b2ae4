"""A :class:`Table` rendered as LaTeX (pandas ``Styler``), Markdown and CSV, from one display frame.

The display frame has a row per table row, indexed by (panel, section, label) where the table has more than
one panel or section, and a column per table column (keyed by ``Column.key``, headed by ``Column.header``).
LaTeX goes through ``Styler.to_latex`` (booktabs rules, caption and label; bold best and underlined second
best through ``Styler.apply``); what pandas cannot do is kept here: an escaper that also covers the unicode
symbols of the headers and "<"/">" (pandas' ``escape="latex"`` leaves both to fail or misprint in pdflatex),
rules between panels in booktabs style, shrinking a wide table to the line, and the notes under it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from reports.tables.model import MISSING, Cell, Column, Table

log = logging.getLogger(__name__)

SPREAD = " ± "          # between a mean and its standard deviation in a display cell
MARKS = "\u2063"        # (invisible separator) between a label and its footnote marks in the display frame
_RANK_CSS = {1: "textbf:--rwrap;", 2: "underline:--rwrap;"}


def format_p(p: float) -> str:
    """p-values: three decimals, ``<0.001`` below."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def cell_text(cell: Cell, col: Column) -> str:
    """What a cell shows: ``"49.7 ± 0.3"``, ``"+2.8 ± 0.4"``, ``"<0.001"``, its text, or – when missing.
    Negative numbers take the minus sign (U+2212); no "± 0.0" for identical values."""
    if cell.text is not None:
        return cell.text
    if cell.mean is None or pd.isna(cell.mean):
        return MISSING
    if col.kind == "p":
        return format_p(cell.mean)
    main = f"{cell.mean:+.{col.digits}f}" if col.kind == "delta" else f"{cell.mean:.{col.digits}f}"
    main = main.replace("-", "−")
    return main + (f"{SPREAD}{cell.std:.{col.digits}f}" if cell.std else "")


def _levels(table: Table) -> list[str]:
    """The index levels of the display frame: "panel" where a row has one, "section" where the rows have more
    than one, then "label"."""
    panel = ["panel"] if any(r.panel for r in table.rows) else []
    section = ["section"] if len({r.section for r in table.rows}) > 1 else []
    return [*panel, *section, "label"]


def display_frame(table: Table) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(texts, ranks): the cells as display strings and their ranks (0, 1 best, 2 second), indexed by the
    levels of :func:`_levels` (a repeated label within a panel and section is numbered " [2]", " [3]")."""
    levels = _levels(table)
    keys, seen = [], {}
    for row in table.rows:
        label = row.label + (MARKS + ",".join(row.marks) if row.marks else "")
        key = tuple(getattr(row, lv) for lv in levels[:-1]) + (label,)
        seen[key] = seen.get(key, 0) + 1
        keys.append(key[:-1] + (label + (f" [{seen[key]}]" if seen[key] > 1 else ""),))
    index = pd.MultiIndex.from_tuples(keys, names=levels) if len(levels) > 1 else \
        pd.Index([k[0] for k in keys], name="label")
    columns = pd.Index([c.key for c in table.columns], name=table.label_header)
    texts = pd.DataFrame([[cell_text(r.cells.get(c.key, Cell()), c) for c in table.columns] for r in table.rows],
                         index=index, columns=columns)
    ranks = pd.DataFrame([[r.cells.get(c.key, Cell()).rank for c in table.columns] for r in table.rows],
                         index=index, columns=columns)
    return texts, ranks


# ---- LaTeX --------------------------------------------------------------------------------------------------

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}", "±": r"$\pm$", "–": "--", "−": "$-$", "Δ": r"$\Delta$", "†": r"\dag{}",
        "‡": r"\ddag{}", "×": r"$\times$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "≥": r"$\geq$",
        "≤": r"$\leq$", "·": r"$\cdot$", "→": r"$\rightarrow$"}


def tex_escape(text: str) -> str:
    """Plain text -> LaTeX that pdflatex with only latex-base/recommended packages typesets."""
    out = "".join(_TEX.get(ch, ch) for ch in str(text))
    return out.encode("ascii", "replace").decode("ascii")


def _tex_cell(text: str) -> str:
    """A display cell in LaTeX: the spread small after the mean, ``41.0{\\scriptsize\\,$\\pm$1.4}``."""
    main, _, spread = str(text).partition(SPREAD)
    return tex_escape(main) + (rf"{{\scriptsize\,$\pm${tex_escape(spread)}}}" if spread else "")


def _tex_label(text: str) -> str:
    """A row label in LaTeX with its marks as a superscript."""
    label, _, marks = str(text).partition(MARKS)
    return tex_escape(label) + (rf"$^{{{tex_escape(marks)}}}$" if marks else "")


_CLINES = re.compile(r"^(\\cline\{(\d+)-(\d+)\} ?)+$")


def _booktabs_rules(latex: str) -> str:
    """Styler's ``\\cline`` rows between index groups -> ``\\midrule`` between the outermost groups and
    ``\\cmidrule`` within them; none right above ``\\bottomrule``."""
    out: list[str] = []
    for line in latex.splitlines():
        found = _CLINES.match(line.strip())
        if found:
            first = min(int(a) for a in re.findall(r"\\cline\{(\d+)-", line))
            last = found.group(3)
            line = r"\midrule" if first == 1 else rf"\cmidrule(l){{{first}-{last}}}"
        if line.strip() == r"\bottomrule" and out and out[-1].startswith((r"\midrule", r"\cmidrule")):
            out.pop()
        out.append(line)
    return "\n".join(out)


def to_latex(table: Table) -> str:
    """A booktabs ``table`` float with \\caption, \\label and the notes under the tabular.

    Needs only ``booktabs`` and ``graphicx`` (\\resizebox shrinks a table wider than the line, never
    enlarges it).
    """
    texts, ranks = display_frame(table)
    nlevels = texts.index.nlevels
    texts = texts.rename_axis(index=[None] * nlevels, columns=tex_escape(table.label_header))
    css = ranks.map(lambda r: _RANK_CSS.get(r, "")).to_numpy()
    headers = {c.key: c.header for c in table.columns}
    styler = (texts.style
              .format(_tex_cell)
              .format_index(lambda k: tex_escape(headers[k]), axis=1)
              .format_index(_tex_label, axis=0, level=nlevels - 1)
              .apply(lambda d: pd.DataFrame(css, index=d.index, columns=d.columns), axis=None))
    if nlevels > 1:
        styler = styler.format_index(tex_escape, axis=0, level=list(range(nlevels - 1)))
    spec = "@{}" + "l" * nlevels + "".join("l" if c.kind == "text" and c.key not in ("T", "n", "pairs") else "r"
                                           for c in table.columns) + "@{}"
    tabular = styler.to_latex(column_format=spec, hrules=True, multirow_align="naive",
                              clines="skip-last;data" if nlevels > 1 else None)
    tabular = _booktabs_rules(tabular.strip())
    # shrink to the line width when wider, never enlarge (\width is the natural width inside \resizebox)
    lines = ["% Generated by reports.tables (diffpose-bench); rebuild with `make report`, do not edit.",
             r"\begin{table}[htbp]", r"\centering", rf"\caption{{{tex_escape(table.caption)}}}",
             rf"\label{{tab:{table.name}}}", r"\small",
             r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%", tabular, "}"]
    if table.notes:
        lines += [r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize\raggedright",
                  " ".join(tex_escape(n) for n in table.notes), r"\end{minipage}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# ---- Markdown and CSV -------------------------------------------------------------------------------------------

def _md(text: str) -> str:
    label, _, marks = str(text).partition(MARKS)
    return label.replace("|", "\\|") + (f"<sup>{marks}</sup>" if marks else "")


def to_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown: **best**, <u>second</u>, mean ± std; a bold row opens each panel and an
    italic one each section."""
    texts, ranks = display_frame(table)
    headers = [table.label_header] + [c.header for c in table.columns]
    align = [":---"] + ["---:" if c.kind != "text" or c.key in ("T", "n", "pairs") else ":---"
                        for c in table.columns]
    lines = [f"### {table.caption}", "", "| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    blank = [""] * len(table.columns)
    levels = list(texts.index.names)
    opened: dict[str, object] = {}
    for i, key in enumerate(texts.index):
        key = key if isinstance(key, tuple) else (key,)
        for level, value in zip(levels[:-1], key[:-1], strict=True):
            if opened.get(level) != value:
                opened[level] = value
                if level == "panel":
                    opened.pop("section", None)
                if value:
                    lines.append("| " + " | ".join([f"**{value}**" if level == "panel" else f"*{value}*"] + blank)
                                 + " |")
        cells = []
        for text, rank in zip(texts.iloc[i], ranks.iloc[i], strict=True):
            main, _, spread = str(text).partition(SPREAD)
            main = main.replace("|", "\\|")
            main = f"**{main}**" if rank == 1 else (f"<u>{main}</u>" if rank == 2 else main)
            cells.append(main + (f"{SPREAD}{spread}" if spread else ""))
        lines.append("| " + " | ".join([_md(key[-1])] + cells) + " |")
    lines.append("")
    lines += [f"<sub>{n}</sub>  " for n in table.notes]
    return "\n".join(lines).rstrip() + "\n"


def long_frame(table: Table) -> pd.DataFrame:
    """One line per (row, column) with the raw numbers: mean, std, n, text, rank, and the row's marks."""
    partial = "; ".join(table.partial)
    return pd.DataFrame(
        [{"table": table.name, "partial": partial, "panel": row.panel, "section": row.section, "group": row.group,
          "row": row.label, "marks": ",".join(row.marks), "column": col.header,
          "mean": cell.mean, "std": cell.std, "n": cell.n, "text": cell.text or "", "rank": cell.rank or None}
         for row in table.rows for col in table.columns for cell in [row.cells.get(col.key, Cell())]],
        columns=["table", "partial", "panel", "section", "group", "row", "marks", "column", "mean", "std", "n",
                 "text", "rank"]).astype({"n": "Int64", "rank": "Int64"})


def to_csv(table: Table) -> str:
    """Long format (:func:`long_frame`), floats at full precision."""
    return long_frame(table).to_csv(index=False, lineterminator="\n", float_format=lambda v: repr(float(v)))


def write_table(table: Table, directory: Path) -> list[Path]:
    """``<name>.tex``, ``<name>.md`` and ``<name>.csv`` under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for ext, render in (("tex", to_latex), ("md", to_markdown), ("csv", to_csv)):
        path = directory / f"{table.name}.{ext}"
        path.write_text(render(table), encoding="utf-8")
        out.append(path)
    log.info("wrote table %s (%d rows)%s", table.name, len(table.rows),
             f" partial: {'; '.join(table.partial)}" if table.partial else "")
    return out
