"""The package's shape (docs/architecture.md): each subpackage states its public modules in
``__all__``, imports only go down the layers (core <- stores <- pipelines <- face), and no
function is longer than 60 lines."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import clanet_store

PACKAGE = Path(clanet_store.__file__).parent
SUBPACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
CORE = {
    "exports",
    "imaging",
    "models",
    "learn",
    "qc",
    "schemas",
    "errors",
    "textout",
    "torchfile",
    "progress",
}
# What each layer may import from clanet_store (by top-level name); the face imports anything.
MAY_IMPORT = {
    "core": CORE,
    "stores": CORE | {"stores"},
    "pipelines": CORE | {"stores", "pipelines"},
}
LAYER = {name: "core" for name in CORE} | {"stores": "stores", "pipelines": "pipelines"}


def _public_modules(package: str) -> list[str]:
    return sorted(p.stem for p in (PACKAGE / package).glob("*.py") if not p.stem.startswith("_"))


@pytest.mark.parametrize("package", [p for p in SUBPACKAGES if p != "cli"])
def test_subpackage_all_lists_its_public_modules(package: str) -> None:
    module = importlib.import_module(f"clanet_store.{package}")
    assert module.__all__ == _public_modules(package), (
        f"clanet_store/{package}/__init__.py: __all__ must list its public modules"
    )
    assert module.__doc__, f"clanet_store/{package}/__init__.py needs a docstring"


def _imported_packages(path: Path) -> set[str]:
    """The top-level clanet_store names a module imports (the package uses absolute imports)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
            if node.module == "clanet_store":
                modules += [f"clanet_store.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        names |= {m.split(".")[1] for m in modules if m.startswith("clanet_store.")}
    return names


def test_imports_only_go_down_the_layers() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        layer = LAYER.get(top)
        if layer is None:  # the face (cli, report, runs) and the package root
            continue
        for name in sorted(_imported_packages(path) - MAY_IMPORT[layer] - {"__version__"}):
            where = path.relative_to(PACKAGE.parent)
            wrong.append(f"{where} ({layer}) imports clanet_store.{name}")
    assert not wrong, "\n".join(wrong)


# Issue 20, a thin command line: cli/ calls pipelines (and the declared-pipeline runner, the
# report) and prints; it never reaches into the core or the stores. Exceptions: what is not
# thin yet, each named by file and module, to be emptied.
CLI_MAY_IMPORT = {"cli", "pipelines", "runs", "report", "textout", "errors", "progress"}
CLI_NOT_YET_THIN = {
    ("app.py", "stores"),  # store_option parses --store into a StoreLocation (issue 22)
}


def test_cli_imports_only_pipelines_and_the_face() -> None:
    wrong = [
        f"clanet_store/cli/{path.name} imports clanet_store.{name}"
        for path in sorted((PACKAGE / "cli").glob("*.py"))
        for name in sorted(_imported_packages(path) - CLI_MAY_IMPORT - {"__version__"})
        if (path.name, name) not in CLI_NOT_YET_THIN
    ]
    assert not wrong, "\n".join(wrong)
    stale = [
        f"{name} in cli/{file}"
        for file, name in sorted(CLI_NOT_YET_THIN)
        if name not in _imported_packages(PACKAGE / "cli" / file)
    ]
    assert not stale, "thin now, drop from CLI_NOT_YET_THIN: " + ", ".join(stale)


MAX_FUNCTION_LINES = 60


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` to the function's last line, its docstring left out."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    value = first.value if isinstance(first, ast.Expr) else None
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_function_over_60_lines() -> None:
    """Issue 20: no function in clanet_store/ longer than 60 lines, docstring excluded (what a
    reader must hold in mind at once). Listed with their length when some are."""
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({_body_lines(node)})"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and _body_lines(node) > MAX_FUNCTION_LINES
    ]
    assert not long, "\n".join(long)
