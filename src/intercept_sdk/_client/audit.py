"""A tamper-evident local audit log of every decision that identifies no one when copied.

Why: an enforcing unit must be able to show, later, what it decided and on which list
version, and nobody (including its own staff) should be able to edit, shorten or delete
that record unnoticed. Yet the log must not become a register of everyone who was
checked: it holds no ID number, and no value from which one can be recovered without a
secret that stays with the cache.

Keys. ``<cache>/audit.key`` holds a random 32-byte secret, created once per cache (mode
0600, atomically and race-free: the first process to link it in wins, every other one
reads it). It lies *beside* the ``audit/`` directory, so copying ``audit/`` does not copy
it. From it:

* the **pseudonym** of a checked identifier is ``HMAC-SHA256(secret, identifier key)``
  truncated to 16 bytes (32 hex), where the identifier key is the list's keyed hash the
  lookup used. The same person checked twice under one list key gets the same pseudonym
  (an auditor can count repeat checks), but the list's hash key and a list of candidate
  ID numbers give nothing back without the secret;
* the **chain key** is ``HMAC-SHA256(secret, "intercept-sdk audit chain v1")`` (an input
  of another length than any identifier key, so the two uses never meet).

Format. Each :class:`AuditLog` (one per client per process) appends to its own file
``audit/audit-<start ns>-<pid>-<random>.jsonl``, so several processes (gunicorn workers,
cron jobs) never interleave writes. One JSON line per decision::

    {"seq": 7, "t": "2026-01-31T08:00:00.123456+00:00", "measure": "travel.flight",
     "key": "<pseudonym, 32 hex>", "action": "block", "entries": ["E1"],
     "version": 42, "prev": "<64 hex>", "h": "<64 hex>"}

``h = HMAC-SHA256(chain key, prev || canonical line without h)`` chains every line to the
one before; the first line of a file has ``prev`` = 64 zeros. Without the secret nobody
can recompute the chain after editing, inserting or removing a line. With a subscriber
key (the unit's Ed25519 report key), every flushed batch ends with a ``checkpoint`` line
whose signature covers the chain head; a ``gap`` line says how many records a full buffer
dropped.

``audit/INDEX`` is an append-only journal of the files, chained the same way (one chain
for the whole directory, appended under a lock by every process)::

    {"seq": 1, "t": "...", "op": "open", "file": "audit-...jsonl", "signed": true, ...}
    {"seq": 2, "t": "...", "op": "head", "file": "audit-...jsonl", "at": 41, "head": "<h>", ...}
    {"seq": 3, "t": "...", "op": "close", "file": "audit-...jsonl", "at": 83, "head": "<h>", ...}

``open`` is written before the file's first byte (with whether its batches are signed),
``head`` after every flushed batch (the number and ``h`` of the file's last line), and
``close`` when the log is closed or the process exits: the file is never written again.
INDEX grows by one short line (~230 bytes) per flushed batch, less than the batch itself.

Guarantees:

* ``record()`` is off the I/O path: a deque append (thread-safe, no lock). A daemon thread
  computes the pseudonyms and the chain, writes and fsyncs the buffer, and then records
  the new head in INDEX, at least every ``flush_interval`` (1 s); ``flush()``,
  ``close()`` and interpreter exit flush what is left.
* A crash (``kill -9``, power loss) loses at most the unflushed tail and can leave at most
  one torn last line in that process's file (and in INDEX). That file is never appended
  to again (the next process starts its own), so :func:`verify_audit` reports the torn
  tail as a *warning*, not a problem: a crash does not make ``audit verify`` fail forever.
* A failed write (disk full) is rolled back (the file truncated to its last complete
  line, or a new file started) and the records stay buffered for the next attempt, so a
  write error never leaves a broken chain either. If the buffer overflows meanwhile,
  the oldest records are dropped and a ``gap`` line says how many.
* After ``fork()`` the child gets its own file, buffer and thread.

What :func:`verify_audit` (``intercept-sdk audit verify``) needs and checks. It needs the
secret (``audit.key``) and, for a signed log, the subscriber's public key: a checkpoint is
always verified, never skipped, so a checkpoint and no key is a problem. *Problems*
(evidence of tampering; ``ok`` is false, the command exits non-zero):

* a line edited, inserted, removed or reordered; a garbage line followed by more lines;
  a chain recomputed without the secret (``hash chain broken``);
* a checkpoint whose signature does not verify, or that no public key was given for; a
  file INDEX lists as signed whose recorded heads are not checkpoints (checkpoints
  dropped); with a public key, a file written without a subscriber key;
* a file INDEX lists with a recorded head but that is missing (deleted); a file whose
  last line is behind the head INDEX recorded for it (truncated, even at a line
  boundary), or whose line at a recorded head differs from it; a file present but not
  in INDEX (added); anything written to a file after its ``close``; INDEX itself missing
  while log files exist, or broken like a log file; ``audit.key`` missing.

*Warnings* (what a crash, a power loss or a full disk leaves; ``ok`` stays true): the
torn or unreadable last line of a file (or of INDEX) that was not closed; in a signed file
that was not closed, records after its last checkpoint (a batch cut short: the writer
died mid-write); a file INDEX lists as opened but that was never written; a ``gap``.
Records after the last head INDEX recorded for a file that was not closed are accepted
as they are (chained, and signed where the file is signed): a writer still running, or
one that died between writing a batch and recording its head, leaves exactly that.

Limits. Someone holding both the secret and the subscriber key can rewrite everything
consistently. Someone holding only the secret can edit unsigned files and INDEX at will,
but cannot forge a checkpoint: with the public key, every signed batch is bound. Someone
who rolls INDEX and the files back together to an earlier consistent copy (or cuts INDEX
and the files at matching heads, or turns a ``close`` into a crash by cutting the INDEX
tail) is caught only by what was sent to the platform (the quarterly summary's counts).
The pseudonyms protect checked persons only while the secret stays with the cache:
whoever copies ``audit.key`` along with ``audit/`` can test candidate ID numbers again.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .._exceptions import ConfigurationError, StoreCorrupted
from .._protocol.reports import REPORT_KEY_FILE, REPORT_PUB_FILE
from .._protocol.signing import load_public_key
from .._util import atomic_write, ensure_private_dir, fsync_dir
from .keys import load_subscriber_key

__all__ = [
    "AUDIT_KEY_FILE",
    "INDEX_FILE",
    "AuditLog",
    "AuditReport",
    "load_or_create_audit_key",
    "load_verifying_key",
    "read_audit_key",
    "verify_audit",
]

log = logging.getLogger("intercept_sdk.audit")

#: The per-cache secret, beside (never inside) the audit directory.
AUDIT_KEY_FILE = "audit.key"
#: The journal of the audit directory's files and their heads.
INDEX_FILE = "INDEX"

_ZERO = "0" * 64
_GLOB = "audit-*.jsonl"
_NAME = re.compile(r"audit-[0-9]{20}-[0-9]+-[0-9a-f]{6}\.jsonl")
_SECRET_TEXT = re.compile(rb"([0-9a-f]{64})\n?")
_CHAIN_LABEL = b"intercept-sdk audit chain v1"
_INDEX_TAIL = 64 * 1024  # INDEX lines are short: the last complete one lies in this window
_LOCK_TIMEOUT = 10.0  # seconds an INDEX append waits for another process's
# Records formatted between two voluntary GIL releases in a flush: ~0.4 ms of formatting
# (2.5 µs a record with the two HMACs; it was 256 records at 1.5 µs before them).
_YIELD_EVERY = 160
_UNSET = object()

_Item = tuple[_dt.datetime, str, bytes, str, Sequence[str], int]


# -- the per-cache secret and what is derived from it ---------------------------------------


def read_audit_key(path: Path) -> bytes:
    """The 32-byte secret stored at ``path`` (64 lowercase hex and a newline).

    Raises :class:`FileNotFoundError` when absent and :class:`StoreCorrupted` when the
    file holds anything else: a damaged secret must never be silently replaced, since
    every line written under it would become unverifiable.
    """
    match = _SECRET_TEXT.fullmatch(Path(path).read_bytes())
    if match is None:
        raise StoreCorrupted(f"{path} is not an audit key (64 hex digits expected)")
    return bytes.fromhex(match.group(1).decode())


def load_or_create_audit_key(path: Path) -> bytes:
    """The cache's audit secret, created at ``path`` (mode 0600) when there is none.

    Race-free: the new secret is written completely to a temporary file first
    (:func:`atomic_write`), then hard-linked to ``path``, which fails when another
    process got there first; every process ends up reading the same secret.
    """
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        return read_audit_key(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.new")
    atomic_write(tmp, secrets.token_bytes(32).hex().encode() + b"\n", mode=0o600)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process created it between our read and our link
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)
    return read_audit_key(path)


class _Mac:
    """HMAC-SHA256 under one key with the padded key blocks hashed once.

    ``hmac.digest`` re-derives them (and, on OpenSSL 3, looks the digest up) on every
    call: about 1.9 µs a line here against 0.9 µs with these copies. Bit for bit the
    same result (the tests compare with :func:`hmac.digest`).
    """

    __slots__ = ("inner", "outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        block = key.ljust(64, b"\0")
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def digest(self, data: bytes) -> bytes:
        inner = self.inner.copy()
        inner.update(data)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def hexdigest(self, data: bytes) -> str:
        inner = self.inner.copy()
        inner.update(data)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


class _Keys:
    """The two keys of one cache's audit log (see the module docstring)."""

    __slots__ = ("chain", "pseudonym")

    def __init__(self, secret: bytes) -> None:
        self.pseudonym = _Mac(secret)
        self.chain = _Mac(hmac.digest(secret, _CHAIN_LABEL, "sha256"))

    def pseudonymise(self, key: bytes) -> str:
        """The hex pseudonym written for identifier key ``key``."""
        return self.pseudonym.digest(key)[:16].hex()


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _chain(mac: _Mac, prev: str, body: dict[str, Any]) -> str:
    return mac.hexdigest(prev.encode() + _dumps(body))


def _line(mac: _Mac, prev: str, body: dict[str, Any]) -> tuple[bytes, str]:
    """The file line for ``body`` (which holds ``prev``) and its chain hash ``h``."""
    raw = _dumps(body)
    h = mac.hexdigest(prev.encode() + raw)
    # "h" is appended rather than re-sorted in: verification parses the line and
    # re-serialises it without "h", so where "h" sits does not matter.
    return raw[:-1] + b',"h":"' + h.encode() + b'"}\n', h


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
    :func:`_dumps` is what :func:`verify_audit` checks and the tests pin. The pseudonym
    of each identifier key and the keyed chain are computed here too, so that
    ``record()`` stays a deque append.
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
        "keys",
    )

    def __init__(self, keys: _Keys, fmt: _TimeFormat | None = None) -> None:
        self.keys = keys
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
            f'{self._head}{self.keys.pseudonymise(key)}{self._mid}{prev}","seq":{seq},'
            f'"t":"{self._time}"{self._version_tail}'
        )
        h = self.keys.chain.hexdigest(f"{prev}{body}}}".encode())
        return f'{body},"h":"{h}"}}\n'.encode(), h

    def many(self, prev: str, seq: int, items: Sequence[_Item]) -> tuple[bytes, str, int]:
        """The lines of ``items``, numbered from ``seq + 1`` and chained from ``prev``:
        exactly the lines of calling this formatter on each in turn (the tests compare),
        with the last hash and number. A record sharing every part with the one before
        (a screened batch) is formatted inline, its two HMACs spelled out on the
        pre-hashed key blocks; any other goes through ``__call__``, which refreshes the
        shared parts. Other threads get the GIL every ``_YIELD_EVERY`` records (see
        :meth:`AuditLog.flush`)."""
        out: list[str] = []
        append = out.append
        p_inner, p_outer = self.keys.pseudonym.inner.copy, self.keys.pseudonym.outer.copy
        c_inner, c_outer = self.keys.chain.inner.copy, self.keys.chain.outer.copy
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
                inner = p_inner()
                inner.update(item[2])
                outer = p_outer()
                outer.update(inner.digest())
                body = (
                    f'{head}{outer.hexdigest()[:32]}{mid}{prev}","seq":{seq},"t":"{time_}"{vtail}'
                )
                inner = c_inner()
                inner.update(f"{prev}{body}}}".encode())
                outer = c_outer()
                outer.update(inner.digest())
                prev = outer.hexdigest()
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
            self.keys.chain,
            prev,
            {
                "seq": seq,
                "t": self.fmt(t),
                "measure": measure,
                "key": self.keys.pseudonymise(key),
                "action": action,
                "entries": list(entries),
                "version": version,
                "prev": prev,
            },
        )


def _record_line(
    keys: _Keys, prev: str, seq: int, item: _Item, fmt: _TimeFormat
) -> tuple[bytes, str]:
    """The line of one decision, byte-identical to ``_dumps`` of the same body (one-off
    use of :class:`_LineFormat`, which a flush keeps for the whole batch)."""
    return _LineFormat(keys, fmt)(prev, seq, item)


# -- INDEX: the journal of files and heads --------------------------------------------------

# Serialises INDEX appends between the threads of one process: fcntl.lockf locks belong to
# the process (a second thread would be granted the same lock at once), but unlike flock
# they are not inherited by a forked child, which could otherwise hold them forever.
# Replaced in a forked child (a parent thread may hold it at the fork).
_index_lock = threading.Lock()


def _utc_text() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def _seq_and_h(raw: bytes) -> tuple[int, str] | None:
    try:
        obj = json.loads(raw)
        seq, h = obj["seq"], obj["h"]
    except (ValueError, KeyError, AttributeError, TypeError, RecursionError):
        return None
    return (seq, h) if type(seq) is int and isinstance(h, str) else None


def _index_tail(fd: int) -> tuple[int, int, str]:
    """``(end, seq, h)`` of the last complete, readable INDEX line.

    A torn last line, and one unreadable last line (what a crash or a power loss
    leaves), are cut off so that the next line continues the chain from the last good
    one; anything more damaged raises :class:`OSError` (the records stay buffered and
    the error is logged, like a full disk).
    """
    size = os.fstat(fd).st_size
    start = max(0, size - _INDEX_TAIL)
    window = os.pread(fd, size - start, start)
    lines = window[: window.rfind(b"\n") + 1].splitlines(keepends=True)
    if not lines and start == 0:
        return 0, 0, _ZERO  # empty, or only a torn first line
    last = lines.pop() if lines else b""
    parsed = _seq_and_h(last)
    if parsed is None and lines:  # one unreadable last line: look at the one before
        last = lines.pop()
        parsed = _seq_and_h(last)
    elif parsed is None and start == 0:
        return 0, 0, _ZERO  # the only line is unreadable
    if parsed is None:
        raise OSError(f"audit INDEX damaged near byte {start + sum(map(len, lines))}")
    return start + sum(map(len, lines)) + len(last), *parsed


class _Index:
    """Appends keyed, chained lines to ``audit/INDEX`` (see the module docstring)."""

    def __init__(self, path: Path, mac: _Mac) -> None:
        self.path = path
        self.mac = mac

    def append(self, entry: dict[str, Any]) -> None:
        """Append one line (``entry`` plus ``t``, ``seq``, ``prev`` and ``h``), fsynced.

        Serialised across threads and processes; on a write error the INDEX is cut back
        to where it was and the error raised.
        """
        with _index_lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                _lock(fd)
                end, seq, prev = _index_tail(fd)
                body = {"seq": seq + 1, "t": _utc_text(), **entry, "prev": prev}
                line, _ = _line(self.mac, prev, body)
                if end < os.fstat(fd).st_size:
                    log.warning("audit INDEX: cut a torn last line left by a crash")
                _write_at(fd, end, line)
            finally:
                os.close(fd)  # also releases the lock
        if seq == 0:
            fsync_dir(self.path.parent)


def _lock(fd: int) -> None:
    """Take the INDEX lock (released when ``fd`` is closed), waiting at most
    ``_LOCK_TIMEOUT``: a holder only reads the tail and appends one line."""
    deadline = time.monotonic() + _LOCK_TIMEOUT
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN) or time.monotonic() > deadline:
                raise
        time.sleep(0.002)


def _write_at(fd: int, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` as the new end of the file, fsynced; on error the
    file is cut back to ``offset`` (best effort) and the error raised."""
    try:
        os.ftruncate(fd, offset)
        pos = offset
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, pos)
            pos += written
            view = view[written:]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, offset)
        raise


# -- the writer -----------------------------------------------------------------------------


class AuditLog:
    """Buffered, keyed, hash-chained decision log of one process (see the module
    docstring). ``key_file`` defaults to ``audit.key`` beside ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        flush_interval: float = 1.0,
        max_buffer: int = 1_000_000,
        key_file: Path | None = None,
    ) -> None:
        self.directory = ensure_private_dir(Path(directory))
        self.key_file = (
            Path(key_file) if key_file is not None else self.directory.parent / AUDIT_KEY_FILE
        )
        self._keys = _Keys(load_or_create_audit_key(self.key_file))
        self._index = _Index(self.directory / INDEX_FILE, self._keys.chain)
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
        self._listed = False  # INDEX has its "open" line
        self._sealed = False  # INDEX has its "close" line: the next write starts a new file

    def record(  # noqa: PLR0917 - positional on purpose: called once per check
        self,
        measure: str,
        key: bytes,
        action: str,
        entries: Sequence[str],
        version: int,
        t: _dt.datetime,
    ) -> None:
        """Queue one decision. Cheap (a deque append) and never blocks on I/O: the
        pseudonym of ``key`` is computed by the writer thread."""
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
        """Write the buffered records (and a signed checkpoint) to disk, fsync them, and
        record the file's new head in INDEX.

        On a write error the file is restored to its last complete line (or a new file
        is started), the records go back to the buffer, and the error is raised. A file
        is listed in INDEX before its first byte is written; a failure to record a head
        afterwards is only logged (the records are on disk, and the next flush records a
        later head).
        """
        with self._io_lock:
            buf = self._buf
            n = len(buf)
            dropped = self._dropped
            if n == 0 and dropped == 0:
                return
            items = [buf.popleft() for _ in range(n)]
            self._dropped = 0
            if self._sealed:
                self._new_file()
            data, seq, prev = self._format(items, dropped)
            try:
                self._list_file()
                self._write(data)
            except OSError:
                buf.extendleft(reversed(items))
                self._dropped += dropped
                raise
            self._seq, self._prev = seq, prev
            self._size += len(data)
            self._record_head("head")

    def _format(self, items: list[_Item], dropped: int) -> tuple[bytes, int, str]:
        """The lines of one batch: a ``gap`` line when records were dropped, the
        records, and a signed checkpoint when there is a signing key."""
        seq, prev = self._seq, self._prev
        chain = self._keys.chain
        lines: list[bytes] = []
        if dropped:
            seq += 1
            line, prev = _line(
                chain, prev, {"seq": seq, "t": _utc_text(), "gap": dropped, "prev": prev}
            )
            lines.append(line)
        chunk, prev, seq = _LineFormat(self._keys).many(prev, seq, items)
        lines.append(chunk)
        if self.signing_key is not None:
            seq += 1
            sig = self.signing_key.sign(prev.encode()).hex()
            body = {"seq": seq, "checkpoint": prev, "sig": sig, "prev": prev}
            line, prev = _line(chain, prev, body)
            lines.append(line)
        return b"".join(lines), seq, prev

    def _list_file(self) -> None:
        """Record the current file in INDEX before its first byte is written."""
        if self._listed:
            return
        signed = self.signing_key is not None
        self._index.append({"op": "open", "file": self.path.name, "signed": signed})
        self._listed = True

    def _record_head(self, op: str) -> None:
        try:
            self._index.append(
                {"op": op, "file": self.path.name, "at": self._seq, "head": self._prev}
            )
        except OSError as exc:
            log.error("audit INDEX: cannot record the head of %s: %s", self.path.name, exc)

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
        if self._size == 0:
            fsync_dir(self.directory)  # INDEX lists it: its name must survive a power loss

    def _seal(self) -> None:
        """Flush, then record the file as closed in INDEX: it is never written again (a
        later record goes to a new file). Raises :class:`OSError` from the flush."""
        self.flush()
        with self._io_lock:
            if self._listed and self._seq and not self._sealed:
                self._record_head("close")
                self._sealed = True

    def close(self, timeout: float = 2.0) -> None:
        """Flush, close the file in INDEX and stop the thread; idempotent and bounded by
        ``timeout``."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        try:
            self._seal()
        except OSError as exc:
            log.error("audit log: %d records could not be written: %s", self.pending(), exc)
        _logs.discard(self)


_logs: weakref.WeakSet[AuditLog] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _index_lock  # a parent thread may have held it at the fork
    _index_lock = threading.Lock()
    for audit in list(_logs):
        # The parent flushes its own buffer; the child starts clean in its own file.
        audit._init_process_state()


def _seal_at_exit() -> None:
    for audit in list(_logs):
        with contextlib.suppress(Exception):
            audit._seal()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_seal_at_exit)


# -- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditReport:
    """Result of :func:`verify_audit`.

    ``problems`` are evidence of tampering or corruption (see the module docstring for
    the full list): ``ok`` is false. ``warnings`` are what a crash, a power loss or a
    full disk leaves (a torn last line of a file that was not closed, records dropped on
    buffer overflow): reported, but ``ok`` stays true.
    """

    files: int
    records: int
    checkpoints: int
    problems: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def load_verifying_key(source: str | os.PathLike[str]) -> Ed25519PublicKey:
    """The subscriber's report public key, from the subscriber key directory (derived
    from ``report.ed25519.pem``, else read from ``report.ed25519.pub.pem``), a private
    key file, or a public key PEM file. Raises :class:`ConfigurationError`."""
    path = Path(source)
    if path.is_dir():
        if (path / REPORT_KEY_FILE).is_file():
            return load_subscriber_key(path).report_public
        if (path / REPORT_PUB_FILE).is_file():
            return load_public_key(path / REPORT_PUB_FILE)
        raise ConfigurationError(f"{path} holds no {REPORT_KEY_FILE} or {REPORT_PUB_FILE}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the verifying key {path}: {exc}") from None
    if b"PRIVATE KEY" in data:
        return load_subscriber_key(path).report_public
    return load_public_key(data)


class _Chain:
    """The verified lines of one chained file (a log file or INDEX), in order.

    Iterating yields ``(where, line)`` for each line whose chain hash and number are
    right, and stops at the first that is not: ``problem`` then says why, or ``tail``
    when it is the torn or unreadable last line a crash leaves (the caller decides
    whether that is a warning). ``seq`` and ``h`` are those of the last good line.
    """

    def __init__(self, path: Path, mac: _Mac) -> None:
        self.path = path
        self.mac = mac
        self.seq = 0
        self.h = _ZERO
        self.problem: str | None = None
        self.tail: str | None = None

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            f = self.path.open("rb")
        except OSError as exc:
            self.problem = f"{self.path.name}: cannot be read ({exc.strerror})"
            return
        with f:
            lines = iter(f)
            raw = next(lines, None)
            n = 0
            while raw is not None:
                following = next(lines, None)
                n += 1
                where = f"{self.path.name}:{n}"
                obj = self._check(where, raw, last=following is None)
                if obj is None:
                    return
                yield where, obj
                raw = following

    def _check(self, where: str, raw: bytes, *, last: bool) -> dict[str, Any] | None:
        if not raw.endswith(b"\n"):  # only the very last line can lack one
            self.tail = f"{where}: torn last line (the writer crashed mid-write)"
            return None
        try:
            obj = json.loads(raw)
            h = obj.pop("h")
        except (ValueError, KeyError, AttributeError, TypeError, RecursionError):
            obj = h = None
        if not isinstance(obj, dict) or not isinstance(h, str):
            if last:  # what a power loss can leave (a zero-filled block): it hides nothing
                self.tail = f"{where}: unreadable last line (crash or power loss)"
            else:
                self.problem = f"{where}: not an audit record"
            return None
        if obj.get("prev") != self.h or not hmac.compare_digest(_chain(self.mac, self.h, obj), h):
            self.problem = f"{where}: hash chain broken (line edited, inserted or removed)"
            return None
        if obj.get("seq") != self.seq + 1:
            self.problem = f"{where}: sequence number {obj.get('seq')!r}, expected {self.seq + 1}"
            return None
        self.seq, self.h = self.seq + 1, h
        return obj


@dataclass
class _Listed:
    """What INDEX says about one file."""

    signed: bool
    heads: dict[int, str] = field(default_factory=dict)  # line number -> h
    closed: int | None = None  # the line number the file was closed at

    @property
    def end(self) -> int:
        """The last line INDEX recorded (0: opened, never written)."""
        return max(self.heads, default=0)


def _index_entry(listed: dict[str, _Listed], obj: dict[str, Any]) -> str | None:
    """Apply one INDEX line to ``listed``; a description of what is wrong with it, if
    anything."""
    op, name = obj.get("op"), obj.get("file")
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        return "INDEX line names no audit file"
    entry = listed.get(name)
    if op == "open":
        signed = obj.get("signed")
        if entry is not None or type(signed) is not bool:
            return f"INDEX opens {name} twice or malformed"
        listed[name] = _Listed(signed)
        return None
    at, head = obj.get("at"), obj.get("head")
    if op not in ("head", "close") or type(at) is not int or not isinstance(head, str):
        return "malformed INDEX line"
    if entry is None or entry.closed is not None:
        return f"INDEX records a head of {name} before opening it or after closing it"
    entry.heads[at] = head
    if op == "close":
        entry.closed = at
    return None


class _Verifier:
    """One run of :func:`verify_audit` (see the module docstring for what is checked)."""

    def __init__(self, directory: Path, mac: _Mac, public_key: Ed25519PublicKey | None) -> None:
        self.directory = directory
        self.mac = mac
        self.public_key = public_key
        self.records = self.checkpoints = 0
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def run(self, paths: list[Path]) -> None:
        listed = self._read_index(bool(paths))
        for path in paths:
            entry = listed.pop(path.name, None)
            if entry is None:
                self.problems.append(f"{path.name}: not listed in INDEX (a file added)")
            else:
                self._check_file(path, entry)
        for name, entry in sorted(listed.items()):
            if entry.end:
                self.problems.append(
                    f"{name}: listed in INDEX up to line {entry.end} but missing (deleted)"
                )
            else:
                self.warnings.append(f"{name}: listed in INDEX but never written")

    def _read_index(self, needed: bool) -> dict[str, _Listed]:
        listed: dict[str, _Listed] = {}
        path = self.directory / INDEX_FILE
        if not path.exists():
            if needed:
                self.problems.append(f"{INDEX_FILE}: missing (the journal of the files)")
            return listed
        chain = _Chain(path, self.mac)
        for where, obj in chain:
            wrong = _index_entry(listed, obj)
            if wrong is not None:
                self.problems.append(f"{where}: {wrong}")
                break
        if chain.problem is not None:
            self.problems.append(chain.problem)
        elif chain.tail is not None:
            self.warnings.append(chain.tail)
        return listed

    def _check_file(self, path: Path, entry: _Listed) -> None:
        if self.public_key is not None and not entry.signed:
            self.problems.append(
                f"{path.name}: written without a subscriber key (no signed checkpoints)"
            )
        chain = _Chain(path, self.mac)
        last_checkpoint = 0
        for where, obj in chain:
            wrong = self._line(obj, chain, entry)
            if wrong is not None:
                self.problems.append(f"{where}: {wrong}")
                return
            if "checkpoint" in obj:
                last_checkpoint = chain.seq
        if chain.problem is not None:
            self.problems.append(chain.problem)
            return
        self._check_end(path.name, chain, entry, last_checkpoint)

    def _line(self, obj: dict[str, Any], chain: _Chain, entry: _Listed) -> str | None:
        """What is wrong with one chained line of a log file, if anything (and count it)."""
        recorded = entry.heads.get(chain.seq)
        if recorded is not None and recorded != chain.h:
            return "differs from the head INDEX recorded for this line"
        if "checkpoint" in obj:
            self.checkpoints += 1
            return self._checkpoint(obj)
        if recorded is not None and entry.signed:
            return "INDEX records a head here, but it is not a signed checkpoint (dropped)"
        if "gap" in obj:
            self.warnings.append(
                f"{chain.path.name}:{chain.seq}: {obj['gap']} records dropped (buffer overflow)"
            )
        else:
            self.records += 1
        return None

    def _checkpoint(self, obj: dict[str, Any]) -> str | None:
        if self.public_key is None:
            return "signed checkpoint not verified: no public key given"
        try:
            sig = bytes.fromhex(obj["sig"])
            if obj["checkpoint"] != obj["prev"]:
                raise ValueError
            self.public_key.verify(sig, obj["prev"].encode())
        except (InvalidSignature, ValueError, KeyError, TypeError, AttributeError):
            return "checkpoint signature invalid"
        return None

    def _check_end(self, name: str, chain: _Chain, entry: _Listed, last_checkpoint: int) -> None:
        """How the file ends against what INDEX recorded: truncation and writes after
        close are problems; a crash's tail is a warning."""
        if chain.seq < entry.end:
            self.problems.append(
                f"{name}: ends at line {chain.seq}, INDEX recorded line {entry.end} (truncated)"
            )
        elif entry.closed is not None:
            if chain.seq > entry.closed or chain.tail is not None:
                self.problems.append(f"{name}: written after it was closed at line {entry.closed}")
        else:
            if chain.tail is not None:
                self.warnings.append(chain.tail)
            if entry.signed and chain.seq > last_checkpoint:
                self.warnings.append(
                    f"{name}: lines {last_checkpoint + 1}-{chain.seq} after the last "
                    "checkpoint are not signed (the writer stopped mid-batch)"
                )


def verify_audit(
    directory: Path,
    *,
    public_key: Ed25519PublicKey | str | os.PathLike[str] | None = None,
    audit_key: bytes | Path | None = None,
    raise_on_error: bool = False,
) -> AuditReport:
    """Re-check every file's keyed chain, every checkpoint signature and INDEX.

    ``public_key``: the subscriber's report public key (or a path
    :func:`load_verifying_key` accepts); without it a checkpoint is a problem, never
    skipped, and with it a file written without a subscriber key is one. ``audit_key``:
    the per-cache secret, or the file holding it (default ``audit.key`` beside
    ``directory``); a missing secret is a problem. Raises :class:`StoreCorrupted` on a
    problem when ``raise_on_error`` is true; :class:`ConfigurationError` for an
    unreadable ``public_key``.
    """
    directory = Path(directory)
    if public_key is not None and not isinstance(public_key, Ed25519PublicKey):
        public_key = load_verifying_key(public_key)
    paths = sorted(directory.glob(_GLOB))
    secret, missing = _secret(directory, audit_key)
    if secret is None:
        report = AuditReport(len(paths), 0, 0, (missing,))
    else:
        v = _Verifier(directory, _Keys(secret).chain, public_key)
        v.run(paths)
        report = AuditReport(
            len(paths), v.records, v.checkpoints, tuple(v.problems), tuple(v.warnings)
        )
    if raise_on_error and report.problems:
        raise StoreCorrupted("audit log: " + "; ".join(report.problems))
    return report


def _secret(directory: Path, audit_key: bytes | Path | None) -> tuple[bytes | None, str]:
    if isinstance(audit_key, bytes):
        return audit_key, ""
    path = Path(audit_key) if audit_key is not None else directory.parent / AUDIT_KEY_FILE
    try:
        return read_audit_key(path), ""
    except (OSError, StoreCorrupted) as exc:
        return (
            None,
            f"{path}: the audit key is missing or unreadable, nothing can be verified ({exc})",
        )
