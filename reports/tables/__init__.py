"""Paper tables from the results store: built as data (:class:`reports.tables.model.Table`) by one module per
kind (comparison, ablation, reliability, the paper's claims, cost, trainings, a reference study's) over the run
grouping of :mod:`reports.tables.runs` and the published numbers of :mod:`reports.tables.published`, rendered by
:mod:`reports.tables.render`."""

from __future__ import annotations

import pandas as pd

from reports.tables.ablation import ablation_tables
from reports.tables.claims import claims_tables
from reports.tables.comparison import comparison_tables
from reports.tables.cost import cost_table
from reports.tables.model import Table
from reports.tables.published import load_published
from reports.tables.reference import reference_table
from reports.tables.reliability import reliability_tables
from reports.tables.trainings import trainings_table


def all_tables(runs: pd.DataFrame, published: pd.DataFrame | None = None,
               reference: tuple[pd.DataFrame, str] | None = None) -> tuple[list[Table], list[str]]:
    """Comparison, MPI-INF-3DHP, ablation, reliability, claims, cost and trainings tables of the finished trials
    ``runs``, with ``reference`` (another study's finished trial runs and where they were read) its table too, and
    the warnings of building them (each once)."""
    published = load_published() if published is None else published
    tables, warn = [], []
    builds = [lambda r: comparison_tables(r, published), ablation_tables, reliability_tables, claims_tables,
              cost_table, trainings_table]
    if reference is not None:
        builds.append(lambda r: reference_table(r, *reference))
    for build in builds:
        t, w = build(runs)
        tables += t
        warn += w
    return tables, list(dict.fromkeys(warn))
