"""Imports flow one way (docs/development.md "Code layout"):

    cli -> pipeline -> methods -> {pruning, sharing} -> {engine, models, data, metrics}

Nothing below imports anything above it, and a method imports only ``methods/base``, the method
registry, ``pruning/``, ``sharing/`` (and ``errors``, ``options``): never another method, never
the layers under the toolbox directly. Imports are read from the source with ``ast``
(function-level and ``TYPE_CHECKING`` imports included), so a violation fails here before it
becomes a cycle; and no modules import each other in a circle, within a layer either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import prune_cli

PACKAGE = Path(prune_cli.__file__).parent

#: The layer of every top-level module or subpackage of prune_cli; a module may import modules of
#: its own layer or below. New modules must be placed here (test_every_module_has_a_layer).
LAYERS: dict[str, int] = {
    # shared utilities at the bottom, imported from everywhere
    "__init__": 0,
    "configs": 0,
    "errors": 0,
    "io": 0,
    "registry": 0,
    "distributed": 0,
    "options": 0,  # the typed-options mechanism (pydantic)
    "defaults": 0,  # the defaults of every key: the YAML files under configs/
    "renamed": 0,  # config keys of earlier releases and their replacements
    # training, models, data, counting; export writes a model in portable formats
    "engine": 1,
    "models": 1,
    "data": 1,
    "metrics": 1,
    "export": 1,
    "tracking": 1,  # experiment trackers (TensorBoard, MLflow, W&B) the pipeline reports to
    # the toolbox
    "pruning": 2,
    "sharing": 2,
    # the recipes
    "methods": 3,
    # the stages, and the trained-model cache the train stage goes through
    "pipeline": 4,
    "schema": 4,  # the whole config's schema: reads every dataset's and method's options
    "cache": 4,
    "portable": 4,  # portable checkpoints: rebuilds a run's final model (models + methods)
    "retrain": 4,  # the fine-tune stage's distillation, rewinding, from-scratch controls
    "trained": 4,  # dense training through the trained-model cache
    "record": 4,  # metrics.json, the log lines, the trackers, the warnings of a run
    "run_models": 4,  # the run's architecture, freshly initialised or pretrained
    # entry points: prune-run, its Hydra callbacks, prune-report
    "cli": 5,
    "callbacks": 5,
    "report": 5,
    "docgen": 5,  # python -m prune_cli.docgen: docs/configuration.md from the options and configs/
}
#: Public entry points the package re-exports lazily (PEP 562 ``__getattr__`` in
#: ``prune_cli/__init__.py``): imported on first use only, so ``import prune_cli`` stays at the
#: bottom layer.
LAZY_EXPORTS = {"prune_cli.portable"}
LAYER_NAMES = ["utilities", "engine/models/data/metrics", "pruning/sharing", "methods",
               "pipeline", "cli"]  # fmt: skip

#: What a method module may import from prune_cli (the package itself and anything below).
METHOD_IMPORTS = (
    "prune_cli.methods.base",
    "prune_cli.methods.registry",
    "prune_cli.pruning",
    "prune_cli.sharing",
    "prune_cli.errors",
    "prune_cli.options",  # the typed-options mechanism every method declares its keys with
)
#: The methods package's own plumbing: the interface, the registry, the package that imports
#: every method to register it. Checked by the layer rule only.
METHOD_PLUMBING = {"__init__", "base", "registry"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """The prune_cli modules ``path`` imports (``from prune_cli import x`` counts as
    ``prune_cli.x``; relative imports are resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "prune_cli")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "prune_cli":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").is_file()
                is_package = (PACKAGE.parent / sub.replace(".", "/") / "__init__.py").is_file()
                found.add(sub if is_module or is_package else base)
    return found


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1] if len(parts) > 1 else "__init__")


MODULES = sorted(PACKAGE.rglob("*.py"))
METHOD_MODULES = sorted(
    p for p in (PACKAGE / "methods").glob("*.py") if p.stem not in METHOD_PLUMBING
)


def test_every_module_has_a_layer() -> None:
    unplaced = sorted({module_name(p) for p in MODULES if layer_of(module_name(p)) is None})
    assert not unplaced, f"place these in tests/test_layers.py LAYERS: {unplaced}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_nothing_imports_a_layer_above_it(path: Path) -> None:
    own = layer_of(module_name(path))
    assert own is not None
    lazy = LAZY_EXPORTS if module_name(path) == "prune_cli" else set()
    upward = [
        f"{target} ({LAYER_NAMES[layer]})"
        for target in sorted(project_imports(path) - lazy)
        if (layer := layer_of(target)) is not None and layer > own
    ]
    assert not upward, f"{module_name(path)} ({LAYER_NAMES[own]}) imports upward: {upward}"


@pytest.mark.parametrize("path", METHOD_MODULES, ids=lambda p: p.stem)
def test_a_method_imports_only_base_registry_pruning_and_sharing(path: Path) -> None:
    bad = sorted(
        target
        for target in project_imports(path)
        if target != "prune_cli"
        and not any(target == ok or target.startswith(ok + ".") for ok in METHOD_IMPORTS)
    )
    assert not bad, f"method module {path.stem} imports {bad}; allowed: {list(METHOD_IMPORTS)}"


def test_the_import_reader_sees_what_the_rules_need() -> None:
    # the reader itself: package imports resolve to modules, function-level imports count
    assert "prune_cli.distributed" in project_imports(PACKAGE / "engine" / "loop.py")
    assert "prune_cli.pipeline" in project_imports(PACKAGE / "cli.py")  # imported in a function
    assert "prune_cli.methods.registry" in project_imports(PACKAGE / "methods" / "none.py")
    assert {p.stem for p in METHOD_MODULES} >= {"magnitude", "optimized", "soft_sharing"}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_within_or_across_layers() -> None:
    """No module reaches itself through its imports, inside a layer too. Function-level imports
    count: an import moved into a function to dodge a cycle is still a cycle."""
    graph = {module_name(p): project_imports(p) - {module_name(p)} for p in MODULES}
    graph["prune_cli"] -= LAZY_EXPORTS  # imported on first use, after the package itself
    assert _cycles(graph) == []
    # the check finds one
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
