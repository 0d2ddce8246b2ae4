"""Hyperparameter searches: the search file (:mod:`.spec`), its Optuna study (:mod:`.study`) and the driver that
runs it with Optuna's ``optimize`` and trains the trials on Ray (:mod:`.driver`)."""

from benchmark.search.driver import Objective, SearchSummary, on_ray, run_search
from benchmark.search.spec import RESERVED, Dimension, Search, SearchError, display_url, load_search, storage_url
from benchmark.search.study import (
    TrialSeededSampler,
    admission,
    census,
    export_best,
    open_storage,
    open_study,
    pruner,
)

__all__ = ["RESERVED", "Dimension", "Objective", "Search", "SearchError", "SearchSummary", "TrialSeededSampler",
           "admission", "census", "display_url", "export_best", "load_search", "on_ray", "open_storage",
           "open_study", "pruner", "run_search", "storage_url"]
