"""The folder layout is the architecture: these rules keep it so (docs/architecture.md).

Lower layers never import higher ones, no package reaches into another's
private names, and every module and function stays small enough to read
whole.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "kvllama"

# package -> packages it must never import (higher layers).
# ray (scale-out) sits above server: its ingress runs the server's app.
FORBIDDEN = {
    "native": {"backend", "decoding", "api", "server", "replies", "kvcache", "models", "bench", "ray"},
    "backend": {"decoding", "api", "server", "replies", "bench", "ray"},
    "kvcache": {"native", "backend", "decoding", "api", "server", "replies", "bench", "ray"},
    "decoding": {"api", "server", "bench", "ray"},
    "replies": {"decoding", "api", "server", "bench", "ray"},
    "chat": {"decoding", "api", "server", "bench", "ray"},
    "media": {"backend", "kvcache", "decoding", "api", "server", "replies", "bench", "ray"},
    "models": {"api", "server", "bench", "ray"},
    "api": {"server", "bench", "ray"},
    "server": {"bench", "ray"},
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _package(path: Path) -> str:
    rel = path.relative_to(SRC).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


def _imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, names) for every ``import``/``from ... import`` of kvllama."""
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kvllama"):
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names if a.name.startswith("kvllama"))
    return out


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    package = _package(path)
    forbidden = FORBIDDEN.get(package, set())
    for module, _names in _imports(ast.parse(path.read_text())):
        parts = module.split(".")
        target = parts[1] if len(parts) > 1 else ""
        assert target not in forbidden, f"{path.relative_to(SRC)} imports {module} (a higher layer)"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_package_imports_another_packages_private_names(path: Path) -> None:
    package = _package(path)
    for module, names in _imports(ast.parse(path.read_text())):
        parts = module.split(".")
        target = parts[1] if len(parts) > 1 else ""
        if target == package:
            continue
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{path.relative_to(SRC)} imports private {private} from {module}"


def test_no_code_outside_api_reaches_the_engines_private_models() -> None:
    offenders = [
        str(p.relative_to(SRC)) for p in _modules()
        if _package(p) != "api" and ("._model(" in p.read_text() or "._models[" in p.read_text())
    ]
    assert offenders == []


COMPOSED = ("api", "decoding")


@pytest.mark.parametrize("path", [p for p in _modules() if _package(p) in COMPOSED],
                         ids=lambda p: str(p.relative_to(SRC)))
def test_the_engine_and_the_loop_are_composed_not_mixed_in(path: Path) -> None:
    """A class in api/ or the loop never inherits kvllama classes from other modules (no mixins):
    its parts are attributes a reader can follow (``engine.models``, ``loop.admission``)."""
    tree = ast.parse(path.read_text())
    from_kvllama = {name for _module, names in _imports(tree) for name in names}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            mixed = [b.id for b in node.bases if isinstance(b, ast.Name) and b.id in from_kvllama]
            assert not mixed, f"{path.relative_to(SRC)}: {node.name} inherits {mixed}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{path.relative_to(SRC)} has over {MAX_MODULE_LINES} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            where = f"{path.relative_to(SRC)}:{node.lineno} {node.name}"
            assert length <= MAX_FUNCTION_LINES, f"{where} is {length} lines"
