"""The package's layers only look down, and pipelines share only their entry points.

Layers, bottom to top (a module may import its own layer and any layer below it):

    base        recommenders_tf itself, config, compat, runs, resources, savedmodel: utilities
                every layer
                uses;
                serving.contract, the names and constants exports and clients agree on
    data        loading, schema, splits
    features    vocabularies, text vectors, profiles
    index       candidate stores, BruteForce / ScaNN indexes, the index-building policy
    models      towers, rankers, re-rankers, rules (beside index: neither imports the other)
    evaluation  the protocols, metrics and peers the models are measured with
    cascade     the stages put together
    serving     exports, clients, the local server
    cli         the command-line plumbing of the pipelines (with testing, the library's top)
    pipelines   `python -m pipelines.<step>`

Every `import` is read from the source with `ast`, module level and function-local alike, so
a lazy import cannot hide an upward dependency. A new top-level module or subpackage fails
the test until it is given a layer here.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "recommenders_tf"

RANKS = {
    "base": 0, "data": 1, "features": 2, "index": 3, "models": 3, "evaluation": 4,
    "cascade": 5, "serving": 6, "cli": 7, "testing": 7, "pipelines": 8,
}
# Modules whose layer is not the name of the subpackage they sit in.
MODULE_LAYERS = {
    PACKAGE: "base", f"{PACKAGE}.config": "base", f"{PACKAGE}.compat": "base",
    f"{PACKAGE}.runs": "base", f"{PACKAGE}.resources": "base",
    f"{PACKAGE}.savedmodel": "base", f"{PACKAGE}.cli": "cli",
    # Only names and constants (it imports nothing of the package), read by data, features and
    # index for the padding id and the query inputs, so it is base wherever its file sits.
    f"{PACKAGE}.serving.contract": "base",
}

# Upward imports that are known and owned by changes in flight. Each entry is
# (importing module, imported module); remove it once the import is gone (the test fails on a
# stale entry, so the list cannot outlive the imports it excuses).
ALLOWED_UPWARD: set = set()

# What one pipeline may take from another: running it (main, parse_args) with its config.
PIPELINE_ENTRY_POINTS = ("main", "parse_args")
# Known exceptions, (importing pipeline, "pipelines.<step>.<name>"); remove each once moved.
ALLOWED_SHARED: set = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer_of(name: str) -> Optional[str]:
    """The layer of a module of this repository, or None for a module without one."""
    parts = name.split(".")
    if parts[0] == "pipelines":
        return "pipelines"
    if parts[0] != PACKAGE:
        return None
    for depth in range(len(parts), 0, -1):
        prefix = ".".join(parts[:depth])
        if prefix in MODULE_LAYERS and (depth > 1 or name == PACKAGE):
            return MODULE_LAYERS[prefix]
    return parts[1] if parts[1] in RANKS else None


def imports(path: Path) -> Iterator[Tuple[int, str, Tuple[str, ...]]]:
    """(line, imported module, names taken from it) of every import in a file, at any depth.

    `from a import b` names module `a.b` when `b` is a module, else `a` (taking `b`);
    `importlib.import_module("a.b")` with a constant name counts as `import a.b`.
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if is_module(sub):
                    yield node.lineno, sub, ()
                else:
                    yield node.lineno, base, (alias.name,)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value, ()


def sources(top: str) -> List[Path]:
    return sorted((REPO / top).rglob("*.py"))


def upward_imports() -> Tuple[List[str], List[str], set]:
    """(violations, modules without a layer, allow-list entries seen)."""
    violations, unassigned, seen = [], [], set()
    for path in sources(PACKAGE):
        importer = module_name(path)
        own = layer_of(importer)
        if own is None:
            unassigned.append(importer)
            continue
        for line, target, _ in imports(path):
            layer = layer_of(target)
            if layer is None:
                if target.split(".")[0] == PACKAGE:
                    unassigned.append(target)
                continue
            if layer == own or RANKS[layer] < RANKS[own]:
                continue
            if (importer, target) in ALLOWED_UPWARD:
                seen.add((importer, target))
                continue
            where = "sideways" if RANKS[layer] == RANKS[own] else "upward"
            violations.append(f"{path.relative_to(REPO)}:{line}: {importer} ({own}) imports "
                              f"{target} ({layer}), {where}")
    return violations, sorted(set(unassigned)), seen


def test_every_module_has_a_layer():
    _, unassigned, _ = upward_imports()
    assert not unassigned, ("give these modules a layer in tests/test_layering.py "
                            f"(RANKS / MODULE_LAYERS): {unassigned}")


def test_layers_only_import_downwards():
    violations, _, _ = upward_imports()
    assert not violations, ("imports against the layering (move the code to the right layer, "
                            "or pass the dependency in):\n" + "\n".join(violations))


def test_the_allow_list_holds_only_imports_that_still_exist():
    _, _, seen = upward_imports()
    stale = sorted(ALLOWED_UPWARD - seen)
    assert not stale, f"these imports are gone; remove them from ALLOWED_UPWARD: {stale}"


def _pipeline_attributes(tree: ast.AST, aliases: Dict[str, str]) -> Iterator[Tuple[int, str, str]]:
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            yield node.lineno, aliases[node.value.id], node.attr


def _is_entry_point(name: str) -> bool:
    return name in PIPELINE_ENTRY_POINTS or name.endswith("Config")


def test_pipelines_share_only_entry_points():
    """A pipeline may run another (its `main`, `parse_args` and `*Config`); anything else two
    pipelines share belongs in the library, where both import it from."""
    bad, seen = [], set()
    for path in sources("pipelines"):
        importer = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases: Dict[str, str] = {}
        for line, target, names in imports(path):
            if not target.startswith("pipelines.") or target == importer:
                continue
            for name in names:
                if _is_entry_point(name):
                    continue
                if (importer, f"{target}.{name}") in ALLOWED_SHARED:
                    seen.add((importer, f"{target}.{name}"))
                else:
                    bad.append(f"{path.relative_to(REPO)}:{line}: {target}.{name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "pipelines":
                aliases.update({a.asname or a.name: f"pipelines.{a.name}" for a in node.names})
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipelines."):
                aliases.update({a.asname or a.name: f"{node.module}.{a.name}"
                                for a in node.names if is_module(f"{node.module}.{a.name}")})
        for line, target, attr in _pipeline_attributes(tree, aliases):
            if _is_entry_point(attr):
                continue
            if (importer, f"{target}.{attr}") in ALLOWED_SHARED:
                seen.add((importer, f"{target}.{attr}"))
            else:
                bad.append(f"{path.relative_to(REPO)}:{line}: {target}.{attr}")
    assert not bad, ("pipelines reaching into another pipeline (move the shared code into "
                     "recommenders_tf):\n" + "\n".join(bad))
    stale = sorted(ALLOWED_SHARED - seen)
    assert not stale, f"these are gone; remove them from ALLOWED_SHARED: {stale}"
