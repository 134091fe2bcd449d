"""Bugs this suite found in the SDK that are not fixed yet (none at the moment).

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


@dataclass(frozen=True)
class Known:
    text: str
    types: tuple[type[BaseException], ...] = (BaseException,)
    marker: str = ""  # text that identifies the bug in an error message

    def explains(self, exc: BaseException) -> bool:
        return isinstance(exc, self.types) and self.marker in str(exc)

    def matches(self, message: str) -> bool:
        return bool(self.marker) and self.marker in message


# Bugs whose failures are counted inside worker processes (matched by message).
KNOWN_BUGS: tuple[Known, ...] = ()
