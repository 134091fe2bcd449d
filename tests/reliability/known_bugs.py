"""Bugs this suite found in the SDK that are not fixed yet.

A run that fails in the way an open bug explains is counted as a failure (the table says
"known bug") and its test ends as an expected failure (xfail) instead of failing the
build; a failure of any other kind fails the test as usual. To register one, add a
:class:`Known` here and pass it as ``known=`` to ``Tally.run`` (or, for failures counted
inside worker processes, match it against their error messages); once it is fixed its
runs simply pass, and the entry goes. The bugs found so far, all fixed, are listed in
``docs/reliability.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from intercept_sdk._exceptions import StoreCorrupted


@dataclass(frozen=True)
class Known:
    text: str
    types: tuple[type[BaseException], ...] = (BaseException,)
    marker: str = ""  # text that identifies the bug in an error message

    def explains(self, exc: BaseException) -> bool:
        return isinstance(exc, self.types) and self.marker in str(exc)

    def matches(self, message: str) -> bool:
        return bool(self.marker) and self.marker in message


BUG_APPLIED_RACE = Known(
    "Updater.reload_manifest() (called by check() through _manifest_expiry when a new "
    "version appears) reads the store's version and then the cache's applied_version "
    "record: when another process commits the next version and records it in between, "
    "a plain check() raises StoreCorrupted ('rolled back outside the SDK') during a "
    "normal forward update",
    (StoreCorrupted,),
    "rolled back outside the SDK",
)

# Bugs whose failures are counted inside worker processes (matched by message).
KNOWN_BUGS: tuple[Known, ...] = (BUG_APPLIED_RACE,)
