"""The shape of the code, checked: no import circle between our modules, no private state of Optuna, Ray or
MLflow touched, the orchestration and report modules short enough to read, and the library free of
orchestration imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("diffpose", "benchmark", "reports")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that ``name`` imports, at module level or inside a function."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                   else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def test_no_import_circle():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # a package importing its own submodules is not a circle
    cycles = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


# Private state the orchestration once reached into; public API only.
PRIVATE = re.compile(
    r"\b(ray|optuna|mlflow)(\.\w+)*\._\w+"       # a private module or attribute of those packages
    r"|from (ray|optuna|mlflow)[\w.]* import _\w+"
    r"|\._(storage|rng|trial_id|random_sampler)\b|\b_ot_trials\b|\b_completed_trials\b|record_heartbeat"
)


@pytest.mark.parametrize("package", [*PACKAGES, "tests"])
def test_no_private_state_of_optuna_ray_or_mlflow(package):
    this = Path(__file__).resolve()
    offending = [f"{p.relative_to(REPO)}:{i}: {line.strip()}"
                 for p in sorted((REPO / package).rglob("*.py")) if p.resolve() != this
                 for i, line in enumerate(p.read_text().splitlines(), 1) if PRIVATE.search(line)]
    assert not offending, "\n".join(offending)


@pytest.mark.parametrize("package", ["benchmark", "reports"])
def test_orchestration_and_report_modules_stay_under_500_lines(package):
    long = {str(p.relative_to(REPO)): n for p in sorted((REPO / package).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def test_the_library_imports_no_orchestration():
    leaks = [str(p.relative_to(REPO)) for p in sorted((REPO / "diffpose").rglob("*.py"))
             if re.search(r"^\s*(import|from)\s+(ray|mlflow|optuna|seaborn)\b", p.read_text(), re.M)]
    assert not leaks, leaks
