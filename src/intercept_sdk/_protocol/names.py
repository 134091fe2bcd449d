"""The shapes of the names both sides exchange: entry ids, subscriber ids, report ids.

Why one module: an entry id is chosen by the platform, published in every record, stored
by the client and echoed back in reports; a subscriber id names a key file and a site
directory on the platform (``restricted/<subscriber>/``) and signs every report; a report
id is the idempotency key the client's outbox and the platform both de-duplicate on. If
the two sides disagreed on what one may look like, a report could be accepted on one side
and refused on the other, or a name could escape its directory. So each shape is written
exactly once, here, and everything else (the entry model, the report schema, the key
directory, the publisher) uses these definitions.

Guarantees:

* the ``*_PATTERN`` strings are unanchored regular expressions over ASCII only;
  the compiled ``*_RE`` objects end in ``\\Z``, so ``.match`` and ``.fullmatch`` are
  equally safe (``$`` would accept a trailing newline, ``hotel-001\\n``);
* a subscriber id is safe as one path component and as a file name prefix: it starts
  with a letter or digit (never ``.`` or ``-``), holds no ``/``, ``:`` or whitespace and is
  at most 64 characters;
* :func:`validate_entry_id` / :func:`validate_subscriber_id` return the value unchanged or
  raise :class:`~intercept_sdk.InvalidInput`; they never normalise (an id is compared
  byte for byte everywhere).
"""

from __future__ import annotations

import re
from typing import Final

from .._exceptions import InvalidInput

__all__ = [
    "ENTRY_ID_PATTERN",
    "ENTRY_ID_RE",
    "REPORT_ID_PATTERN",
    "REPORT_ID_RE",
    "SUBSCRIBER_ID_PATTERN",
    "SUBSCRIBER_ID_RE",
    "is_entry_id",
    "is_report_id",
    "is_subscriber_id",
    "pydantic_pattern",
    "validate_entry_id",
    "validate_subscriber_id",
]

#: A list entry's id: what a record, a delta's ``D`` line and a report name it by.
ENTRY_ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"
#: A subscriber's id: a file name prefix and a directory of the site, hence no ``:``.
SUBSCRIBER_ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
#: A report's id (its idempotency key): ``uuid.uuid4().hex``.
REPORT_ID_PATTERN: Final = r"[0-9a-f]{32}"

ENTRY_ID_RE: Final = re.compile(ENTRY_ID_PATTERN + r"\Z")
SUBSCRIBER_ID_RE: Final = re.compile(SUBSCRIBER_ID_PATTERN + r"\Z")
REPORT_ID_RE: Final = re.compile(REPORT_ID_PATTERN + r"\Z")


def pydantic_pattern(pattern: str) -> str:
    """``pattern`` anchored for a pydantic ``Field(pattern=...)``.

    pydantic-core matches with Rust's ``regex``, where ``$`` (without the multi-line flag)
    is the end of the text only, so ``^(?:...)$`` there means exactly what ``fullmatch``
    means here (the tests check that a trailing newline is refused).
    """
    return f"^(?:{pattern})$"


def is_entry_id(value: object) -> bool:
    """True when ``value`` is a ``str`` of the entry id shape."""
    return isinstance(value, str) and ENTRY_ID_RE.fullmatch(value) is not None


def is_subscriber_id(value: object) -> bool:
    """True when ``value`` is a ``str`` of the subscriber id shape."""
    return isinstance(value, str) and SUBSCRIBER_ID_RE.fullmatch(value) is not None


def is_report_id(value: object) -> bool:
    """True when ``value`` is a ``str`` of 32 lower-case hex characters."""
    return isinstance(value, str) and REPORT_ID_RE.fullmatch(value) is not None


def _shown(value: object) -> str:
    return repr(value[:80]) if isinstance(value, str) else type(value).__name__


def validate_entry_id(value: object) -> str:
    """``value`` if it is an entry id, else :class:`~intercept_sdk.InvalidInput`."""
    if not is_entry_id(value):
        raise InvalidInput(f"entry id {_shown(value)} must match {ENTRY_ID_PATTERN}")
    assert isinstance(value, str)
    return value


def validate_subscriber_id(value: object) -> str:
    """``value`` if it is a subscriber id, else :class:`~intercept_sdk.InvalidInput`."""
    if not is_subscriber_id(value):
        raise InvalidInput(f"subscriber id {_shown(value)} must match {SUBSCRIBER_ID_PATTERN}")
    assert isinstance(value, str)
    return value
