"""The public surface of ``intercept_sdk``.

Why: integrators import from the top-level package only, and ``from intercept_sdk import *``
must give them exactly what is documented. The checks are generic, so they keep holding as
names are added to ``__init__.py``:

* ``__all__`` lists exactly the public names the package exposes (no forgotten export, no
  stale entry, no duplicate);
* every name in ``__all__`` resolves;
* every exception in ``__all__`` is an :class:`InterceptError`, except ``Intercepted``,
  which must stay outside the tree so that ``except InterceptError: fail_open()`` can never
  let a blocked person through.
"""

from __future__ import annotations

import types

import intercept_sdk
from intercept_sdk import InterceptError


def public_names() -> set[str]:
    """Names a user sees in ``dir(intercept_sdk)``: not private, not submodules."""
    return {
        name
        for name in dir(intercept_sdk)
        if not name.startswith("_")
        and name != "annotations"
        and not isinstance(getattr(intercept_sdk, name), types.ModuleType)
    }


def test_all_has_no_duplicates() -> None:
    assert len(intercept_sdk.__all__) == len(set(intercept_sdk.__all__))


def test_all_equals_the_public_names() -> None:
    exported = set(intercept_sdk.__all__)
    public = public_names()
    assert exported - public == set(), "in __all__ but not defined"
    assert public - exported == set(), "public but missing from __all__"


def test_every_name_in_all_resolves() -> None:
    for name in intercept_sdk.__all__:
        assert getattr(intercept_sdk, name) is not None, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from intercept_sdk import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(intercept_sdk.__all__)


def test_exceptions_belong_to_the_tree_except_intercepted() -> None:
    exceptions = {
        name: obj
        for name in intercept_sdk.__all__
        if isinstance(obj := getattr(intercept_sdk, name), type) and issubclass(obj, BaseException)
    }
    assert "InterceptError" in exceptions
    assert "Intercepted" in exceptions
    for name, exc in exceptions.items():
        if name == "Intercepted":
            assert not issubclass(exc, InterceptError), "Intercepted must stay outside the tree"
            assert issubclass(exc, Exception)
        else:
            assert issubclass(exc, InterceptError), name


def test_version_is_a_string() -> None:
    assert isinstance(intercept_sdk.__version__, str)
    assert intercept_sdk.__version__
