"""The updater: does the I/O around :class:`~intercept_sdk._trust.TrustedState`.

One :meth:`Updater.sync` call:

1. takes the cache directory's sync lock (one syncing process per cache; others keep
   reading and return at once);
2. fetches ``manifest.json`` conditionally (ETag); verifies it, walking new roots first
   when the manifest needs one (each root signed by both thresholds, one version up);
3. applies the delta from the local version when the manifest has one, else (or when the
   delta fails its digest) downloads the snapshot, resuming a cut download with Range;
4. fetches and decrypts this subscriber's restricted box when the manifest lists one;
5. persists verified roots as received.

Any failure leaves the last verified version in force and is raised to the caller, which
records it in ``status()``; :class:`SyncResult` describes what changed for ``watch``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import gzip
import hashlib
import logging
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ._exceptions import (
    BaseVersionMismatch,
    DigestMismatch,
    FormatError,
    RootRotationError,
    TooLarge,
    TrustRootError,
    VerificationError,
)
from ._fetch import Fetcher
from ._signing import open_box
from ._store import ChangeSet, Store
from ._trust import Artefact, Manifest, TrustedState
from ._util import atomic_write, ensure_private_dir, utcnow

__all__ = ["SyncResult", "Updater", "iter_records"]

log = logging.getLogger("intercept_sdk.sync")
MAX_RECORD = 1 << 20  # one record line may not exceed 1 MiB
MAX_ROOT_WALK = 1024
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class SyncResult:
    """What one sync did. ``changes`` is None when no new version was applied."""

    mode: Literal["none", "delta", "snapshot", "locked"]
    from_version: int | None
    to_version: int | None
    changes: ChangeSet | None = None
    bytes_downloaded: int = 0
    fallback_reason: str | None = None
    manifest_expires: _dt.datetime | None = field(default=None)


def iter_records(
    path: Path, raw_limit: int | None, *, delta: bool = False
) -> Iterator[tuple[str, bytes]]:
    """Decompress a verified artefact and yield ``("P", record)`` / ``("D", entry_id)``.

    Decompression is capped by the signed raw length (bomb guard), and each line by
    :data:`MAX_RECORD`.
    """
    with gzip.open(path, "rb") as f:
        yield from _iter_lines(f, raw_limit, delta=delta, name=path.name)


def _iter_lines(
    f: IO[bytes], raw_limit: int | None, *, delta: bool, name: str
) -> Iterator[tuple[str, bytes]]:
    total = 0
    try:
        while True:
            line = f.readline(MAX_RECORD + 1)
            if not line:
                break
            total += len(line)
            if raw_limit is not None and total > raw_limit:
                raise TooLarge(f"{name}: decompresses past its signed raw length {raw_limit}")
            if not line.endswith(b"\n"):
                raise FormatError(f"{name}: a line is unterminated or longer than {MAX_RECORD}")
            line = line[:-1]
            if not delta:
                yield "P", line
            elif line[:2] == b"P\t":
                yield "P", line[2:]
            elif line[:2] == b"D\t":
                yield "D", line[2:]
            else:
                raise FormatError(f"{name}: delta line is neither P nor D")
        if raw_limit is not None and total != raw_limit:
            raise DigestMismatch(f"{name}: decompressed to {total} bytes, signed {raw_limit}")
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, VerificationError):
            raise
        raise FormatError(f"{name}: not valid gzip ({exc})") from None


class _SyncLock:
    """An exclusive, non-blocking flock on ``<cache>/sync.lock``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
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

    ``trust_root`` is the pinned root's bytes (never read from the cache). Roots that were
    verified earlier are kept under ``<cache>/root/`` and re-verified as a chain from the
    pinned root at start-up; a cached root that fails is discarded and fetched again.
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
        self.reload_manifest()

    # -- start-up ------------------------------------------------------------------
    def _load_cached_roots(self) -> None:
        for _ in range(MAX_ROOT_WALK):
            path = self._roots_dir / f"{self.trusted.root.version + 1}.root.json"
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return
            try:
                self.trusted.update_root(data)
            except VerificationError as exc:
                log.warning("discarding cached root %s: %s", path.name, exc)
                for stale in self._roots_dir.glob("*.root.json"):
                    stale.unlink(missing_ok=True)
                return

    def reload_manifest(self) -> Manifest | None:
        """Re-verify the manifest stored with the local list (signatures, not expiry)."""
        state = self.store.state()
        if state is None:
            self.trusted.manifest = None
            return None
        manifest = self.trusted.load_trusted_manifest(state.manifest)
        if manifest.version != state.version:
            raise DigestMismatch("the cached manifest does not describe the cached version")
        return manifest

    # -- one sync ------------------------------------------------------------------
    def sync(self, progress: Callable[[int, int], None] | None = None) -> SyncResult:
        """Bring the store up to date; raise on failure (the old version stays)."""
        if not self._lock.acquire():
            self.reload_manifest()
            state = self.store.state()
            v = state.version if state else None
            return SyncResult("locked", v, v)
        try:
            return self._sync_locked(progress)
        finally:
            self._lock.release()

    def _fetch_new_roots(self, needed: int | None) -> None:
        for _ in range(MAX_ROOT_WALK):
            next_version = self.trusted.root.version + 1
            data = self.fetcher.root(next_version, self.max_root_bytes)
            if data is None:
                break
            self.trusted.update_root(data)
            atomic_write(self._roots_dir / f"{next_version}.root.json", data, mode=0o600)
            log.info("trusted root rotated to version %d", next_version)
        if needed is not None and self.trusted.root.version < needed:
            raise RootRotationError(
                f"manifest needs root {needed}; the site offers up to {self.trusted.root.version}"
            )

    def _sync_locked(self, progress: Callable[[int, int], None] | None) -> SyncResult:
        self.reload_manifest()  # another process may have synced meanwhile
        state = self.store.state()
        local = state.version if state else None
        resp = self.fetcher.manifest(
            self._etag if local is not None else None, self.max_manifest_bytes
        )
        if resp.data is None:  # 304: nothing new; expiry is judged by the caller
            return SyncResult("none", local, local, manifest_expires=self._expiry())
        data = resp.data
        try:
            manifest = self.trusted.update_manifest(data)
        except RootRotationError:
            payload_root = self._peek_root_version(data)
            self._fetch_new_roots(payload_root)
            manifest = self.trusted.update_manifest(data)
        self._etag = resp.etag
        if local is not None and manifest.version == local:
            return SyncResult("none", local, local, manifest_expires=manifest.expires)
        # The trusted manifest is now the new one, but the store is not: on any failure
        # below, restore the previous trusted manifest so state stays consistent.
        try:
            return self._apply(manifest, local, progress)
        except BaseException:
            self._etag = None
            self.reload_manifest()
            raise

    def _peek_root_version(self, data: bytes) -> int | None:
        # Only to learn how far to walk roots; the manifest is verified after the walk.
        from ._signing import Envelope

        try:
            value = Envelope.from_bytes(data).payload_json().get("root_version")
        except VerificationError:
            return None
        return value if isinstance(value, int) and 0 < value < 1 << 31 else None

    def _expiry(self) -> _dt.datetime | None:
        return self.trusted.manifest.expires if self.trusted.manifest else None

    def _apply(
        self, manifest: Manifest, local: int | None, progress: Callable[[int, int], None] | None
    ) -> SyncResult:
        restricted, restricted_sha = self._restricted(manifest)
        fallback = None
        downloaded = 0
        if local is not None:
            try:
                artefact = manifest.delta_from(local)
            except BaseVersionMismatch as exc:
                fallback = str(exc)
            else:
                path = self._download(artefact, progress)
                downloaded += artefact.length
                try:
                    changes = self.store.apply_delta(
                        local,
                        manifest.version,
                        iter_records(path, artefact.raw_length, delta=True),
                        manifest=manifest.raw,
                        expected_sum=manifest.state_sum,
                        expected_sha256=manifest.state_sha256,
                        expected_entries=manifest.entries,
                        restricted=restricted,
                        restricted_sha256=restricted_sha,
                    )
                except (DigestMismatch, BaseVersionMismatch) as exc:
                    fallback = f"delta from {local} rejected: {exc}"
                    log.warning("%s; falling back to the snapshot", fallback)
                else:
                    path.unlink(missing_ok=True)
                    return SyncResult(
                        "delta",
                        local,
                        manifest.version,
                        changes,
                        downloaded,
                        manifest_expires=manifest.expires,
                    )
        artefact = manifest.snapshot
        path = self._download(artefact, progress)
        downloaded += artefact.length
        changes = self.store.write_snapshot(
            manifest.version,
            (rec for _, rec in iter_records(path, artefact.raw_length)),
            manifest=manifest.raw,
            hash_key=manifest.hash_key,
            expected_sha256=manifest.state_sha256,
            expected_sum=manifest.state_sum,
            restricted=restricted,
            restricted_sha256=restricted_sha,
        )
        path.unlink(missing_ok=True)
        return SyncResult(
            "snapshot",
            local,
            manifest.version,
            changes,
            downloaded,
            fallback,
            manifest_expires=manifest.expires,
        )

    def _download(self, artefact: Artefact, progress: Callable[[int, int], None] | None) -> Path:
        # Partial downloads are named by content hash, so a resume never mixes artefacts.
        dest = self._downloads / f"{artefact.sha256}.part"
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, artefact.length)

        self.fetcher.download(artefact, dest, tick)
        for old in self._downloads.glob("*.part"):
            if old != dest:
                old.unlink(missing_ok=True)
        return dest

    def _restricted(self, manifest: Manifest) -> tuple[list[bytes], str]:
        """This subscriber's restricted records for ``manifest`` (empty when none)."""
        if self.subscriber_id is None or self.subscriber_id not in manifest.restricted:
            return [], _EMPTY_SHA256
        box = manifest.restricted[self.subscriber_id]
        if self.restricted_key is None:
            log.warning(
                "the manifest lists restricted entries for %s but no subscriber X25519 key "
                "was configured; they cannot be read",
                self.subscriber_id,
            )
            return [], _EMPTY_SHA256
        path = self._download(box.artefact, None)
        sealed = path.read_bytes()
        path.unlink(missing_ok=True)
        plain = open_box(
            self.restricted_key, sealed, f"{self.subscriber_id}|{manifest.version}".encode()
        )
        import io

        limit = box.artefact.raw_length
        records = [
            r
            for _, r in _iter_lines(
                gzip.GzipFile(fileobj=io.BytesIO(plain)), limit, delta=False, name="restricted"
            )
        ]
        if len(records) != box.entries:
            raise DigestMismatch("restricted box: entry count differs from the signed one")
        return records, box.state_sha256
