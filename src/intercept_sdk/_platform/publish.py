"""The platform-side publisher: one call turns the full list into a signed site version.

:func:`publish` reads the platform's *complete* current list (JSON Lines, one
:class:`~intercept_sdk._protocol.models.Entry` per line), validates every entry, and writes one
new version of the static site described in ``docs/protocol.md`` (site format 2, decision
0011): the snapshot of sealed records, deltas from each of the last ``keep_deltas``
versions of the same key epoch straight to the new one, one sealed box per registered
unit (the epoch's hash key and its restricted records), and finally the signed manifest.

What is guaranteed:

* **Nothing identifying reaches the site.** Each record is sealed (:class:`Sealer`): only
  a holder of one of its identifiers opens it, its lookup tags are 32-bit, and it carries
  only what the decision and the notice need (:data:`PUBLIC_FIELDS`: no masked ID, age or
  gender, officers without names); revoked and deleted entries are not published; the
  hash key of the key epoch lives in the publisher state and in the units' boxes only;
  restricted entries only inside the boxes of their audience; every box of a version has
  one size and an opaque name. The quarantine report and the publisher state live under
  ``keys_dir/state/``, never in the site. :func:`publish` refuses a site directory inside
  the key directory or the reverse.
* **Readers never see a half-made version.** Every artefact is written to a temporary
  file, fsynced and renamed to its final content-addressed name; ``manifest.json`` is
  written last with :func:`~intercept_sdk._util.atomic_write`, so a web server or CDN
  never serves a manifest pointing at a missing file. Artefacts of the last
  ``keep_versions`` manifests are kept for clients that are mid-download.
* **Versions only go up.** The publisher state is committed *before* the manifest is
  written, so a crash can skip a version number but can never publish two different
  manifests with the same version (which clients reject). A publish also refuses to run
  when the site already carries a version at least as new as the one it would make
  (lost publisher state).
* **Bounded memory.** Records are staged in a scratch SQLite database and streamed back
  in record id order; Python holds one entry at a time, or a few batches of source lines
  with worker processes (plus the quarantine list).
* **Fast, and the same bytes.** Common well-formed entries are checked and turned into
  records by a hand-written fast path (:func:`~intercept_sdk._protocol.models.fast_entry_dict`);
  anything unusual or invalid goes through the pydantic model, which decides and gives
  the reasons. The snapshot is compressed in a thread while it is written, and a large
  file source can be parsed and sealed by worker processes (``workers``). None of this
  changes a byte of the artefacts, the quarantine report or the result (tested).
* **Invalid entries never block the rest.** Each bad line (invalid field, minor, bad
  identifier, duplicate entry_id) goes to ``keys_dir/state/quarantine-<V>.jsonl`` with
  every reason, and is left out of the version (for a previously published entry that is
  a ``D`` line). Every copy of a duplicated entry_id is quarantined, since the publisher
  cannot know which one is right.
* **Boxes and key epochs.** Every registered unit gets a box every version (the hash
  key, and its restricted records, possibly none). The key rotates after
  ``rotate_after`` and whenever a unit of the epoch was removed or re-keyed; deltas never
  cross an epoch. Audience names that are not registered are logged (warning) and
  skipped.
* **Two publishes never run at once** for one key directory (``flock`` on
  ``state/publish.lock``); the publisher state belongs to one key directory and one site.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import pickle
import queue
import re
import signal
import sqlite3
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from pydantic_core import from_json, to_json

from .._exceptions import ConfigurationError, FormatError, InvalidEntry
from .._protocol.catalog import KEY_RELATIONS, measure_codes
from .._protocol.digest import digest_int, record_sum, sum_hex
from .._protocol.keyedhash import KeyedHash
from .._protocol.models import Entry, fast_entry_dict, parse_entry
from .._protocol.sealing import (
    SITE_SPEC,
    WorkFactor,
    box_context,
    box_locator,
    box_payload,
    kek,
    pad,
    padded_size,
    record_id,
    seal_record,
)
from .._protocol.signing import (
    MANIFEST_TYPE,
    Envelope,
    SigningKey,
    canonical_json,
    seal_box,
    sign_envelope,
)
from .._util import atomic_write, format_utc, fsync_dir, parse_utc, utcnow
from .keys import KeyDir, add_subscriber, validate_subscriber_id

__all__ = [
    "DEFAULT_ROTATE_AFTER",
    "PUBLIC_FIELDS",
    "Artefact",
    "PublishResult",
    "QuarantineItem",
    "Sealer",
    "WorkFactor",
    "add_subscriber",
    "current_hash_key",
    "publish",
    "record_sum",
    "sealed_record",
    "sum_hex",
]

log = logging.getLogger("intercept_sdk._platform.publish")

#: Entry fields a sealed record carries (site format 2, decisions 0011 and 0020): only what
#: the decision and the clerk's notice need. The rules read ``status``, ``measures``,
#: ``valid_until`` and ``published_at`` (a minor on that date is never enforced against);
#: the notice and :class:`~intercept_sdk.Match` show ``name``, ``case_no``, ``court``,
#: ``obligation``, ``unperformed_amount``, ``published_at``, the entity's codes and its
#: legal representative. No ``id_masked``, ``age`` or ``gender`` (the client derives them
#: from the ID number it holds), no ``revoked_at`` (withdrawn entries are not published),
#: no ``audience`` or ``visibility`` (the partition says it), none of the court's case
#: details the client never reads (``basis_doc_no``, ``basis_issuer``, ``filed_at``,
#: ``performance``, ``performed_amount``, ``situation``, ``severity``: the platform keeps
#: them); related persons carry their role, and a name only for the legal representative
#: (whose name the courts publish).
PUBLIC_FIELDS = frozenset(
    {
        "entry_id",
        "case_no",
        "subject_type",
        "name",
        "uscc",
        "org_code",
        "legal_rep_name",
        "court",
        "obligation",
        "published_at",
        "unperformed_amount",
        "valid_until",
        "status",
        "measures",
    }
)

#: How long one hash key serves by default (seconds): 30 days (decision 0011).
DEFAULT_ROTATE_AFTER: float = 30 * 86400

_REL_INDEX = {name: i for i, name in enumerate(KEY_RELATIONS)}
_KEK_CACHE = 1 << 20  # KEKs kept per publish under a costly work factor (64 B each)
_STATE_DB = "publisher.sqlite3"
_SCRATCH_DB = "scratch.sqlite3"
_LOCK_FILE = "publish.lock"
_BUFFER = 1 << 20
_PROGRESS_EVERY = 10_000
_BATCH_LINES = 2_000  # source lines per task of a worker process
_PARALLEL_MIN_BYTES = 32 << 20  # smaller sources are published in this process only
_SNAPSHOT_RE = re.compile(r"[0-9]+\.[0-9a-f]{64}\.ndjson\.gz")
_DELTA_RE = re.compile(r"[0-9]+-[0-9]+\.[0-9a-f]{64}\.ndjson\.gz")
_BOX_RE = re.compile(r"[0-9a-f]{32}\.[0-9a-f]{64}\.box")
_V1_BOX_RE = re.compile(r"[0-9]+\.[0-9a-f]{64}\.box")


# -- records ------------------------------------------------------------------------------


class Sealer:
    """Seals records under one key epoch's hash key and work factor.

    Holds the hash key's HMAC states (:class:`~intercept_sdk._protocol.keyedhash.KeyedHash`)
    and, under a costly (scrypt) work factor, a bounded memo of key-encryption keys, so a
    person named in several entries pays the work factor once per publish.
    """

    __slots__ = ("_hash", "_keks", "hash_key", "work")

    def __init__(self, hash_key: bytes, work: WorkFactor) -> None:
        self.hash_key = hash_key
        self.work = work
        self._hash = KeyedHash(hash_key)
        self._keks: dict[bytes, bytes] = {}

    def _kek(self, secret: bytes) -> bytes:
        if self.work.alg == "hmac":
            return kek(secret, self.work)
        k = self._keks.get(secret)
        if k is None:
            if len(self._keks) >= _KEK_CACHE:
                self._keks.clear()
            k = self._keks[secret] = kek(secret, self.work)
        return k

    def seal_fields(self, fields: dict[str, Any]) -> tuple[str, bytes] | None:
        """``(record id hex, sealed line)`` of the entry whose ``to_json_dict()`` is
        ``fields`` (consumed), or None for a withdrawn (revoked or deleted) entry, which
        is not published at all.

        Raises ValueError for an entry without any identifier to open it by.
        """
        if fields.get("status", "active") != "active":
            return None
        ids: list[tuple[bytes, int]] = []
        person = self._hash.person
        id_number = fields.get("id_number")
        if id_number is not None:
            ids.append((person(id_number), 0))
        org = fields.get("org_code")
        if not org:
            uscc = fields.get("uscc")
            org = uscc[8:17] if uscc else None
        if org:
            ids.append((self._hash.org(org), 0))
        rec = {k: v for k, v in fields.items() if k in PUBLIC_FIELDS}
        related = fields.get("related")
        if related:
            out: list[dict[str, str]] = []
            for item in related:
                role = item["role"]
                pid = item.get("id_number")
                if pid is not None:
                    ids.append((person(pid), _REL_INDEX[role]))
                if role == "legal_rep" and item.get("name"):
                    out.append({"name": item["name"], "role": role})
                else:
                    out.append({"role": role})
            rec["related"] = out
        plaintext: bytes = to_json(dict(sorted(rec.items())))
        entry_id: str = fields["entry_id"]
        line = seal_record(
            self.hash_key,
            entry_id,
            plaintext,
            [(secret, self._kek(secret), rel) for secret, rel in ids],
        )
        return record_id(self.hash_key, entry_id).hex(), line


def sealed_record(entry: Entry, sealer: Sealer) -> tuple[str, bytes] | None:
    """The sealed record of ``entry`` as published (snapshot, delta and box form).

    ``(record id hex, line)``; None for a withdrawn entry. The line never contains a
    plaintext identifier: the body is AES-GCM under a key only an identifier of the
    entry opens (:mod:`~intercept_sdk._protocol.sealing`).
    """
    return sealer.seal_fields(entry.to_json_dict())


_Staged = tuple[str, bool, list[str], bytes | None, bytes, str]
"""What the loader stages per entry: record id hex, restricted, audience, sealed line
(None: withdrawn, not published), its digest, and the entry_id (for the quarantine)."""


def _staged(fields: dict[str, Any], sealer: Sealer) -> _Staged:
    entry_id: str = fields["entry_id"]
    restricted = fields.get("visibility") == "restricted"
    audience: list[str] = list(fields.get("audience") or ())
    sealed = sealer.seal_fields(fields)
    if sealed is None:
        return record_id(sealer.hash_key, entry_id).hex(), restricted, audience, None, b"", entry_id
    key, line = sealed
    return key, restricted, audience, line, hashlib.sha256(line).digest(), entry_id


def _fast_item(
    item: bytes | Mapping[str, Any], sealer: Sealer, known: frozenset[str]
) -> _Staged | None:
    """The staged form of a common valid entry (a source line or dict); None = not sure.

    None sends the item through :func:`parse_entry`, which decides (and gives every
    reason); a non-None answer is exactly what it would give.
    """
    try:
        obj = from_json(item) if isinstance(item, bytes) else item
        fields = fast_entry_dict(obj, known)
        if fields is None:
            return None
        return _staged(fields, sealer)
    except Exception:  # invalid JSON, lone surrogates, ...: the slow path decides
        return None


def _slow_item(item: bytes | Mapping[str, Any], sealer: Sealer) -> _Staged:
    """The staged form by the full model; raises InvalidEntry (what the fast path defers)."""
    entry = parse_entry(item)
    try:
        return _staged(entry.to_json_dict(), sealer)
    except ValueError as exc:
        raise InvalidEntry(entry.entry_id, [f"entry: cannot be sealed: {exc}"]) from None


# -- worker processes (the per-entry work of a large publish on several cores) -----------
# Plain child processes of this interpreter (``python -I -c``) that read batches of source
# lines on stdin and write the staged entries on stdout, one length-prefixed frame each.
# Not multiprocessing: its "spawn" and "forkserver" methods re-run the caller's main
# script in each child, and "fork" can deadlock a child when another thread of the caller
# held a lock (OpenSSL's, the logging module's) at the moment of the fork.

_FRAME = struct.Struct("<Q")
_WORKER_CODE = (
    "import sys\nsys.path[:] = {path!r}\nfrom {module} import _worker_main\n_worker_main()\n"
)


def _write_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(_FRAME.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes | None:
    """One frame, or None at a clean end of the stream."""
    head = stream.read(_FRAME.size)
    if not head:
        return None
    if len(head) != _FRAME.size:
        raise EOFError("truncated frame")
    (size,) = _FRAME.unpack(head)
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("truncated frame")
    return data


def _worker_main() -> None:
    """A worker process: the hash key and work factor, then batches of lines in, staged
    entries out.

    Ends quietly when the publisher closes the pipes (done, or failed elsewhere); Ctrl-C
    is the publisher's to handle.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        hash_key = _read_frame(stdin)
        work = _read_frame(stdin)
        if hash_key is None or work is None:
            return
        sealer = Sealer(hash_key, WorkFactor.from_json(json.loads(work)))
        known = measure_codes()
        while (frame := _read_frame(stdin)) is not None:
            staged = [_fast_item(line, sealer, known) for line in frame.split(b"\n")]
            _write_frame(stdout, pickle.dumps(staged, protocol=pickle.HIGHEST_PROTOCOL))
    except (BrokenPipeError, EOFError):
        return


class _Workers:
    """``count`` worker processes; batches go round-robin, results come back in order.

    One batch in flight per worker, and a worker is sent its next batch only after its
    last result was read, so neither side ever blocks writing to a full pipe.
    """

    def __init__(self, count: int, sealer: Sealer) -> None:
        code = _WORKER_CODE.format(path=list(sys.path), module=__name__)
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(count):
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", code],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    close_fds=True,
                )
                self.procs.append(proc)
                assert proc.stdin is not None
                _write_frame(proc.stdin, sealer.hash_key)
                _write_frame(proc.stdin, canonical_json(sealer.work.to_json()))
        except BaseException:
            self.close()
            raise

    def map(self, batches: Iterator[list[bytes]]) -> Iterator[list[_Staged | None]]:
        """:func:`_fast_item` of every line of every batch, batch by batch, in order."""
        inflight: deque[int] = deque()
        for i in range(len(self.procs)):
            if not self._send(i, batches):
                break
            inflight.append(i)
        while inflight:
            i = inflight.popleft()
            result = self._receive(i)
            if self._send(i, batches):
                inflight.append(i)
            yield result

    def _send(self, i: int, batches: Iterator[list[bytes]]) -> bool:
        batch = next(batches, None)
        if batch is None:
            return False
        stdin = self.procs[i].stdin
        assert stdin is not None
        _write_frame(stdin, b"\n".join(batch))
        return True

    def _receive(self, i: int) -> list[_Staged | None]:
        stdout = self.procs[i].stdout
        assert stdout is not None
        try:
            frame = _read_frame(stdout)
        except EOFError:
            frame = None
        if frame is None:
            raise RuntimeError(
                f"publish worker process {self.procs[i].pid} ended unexpectedly "
                f"(exit status {self.procs[i].poll()})"
            )
        staged: list[_Staged | None] = pickle.loads(frame)  # noqa: S301 (our own child)
        return staged

    def close(self) -> None:
        """End every worker: EOF on its input; a worker still writing gets a broken pipe."""
        for proc in self.procs:
            for pipe in (proc.stdin, proc.stdout):
                with suppress(OSError):
                    if pipe is not None:
                        pipe.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


# -- results ------------------------------------------------------------------------------


class QuarantineItem(NamedTuple):
    """One source line left out of the version, with every reason."""

    line: int
    entry_id: str | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Artefact:
    """One file written to the site: ``path`` is relative to the site directory."""

    path: str
    sha256: str
    length: int
    raw_length: int | None = None
    entries: int | None = None
    state_sha256: str | None = None

    def manifest_entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "sha256": self.sha256, "length": self.length}
        if self.raw_length is not None:
            out["raw_length"] = self.raw_length
        if self.entries is not None:
            out["entries"] = self.entries
        if self.state_sha256 is not None:
            out["state_sha256"] = self.state_sha256
        return out


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish` wrote, for logs, monitoring and tests."""

    version: int
    entries: int
    restricted_entries: int
    quarantined: list[QuarantineItem]
    quarantine_path: Path
    site_dir: Path
    manifest_path: Path
    manifest_length: int
    snapshot: Artefact
    deltas: dict[int, Artefact] = field(default_factory=dict)
    boxes: dict[str, Artefact] = field(default_factory=dict)
    """One per registered subscriber, by box locator (all of one size)."""
    key_epoch: int = 0
    rotated: bool = False
    """Whether this version started a new key epoch (new hash key: no deltas)."""
    state_sha256: str = ""
    state_sum: str = ""
    seconds: float = 0.0
    workers: int = 0


# -- streaming artefact writer ------------------------------------------------------------


class _GzipArtefact:
    """Stream bytes through gzip into a temp file; hash raw and compressed bytes.

    ``finish`` fsyncs and renames to a name that contains the compressed SHA-256, so
    the file is complete under its final name or absent. Deterministic output (zlib
    gzip header with mtime 0): the same content always gives the same file name.

    With ``threaded``, hashing, compressing and writing run in a background thread (zlib
    and hashlib release the GIL) while the caller produces the next lines: the same
    chunks go through the same compressor in the same order, so the bytes are the same.
    """

    def __init__(self, directory: Path, level: int, *, threaded: bool = False) -> None:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.directory = directory
        fd, name = tempfile.mkstemp(dir=directory, prefix=".", suffix=".part")
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)
        self.raw = hashlib.sha256()
        self._gz = hashlib.sha256()
        self.raw_length = 0
        self.length = 0
        self.count = 0
        self._buf: list[bytes] = []
        self._buf_len = 0
        self._queue: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        if threaded:
            self._queue = queue.Queue(maxsize=4)
            self._thread = threading.Thread(target=self._drain, name="publish-gzip", daemon=True)
            self._thread.start()

    def write_line(self, data: bytes) -> None:
        self._buf.append(data)
        self._buf.append(b"\n")
        self._buf_len += len(data) + 1
        self.count += 1
        if self._buf_len >= _BUFFER:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        chunk = b"".join(self._buf)
        self._buf.clear()
        self._buf_len = 0
        if self._queue is None:
            self._consume(chunk)
            return
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def _consume(self, chunk: bytes) -> None:
        self.raw.update(chunk)
        self.raw_length += len(chunk)
        self._emit(self._z.compress(chunk))

    def _drain(self) -> None:
        assert self._queue is not None
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            if self._error is None:
                try:
                    self._consume(chunk)
                except BaseException as exc:  # re-raised in the caller's thread
                    self._error = exc

    def _join(self) -> None:
        if self._thread is not None:
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()
            self._thread = None
            self._queue = None

    def _emit(self, out: bytes) -> None:
        if out:
            self._gz.update(out)
            self.length += len(out)
            self._file.write(out)

    def finish(self, name: Callable[[str], str], site_dir: Path) -> Artefact:
        self._flush()
        self._join()
        if self._error is not None:
            raise self._error
        self._emit(self._z.flush())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self._gz.hexdigest()
        target = self.directory / name(digest)
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, target)
        fsync_dir(self.directory)
        return Artefact(
            path=target.relative_to(site_dir).as_posix(),
            sha256=digest,
            length=self.length,
            raw_length=self.raw_length,
        )

    def abort(self) -> None:
        self._join()
        with suppress(OSError):
            self._file.close()
        with suppress(FileNotFoundError):
            self._tmp.unlink()


def _gzip_bytes(data: bytes, level: int) -> bytes:
    z = zlib.compressobj(level, zlib.DEFLATED, 31)
    return z.compress(data) + z.flush()


# -- publisher state ----------------------------------------------------------------------

_STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions(
    version INTEGER PRIMARY KEY,
    published_at TEXT NOT NULL,
    entries INTEGER NOT NULL,
    state_sha256 TEXT NOT NULL,
    state_sum TEXT NOT NULL,
    manifest BLOB NOT NULL
);
-- digest of every public record of the newest version
CREATE TABLE IF NOT EXISTS current(entry_id TEXT PRIMARY KEY, digest BLOB NOT NULL)
    WITHOUT ROWID;
-- per version, each entry whose public record changed, with its digest before
-- (NULL = absent); deltas from F compose the changes of versions > F
CREATE TABLE IF NOT EXISTS changes(
    version INTEGER NOT NULL, entry_id TEXT NOT NULL, old BLOB,
    PRIMARY KEY(version, entry_id)
) WITHOUT ROWID;
"""

# In format 2 the ``entry_id`` columns of the publisher's tables hold record ids (hex):
# the snapshot is in record id order, and within one key epoch an entry keeps its record
# id. ``s.src.eid`` keeps the entry_id itself for the quarantine report only.
_SCRATCH_SCHEMA = """
CREATE TABLE s.src(
    entry_id TEXT PRIMARY KEY, line INTEGER NOT NULL, restricted INTEGER NOT NULL,
    digest BLOB NOT NULL, record BLOB NOT NULL, eid TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE s.aud(sub TEXT NOT NULL, entry_id TEXT NOT NULL, PRIMARY KEY(sub, entry_id))
    WITHOUT ROWID;
CREATE TABLE s.dup(entry_id TEXT NOT NULL, line INTEGER NOT NULL, eid TEXT NOT NULL);
"""


@contextmanager
def _publish_lock(state_dir: Path) -> Iterator[None]:
    path = state_dir / _LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigurationError(
                f"another publish is running for {state_dir.parent} (lock {path})"
            ) from None
        yield
    finally:
        os.close(fd)


def _open_state(state_dir: Path) -> sqlite3.Connection:
    db = sqlite3.connect(state_dir / _STATE_DB, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA cache_size=-65536")
    db.executescript(_STATE_SCHEMA)
    os.chmod(state_dir / _STATE_DB, 0o600)
    return db


def _meta_int(db: sqlite3.Connection, key: str, default: int) -> int:
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return int(row[0]) if row else default


# -- source -------------------------------------------------------------------------------


def _entry_id_of(line: bytes | str | Mapping[str, Any]) -> str | None:
    """Best-effort entry_id of an invalid item, for the quarantine report only."""
    obj: Any = line
    if isinstance(line, (bytes, str)):
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return None
    if isinstance(obj, Mapping):
        eid = obj.get("entry_id")
        if isinstance(eid, str) and len(eid) <= 200:
            return eid
    return None


def _read_source(
    source: Path | str | Iterable[Mapping[str, Any]],
) -> Iterator[tuple[int, bytes | Mapping[str, Any] | None]]:
    """Yield (line number, item); blank lines are skipped; None = not an object."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            f = path.open("rb")
        except OSError as exc:
            raise ConfigurationError(f"cannot read source {path}: {exc.strerror}") from None
        with f:
            for n, raw in enumerate(f, start=1):
                line = raw.rstrip(b"\r\n")
                if n == 1 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
                if line.strip():
                    yield n, line
        return
    for n, item in enumerate(source, start=1):
        yield n, item if isinstance(item, Mapping) else None


# -- publish ------------------------------------------------------------------------------


def _auto_workers(source: Path | str | Iterable[Mapping[str, Any]]) -> int:
    """Worker processes for ``source`` when the caller does not say.

    None for an iterable or a file under 32 MiB (starting workers costs about a second).
    None on fewer than 4 CPUs either: this process already keeps one CPU busy and
    compresses the snapshot on a second (a thread), and measured on a shared 2-CPU
    machine, workers made a publish slower (more processes than CPUs, each one slower).
    Otherwise one per CPU but this process's, up to 4.
    """
    if not isinstance(source, (str, os.PathLike)) or not sys.executable:
        return 0
    try:
        st = os.stat(source)
    except OSError:
        return 0  # reading it reports the error
    if stat.S_ISREG(st.st_mode) and st.st_size < _PARALLEL_MIN_BYTES:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return 0 if cpus < 4 else min(cpus - 1, 4)


def _check_dirs(keys_dir: Path, site_dir: Path) -> None:
    k, s = keys_dir.resolve(), site_dir.resolve()
    if k == s or k.is_relative_to(s) or s.is_relative_to(k):
        raise ConfigurationError(
            f"site directory {site_dir} and key directory {keys_dir} must be separate: "
            "the site is public"
        )


def _site_version(site_dir: Path) -> int | None:
    path = site_dir / "manifest.json"
    if not path.exists():
        return None
    try:
        version = Envelope.from_bytes(path.read_bytes()).payload_json().get("version")
    except (OSError, FormatError):
        log.warning("existing %s is unreadable; it will be replaced", path)
        return None
    return version if isinstance(version, int) else None


_INSERT_SRC = "INSERT OR IGNORE INTO s.src VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_AUD = "INSERT OR IGNORE INTO s.aud VALUES (?, ?)"


class _Loader:
    """Parse and seal the source into the scratch tables, collecting the quarantine.

    With ``workers`` (> 0) and a file source, worker processes do the per-entry work
    (parse, validate, seal and hash the record) on batches of lines while this process
    stages the results in source order: the same statements in the same order as the
    serial path, so the same scratch tables, quarantine and artefacts.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        sealer: Sealer,
        registered: Mapping[str, X25519PublicKey],
        progress: Callable[[int], None] | None,
        *,
        workers: int = 0,
    ) -> None:
        self.db = db
        self.sealer = sealer
        self.registered = registered
        self.progress = progress
        self.workers = workers
        self.lines = 0
        self.withdrawn = 0
        self.quarantined: list[QuarantineItem] = []
        self.unregistered: set[str] = set()
        self.unreachable = 0
        self._cur = db.cursor()

    def run(self, source: Path | str | Iterable[Mapping[str, Any]]) -> int:
        """Stage every line of ``source`` in one transaction; return the number of lines."""
        progress = self.progress
        self.db.execute("BEGIN")
        items = self._items(source)
        try:
            for n, item, fast in items:
                self.lines = n
                if progress is not None and n % _PROGRESS_EVERY == 0:
                    progress(n)
                staged = fast if fast is not None else self._slow(n, item)
                if staged is not None:
                    self._stage(n, staged)
        finally:
            items.close()  # stops worker processes, also on errors
        self._quarantine_duplicates()
        self.db.execute("COMMIT")
        if progress is not None:
            progress(self.lines)
        self.quarantined.sort(key=lambda q: q.line)
        return self.lines

    def _slow(self, n: int, item: bytes | Mapping[str, Any] | None) -> _Staged | None:
        """The staged form by the full model, or None after quarantining line ``n``."""
        if item is None:
            self.quarantined.append(QuarantineItem(n, None, ("entry: not a JSON object",)))
            return None
        try:
            return _slow_item(item, self.sealer)
        except InvalidEntry as exc:
            eid = exc.entry_id or _entry_id_of(item)
            self.quarantined.append(QuarantineItem(n, eid, tuple(exc.reasons)))
            return None

    def _stage(self, n: int, staged: _Staged) -> None:
        """Insert one valid entry (a repeated entry_id goes to ``s.dup``) and its
        audience; a withdrawn entry is counted and left out."""
        key, restricted, audience, record, digest, entry_id = staged
        if record is None:
            self.withdrawn += 1
            return
        cur = self._cur
        cur.execute(_INSERT_SRC, (key, n, int(restricted), digest, record, entry_id))
        if cur.rowcount == 0:
            cur.execute("INSERT INTO s.dup VALUES (?, ?, ?)", (key, n, entry_id))
        elif restricted:
            self._stage_audience(key, audience)

    def _stage_audience(self, entry_id: str, audience: list[str]) -> None:
        """Who gets a restricted entry: its registered audience (others are noted)."""
        reached = False
        for sub in audience:
            if sub in self.registered:
                self._cur.execute(_INSERT_AUD, (sub, entry_id))
                reached = True
            else:
                self.unregistered.add(sub)
        if not reached:
            self.unreachable += 1

    def _items(
        self, source: Path | str | Iterable[Mapping[str, Any]]
    ) -> Generator[tuple[int, bytes | Mapping[str, Any] | None, _Staged | None], None, None]:
        """(line number, item, fast-path result or None), in source order."""
        if self.workers > 0 and isinstance(source, (str, os.PathLike)):
            yield from self._parallel(_read_source(source))
            return
        sealer = self.sealer
        known = measure_codes()
        for n, item in _read_source(source):
            yield n, item, None if item is None else _fast_item(item, sealer, known)

    def _parallel(
        self, items: Iterator[tuple[int, bytes | Mapping[str, Any] | None]]
    ) -> Iterator[tuple[int, bytes | Mapping[str, Any] | None, _Staged | None]]:
        """:meth:`_items` with worker processes; a few batches in flight at most."""
        sent: deque[tuple[list[int], list[bytes]]] = deque()

        def batches() -> Iterator[list[bytes]]:
            nums: list[int] = []
            lines: list[bytes] = []
            for n, item in items:
                assert isinstance(item, bytes)  # a file source yields lines
                nums.append(n)
                lines.append(item)
                if len(lines) >= _BATCH_LINES:
                    sent.append((nums, lines))
                    yield lines
                    nums, lines = [], []
            if lines:
                sent.append((nums, lines))
                yield lines

        workers = _Workers(self.workers, self.sealer)
        try:
            for staged in workers.map(batches()):
                nums, lines = sent.popleft()  # kept for the slow path of unusual lines
                yield from zip(nums, lines, staged, strict=True)
        finally:
            workers.close()

    def _quarantine_duplicates(self) -> None:
        dups: dict[str, list[int]] = {}
        names: dict[str, str] = {}
        for key, line, eid in self.db.execute(
            "SELECT entry_id, line, eid FROM s.dup ORDER BY line"
        ):
            dups.setdefault(key, []).append(line)
            names[key] = eid
        for key, more in dups.items():
            eid = names[key]
            row = self.db.execute("SELECT line FROM s.src WHERE entry_id=?", (key,)).fetchone()
            lines = sorted([row[0], *more]) if row else more
            reason = (
                f"entry_id: duplicate, on lines {', '.join(map(str, lines))}; "
                "every copy is quarantined"
            )
            self.quarantined.extend(QuarantineItem(n, eid, (reason,)) for n in lines)
            self.db.execute("DELETE FROM s.src WHERE entry_id=?", (key,))
            self.db.execute("DELETE FROM s.aud WHERE entry_id=?", (key,))


def publish(
    source: Path | str | Iterable[Mapping[str, Any]],
    keys_dir: Path | str,
    site_dir: Path | str,
    *,
    expires: float = 86400,
    keep_deltas: int = 8,
    keep_versions: int = 3,
    subscribers: Mapping[str, X25519PublicKey] | None = None,
    now: _dt.datetime | None = None,
    progress: Callable[[int], None] | None = None,
    compresslevel: int = 6,
    workers: int | None = None,
    work_factor: WorkFactor | str | None = None,
    rotate_after: float = DEFAULT_ROTATE_AFTER,
) -> PublishResult:
    """Publish the full list ``source`` as the next version of the site in ``site_dir``.

    ``source`` is a JSON Lines file (path) or an iterable of entry mappings: the
    platform's *complete* current list; entries absent from it are removed. ``expires``
    is the manifest's lifetime in seconds; ``keep_deltas`` how many previous versions get
    a delta; ``keep_versions`` how many manifests' artefacts stay on the site;
    ``subscribers`` overrides the registry in ``keys_dir/subscribers/`` (X25519 box keys
    by subscriber id); ``progress`` is called with the number of source lines read.
    ``workers`` is the number of worker processes that parse and validate a file source
    (0: none, all in this process; default: for a file of 32 MiB or more or a pipe on a
    machine with 4 CPUs or more, one per CPU but one, up to 4; else none). The artefacts
    are the same whatever the number.

    ``work_factor`` (a :class:`~intercept_sdk._protocol.sealing.WorkFactor` or its CLI form
    ``"hmac"``/``"scrypt:14"``; default hmac) is what opening one record costs a holder of
    the hash key (decision 0011). ``rotate_after`` (seconds, default 30 days) is how long
    one hash key serves: a new key epoch starts after it, and whenever a subscriber of the
    current epoch was removed (or its key changed), so a removed unit's key opens nothing
    published later. Every registered subscriber gets a box with the key.

    Raises ConfigurationError for unusable keys/directories (nothing is published).
    """
    started = time.monotonic()
    keys = KeyDir(keys_dir)
    site = Path(site_dir)
    _check_dirs(keys.path, site)
    _check_numbers(expires, keep_deltas, keep_versions, compresslevel)
    keep_versions = max(keep_versions, 1)
    if workers is None:
        workers = _auto_workers(source)
    elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigurationError(f"workers must be a non-negative integer, got {workers!r}")
    if not isinstance(source, (str, os.PathLike)):
        workers = 0  # an iterable is read in this process
    work = _work_factor(work_factor)
    if isinstance(rotate_after, bool) or not isinstance(rotate_after, (int, float)):
        raise ConfigurationError(f"rotate_after must be seconds, got {rotate_after!r}")
    if rotate_after <= 0:
        raise ConfigurationError(f"rotate_after must be positive, got {rotate_after!r}")
    t_now = now if now is not None else utcnow()
    if t_now.tzinfo is None:
        raise ConfigurationError("now must be a timezone-aware datetime")
    online = keys.online_keys()
    root_version = keys.root_version
    if keys.root_expires <= t_now:
        raise ConfigurationError(
            f"root version {root_version} expired at {format_utc(keys.root_expires)}; "
            "clients would reject it: run rotate_root first"
        )
    manifest_expires = t_now + _dt.timedelta(seconds=expires)
    if keys.root_expires < manifest_expires:
        log.warning(
            "root version %d expires %s, before this manifest does; rotate the root soon",
            root_version,
            format_utc(keys.root_expires),
        )
    if subscribers is None:
        registered: Mapping[str, X25519PublicKey] = keys.subscriber_box_keys()
    else:
        for sid in subscribers:
            validate_subscriber_id(sid)
        registered = dict(subscribers)

    state_dir = keys.state_dir
    with _publish_lock(state_dir):
        db = _open_state(state_dir)
        try:
            return _publish_locked(
                db,
                keys,
                site,
                source,
                online=online,
                work=work,
                rotate_after=rotate_after,
                root_version=root_version,
                registered=registered,
                now=t_now,
                manifest_expires=manifest_expires,
                keep_deltas=keep_deltas,
                keep_versions=keep_versions,
                progress=progress,
                level=compresslevel,
                started=started,
                workers=workers,
            )
        finally:
            db.close()


def _check_numbers(expires: float, keep_deltas: int, keep_versions: int, level: int) -> None:
    if isinstance(expires, bool) or not isinstance(expires, (int, float)) or expires <= 0:
        raise ConfigurationError(f"expires must be a positive number of seconds, got {expires!r}")
    for name, value in (("keep_deltas", keep_deltas), ("keep_versions", keep_versions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigurationError(f"{name} must be a non-negative integer, got {value!r}")
    if not 0 <= level <= 9:
        raise ConfigurationError(f"compresslevel must be 0-9, got {level!r}")


def _work_factor(value: WorkFactor | str | None) -> WorkFactor:
    if value is None:
        return WorkFactor()
    if isinstance(value, str):
        return WorkFactor.parse(value)
    if isinstance(value, WorkFactor):
        return value
    raise ConfigurationError(f"work_factor must be a WorkFactor or str, got {value!r}")


class _Snapshot(NamedTuple):
    """The snapshot artefact of a version, with the state digests of its records."""

    artefact: Artefact
    entries: int
    state_sha256: str
    state_sum: str


def _publish_locked(
    db: sqlite3.Connection,
    keys: KeyDir,
    site: Path,
    source: Path | str | Iterable[Mapping[str, Any]],
    *,
    online: list[SigningKey],
    work: WorkFactor,
    rotate_after: float,
    root_version: int,
    registered: Mapping[str, X25519PublicKey],
    now: _dt.datetime,
    manifest_expires: _dt.datetime,
    keep_deltas: int,
    keep_versions: int,
    progress: Callable[[int], None] | None,
    level: int,
    started: float,
    workers: int = 0,
) -> PublishResult:
    """The steps of a publish, under the lock: key epoch, stage, snapshot, state, deltas,
    boxes, manifest (committed to the state before it is written to the site), prune."""
    state_dir = keys.state_dir
    previous, version = _next_version(db, site, state_dir)
    epoch = _key_epoch(db, registered, now, rotate_after)
    site.mkdir(mode=0o755, parents=True, exist_ok=True)
    scratch = state_dir / _SCRATCH_DB
    _remove_db_files(scratch)
    db.execute("ATTACH DATABASE ? AS s", (str(scratch),))
    pending: list[_GzipArtefact] = []
    try:
        _init_scratch(db, scratch)
        # 1-2. Source -> scratch (validated, sealed records, audiences, duplicates
        #      removed), and the snapshot with both state digests.
        loader, snap = _load_and_snapshot(
            _Loader(db, Sealer(epoch.hash_key, work), registered, progress, workers=workers),
            source,
            site,
            version=version,
            level=level,
        )
        # 3. Publisher state: changes of this version, new current digests. A new key
        #    epoch changes every record id: no delta reaches across it.
        db.execute("BEGIN IMMEDIATE")
        floor = version if epoch.rotated else _meta_int(db, "changes_floor", 1)
        _record_changes(db, 0 if epoch.rotated else previous, version)
        # 4. Deltas from each of the last keep_deltas versions straight to this one.
        deltas = _write_deltas(
            db,
            site,
            version=version,
            first=max(floor, version - keep_deltas, 1),
            level=level,
            pending=pending,
        )
        # 5. One box per registered subscriber: the hash key and its restricted records.
        boxes = _write_boxes(db, site, version, epoch, registered)
        restricted_entries = int(
            db.execute("SELECT COUNT(*) FROM s.src WHERE restricted=1").fetchone()[0]
        )
        # 6. Roots, quarantine report, manifest.
        _copy_roots(keys, site)
        quarantine_path = _write_quarantine(state_dir, version, loader.quarantined)
        payload = {
            "type": "manifest",
            "spec": SITE_SPEC,
            "version": version,
            "root_version": root_version,
            "published_at": format_utc(now),
            "expires": format_utc(manifest_expires),
            "key_epoch": epoch.number,
            "kdf": work.to_json(),
            "state": {"entries": snap.entries, "sha256": snap.state_sha256, "sum": snap.state_sum},
            "snapshot": snap.artefact.manifest_entry(),
            "deltas": [{"from": f, **a.manifest_entry()} for f, a in sorted(deltas.items())],
            "boxes": {loc: a.manifest_entry() for loc, a in sorted(boxes.items())},
        }
        manifest_bytes = _sign_manifest(keys, online, payload)
        # 7. Commit the state BEFORE the manifest exists: a crash may skip a version
        #    number but never reuses one.
        _save_epoch(db, epoch)
        _commit_version(db, version, now, snap, manifest_bytes, floor=floor, keep=keep_deltas)
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        for w in pending:
            w.abort()
        raise
    finally:
        with suppress(sqlite3.Error):
            db.execute("DETACH DATABASE s")
        _remove_db_files(scratch)

    # 8. The manifest, last.
    manifest_path = site / "manifest.json"
    atomic_write(manifest_path, manifest_bytes, mode=0o644)
    _prune_site(db, site, version, keep_versions)
    result = PublishResult(
        version=version,
        entries=snap.entries,
        restricted_entries=restricted_entries,
        quarantined=loader.quarantined,
        quarantine_path=quarantine_path,
        site_dir=site,
        manifest_path=manifest_path,
        manifest_length=len(manifest_bytes),
        snapshot=snap.artefact,
        deltas=deltas,
        boxes=boxes,
        key_epoch=epoch.number,
        rotated=epoch.rotated,
        state_sha256=snap.state_sha256,
        state_sum=snap.state_sum,
        seconds=time.monotonic() - started,
        workers=workers,
    )
    _log_published(result, loader.lines)
    return result


class _Epoch(NamedTuple):
    """The key epoch a version is published under."""

    number: int
    hash_key: bytes
    started: str
    members: dict[str, str]  # subscriber id -> raw X25519 public key (hex)
    rotated: bool


def _members(registered: Mapping[str, X25519PublicKey]) -> dict[str, str]:
    return {sid: key.public_bytes_raw().hex() for sid, key in sorted(registered.items())}


def _key_epoch(
    db: sqlite3.Connection,
    registered: Mapping[str, X25519PublicKey],
    now: _dt.datetime,
    rotate_after: float,
) -> _Epoch:
    """The current key epoch, or a new one (a fresh random hash key) when there is none,
    the current one is ``rotate_after`` seconds old, or a member was removed or re-keyed.

    New subscribers joining do not rotate the key: they get it in their box.
    """
    row = dict(db.execute("SELECT key, value FROM meta WHERE key LIKE 'epoch_%'").fetchall())
    members = _members(registered)
    number = int(row.get("epoch_number", 0))
    if number:
        old_members: dict[str, str] = json.loads(row["epoch_members"])
        started = row["epoch_started"]
        age = (now - parse_utc(started)).total_seconds()
        gone = [sid for sid, key in old_members.items() if members.get(sid) != key]
        if age < rotate_after and not gone:
            kept = {**old_members, **members}
            return _Epoch(number, bytes.fromhex(row["epoch_hash_key"]), started, kept, False)
        log.info(
            "new key epoch %d: %s",
            number + 1,
            f"subscriber(s) removed or re-keyed: {', '.join(gone)}"
            if gone
            else f"epoch {number} is {age / 86400:.1f} days old",
        )
    return _Epoch(number + 1, os.urandom(32), format_utc(now), members, True)


def current_hash_key(keys_dir: Path | str) -> tuple[int, bytes]:
    """``(key epoch, hash key)`` of the newest published version, from the publisher state.

    For the platform's own tooling (tests, diagnostics): the key never leaves the key
    directory except inside the units' sealed boxes. ConfigurationError before any publish.
    """
    state = KeyDir(keys_dir).state_dir / _STATE_DB
    if not state.is_file():
        raise ConfigurationError(f"nothing published from {keys_dir} yet")
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        rows = dict(db.execute("SELECT key, value FROM meta WHERE key LIKE 'epoch_%'").fetchall())
    finally:
        db.close()
    if "epoch_number" not in rows:
        raise ConfigurationError(f"nothing published from {keys_dir} yet")
    return int(rows["epoch_number"]), bytes.fromhex(rows["epoch_hash_key"])


def _save_epoch(db: sqlite3.Connection, epoch: _Epoch) -> None:
    """Record the epoch in the publisher state (inside the version's transaction)."""
    db.executemany(
        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
        [
            ("epoch_number", epoch.number),
            ("epoch_hash_key", epoch.hash_key.hex()),
            ("epoch_started", epoch.started),
            ("epoch_members", json.dumps(epoch.members, sort_keys=True)),
        ],
    )


def _next_version(db: sqlite3.Connection, site: Path, state_dir: Path) -> tuple[int, int]:
    """``(previous, version)`` from the publisher state; ConfigurationError when the site
    already serves ``version`` or newer (lost state: clients would see a rollback)."""
    row = db.execute("SELECT MAX(version) FROM versions").fetchone()
    previous = int(row[0]) if row and row[0] is not None else 0
    version = previous + 1
    on_site = _site_version(site)
    if on_site is not None and on_site >= version:
        raise ConfigurationError(
            f"{site} already serves version {on_site} but the publisher state in "
            f"{state_dir} is at version {previous}; refusing to publish version {version} "
            "(clients would reject it as a rollback)"
        )
    return previous, version


def _remove_db_files(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        with suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


def _init_scratch(db: sqlite3.Connection, scratch: Path) -> None:
    """The attached scratch database: private, unjournaled (it is rebuilt on every run)."""
    db.execute("PRAGMA s.page_size=16384")  # ~700-byte records: fewer, fuller pages
    db.execute("PRAGMA s.journal_mode=OFF")
    db.execute("PRAGMA s.synchronous=OFF")
    db.execute("PRAGMA s.cache_size=-131072")
    db.executescript(_SCRATCH_SCHEMA)
    os.chmod(scratch, 0o600)


def _load_and_snapshot(
    loader: _Loader,
    source: Path | str | Iterable[Mapping[str, Any]],
    site: Path,
    *,
    version: int,
    level: int,
) -> tuple[_Loader, _Snapshot]:
    """Stage ``source`` with ``loader``, then write the snapshot of the public sealed
    records in record id order (compressed in a thread while the rows are read)."""
    loader.run(source)
    _warn_unreached(loader)
    snap = _GzipArtefact(site / "snapshots", level, threaded=True)
    try:
        total = 0
        for record, digest in loader.db.execute(
            "SELECT record, digest FROM s.src WHERE restricted=0 ORDER BY entry_id"
        ):
            snap.write_line(record)
            total += digest_int(digest)
        artefact = snap.finish(lambda h: f"{version}.{h}.ndjson.gz", site)
    except BaseException:
        snap.abort()
        raise
    # after finish: every line hashed; the raw snapshot bytes are the state.sha256 lines
    return loader, _Snapshot(artefact, snap.count, snap.raw.hexdigest(), sum_hex(total))


def _warn_unreached(loader: _Loader) -> None:
    """Log restricted entries that name unregistered subscribers or reach nobody."""
    if loader.unregistered:
        names = sorted(loader.unregistered)
        log.warning(
            "restricted entries name %d unregistered subscriber(s), not published to them: %s%s",
            len(names),
            ", ".join(names[:20]),
            " ..." if len(names) > 20 else "",
        )
    if loader.unreachable:
        log.warning("%d restricted entries reach no registered subscriber", loader.unreachable)


def _record_changes(db: sqlite3.Connection, previous: int, version: int) -> None:
    """Note each entry whose public record changed in ``version`` (with its digest before)
    and make the new records' digests current."""
    if previous < 1:
        db.execute("DELETE FROM current")
        db.execute(
            "INSERT INTO current(entry_id, digest) "
            "SELECT entry_id, digest FROM s.src WHERE restricted = 0 ORDER BY entry_id"
        )
        return
    db.execute(
        "INSERT INTO changes(version, entry_id, old) "
        "SELECT ?, c.entry_id, c.digest FROM current AS c "
        "LEFT JOIN s.src AS n ON n.entry_id = c.entry_id AND n.restricted = 0 "
        "WHERE n.digest IS NULL OR n.digest != c.digest",
        (version,),
    )
    db.execute(
        "INSERT INTO changes(version, entry_id, old) "
        "SELECT ?, n.entry_id, NULL FROM s.src AS n "
        "WHERE n.restricted = 0 "
        "AND NOT EXISTS (SELECT 1 FROM current AS c WHERE c.entry_id = n.entry_id)",
        (version,),
    )
    db.execute(
        "DELETE FROM current WHERE entry_id IN (SELECT entry_id FROM changes WHERE version = ?)",
        (version,),
    )
    db.execute(
        "INSERT INTO current(entry_id, digest) "
        "SELECT n.entry_id, n.digest FROM changes AS c "
        "JOIN s.src AS n ON n.entry_id = c.entry_id AND n.restricted = 0 "
        "WHERE c.version = ?",
        (version,),
    )


def _write_deltas(
    db: sqlite3.Connection,
    site: Path,
    *,
    version: int,
    first: int,
    level: int,
    pending: list[_GzipArtefact],
) -> dict[int, Artefact]:
    """A delta to ``version`` from every stored version from ``first`` on."""
    bases = [
        int(r[0])
        for r in db.execute(
            "SELECT version FROM versions WHERE version >= ? AND version < ? ORDER BY version",
            (first, version),
        )
    ]
    return {
        base: _write_delta(db, site, base, version=version, level=level, pending=pending)
        for base in bases
    }


def _write_boxes(
    db: sqlite3.Connection,
    site: Path,
    version: int,
    epoch: _Epoch,
    registered: Mapping[str, X25519PublicKey],
) -> dict[str, Artefact]:
    """A box for every registered subscriber, by locator: the epoch's hash key and the
    restricted records addressed to it, all padded to one size, so the site shows
    neither who holds restricted entries nor how many."""
    payloads: dict[str, tuple[X25519PublicKey, bytes]] = {}
    for sub, key in sorted(registered.items()):
        lines = [
            bytes(record)
            for (record,) in db.execute(
                "SELECT n.record FROM s.aud AS a JOIN s.src AS n ON n.entry_id = a.entry_id "
                "WHERE a.sub = ? ORDER BY a.entry_id",
                (sub,),
            )
        ]
        locator = box_locator(sub, key.public_bytes_raw())
        payloads[locator] = (key, box_payload(version, epoch.number, epoch.hash_key, lines))
    size = padded_size([len(p) for _, p in payloads.values()])
    directory = site / "boxes" / str(version)
    if payloads:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    out: dict[str, Artefact] = {}
    for locator, (key, payload) in payloads.items():
        box = seal_box(key, pad(payload, size), box_context(locator, version))
        digest = hashlib.sha256(box).hexdigest()
        path = directory / f"{locator}.{digest}.box"
        atomic_write(path, box, mode=0o644)
        out[locator] = Artefact(
            path=path.relative_to(site).as_posix(), sha256=digest, length=len(box)
        )
    return out


def _write_quarantine(state_dir: Path, version: int, quarantined: list[QuarantineItem]) -> Path:
    """``state/quarantine-<version>.jsonl``: every left-out line with all its reasons."""
    path = state_dir / f"quarantine-{version}.jsonl"
    atomic_write(
        path,
        b"".join(
            canonical_json({"line": q.line, "entry_id": q.entry_id, "reasons": q.reasons}) + b"\n"
            for q in quarantined
        ),
        mode=0o600,
    )
    return path


def _sign_manifest(keys: KeyDir, online: list[SigningKey], payload: dict[str, Any]) -> bytes:
    """The signed manifest envelope; ConfigurationError unless it meets the online
    threshold of the current root (checked before anything refers to it)."""
    manifest = sign_envelope(MANIFEST_TYPE, canonical_json(payload), online)
    online_pub, online_threshold = keys.role("online")
    if len(manifest.valid_keyids(online_pub)) < online_threshold:
        raise ConfigurationError("manifest signatures do not meet the online threshold")
    return manifest.to_bytes()


def _commit_version(
    db: sqlite3.Connection,
    version: int,
    now: _dt.datetime,
    snap: _Snapshot,
    manifest: bytes,
    *,
    floor: int,
    keep: int,
) -> None:
    """Record ``version`` and its manifest, drop changes no kept delta needs; COMMIT."""
    db.execute(
        "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?)",
        (version, format_utc(now), snap.entries, snap.state_sha256, snap.state_sum, manifest),
    )
    new_floor = max(floor, version + 1 - keep, 1)
    db.execute("DELETE FROM changes WHERE version <= ?", (new_floor,))
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('changes_floor', ?)", (new_floor,))
    db.execute("COMMIT")


def _log_published(result: PublishResult, lines: int) -> None:
    log.info(
        "published version %d: %d public + %d restricted entries from %d lines, "
        "%d quarantined, %d deltas, %d boxes, snapshot %d bytes, %.1fs, %d worker(s)",
        result.version,
        result.entries,
        result.restricted_entries,
        lines,
        len(result.quarantined),
        len(result.deltas),
        len(result.boxes),
        result.snapshot.length,
        result.seconds,
        result.workers,
    )
    if result.quarantined:
        log.warning(
            "%d source line(s) quarantined, see %s",
            len(result.quarantined),
            result.quarantine_path,
        )


def _write_delta(
    db: sqlite3.Connection,
    site: Path,
    base: int,
    *,
    version: int,
    level: int,
    pending: list[_GzipArtefact],
) -> Artefact:
    """Delta base -> version: compose every change after ``base``, compare ends."""
    w = _GzipArtefact(site / "deltas", level)
    pending.append(w)
    rows = db.execute(
        "SELECT c.entry_id, c.old, n.digest, n.record FROM "
        "(SELECT entry_id, old, MIN(version) FROM changes WHERE version > ? "
        " GROUP BY entry_id) AS c "
        "LEFT JOIN s.src AS n ON n.entry_id = c.entry_id AND n.restricted = 0 "
        "ORDER BY c.entry_id",
        (base,),
    )
    for entry_id, old, new, record in rows:
        if new is None:
            if old is not None:
                w.write_line(b"D\t" + entry_id.encode())
        elif old != new:
            w.write_line(b"P\t" + record)
    art = w.finish(lambda h: f"{base}-{version}.{h}.ndjson.gz", site)
    pending.remove(w)
    return art


def _stored_manifest(db: sqlite3.Connection, version: int) -> dict[str, Any] | None:
    row = db.execute("SELECT manifest FROM versions WHERE version=?", (version,)).fetchone()
    if row is None:
        return None
    return Envelope.from_bytes(bytes(row[0])).payload_json()


def _copy_roots(keys: KeyDir, site: Path) -> None:
    """Every signed root onto the site (clients walk them one version at a time)."""
    target = site / "root"
    target.mkdir(mode=0o755, parents=True, exist_ok=True)
    for _, path in keys.root_files().items():
        data = path.read_bytes()
        dest = target / path.name
        if dest.exists():
            if dest.read_bytes() == data:
                continue
            log.warning("%s differs from the signed root in the key directory; replaced", dest)
        atomic_write(dest, data, mode=0o644)


def _prune_site(db: sqlite3.Connection, site: Path, version: int, keep_versions: int) -> None:
    """Delete artefacts no manifest of the last ``keep_versions`` versions refers to.

    Only files whose names this module makes are touched (plus stale ``.part`` files:
    the publish lock guarantees no other publish is writing).
    """
    keep: set[str] = set()
    for (data,) in db.execute(
        "SELECT manifest FROM versions WHERE version > ?", (version - keep_versions,)
    ):
        m = Envelope.from_bytes(bytes(data)).payload_json()
        keep.add(m["snapshot"]["path"])
        keep.update(d["path"] for d in m.get("deltas", []))
        keep.update(b["path"] for b in m.get("boxes", {}).values())
    removed = 0
    for p in _artefact_files(site):
        if p.relative_to(site).as_posix() not in keep:
            with suppress(FileNotFoundError):
                p.unlink()
                removed += 1
    for parent in (site / "boxes", site / "restricted"):
        if parent.is_dir():
            for d in parent.iterdir():
                with suppress(OSError):
                    d.rmdir()  # only when empty
    with suppress(OSError):
        (site / "restricted").rmdir()  # site format 1's box directory, once empty
    if removed:
        log.info("pruned %d old artefact(s) from %s", removed, site)


def _artefact_files(site: Path) -> list[Path]:
    """Every file on the site whose name this module makes (and stale ``.part`` files)."""
    candidates: list[Path] = []
    for sub, pattern in (("snapshots", _SNAPSHOT_RE), ("deltas", _DELTA_RE)):
        d = site / sub
        if d.is_dir():
            candidates.extend(p for p in d.iterdir() if pattern.fullmatch(p.name))
            candidates.extend(d.glob(".*.part"))
    bdir = site / "boxes"
    if bdir.is_dir():
        for d in bdir.iterdir():
            if d.is_dir() and d.name.isdigit():
                candidates.extend(p for p in d.iterdir() if _BOX_RE.fullmatch(p.name))
    rdir = site / "restricted"  # site format 1's boxes: never referred to any more
    if rdir.is_dir():
        for d in rdir.iterdir():
            if d.is_dir():
                candidates.extend(p for p in d.iterdir() if _V1_BOX_RE.fullmatch(p.name))
    return candidates
