"""The import graph of ``sweeps`` follows the pipeline (docs/architecture.md): each package imports only packages of
lower layers, ``cli`` and ``api`` sit on top side by side, ``strategies`` never imports ``sweeps``, and no module-level
import cycle exists. Imports are read with ``ast`` from the source, so function-level (lazy) and ``TYPE_CHECKING``
imports count too: a lazy import that goes the wrong way is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    "errors": 0,
    "metrics": 0,
    "records": 0,
    "health": 0,
    "phases": 0,
    "config": 1,
    "signals": 1,
    "data": 2,
    "track": 2,
    "report": 2,
    "cache": 3,
    "train": 4,
    "predict": 5,  # the study evaluates its finalists' saved models on the test split through it
    "study": 6,
    "workers": 7,
    "dashboard": 7,  # ``python -m sweeps dashboard``: servers on the study's stores
    "cli": 8,
    "api": 8,
    "__main__": 9,
    "__init__": 9,  # ``import sweeps`` exposes the notebook API lazily
}
"""Every unit of ``sweeps`` (a sub-package or a top-level module) and its layer, bottom (0) to top."""


def allowed(importer: str, imported: str) -> bool:
    """A unit may import itself and units of lower layers; units of one layer stay independent of each other."""
    return importer == imported or LAYERS[imported] < LAYERS[importer]


def unit_of(module: str) -> str:
    """``sweeps.config.load`` → ``config``; ``sweeps.cli`` → ``cli``; ``sweeps`` → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for every import of ``path``; ``from a import b`` yields ``a.b`` when that is a
    module of this repository, else ``a``. ``top_level_only``: what runs at import time (not in functions, not under
    ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes: list[ast.AST] = []
    if top_level_only:
        nodes = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    else:
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    out = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
            continue
        base = node.module or ""
        if node.level:
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            is_module = (ROOT / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                ROOT / Path(*candidate.split(".")) / "__init__.py"
            ).exists()
            out.append((candidate if is_module else base, node.lineno))
    return out


SWEEPS_FILES = sorted((ROOT / "sweeps").rglob("*.py"))


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module_name(p)) for p in SWEEPS_FILES}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS and docs/architecture.md"


def test_the_rule_itself() -> None:
    assert allowed("study", "train") and allowed("train", "cache") and allowed("cache", "data")
    assert not allowed("config", "study") and not allowed("train", "study") and not allowed("data", "cache")
    assert not allowed("api", "cli") and not allowed("cli", "api")
    assert not allowed("report", "track") and not allowed("data", "report")


def test_imports_follow_the_layers() -> None:
    wrong = []
    for path in SWEEPS_FILES:
        importer = unit_of(module_name(path))
        for imported, line in imports(path):
            if imported == "sweeps" or imported.startswith("sweeps."):
                target = unit_of(imported)
                if not allowed(importer, target):
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {importer} (layer {LAYERS[importer]}) imports "
                                 f"{imported} ({target}, layer {LAYERS[target]})")
    assert not wrong, "\n".join(wrong)


def test_strategies_never_import_sweeps() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {imported}"
        for path in sorted((ROOT / "strategies").rglob("*.py"))
        for imported, line in imports(path)
        if imported == "sweeps" or imported.startswith("sweeps.")
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = {
        module_name(p): {m for m, _ in imports(p, top_level_only=True) if m == "sweeps" or m.startswith("sweeps.")}
        for p in SWEEPS_FILES
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if state.get(nxt) is None and nxt in graph:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if state.get(module) is None:
            visit(module, [module])
