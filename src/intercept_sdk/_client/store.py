"""The local list store: an on-disk copy of exactly one verified list version.

Why this module exists
----------------------
"Offline" means every decision is answered from a local copy of the signed list, so this
store is what a blocked (or wrongly allowed) person ultimately depends on. It guarantees:

* **One verified version at a time.** A full snapshot is built into a *new* SQLite file,
  checked against the signed digests, fsynced, and only then made current by swapping the
  ``CURRENT`` pointer file with ``os.replace`` (+ directory fsync). A delta is applied in
  place inside one ``BEGIN IMMEDIATE`` transaction in WAL mode with ``synchronous=FULL``
  and committed only when the resulting ``state.sum`` and entry count equal the signed
  ones. A ``kill -9`` (or power loss) at any instant therefore leaves the old version or
  the new one, never a mix. Readers in other processes see a version change atomically:
  each lookup is a single read transaction, and the reported :class:`StoreState` belongs
  to that same transaction.
* **Scale without memory.** Up to ~10 million entries are served by point lookups on a
  ``WITHOUT ROWID`` key index; nothing is loaded into memory, and many processes
  (gunicorn workers) read concurrently through WAL.
* **No eviction, no pickle.** SQLite never drops rows on its own, and bodies are record
  bytes (compressed, see below), never unpickled objects.
* **Nothing readable without an identifier in hand.** Records are the sealed lines of
  site format 2 exactly as published (decision 0011): the index holds record ids and
  32-bit tags, the bodies are ciphertext, and the hash key that derives tags and keys is
  kept only inside the subscriber's sealed box (``StoreState.box``). The cache directory
  is mode 0700 and the database files 0600.
* **Tampering is detected.** :meth:`Store.verify` re-scans everything and recomputes the
  signed digests and the key index; any difference raises :class:`StoreCorrupted`.

On-disk layout (``cache_dir``)::

    CURRENT                          name of the active database file (atomic pointer)
    list-<version>-<token>.sqlite    one complete database per snapshot (current + previous)
    .build-<version>-<token>.sqlite  a snapshot being built (deleted if a build dies)
    LOCK                             flock(2) that serialises writers across processes
    DAMAGED                          names a file that failed verify(): the next sync replaces it

Each database file carries the store schema in ``PRAGMA user_version``. A file of another
schema (written by an older or newer SDK) is never read: reads raise
:class:`NeverSynced` (``state()`` is ``None``), a warning is logged once, and the next
sync replaces it with a snapshot (see ``_other_schema`` for why not StoreCorrupted).

The design decision, with measurements, is in ``docs/decisions/0001-storage-sqlite.md``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as _dt
import fcntl
import hashlib
import itertools
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NamedTuple
from urllib.parse import quote

import pydantic
import pydantic_core
from typing_extensions import TypedDict

from .._exceptions import (
    BaseVersionMismatch,
    DigestMismatch,
    FormatError,
    InterceptError,
    NeverSynced,
    StoreCorrupted,
    StoreError,
)
from .._protocol.catalog import KEY_RELATIONS
from .._protocol.digest import SUM_MODULUS as _SUM_MOD
from .._protocol.digest import record_int as _record_int
from .._protocol.digest import record_total, sum_hex
from .._protocol.sealing import MAX_WRAPS, pack_sealed, parse_sealed, unpack_sealed
from .._util import atomic_write, ensure_private_dir, fsync_dir

__all__ = ["PACKED_FORM", "RELATIONS", "ChangeSet", "Hit", "Store", "StoreState"]

_log = logging.getLogger("intercept_sdk.store")

#: Relation of a matched key to its record; ``keys.rel`` is an index into this tuple
#: (the protocol's :data:`~intercept_sdk._protocol.catalog.KEY_RELATIONS`, order fixed).
RELATIONS = KEY_RELATIONS

_CURRENT = "CURRENT"
_DAMAGED = "DAMAGED"  # names a database file that failed verify()
_LOCK = "LOCK"
_DB_RE = re.compile(r"list-(\d{1,18})-([0-9a-f]{16})\.sqlite")
_BUILD_PREFIX = ".build-"
_APPLICATION_ID = 0x49435054  # "ICPT": a foreign SQLite file is refused
# The store schema: ``PRAGMA user_version`` of every list file (``application_id`` says
# the file is ours at all). Bumped whenever another SDK version could misread a file:
# 4 = schema 3 with canonical lines packed (body form 6, see the body codec below);
# 3 = site format 2 (sealed lines, record ids, tags; meta ``box`` and ``key_epoch``, no
# hash key; bodies raw, form 5); 2 = format-1 records, bodies in zstd forms 3-4 only,
# dictionary in meta ``zstd_dict``; 1 = files of the unreleased 0.1/0.2 development
# versions (deflate bodies and meta ``zdict`` possible).
# A file of another schema is never read: see _other_schema().
_SCHEMA_VERSION = 4
_POINTER_CHECK_S = 0.05  # a swapped CURRENT is noticed within 50 ms
_PARAM_CHUNK = 500  # well below SQLite's bound-parameter limit
_SMALL_LOOKUP = 16  # lookup() with more keys goes through the batch path
_BATCH_ROWS = 5000  # executemany batch while building
_MAX_RECORD = 1 << 20  # decompression cap: a tampered body cannot balloon
_ENTRY_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")

_SCHEMA = """
CREATE TABLE meta(k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID;
CREATE TABLE records(
    rid INTEGER PRIMARY KEY,
    entry_id TEXT UNIQUE NOT NULL,
    part INTEGER NOT NULL,          -- 0 public, 1 restricted
    body BLOB NOT NULL              -- _Codec.encode(record)
);
CREATE TABLE keys(
    k BLOB NOT NULL,                -- the 4-byte tag of an identifier secret (a wrap's)
    rid INTEGER NOT NULL,
    rel INTEGER NOT NULL,           -- 0: the relation is inside the wrap (format 2)
    PRIMARY KEY(k, rid, rel)
) WITHOUT ROWID;
"""

# ---------------------------------------------------------------------------------------
# Body codec
# ---------------------------------------------------------------------------------------
# Store schema 4 keeps each canonical sealed line in its packed form (form 6,
# ``sealing.pack_sealed``: the line's bytes without base64 and hex, which the cache rebuilds
# exactly when the line is needed), any other line as published (form 5). Packing saved
# ~150 bytes per record (460 -> 308 on the 1M benchmark list) and, on check()'s hit path,
# decoding the wraps and body (~6 us in the benchmark's interleaved loop). Schema 3 kept
# every line raw; schema 2 compressed format-1 records with zstd and a trained
# dictionary (decision 0008). Forms 0-4 belonged to files of other schemas, which are
# never read (see ``_check_file``): a body of any other form is corrupt.
_F_RAW = 5
_F_PACKED = 6
PACKED_FORM = _F_PACKED
"""The first byte of a packed stored record (:meth:`_Codec.sealed`; a line starts with ``{``)."""
_RAW_HEAD = bytes((_F_RAW,))
_PACKED_HEAD = bytes((_F_PACKED,))


class _Codec:
    """Encodes record bytes into a stored body and back, exactly (see the notes above).

    Stateless; kept as an object so a future schema can bring a per-file codec back
    without touching the callers. :class:`StoreCorrupted` for an undecodable body.
    """

    __slots__ = ()

    def encode(self, record: bytes, entry_id: str) -> bytes:
        """The stored body of ``record`` (whose record id is ``entry_id``)."""
        packed = pack_sealed(record)
        return _RAW_HEAD + record if packed is None else _PACKED_HEAD + packed

    def encode_parsed(self, record: bytes, entry_id: str) -> bytes:
        """:meth:`encode` of a record :func:`_parse_record` accepted (the build's path)."""
        packed = pack_sealed(record)
        return _RAW_HEAD + record if packed is None else _PACKED_HEAD + packed

    def decode(self, body: bytes, entry_id: str) -> bytes:
        """The exact record bytes of ``body``; :class:`StoreCorrupted` if undecodable."""
        form = body[:1]
        if form == _PACKED_HEAD:
            try:
                return unpack_sealed(body[1:])
            except FormatError:
                raise StoreCorrupted(f"stored record {entry_id} is malformed") from None
        if form != _RAW_HEAD or len(body) < 2:
            raise StoreCorrupted(f"stored record {entry_id} has an unknown body form")
        return body[1:]

    @staticmethod
    def sealed(body: bytes, entry_id: str) -> bytes:
        """What a lookup opens (:meth:`~intercept_sdk._client.lookup.Opener.open_lines`):
        the line of a raw body, the whole body (form byte included) of a packed one."""
        form = body[:1]
        if form == _PACKED_HEAD:
            return body
        if form != _RAW_HEAD or len(body) < 2:
            raise StoreCorrupted(f"stored record {entry_id} has an unknown body form")
        return body[1:]


_CODEC = _Codec()


# ---------------------------------------------------------------------------------------
# Records, states and digests
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreState:
    """The version a read was answered from, and what the store knows about it.

    ``state_sha256``/``state_sum``/``entries`` are the signed values of that version;
    ``manifest`` is the signed manifest envelope exactly as received (callers re-verify its
    signatures); ``box`` is this subscriber's sealed box of that version exactly as
    downloaded (the hash key of ``key_epoch`` is inside: the store never holds it in the
    clear); ``restricted_*`` describe this subscriber's restricted partition
    (``restricted_sha256`` is ``None`` when no restricted data was ever stored).
    """

    version: int
    entries: int
    state_sha256: str
    state_sum: str
    key_epoch: int
    box: bytes
    manifest: bytes
    applied_at: _dt.datetime
    restricted_sha256: str | None
    restricted_entries: int


@dataclass(frozen=True)
class ChangeSet:
    """Records that differ between two versions (public and restricted together).

    The sets hold record ids (32 hex digits), not entry ids: site format 2 names no entry
    on the site, and a record id links to an entry only for someone holding the key
    epoch's hash key (``TestPlatform.record_id`` gives it in tests). A new key epoch
    renames every record, so across a rotation everything is removed and added. To learn
    what changed for the people a unit cares about, re-check them (``watch()`` does).

    ``from_version`` is ``None`` when there was no readable previous version: every entry
    is then new, and the sets are left **empty** on purpose (a first sync of 10 million
    entries must not build a gigabyte of strings). Treat ``from_version is None`` as
    "everything changed". An entry moving between the public and the restricted
    partition is reported as changed.
    """

    from_version: int | None
    to_version: int
    added: frozenset[str]
    changed: frozenset[str]
    removed: frozenset[str]


class Hit(NamedTuple):
    """One listed record matched by one key.

    From the store, ``record`` is the stored sealed record as a lookup opens it
    (:meth:`_Codec.sealed`: the signed line, or its packed form); from the lookup's
    opener, the record's plaintext.

    A named tuple, not a frozen dataclass: a hit is built once or twice per check() that
    hits, and a frozen dataclass's per-field ``object.__setattr__`` cost ~1 us each time.
    """

    entry_id: str
    relation: str
    key: bytes
    record: bytes


# The fast path of _parse_record: pydantic-core checks, in Rust, the fields the store
# relies on (the patterns are anchored, as ``fullmatch`` is: in Rust's regex ``$`` is the
# end of the text, never before a final newline as in Python's ``re``; a test checks it);
# a line it rejects goes through the strict protocol parser, which words a precise error.
# The body and wraps are checked in full (base64, sizes) by the lookup that opens them.
_RidHex = Annotated[str, pydantic.StringConstraints(pattern=r"^[0-9a-f]{32}$")]
_TagHex = Annotated[str, pydantic.StringConstraints(pattern=r"^[0-9a-f]{8}$")]


@pydantic.with_config(pydantic.ConfigDict(extra="forbid"))
class _SealedView(TypedDict):
    b: str
    r: _RidHex
    w: Annotated[list[tuple[_TagHex, str]], pydantic.Field(min_length=1, max_length=MAX_WRAPS)]


_VIEW: Callable[[bytes], Any] | None = None


def _sealed_view(record: bytes) -> _SealedView | None:
    """The fields the store reads, checked, or ``None`` if ``record`` is not of that shape.

    One pass in pydantic-core over the whole JSON text (every byte is still parsed and
    checked: JSON syntax, UTF-8, no raw control characters), building Python objects
    only for these fields.
    """
    global _VIEW
    if _VIEW is None:
        _VIEW = pydantic.TypeAdapter(_SealedView).validator.validate_json
    try:
        view: _SealedView = _VIEW(record)
    except pydantic.ValidationError:
        return None
    return view


def _parse_record(record: bytes) -> tuple[str, list[tuple[bytes, int]], bool]:
    """``(record id hex, [(tag, 0)], False)`` of one sealed line; :class:`FormatError` if bad.

    A sealed line (site format 2) says nothing of the entry: the store indexes its record
    id and the 4-byte tags of its wraps (relation 0: which relation a wrap carries is
    inside it). Which partition a line belongs to is where it came from (snapshot or
    delta: public; the box: restricted), so the last member is always False.
    A line that parses has no raw bytes 0x00-0x1f (JSON forbids them), so none of the
    codec's marker bytes either.
    """
    if b"\n" in record:
        raise FormatError("a record must be one line")
    view = _sealed_view(record)
    if view is None:
        parse_sealed(record)  # raises the precise FormatError
        raise FormatError("a sealed record is malformed")  # pragma: no cover
    keys = [(bytes.fromhex(t), 0) for t, _ in view["w"]]
    if len(keys) > 1:
        keys = list(dict.fromkeys(keys))  # one identifier in two relations: one index row
    return view["r"], keys, False


class _Digest:
    """Streaming digests of one partition, exactly as the publisher computes them."""

    __slots__ = ("count", "last_id", "sha", "total")

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.total = 0
        self.count = 0
        self.last_id: str | None = None

    def add(self, entry_id: str, record: bytes) -> None:
        if self.last_id is not None and entry_id <= self.last_id:
            raise FormatError(f"records are not in strictly increasing entry_id order: {entry_id}")
        self.last_id = entry_id
        self.sha.update(record)
        self.sha.update(b"\n")
        self.total += _record_int(record)
        self.count += 1

    @property
    def sum_hex(self) -> str:
        return sum_hex(self.total)


def _key_int(k: bytes, rid: int, rel: int) -> int:
    return int.from_bytes(
        hashlib.sha256(k + rid.to_bytes(8, "big") + bytes((rel,))).digest(), "big"
    )


def _check_hex64(value: str, what: str) -> str:
    if not isinstance(value, str) or not _HEX64_RE.fullmatch(value.lower()):
        raise FormatError(f"{what} must be 64 hex digits")
    return value.lower()


# ---------------------------------------------------------------------------------------
# SQLite plumbing
# ---------------------------------------------------------------------------------------
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def _translate(exc: sqlite3.Error, what: str) -> InterceptError:
    """The SDK exception for a sqlite3 error: corrupt/foreign file, bad data, or other."""
    if isinstance(exc, sqlite3.IntegrityError):
        return FormatError(f"{what}: an entry_id occurs twice ({exc})")
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _CORRUPT_CODES:
        return StoreCorrupted(f"{what}: the database file is corrupt ({exc})")
    if type(exc) is sqlite3.DatabaseError:
        return StoreCorrupted(f"{what}: {exc}")
    return StoreError(f"{what}: {exc}")


@contextlib.contextmanager
def _sqlite_errors(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _translate(exc, what) from exc


def _connect(path: Path, *, mode: str, timeout: float = 10.0) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode; ``mode`` ro/rw never creates a file."""
    return sqlite3.connect(
        f"file:{quote(str(path))}?mode={mode}",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
        timeout=timeout,
        cached_statements=64,
    )


def _other_schema(schema: object) -> NeverSynced:
    """The error for a list file of another store schema (an older or newer SDK's).

    :class:`NeverSynced`, not :class:`StoreCorrupted`: nothing is wrong with the file and
    nobody tampered with it; this SDK version just holds no list it can read, which is
    exactly the state before a first sync, and is repaired the same way: the next sync
    stores the snapshot (a delta needs a readable base), while ``applied_version`` keeps
    bounding rollback. It fails closed like StoreCorrupted (no decision is made), but it
    does not mark the file as damaged, nor make ``state()``/``status()`` report tampering
    after an ordinary SDK upgrade or downgrade.
    """
    return NeverSynced(
        f"the cached list was written by another SDK version (store schema {schema}; this "
        f"version reads schema {_SCHEMA_VERSION}): it is not read, and the next sync "
        "rebuilds it from the snapshot"
    )


def _check_file(conn: sqlite3.Connection, token: str) -> _Codec:
    """Refuse a file that is not ours, of another schema, or not the one named.

    Returns the file's codec. :class:`StoreCorrupted` for a foreign or malformed file,
    :class:`NeverSynced` (see :func:`_other_schema`) for a list file of another schema,
    which is refused before anything else in it is read.
    """
    app = conn.execute("PRAGMA application_id").fetchone()[0]
    if app != _APPLICATION_ID:
        raise StoreCorrupted("the database file is not an intercept-sdk list store")
    schema = conn.execute("PRAGMA user_version").fetchone()[0]
    if schema != _SCHEMA_VERSION:
        raise _other_schema(schema)
    row = conn.execute("SELECT v FROM meta WHERE k = 'file_id'").fetchone()
    if row is None or row[0] != token:
        raise StoreCorrupted("the database file is not the one CURRENT names")
    return _CODEC


def _read_state(conn: sqlite3.Connection) -> tuple[int, StoreState]:
    """``(generation, state)`` from the meta table, read in one statement.

    The generation counts committed writes to one file (a delta, a restricted
    replacement) and so identifies a state exactly, even when the version is equal.
    """
    meta = dict(conn.execute("SELECT k, v FROM meta").fetchall())
    try:
        rsha = meta.get("restricted_sha256")
        return int(meta["gen"]), StoreState(
            version=int(meta["version"]),
            entries=int(meta["entries"]),
            state_sha256=str(meta["state_sha256"]),
            state_sum=str(meta["state_sum"]),
            key_epoch=int(meta["key_epoch"]),
            box=bytes(meta["box"]),
            manifest=bytes(meta["manifest"]),
            applied_at=_dt.datetime.fromisoformat(str(meta["applied_at"])),
            restricted_sha256=None if rsha is None else str(rsha),
            restricted_entries=int(meta.get("restricted_entries", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreCorrupted(f"store metadata is incomplete or malformed: {exc!r}") from None


def _write_meta(conn: sqlite3.Connection, values: dict[str, object]) -> None:
    conn.executemany("INSERT OR REPLACE INTO meta(k, v) VALUES (?, ?)", list(values.items()))


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Fork safety: a connection must never be used on both sides of fork(). Readers remember
# the fork generation they were opened in; the child re-opens. Inherited connections are
# parked here rather than closed or collected (closing could disturb the parent's locks).
_FORK_GEN = 0
_ORPHANED: list[sqlite3.Connection] = []
_STORES: weakref.WeakSet[Store] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _FORK_GEN
    _FORK_GEN += 1
    for store in list(_STORES):
        store._lock = threading.Lock()  # another thread may have held it at fork time


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Reader:
    """One thread's read connection to one database file, with its cached state."""

    __slots__ = ("__weakref__", "codec", "conn", "fork_gen", "name", "state", "state_gen")

    def __init__(self, conn: sqlite3.Connection, codec: _Codec, name: str) -> None:
        self.conn = conn
        self.codec = codec
        self.name = name
        self.fork_gen = _FORK_GEN
        self.state: StoreState | None = None
        self.state_gen = -1

    def release(self) -> None:
        if self.fork_gen == _FORK_GEN:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
        else:
            _ORPHANED.append(self.conn)


def _lookup_sql(n: int) -> str:
    # One statement = one read transaction: the generation and the hits come from the
    # same snapshot of the file. The LEFT JOINs keep the meta row when nothing matches.
    return (
        "SELECT m.v, k.k, k.rel, r.entry_id, r.body FROM meta AS m "
        f"LEFT JOIN keys AS k ON k.k IN ({','.join('?' * n)}) "
        "LEFT JOIN records AS r ON r.rid = k.rid WHERE m.k = 'gen'"
    )


_LOOKUP_SQL = [_lookup_sql(n) for n in range(1, _SMALL_LOOKUP + 1)]
# Store.lines_of: the same read for one key, only the columns it returns (fewer to copy)
_LINES_SQL = (
    "SELECT m.v, r.body FROM meta AS m LEFT JOIN keys AS k ON k.k = ? "
    "LEFT JOIN records AS r ON r.rid = k.rid WHERE m.k = 'gen'"
)
_GEN_SQL = "SELECT v FROM meta WHERE k = 'gen'"
_BATCH_SQL = (
    "SELECT k.k, k.rel, r.entry_id, r.body FROM keys AS k JOIN records AS r ON r.rid = k.rid "
    f"WHERE k.k IN ({','.join('?' * _PARAM_CHUNK)})"
)
_RECORDS_SQL = (
    f"SELECT entry_id, body FROM records WHERE entry_id IN ({','.join('?' * _PARAM_CHUNK)})"
)


def _padded(chunk: list[Any]) -> list[Any]:
    """``chunk`` padded to _PARAM_CHUNK values (IN ignores repeats): one cached statement."""
    if len(chunk) < _PARAM_CHUNK:
        return chunk + [chunk[0]] * (_PARAM_CHUNK - len(chunk))
    return chunk


# ---------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------


class Store:
    """The local copy of the signed list in ``cache_dir`` (see the module docstring).

    Thread-safe and fork-safe: each thread of each process reads through its own SQLite
    connection (re-opened after ``fork`` and after ``CURRENT`` moves), and writers in any
    process are serialised by an ``flock`` on ``cache_dir/LOCK``. ``readonly=True`` opens
    database files read-only and refuses every write; it does not create the directory.

    Every ``sqlite3`` error is translated here: :class:`StoreCorrupted` for a corrupt or
    foreign file, :class:`FormatError` for data that breaks a constraint, and
    :class:`StoreError` otherwise.
    """

    def __init__(self, cache_dir: Path, *, readonly: bool = False) -> None:
        self._dir = Path(cache_dir)
        self._readonly = readonly
        if not readonly:
            try:
                ensure_private_dir(self._dir)
            except OSError as exc:
                raise StoreError(f"cannot create the cache directory {self._dir}: {exc}") from None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._closed = False
        self._current: str | None = None
        self._current_sig: tuple[int, int, int] | None = None
        self._checked_at = -1.0
        self._other_schema_logged: str | None = None  # a file of another schema, warned of
        _STORES.add(self)

    @property
    def cache_dir(self) -> Path:
        """The directory this store lives in."""
        return self._dir

    # -- the CURRENT pointer ------------------------------------------------------------
    def _read_pointer(self) -> str | None:
        """Name of the current database file; ``None`` if nothing was ever stored."""
        try:
            raw = (self._dir / _CURRENT).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self._dir / _CURRENT}: {exc}") from None
        name = raw.decode("ascii", "replace").strip()
        if not _DB_RE.fullmatch(name):  # also refuses paths: only a bare file name passes
            raise StoreCorrupted("CURRENT does not name a list database file")
        return name

    def _refresh_pointer(self, now: float) -> None:
        try:
            st = os.stat(self._dir / _CURRENT)
            sig: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            sig = None
        except OSError as exc:
            raise StoreError(f"cannot stat {self._dir / _CURRENT}: {exc}") from None
        if sig is None or sig != self._current_sig:
            name = None if sig is None else self._read_pointer()
            with self._lock:
                self._current, self._current_sig = name, sig
        self._checked_at = now

    def _reader(self) -> _Reader:
        """This thread's reader of the current file (re-opened after a swap or fork)."""
        if self._closed:
            raise StoreError("the store is closed")
        now = time.monotonic()
        if now - self._checked_at > _POINTER_CHECK_S:
            self._refresh_pointer(now)
        name = self._current
        if name is None:
            raise NeverSynced("no verified list version has been stored yet")
        rd: _Reader | None = getattr(self._local, "reader", None)
        if rd is not None and rd.name == name and rd.fork_gen == _FORK_GEN:
            return rd
        if rd is not None:
            self._local.reader = None
            rd.release()
        return self._open_reader(name)

    def _open_reader(self, name: str) -> _Reader:
        for _attempt in range(3):
            match = _DB_RE.fullmatch(name)
            assert match is not None
            path = self._dir / name
            if not path.exists():
                # CURRENT may have moved on between reading it and opening the file.
                self._refresh_pointer(time.monotonic())
                if self._current is None:
                    raise NeverSynced("no verified list version has been stored yet")
                if self._current != name:
                    name = self._current
                    continue
                raise StoreCorrupted(f"CURRENT names {name}, which does not exist")
            conn: sqlite3.Connection | None = None
            try:
                conn = _connect(path, mode="ro" if self._readonly else "rw", timeout=5.0)
                conn.execute("PRAGMA query_only = ON")
                conn.execute("PRAGMA mmap_size = 268435456")
                codec = _check_file(conn, match.group(2))
            except sqlite3.Error as exc:
                if conn is not None:
                    conn.close()
                raise _translate(exc, f"cannot open {name}") from exc
            except BaseException as exc:
                if conn is not None:
                    conn.close()
                if isinstance(exc, NeverSynced):  # the file is of another schema
                    self._log_other_schema(name, exc)
                raise
            rd = _Reader(conn, codec, name)
            self._local.reader = rd
            with self._lock:
                self._readers.add(rd)
            _log.debug("opened %s for reading", name)
            return rd
        raise StoreCorrupted("CURRENT keeps changing; cannot open the list")

    def _log_other_schema(self, name: str, exc: NeverSynced) -> None:
        """Warn once per file (not on every read until the next sync replaces it)."""
        if self._other_schema_logged != name:
            self._other_schema_logged = name
            _log.warning("%s: %s", name, exc)

    @staticmethod
    def _state_for(rd: _Reader, gen: object) -> StoreState | None:
        """The state of generation ``gen`` (cached per reader); ``None`` if it moved on."""
        if gen == rd.state_gen and rd.state is not None:
            return rd.state
        rd.state_gen, rd.state = _read_state(rd.conn)
        return rd.state if rd.state_gen == gen else None

    # -- reads --------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read ``CURRENT`` now instead of within the next 50 ms.

        Readers re-check the pointer at most every 50 ms (a ``stat`` per check would cost
        the hot path). A caller that has just seen evidence that the pointer moved (a state
        older than one already applied: another process may have committed a newer
        version a moment ago) calls this before concluding anything.
        """
        if self._closed:
            raise StoreError("the store is closed")
        self._refresh_pointer(time.monotonic())

    def state(self) -> StoreState | None:
        """The current version's state, or ``None`` if nothing was ever stored.

        Also ``None`` when the current file is of another store schema (an older or newer
        SDK's): this version holds no list it can read until the next sync replaces it.
        """
        try:
            rd = self._reader()
        except NeverSynced:
            return None
        with _sqlite_errors("cannot read the store state"):
            rd.state_gen, rd.state = _read_state(rd.conn)
        return rd.state

    def lookup(self, keys: Sequence[bytes]) -> tuple[StoreState, list[Hit]]:
        """All hits for ``keys`` (16-byte keys) and the state they belong to, in one read.

        The hot path is one prepared statement reading the state generation and the hits
        together, so the answer is consistent even while another process applies a delta.
        Raises :class:`NeverSynced` when no version was ever stored.
        """
        n = len(keys)
        if n > _SMALL_LOOKUP:
            state, by_key = self.lookup_batch(keys)
            return state, [h for k in dict.fromkeys(keys) for h in by_key.get(k, ())]
        rd = self._reader()
        try:
            if n:
                rows = rd.conn.execute(_LOOKUP_SQL[n - 1], tuple(keys)).fetchall()
            else:
                rows = [(*row, None, None, None, None) for row in rd.conn.execute(_GEN_SQL)]
            if not rows:
                raise StoreCorrupted("store metadata has no generation")
            st = self._state_for(rd, rows[0][0])
        except sqlite3.Error as exc:
            raise _translate(exc, "lookup failed") from exc
        if st is None:  # a write committed between the two statements: redo as one txn
            return self._lookup_txn(rd, keys)
        if rows[0][1] is None:
            return st, []
        return st, _hits(rd.codec, rows)

    def lines_of(self, key: bytes) -> tuple[StoreState, list[bytes]]:
        """The stored sealed records the index lists under one 4-byte ``key`` (as a
        lookup opens them: :meth:`_Codec.sealed`), and the state they belong to, in one
        read: :meth:`lookup` of one key without :class:`Hit` objects (``check()`` of a
        Person or an Entity without officers, whose opener makes its own).
        """
        rd = self._reader()
        try:
            rows = rd.conn.execute(_LINES_SQL, (key,)).fetchall()
            if not rows:
                raise StoreCorrupted("store metadata has no generation")
            gen = rows[0][0]
            st = rd.state if gen == rd.state_gen else self._state_for(rd, gen)
        except sqlite3.Error as exc:
            raise _translate(exc, "lookup failed") from exc
        if st is None:  # a write committed between the two statements: redo as one txn
            st, hits = self._lookup_txn(rd, [key])
            return st, [h.record for h in hits]
        if len(rows) == 1:
            body = rows[0][1]
            if body is None:  # a miss
                return st, []
            if body[:1] == _PACKED_HEAD:
                return st, [body]
        # (an index row without its record is skipped: verify() reports it)
        return st, [_Codec.sealed(r[1], "(by tag)") for r in rows if r[1] is not None]

    def _lookup_txn(self, rd: _Reader, keys: Sequence[bytes]) -> tuple[StoreState, list[Hit]]:
        hits: list[Hit] = []
        with _sqlite_errors("lookup failed"):
            rd.conn.execute("BEGIN")
            try:
                rd.state_gen, st = _read_state(rd.conn)
                rd.state = st
                if keys:
                    rows = rd.conn.execute(_LOOKUP_SQL[len(keys) - 1], tuple(keys)).fetchall()
                    if rows and rows[0][1] is not None:
                        hits = _hits(rd.codec, rows)
            finally:
                rd.conn.execute("COMMIT")
        return st, hits

    def lookup_batch(self, keys: Sequence[bytes]) -> tuple[StoreState, dict[bytes, list[Hit]]]:
        """Hits for many keys (screening a customer base), all in one read transaction.

        Keys go in chunks of 500 through one prepared statement; the result maps each key
        that matched to its hits (keys without a hit are absent).
        """
        rd = self._reader()
        conn, codec = rd.conn, rd.codec
        out: dict[bytes, list[Hit]] = {}
        unique = sorted(set(keys))  # in index order: neighbouring probes share pages (+40 %)
        decoded: dict[str, bytes] = {}
        with _sqlite_errors("batch lookup failed"):
            conn.execute("BEGIN")
            try:
                row = conn.execute(_GEN_SQL).fetchone()
                if row is None:
                    raise StoreCorrupted("store metadata has no generation")
                st = self._state_for(rd, row[0])
                if st is None:  # pragma: no cover - both reads are in one transaction
                    raise StoreError("the store state changed inside a read transaction")
                for i in range(0, len(unique), _PARAM_CHUNK):
                    for k, rel, eid, body in conn.execute(
                        _BATCH_SQL, _padded(unique[i : i + _PARAM_CHUNK])
                    ):
                        record = decoded.get(eid)
                        if record is None:
                            record = decoded[eid] = codec.sealed(body, eid)
                        out.setdefault(k, []).append(Hit(eid, RELATIONS[rel], k, record))
            finally:
                conn.execute("COMMIT")
        return st, out

    def get_records(self, entry_ids: Iterable[str]) -> dict[str, bytes]:
        """Exact record bytes of those given entries that exist (one read transaction)."""
        rd = self._reader()
        ids = list(dict.fromkeys(entry_ids))
        out: dict[str, bytes] = {}
        with _sqlite_errors("reading records failed"):
            rd.conn.execute("BEGIN")
            try:
                for i in range(0, len(ids), _PARAM_CHUNK):
                    for eid, body in rd.conn.execute(
                        _RECORDS_SQL, _padded(ids[i : i + _PARAM_CHUNK])
                    ):
                        out[eid] = rd.codec.decode(body, eid)
            finally:
                rd.conn.execute("COMMIT")
        return out

    # -- writes -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        """Serialise writers of this directory across threads and processes (flock)."""
        if self._readonly:
            raise StoreError("the store was opened read-only")
        if self._closed:
            raise StoreError("the store is closed")
        try:
            ensure_private_dir(self._dir)
            fd = os.open(self._dir / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot take the store lock: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock
            self._checked_at = -1.0  # this process notices its own swap at once

    def _cleanup(self, keep: set[str]) -> None:
        """Delete dead builds, temp files and database files not in ``keep`` (locked).

        Best effort: a file that cannot be deleted now is retried at the next write.
        Readers that still have a deleted file open keep reading it until they notice
        the new ``CURRENT`` (POSIX unlink semantics), so deleting never tears a read.
        """
        try:
            entries = list(os.scandir(self._dir))
        except OSError as exc:
            _log.warning("cannot list %s for cleanup: %s", self._dir, exc)
            return
        for entry in entries:
            name = entry.name
            base = name
            for suffix in ("-wal", "-shm", "-journal"):
                base = base.removesuffix(suffix)
            if (
                name.startswith(_BUILD_PREFIX)
                or (name.startswith(f".{_CURRENT}.") and name.endswith(".tmp"))
                or (_DB_RE.fullmatch(base) is not None and base not in keep)
            ):
                try:
                    os.unlink(entry.path)
                    _log.debug("deleted %s", name)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    _log.warning("cannot delete %s: %s", entry.path, exc)

    def write_snapshot(
        self,
        version: int,
        records: Iterable[bytes],
        *,
        manifest: bytes,
        box: bytes,
        key_epoch: int,
        expected_sha256: str,
        expected_sum: str,
        restricted: Iterable[bytes] | None = None,
        restricted_sha256: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ChangeSet:
        """Build ``version`` from a full snapshot in a new file, then make it current.

        ``records`` are the public sealed records in record id order (as in the snapshot
        file); ``box`` the subscriber's sealed box of the version, kept as it is.
        Both signed digests (``state.sha256`` and ``state.sum``) are checked before
        anything is swapped: on a mismatch the new file is deleted, the previous version
        stays in force, and :class:`DigestMismatch` is raised. ``restricted`` replaces the
        restricted partition (checked against ``restricted_sha256`` when given);
        ``None`` carries the previous partition over unchanged. ``progress`` is called
        with the number of public records stored so far. The returned ChangeSet compares
        with the previous version, if one was readable.
        """
        expected_sha256 = _check_hex64(expected_sha256, "expected_sha256")
        expected_sum = _check_hex64(expected_sum, "expected_sum")
        with self._write_lock():
            try:
                prev = self._read_pointer()
            except StoreCorrupted:
                prev = None  # a fresh snapshot is exactly how a broken store is repaired
            self._cleanup({prev} if prev else set())
            token = secrets.token_hex(8)
            final = f"list-{version}-{token}.sqlite"
            build = self._dir / f"{_BUILD_PREFIX}{version}-{token}.sqlite"
            old, keep_prev = self._open_previous(prev)
            try:
                changes = self._build(
                    build,
                    token=token,
                    version=version,
                    records=records,
                    old=old,
                    manifest=manifest,
                    box=box,
                    key_epoch=key_epoch,
                    expected_sha256=expected_sha256,
                    expected_sum=expected_sum,
                    restricted=restricted,
                    restricted_sha256=restricted_sha256,
                    progress=progress,
                )
                try:
                    _fsync_file(build)
                    os.replace(build, self._dir / final)
                    fsync_dir(self._dir)
                    atomic_write(self._dir / _CURRENT, final.encode("ascii") + b"\n", mode=0o600)
                except OSError as exc:
                    raise StoreError(f"cannot make version {version} current: {exc}") from None
            except BaseException:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{build}{suffix}")
                raise
            # The previous file stays next to the new one, unless it is of another schema.
            self._cleanup({final, prev} if prev and keep_prev else {final})
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._dir / _DAMAGED)  # it named a file no longer current
        _log.info(
            "list version %d stored from a snapshot (%s): %d added, %d changed, %d removed",
            version,
            final,
            len(changes.added),
            len(changes.changed),
            len(changes.removed),
        )
        return changes

    def _build(
        self,
        path: Path,
        *,
        token: str,
        version: int,
        records: Iterable[bytes],
        old: _OldFile | None,
        manifest: bytes,
        box: bytes,
        key_epoch: int,
        expected_sha256: str,
        expected_sum: str,
        restricted: Iterable[bytes] | None,
        restricted_sha256: str | None,
        progress: Callable[[int], None] | None,
    ) -> ChangeSet:
        """Build the new file at ``path`` (see :meth:`write_snapshot`); closes ``old``."""
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as exc:
            if old is not None:
                old.close()
            raise StoreError(f"cannot create {path}: {exc}") from None
        try:
            conn = _connect(path, mode="rw")
        except sqlite3.Error as exc:
            if old is not None:
                old.close()
            raise _translate(exc, "cannot create the snapshot database") from exc
        try:
            with _sqlite_errors(f"building the database of version {version} failed"):
                # The file is not referenced until CURRENT names it, so a crash here only
                # leaves garbage to delete: no journal, no syncs until the final fsync.
                conn.execute("PRAGMA page_size = 8192")  # ~1 % smaller than 4096, 1 level less
                conn.execute("PRAGMA journal_mode = OFF")
                conn.execute("PRAGMA synchronous = OFF")
                # 32 MiB: rows are appended in rid order and keys inserted sorted, so a bigger
                # cache buys no time (128 MiB measured the same) but sets the peak RSS.
                conn.execute("PRAGMA cache_size = -32768")
                conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                conn.executescript(_SCHEMA)
                # Keys go to a staging table and are inserted sorted at the end: a
                # B-tree filled in key order has full pages (~25 % smaller, faster).
                conn.execute("CREATE TEMP TABLE stage(k BLOB, rid INTEGER, rel INTEGER)")
                conn.execute("BEGIN")
                codec = _CODEC
                diff = _Diff(old, codec)
                pub = _build_public(conn, codec, diff, iter(records), progress)
                rid = pub.count
                diff.finish_public()
                if progress is not None:
                    progress(rid)
                if pub.sha.hexdigest() != expected_sha256 or pub.sum_hex != expected_sum:
                    raise DigestMismatch(
                        f"snapshot {version}: the {pub.count} records received do not match "
                        "the signed state digest"
                    )
                rmeta = _build_restricted(
                    conn,
                    codec,
                    old=old,
                    restricted=restricted,
                    restricted_sha256=restricted_sha256,
                    last_rid=rid,
                    diff=diff,
                    version=version,
                )
                conn.execute(
                    "INSERT INTO keys(k, rid, rel) "
                    "SELECT k, rid, rel FROM temp.stage ORDER BY k, rid, rel"
                )
                conn.execute("DROP TABLE temp.stage")
                _write_meta(
                    conn,
                    {
                        "version": version,
                        "entries": pub.count,
                        "state_sha256": expected_sha256,
                        "state_sum": expected_sum,
                        "key_epoch": key_epoch,
                        "box": bytes(box),
                        "manifest": bytes(manifest),
                        "applied_at": _now_iso(),
                        "file_id": token,
                        "gen": 1,
                        **rmeta,
                    },
                )
                conn.execute("COMMIT")
                conn.execute("PRAGMA journal_mode = WAL")  # deltas then apply in place
            return diff.result(version)
        finally:
            conn.close()
            if old is not None:
                old.close()

    def _open_previous(self, prev: str | None) -> tuple[_OldFile | None, bool]:
        """``(file, keep)``: the previous version's file, read for the ChangeSet and its
        dictionary (``None`` if unreadable), and whether to keep it next to the new one.

        A file of another schema is not kept: nothing of this version can read it. An
        unreadable file of this schema is (it is the evidence of what went wrong).
        """
        if prev is None:
            return None, False
        match = _DB_RE.fullmatch(prev)
        assert match is not None
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(self._dir / prev, mode="ro")
            conn.execute("BEGIN")
            codec = _check_file(conn, match.group(2))
            _gen, st = _read_state(conn)
        except NeverSynced as exc:  # another schema (_check_file)
            if conn is not None:
                conn.close()
            _log.warning("%s is replaced: %s", prev, exc)
            return None, False
        except (sqlite3.Error, StoreError) as exc:
            if conn is not None:
                conn.close()
            _log.warning(
                "previous list file %s is unreadable (%s): all entries count as new", prev, exc
            )
            return None, True
        return _OldFile(conn, codec, st), True

    def apply_delta(
        self,
        from_version: int,
        to_version: int,
        ops: Iterable[tuple[str, bytes]],
        *,
        manifest: bytes,
        box: bytes,
        key_epoch: int,
        expected_sum: str,
        expected_entries: int,
        expected_sha256: str,
        restricted: Iterable[bytes] | None = None,
        restricted_sha256: str | None = None,
    ) -> ChangeSet:
        """Apply the delta ``from_version -> to_version`` in place, atomically.

        A delta never crosses a key epoch (its record ids and tags are of one hash key):
        :class:`BaseVersionMismatch` if the local version is of another ``key_epoch``.
        ``box`` is the subscriber's sealed box of ``to_version``, kept as it is.

        ``ops`` are ``("P", record)`` (put: add or replace) and ``("D", entry_id)``
        (remove). The whole delta is one SQLite transaction that commits only if the
        resulting ``state.sum`` and entry count equal the signed ``expected_sum`` and
        ``expected_entries``; otherwise it is rolled back, nothing changed, and
        :class:`DigestMismatch` is raised (also when a delete names an entry the base does
        not hold). :class:`BaseVersionMismatch` if the local version is not
        ``from_version`` (or there is none). ``expected_sha256`` (the manifest's
        ``state.sha256``) cannot be checked without a full scan: it is stored and
        :meth:`verify` checks it. ``restricted`` replaces the restricted partition in the
        same transaction (``None`` keeps it).
        """
        expected_sum = _check_hex64(expected_sum, "expected_sum")
        expected_sha256 = _check_hex64(expected_sha256, "expected_sha256")
        if to_version <= from_version:
            raise FormatError(f"a delta must go forward, not {from_version} -> {to_version}")
        with self._write_lock():
            name = self._read_pointer()
            if name is None:
                raise BaseVersionMismatch(
                    f"delta from version {from_version}, but no version is stored locally"
                )
            conn, codec = self._open_writer(name)
            try:
                with _sqlite_errors(f"applying delta {from_version}->{to_version} failed"):
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        changes = _apply_delta(
                            conn,
                            codec,
                            from_version,
                            to_version,
                            ops,
                            manifest=manifest,
                            box=box,
                            key_epoch=key_epoch,
                            expected_sum=expected_sum,
                            expected_entries=expected_entries,
                            expected_sha256=expected_sha256,
                            restricted=restricted,
                            restricted_sha256=restricted_sha256,
                        )
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                _shrink_wal(conn)
            finally:
                conn.close()
        _log.info(
            "list version %d stored from delta %d->%d: %d added, %d changed, %d removed",
            to_version,
            from_version,
            to_version,
            len(changes.added),
            len(changes.changed),
            len(changes.removed),
        )
        return changes

    def replace_restricted(
        self, version: int, records: Iterable[bytes], *, restricted_sha256: str | None
    ) -> ChangeSet:
        """Replace only the restricted partition of the current ``version``, atomically.

        For a subscriber's restricted box fetched after the public data of ``version``
        was stored. The records must be in entry_id order; :class:`DigestMismatch` if
        they differ from ``restricted_sha256`` (nothing changed), and
        :class:`BaseVersionMismatch` if the local version is another one.
        """
        with self._write_lock():
            name = self._read_pointer()
            if name is None:
                raise BaseVersionMismatch(f"restricted data of version {version}: none stored")
            conn, codec = self._open_writer(name)
            try:
                with _sqlite_errors("replacing the restricted records failed"):
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        gen, st = _read_state(conn)
                        if st.version != version:
                            raise BaseVersionMismatch(
                                f"restricted data of version {version}, but the local "
                                f"version is {st.version}"
                            )
                        before: dict[str, int | None] = {}
                        after: dict[str, int | None] = {}
                        rmeta = _replace_restricted(
                            conn,
                            codec,
                            records=records,
                            restricted_sha256=restricted_sha256,
                            before=before,
                            after=after,
                            version=version,
                        )
                        _write_meta(conn, {"gen": gen + 1, **rmeta})
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                _shrink_wal(conn)
            finally:
                conn.close()
        return _changes(version, version, before, after)

    def _open_writer(self, name: str) -> tuple[sqlite3.Connection, _Codec]:
        """A write connection to the current file ``name``, checked before any change.

        :class:`BaseVersionMismatch` for a file of another schema: like no version at
        all, it is no base to change in place (the caller's snapshot replaces it).
        """
        match = _DB_RE.fullmatch(name)
        assert match is not None
        path = self._dir / name
        if not path.exists():
            raise StoreCorrupted(f"CURRENT names {name}, which does not exist")
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(path, mode="rw", timeout=60.0)
            codec = _check_file(conn, match.group(2))
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise _translate(exc, f"cannot open {name} for writing") from exc
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, NeverSynced):
                raise BaseVersionMismatch(f"no list this version can change: {exc}") from None
            raise
        return conn, codec

    # -- verification ---------------------------------------------------------------------
    def verify(self) -> StoreState:
        """Re-check the whole stored state against its signed digests (a full scan).

        In one read transaction: recomputes the public ``state.sha256`` (entry_id order),
        ``state.sum`` and entry count, the restricted partition's SHA-256 and count, and
        the key index from every record; checks that each record's entry_id and partition
        match its row, that ``CURRENT`` names an existing file of this store, and, when
        the stored manifest is a readable envelope, that its version, hash key and state
        equal the stored ones (verifying its *signature* is the caller's job). Raises
        :class:`StoreCorrupted` on any difference, :class:`NeverSynced` if nothing was
        ever stored or the current file is of another store schema.
        """
        name = self._read_pointer()
        if name is None:
            raise NeverSynced("no verified list version has been stored yet")
        match = _DB_RE.fullmatch(name)
        assert match is not None
        path = self._dir / name
        if not path.exists():
            raise StoreCorrupted(f"CURRENT names {name}, which does not exist")
        try:
            conn = _connect(path, mode="ro" if self._readonly else "rw", timeout=30.0)
        except sqlite3.Error as exc:
            raise _translate(exc, f"cannot open {name}") from exc
        try:
            try:
                with _sqlite_errors(f"verifying {name} failed"):
                    conn.execute("PRAGMA query_only = ON")
                    conn.execute("BEGIN")
                    try:
                        codec = _check_file(conn, match.group(2))
                        _gen, st = _read_state(conn)
                        _verify_scan(conn, codec, st)
                    finally:
                        conn.execute("COMMIT")
            finally:
                conn.close()
            _verify_manifest(st)
        except StoreCorrupted:
            self._mark_damaged(name)
            raise
        _log.info("list version %d verified: %d entries", st.version, st.entries)
        return st

    def _mark_damaged(self, name: str) -> None:
        """Remember that ``name`` failed verification, so the next sync replaces it.

        Without this, a sync at the same version has nothing to do and would keep the
        damaged file. Best effort (a read-only store cannot write it); the marker names
        the file, so it stops applying as soon as a new snapshot is current.
        """
        if self._readonly:
            return
        try:
            atomic_write(self._dir / _DAMAGED, name.encode("ascii") + b"\n", mode=0o600)
        except OSError as exc:
            _log.warning("cannot record that %s failed verification: %s", name, exc)
        else:
            _log.warning("%s failed verification: the next sync replaces it", name)

    def damaged(self) -> bool:
        """Whether the current file failed :meth:`verify` (the next sync must replace it)."""
        try:
            marked = (self._dir / _DAMAGED).read_text("ascii").strip()
            current = self._read_pointer()
        except (OSError, UnicodeError, StoreCorrupted):
            return False
        return current is not None and marked == current

    def close(self) -> None:
        """Close every connection this store opened in this process; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            readers = list(self._readers)
            self._readers = weakref.WeakSet()
        for rd in readers:
            rd.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self._dir)!r}, readonly={self._readonly})"


# ---------------------------------------------------------------------------------------
# Write helpers
# ---------------------------------------------------------------------------------------


class _OldFile:
    """The previous version's file during a snapshot build (one read transaction)."""

    __slots__ = ("codec", "conn", "state")

    def __init__(self, conn: sqlite3.Connection, codec: _Codec, state: StoreState) -> None:
        self.conn = conn
        self.codec = codec
        self.state = state

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()


def _build_public(
    conn: sqlite3.Connection,
    codec: _Codec,
    diff: _Diff,
    records: Iterable[bytes],
    progress: Callable[[int], None] | None,
) -> _Digest:
    """Parse, digest, encode and insert the public records of a snapshot build, in order.

    One thread, on purpose (decision 0009): parsing (pydantic-core), hashing small
    records and encoding hold the GIL, and SQLite releases it around every statement step,
    so a second thread doing the inserts made each thread wait for the other's GIL
    switch interval and the pair ran slower than one thread. What is cheap here instead:
    rows go in by multi-row ``INSERT`` statements (one step per 200 rows, not per row),
    the ``state.sha256`` stream is hashed a batch at a time (the records joined by
    ``\\n``, exactly the lines it is defined over), and decompressing the snapshot runs
    on a reader thread (``_sync.iter_records``) whose zlib calls release the GIL.
    Returns the digest (count, sha256, sum, last entry_id) of the records stored.
    """
    pub = _Digest()
    sha_update = pub.sha.update
    parse = _parse_record
    encode = codec.encode_parsed
    public = diff.public if diff.old is not None else None
    total = 0
    last = ""  # no valid entry_id is <= ""
    rid = 0
    rows: list[object] = []  # rid, entry_id, body, rid, entry_id, body, ...
    krows: list[object] = []  # k, rid, rel, k, rid, rel, ...
    it = iter(records)
    # A batch at a time, one step after the other: each step's code and tables stay in
    # the CPU caches: ~10 % less CPU than every
    # step for each record in turn, in interleaved runs here (decision 0009).
    while batch := list(itertools.islice(it, _BATCH_ROWS)):
        first = rid + 1
        eids: list[str] = []
        for record in batch:
            eid, keys, is_restricted = parse(record)
            if is_restricted:
                raise FormatError(f"restricted record {eid} in the public snapshot")
            if eid <= last:
                raise FormatError(f"records are not in strictly increasing entry_id order: {eid}")
            last = eid
            eids.append(eid)
            rid += 1
            for k, rel in keys:
                krows += (k, rid, rel)
        total += record_total(batch)
        bodies = list(map(encode, batch, eids))
        if public is not None:
            for eid, record, body in zip(eids, batch, bodies, strict=True):
                public(eid, record, body)
        rows.extend(
            itertools.chain.from_iterable(zip(range(first, rid + 1), eids, bodies, strict=True))
        )
        _flush_build(conn, batch, rows, krows, sha_update, final=False)
        if progress is not None:
            progress(rid)
    _flush_build(conn, [], rows, krows, sha_update, final=True)
    pub.total = total
    pub.count = rid
    pub.last_id = last or None
    return pub


_BUILD_RECORD_ROWS = 200  # rows per INSERT statement of a build: 600 parameters
_BUILD_KEY_ROWS = 300  # 900 parameters (SQLite before 3.32 allows at most 999)
_BUILD_RECORD_HEAD = "INSERT INTO records(rid, entry_id, part, body) VALUES "
_BUILD_RECORD_ROW = "(?, ?, 0, ?)"
_BUILD_KEY_HEAD = "INSERT INTO temp.stage(k, rid, rel) VALUES "
_BUILD_KEY_ROW = "(?, ?, ?)"


def _flush_build(
    conn: sqlite3.Connection,
    batch: list[bytes],
    rows: list[object],
    krows: list[object],
    sha_update: Callable[[bytes], None],
    *,
    final: bool,
) -> None:
    """Digest ``batch`` and insert the rows in whole statements (all of them if ``final``).

    Rows that do not fill a statement stay in ``rows``/``krows`` for the next flush, so
    the build prepares two statements, not one per remainder size. Lists are cleared in
    place.
    """
    if batch:
        sha_update(b"\n".join(batch))
        sha_update(b"\n")
        batch.clear()
    _insert_flat(conn, _BUILD_RECORD_HEAD + _BUILD_RECORD_ROW, rows, _BUILD_RECORD_ROWS, final)
    _insert_flat(conn, _BUILD_KEY_HEAD + _BUILD_KEY_ROW, krows, _BUILD_KEY_ROWS, final)


def _insert_flat(
    conn: sqlite3.Connection, sql: str, flat: list[object], per: int, final: bool
) -> None:
    """INSERT ``flat`` (3 values a row) ``per`` rows a statement; keep or insert the rest.

    ``sql`` is the one-row statement; the rows after its ``VALUES`` are repeated.
    """
    row = sql[sql.rindex("(") :]
    step = 3 * per
    full = len(flat) // step * step
    if full:
        many = sql + (", " + row) * (per - 1)
        conn.executemany(many, [flat[i : i + step] for i in range(0, full, step)])
    if final and len(flat) > full:
        conn.execute(sql + (", " + row) * ((len(flat) - full) // 3 - 1), flat[full:])
        full = len(flat)
    del flat[:full]


_Row = tuple[int, str, bytes, bytes, list[tuple[bytes, int]]]


def _restricted_rows(
    codec: _Codec, records: Iterable[bytes], last_rid: int
) -> tuple[_Digest, list[_Row]]:
    """Parse, digest and encode restricted records (a subscriber's partition is small)."""
    digest = _Digest()
    rows: list[_Row] = []
    rid = last_rid
    for record in records:
        eid, keys, _ = _parse_record(record)
        digest.add(eid, record)
        rid += 1
        rows.append((rid, eid, record, codec.encode(record, eid), keys))
    return digest, rows


def _insert_rows(conn: sqlite3.Connection, rows: list[_Row], part: int, table: str) -> None:
    for rid, eid, _record, body, keys in rows:
        conn.execute(
            "INSERT INTO records(rid, entry_id, part, body) VALUES (?, ?, ?, ?)",
            (rid, eid, part, body),
        )
        conn.executemany(
            f"INSERT INTO {table}(k, rid, rel) VALUES (?, ?, ?)",
            [(k, rid, rel) for k, rel in keys],
        )


def _build_restricted(
    conn: sqlite3.Connection,
    codec: _Codec,
    *,
    old: _OldFile | None,
    restricted: Iterable[bytes] | None,
    restricted_sha256: str | None,
    last_rid: int,
    diff: _Diff,
    version: int,
) -> dict[str, object]:
    """The restricted partition of a new snapshot file; returns its meta values."""
    if restricted is None:  # carry the previous partition over, bytes unchanged
        if old is None or old.state.restricted_sha256 is None:
            return {"restricted_entries": 0}
        restricted_sha256 = old.state.restricted_sha256
        restricted = [
            old.codec.decode(body, eid)
            for eid, body in old.conn.execute(
                "SELECT entry_id, body FROM records WHERE part = 1 ORDER BY entry_id"
            )
        ]
    digest, rows = _restricted_rows(codec, restricted, last_rid)
    if restricted_sha256 is not None and digest.sha.hexdigest() != restricted_sha256.lower():
        raise DigestMismatch(f"version {version}: restricted records do not match their digest")
    _insert_rows(conn, rows, 1, "temp.stage")
    for _rid, eid, record, _body, _keys in rows:
        diff.restricted(eid, record)
    return {"restricted_entries": digest.count, "restricted_sha256": digest.sha.hexdigest()}


def _drop_restricted(
    conn: sqlite3.Connection,
    codec: _Codec,
    before: dict[str, int | None],
    after: dict[str, int | None],
) -> None:
    """Delete the restricted partition in place, noting each entry as removed."""
    for rid, eid, body in conn.execute(
        "SELECT rid, entry_id, body FROM records WHERE part = 1"
    ).fetchall():
        record = codec.decode(body, eid)
        before.setdefault(eid, _record_int(record))
        after[eid] = None
        _delete_row(conn, rid, record)


def _put_restricted(
    conn: sqlite3.Connection,
    codec: _Codec,
    *,
    records: Iterable[bytes],
    restricted_sha256: str | None,
    last_rid: int,
    before: dict[str, int | None],
    after: dict[str, int | None],
    version: int,
) -> dict[str, object]:
    """Insert a new restricted partition after ``last_rid``; returns its meta values.

    :class:`DigestMismatch` if the records differ from ``restricted_sha256`` (the
    caller's transaction is then rolled back).
    """
    digest, rows = _restricted_rows(codec, records, last_rid)
    if restricted_sha256 is not None and digest.sha.hexdigest() != restricted_sha256.lower():
        raise DigestMismatch(f"version {version}: restricted records do not match their digest")
    _insert_rows(conn, rows, 1, "keys")
    for _rid, eid, record, _body, _keys in rows:
        before.setdefault(eid, None)
        after[eid] = _record_int(record)
    return {"restricted_entries": digest.count, "restricted_sha256": digest.sha.hexdigest()}


def _replace_restricted(
    conn: sqlite3.Connection,
    codec: _Codec,
    *,
    records: Iterable[bytes],
    restricted_sha256: str | None,
    before: dict[str, int | None],
    after: dict[str, int | None],
    version: int,
) -> dict[str, object]:
    """Swap the restricted partition in place (inside the caller's transaction)."""
    _drop_restricted(conn, codec, before, after)
    (last_rid,) = conn.execute("SELECT coalesce(max(rid), 0) FROM records").fetchone()
    return _put_restricted(
        conn,
        codec,
        records=records,
        restricted_sha256=restricted_sha256,
        last_rid=last_rid,
        before=before,
        after=after,
        version=version,
    )


_SELECT_ROW_SQL = "SELECT rid, part, body FROM records WHERE entry_id = ?"
_INSERT_KEY_SQL = "INSERT INTO keys(k, rid, rel) VALUES (?, ?, ?)"
_DELETE_KEY_SQL = "DELETE FROM keys WHERE k = ? AND rid = ? AND rel = ?"


class _Delta:
    """One delta's public operations, applied in place inside the caller's transaction.

    Keeps what the result is checked against: the running ``state.sum`` (``total``) and
    entry count, starting from the stored state, and the record hash of every touched
    entry before and after (``None``: absent), from which the ChangeSet is derived.
    """

    __slots__ = ("after", "before", "codec", "conn", "count", "label", "next_rid", "total")

    def __init__(self, conn: sqlite3.Connection, codec: _Codec, st: StoreState, label: str):
        self.conn = conn
        self.codec = codec
        self.label = label  # "delta <from>-><to>", for messages
        try:
            self.total = int(st.state_sum, 16)
        except ValueError:
            raise StoreCorrupted("the stored state sum is malformed") from None
        self.count = st.entries
        self.before: dict[str, int | None] = {}
        self.after: dict[str, int | None] = {}
        self.next_rid = 0  # set once the restricted rows that go are gone

    def put(self, record: bytes) -> None:
        """Add or replace the public record ``record``."""
        eid, keys, is_restricted = _parse_record(record)
        if is_restricted:
            raise FormatError(f"the delta puts restricted record {eid} in the public list")
        conn = self.conn
        row = conn.execute(_SELECT_ROW_SQL, (eid,)).fetchone()
        body = self.codec.encode(record, eid)
        if row is None:
            self.before.setdefault(eid, None)
            rid = self.next_rid
            self.next_rid += 1
            conn.execute(
                "INSERT INTO records(rid, entry_id, part, body) VALUES (?, ?, 0, ?)",
                (rid, eid, body),
            )
            new_keys = keys
        else:
            rid, part, old_body = row
            if part != 0:
                raise FormatError(f"the delta puts {eid}, a restricted entry here")
            new_keys = self._replace(rid, eid, old_body, keys)
            conn.execute("UPDATE records SET body = ? WHERE rid = ?", (body, rid))
        if new_keys:
            try:
                conn.executemany(_INSERT_KEY_SQL, [(k, rid, rel) for k, rel in new_keys])
            except sqlite3.IntegrityError:
                # index rows of a record row that is gone: the local copy is damaged
                # (the snapshot repairs it); a delta's own content cannot cause this
                raise StoreCorrupted(
                    f"{self.label}: the local key index holds rows of a missing record"
                ) from None
        new_int = _record_int(record)
        self.total += new_int
        self.count += 1
        self.after[eid] = new_int

    def _replace(
        self, rid: int, eid: str, old_body: bytes, keys: list[tuple[bytes, int]]
    ) -> list[tuple[bytes, int]]:
        """Take the stored record of row ``rid`` out of the sums, and delete those of its
        index rows the new record does not have; returns the new record's index rows
        still to insert.

        Only the index rows that differ are written: a revocation or a new amount keeps
        every key, and rewriting them dirtied a random page of the key index per key
        (most of a delta's WAL and commit time).
        """
        old_keys = _stored_keys(rid, self._remove(eid, old_body))
        if old_keys == keys:
            return []
        same = set(old_keys).intersection(keys)
        self.conn.executemany(
            _DELETE_KEY_SQL, [(k, rid, rel) for k, rel in old_keys if (k, rel) not in same]
        )
        return [kr for kr in keys if kr not in same]

    def _remove(self, eid: str, old_body: bytes) -> bytes:
        """Take a stored public record out of the sum and count; returns its bytes."""
        old = self.codec.decode(old_body, eid)
        old_int = _record_int(old)
        self.before.setdefault(eid, old_int)
        self.total -= old_int
        self.count -= 1
        return old

    def delete(self, arg: bytes, local_version: int) -> None:
        """Remove the public entry ``arg`` names; :class:`DigestMismatch` if not held."""
        eid = _op_entry_id(arg)
        row = self.conn.execute(_SELECT_ROW_SQL, (eid,)).fetchone()
        if row is None or row[1] != 0:
            raise DigestMismatch(
                f"{self.label} removes {eid}, which local version {local_version} does not "
                "hold: this is not the delta's base"
            )
        rid, _part, old_body = row
        _delete_row(self.conn, rid, self._remove(eid, old_body))
        self.after[eid] = None


def _apply_delta(
    conn: sqlite3.Connection,
    codec: _Codec,
    from_version: int,
    to_version: int,
    ops: Iterable[tuple[str, bytes]],
    *,
    manifest: bytes,
    box: bytes,
    key_epoch: int,
    expected_sum: str,
    expected_entries: int,
    expected_sha256: str,
    restricted: Iterable[bytes] | None,
    restricted_sha256: str | None,
) -> ChangeSet:
    """The body of :meth:`Store.apply_delta`, inside its ``BEGIN IMMEDIATE``."""
    gen, st = _read_state(conn)
    if st.version != from_version:
        raise BaseVersionMismatch(
            f"delta from version {from_version}, but the local version is {st.version}"
        )
    if st.key_epoch != key_epoch:
        raise BaseVersionMismatch(
            f"delta {from_version}->{to_version} is of key epoch {key_epoch}, the local "
            f"version of key epoch {st.key_epoch}"
        )
    d = _Delta(conn, codec, st, f"delta {from_version}->{to_version}")
    if restricted is not None and st.restricted_entries:
        # Old restricted rows go first, so an entry can move between the partitions.
        # (Found by a scan of records: skipped when the state holds none, the usual case;
        # a count altered on disk is caught by verify(), which recounts the partition.)
        _drop_restricted(conn, codec, d.before, d.after)
    (d.next_rid,) = conn.execute("SELECT coalesce(max(rid), 0) + 1 FROM records").fetchone()
    put, delete = d.put, d.delete
    for op, arg in ops:
        if op == "P":
            put(arg)
        elif op == "D":
            delete(arg, st.version)
        else:
            raise FormatError(f"unknown delta operation {op!r}")
    rmeta: dict[str, object] = {}
    if restricted is not None:
        rmeta = _put_restricted(
            conn,
            codec,
            records=restricted,
            restricted_sha256=restricted_sha256,
            last_rid=d.next_rid - 1,
            before=d.before,
            after=d.after,
            version=to_version,
        )
    new_sum = sum_hex(d.total)
    if new_sum != expected_sum or d.count != expected_entries:
        raise DigestMismatch(
            f"delta {from_version}->{to_version}: the resulting state ({d.count} entries) "
            f"does not match the signed one ({expected_entries} entries); rolled back"
        )
    _write_meta(
        conn,
        {
            "version": to_version,
            "entries": d.count,
            "state_sha256": expected_sha256,
            "state_sum": new_sum,
            "manifest": bytes(manifest),
            "box": bytes(box),
            "applied_at": _now_iso(),
            "gen": gen + 1,
            **rmeta,
        },
    )
    return _changes(from_version, to_version, d.before, d.after)


def _shrink_wal(conn: sqlite3.Connection) -> None:
    """Checkpoint and truncate the WAL after a committed write (best effort).

    A 10,000-operation delta leaves ~110 MB of WAL that would otherwise stay on disk as
    long as any reader is connected. Readers hold their snapshot for microseconds, so the
    checkpoint normally completes at once; behind a long ``verify()`` it gives up after
    2 s and the next write retries. The committed data is safe either way.
    """
    try:
        conn.execute("PRAGMA busy_timeout = 2000")
        row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if row is not None and row[0]:
            _log.debug("WAL checkpoint postponed: readers are busy")
    except sqlite3.Error as exc:
        _log.debug("WAL checkpoint skipped: %s", exc)


def _stored_keys(rid: int, record: bytes) -> list[tuple[bytes, int]]:
    """The ``(key, rel)`` index rows of a stored record (re-derived: no rid index)."""
    try:
        _eid, keys, _r = _parse_record(record)
    except FormatError:
        raise StoreCorrupted(f"a stored record (row {rid}) cannot be parsed") from None
    return keys


def _delete_keys(conn: sqlite3.Connection, rid: int, record: bytes) -> None:
    """Delete the index rows of a stored record."""
    conn.executemany(_DELETE_KEY_SQL, [(k, rid, rel) for k, rel in _stored_keys(rid, record)])


def _delete_row(conn: sqlite3.Connection, rid: int, record: bytes) -> None:
    _delete_keys(conn, rid, record)
    conn.execute("DELETE FROM records WHERE rid = ?", (rid,))


def _op_entry_id(arg: bytes | str) -> str:
    eid = arg.decode("ascii", "replace") if isinstance(arg, (bytes, bytearray)) else arg
    if not isinstance(eid, str) or not _ENTRY_ID_RE.fullmatch(eid):
        raise FormatError("a delete operation has no valid entry_id")
    return eid


def _changes(
    from_version: int | None,
    to_version: int,
    before: dict[str, int | None],
    after: dict[str, int | None],
) -> ChangeSet:
    added: set[str] = set()
    changed: set[str] = set()
    removed: set[str] = set()
    for eid, old in before.items():
        new = after.get(eid, old)
        if old is None and new is not None:
            added.add(eid)
        elif old is not None and new is None:
            removed.add(eid)
        elif old != new:
            changed.add(eid)
    return ChangeSet(
        from_version, to_version, frozenset(added), frozenset(changed), frozenset(removed)
    )


class _Diff:
    """The ChangeSet of a snapshot against the previous file, by a streaming merge-join.

    Both sides are in entry_id order, so each new record costs one step of a cursor over
    the old file. Bodies are compared as stored (one codec, same bytes) and decoded only
    when they differ.
    """

    def __init__(self, old: _OldFile | None, codec: _Codec) -> None:
        self.old = old
        self.same_codec = old is not None  # one codec: equal records, equal bodies
        self.added: set[str] = set()
        self.changed: set[str] = set()
        self.removed: set[str] = set()
        self.old_restricted: dict[str, bytes] = {}
        self.new_restricted: dict[str, bytes] = {}
        self._cur: Iterator[tuple[str, bytes]] | None = None
        self._pending: tuple[str, bytes] | None = None
        if old is not None:
            self._cur = iter(
                old.conn.execute(
                    "SELECT entry_id, body FROM records WHERE part = 0 ORDER BY entry_id"
                )
            )
            self._pending = next(self._cur, None)
            self.old_restricted = {
                eid: old.codec.decode(body, eid)
                for eid, body in old.conn.execute(
                    "SELECT entry_id, body FROM records WHERE part = 1"
                ).fetchall()
            }

    def public(self, eid: str, record: bytes, body: bytes) -> None:
        if self._cur is None or self.old is None:
            return
        pending = self._pending
        while pending is not None and pending[0] < eid:
            self.removed.add(pending[0])
            pending = next(self._cur, None)
        if pending is not None and pending[0] == eid:
            if not (self.same_codec and pending[1] == body) and (
                self.old.codec.decode(pending[1], eid) != record
            ):
                self.changed.add(eid)
            pending = next(self._cur, None)
        else:
            self.added.add(eid)
        self._pending = pending

    def finish_public(self) -> None:
        if self._cur is None:
            return
        while self._pending is not None:
            self.removed.add(self._pending[0])
            self._pending = next(self._cur, None)

    def restricted(self, eid: str, record: bytes) -> None:
        self.new_restricted[eid] = record

    def result(self, version: int) -> ChangeSet:
        if self.old is None:
            return ChangeSet(None, version, frozenset(), frozenset(), frozenset())
        for eid, record in self.old_restricted.items():
            new = self.new_restricted.get(eid)
            if new is None:
                self.removed.add(eid)
            elif new != record:
                self.changed.add(eid)
        self.added |= self.new_restricted.keys() - self.old_restricted.keys()
        moved = self.added & self.removed  # between the public and restricted partitions
        return ChangeSet(
            self.old.state.version,
            version,
            frozenset(self.added - moved),
            frozenset(self.changed | moved),
            frozenset(self.removed - moved),
        )


# ---------------------------------------------------------------------------------------
# Verification helpers
# ---------------------------------------------------------------------------------------


def _verify_scan(conn: sqlite3.Connection, codec: _Codec, st: StoreState) -> None:
    pub = _Digest()
    res = _Digest()
    expect_keys = expect_n = 0
    for rid, eid, part, body in conn.execute(
        "SELECT rid, entry_id, part, body FROM records ORDER BY entry_id"
    ):
        record = codec.decode(body, eid)
        try:
            parsed_id, keys, is_restricted = _parse_record(record)
        except FormatError as exc:
            raise StoreCorrupted(f"stored record {eid} is malformed: {exc}") from None
        if parsed_id != eid or is_restricted:
            raise StoreCorrupted(f"stored record {eid} does not match its row")
        (res if part else pub).add(eid, record)
        for k, rel in keys:
            expect_keys += _key_int(k, rid, rel)
            expect_n += 1
    have_keys = have_n = 0
    for k, rid, rel in conn.execute("SELECT k, rid, rel FROM keys"):
        have_keys += _key_int(bytes(k), rid, rel)
        have_n += 1
    if pub.count != st.entries:
        raise StoreCorrupted(f"the store holds {pub.count} public entries, not {st.entries}")
    if pub.sha.hexdigest() != st.state_sha256:
        raise StoreCorrupted("the public records do not match the signed state.sha256")
    if pub.sum_hex != st.state_sum:
        raise StoreCorrupted("the public records do not match the signed state.sum")
    if res.count != st.restricted_entries:
        raise StoreCorrupted("the restricted partition does not hold the stored count")
    if (res.count or st.restricted_sha256 is not None) and (
        res.sha.hexdigest() != st.restricted_sha256
    ):
        raise StoreCorrupted("the restricted records do not match their digest")
    if expect_n != have_n or expect_keys % _SUM_MOD != have_keys % _SUM_MOD:
        raise StoreCorrupted("the key index does not match the keys in the records")


def _verify_manifest(st: StoreState) -> None:
    """Cross-check the stored state with the stored manifest, if that is an envelope."""
    payload = _manifest_payload(st.manifest)
    if payload is None:
        _log.debug("the stored manifest is not a readable envelope: cross-check skipped")
        return
    problems = []
    if payload.get("version") != st.version:
        problems.append("version")
    state = payload.get("state")
    if isinstance(state, dict):
        if state.get("entries") != st.entries:
            problems.append("state.entries")
        if str(state.get("sha256", "")).lower() != st.state_sha256:
            problems.append("state.sha256")
        if str(state.get("sum", "")).lower() != st.state_sum:
            problems.append("state.sum")
    else:
        problems.append("state")
    if payload.get("key_epoch") != st.key_epoch:
        problems.append("key_epoch")
    boxes = payload.get("boxes")
    box_sha = hashlib.sha256(st.box).hexdigest()
    if not isinstance(boxes, dict) or not any(
        isinstance(b, dict) and b.get("sha256") == box_sha for b in boxes.values()
    ):
        problems.append("box")
    if problems:
        raise StoreCorrupted(
            "the stored state differs from the stored manifest: " + ", ".join(problems)
        )


def _manifest_payload(manifest: bytes) -> dict[str, Any] | None:
    try:
        env = pydantic_core.from_json(manifest)
        if not isinstance(env, dict) or not isinstance(env.get("payload"), str):
            return None
        payload = pydantic_core.from_json(base64.b64decode(env["payload"], validate=True))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(payload, dict) or payload.get("type") != "manifest":
        return None
    return payload


def _hits(codec: _Codec, rows: list[Any]) -> list[Hit]:
    out: list[Hit] = []
    decoded: dict[str, bytes] = {}
    for _gen, k, rel, eid, body in rows:
        if eid is None:  # an index row without its record: verify() reports it
            continue
        record = decoded.get(eid)
        if record is None:
            record = decoded[eid] = codec.sealed(body, eid)
        out.append(Hit(eid, RELATIONS[rel], k, record))
    return out
