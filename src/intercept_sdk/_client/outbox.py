"""The report outbox: a durable on-disk queue (SQLite) and the background sender.

Why: feedback is a legal duty (惩戒情况反馈, due within 30 days after each quarter) while
the platform is a remote service that may be down, slow or unreachable for days, and the
unit's own process may be killed at any moment. So a report is first made durable locally,
then uploaded at least once, and forgotten only after the platform acknowledged it.

:class:`Outbox` guarantees:

* ``enqueue()`` returns only after the report is committed to ``outbox.sqlite`` with
  ``journal_mode=WAL`` and ``synchronous=FULL``: it survives ``kill -9`` and power loss
  (see ``docs/decisions/0002-outbox-sqlite.md`` for why not diskcache's Deque, and the
  measured cost).
* Idempotent on ``report_id``: enqueuing the same id again is a no-op, also after it was
  sent (its metadata stays in the journal).
* Bounded: at ``max_bytes`` of live database pages, ``enqueue()`` raises
  :class:`OutboxFull` and nothing already queued is dropped; crossing ``warn_ratio`` logs
  one loud WARNING per crossing.
* A report leaves the queue only through ``mark_sent()`` (after the platform answered 200
  naming it) or ``mark_dead()`` (kept in the dead-letter table with status and reason,
  re-queueable with ``requeue_dead()``): nothing is dropped silently.
* The journal keeps kind, measure and ``created_at`` of every report even after sending,
  so the quarterly summary (:func:`intercept_sdk._protocol.reports.summarize`) does not depend on
  connectivity.
* Safe for several threads (one lock) and several processes (SQLite locking, bounded
  ``busy_timeout``), and fork-safe: a child process never touches the parent's SQLite
  connection; it opens its own on first use.

:class:`Sender` uploads in the background with bounded timeouts, honours ``Retry-After``,
backs off exponentially with full jitter, respects a maximum report rate when draining a
backlog, and moves refused batches to the dead-letter table (splitting to isolate the
culprit). Delivery is at-least-once: the platform de-duplicates by ``report_id``.
An offline unit (``file://`` or directory platform) simply runs no Sender: its outbox
accumulates, up to the cap (``batch()`` reads it for any out-of-band transfer).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as _dt
import fcntl
import json
import logging
import math
import os
import re
import sqlite3
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import httpx

from .._exceptions import ConfigurationError, InvalidReport, OutboxFull, ReportError
from .._protocol.reports import (
    MAX_ENVELOPE_BYTES,
    _check_agreement,
    _check_kind_and_id,
    _shown,
    _SignedReport,
)
from .._protocol.signing import REPORT_TYPE
from .._util import format_utc, fsync_dir, parse_utc, utcnow
from .retry import RetryPolicy

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DeadLetter",
    "Outbox",
    "RetryPolicy",
    "SendError",
    "SendResult",
    "Sender",
    "reports_url",
]

_log = logging.getLogger("intercept_sdk.outbox")

MiB: Final = 1024 * 1024
DEFAULT_MAX_BYTES: Final = 256 * MiB
_SCHEMA_VERSION: Final = 1
_BUSY_TIMEOUT_S: Final = 10.0
# Per-report bookkeeping besides the envelope (journal row, index entries), for the cap.
_ROW_OVERHEAD: Final = 256
_SQL_CHUNK: Final = 500

# ``pending`` holds the envelopes, appended in ``seq`` order (rowid: always max + 1, so
# FIFO) and deleted from the old end, which frees whole pages for the cap accounting.
# ``journal`` keeps the metadata of every report (the idempotency key and the quarterly
# summary's source); ``seq`` links a pending report to its envelope, so ``pending`` needs
# no second index. Two pages are written per enqueue (see docs/decisions/0002).
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS pending (
    seq       INTEGER PRIMARY KEY,
    report_id TEXT NOT NULL,
    envelope  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    report_id  TEXT PRIMARY KEY,
    seq        INTEGER,
    kind       TEXT NOT NULL,
    measure    TEXT,
    created_at TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'dead')),
    updated_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead (
    report_id TEXT PRIMARY KEY,
    status    INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    dead_at   TEXT NOT NULL,
    envelope  BLOB NOT NULL
);
"""


# --------------------------------------------------------------------------- fork safety

# Objects that must reset per-process state in a forked child. Weak, so registering never
# keeps an Outbox or Sender alive; one at-fork hook for the whole module.
_FORK_AWARE: weakref.WeakSet[Outbox | Sender] = weakref.WeakSet()
# SQLite connections and HTTP clients inherited from the parent. They are never used or
# closed in the child (closing could disturb the parent's locks or sockets); holding them
# here keeps them from being finalised.
_ABANDONED: list[object] = []


def _after_fork_in_child() -> None:
    for obj in list(_FORK_AWARE):
        obj._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------- outbox


@dataclass(frozen=True)
class DeadLetter:
    """A report the platform refused; kept with the reason until re-queued or discarded."""

    report_id: str
    kind: str
    measure: str | None
    status: int
    reason: str
    time: _dt.datetime


def _utc_text(value: str | _dt.datetime) -> str:
    """Normalise to ``YYYY-MM-DDTHH:MM:SSZ`` (lexically ordered as time)."""
    try:
        when = parse_utc(value) if isinstance(value, str) else value
    except ValueError:
        raise InvalidReport(f"created_at {_shown(value)} is not an ISO 8601 UTC time") from None
    if not isinstance(when, _dt.datetime) or when.tzinfo is None:
        raise InvalidReport("created_at must be a timezone-aware datetime or ISO 8601 text")
    return format_utc(when)


class _Duplicate(Exception):
    """Internal: the report id is already known; roll back and return quietly."""


_B64 = rb"[A-Za-z0-9+/]*={0,2}"
_SIG = rb'\{"keyid":"[0-9a-f]{64}","sig":"' + _B64 + rb'"\}'
_CANONICAL_ENVELOPE: Final = re.compile(
    rb'\{"payload":"(' + _B64 + rb')","payload_type":"' + re.escape(REPORT_TYPE.encode())
    + rb'","signatures":\[' + _SIG + rb"(?:," + _SIG + rb")*\]\}"
)  # fmt: skip
_ENVELOPE_KEYS: Final = frozenset({"payload", "payload_type", "signatures"})
_UTC_TEXT_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


# The last text _now_text made and the second it names (several reports per second).
_now_cache: tuple[int, str] = (-1, "")


def _now_text() -> str:
    global _now_cache
    now = int(time.time())
    cached = _now_cache
    if cached[0] == now:
        return cached[1]
    text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    _now_cache = (now, text)
    return text


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _SQL_CHUNK):
        yield items[i : i + _SQL_CHUNK]


class Outbox:
    """Durable, bounded, idempotent queue of signed reports in one SQLite file.

    ``path`` is the database file (the client uses ``<cache_dir>/outbox.sqlite``); its
    directory is created with mode 0700 and the file with 0600 if missing. See the module
    docstring for the guarantees. All methods raise :class:`ReportError` (or its subclass
    :class:`OutboxFull`) for storage problems and :class:`InvalidReport` for bad input;
    ``sqlite3`` errors never escape.
    """

    def __init__(
        self, path: Path | str, *, max_bytes: int = DEFAULT_MAX_BYTES, warn_ratio: float = 0.8
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 64 * 1024:
            raise ConfigurationError("outbox max_bytes must be an integer of at least 65536")
        if not 0.0 < warn_ratio <= 1.0:
            raise ConfigurationError("outbox warn_ratio must be in (0, 1]")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.warn_ratio = warn_ratio
        self._lock = threading.RLock()
        self._conn_obj: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        self._page_size = 4096
        self._above_warn = False
        # Usage estimate between exact measurements (see _usage).
        self._est_used: int | None = None
        self._est_added = 0
        self._data_version = -1
        self._connect()
        _FORK_AWARE.add(self)

    # -- connection management ------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        parent = self.path.parent
        try:
            if not parent.exists():
                parent.mkdir(mode=0o700, parents=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            conn = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise ReportError(f"cannot open report outbox {self.path}: {exc}") from None
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ReportError(
                    f"report outbox {self.path}: the file system does not support SQLite WAL "
                    f"(journal_mode is {mode}); put cache_dir on a local disk"
                )
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_size_limit=67108864")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise ReportError(
                    f"report outbox {self.path} was written by a newer intercept-sdk "
                    f"(schema {version}); upgrade, or point cache_dir elsewhere"
                )
            if version < _SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                conn.execute("COMMIT")
                fsync_dir(parent)
            self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        except sqlite3.Error as exc:
            conn.close()
            raise ReportError(f"report outbox {self.path} is unusable: {exc}") from None
        except BaseException:
            conn.close()
            raise
        self._conn_obj = conn
        self._pid = os.getpid()
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise ReportError(f"report outbox {self.path} is closed")
        if self._pid != os.getpid():  # forked without the at-fork hook (belt and braces)
            self._after_fork()
        if self._conn_obj is None:
            return self._connect()
        return self._conn_obj

    def _after_fork(self) -> None:
        self._lock = threading.RLock()
        self._est_used = None
        if self._conn_obj is not None:
            _ABANDONED.append(self._conn_obj)
            self._conn_obj = None
        self._pid = os.getpid()

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; sqlite errors become ReportError, nothing half-done."""
        with self._lock:
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._translate(exc, what) from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, _Duplicate):
                    return
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc, what) from None
                raise

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._translate(exc, "read") from None

    def _translate(self, exc: sqlite3.Error, what: str) -> ReportError:
        text = str(exc)
        if "full" in text.lower():
            return OutboxFull(
                f"report outbox {self.path}: the disk is full ({text}); nothing was dropped "
                f"and the report was not queued ({what})"
            )
        if "locked" in text.lower() or "busy" in text.lower():
            return ReportError(
                f"report outbox {self.path} stayed locked by another process for more than "
                f"{_BUSY_TIMEOUT_S:.0f} s ({what})"
            )
        return ReportError(f"report outbox {self.path}: {what} failed: {text}")

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        pages, free = conn.execute(
            "SELECT p.page_count, f.freelist_count FROM pragma_page_count() p, "
            "pragma_freelist_count() f"
        ).fetchone()
        return (int(pages) - int(free)) * self._page_size

    def _usage(self, conn: sqlite3.Connection, need: int) -> int:
        """Live bytes, exact whenever it matters, cheap otherwise.

        Counting pages costs as much as the insert itself, so between exact counts this
        connection adds what it wrote to the last exact count. The count is exact again
        when another connection committed (``data_version`` changed), when this one added
        more than 1 % of the cap since, or whenever the result is within reach of the
        warning threshold (and so of the cap).
        """
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        est = self._est_used
        if (
            est is None
            or version != self._data_version
            or self._est_added > self.max_bytes // 100
            or est + need >= 0.95 * self.warn_ratio * self.max_bytes
        ):
            est = self._used_bytes(conn)
            self._est_used, self._est_added, self._data_version = est, 0, version
        return est

    def _check_warn(self, used: int) -> None:
        ratio = used / self.max_bytes
        if ratio >= self.warn_ratio:
            if not self._above_warn:
                self._above_warn = True
                _log.warning(
                    "REPORT OUTBOX %s IS %.0f%% FULL (%d of %d bytes): reports are not being "
                    "acknowledged by the platform; at 100%% new reports are refused with "
                    "OutboxFull. Check connectivity and the sender's last_error.",
                    self.path,
                    100 * ratio,
                    used,
                    self.max_bytes,
                )
        elif self._above_warn:
            self._above_warn = False
            _log.info("report outbox %s is back below %.0f%%", self.path, 100 * self.warn_ratio)

    # -- public API -----------------------------------------------------------------

    def enqueue(
        self,
        envelope_bytes: bytes,
        *,
        report_id: str,
        kind: str,
        measure: str | None,
        created_at: str | _dt.datetime,
    ) -> None:
        """Queue a signed report durably; return only once it is on disk.

        The envelope must be a signed report envelope (as made by
        :func:`~intercept_sdk._protocol.reports.sign_report`, which validated the payload) whose
        payload agrees with ``report_id``, ``kind``, ``measure`` and ``created_at``
        (:class:`InvalidReport` otherwise), so what the quarterly summary counts is exactly
        what was sent. The signature itself is checked by the platform. Enqueuing a ``report_id``
        that was seen before (pending, sent or dead) does nothing. Raises
        :class:`OutboxFull` at the cap (nothing is dropped; this report is not queued).

        Envelopes returned by :func:`~intercept_sdk._protocol.reports.sign_report` in this process
        carry the metadata of the payload they signed (validated there), and the arguments
        are checked against those instead of parsing the envelope again; any other bytes
        are parsed and checked in full.
        """
        if type(envelope_bytes) is _SignedReport:
            created = envelope_bytes._check_metadata(report_id, kind, measure, created_at)
            data = bytes(envelope_bytes)
            if len(data) > MAX_ENVELOPE_BYTES:
                raise InvalidReport(
                    f"report envelope is {len(data)} bytes, more than {MAX_ENVELOPE_BYTES}"
                )
        else:
            data = bytes(envelope_bytes)
            created = self._check_envelope(data, report_id, kind, measure, created_at)
        now = _now_text()
        need = len(data) + _ROW_OVERHEAD
        # One IMMEDIATE transaction, as _write() does (inlined: this is the hot path).
        with self._lock:  # the usage estimate and warning state change together
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._translate(exc, "enqueue") from None
            try:
                used = self._usage(conn, need)
                if used + need > self.max_bytes:
                    if self._known(conn, report_id):
                        raise _Duplicate
                    pending = conn.execute("SELECT count(*) FROM pending").fetchone()[0]
                    raise OutboxFull(
                        f"report outbox {self.path} is full ({used} of {self.max_bytes} bytes, "
                        f"{pending} reports waiting for the platform): report {report_id} was NOT "
                        "queued and nothing was dropped. Restore connectivity to the platform "
                        "(see the sender's last_error) or raise max_bytes."
                    )
                seq = conn.execute(
                    "INSERT INTO pending (report_id, envelope) VALUES (?, ?)", (report_id, data)
                ).lastrowid
                # The journal's primary key is the idempotency check: a known id inserts
                # nothing, and the envelope just written is rolled back.
                if not conn.execute(
                    "INSERT OR IGNORE INTO journal "
                    "(report_id, seq, kind, measure, created_at, state, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                    (report_id, seq, kind, measure, created, now),
                ).rowcount:
                    raise _Duplicate
                conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, _Duplicate):
                    return
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc, "enqueue") from None
                raise
            if self._est_used is not None:
                self._est_used += need
                self._est_added += need
            self._check_warn(used + need)

    @staticmethod
    def _known(conn: sqlite3.Connection, report_id: str) -> bool:
        row = conn.execute("SELECT 1 FROM journal WHERE report_id = ?", (report_id,))
        return row.fetchone() is not None

    @staticmethod
    def _check_envelope(
        data: bytes,
        report_id: str,
        kind: str,
        measure: str | None,
        created_at: str | _dt.datetime,
    ) -> str:
        """Check the envelope agrees with the metadata; return ``created_at`` as stored."""
        if len(data) > MAX_ENVELOPE_BYTES:
            raise InvalidReport(
                f"report envelope is {len(data)} bytes, more than {MAX_ENVELOPE_BYTES}"
            )
        # This runs on every enqueue, so the usual case (the canonical envelope that
        # sign_report produces) is recognised by one exact pattern over the whole bytes;
        # anything else gets a full JSON parse. Either way: the outer shape, the type, at
        # least one signature, and the payload's metadata.
        try:
            m = _CANONICAL_ENVELOPE.fullmatch(data)
            if m is not None:
                payload_b64: object = m.group(1)
            else:
                outer = json.loads(data)
                if not isinstance(outer, dict) or outer.keys() != _ENVELOPE_KEYS:
                    raise InvalidReport("not a signed report envelope")
                if outer["payload_type"] != REPORT_TYPE:
                    raise InvalidReport(f"envelope type must be {REPORT_TYPE}")
                if not isinstance(outer["signatures"], list) or not outer["signatures"]:
                    raise InvalidReport("report envelope carries no signature")
                payload_b64 = outer["payload"]
            if not isinstance(payload_b64, (str, bytes)):
                raise InvalidReport("envelope payload must be base64 text")
            payload = json.loads(base64.b64decode(payload_b64, validate=True))
        except (ValueError, TypeError, UnicodeDecodeError, RecursionError, binascii.Error):
            raise InvalidReport("not a signed report envelope (JSON/base64)") from None
        if not isinstance(payload, dict):
            raise InvalidReport("envelope payload is not a report")
        signed_created = payload.get("created_at")
        if payload.get("type") != "report" or not isinstance(signed_created, str):
            raise InvalidReport("envelope payload is not a report")
        _check_kind_and_id(kind, report_id)
        # Fast path: the caller passed the payload's own text (the usual case).
        signed = signed_created if _UTC_TEXT_RE.fullmatch(signed_created) else None
        if signed is None:
            signed = _utc_text(signed_created)
        created = signed if created_at == signed else _utc_text(created_at)
        _check_agreement(
            (report_id, kind, measure, created),
            (payload.get("report_id"), payload.get("kind"), payload.get("measure"), signed),
        )
        return created

    def batch(self, limit: int) -> list[tuple[str, bytes]]:
        """Up to ``limit`` pending reports, oldest first, as ``(report_id, envelope)``.

        Nothing is removed: a report stays pending until :meth:`mark_sent`/:meth:`mark_dead`.
        """
        rows = self._read(
            "SELECT report_id, envelope FROM pending ORDER BY seq LIMIT ?", (max(0, int(limit)),)
        )
        return [(str(r[0]), bytes(r[1])) for r in rows]

    def _batch_after(self, limit: int, after_seq: int) -> list[tuple[int, str, bytes]]:
        """Like :meth:`batch`, as ``(seq, report_id, envelope)``, only past ``after_seq``."""
        rows = self._read(
            "SELECT seq, report_id, envelope FROM pending WHERE seq > ? ORDER BY seq LIMIT ?",
            (int(after_seq), max(0, int(limit))),
        )
        return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def _pending_seqs(self, conn: sqlite3.Connection, ids: Sequence[str]) -> list[int]:
        marks = ",".join("?" * len(ids))
        rows = conn.execute(
            f"SELECT seq FROM journal WHERE report_id IN ({marks}) AND state = 'pending'", ids
        )
        return [int(r[0]) for r in rows]

    def mark_sent(self, ids: Iterable[str]) -> int:
        """Remove acknowledged reports from the queue (metadata stays); return how many.

        Call only after the platform acknowledged them: this is what makes delivery
        at-least-once. Ids that are not pending are ignored.
        """
        id_list = list(dict.fromkeys(ids))
        if not id_list:
            return 0
        now = _now_text()
        done = 0
        with self._write("mark_sent") as conn:
            for part in _chunks(id_list):
                seqs = self._pending_seqs(conn, part)
                if not seqs:
                    continue
                conn.execute(
                    f"DELETE FROM pending WHERE seq IN ({','.join('?' * len(seqs))})", seqs
                )
                marks = ",".join("?" * len(part))
                done += conn.execute(
                    f"UPDATE journal SET state = 'sent', seq = NULL, updated_at = ? "
                    f"WHERE report_id IN ({marks}) AND state = 'pending'",
                    (now, *part),
                ).rowcount
            used = self._used_bytes(conn)
            self._est_used, self._est_added = used, 0
            self._check_warn(used)
        return done

    def mark_dead(self, ids: Iterable[str], status: int, reason: str) -> int:
        """Move pending reports to the dead-letter table with the platform's answer.

        They are never dropped: :meth:`dead_letters` lists them, :meth:`requeue_dead` puts
        them back. Ids that are not pending are ignored.
        """
        id_list = list(dict.fromkeys(ids))
        if not id_list:
            return 0
        now = _now_text()
        reason = str(reason)[:1000]
        done = 0
        with self._write("mark_dead") as conn:
            for part in _chunks(id_list):
                seqs = self._pending_seqs(conn, part)
                if not seqs:
                    continue
                smarks = ",".join("?" * len(seqs))
                conn.execute(
                    f"INSERT OR REPLACE INTO dead (report_id, status, reason, dead_at, envelope) "
                    f"SELECT report_id, ?, ?, ?, envelope FROM pending WHERE seq IN ({smarks}) "
                    f"ORDER BY seq",
                    (int(status), reason, now, *seqs),
                )
                conn.execute(f"DELETE FROM pending WHERE seq IN ({smarks})", seqs)
                marks = ",".join("?" * len(part))
                done += conn.execute(
                    f"UPDATE journal SET state = 'dead', seq = NULL, updated_at = ? "
                    f"WHERE report_id IN ({marks}) AND state = 'pending'",
                    (now, *part),
                ).rowcount
            used = self._used_bytes(conn)
            self._est_used, self._est_added = used, 0
            self._check_warn(used)
        return done

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """Refused reports, oldest first (at most ``limit``)."""
        rows = self._read(
            "SELECT d.report_id, j.kind, j.measure, d.status, d.reason, d.dead_at "
            "FROM dead d JOIN journal j USING (report_id) ORDER BY d.rowid "
            "LIMIT ?",
            (max(0, int(limit)),),
        )
        return [
            DeadLetter(str(r[0]), str(r[1]), r[2], int(r[3]), str(r[4]), parse_utc(str(r[5])))
            for r in rows
        ]

    def requeue_dead(self, ids: Iterable[str] | None = None) -> int:
        """Put dead letters (all, or ``ids``) back at the end of the queue; return how many.

        For after the cause was fixed (e.g. the subscriber key was registered). Bypasses the
        byte cap, since the reports were already counted while dead.
        """
        now = _now_text()
        self._est_used = None
        with self._write("requeue_dead") as conn:
            if ids is None:
                id_list = [
                    str(r[0]) for r in conn.execute("SELECT report_id FROM dead ORDER BY rowid")
                ]
            else:
                id_list = list(dict.fromkeys(ids))
            done = 0
            for rid in id_list:
                row = conn.execute(
                    "SELECT envelope FROM dead WHERE report_id = ?", (rid,)
                ).fetchone()
                if row is None:
                    continue
                seq = conn.execute(
                    "INSERT INTO pending (report_id, envelope) VALUES (?, ?)", (rid, row[0])
                ).lastrowid
                conn.execute("DELETE FROM dead WHERE report_id = ?", (rid,))
                conn.execute(
                    "UPDATE journal SET state = 'pending', seq = ?, updated_at = ? "
                    "WHERE report_id = ?",
                    (seq, now, rid),
                )
                done += 1
        return done

    def discard_dead(self, ids: Iterable[str]) -> int:
        """Delete dead letters for good (an explicit operator decision; metadata stays)."""
        id_list = list(dict.fromkeys(ids))
        done = 0
        self._est_used = None
        with self._write("discard_dead") as conn:
            for part in _chunks(id_list):
                marks = ",".join("?" * len(part))
                done += conn.execute(
                    f"DELETE FROM dead WHERE report_id IN ({marks})", part
                ).rowcount
        return done

    def has_report(self, report_id: str) -> bool:
        """True if ``report_id`` was ever enqueued (pending, sent or dead, unless pruned)."""
        return bool(self._read("SELECT 1 FROM journal WHERE report_id = ?", (report_id,)))

    def report_state(self, report_id: str) -> str | None:
        """``pending``, ``sent`` or ``dead`` for an enqueued report; ``None`` if unknown
        (never enqueued, or sent and since pruned)."""
        rows = self._read("SELECT state FROM journal WHERE report_id = ?", (report_id,))
        return str(rows[0][0]) if rows else None

    def pending_count(self) -> int:
        """Reports waiting to be acknowledged by the platform."""
        return int(self._read("SELECT count(*) FROM pending")[0][0])

    def has_pending(self) -> bool:
        """Whether any report waits for the platform (cheap: no count of the queue)."""
        return bool(self._read("SELECT EXISTS (SELECT 1 FROM pending)")[0][0])

    def sent_count(self) -> int:
        """Reports the platform acknowledged (whose metadata is still in the journal)."""
        return int(self._read("SELECT count(*) FROM journal WHERE state = 'sent'")[0][0])

    def dead_count(self) -> int:
        """Reports in the dead-letter table."""
        return int(self._read("SELECT count(*) FROM dead")[0][0])

    def used_bytes(self) -> int:
        """Bytes of live database pages: what counts against ``max_bytes``."""
        with self._lock:
            try:
                return self._used_bytes(self._conn())
            except sqlite3.Error as exc:
                raise self._translate(exc, "read") from None

    def stats_by(self, start: _dt.datetime, end: _dt.datetime) -> dict[tuple[str | None, str], int]:
        """Counts of reports created in ``[start, end)``, per ``(measure, kind)``.

        Every enqueued report counts, whatever its state (pending, sent or dead), at
        second precision of ``created_at``. Used for the quarterly summary.
        """
        rows = self._read(
            "SELECT measure, kind, count(*) FROM journal "
            "WHERE created_at >= ? AND created_at < ? GROUP BY measure, kind",
            (_utc_text(start), _utc_text(end)),
        )
        return {(r[0], str(r[1])): int(r[2]) for r in rows}

    def prune_journal(self, before: _dt.datetime) -> int:
        """Forget metadata of *sent* reports created before ``before``; return how many.

        Call it once a quarter's summary was acknowledged, so the journal (which counts
        against ``max_bytes``) does not grow forever. Pending and dead reports are kept.
        """
        self._est_used = None
        with self._write("prune_journal") as conn:
            return int(
                conn.execute(
                    "DELETE FROM journal WHERE state = 'sent' AND created_at < ?",
                    (_utc_text(before),),
                ).rowcount
            )

    def close(self) -> None:
        """Close the database; idempotent. Later calls raise :class:`ReportError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._conn_obj = self._conn_obj, None
            if conn is not None and self._pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r})"


# --------------------------------------------------------------------------- sender


@dataclass(frozen=True)
class SendError:
    """The last failed upload: ``kind`` is network, http (status set) or protocol."""

    kind: Literal["network", "http", "protocol"]
    status: int | None
    message: str
    time: _dt.datetime


@dataclass(frozen=True)
class SendResult:
    """What one :meth:`Sender.send_once` did.

    ``retry_in`` is set when the attempt failed in a retryable way: wait that long.
    ``idle`` is True when the queue was empty.
    """

    sent: int = 0
    dead: int = 0
    retry_in: float | None = None
    idle: bool = False


@dataclass
class _Rejected:
    status: int
    reason: str
    splittable: bool


@dataclass
class _Retry:
    error: SendError
    retry_after: str | None


@dataclass
class _Acked:
    ids: set[str] = field(default_factory=set)


def reports_url(platform: str) -> str | None:
    """The ``/reports`` endpoint of an ``http(s)://`` platform, or None for an offline one.

    ``file://`` URLs and plain directory paths are offline platforms: there is nowhere to
    upload, the outbox just accumulates and no :class:`Sender` should be started.
    """
    parts = urlsplit(platform)
    if parts.scheme in ("http", "https"):
        if not parts.netloc:
            raise ConfigurationError(f"platform URL {platform!r} has no host")
        return platform.rstrip("/") + "/reports"
    if parts.scheme in ("", "file") or (len(parts.scheme) == 1 and os.name == "nt"):
        return None
    raise ConfigurationError(
        f"platform {platform!r}: only http(s):// URLs, file:// URLs or directories are supported"
    )


_RETRY_STATUS: Final = frozenset({408, 429})
_SPLIT_STATUS: Final = frozenset({400, 403, 413, 422})
# "No such endpoint" is a configuration problem, not a verdict on the reports.
_MISCONFIGURED_STATUS: Final = frozenset({404, 405, 410})
_MAX_RESPONSE_BYTES: Final = 1 * MiB


class Sender:
    """Background uploader of an :class:`Outbox` to the platform's ``POST /reports``.

    * At-least-once: a report is marked sent only when a ``200`` response lists it as
      ``accepted`` or ``duplicates``; anything else leaves it pending (or dead-lettered).
    * Retries network errors, timeouts, ``408``, ``429``, ``5xx`` (and ``404/405/410``,
      3xx and malformed ``200`` bodies, which mean a misconfigured URL or proxy) with
      the client's one :class:`~.retry.RetryPolicy` (``Client(retry=...)`` reaches it):
      exponential backoff, full jitter, ``Retry-After`` honoured; it waits on its own stop
      event (not the policy's ``sleep``), so ``close()`` interrupts a backoff.
      ``notify()`` never cuts a backoff short.
    * ``400/403/413/422`` refuse the batch: it is split in halves until the refused
      reports are isolated, which go to the dead-letter table with status and reason;
      ``401`` (unknown subscriber) and other 4xx dead-letter the whole batch.
    * Drains a backlog at most ``max_rate`` reports/s in batches of at most
      ``batch_size`` (and ``ceil(max_rate)``) reports and ``max_body_bytes``.
    * Every HTTP call has connect/read/write/pool timeouts; ``close(timeout)`` returns
      within ``timeout`` plus a small margin even if a request hangs (the daemon thread
      then ends on its own read timeout, leaving the report pending).
    * The background thread marks an acknowledged batch sent (a transaction with an
      fsync) on a helper thread while it uploads the next batch; a report is still marked
      sent only after the platform acknowledged it.
    * One sender per outbox at a time across processes (an ``flock`` on
      ``<outbox>.sender.lock``): with several worker processes only one uploads.
    * Fork-safe: a forked child has no sender thread, no inherited HTTP connections and
      no lock; the thread restarts lazily on the child's next ``notify()``/``flush()``.

    ``proxy`` and ``verify`` (the client's one HTTP configuration: the same proxy and CA
    as its syncs) apply to every upload. ``transport`` (e.g. ``httpx.MockTransport``)
    replaces the network; ``sleep`` and
    ``clock`` (monotonic) replace waiting and time for tests. The default ``sleep`` is
    interrupted by ``close()``. Fork safety covers the default transport (a fresh
    connection pool per process); a ``transport`` object passed in is shared with forked
    children as it is, so pass one only if it holds no pooled sockets (or in tests).
    """

    def __init__(
        self,
        outbox: Outbox,
        platform_url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        batch_size: int = 500,
        max_rate: float = 500.0,
        interval: float = 30.0,
        max_body_bytes: int = 8 * MiB,
        timeout: httpx.Timeout | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        headers: Mapping[str, str] | None = None,
        proxy: str | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        url = reports_url(platform_url)
        if url is None:
            raise ConfigurationError(
                f"platform {platform_url!r} is offline (file:// or directory): reports "
                "accumulate in the outbox and no Sender is run"
            )
        if batch_size < 1:
            raise ConfigurationError("sender batch_size must be at least 1")
        if not max_rate > 0 or not math.isfinite(max_rate):
            raise ConfigurationError("sender max_rate must be a positive number (reports/s)")
        if not interval > 0:
            raise ConfigurationError("sender interval must be positive")
        self.outbox = outbox
        self.url = url
        self.batch_size = min(int(batch_size), max(1, math.ceil(max_rate)))
        self.max_rate = float(max_rate)
        self.interval = float(interval)
        self.max_body_bytes = int(max_body_bytes)
        self.timeout = timeout or httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)
        self.retry = retry or RetryPolicy()
        self._transport = transport
        self._proxy = proxy
        self._verify = verify
        self._custom_sleep = sleep
        self._clock = clock
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": "intercept-sdk",
            **dict(headers or {}),
        }
        self._last_error: SendError | None = None
        self._last_success: _dt.datetime | None = None
        self._failures = 0
        self._closed = False
        self._reset_process_state()
        _FORK_AWARE.add(self)

    # -- per-process state ---------------------------------------------------------

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._state_lock = threading.Lock()
        self._resource_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._progress = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None
        self._lock_fd: int | None = None
        self._next_send_at = -math.inf
        # The background step (_step): the batch being marked sent and what comes next.
        self._marker: threading.Thread | None = None
        self._mark_error: BaseException | None = None
        self._marking_seq = -1
        self._prefetched: list[tuple[int, str, bytes]] | None = None

    def _after_fork(self) -> None:
        if self._client is not None:
            _ABANDONED.append(self._client)
        if self._lock_fd is not None:
            # Closing our copy never releases the parent's flock (same open description).
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
        self._reset_process_state()

    def _http(self) -> httpx.Client:
        if self._pid != os.getpid():
            self._after_fork()
        if self._client is None:
            self._client = httpx.Client(
                transport=self._transport,
                proxy=self._proxy,
                verify=self._verify,
                timeout=self.timeout,
                follow_redirects=False,
                headers=self._headers,
                trust_env=True,
            )
        return self._client

    def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self._custom_sleep is not None:
            self._custom_sleep(seconds)
        else:
            self._stop.wait(seconds)

    # -- status --------------------------------------------------------------------

    @property
    def last_error(self) -> SendError | None:
        """The most recent failed upload (kept after recovery, for status displays)."""
        return self._last_error

    @property
    def last_success(self) -> _dt.datetime | None:
        return self._last_success

    @property
    def running(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive() and self._pid == os.getpid()

    def status(self) -> dict[str, Any]:
        """A plain-JSON snapshot for ``Client.status()``."""
        err = self._last_error
        return {
            "url": self.url,
            "running": self.running,
            "pending": self.outbox.pending_count(),
            "sent": self.outbox.sent_count(),
            "dead": self.outbox.dead_count(),
            "consecutive_failures": self._failures,
            "last_success": None if self._last_success is None else format_utc(self._last_success),
            "last_error": None if err is None else {**asdict(err), "time": format_utc(err.time)},
        }

    # -- one step ------------------------------------------------------------------

    def send_once(self) -> SendResult:
        """Upload one batch (oldest first) and return what happened; never raises for HTTP.

        Usable without the thread (e.g. a command that pushes the outbox once). Waits as
        needed to respect ``max_rate``. Raises :class:`ReportError` only if the outbox
        itself fails. When it returns, what the platform acknowledged is marked sent.
        """
        rows = self.outbox.batch(self.batch_size)
        if not rows:
            return SendResult(idle=True)
        rows = rows[: self._fitting(env for _, env in rows)]
        if not self._pace(len(rows)):
            return SendResult()
        return self._settle(rows, self._post(rows))

    def _fitting(self, envelopes: Iterable[bytes]) -> int:
        """How many of ``envelopes`` (from the first) fit in one body of ``max_body_bytes``."""
        size, cut = 0, 0
        for i, env in enumerate(envelopes):
            size += len(env) + 1
            if i > 0 and size > self.max_body_bytes:
                break
            cut = i + 1
        return cut

    def _pace(self, n: int) -> bool:
        """Wait as ``max_rate`` requires before sending ``n`` reports; False if stopped."""
        wait = self._next_send_at - self._clock()
        if wait > 0:
            self._sleep(wait)
            if self._stop.is_set():
                return False
        self._next_send_at = self._clock() + n / self.max_rate
        return True

    def _settle(
        self, rows: list[tuple[str, bytes]], answer: _Acked | _Retry | _Rejected
    ) -> SendResult:
        """Act on the platform's ``answer`` to ``rows``: mark, retry later, or split."""
        sent = dead = 0
        stack: list[list[tuple[str, bytes]]] = []
        part = rows
        while True:
            if isinstance(answer, _Acked):
                ids = [rid for rid, _ in part if rid in answer.ids]
                sent += self.outbox.mark_sent(ids)
                if len(ids) < len(part):
                    _log.warning(
                        "platform acknowledged %d of %d reports; the rest stay queued",
                        len(ids),
                        len(part),
                    )
                self._succeeded()
            elif isinstance(answer, _Retry):
                self._failures += 1
                self._record(answer.error)
                return SendResult(
                    sent=sent,
                    dead=dead,
                    retry_in=self.retry.delay(
                        self._failures, self.retry.parse_retry_after(answer.retry_after)
                    ),
                )
            elif answer.splittable and len(part) > 1:
                half = len(part) // 2
                stack.append(part[half:])
                stack.append(part[:half])
            else:
                ids = [rid for rid, _ in part]
                dead += self.outbox.mark_dead(ids, answer.status, answer.reason)
                self._last_error = SendError(
                    "http", answer.status, f"refused: {answer.reason}", utcnow()
                )
                _log.error(
                    "platform refused %d report(s) with HTTP %d (%s); they are in the "
                    "dead-letter table: %s",
                    len(ids),
                    answer.status,
                    answer.reason,
                    ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else ""),
                )
            if not stack:
                return SendResult(sent=sent, dead=dead)
            part = stack.pop()
            answer = self._post(part)

    # -- the thread's step: marking overlaps the next upload ----------------------------
    #
    # Marking a batch sent is a transaction with an fsync (tens of ms for 500 reports)
    # that the next upload does not depend on. So the thread reads the next batch first
    # (past the batch being marked), marks the acknowledged one on a helper thread, and
    # uploads meanwhile. Anything but a full acknowledgement waits for the marking and is
    # handled exactly as send_once() does. A report is still marked sent only after the
    # platform acknowledged it, and stays pending until then.

    def _step(self) -> SendResult:
        """One batch for the background thread: :meth:`send_once`, with marking overlapped."""
        rows = self._prefetched
        self._prefetched = None
        if rows is None:
            rows = self.outbox._batch_after(self.batch_size, self._marking_seq)
        if not rows and self._marking_seq >= 0:
            # Nothing past the batch being marked: wait for it and look at the whole queue
            # again (reports it did not remove, or new ones numbered from the start).
            self._finish_marking()
            rows = self.outbox._batch_after(self.batch_size, -1)
        if not rows:
            return SendResult(idle=True)
        rows = rows[: self._fitting(env for _, _, env in rows)]
        part = [(rid, env) for _, rid, env in rows]
        if not self._pace(len(part)):
            return SendResult()
        answer = self._post(part)
        try:
            self._finish_marking()
        except ReportError:
            self._prefetched = None
            raise
        if not (isinstance(answer, _Acked) and len(answer.ids) == len(part)):
            return self._settle(part, answer)
        last = rows[-1][0]
        try:
            self._prefetched = self.outbox._batch_after(self.batch_size, last)
        except ReportError:
            self._settle(part, answer)  # mark now; the next step reads again
            raise
        self._succeeded()
        ids = [rid for rid, _ in part]
        self._marking_seq = last
        self._marker = threading.Thread(
            target=self._mark, args=(ids,), name="intercept-sdk-report-marker", daemon=True
        )
        self._marker.start()
        return SendResult(sent=len(ids))

    def _mark(self, ids: list[str]) -> None:
        try:
            self.outbox.mark_sent(ids)
        except BaseException as exc:  # handed to the sender thread by _finish_marking
            self._mark_error = exc

    def _finish_marking(self) -> None:
        """Wait for the batch being marked sent; raise what marking it raised."""
        marker, self._marker = self._marker, None
        if marker is not None:
            marker.join()
        error, self._mark_error = self._mark_error, None
        if error is not None or marker is None:
            self._marking_seq = -1
            self._prefetched = None
        if error is not None:
            raise error

    def _succeeded(self) -> None:
        if self._failures:
            _log.info("report upload to %s recovered after %d failures", self.url, self._failures)
        self._failures = 0
        self._last_success = utcnow()

    def _record(self, error: SendError) -> None:
        self._last_error = error
        level = logging.WARNING if self._failures <= 1 else logging.DEBUG
        _log.log(level, "report upload failed (%s): %s", error.kind, error.message)

    def _post(self, part: Sequence[tuple[str, bytes]]) -> _Acked | _Retry | _Rejected:
        body = b'{"reports":[' + b",".join(env for _, env in part) + b"]}"
        try:
            with self._http().stream("POST", self.url, content=body) as resp:
                data = bytearray()
                for chunk in resp.iter_bytes():
                    data += chunk
                    if len(data) > _MAX_RESPONSE_BYTES:
                        break
                status = resp.status_code
                retry_after = resp.headers.get("Retry-After")
        except httpx.TimeoutException as exc:
            return _Retry(SendError("network", None, f"timeout: {exc!r}", utcnow()), None)
        except httpx.HTTPError as exc:
            return _Retry(
                SendError("network", None, f"{type(exc).__name__}: {exc}", utcnow()), None
            )
        except OSError as exc:
            return _Retry(
                SendError("network", None, f"{type(exc).__name__}: {exc}", utcnow()), None
            )
        text = bytes(data[:300]).decode("utf-8", "replace").strip()
        if status == 200:
            acked = self._parse_ack(bytes(data))
            if acked is None:
                return _Retry(
                    SendError(
                        "protocol",
                        status,
                        "200 without a valid {accepted, duplicates} body (a proxy or captive "
                        "portal?)",
                        utcnow(),
                    ),
                    None,
                )
            ids = {rid for rid, _ in part}
            acked &= ids
            if not acked:
                return _Retry(
                    SendError("protocol", status, "200 acknowledging none of the batch", utcnow()),
                    None,
                )
            return _Acked(acked)
        if status in _RETRY_STATUS or status >= 500:
            return _Retry(
                SendError("http", status, text or f"HTTP {status}", utcnow()), retry_after
            )
        if status < 400 or status in _MISCONFIGURED_STATUS:
            return _Retry(
                SendError(
                    "http",
                    status,
                    f"HTTP {status} from {self.url}: check the platform URL ({text[:100]})",
                    utcnow(),
                ),
                retry_after,
            )
        return _Rejected(status, text or f"HTTP {status}", status in _SPLIT_STATUS)

    @staticmethod
    def _parse_ack(data: bytes) -> set[str] | None:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if not isinstance(obj, dict):
            return None
        out: set[str] = set()
        for key in ("accepted", "duplicates"):
            ids = obj.get(key, [])
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                return None
            out.update(ids)
        return out

    # -- thread --------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread (idempotent; no-op after ``close()``)."""
        if self._pid != os.getpid():
            self._after_fork()
        with self._state_lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="intercept-sdk-report-sender", daemon=True
            )
            self._thread.start()

    def notify(self) -> None:
        """Tell the sender a report was enqueued: it uploads now unless it is backing off."""
        self.start()
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Block until nothing is pending (True) or ``timeout`` seconds passed (False).

        Dead letters are not pending: a refused report does not make ``flush`` wait. Starts
        the thread if needed (lazily, e.g. in a forked child).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        self.start()
        self._wake.set()
        while True:
            if not self.outbox.has_pending():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.running:
                return False
            self._progress.wait(min(remaining, 0.05))
            self._progress.clear()

    def close(self, timeout: float = 5.0) -> None:
        """Flush for up to ``timeout`` s, then stop the thread. Idempotent and bounded.

        Returns within ``timeout`` plus about 0.1 s. Reports not yet acknowledged stay in
        the outbox and are sent by the next sender.
        """
        start = time.monotonic()
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread if self._pid == os.getpid() else None
        if thread is not None and thread.is_alive():
            with contextlib.suppress(ReportError):
                self.flush(max(0.0, timeout - 0.05))
        self._stop.set()
        self._wake.set()
        if thread is not None:
            thread.join(max(0.01, timeout - (time.monotonic() - start)) + 0.05)
            if thread.is_alive():
                _log.warning(
                    "report sender still has a request in flight after %.1f s; it stops on "
                    "its own timeout and the reports stay queued",
                    timeout,
                )
                return
        self._shutdown_resources()

    def _shutdown_resources(self) -> None:
        # Called by close() and by the exiting thread: the lock makes it run once per
        # resource, so a file descriptor is never closed twice (it may have been reused).
        with self._resource_lock:
            client, self._client = self._client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._release_lock()

    def _try_lock(self) -> bool:
        if self._lock_fd is None:
            lock_path = Path(str(self.outbox.path) + ".sender.lock")
            try:
                self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                self._record(
                    SendError("protocol", None, f"cannot open {lock_path}: {exc}", utcnow())
                )
                return False
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def _release_lock(self) -> None:
        with self._resource_lock:
            fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # releases the flock

    def _run(self) -> None:
        locked = False
        try:
            while not self._stop.is_set():
                self._wake.clear()
                if not locked:
                    locked = self._try_lock()
                    if not locked:  # another process is the sender for this outbox
                        self._wake.wait(min(self.interval, 5.0))
                        continue
                try:
                    result = self._step()
                except ReportError as exc:
                    if self._stop.is_set():
                        break
                    _log.error("report sender cannot read the outbox: %s", exc)
                    self._stop.wait(min(self.interval, 30.0))
                    continue
                except Exception:
                    _log.exception("report sender: unexpected error; retrying")
                    self._stop.wait(min(self.interval, 30.0))
                    continue
                finally:
                    self._progress.set()
                if result.retry_in is not None:
                    self._sleep(result.retry_in)
                elif result.idle:
                    self._wake.wait(self.interval)
        finally:
            with contextlib.suppress(Exception):
                self._finish_marking()
            if self._pid == os.getpid():
                if self._closed:
                    self._shutdown_resources()
                elif locked:
                    self._release_lock()
            self._progress.set()
