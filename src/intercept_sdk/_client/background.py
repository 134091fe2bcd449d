"""Background mode: one decision engine, driven by a thread (Client) or a task (AsyncClient).

Why: the two clients' background loops used to be written twice and drifted apart (the
async one had no start jitter, ignored ``transport``, sent no ``Accept`` header and waited
differently after a failure). Now *what to do next* is decided in one place, the
:class:`Engine`, a small pure state machine with an injectable clock and random source
(tested without sleeping), in the style of tenacity/stamina; the two drivers only carry
its steps out with their own kind of I/O, and share the push channel's code
(:mod:`.push`).

The schedule the engine keeps:

* **Start**: wait a random ``[0, min(2 s, poll_interval / 10))``, so a fleet restarted
  together does not hit the platform at once; then sync.
* **Poll**: after a successful sync the next one is due after ``poll_interval`` x
  uniform(0.9, 1.1).
* **Failure backoff**: after a failed sync the next one waits a capped exponential
  backoff with jitter: ``min(poll_interval, 10 s x 2 ** (failures - 1))`` x uniform(0.5,
  1.0), so a misconfigured client (a wrong trust root, say) makes at most 4 attempts in
  its first minute and then one per ``poll_interval``, however often the push channel
  announces a version it cannot verify. While syncs fail the channel is not listened to
  (an announcement could not be applied anyway, and reconnecting per announcement was
  a storm). A sync that found another process holding the cache's sync lock (``busy``)
  is retried alike after ``min(poll_interval, 1 s x 2 ** (n - 1))`` x uniform(0.5, 1.0)
  without listening meanwhile, so workers waiting for one another do not hammer the
  channel.
* **Push** (http(s) platforms with ``push=True``): between polls, listen to the push
  channel until the poll is due; an announced newer version syncs at once (and restarts
  the poll timer). A channel that fails (refused, broken, ended, a line past the cap) is
  reconnected after the client's :class:`~.retry.RetryPolicy` backoff (full jitter,
  ``Retry-After`` honoured), counted over consecutive failures and reset by a healthy
  listen; once that backoff has grown to the poll interval, the channel is tried once per
  poll (after its sync). Polling goes on meanwhile, so a dead channel costs freshness
  nothing.
* **Wake**: a wake-up (``wake()``) during a wait or a listen syncs now.
* **Stop**: once stopped, the engine only answers :class:`Stop`.

Both drivers guarantee: background syncs never raise out of the loop (failures are in
``status()``), nothing the push channel sends stops the loop, and stopping is bounded
(the thread waits on events and closes the channel's connection; the task is cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random as _random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx

from .push import Heard, PushChannel, alisten, listen
from .retry import RetryPolicy

__all__ = [
    "AsyncDriver",
    "Engine",
    "Listen",
    "Stop",
    "SyncNow",
    "SyncOutcome",
    "Tasks",
    "ThreadDriver",
    "Wait",
]

log = logging.getLogger("intercept_sdk.background")


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class SyncNow:
    """Sync now; report the result with :meth:`Engine.synced`."""

    reason: str  # "start", "poll", "push" or "wake"


SyncOutcome = Literal["ok", "failed", "busy"]
"""How a background sync ended (``busy``: another process held the cache's sync lock)."""

SYNC_BACKOFF_INITIAL = 10.0
"""Ceiling of the wait after the first failed sync, in seconds (doubles per failure)."""

BUSY_BACKOFF_INITIAL = 1.0
"""Ceiling of the wait after the first ``busy`` sync, in seconds (doubles per retry)."""


@dataclass(frozen=True)
class Listen:
    """Listen to the push channel for at most ``seconds`` (until the poll is due); report
    how it ended with :meth:`Engine.listened`."""

    seconds: float


@dataclass(frozen=True)
class Wait:
    """Wait ``seconds`` (a wake-up may cut it short); report with :meth:`Engine.waited`."""

    seconds: float


@dataclass(frozen=True)
class Stop:
    """Stop the loop."""


Step = SyncNow | Listen | Wait | Stop
_STOP = Stop()


# --------------------------------------------------------------------------- the engine


class Engine:
    """What the background loop does next (see the module docstring). Pure: no I/O, no
    threads; ``clock`` (monotonic seconds) and ``random`` (uniform in [0, 1)) are injected.
    Not thread-safe: one driver asks it, from one thread or task."""

    def __init__(
        self,
        poll_interval: float,
        *,
        push: bool,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.poll_interval = float(poll_interval)
        self.push = push
        self.retry = retry or RetryPolicy()
        self._clock = clock
        self._random = random
        self._started = False
        self._stopped = False
        self._due: str | None = "start"
        self._next_poll = math.inf  # set by the first sync
        self.push_failures = 0
        self._push_retry_at = -math.inf
        self.sync_failures = 0
        self.busy_retries = 0

    # -- questions ---------------------------------------------------------------------
    def next(self) -> Step:
        """The next step to take."""
        if self._stopped:
            return _STOP
        if not self._started:
            self._started = True
            return Wait(self._random() * min(2.0, self.poll_interval / 10))
        now = self._clock()
        if self._due is None and now >= self._next_poll:
            self._due = "poll"
        if self._due is not None:
            reason, self._due = self._due, None
            return SyncNow(reason)
        listening = self.push and not self.sync_failures and not self.busy_retries
        if listening and now >= self._push_retry_at:
            return Listen(self._next_poll - now)
        until = min(self._next_poll, self._push_retry_at) if listening else self._next_poll
        return Wait(until - now)

    @property
    def next_poll(self) -> float:
        """When the next poll is due (monotonic seconds; infinite before the first sync)."""
        return self._next_poll

    # -- answers -----------------------------------------------------------------------
    def synced(self, ok: bool | SyncOutcome) -> None:
        """A sync finished: ``"ok"`` (or True), ``"failed"`` (or False) or ``"busy"``.

        After success the next poll is one jittered interval away; after a failure or a
        busy lock, one capped, jittered backoff away (see the module docstring)."""
        outcome = ok if isinstance(ok, str) else ("ok" if ok else "failed")
        now = self._clock()
        poll = self.poll_interval * (0.9 + 0.2 * self._random())
        if outcome == "ok":
            self.sync_failures = self.busy_retries = 0
            self._next_poll = now + poll
            return
        if outcome == "busy":
            self.busy_retries += 1
            wait = self._backoff(BUSY_BACKOFF_INITIAL, self.busy_retries)
        else:
            self.busy_retries = 0
            self.sync_failures += 1
            wait = self._backoff(SYNC_BACKOFF_INITIAL, self.sync_failures)
        self._next_poll = now + min(poll, wait)

    def _backoff(self, initial: float, n: int) -> float:
        """``min(poll_interval, initial * 2 ** (n - 1))`` x uniform(0.5, 1.0)."""
        ceiling = min(self.poll_interval, initial * 2.0 ** min(n - 1, 30))
        return ceiling * (0.5 + 0.5 * self._random())

    def listened(self, heard: Heard) -> None:
        """A listen ended as ``heard`` says."""
        if heard.outcome == "failed":
            self.push_failures += 1
            now = self._clock()
            wait = self.retry.delay(self.push_failures, heard.retry_after)
            if self.retry.ceiling(self.push_failures) >= self.poll_interval:
                # The backoff has grown to the poll: one attempt per poll from now on
                # (right after its sync), as for a channel that is simply not there.
                wait = max(wait, self._next_poll - now)
            self._push_retry_at = now + wait
            return
        if heard.outcome == "interrupted":
            self._due = "wake"
            return
        self.push_failures = 0
        self._due = "push" if heard.outcome == "announced" else "poll"

    def waited(self, woken: bool) -> None:
        """A wait ended; ``woken`` when a wake-up cut it short (sync now)."""
        if woken:
            self._due = "wake"

    def stop(self) -> None:
        """From now on :meth:`next` answers :class:`Stop`."""
        self._stopped = True


# --------------------------------------------------------------------------- the drivers


@dataclass(frozen=True)
class Tasks:
    """What the drivers do for the engine, supplied by the client core.

    ``sync`` runs one background sync and never raises (``"ok"``, ``"failed"`` or
    ``"busy"``; a bool is read as ok/failed);
    ``local_version`` is the version in the cache (0 before the first sync);
    ``connected`` is told when the push channel opens (True) and closes (False);
    ``closed`` is true once the client is closed; ``channel`` is None without push.
    """

    sync: Callable[[], bool | SyncOutcome]
    local_version: Callable[[], int]
    connected: Callable[[bool], None]
    closed: Callable[[], bool]
    channel: PushChannel | None
    engine: Callable[[], Engine]


class ThreadDriver:
    """Carries the engine's steps out on one daemon thread (``Client``'s background mode).

    Watch callbacks run on this thread (named ``intercept-sdk-sync``), since it applies
    the new versions. ``stop()`` is bounded: it sets the stop event, closes the channel's
    open connection and joins for at most the given timeout.
    """

    def __init__(self, tasks: Tasks) -> None:
        self._tasks = tasks
        self._reset()

    def _reset(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._http: httpx.Client | None = None

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def start(self) -> None:
        """Start the thread (idempotent while it runs)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="intercept-sdk-sync", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Sync now (at the next line of the channel, or at once when waiting)."""
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Stop the thread, waiting for it at most ``timeout`` seconds."""
        self._stop.set()
        self._wake.set()
        http = self._http
        if http is not None:
            with contextlib.suppress(Exception):
                http.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, timeout))

    def after_fork(self) -> bool:
        """In a forked child: forget the parent's thread; True if it was running."""
        was_running = self._thread is not None
        self._reset()
        return was_running

    def _run(self) -> None:
        engine = self._tasks.engine()
        while True:
            if self._stop.is_set() or self._tasks.closed():
                engine.stop()
            step = engine.next()
            if isinstance(step, Stop):
                return
            try:
                self._take(engine, step)
            except Exception:  # the thread must survive anything
                log.exception("background step %s failed; carrying on", step)
                if isinstance(step, Listen):
                    engine.listened(Heard("failed"))
                elif isinstance(step, SyncNow):
                    engine.synced(False)

    def _take(self, engine: Engine, step: SyncNow | Listen | Wait) -> None:
        if isinstance(step, Wait):
            woken = self._wake.wait(max(0.0, step.seconds))
            self._wake.clear()
            engine.waited(woken and not self._stop.is_set())
        elif isinstance(step, SyncNow):
            engine.synced(self._tasks.sync())
        else:
            engine.listened(self._listen(step.seconds))

    def _listen(self, seconds: float) -> Heard:
        channel = self._tasks.channel
        assert channel is not None  # the engine listens only with a channel
        with channel.client() as http:
            self._http = http
            try:
                if self._stop.is_set():  # stop() ran before the client was published
                    return Heard("interrupted")
                return listen(
                    http,
                    channel.url,
                    known=self._tasks.local_version(),
                    deadline=time.monotonic() + seconds,
                    interrupted=self._interrupted,
                    connected=self._tasks.connected,
                )
            finally:
                self._http = None

    def _interrupted(self) -> bool:
        if self._stop.is_set() or self._wake.is_set():
            self._wake.clear()
            return True
        return False


class AsyncDriver:
    """Carries the engine's steps out in one asyncio task (``AsyncClient``'s background
    mode): syncs run in a worker thread, waits and the push channel on the event loop.
    ``stop()`` cancels the task and waits for it at most the given timeout."""

    def __init__(self, tasks: Tasks) -> None:
        self._tasks = tasks
        self._task: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def start(self) -> None:
        """Start the task on the running loop (idempotent while it runs)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, timeout: float) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=max(0.0, timeout))

    async def _run(self) -> None:
        engine = self._tasks.engine()
        while True:
            if self._tasks.closed():
                engine.stop()
            step = engine.next()
            if isinstance(step, Stop):
                return
            try:
                await self._take(engine, step)
            except Exception:  # the task must survive anything
                log.exception("background step %s failed; carrying on", step)
                if isinstance(step, Listen):
                    engine.listened(Heard("failed"))
                elif isinstance(step, SyncNow):
                    engine.synced(False)

    async def _take(self, engine: Engine, step: SyncNow | Listen | Wait) -> None:
        if isinstance(step, Wait):
            await asyncio.sleep(max(0.0, step.seconds))
            engine.waited(False)
        elif isinstance(step, SyncNow):
            engine.synced(await asyncio.to_thread(self._tasks.sync))
        else:
            engine.listened(await self._listen(step.seconds))

    async def _listen(self, seconds: float) -> Heard:
        channel = self._tasks.channel
        assert channel is not None  # the engine listens only with a channel
        async with channel.async_client() as http:
            return await alisten(
                http,
                channel.url,
                known=self._tasks.local_version(),
                deadline=time.monotonic() + seconds,
                interrupted=self._tasks.closed,
                connected=self._tasks.connected,
            )
