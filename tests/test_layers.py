"""The package is layered (DESIGN.md, README "Development"): a module imports only from its own subpackage or
from a lower layer, and never from inside a function. Read from the source with `ast`, so imports inside
functions and ``importlib.import_module("geneface....")`` strings count too."""

from __future__ import annotations

import ast
from pathlib import Path

import geneface

ROOT = Path(geneface.__file__).parent
LAYERS = [  # the ground floor is four: shared numbers and errors, files, media and weights, LPIPS
    {"constants", "errors", "logs"},
    {"fileio", "device"},
    {"weights", "media", "face", "cliopts"},  # cliopts: config dataclasses as command-line options
    {"lpips"},
    {"engine", "features", "dataset", "corpusdata"},  # training engine, audio features, data formats
    {"process", "motion", "render", "synth"},  # the stages
    {"infer"},  # a person model: train_person, PersonModel
    {"evaluate", "corpus"},  # built on whole person models and on the stages
    {"cli", "serve", "__init__"},  # the command line, the web app and the public API's lazy exports
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _part(module: str) -> str:
    """The layer unit of a dotted module name below geneface (``geneface.motion.train`` -> ``motion``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1] if len(parts) > 2 else parts
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports() -> list[tuple[str, str, int, bool]]:
    """(importer, imported geneface module, line, inside a function) for every module of the package."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inner = {id(sub) for f in functions for sub in ast.walk(f)}
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                targets = [base] + [f"{base}.{a.name}" for a in node.names
                                    if base == "geneface" and ((ROOT / a.name).is_dir() or (ROOT / f"{a.name}.py").exists())]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) ==
                  "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
                targets = [str(node.args[0].value)]
            for target in targets:
                if target == "geneface" or target.startswith("geneface."):
                    found.append((module, target, node.lineno, id(node) in inner))
    return found


def test_every_module_has_a_layer():
    units = {_part(_module_name(p)) for p in ROOT.rglob("*.py")}
    assert units <= set(LAYER), f"modules without a layer: {sorted(units - set(LAYER))}"


def test_imports_point_down():
    up = []
    for importer, target, line, _ in _imports():
        a, b = _part(importer), _part(target)
        if b == "__init__" and target != "geneface":
            continue
        if target == "geneface" and importer != "geneface":  # `from geneface import __version__`
            continue
        if a != b and LAYER[b] >= LAYER[a]:
            up.append(f"{importer}:{line} imports {target} ({a} is layer {LAYER[a]}, {b} is {LAYER[b]})")
    assert not up, "imports that do not point down:\n" + "\n".join(up)


def test_no_package_imports_inside_functions():
    inside = [f"{importer}:{line} imports {target}" for importer, target, line, inner in _imports()
              if inner and importer not in ("geneface", "geneface.cli")]
    assert not inside, "imports of geneface modules inside functions (move them to the top):\n" + "\n".join(inside)
