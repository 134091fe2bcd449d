"""The package's layering, checked on the source (an import-linter style contract).

``intercept_sdk._protocol`` holds the rules both sides must agree on and imports neither
side; ``intercept_sdk._client`` and ``intercept_sdk._platform`` import the protocol core
and never each other; ``_exceptions`` and ``_util`` are the base every layer may use. Only
the command line, the testing helpers and the package's facade may import both sides.

Every ``import``/``from ... import`` statement counts, including those under
``TYPE_CHECKING`` and inside functions: a lazy import is still a dependency. The only
exemption is written out below, with its reason.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "intercept_sdk"

#: layer -> layers it must never import
FORBIDDEN: dict[str, set[str]] = {
    "base": {"_protocol", "_client", "_platform", "_cli", "testing", "facade"},
    "_protocol": {"_client", "_platform", "_cli", "testing", "facade"},
    "_client": {"_platform", "_cli", "testing", "facade"},
    "_platform": {"_client", "_cli", "testing", "facade"},
    "testing": {"_cli", "facade"},
    "_cli": {"facade"},
    "facade": set(),
}

#: (importing module, imported module): why it is allowed.
EXEMPT: dict[tuple[str, str], str] = {
    # Intercepted carries the Decision that blocked; the annotation is imported under
    # TYPE_CHECKING only, so at run time the base imports nothing above it.
    ("intercept_sdk._exceptions", "intercept_sdk._client.decisions"): "type annotation only",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "intercept_sdk":
        return None
    if len(parts) == 1:
        return "facade"
    if parts[1] in {"_exceptions", "_util"}:
        return "base"
    return parts[1]


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or target == "intercept_sdk":
                # `from . import x`: each name may be a submodule
                for alias in node.names:
                    yield f"{target}.{alias.name}", node.lineno
            else:
                yield target, node.lineno


def _violations() -> list[str]:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        me = _module_name(path)
        mine = _layer(me)
        assert mine in FORBIDDEN, f"{me}: module outside the known layers"
        for target, line in _imports(path):
            theirs = _layer(target)
            if theirs is None or theirs not in FORBIDDEN[mine]:
                continue
            if any(me == a and (target == b or target.startswith(b + ".")) for a, b in EXEMPT):
                continue
            found.append(f"{path.relative_to(SRC)}:{line}: {mine} imports {target} ({theirs})")
    return found


def test_layers_import_only_downwards() -> None:
    assert _violations() == []


def test_every_module_belongs_to_a_layer() -> None:
    modules = {p.stem for p in PKG.glob("*.py")} | {
        p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()
    }
    assert modules <= {
        "__init__",
        "_exceptions",
        "_util",
        "_protocol",
        "_client",
        "_platform",
        "_cli",
        "testing",
    }


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from .._client.store import Store\n", "_protocol imports intercept_sdk._client.store"),
        ("from .. import _platform\n", "_protocol imports intercept_sdk._platform"),
        ("import intercept_sdk._client\n", "_protocol imports intercept_sdk._client"),
    ],
)
def test_the_checker_sees_a_violation(
    source: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract can fail: a planted upward import in the protocol core is reported."""
    fake_src = tmp_path / "src"
    pkg = fake_src / "intercept_sdk"
    (pkg / "_protocol").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "_protocol" / "__init__.py").write_text("")
    (pkg / "_protocol" / "bad.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake_src)
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    assert any(expected in v for v in _violations())
