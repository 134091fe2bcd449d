"""A clock that jumps: backwards and forwards, by random amounts.

The client's clock is injected. A jump forward past the manifest's expiry (or past
``max_staleness``) must make the list stale (a block becomes a review); a jump back
must not make it fresh again — not in the running client, and not after a restart —
because the cache remembers the latest time it has seen. A genuinely fresh version
synced after a jump is used whichever way the clock goes next.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest

from intercept_sdk import Client, Person
from intercept_sdk._exceptions import ExpiredError
from intercept_sdk._util import utcnow
from intercept_sdk.testing import TestPlatform

from ._support import MEASURE, Tally, finish_all, size

REPS = size(2, 25)
HOUR = dt.timedelta(hours=1)

pytestmark = pytest.mark.timeout(size(120, 900))


class Clock:
    def __init__(self, t: dt.datetime) -> None:
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t


def _decision(client: Client, idn: str) -> tuple[str, bool, int]:
    d = client.check(Person(idn), MEASURE)
    return d.action, d.stale, d.list_version


def test_clock_jumps(tmp_path: Path) -> None:
    forward = Tally("clock: a jump forward past expiry or max_staleness makes the list stale")
    back_expiry = Tally("clock: a jump back does not unfreeze an expired manifest")
    back_staleness = Tally("clock: a jump back does not make a stale list fresh")
    restart = Tally("clock: a restart with the clock set back keeps the stale state")
    fresh = Tally("clock: a fresh version synced after a jump holds both ways")
    rng = random.Random(31)
    for rep in range(REPS):
        t0 = utcnow().replace(microsecond=0)
        p = TestPlatform(tmp_path / f"rep-{rep}", expires=3600, now=t0)
        guest = p.add_person()["id_number"]
        clock = Clock(t0 + dt.timedelta(minutes=1))
        cache = tmp_path / f"cache-{rep}"
        # max_staleness longer than the manifest's life: the expiry is what freezes it.
        client = p.client(cache_dir=cache, clock=clock, audit=False, max_staleness="7d")
        assert _decision(client, guest) == ("block", False, 1)
        jump = dt.timedelta(seconds=rng.randint(3601, 40 * 86400))
        back = dt.timedelta(seconds=rng.randint(0, 3000))
        with forward.run(f"expiry {rep}"):
            clock.t = t0 + jump
            assert _decision(client, guest) == ("review", True, 1)
            assert client.status().stale
            with pytest.raises(ExpiredError):
                client.sync()  # the mirror still serves the same, now expired, manifest
            assert client.status().stale
        with back_expiry.run(f"rep {rep}"):
            clock.t = t0 + back
            assert _decision(client, guest) == ("review", True, 1), "unfrozen by the clock"
            assert client.status().stale
        client.close()
        with restart.run(f"rep {rep}"):
            again = p.client(
                cache_dir=cache, clock=clock, sync=False, audit=False, max_staleness="7d"
            )
            try:
                assert _decision(again, guest) == ("review", True, 1), "unfrozen by a restart"
            finally:
                again.close()
        with fresh.run(f"rep {rep}"):
            clock.t = t0 + jump
            p.publish(now=clock.t)  # the platform publishes a fresh manifest (v2)
            client = p.client(
                cache_dir=cache, clock=clock, sync=False, audit=False, max_staleness="7d"
            )
            try:
                assert client.sync().to_version == 2
                assert _decision(client, guest) == ("block", False, 2)
                clock.t = t0 + back  # before the new manifest was even published
                assert _decision(client, guest) == ("block", False, 2)
                assert not client.status().stale
            finally:
                client.close()
        # max_staleness: a long-lived manifest, a short staleness bound.
        p2 = TestPlatform(tmp_path / f"rep-{rep}-staleness", expires=60 * 86400, now=t0)
        guest2 = p2.add_person()["id_number"]
        clock2 = Clock(t0 + dt.timedelta(minutes=1))
        c2 = p2.client(
            cache_dir=tmp_path / f"cache2-{rep}", clock=clock2, audit=False, max_staleness="30m"
        )
        try:
            with forward.run(f"staleness {rep}"):
                clock2.t = t0 + dt.timedelta(seconds=rng.randint(1900, 20 * 86400))
                assert _decision(c2, guest2) == ("review", True, 1)
            with back_staleness.run(f"rep {rep}"):
                clock2.t = t0 + dt.timedelta(seconds=rng.randint(0, 1700))
                assert _decision(c2, guest2) == ("review", True, 1), "made fresh by the clock"
        finally:
            c2.close()
        p.close()
        p2.close()
    finish_all(forward, fresh, back_expiry, back_staleness, restart)
