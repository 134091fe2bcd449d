"""Generate ``docs/api.md`` (the API reference) from the docstrings of ``intercept_sdk.__all__``.

``python docs/gen_api.py`` rewrites the file; ``tests/test_api_doc.py`` fails when the
committed reference is out of date, so the reference is always the docstrings.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import intercept_sdk

OUT = Path(__file__).with_name("api.md")


def _doc(obj: object) -> str:
    return inspect.cleandoc(inspect.getdoc(obj) or "(no docstring)")


def _signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""


def _members(cls: type) -> list[str]:
    out = []
    for name, member in cls.__dict__.items():
        if name.startswith("_") and name not in ("__init__",):
            continue
        fn = member.fget if isinstance(member, property) else member
        if isinstance(fn, (classmethod, staticmethod)):
            fn = fn.__func__
        if not callable(fn) or not getattr(fn, "__doc__", None) or name == "__init__":
            continue
        sig = "" if isinstance(member, property) else _signature(fn)
        first = _doc(fn).split("\n\n")[0].replace("\n", " ")
        out.append(f"* `{name}{sig}` — {first}")
    return out


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand.",
        "",
    ]
    for name in sorted(intercept_sdk.__all__, key=str.lower):
        obj = getattr(intercept_sdk, name)
        kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "value"
        sig = _signature(obj) if kind == "function" else ""
        lines += [f"## `{name}{sig}`", "", f"*{kind}*", "", _doc(obj), ""]
        if inspect.isclass(obj):
            members = _members(obj)
            if members:
                lines += ["Members:", "", *members, ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {OUT}\n")
