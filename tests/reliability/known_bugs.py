"""Bugs this suite found in the SDK that may not be fixed yet.

A run that fails in the way a known bug explains is counted as a failure (the table says
"known bug"), and its test ends as an expected failure (xfail) instead of failing the
build; a failure of any other kind fails the test as usual. Once a bug is fixed its runs
simply pass, and its entry here can go. Each entry names the exceptions that betray it.
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


BUG_RECURSION = Known(
    "deeply nested JSON ('[' * 1000) makes json.loads raise RecursionError, which escapes "
    "parse_entry() (from _models._entry_id_of_json) as an undocumented exception",
    (RecursionError,),
)

BUG_PUSH_EVENT = Known(
    "a push event the client cannot read as a version (deeply nested JSON: RecursionError; "
    '{"version": 1e999}: OverflowError) escapes _listen_push and kills the background '
    "sync thread: the client never syncs again and the list goes stale",
    (AssertionError,),
)

BUG_CLOCK = Known(
    "the clock's high-water mark is only advanced (and persisted) by a successful sync: "
    "a wall clock that jumps forward past the manifest's expiry (or max_staleness) and "
    "then back makes the expired list fresh again, in the running client and after a "
    "restart",
    (AssertionError,),
)

BUG_FOREIGN_DB = Known(
    "a running client keeps answering from a database that replaced the current one at the "
    "same version number (copied from another cache, or crafted): the stored manifest is "
    "re-verified only when the version number changes; a restarted client and verify() "
    "refuse it",
    (AssertionError,),
)

BUG_APPLIED_RACE = Known(
    "reload_manifest() reads the store's version, then the cache's applied_version file: "
    "when another process commits a delta and records the new version in between, a "
    "plain check raises StoreCorrupted ('rolled back outside the SDK') during a normal "
    "forward update (read applied_version first; re-read the state, with a fresh CURRENT, "
    "before calling it a rollback)",
    (StoreCorrupted,),
    "rolled back outside the SDK",
)
