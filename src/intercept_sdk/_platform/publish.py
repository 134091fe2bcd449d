"""The platform-side publisher: one call turns the full list into a signed site version.

:func:`publish` reads the platform's *complete* current list (JSON Lines, one
:class:`~intercept_sdk._protocol.models.Entry` per line), validates every entry, and writes one
new version of the static site described in ``docs/protocol.md``: the snapshot, deltas
from each of the last ``keep_deltas`` versions straight to the new one, one encrypted box
per subscriber with restricted entries, and finally the signed manifest.

What is guaranteed:

* **Nothing private reaches the site.** Person ID numbers are published only as keyed
  hashes plus a masked form (:func:`public_record`); restricted entries only inside boxes
  sealed to their audience; the quarantine report and the publisher state (previous
  versions' digests, needed for deltas) live under ``keys_dir/state/``, never in the site.
  :func:`publish` refuses a site directory inside the key directory or the reverse.
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
  in entry_id order; Python holds one entry at a time, or a few batches of source lines
  with worker processes (plus the quarantine list).
* **Fast, and the same bytes.** Common well-formed entries are checked and turned into
  records by a hand-written fast path (:func:`~intercept_sdk._protocol.models.fast_entry_dict`);
  anything unusual or invalid goes through the pydantic model, which decides and gives
  the reasons. A source sorted by entry_id has its snapshot compressed (in a thread)
  while it is read, and a large file source can be parsed by worker processes
  (``workers``). None of this changes a byte of the artefacts, the quarantine report or
  the result (tested).
* **Invalid entries never block the rest.** Each bad line (invalid field, minor, bad
  identifier, duplicate entry_id) goes to ``keys_dir/state/quarantine-<V>.jsonl`` with
  every reason, and is left out of the version (for a previously published entry that is
  a ``D`` line). Every copy of a duplicated entry_id is quarantined, since the publisher
  cannot know which one is right.
* **Restricted boxes.** A registered subscriber named in some restricted entry's
  ``audience`` gets a box holding all its restricted records; a subscriber whose previous
  box had entries and who has none left gets one empty box, so its partition is cleared.
  Clients should still treat "not listed in ``restricted``" as "no restricted entries".
  Audience names that are not registered are logged (warning) and skipped.
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
from .._protocol.catalog import measure_codes
from .._protocol.digest import digest_int, record_sum, sum_hex
from .._protocol.identifiers import mask_identifier
from .._protocol.keyedhash import KeyedHash, identifier_key
from .._protocol.models import Entry, fast_entry_dict, parse_entry
from .._protocol.signing import (
    MANIFEST_TYPE,
    Envelope,
    SigningKey,
    canonical_json,
    seal_box,
    sign_envelope,
)
from .._util import atomic_write, format_utc, fsync_dir, utcnow
from .keys import KeyDir, add_subscriber, validate_subscriber_id

__all__ = [
    "PUBLIC_FIELDS",
    "Artefact",
    "PublishResult",
    "QuarantineItem",
    "add_subscriber",
    "identifier_key",
    "public_record",
    "publish",
    "record_sum",
    "sum_hex",
]

log = logging.getLogger("intercept_sdk._platform.publish")

#: Entry fields copied into a public record as given (unset ones are omitted).
PUBLIC_FIELDS = frozenset(
    {
        "entry_id",
        "case_no",
        "subject_type",
        "name",
        "gender",
        "age",
        "uscc",
        "org_code",
        "legal_rep_name",
        "court",
        "basis_doc_no",
        "basis_issuer",
        "obligation",
        "performance",
        "situation",
        "published_at",
        "filed_at",
        "performed_amount",
        "unperformed_amount",
        "severity",
        "valid_until",
        "status",
        "revoked_at",
        "visibility",
        "measures",
    }
)

_INCLUDE: set[str] = set(PUBLIC_FIELDS)
_STATE_DB = "publisher.sqlite3"
_SCRATCH_DB = "scratch.sqlite3"
_LOCK_FILE = "publish.lock"
_BUFFER = 1 << 20
_PROGRESS_EVERY = 10_000
_BATCH_LINES = 2_000  # source lines per task of a worker process
_PARALLEL_MIN_BYTES = 32 << 20  # smaller sources are published in this process only
_SNAPSHOT_RE = re.compile(r"[0-9]+\.[0-9a-f]{64}\.ndjson\.gz")
_DELTA_RE = re.compile(r"[0-9]+-[0-9]+\.[0-9a-f]{64}\.ndjson\.gz")
_BOX_RE = re.compile(r"[0-9]+\.[0-9a-f]{64}\.box")


# -- records ------------------------------------------------------------------------------


def public_record(entry: Entry, hash_key: bytes) -> bytes:
    """The canonical JSON record of ``entry`` as published (snapshot, delta and box form).

    Copies :data:`PUBLIC_FIELDS`; replaces the person's ID number by ``id_key`` and
    ``id_masked``, adds ``org_key`` for an entity (over the effective organisation code),
    and publishes related persons as ``{role, name, id_key?, id_masked?}``. The result
    never contains a plaintext person ID number, nor the restricted ``audience``.
    """
    rec: dict[str, Any] = entry.model_dump(mode="json", include=_INCLUDE, exclude_none=True)
    if entry.id_number is not None:
        rec["id_key"] = identifier_key(hash_key, "id", entry.id_number).hex()
        rec["id_masked"] = mask_identifier(entry.id_number)
    org = entry.effective_org_code
    if org is not None:
        rec["org_key"] = identifier_key(hash_key, "org", org).hex()
    if entry.related:
        related: list[dict[str, str]] = []
        for person in entry.related:
            item = {"role": person.role, "name": person.name}
            if person.id_number is not None:
                item["id_key"] = identifier_key(hash_key, "id", person.id_number).hex()
                item["id_masked"] = mask_identifier(person.id_number)
            related.append(item)
        rec["related"] = related
    return canonical_json(rec)


def _record_of_fields(fields: dict[str, Any], key_hex: Callable[[bytes], str]) -> bytes:
    """:func:`public_record` of the entry whose ``to_json_dict()`` is ``fields``.

    Consumes ``fields`` (a fresh dict from :func:`~intercept_sdk._protocol.models.fast_entry_dict`:
    only ``str``, ``int``, lists of ``str`` and dicts of ``str``). pydantic-core's
    ``to_json`` of the dicts with their keys in sorted order gives the bytes of
    :func:`~intercept_sdk._protocol.signing.canonical_json` (same compact form, same escapes: the
    tests compare both on many entries) several times faster. ``key_hex`` is
    ``KeyedHash(hash_key).hexer()`` (:mod:`intercept_sdk._protocol.keyedhash`).
    """
    id_number = fields.pop("id_number", None)
    related = fields.pop("related")
    del fields["audience"]
    if id_number is not None:
        fields["id_key"] = key_hex(b"id:" + id_number.encode())
        fields["id_masked"] = mask_identifier(id_number)
    org = fields.get("org_code")
    if not org:
        uscc = fields.get("uscc")
        org = uscc[8:17] if uscc else None
    if org is not None:
        fields["org_key"] = key_hex(b"org:" + org.encode())
    if related:
        out: list[dict[str, str]] = []
        for person in related:
            pid = person.get("id_number")
            if pid is None:
                out.append({"name": person["name"], "role": person["role"]})
            else:
                out.append(
                    {  # keys in sorted order
                        "id_key": key_hex(b"id:" + pid.encode()),
                        "id_masked": mask_identifier(pid),
                        "name": person["name"],
                        "role": person["role"],
                    }
                )
        fields["related"] = out
    return to_json(dict(sorted(fields.items())))


_Staged = tuple[str, bool, list[str], bytes, bytes]
"""What the loader stages per entry: entry_id, restricted, audience, record, digest."""


def _fast_item(
    item: bytes | Mapping[str, Any], key_hex: Callable[[bytes], str], known: frozenset[str]
) -> _Staged | None:
    """The staged form of a common valid entry (a source line or dict); None = not sure.

    None sends the item through :func:`parse_entry` and :func:`public_record`, which
    decide (and give every reason); a non-None answer is exactly what they would give.
    ``key_hex`` is ``KeyedHash(hash_key).hexer()``, ``known`` the measure codes.
    """
    try:
        obj = from_json(item) if isinstance(item, bytes) else item
        fields = fast_entry_dict(obj, known)
        if fields is None:
            return None
        entry_id: str = fields["entry_id"]
        restricted = fields["visibility"] == "restricted"
        audience: list[str] = fields["audience"]
        record = _record_of_fields(fields, key_hex)
    except Exception:  # invalid JSON, lone surrogates, ...: the slow path decides
        return None
    return entry_id, restricted, audience, record, hashlib.sha256(record).digest()


def _slow_item(item: bytes | Mapping[str, Any], hash_key: bytes) -> _Staged:
    """The staged form by the full model; raises InvalidEntry (what the fast path defers)."""
    entry = parse_entry(item)
    record = public_record(entry, hash_key)
    return (
        entry.entry_id,
        entry.visibility == "restricted",
        list(entry.audience),
        record,
        hashlib.sha256(record).digest(),
    )


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
    """A worker process: the hash key, then batches of lines in, staged entries out.

    Ends quietly when the publisher closes the pipes (done, or failed elsewhere); Ctrl-C
    is the publisher's to handle.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        hash_key = _read_frame(stdin)
        if hash_key is None:
            return
        key_hex = KeyedHash(hash_key).hexer()
        known = measure_codes()
        while (frame := _read_frame(stdin)) is not None:
            staged = [_fast_item(line, key_hex, known) for line in frame.split(b"\n")]
            _write_frame(stdout, pickle.dumps(staged, protocol=pickle.HIGHEST_PROTOCOL))
    except (BrokenPipeError, EOFError):
        return


class _Workers:
    """``count`` worker processes; batches go round-robin, results come back in order.

    One batch in flight per worker, and a worker is sent its next batch only after its
    last result was read, so neither side ever blocks writing to a full pipe.
    """

    def __init__(self, count: int, hash_key: bytes) -> None:
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
                _write_frame(proc.stdin, hash_key)
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
    restricted: dict[str, Artefact] = field(default_factory=dict)
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

_SCRATCH_SCHEMA = """
CREATE TABLE s.src(
    entry_id TEXT PRIMARY KEY, line INTEGER NOT NULL, restricted INTEGER NOT NULL,
    digest BLOB NOT NULL, record BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE s.aud(sub TEXT NOT NULL, entry_id TEXT NOT NULL, PRIMARY KEY(sub, entry_id))
    WITHOUT ROWID;
CREATE TABLE s.dup(entry_id TEXT NOT NULL, line INTEGER NOT NULL);
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


_INSERT_SRC = "INSERT OR IGNORE INTO s.src VALUES (?, ?, ?, ?, ?)"
_INSERT_AUD = "INSERT OR IGNORE INTO s.aud VALUES (?, ?)"


class _Loader:
    """Parse the source into the scratch tables, collecting the quarantine.

    With ``workers`` (> 0) and a file source, worker processes do the per-entry work
    (parse, validate, build and hash the record) on batches of lines while this process
    stages the results in source order: the same statements in the same order as the
    serial path, so the same scratch tables, quarantine and artefacts.

    ``snapshot`` (given to :meth:`run`): while the valid entries come in strictly
    increasing entry_id order (as lists exported sorted do), their public records are
    also written to this artefact,
    which is then exactly the snapshot (sorted, no duplicate possible), compressed while
    the source is still being read. At the first entry out of order, ``in_order`` turns
    False and the artefact is abandoned: the snapshot is then made from the scratch table.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        hash_key: bytes,
        registered: Mapping[str, X25519PublicKey],
        progress: Callable[[int], None] | None,
        *,
        workers: int = 0,
    ) -> None:
        self.db = db
        self.hash_key = hash_key
        self.registered = registered
        self.progress = progress
        self.workers = workers
        self.snapshot: _GzipArtefact | None = None
        self.in_order = False
        self.snapshot_sum = 0
        self.lines = 0
        self.quarantined: list[QuarantineItem] = []
        self.unregistered: set[str] = set()
        self.unreachable = 0
        self._cur = db.cursor()
        self._last = ""  # every valid entry_id is non-empty

    def run(
        self,
        source: Path | str | Iterable[Mapping[str, Any]],
        *,
        snapshot: _GzipArtefact | None = None,
    ) -> int:
        """Stage every line of ``source`` in one transaction; return the number of lines.

        ``snapshot`` receives the public records while they come in entry_id order
        (``in_order`` says whether they all did; ``snapshot_sum`` is their state sum).
        """
        self.snapshot = snapshot
        self.in_order = snapshot is not None
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
            return _slow_item(item, self.hash_key)
        except InvalidEntry as exc:
            eid = exc.entry_id or _entry_id_of(item)
            self.quarantined.append(QuarantineItem(n, eid, tuple(exc.reasons)))
            return None

    def _stage(self, n: int, staged: _Staged) -> None:
        """Insert one valid entry (a repeated entry_id goes to ``s.dup``), its audience,
        and while in order its snapshot line."""
        entry_id, restricted, audience, record, digest = staged
        if self.in_order:
            if entry_id > self._last:
                self._last = entry_id
                if not restricted:
                    assert self.snapshot is not None
                    self.snapshot.write_line(record)
                    self.snapshot_sum += digest_int(digest)
            else:
                self.in_order = False
        cur = self._cur
        cur.execute(_INSERT_SRC, (entry_id, n, int(restricted), digest, record))
        if cur.rowcount == 0:
            cur.execute("INSERT INTO s.dup VALUES (?, ?)", (entry_id, n))
        elif restricted:
            self._stage_audience(entry_id, audience)

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
        key_hex = KeyedHash(self.hash_key).hexer()
        known = measure_codes()
        for n, item in _read_source(source):
            yield n, item, None if item is None else _fast_item(item, key_hex, known)

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

        workers = _Workers(self.workers, self.hash_key)
        try:
            for staged in workers.map(batches()):
                nums, lines = sent.popleft()  # kept for the slow path of unusual lines
                yield from zip(nums, lines, staged, strict=True)
        finally:
            workers.close()

    def _quarantine_duplicates(self) -> None:
        dups: dict[str, list[int]] = {}
        for eid, line in self.db.execute("SELECT entry_id, line FROM s.dup ORDER BY line"):
            dups.setdefault(eid, []).append(line)
        for eid, more in dups.items():
            row = self.db.execute("SELECT line FROM s.src WHERE entry_id=?", (eid,)).fetchone()
            lines = sorted([row[0], *more]) if row else more
            reason = (
                f"entry_id: duplicate, on lines {', '.join(map(str, lines))}; "
                "every copy is quarantined"
            )
            self.quarantined.extend(QuarantineItem(n, eid, (reason,)) for n in lines)
            self.db.execute("DELETE FROM s.src WHERE entry_id=?", (eid,))
            self.db.execute("DELETE FROM s.aud WHERE entry_id=?", (eid,))


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

    Raises ConfigurationError for unusable keys/directories (nothing is published).
    """
    started = time.monotonic()
    keys = KeyDir(keys_dir)
    site = Path(site_dir)
    _check_dirs(keys.path, site)
    if isinstance(expires, bool) or not isinstance(expires, (int, float)) or expires <= 0:
        raise ConfigurationError(f"expires must be a positive number of seconds, got {expires!r}")
    for name, value in (("keep_deltas", keep_deltas), ("keep_versions", keep_versions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigurationError(f"{name} must be a non-negative integer, got {value!r}")
    keep_versions = max(keep_versions, 1)
    if not 0 <= compresslevel <= 9:
        raise ConfigurationError(f"compresslevel must be 0-9, got {compresslevel!r}")
    if workers is None:
        workers = _auto_workers(source)
    elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigurationError(f"workers must be a non-negative integer, got {workers!r}")
    if not isinstance(source, (str, os.PathLike)):
        workers = 0  # an iterable is read in this process
    t_now = now if now is not None else utcnow()
    if t_now.tzinfo is None:
        raise ConfigurationError("now must be a timezone-aware datetime")
    online = keys.online_keys()
    hash_key = keys.hash_key()
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
                hash_key=hash_key,
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
    hash_key: bytes,
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
    """The steps of a publish, under the lock: stage, snapshot, state, deltas, boxes,
    manifest (committed to the state before it is written to the site), prune."""
    state_dir = keys.state_dir
    previous, version = _next_version(db, site, state_dir)
    site.mkdir(mode=0o755, parents=True, exist_ok=True)
    scratch = state_dir / _SCRATCH_DB
    _remove_db_files(scratch)
    db.execute("ATTACH DATABASE ? AS s", (str(scratch),))
    pending: list[_GzipArtefact] = []
    try:
        _init_scratch(db, scratch)
        # 1-2. Source -> scratch (validated records, audiences, duplicates removed), and
        #      the snapshot with both state digests.
        loader, snap = _load_and_snapshot(
            _Loader(db, hash_key, registered, progress, workers=workers),
            source,
            site,
            version=version,
            level=level,
        )
        # 3. Publisher state: changes of this version, new current digests.
        db.execute("BEGIN IMMEDIATE")
        floor = _meta_int(db, "changes_floor", 1)
        _record_changes(db, previous, version)
        # 4. Deltas from each of the last keep_deltas versions straight to this one.
        deltas = _write_deltas(
            db,
            site,
            version=version,
            first=max(floor, version - keep_deltas, 1),
            level=level,
            pending=pending,
        )
        # 5. Restricted boxes.
        restricted = _write_boxes(db, site, previous, version, registered, level)
        restricted_entries = int(
            db.execute("SELECT COUNT(*) FROM s.src WHERE restricted=1").fetchone()[0]
        )
        # 6. Roots, quarantine report, manifest.
        _copy_roots(keys, site)
        quarantine_path = _write_quarantine(state_dir, version, loader.quarantined)
        payload = {
            "type": "manifest",
            "spec": 1,
            "version": version,
            "root_version": root_version,
            "published_at": format_utc(now),
            "expires": format_utc(manifest_expires),
            "hash_key": hash_key.hex(),
            "state": {"entries": snap.entries, "sha256": snap.state_sha256, "sum": snap.state_sum},
            "snapshot": snap.artefact.manifest_entry(),
            "deltas": [{"from": f, **a.manifest_entry()} for f, a in sorted(deltas.items())],
            "restricted": {s: a.manifest_entry() for s, a in sorted(restricted.items())},
        }
        manifest_bytes = _sign_manifest(keys, online, payload)
        # 7. Commit the state BEFORE the manifest exists: a crash may skip a version
        #    number but never reuses one.
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
        restricted=restricted,
        state_sha256=snap.state_sha256,
        state_sum=snap.state_sum,
        seconds=time.monotonic() - started,
        workers=workers,
    )
    _log_published(result, loader.lines)
    return result


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
    """Stage ``source`` with ``loader`` and write the snapshot of the valid public records.

    The snapshot is written while the source is read as long as it comes sorted by
    entry_id (see :class:`_Loader`); otherwise it is written again from the scratch
    table afterwards.
    """
    snap = _GzipArtefact(site / "snapshots", level, threaded=True)
    try:
        loader.run(source, snapshot=snap)
        _warn_unreached(loader)
        if loader.in_order:
            total = loader.snapshot_sum
        else:
            snap.abort()
            snap = _GzipArtefact(site / "snapshots", level, threaded=True)
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


def _write_boxes(  # noqa: PLR0917 - internal, one call
    db: sqlite3.Connection,
    site: Path,
    previous: int,
    version: int,
    registered: Mapping[str, X25519PublicKey],
    level: int,
) -> dict[str, Artefact]:
    """A box for every registered subscriber some restricted entry names, and an empty
    one for a subscriber whose last box had entries and who has none left (so even a
    client that keeps its partition when unlisted is cleared)."""
    prev_manifest = _stored_manifest(db, previous)
    previously_boxed = {
        sub
        for sub, art in (prev_manifest or {}).get("restricted", {}).items()
        if art.get("entries", 0) > 0
    }
    named = {r[0] for r in db.execute("SELECT DISTINCT sub FROM s.aud")}
    return {
        sub: _write_box(db, site, sub, key=registered[sub], version=version, level=level)
        for sub in sorted(named | (previously_boxed & set(registered)))
    }


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
        len(result.restricted),
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


def _write_box(
    db: sqlite3.Connection,
    site: Path,
    sub: str,
    *,
    key: X25519PublicKey,
    version: int,
    level: int,
) -> Artefact:
    """Seal every restricted record naming ``sub`` (snapshot form) to its X25519 key."""
    lines: list[bytes] = []
    for (record,) in db.execute(
        "SELECT n.record FROM s.aud AS a JOIN s.src AS n ON n.entry_id = a.entry_id "
        "WHERE a.sub = ? ORDER BY a.entry_id",
        (sub,),
    ):
        lines.append(record)
        lines.append(b"\n")
    raw = b"".join(lines)
    box = seal_box(key, _gzip_bytes(raw, level), f"{sub}|{version}".encode())
    digest = hashlib.sha256(box).hexdigest()
    directory = site / "restricted" / sub
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = directory / f"{version}.{digest}.box"
    atomic_write(path, box, mode=0o644)
    return Artefact(
        path=path.relative_to(site).as_posix(),
        sha256=digest,
        length=len(box),
        entries=len(lines) // 2,
        state_sha256=hashlib.sha256(raw).hexdigest(),
    )


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
        keep.update(r["path"] for r in m.get("restricted", {}).values())
    candidates: list[Path] = []
    for sub, pattern in (("snapshots", _SNAPSHOT_RE), ("deltas", _DELTA_RE)):
        d = site / sub
        if d.is_dir():
            candidates.extend(p for p in d.iterdir() if pattern.fullmatch(p.name))
            candidates.extend(d.glob(".*.part"))
    rdir = site / "restricted"
    if rdir.is_dir():
        for d in rdir.iterdir():
            if d.is_dir():
                candidates.extend(p for p in d.iterdir() if _BOX_RE.fullmatch(p.name))
    removed = 0
    for p in candidates:
        if p.relative_to(site).as_posix() not in keep:
            with suppress(FileNotFoundError):
                p.unlink()
                removed += 1
    if removed:
        log.info("pruned %d old artefact(s) from %s", removed, site)
