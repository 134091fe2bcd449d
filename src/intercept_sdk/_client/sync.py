"""The updater: does the I/O around :class:`~intercept_sdk._client.trust.TrustedState`.

One :meth:`Updater.sync` call:

1. takes the cache directory's sync lock (one syncing process per cache; the others do
   not wait, they return ``mode="locked"`` and keep reading the current version);
2. re-verifies the manifest of the local version from the pinned root (another process
   may have synced meanwhile);
3. fetches ``manifest.json`` conditionally (ETag): a 304 ends the sync, nothing changed
   (:class:`ExpiredError` if the manifest still served has expired: a freeze);
4. walks new roots (``root/<N+1>.root.json`` until there is none), each signed by both
   thresholds and exactly one version up, persisting each as received, *before* the
   manifest is verified, so a manifest signed by a freshly rotated online key verifies;
5. verifies the manifest (signatures, rollback, freeze) with the newest trusted root;
6. fetches and decrypts this subscriber's restricted box when the manifest lists one;
7. applies the delta from the local version; or the snapshot when the manifest has no
   delta from it, or when the delta does not lead to the signed state (the local copy is
   damaged): ``state.sum`` is checked inside the store's transaction, which rolls back.

Guarantees:

* **Any failure leaves the last verified version in force** and is raised to the caller
  (the client records it in ``status()``); verified roots stay trusted.
* **Nothing unverified is parsed or stored**: downloads are checked against the signed
  length (while streaming) and SHA-256 before they are decompressed; decompression is
  capped by the signed raw length.
* **A delta that fails is visible**: :attr:`SyncResult.delta_error` holds the exception
  when the snapshot was used instead; when the snapshot fails too, its exception is raised
  with the delta's as ``__context__``.
* **The local list never goes back silently**: the newest version applied is recorded
  next to the store; a store found older than that (its ``CURRENT`` pointed back at the
  previous database, a restored backup) is refused (:class:`StoreCorrupted`) until a sync
  replaces it, and that version is the floor for rollback.
* **Downloads survive interruptions**: a partial artefact is kept under its content hash
  and resumed by the next attempt (HTTP Range); partial files of artefacts the current
  manifest no longer names are deleted.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import gzip
import logging
import os
import queue
import threading
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .._exceptions import (
    BaseVersionMismatch,
    ConfigurationError,
    DigestMismatch,
    FormatError,
    InterceptError,
    NotRegistered,
    StoreCorrupted,
    StoreError,
    TooLarge,
    TrustRootError,
    VerificationError,
)
from .._protocol.sealing import BoxContents, box_context, box_locator, parse_box_payload, unpad
from .._protocol.signing import open_box
from .._util import atomic_write, ensure_private_dir, utcnow
from .fetch import Fetcher
from .store import ChangeSet, Store, StoreState
from .trust import Artefact, Manifest, TrustedState

__all__ = ["SyncResult", "Updater", "iter_records"]

log = logging.getLogger("intercept_sdk.sync")
MAX_RECORD = 1 << 20  # one record line may not exceed 1 MiB
MAX_ROOT_WALK = 1024
_ROOT_NAME = "{}.root.json"
_APPLIED = "applied_version"  # the newest version applied to this cache (rollback floor)


@dataclass(frozen=True)
class SyncResult:
    """What one sync did.

    ``mode``: ``"delta"`` or ``"snapshot"`` when a new version was applied, ``"none"`` when
    the local version is the newest (or the manifest did not change: HTTP 304), and
    ``"locked"`` when another process holds the cache's sync lock. ``changes`` is None when
    no new version was applied. ``fallback_reason`` says why a snapshot was used when the
    local copy had a version; ``delta_error`` is the exception of a delta that was tried
    and rejected (then rolled back) before the snapshot was used.
    """

    mode: Literal["none", "delta", "snapshot", "locked"]
    from_version: int | None
    to_version: int | None
    changes: ChangeSet | None = None
    bytes_downloaded: int = 0
    fallback_reason: str | None = None
    manifest_expires: _dt.datetime | None = field(default=None)
    delta_error: InterceptError | None = None


def iter_records(
    path: Path, raw_limit: int | None, *, delta: bool = False
) -> Generator[tuple[str, bytes], None, None]:
    """Decompress a verified artefact and yield ``("P", record)`` / ``("D", entry_id)``.

    Decompression is capped by the signed raw length (bomb guard; a different total is
    :class:`DigestMismatch`), and each line by :data:`MAX_RECORD`. The file is
    decompressed ahead on a thread (:class:`_Prefetch`), where zlib runs without the GIL
    while this thread parses and stores the lines.
    """
    with gzip.open(path, "rb") as f:
        ahead = _Prefetch(f, raw_limit)
        try:
            yield from _iter_lines(ahead, raw_limit, delta=delta, name=path.name, exact=True)
        finally:
            ahead.close()


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


_CHUNK = 1 << 20  # decompressed bytes per read; lines are split in C, not one readline each
_AHEAD = 2  # chunks decompressed ahead of the reader (memory: at most ~3 MiB)


class _Stopped(Exception):
    pass


class _Prefetch:
    """Reads ``f`` (a decompressing stream) on a thread, :data:`_CHUNK` bytes ahead.

    Why: gunzip is ~3 us of a snapshot record's ~30 us and zlib releases the GIL, so it
    overlaps with the parsing and storing thread (decision 0009). The chunks are the ones
    :func:`_iter_lines` would read itself: at most ``raw_limit + 1`` bytes in all, so the
    bomb guard holds on this thread too. An exception of ``f.read`` is raised by the
    :meth:`read` that would have returned those bytes. :meth:`close` stops and joins the
    thread; the caller closes ``f`` afterwards.
    """

    def __init__(self, f: _Reader, raw_limit: int | None) -> None:
        self._f = f
        self._limit = raw_limit
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=_AHEAD)
        self._stop = False
        self._done = False
        self._rest = b""
        self._thread = threading.Thread(target=self._run, name="intercept-sdk-gunzip", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException) -> None:
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if self._stop:
                    raise _Stopped from None

    def _run(self) -> None:
        total = 0
        limit = self._limit
        try:
            while not self._stop:
                size = _CHUNK if limit is None else min(_CHUNK, limit - total + 1)
                chunk = self._f.read(max(size, 1))
                self._put(chunk)
                if not chunk:
                    return
                total += len(chunk)
                if limit is not None and total > limit:  # the reader raises TooLarge
                    self._put(b"")
                    return
        except _Stopped:
            return
        except BaseException as exc:  # handed to the reading thread
            with contextlib.suppress(_Stopped):
                self._put(exc)

    def read(self, size: int = -1, /) -> bytes:
        if self._rest:
            chunk = self._rest
        elif self._done:
            return b""
        else:
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if not item:
                self._done = True
                return b""
            chunk = item
        if 0 <= size < len(chunk):
            self._rest = chunk[size:]
            return chunk[:size]
        self._rest = b""
        return chunk

    def close(self) -> None:
        self._stop = True
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
            self._thread.join(0.05)


def _iter_lines(
    f: _Reader, raw_limit: int | None, *, delta: bool, name: str, exact: bool
) -> Iterator[tuple[str, bytes]]:
    """Lines of a decompressing stream; ``raw_limit`` caps the total (and is the exact
    total when ``exact``). Translates gzip/zlib errors into :class:`FormatError`.

    Reads 1 MiB at a time (never more than one byte past ``raw_limit``) and splits it
    with ``bytes.split``: a snapshot of 10 million lines is read in ~7,000 calls instead
    of one ``readline`` per line. A line longer than :data:`MAX_RECORD` is refused as
    soon as that many bytes arrive without a newline.
    """
    total = 0
    carry = b""
    try:
        while True:
            size = _CHUNK if raw_limit is None else min(_CHUNK, raw_limit - total + 1)
            chunk = f.read(max(size, 1))
            if not chunk:
                break
            total += len(chunk)
            if raw_limit is not None and total > raw_limit:
                raise TooLarge(f"{name}: decompresses past its limit of {raw_limit} bytes")
            lines = (carry + chunk if carry else chunk).split(b"\n")
            carry = lines.pop()
            if len(carry) > MAX_RECORD:
                raise FormatError(f"{name}: a line is unterminated or longer than {MAX_RECORD}")
            for line in lines:
                if len(line) > MAX_RECORD:
                    raise FormatError(f"{name}: a line is unterminated or longer than {MAX_RECORD}")
                if not delta:
                    yield "P", line
                elif line[:2] == b"P\t":
                    yield "P", line[2:]
                elif line[:2] == b"D\t":
                    yield "D", line[2:]
                else:
                    raise FormatError(f"{name}: delta line is neither P nor D")
        if carry:
            raise FormatError(f"{name}: a line is unterminated or longer than {MAX_RECORD}")
        if exact and raw_limit is not None and total != raw_limit:
            raise DigestMismatch(f"{name}: decompressed to {total} bytes, signed {raw_limit}")
    except (OSError, EOFError, zlib.error) as exc:
        raise FormatError(f"{name}: not valid gzip ({exc})") from None


class _SyncLock:
    """An exclusive, non-blocking ``flock`` on ``<cache>/sync.lock``.

    flock locks belong to an open file description, so two updaters of one cache conflict
    even inside one process, and the kernel drops the lock if the process dies.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Updater:
    """Keeps the store at the newest verified version of the site.

    ``trust_root`` is the pinned root's bytes (the integrator's file, never read from the
    cache). Roots verified earlier are kept under ``<cache>/root/`` exactly as received and
    re-verified as a chain from the pinned root at start-up; a cached root that does not
    chain (tampering) is discarded, with every later one, and fetched again from the site.
    ``max_manifest_bytes``/``max_root_bytes`` cap the two downloads that have no signed
    length. Not thread-safe: callers serialise :meth:`sync` (the client does). A cache
    belongs to one platform: its versions bound rollback, so a client pointed at another
    platform (another trust root) needs a fresh cache directory.
    """

    def __init__(
        self,
        cache_dir: Path,
        trust_root: bytes,
        fetcher: Fetcher,
        store: Store,
        *,
        subscriber_id: str | None = None,
        restricted_key: X25519PrivateKey | None = None,
        clock: Callable[[], _dt.datetime] = utcnow,
        max_manifest_bytes: int = 1 << 20,
        max_root_bytes: int = 1 << 18,
    ) -> None:
        self.cache_dir = ensure_private_dir(Path(cache_dir))
        self.fetcher = fetcher
        self.store = store
        self.subscriber_id = subscriber_id
        self.restricted_key = restricted_key
        self.max_manifest_bytes = max_manifest_bytes
        self.max_root_bytes = max_root_bytes
        self._etag: str | None = None
        try:
            self.trusted = TrustedState(trust_root, clock=clock)
        except VerificationError as exc:
            raise TrustRootError(f"the pinned trust root does not verify: {exc}") from exc
        self._roots_dir = ensure_private_dir(self.cache_dir / "root")
        self._downloads = ensure_private_dir(self.cache_dir / "downloads")
        self._lock = _SyncLock(self.cache_dir / "sync.lock")
        self._load_cached_roots()
        self._reload_tolerant()

    # -- start-up ------------------------------------------------------------------
    def _load_cached_roots(self) -> None:
        for _ in range(MAX_ROOT_WALK):
            path = self._roots_dir / _ROOT_NAME.format(self.trusted.root.version + 1)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return
            try:
                self.trusted.load_cached_root(data)
            except TrustRootError as exc:
                log.warning("discarding cached roots from %s on: %s", path.name, exc)
                self._discard_cached_roots(self.trusted.root.version + 1)
                return

    def _discard_cached_roots(self, first: int) -> None:
        for stale in self._roots_dir.glob("*.root.json"):
            head = stale.name.split(".", 1)[0]
            if not head.isdigit() or int(head) >= first:
                stale.unlink(missing_ok=True)

    def _applied_version(self) -> int:
        """The newest version any updater of this cache applied (0 if none recorded)."""
        try:
            text = (self.cache_dir / _APPLIED).read_text().strip()
        except OSError:
            return 0
        return int(text) if text.isdigit() else 0

    def _record_applied(self, version: int) -> None:
        # Written after the store committed, so a reader never sees the record ahead of
        # the list; versions only go up, so a concurrent older record cannot win for long.
        if version > self._applied_version():
            atomic_write(self.cache_dir / _APPLIED, f"{version}\n".encode(), mode=0o600)

    def reload_manifest(self) -> Manifest | None:
        """Re-verify the manifest stored with the local list (signatures, not expiry).

        Raises :class:`VerificationError` when it does not verify with the trusted roots
        or does not describe the stored version, and :class:`StoreCorrupted` when the
        stored version is older than one already applied to this cache (the cache was
        pointed back at an older database, or restored from a backup: a local rollback).
        Callers answering checks therefore fail closed; the next sync replaces the list.
        """
        state = self.store.state()
        if state is None:
            self.trusted.manifest = None
            return None
        applied = self._applied_version()
        if state.version < applied:
            self.trusted.manifest = None
            raise StoreCorrupted(
                f"the local list is version {state.version}, but version {applied} was "
                "already applied to this cache: it was rolled back outside the SDK"
            )
        manifest = self.trusted.load_trusted_manifest(state.manifest)
        if manifest.version != state.version:
            self.trusted.manifest = None
            raise DigestMismatch("the cached manifest does not describe the cached version")
        return manifest

    def _reload_tolerant(self) -> tuple[StoreState | None, int]:
        """``(state, floor)``: the local state if its manifest verifies, else a rollback floor.

        A local copy whose manifest does not verify (a cache written by another platform,
        cached roots deleted, tampering) is not a base for deltas; its version still bounds
        rollback, and the next sync replaces it with a verified snapshot. A list file of
        another store schema (an older or newer SDK's) reads as no state at all (the store
        refuses it, see ``store._other_schema``): the next sync stores the snapshot, with
        the recorded ``applied_version`` as the rollback floor.
        """
        applied = self._applied_version()
        try:
            state = self.store.state()
        except StoreCorrupted as exc:
            log.warning("the local list is unreadable (%s); a snapshot will replace it", exc)
            self.trusted.manifest = None
            return None, applied
        if state is None:
            self.trusted.manifest = None
            return None, applied
        try:
            self.reload_manifest()
        except (VerificationError, StoreCorrupted) as exc:
            log.warning("the local list cannot be used (%s); a snapshot will replace it", exc)
            self.trusted.manifest = None
            return None, max(state.version, applied)
        return state, 0

    # -- one sync ------------------------------------------------------------------
    def sync(self, progress: Callable[[int, int], None] | None = None) -> SyncResult:
        """Bring the store up to date; raise on failure (the old version stays).

        ``progress(done, total)`` is called with byte counts of each artefact download.
        Returns at once with ``mode="locked"`` when another process is syncing the cache.
        """
        if not self._lock.acquire():
            state, _ = self._reload_tolerant()
            v = state.version if state else None
            return SyncResult("locked", v, v, manifest_expires=self._expiry())
        try:
            return self._sync_locked(progress)
        finally:
            self._lock.release()

    def _fetch_new_roots(self) -> None:
        """Walk ``root/<N+1>.root.json`` until the site has no newer root."""
        for _ in range(MAX_ROOT_WALK):
            next_version = self.trusted.root.version + 1
            data = self.fetcher.root(next_version, self.max_root_bytes)
            if data is None:
                return
            self.trusted.update_root(data)
            atomic_write(self._roots_dir / _ROOT_NAME.format(next_version), data, mode=0o600)
            log.info("trusted root rotated to version %d", next_version)

    def _sync_locked(self, progress: Callable[[int, int], None] | None) -> SyncResult:
        state, floor = self._reload_tolerant()
        local = state.version if state is not None else None
        # A cache that failed verify() is replaced by a fresh snapshot even at the same
        # version (no 304 short-cut, no delta onto it).
        repair = local is not None and self.store.damaged()
        resp = self.fetcher.manifest(
            self._etag if local is not None and not repair else None, self.max_manifest_bytes
        )
        if resp.data is None:
            # 304: the site still serves the manifest we trust. Past its expiry that is a
            # freeze (a platform or mirror that stopped publishing): an error, as for a
            # fresh download of the same expired manifest.
            self.trusted.check_not_expired()
            return SyncResult("none", local, local, manifest_expires=self._expiry())
        self._fetch_new_roots()
        if state is None and floor:
            # The walk may have brought the roots the local manifest needs.
            state, floor = self._reload_tolerant()
            local = state.version if state is not None else None
        manifest = self.trusted.update_manifest(resp.data, floor=floor)
        if local is not None and manifest.version == local and not repair:
            self._etag = resp.etag
            return SyncResult("none", local, local, manifest_expires=manifest.expires)
        # The trusted manifest is now the new one, but the store is not: on any failure
        # below, restore the previous trusted manifest so both stay consistent.
        try:
            result = self._apply(manifest, local, progress, repair=repair)
        except BaseException:
            self._reload_tolerant()
            raise
        self._record_applied(manifest.version)
        self._etag = resp.etag
        return result

    def _expiry(self) -> _dt.datetime | None:
        return self.trusted.manifest.expires if self.trusted.manifest else None

    def _apply(
        self,
        manifest: Manifest,
        local: int | None,
        progress: Callable[[int, int], None] | None,
        *,
        repair: bool = False,
    ) -> SyncResult:
        self._discard_stale_parts(manifest)
        box, contents = self._box(manifest)
        restricted, restricted_sha = list(contents.restricted), contents.restricted_sha256
        fallback: str | None = None
        delta_error: InterceptError | None = None
        downloaded = 0
        if repair:
            fallback = f"local version {local} failed verification: replaced by the snapshot"
            log.warning("%s", fallback)
        elif local is not None:
            artefact = manifest.delta_from(local)  # BaseVersionMismatch: refuse the manifest
            if artefact is None:
                fallback = f"manifest {manifest.version} has no delta from version {local}"
            elif self._local_epoch() != manifest.key_epoch:
                # cannot happen with a well-behaved publisher (deltas stay in one epoch)
                fallback = f"manifest {manifest.version} starts key epoch {manifest.key_epoch}"
                artefact = None
            else:
                path = self._download(artefact, progress)
                downloaded += artefact.length
                try:
                    # closing(): the reader thread stops now, even while a traceback
                    # of a failed apply keeps the generator's frame alive.
                    with contextlib.closing(
                        iter_records(path, artefact.raw_length, delta=True)
                    ) as ops:
                        changes = self.store.apply_delta(
                            local,
                            manifest.version,
                            ops,
                            manifest=manifest.raw,
                            box=box,
                            key_epoch=manifest.key_epoch,
                            expected_sum=manifest.state_sum,
                            expected_sha256=manifest.state_sha256,
                            expected_entries=manifest.entries,
                            restricted=restricted,
                            restricted_sha256=restricted_sha,
                        )
                except (DigestMismatch, BaseVersionMismatch, StoreCorrupted) as exc:
                    # The delta's bytes are the signed ones, so the local copy is not its
                    # base (damaged, or written outside the sync): the snapshot repairs it.
                    delta_error = exc
                    fallback = f"delta {local}->{manifest.version} rejected: {exc}"
                    log.warning("%s; falling back to the snapshot", fallback)
                else:
                    self._discard_parts()
                    return SyncResult(
                        "delta",
                        local,
                        manifest.version,
                        changes,
                        downloaded,
                        manifest_expires=manifest.expires,
                    )
        try:
            artefact = manifest.snapshot
            path = self._download(artefact, progress)
            downloaded += artefact.length
            with contextlib.closing(iter_records(path, artefact.raw_length)) as lines:
                changes = self.store.write_snapshot(
                    manifest.version,
                    (rec for _, rec in lines),
                    manifest=manifest.raw,
                    box=box,
                    key_epoch=manifest.key_epoch,
                    expected_sha256=manifest.state_sha256,
                    expected_sum=manifest.state_sum,
                    restricted=restricted,
                    restricted_sha256=restricted_sha,
                )
        except BaseException as exc:
            if delta_error is not None and exc.__context__ is None:
                exc.__context__ = delta_error
            raise
        self._discard_parts()
        return SyncResult(
            "snapshot",
            local,
            manifest.version,
            changes,
            downloaded,
            fallback,
            manifest_expires=manifest.expires,
            delta_error=delta_error,
        )

    # -- downloads -------------------------------------------------------------------
    @staticmethod
    def _part_name(artefact: Artefact) -> str:
        # Named by content hash, so a resume never mixes two artefacts.
        return f"{artefact.sha256}.part"

    def _discard_stale_parts(self, manifest: Manifest) -> None:
        """Delete partial downloads of artefacts ``manifest`` does not name."""
        keep = {self._part_name(manifest.snapshot)}
        keep.update(self._part_name(a) for a in manifest.deltas.values())
        keep.update(self._part_name(b) for b in manifest.boxes.values())
        for old in self._downloads.glob("*.part"):
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def _discard_parts(self) -> None:
        for old in self._downloads.glob("*.part"):
            old.unlink(missing_ok=True)

    def _download(self, artefact: Artefact, progress: Callable[[int, int], None] | None) -> Path:
        dest = self._downloads / self._part_name(artefact)
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, artefact.length)

        self.fetcher.download(artefact, dest, tick)
        return dest

    def _local_epoch(self) -> int | None:
        try:
            state = self.store.state()
        except StoreError:
            return None
        return None if state is None else state.key_epoch

    def locator(self) -> str:
        """This subscriber's box locator (ConfigurationError without its id and key)."""
        if self.subscriber_id is None or self.restricted_key is None:
            raise ConfigurationError(
                "site format 2 needs the unit's subscriber id and its X25519 key "
                "(subscriber_key=): the list is readable only with the hash key in the "
                "unit's sealed box"
            )
        public = self.restricted_key.public_key().public_bytes_raw()
        return box_locator(self.subscriber_id, public)

    def open_box(self, version: int, sealed: bytes) -> BoxContents:
        """The contents of this subscriber's box of ``version`` (VerificationError if it
        does not open: another unit's box, another version's, or tampered)."""
        locator = self.locator()
        assert self.restricted_key is not None
        plain = open_box(self.restricted_key, sealed, box_context(locator, version))
        return parse_box_payload(unpad(plain), version=version)

    def _box(self, manifest: Manifest) -> tuple[bytes, BoxContents]:
        """This subscriber's sealed box of ``manifest`` and what it holds.

        The box is verified (length, SHA-256), opened with the subscriber's X25519 key
        (bound to its locator and the version) and parsed strictly; the store checks the
        restricted records against the digest inside. A unit the manifest has no box for
        is not registered with the platform (or was removed): :class:`NotRegistered`.
        """
        locator = self.locator()
        artefact = manifest.boxes.get(locator)
        if artefact is None:
            raise NotRegistered(
                f"list version {manifest.version} has no box for subscriber "
                f"{self.subscriber_id!r}: the unit is not registered with this platform (or "
                "was removed, or registered another X25519 key); without its box the list "
                "cannot be read"
            )
        path = self._download(artefact, None)
        sealed = path.read_bytes()
        return sealed, self.open_box(manifest.version, sealed)
