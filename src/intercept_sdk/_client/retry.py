"""The one retry policy of the client: backoff with full jitter and ``Retry-After``.

Why one: the fetcher (a sync's requests), the report sender (uploads of the outbox) and
the background engine (reconnecting the push channel) all wait after a failure. They
used to carry two ``RetryPolicy`` classes with different defaults and two
``Retry-After`` parsers that disagreed on ``"1.5"``; ``Client(retry=...)`` reached only
the fetcher. Now there is one class and one parser, and the client hands the same
policy to all three.

Guarantees:

* The wait before retry number ``attempt`` (1-based) is uniform in
  ``[0, min(maximum, initial * multiplier ** (attempt - 1))]`` ("full jitter": a fleet
  of clients spreads out after an outage instead of returning in lockstep).
* A server's ``Retry-After`` is honoured as a lower bound, capped at
  ``max_retry_after`` so a wrong header cannot park a client for days.
* ``Retry-After`` is read as RFC 9110 defines it: ``delta-seconds`` (ASCII digits only,
  so ``"1.5"``, ``"-5"``, ``"inf"`` or ``"٣"`` are not a delay) or an HTTP date (a past
  date means "now"). Anything else is ignored and the plain backoff applies: an unreadable
  hint never shortens nor lengthens the wait, and never raises.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import math
import random as _random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryPolicy", "parse_retry_after"]

_DELTA_SECONDS = re.compile(r"[0-9]+")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or ``None`` if unusable.

    ``delta-seconds`` (``1*DIGIT``, RFC 9110 section 10.2.3) or an HTTP date; a date in
    the past gives ``0.0``. ``now`` is the wall clock (``time.time()`` by default). Not
    capped: :meth:`RetryPolicy.delay` applies the cap.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return float(text)  # float(): no digit-count limit; a huge value caps later
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" in the date: UTC, as HTTP dates always are
        when = when.replace(tzinfo=_dt.timezone.utc)
    seconds = when.timestamp() - (now if now is not None else time.time())
    return max(0.0, seconds) if math.isfinite(seconds) else None


@dataclass(frozen=True)
class RetryPolicy:
    """How the client waits and retries after a failure (see the module docstring).

    * ``attempts`` - tries per request of a sync (the fetcher); the report sender keeps a
      report queued and retries it until the platform answers, so it has no attempt
      limit, only the growing backoff.
    * ``initial``, ``multiplier``, ``maximum`` - the exponential backoff ceiling.
    * ``max_retry_after`` - the longest ``Retry-After`` honoured.
    * ``sleep`` - how the fetcher waits between tries (a sync blocks its caller anyway).
      The report sender and the background engine wait on their own stop events instead,
      so ``close()`` interrupts them; a no-op ``sleep`` given for a test never makes them
      spin.
    * ``random`` (uniform in [0, 1)) and ``wall_clock`` (for HTTP dates) - for tests.

    Frozen: one policy object is shared by the fetcher, the sender and the background
    engine, across threads.
    """

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 300.0
    multiplier: float = 2.0
    max_retry_after: float = 300.0
    sleep: Callable[[float], None] = time.sleep
    random: Callable[[], float] = _random.random
    wall_clock: Callable[[], float] = time.time

    def ceiling(self, attempt: int) -> float:
        """The longest backoff before retry number ``attempt`` (1-based), before jitter."""
        exponent = min(max(attempt, 1) - 1, 64)
        try:
            growth = self.multiplier**exponent
        except OverflowError:
            growth = math.inf
        return min(self.maximum, self.initial * growth)

    def backoff(self, attempt: int) -> float:
        """A full-jitter wait before retry number ``attempt`` (1-based)."""
        return max(0.0, self.ceiling(attempt) * self.random())

    def parse_retry_after(self, header: str | None) -> float | None:
        """:func:`parse_retry_after` on this policy's wall clock, capped at
        ``max_retry_after``."""
        seconds = parse_retry_after(header, now=self.wall_clock())
        return None if seconds is None else min(seconds, self.max_retry_after)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt``: the backoff, or the server's
        ``retry_after`` (seconds, already parsed) if longer, capped at ``max_retry_after``."""
        wait = self.backoff(attempt)
        if retry_after is None or math.isnan(retry_after):
            return wait
        return max(wait, min(max(retry_after, 0.0), self.max_retry_after))
