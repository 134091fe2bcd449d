"""A tamper-evident local audit log of every decision.

Why: an enforcing unit must be able to show, later, what it decided and on which list
version, and nobody (including its own staff) should be able to edit that record
unnoticed. Yet the log must not become a register of everyone who was checked, so it
holds no plaintext ID number.

Format. Each :class:`AuditLog` (one per client per process) appends to its own file
``<cache>/audit/audit-<start ns>-<pid>-<random>.jsonl``, so several processes (gunicorn
workers, cron jobs) never interleave writes. One JSON line per decision::

    {"seq": 7, "t": "2026-01-31T08:00:00.123456+00:00", "measure": "travel.flight",
     "key": "<identifier key, 32 hex>", "action": "block", "entries": ["E1"],
     "version": 42, "prev": "<64 hex>", "h": "<64 hex>"}

``key`` is the keyed identifier hash the list is looked up with (HMAC-SHA256 under the
list's hash key), never the ID number. ``h = SHA-256(prev || canonical line without h)``
chains every line to the one before; the first line of a file has ``prev`` = 64 zeros.
Editing, inserting or deleting a line breaks the chain, which :func:`verify_audit`
(``intercept-sdk audit verify``) reports with file and line. With a subscriber key, every
flushed batch ends with a ``checkpoint`` line whose Ed25519 signature covers the chain
head, so even someone who recomputes the hashes cannot forge the signed heads.

Guarantees:

* ``record()`` is off the I/O path: a deque append (thread-safe, no lock). A daemon thread
  writes and fsyncs the buffer at least every ``flush_interval`` (1 s), and ``flush()``,
  ``close()`` and interpreter exit flush what is left.
* A crash (``kill -9``, power loss) loses at most the unflushed tail and can leave at most
  one torn last line in that process's file. That file is never appended to again (the
  next process starts its own), so :func:`verify_audit` reports the torn tail as a
  *warning*, not a problem: a crash does not make ``audit verify`` fail forever.
* A failed write (disk full) is rolled back (the file truncated to its last complete
  line, or a new file started) and the records stay buffered for the next attempt, so a
  write error never leaves a broken chain either. If the buffer overflows meanwhile,
  the oldest records are dropped and a ``gap`` line says how many.
* After ``fork()`` the child gets its own file, buffer and thread.

Limits: the chain proves that lines were not edited, inserted or removed *inside* a file;
removing whole files, or truncating a file at a line boundary, is indistinguishable from
a log that ended there. Signed checkpoints and the quarterly summary sent to the
platform are what bind the totals.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .._exceptions import StoreCorrupted
from .._util import ensure_private_dir

__all__ = ["AuditLog", "AuditReport", "verify_audit"]

log = logging.getLogger("intercept_sdk.audit")
_ZERO = "0" * 64
_GLOB = "audit-*.jsonl"
_YIELD_EVERY = 256  # records formatted between two voluntary GIL releases in a flush
_UNSET = object()

_Item = tuple[_dt.datetime, str, bytes, str, Sequence[str], int]


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _chain(prev: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + _dumps(body)).hexdigest()


_SAFE = re.compile(r"[A-Za-z0-9._:+\-]*").fullmatch


def _safe(text: str) -> bool:
    """True when ``text`` needs no JSON escaping (so it can be written verbatim): only
    ASCII letters, digits and ``._:+-`` (one regex scan in C)."""
    return _SAFE(text) is not None


class _TimeFormat:
    """UTC ISO 8601 with microseconds, the seconds part cached (a flush formats thousands
    of times within the same second; ``datetime.isoformat`` is the costliest step)."""

    __slots__ = ("prefix", "sec")

    def __init__(self) -> None:
        self.sec = -1
        self.prefix = ""

    def __call__(self, t: _dt.datetime) -> str:
        sec = int(t.timestamp() // 1)
        if sec != self.sec:
            self.sec = sec
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self.prefix}.{t.microsecond:06d}+00:00"


class _LineFormat:
    """Formats the lines of decision records, byte-identical to ``_dumps`` of each body.

    Written by hand because this runs for every decision (in the flush thread, but under
    the GIL): string formatting is several times cheaper than ``json.dumps`` with sorted
    keys. Each part that consecutive records usually share (the action and entries, the
    measure, the version, the time: a screened batch has one of each) is formatted once
    and reused while the next record carries the very same object. Values that might
    need escaping go through ``json.dumps`` (:func:`_line`); the equivalence with
    :func:`_dumps` is what :func:`verify_audit` checks and the tests pin.
    """

    __slots__ = (
        "_action",
        "_entries",
        "_head",
        "_measure",
        "_mid",
        "_t",
        "_time",
        "_version",
        "_version_tail",
        "fmt",
    )

    def __init__(self, fmt: _TimeFormat | None = None) -> None:
        self.fmt = fmt if fmt is not None else _TimeFormat()
        self._action: str | None = None
        self._entries: Sequence[str] | None = None
        self._measure: str | None = None
        self._version: int | None = None
        self._t: _dt.datetime | None = None
        self._head = self._mid = self._version_tail = self._time = ""

    def __call__(self, prev: str, seq: int, item: _Item) -> tuple[bytes, str]:
        """The line of one record and its chain hash ``h`` (see :func:`_line`)."""
        t, measure, key, action, entries, version = item
        if action is not self._action or entries is not self._entries:
            self._action = self._entries = None
            if not (_safe(action) and all(map(_safe, entries))):
                return self._slow(prev, seq, item)
            ents = ",".join(f'"{e}"' for e in entries)
            self._head = f'{{"action":"{action}","entries":[{ents}],"key":"'
            self._action, self._entries = action, entries
        if measure is not self._measure:
            self._measure = None
            if not _safe(measure):
                return self._slow(prev, seq, item)
            self._mid = f'","measure":"{measure}","prev":"'
            self._measure = measure
        if version is not self._version:
            self._version = None
            if type(version) is not int:
                return self._slow(prev, seq, item)
            self._version_tail = f',"version":{version}'
            self._version = version
        if t is not self._t:
            self._time = self.fmt(t)
            self._t = t
        # The canonical body (keys sorted), then "h" appended as _line does.
        body = (
            f'{self._head}{key.hex()}{self._mid}{prev}","seq":{seq},"t":"{self._time}"'
            f"{self._version_tail}"
        )
        h = hashlib.sha256(f"{prev}{body}}}".encode()).hexdigest()
        return f'{body},"h":"{h}"}}\n'.encode(), h

    def many(self, prev: str, seq: int, items: Sequence[_Item]) -> tuple[bytes, str, int]:
        """The lines of ``items``, numbered from ``seq + 1`` and chained from ``prev``:
        exactly the lines of calling this formatter on each in turn (the tests compare),
        with the last hash and number. A record sharing every part with the one before
        (a screened batch) is formatted inline; any other goes through ``__call__``,
        which refreshes the shared parts. Other threads get the GIL every
        ``_YIELD_EVERY`` records (see :meth:`AuditLog.flush`)."""
        out: list[str] = []
        append = out.append
        sha = hashlib.sha256
        action: object = _UNSET  # no record matches until __call__ has run
        entries: object = _UNSET
        measure: object = _UNSET
        version: object = _UNSET
        t: object = _UNSET
        head = mid = time_ = vtail = ""
        yield_at = _YIELD_EVERY
        for n, item in enumerate(items, 1):
            seq += 1
            if (
                item[3] is action
                and item[4] is entries
                and item[1] is measure
                and item[5] is version
                and item[0] is t
            ):
                body = f'{head}{item[2].hex()}{mid}{prev}","seq":{seq},"t":"{time_}"{vtail}'
                prev = sha(f"{prev}{body}}}".encode()).hexdigest()
                append(f'{body},"h":"{prev}"}}\n')
            else:
                line, prev = self(prev, seq, item)
                append(line.decode())
                # the parts __call__ now holds (None after a record that needed escaping)
                action, entries, measure = self._action, self._entries, self._measure
                version, t = self._version, self._t
                head, mid, time_, vtail = self._head, self._mid, self._time, self._version_tail
            if n == yield_at:
                yield_at += _YIELD_EVERY
                # Let a waiting check() thread run now rather than after the interpreter's
                # 5 ms switch interval: bounds the latency a big flush adds to checks.
                time.sleep(0)
        return "".join(out).encode(), prev, seq

    def _slow(self, prev: str, seq: int, item: _Item) -> tuple[bytes, str]:
        t, measure, key, action, entries, version = item
        return _line(
            prev,
            {
                "seq": seq,
                "t": self.fmt(t),
                "measure": measure,
                "key": key.hex(),
                "action": action,
                "entries": list(entries),
                "version": version,
                "prev": prev,
            },
        )


def _record_line(prev: str, seq: int, item: _Item, fmt: _TimeFormat) -> tuple[bytes, str]:
    """The line of one decision, byte-identical to ``_dumps`` of the same body (one-off
    use of :class:`_LineFormat`, which a flush keeps for the whole batch)."""
    return _LineFormat(fmt)(prev, seq, item)


def _line(prev: str, body: dict[str, Any]) -> tuple[bytes, str]:
    """The file line for ``body`` (which holds ``prev``) and its chain hash ``h``."""
    raw = _dumps(body)
    h = hashlib.sha256(prev.encode() + raw).hexdigest()
    # "h" is appended rather than re-sorted in: verification parses the line and
    # re-serialises it without "h", so where "h" sits does not matter.
    return raw[:-1] + b',"h":"' + h.encode() + b'"}\n', h


class AuditLog:
    """Buffered, hash-chained decision log of one process (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        flush_interval: float = 1.0,
        max_buffer: int = 1_000_000,
    ) -> None:
        self.directory = ensure_private_dir(Path(directory))
        self.signing_key = signing_key
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self._closed = False
        self._init_process_state()
        _logs.add(self)

    def _init_process_state(self) -> None:
        """Fresh file, chain, buffer, locks and thread (at start and in a forked child)."""
        self._buf: collections.deque[_Item] = collections.deque()
        self._dropped = 0
        self._io_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._new_file()

    def _new_file(self) -> None:
        name = f"audit-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(3)}.jsonl"
        self.path = self.directory / name
        self._prev = _ZERO
        self._seq = 0
        self._size = 0

    def record(  # noqa: PLR0917 - positional on purpose: called once per check
        self,
        measure: str,
        key: bytes,
        action: str,
        entries: Sequence[str],
        version: int,
        t: _dt.datetime,
    ) -> None:
        """Queue one decision. Cheap (a deque append) and never blocks on I/O."""
        if self._closed:
            return
        buf = self._buf
        if len(buf) >= self.max_buffer:
            self._dropped += 1
            return
        buf.append((t, measure, key, action, entries, version))
        if self._thread is None:
            self._start()

    def record_many(  # noqa: PLR0917 - positional like record()
        self,
        measure: str,
        keys: Sequence[bytes],
        actions: Sequence[str],
        entries: Sequence[Sequence[str]],
        version: int,
        t: _dt.datetime,
    ) -> None:
        """Queue one decision per key (``keys[i]``, ``actions[i]``, ``entries[i]``), all
        of ``measure``, list ``version`` and time ``t``: a screened batch in one call.

        Exactly what ``record()`` for each in turn would queue (the same records in the
        same order, so the same lines and chain), and the same when the buffer is full:
        the records that do not fit are dropped and counted for the ``gap`` line. One
        deque ``extend`` of C iterators instead of a Python call per decision.
        """
        n = len(keys)
        if len(actions) != n or len(entries) != n:
            raise ValueError("record_many needs as many actions and entries as keys")
        if self._closed or n == 0:
            return
        buf = self._buf
        room = self.max_buffer - len(buf)
        if room < n:
            room = max(room, 0)
            self._dropped += n - room
            n = room
            if n == 0:
                return
        buf.extend(
            zip(
                repeat(t, n),
                repeat(measure, n),
                keys,
                actions,
                entries,
                repeat(version, n),
                strict=False,
            )
        )
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(target=self._run, name="intercept-sdk-audit", daemon=True)
            thread.start()
            self._thread = thread

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except OSError as exc:  # disk full etc.: records stay buffered; say so loudly
                log.error("audit log flush failed (records kept in memory): %s", exc)

    def pending(self) -> int:
        """Records buffered and not yet written."""
        return len(self._buf)

    def flush(self) -> None:
        """Write the buffered records (and a signed checkpoint) to disk and fsync them.

        On a write error the file is restored to its last complete line (or a new file
        is started), the records go back to the buffer, and the error is raised.
        """
        with self._io_lock:
            buf = self._buf
            n = len(buf)
            dropped = self._dropped
            if n == 0 and dropped == 0:
                return
            items = [buf.popleft() for _ in range(n)]
            self._dropped = 0
            seq, prev = self._seq, self._prev
            lines: list[bytes] = []
            if dropped:
                seq += 1
                line, prev = _line(
                    prev,
                    {
                        "seq": seq,
                        "t": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                        "gap": dropped,
                        "prev": prev,
                    },
                )
                lines.append(line)
            chunk, prev, seq = _LineFormat().many(prev, seq, items)
            lines.append(chunk)
            if self.signing_key is not None:
                seq += 1
                body = {
                    "seq": seq,
                    "checkpoint": prev,
                    "sig": self.signing_key.sign(prev.encode()).hex(),
                    "prev": prev,
                }
                line, prev = _line(prev, body)
                lines.append(line)
            data = b"".join(lines)
            try:
                self._write(data)
            except OSError:
                buf.extendleft(reversed(items))
                self._dropped += dropped
                raise
            self._seq, self._prev = seq, prev
            self._size += len(data)

    def _write(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            try:
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            except OSError:
                # Undo a partial write so the chain never continues after a torn line.
                try:
                    os.ftruncate(fd, self._size)
                    os.fsync(fd)
                except OSError:
                    self._new_file()  # cannot repair: continue in a fresh file
                raise
        finally:
            os.close(fd)

    def close(self, timeout: float = 2.0) -> None:
        """Flush and stop the thread; idempotent and bounded by ``timeout``."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        try:
            self.flush()
        except OSError as exc:
            log.error("audit log: %d records could not be written: %s", self.pending(), exc)
        _logs.discard(self)


_logs: weakref.WeakSet[AuditLog] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for audit in list(_logs):
        # The parent flushes its own buffer; the child starts clean in its own file.
        audit._init_process_state()


def _flush_at_exit() -> None:
    for audit in list(_logs):
        with contextlib.suppress(Exception):
            audit.flush()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)


@dataclass(frozen=True)
class AuditReport:
    """Result of :func:`verify_audit`.

    ``problems`` are evidence of tampering or corruption (an edited, inserted or removed
    line; a bad signature; garbage followed by more records): ``ok`` is false.
    ``warnings`` are what a crash or a full disk leaves (a torn last line of a file,
    records dropped on buffer overflow): reported, but ``ok`` stays true.
    """

    files: int
    records: int
    checkpoints: int
    problems: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_audit(
    directory: Path, *, public_key: Ed25519PublicKey | None = None, raise_on_error: bool = False
) -> AuditReport:
    """Re-check every file's chain (and checkpoint signatures when ``public_key`` is given).

    Each file is checked from its first line until its end or its first problem (what
    follows a break in the chain proves nothing). Raises :class:`StoreCorrupted` on a
    problem when ``raise_on_error`` is true.
    """
    tally = _Tally()
    files = 0
    for path in sorted(Path(directory).glob(_GLOB)):
        files += 1
        _verify_file(path, public_key, tally)
    report = AuditReport(
        files, tally.records, tally.checkpoints, tuple(tally.problems), tuple(tally.warnings)
    )
    if raise_on_error and tally.problems:
        raise StoreCorrupted("audit log: " + "; ".join(tally.problems))
    return report


@dataclass
class _Tally:
    """What :func:`verify_audit` found so far, over all files."""

    records: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _verify_file(path: Path, public_key: Ed25519PublicKey | None, tally: _Tally) -> None:
    """Walk one file's chain, line by line, until its end or its first problem."""
    prev = _ZERO
    seq = 1
    with path.open("rb") as f:
        lines = iter(f)
        raw = next(lines, None)
        n = 0
        while raw is not None:
            following = next(lines, None)
            n += 1
            h = _verify_line(
                raw, following is None, f"{path.name}:{n}", prev, seq, public_key, tally
            )
            if h is None:
                return
            prev, seq, raw = h, seq + 1, following


def _verify_line(  # noqa: PLR0917 - one call per line, the chain's state positional
    raw: bytes,
    last: bool,
    where: str,
    prev: str,
    seq: int,
    public_key: Ed25519PublicKey | None,
    tally: _Tally,
) -> str | None:
    """Check one line against the chain so far (``prev``, expected number ``seq``).

    Returns its hash ``h`` when the chain goes on; None when it ends here, with the
    reason in ``tally`` (a torn or unreadable *last* line is a warning: what a crash
    leaves; anything else is a problem).
    """
    if not raw.endswith(b"\n"):  # only the very last line can lack one
        tally.warnings.append(f"{where}: torn last line (the writer crashed mid-write)")
        return None
    try:
        obj = json.loads(raw)
        h = obj.pop("h")
    except (ValueError, KeyError, AttributeError, TypeError, RecursionError):
        if last:
            # What a power loss can leave (a zero-filled block); nothing follows it, so
            # it hides nothing.
            tally.warnings.append(f"{where}: unreadable last line (crash or power loss)")
        else:
            tally.problems.append(f"{where}: not an audit record")
        return None
    if obj.get("prev") != prev or _chain(prev, obj) != h:
        tally.problems.append(f"{where}: hash chain broken (line edited, inserted or removed)")
        return None
    if obj.get("seq") != seq:
        tally.problems.append(f"{where}: sequence number {obj.get('seq')!r}, expected {seq}")
        return None
    if "checkpoint" in obj:
        tally.checkpoints += 1
        if public_key is not None and not _signed_by(public_key, obj, prev):
            tally.problems.append(f"{where}: checkpoint signature invalid")
            return None
    elif "gap" in obj:
        tally.warnings.append(f"{where}: {obj['gap']} records dropped (buffer overflow)")
    else:
        tally.records += 1
    return str(h)


def _signed_by(public_key: Ed25519PublicKey, checkpoint: dict[str, Any], prev: str) -> bool:
    """True when the checkpoint's signature covers the chain head ``prev``."""
    try:
        public_key.verify(bytes.fromhex(checkpoint["sig"]), prev.encode())
    except (InvalidSignature, ValueError, KeyError, TypeError):
        return False
    return True
