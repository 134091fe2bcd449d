"""The trusted state: pure, I/O-free verification of roots, manifests and artefacts.

Modelled on python-tuf's ``TrustedMetadataSet``: this module never touches the network or
the disk. It holds what is currently trusted and offers one method per kind of incoming
data; each method either accepts the data (and only then changes the trusted state) or
raises a specific :class:`~intercept_sdk.VerificationError` subclass and leaves the state
exactly as it was. The updater (:mod:`intercept_sdk._client.sync`) does the I/O and decides which
failures are normal.

Attacks and the exception each one raises:

* forged or missing signature, a key not in root, below threshold, wrong role's key:
  :class:`SignatureError`;
* rollback (an older version, or the trusted version with other bytes):
  :class:`RollbackError`;
* freeze (expired manifest, or expired trusted root): :class:`ExpiredError`;
* mix-and-match (artefact hash or length not the signed one): :class:`DigestMismatch`;
* endless data (more bytes than the signed length): :class:`TooLarge` (the fetcher caps
  the manifest and roots, which have no signed length, by a configured maximum);
* a delta made for another base version than the one it is listed from:
  :class:`BaseVersionMismatch`;
* root rotation not signed by both thresholds, or skipping a version:
  :class:`RootRotationError`;
* a cached root that does not chain to the pinned one: :class:`TrustRootError`;
* signed content that is not in the protocol's format, paths outside their directory:
  :class:`FormatError`.

Two checks of the list live next to the data rather than here, because they need it: the
state digest after a delta (``state.sum``, checked by :meth:`Store.apply_delta` inside the
transaction it can roll back) and after a snapshot (``state.sha256``,
:meth:`Store.write_snapshot`). Both raise :class:`DigestMismatch`.

Signatures are checked over the exact bytes received (the envelope's base64 payload), and
only then is the payload parsed; the caller persists those same bytes (``Root.raw``,
``Manifest.raw``), never a re-serialisation.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .._exceptions import (
    BaseVersionMismatch,
    DigestMismatch,
    ExpiredError,
    FormatError,
    RollbackError,
    RootRotationError,
    SignatureError,
    TooLarge,
    TrustRootError,
    VerificationError,
)
from .._protocol.sealing import SITE_SPEC, WorkFactor
from .._protocol.signing import MANIFEST_TYPE, ROOT_TYPE, Envelope, keyid_of
from .._util import parse_utc, utcnow

__all__ = [
    "Artefact",
    "ArtefactCheck",
    "Manifest",
    "Root",
    "TrustedState",
]

SPEC_VERSION = 1  # of the root metadata
#: Largest box accepted: a subscriber's restricted records plus the header, padded.
MAX_BOX_BYTES = 64 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_LOCATOR = re.compile(r"[0-9a-f]{32}")
_ARTEFACT_PATH = re.compile(
    r"(snapshots|deltas|boxes/[0-9]{1,18})/[A-Za-z0-9][A-Za-z0-9_.-]{0,200}"
)
# protocol.md names a delta ``deltas/<F>-<V>.<sha256>.ndjson.gz``: the name says which base
# it was made for, so a delta listed under another base is caught before it is applied.
_DELTA_NAME = re.compile(r"deltas/([0-9]{1,18})-([0-9]{1,18})\.[0-9a-f]{64}\.ndjson\.gz")


def _req(obj: Mapping[str, Any], name: str, typ: type | tuple[type, ...], where: str) -> Any:
    if name not in obj:
        raise FormatError(f"{where}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is int):
        raise FormatError(f"{where}: field {name!r} has the wrong type")
    return value


def _time(obj: Mapping[str, Any], name: str, where: str) -> _dt.datetime:
    try:
        return parse_utc(_req(obj, name, str, where))
    except ValueError:
        raise FormatError(f"{where}: field {name!r} is not an ISO 8601 UTC time") from None


def _hex(obj: Mapping[str, Any], name: str, where: str, pattern: re.Pattern[str] = _HEX64) -> str:
    value: str = _req(obj, name, str, where)
    if not pattern.fullmatch(value):
        raise FormatError(f"{where}: field {name!r} is not lower-case hex of the right length")
    return value


def _nonneg(obj: Mapping[str, Any], name: str, where: str) -> int:
    value: int = _req(obj, name, int, where)
    if value < 0:
        raise FormatError(f"{where}: field {name!r} must not be negative")
    return value


@dataclass(frozen=True)
class Role:
    """Key ids allowed to sign for one role, and how many of them must."""

    keyids: frozenset[str]
    threshold: int


@dataclass(frozen=True)
class Root:
    """Verified root metadata: which keys may sign what."""

    version: int
    expires: _dt.datetime
    keys: Mapping[str, Ed25519PublicKey]
    roles: Mapping[str, Role]
    raw: bytes = field(repr=False)

    @classmethod
    def parse(cls, payload: Mapping[str, Any], raw: bytes) -> Root:
        where = "root"
        if payload.get("type") != "root":
            raise FormatError("root: type is not 'root'")
        if payload.get("spec") != SPEC_VERSION:
            raise FormatError(f"root: unsupported spec {payload.get('spec')!r}")
        version = _req(payload, "version", int, where)
        if version < 1:
            raise FormatError("root: version must be >= 1")
        keys: dict[str, Ed25519PublicKey] = {}
        for keyid, meta in _req(payload, "keys", dict, where).items():
            if not isinstance(meta, dict) or meta.get("keytype") != "ed25519":
                raise FormatError(f"root: key {keyid[:12]} is not an ed25519 key")
            try:
                public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(meta["public"]))
            except (KeyError, ValueError, TypeError):
                raise FormatError(f"root: key {keyid[:12]} has a bad public value") from None
            if keyid_of(public) != keyid:
                raise FormatError(f"root: key id {keyid[:12]} does not match its key")
            keys[keyid] = public
        roles: dict[str, Role] = {}
        raw_roles = _req(payload, "roles", dict, where)
        for name in ("root", "online"):
            r = raw_roles.get(name)
            if not isinstance(r, dict):
                raise FormatError(f"root: missing role {name!r}")
            keyids = r.get("keyids")
            threshold = r.get("threshold")
            if (
                not isinstance(keyids, list)
                or not all(isinstance(k, str) and k in keys for k in keyids)
                or not isinstance(threshold, int)
                or isinstance(threshold, bool)
                or not 1 <= threshold <= len(set(keyids))
            ):
                raise FormatError(f"root: role {name!r} has bad keyids or threshold")
            roles[name] = Role(frozenset(keyids), threshold)
        return cls(version, _time(payload, "expires", where), keys, roles, raw)

    def check_signed_by(self, envelope: Envelope, role_name: str, what: str) -> None:
        """Raise SignatureError unless ``role_name``'s threshold of keys signed ``envelope``."""
        role = self.roles[role_name]
        keys = {k: self.keys[k] for k in role.keyids}
        good = envelope.valid_keyids(keys)
        if len(good) < role.threshold:
            other = set(self.keys) - set(role.keyids)
            by_other = envelope.valid_keyids({k: self.keys[k] for k in other}) if other else set()
            hint = " (signed by another role's key)" if by_other else ""
            raise SignatureError(
                f"{what}: {len(good)} valid signature(s) of role {role_name!r}, "
                f"threshold is {role.threshold}{hint}"
            )


@dataclass(frozen=True)
class Artefact:
    """A file the manifest binds by path, SHA-256 and exact length."""

    path: str
    sha256: str
    length: int
    raw_length: int | None = None  # uncompressed size: caps decompression (bomb guard)

    @classmethod
    def parse(cls, obj: Any, where: str, *, under: str) -> Artefact:
        """Parse one artefact entry; its path must be a plain file name below ``under``.

        The directory is fixed by the kind of artefact (``snapshots/``, ``deltas/``,
        ``boxes/<version>/``), so a signed manifest cannot point one kind of
        download at another kind's file, nor outside the site.
        """
        if not isinstance(obj, dict):
            raise FormatError(f"{where}: not an object")
        path = _req(obj, "path", str, where)
        if not _ARTEFACT_PATH.fullmatch(path) or ".." in path or not path.startswith(under):
            raise FormatError(f"{where}: artefact path {path!r} is not allowed")
        raw = _nonneg(obj, "raw_length", where) if "raw_length" in obj else None
        return cls(path, _hex(obj, "sha256", where), _nonneg(obj, "length", where), raw)


@dataclass(frozen=True)
class Manifest:
    """A verified manifest (site format 2): the version of the list and all it binds.

    ``boxes`` maps each registered subscriber's opaque box locator to its sealed box (the
    hash key of ``key_epoch`` and that subscriber's restricted records); ``work`` is the
    work factor of opening a record. A manifest of site format 1 (a public hash key) is
    refused with a :class:`FormatError` saying the platform must republish.
    """

    version: int
    root_version: int
    published_at: _dt.datetime
    expires: _dt.datetime
    key_epoch: int
    work: WorkFactor
    entries: int
    state_sha256: str
    state_sum: str
    snapshot: Artefact
    deltas: Mapping[int, Artefact]
    boxes: Mapping[str, Artefact]
    raw: bytes = field(repr=False)

    @classmethod
    def parse(cls, payload: Mapping[str, Any], raw: bytes) -> Manifest:
        where = "manifest"
        if payload.get("type") != "manifest":
            raise FormatError("manifest: type is not 'manifest'")
        spec = payload.get("spec")
        if spec == 1:
            raise FormatError(
                "manifest: site format 1 (public hash key) is no longer accepted: the "
                f"platform must republish in site format {SITE_SPEC} (decision 0011)"
            )
        if spec != SITE_SPEC:
            raise FormatError(f"manifest: unsupported site format {spec!r}")
        version = _req(payload, "version", int, where)
        if version < 1:
            raise FormatError("manifest: version must be >= 1")
        epoch = _req(payload, "key_epoch", int, where)
        if epoch < 1:
            raise FormatError("manifest: key_epoch must be >= 1")
        state = _req(payload, "state", dict, where)
        return cls(
            version=version,
            root_version=_req(payload, "root_version", int, where),
            published_at=_time(payload, "published_at", where),
            expires=_time(payload, "expires", where),
            key_epoch=epoch,
            work=WorkFactor.from_json(payload.get("kdf")),
            entries=_nonneg(state, "entries", "manifest.state"),
            state_sha256=_hex(state, "sha256", "manifest.state"),
            state_sum=_hex(state, "sum", "manifest.state"),
            snapshot=Artefact.parse(
                _req(payload, "snapshot", dict, where), "manifest.snapshot", under="snapshots/"
            ),
            deltas=_parse_deltas(_req(payload, "deltas", list, where), version),
            boxes=_parse_boxes(_req(payload, "boxes", dict, where), version),
            raw=raw,
        )

    def delta_from(self, local_version: int) -> Artefact | None:
        """The delta to apply to ``local_version``, or None when the manifest has none.

        None is normal (the local copy is older than the deltas kept): take the snapshot.
        :class:`BaseVersionMismatch` when the delta listed for ``local_version`` is a file
        made for another base or another target (its protocol name ``<F>-<V>.`` says so):
        signed content that would apply changes to the wrong state.
        """
        artefact = self.deltas.get(local_version)
        if artefact is None:
            return None
        m = _DELTA_NAME.fullmatch(artefact.path)
        if m is None:
            raise BaseVersionMismatch(
                f"manifest {self.version}: delta {artefact.path!r} listed from version "
                f"{local_version} does not name its base (deltas/<F>-<V>.<sha256>.ndjson.gz)"
            )
        base, target = int(m.group(1)), int(m.group(2))
        if base != local_version or target != self.version:
            raise BaseVersionMismatch(
                f"manifest {self.version}: the delta listed from version {local_version} "
                f"is {artefact.path!r}, made for {base}->{target}"
            )
        return artefact


def _parse_deltas(items: list[Any], version: int) -> dict[int, Artefact]:
    deltas: dict[int, Artefact] = {}
    for i, d in enumerate(items):
        w = f"manifest.deltas[{i}]"
        if not isinstance(d, dict):
            raise FormatError(f"{w}: not an object")
        frm = _nonneg(d, "from", w)
        if frm >= version:
            raise FormatError(f"{w}: delta from {frm} is not older than version {version}")
        deltas[frm] = Artefact.parse(d, w, under="deltas/")
    return deltas


def _parse_boxes(items: Mapping[str, Any], version: int) -> dict[str, Artefact]:
    """The boxes of ``version``: under ``boxes/<version>/``, named by their locator."""
    boxes: dict[str, Artefact] = {}
    for locator, b in items.items():
        w = f"manifest.boxes[{locator}]"
        if not isinstance(locator, str) or not _LOCATOR.fullmatch(locator):
            raise FormatError(f"{w}: a box locator is 32 lower-case hex digits")
        art = Artefact.parse(b, w, under=f"boxes/{version}/{locator}.")
        if art.length > MAX_BOX_BYTES:
            raise FormatError(f"{w}: box larger than {MAX_BOX_BYTES} bytes")
        boxes[locator] = art
    return boxes


class ArtefactCheck:
    """Incremental check of a download against its signed SHA-256 and length.

    Feed chunks as they arrive: :class:`TooLarge` is raised as soon as more bytes than the
    signed length arrive (endless-data attack), :meth:`finish` raises
    :class:`DigestMismatch` for a short body or a wrong hash (mix-and-match).
    """

    def __init__(self, artefact: Artefact, *, already: bytes = b"") -> None:
        self.artefact = artefact
        self._hash = hashlib.sha256()
        self.received = 0
        if already:
            self.update(already)

    def update(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.artefact.length:
            raise TooLarge(
                f"{self.artefact.path}: more than the signed {self.artefact.length} bytes"
            )
        self._hash.update(chunk)

    def finish(self) -> None:
        if self.received != self.artefact.length:
            raise DigestMismatch(
                f"{self.artefact.path}: {self.received} bytes, signed length is "
                f"{self.artefact.length}"
            )
        if self._hash.hexdigest() != self.artefact.sha256:
            raise DigestMismatch(f"{self.artefact.path}: SHA-256 differs from the signed one")


class TrustedState:
    """What the client currently trusts. Every method raises or updates; never half-way.

    ``pinned_root`` is the integrator's trust root (bytes of a root file shipped with the
    application, never the writable cache's copy). It must be signed by its own root
    threshold. ``clock`` returns the current UTC time and is injectable for tests.
    """

    def __init__(
        self,
        pinned_root: bytes,
        *,
        clock: Callable[[], _dt.datetime] = utcnow,
    ) -> None:
        self._clock = clock
        envelope = self._envelope(pinned_root, ROOT_TYPE, "trust root")
        payload = self._payload_unverified(envelope, "trust root")
        root = Root.parse(payload, pinned_root)
        root.check_signed_by(envelope, "root", "trust root")
        self.root: Root = root
        # Every root trusted so far, by version: the stored manifest is re-verified under
        # the root it was accepted with, which a later rotation of the online keys must not
        # invalidate (new manifests are only ever verified with the newest root).
        self._roots: dict[int, Root] = {root.version: root}
        self.manifest: Manifest | None = None

    # -- helpers ---------------------------------------------------------------------
    @staticmethod
    def _envelope(data: bytes, payload_type: str, what: str) -> Envelope:
        envelope = Envelope.from_bytes(data)
        if envelope.payload_type != payload_type:
            raise SignatureError(f"{what}: payload type {envelope.payload_type!r} is not expected")
        if not envelope.signatures:
            raise SignatureError(f"{what}: no signatures")
        return envelope

    @staticmethod
    def _payload_unverified(envelope: Envelope, what: str) -> dict[str, Any]:
        # Only used where the key set to check against is inside the payload itself (a
        # root). Nothing from it is trusted before the signature check that follows.
        return envelope.payload_json()

    # -- roots -----------------------------------------------------------------------
    def update_root(self, data: bytes) -> Root:
        """Accept root N+1: exactly one version up, signed by both N's and N+1's root role."""
        envelope = self._envelope(data, ROOT_TYPE, "new root")
        # Signature by the trusted root's threshold first, before trusting the payload.
        try:
            self.root.check_signed_by(envelope, "root", f"root {self.root.version + 1}")
        except SignatureError as exc:
            raise RootRotationError(f"not signed by the trusted root's threshold: {exc}") from None
        new = Root.parse(envelope.payload_json(), data)
        if new.version != self.root.version + 1:
            raise RootRotationError(
                f"root version {new.version} does not follow trusted version {self.root.version}"
            )
        try:
            new.check_signed_by(envelope, "root", f"root {new.version}")
        except SignatureError as exc:
            raise RootRotationError(f"not signed by the new root's own threshold: {exc}") from None
        self.root = new
        self._roots[new.version] = new
        return new

    def load_cached_root(self, data: bytes) -> Root:
        """Accept root N+1 read from the writable cache, under the same rules as the site's.

        The cache is never a source of trust: a cached root is only a copy of one that was
        verified before, so it must chain from the pinned root exactly like a fresh one.
        Raises :class:`TrustRootError` (wrapping the reason) when it does not.
        """
        try:
            return self.update_root(data)
        except VerificationError as exc:
            raise TrustRootError(
                f"cached root {self.root.version + 1} does not chain to the pinned root: {exc}"
            ) from exc

    # -- manifest --------------------------------------------------------------------
    def _verified_manifest(self, data: bytes, root: Root | None = None) -> Manifest:
        """Signatures by ``root``'s online role (the newest root by default), then format."""
        root = root or self.root
        envelope = self._envelope(data, MANIFEST_TYPE, "manifest")
        root.check_signed_by(envelope, "online", "manifest")
        manifest = Manifest.parse(envelope.payload_json(), data)
        if manifest.root_version > root.version:
            raise RootRotationError(
                f"manifest needs root {manifest.root_version}, trusted root is {root.version}"
            )
        return manifest

    def verify_manifest_bytes(self, data: bytes) -> Manifest:
        """Verify a stored manifest like :meth:`load_trusted_manifest`, changing nothing.

        Safe to call from several threads while another updates the trusted state.
        """
        error: VerificationError | None = None
        for version in sorted(self._roots, reverse=True):
            try:
                return self._verified_manifest(data, self._roots[version])
            except SignatureError as exc:
                error = error or exc
        assert error is not None
        raise error

    def load_trusted_manifest(self, data: bytes) -> Manifest:
        """Re-load the manifest stored with the local list (start-up, after a failed sync).

        Signatures are checked (a tampered cache copy is rejected) but expiry is not: an
        expired local list is still the newest verified one; the client reports it stale.
        The manifest was accepted under some root trusted then, so it is verified with the
        newest trusted root whose online role signed it, and it must not name a newer root
        than that one: after a rotation of the online keys the local list stays usable
        until the next version arrives, signed by the new keys.
        """
        manifest = self.verify_manifest_bytes(data)
        self.manifest = manifest
        return manifest

    def update_manifest(self, data: bytes, *, floor: int = 0) -> Manifest:
        """Accept a newly fetched manifest, or raise (and keep the trusted one).

        Order: trusted root not expired, online threshold of the newest trusted root,
        format, ``root_version`` not ahead of the trusted root, no rollback, not expired.
        ``floor`` is a version the new one may not go below even when no manifest is
        trusted (the local list's version when its own manifest could not be re-verified).
        Returns the trusted manifest; when ``data`` is the very manifest already trusted it
        is returned unchanged (nothing to do).
        """
        now = self._clock()
        if self.root.expires <= now:
            raise ExpiredError(f"trusted root {self.root.version} expired at {self.root.expires}")
        manifest = self._verified_manifest(data)
        if manifest.version < floor:
            raise RollbackError(
                f"manifest version {manifest.version} is older than the local version {floor}"
            )
        current = self.manifest
        if current is not None:
            if manifest.version < current.version:
                raise RollbackError(
                    f"manifest version {manifest.version} is older than trusted {current.version}"
                )
            if manifest.version == current.version and data != current.raw:
                raise RollbackError(
                    f"manifest version {manifest.version} differs from the trusted manifest "
                    "of the same version"
                )
        if manifest.expires <= now:
            raise ExpiredError(f"manifest {manifest.version} expired at {manifest.expires}")
        self.manifest = manifest
        return manifest

    def check_not_expired(self) -> None:
        """Raise ExpiredError if the trusted manifest (or root) is past its expiry."""
        now = self._clock()
        if self.manifest is not None and self.manifest.expires <= now:
            raise ExpiredError(f"manifest {self.manifest.version} expired")
        if self.root.expires <= now:
            raise ExpiredError(f"root {self.root.version} expired")

    @staticmethod
    def verify_artefact(artefact: Artefact, data: bytes) -> None:
        """Whole-buffer check of an artefact (length first, then SHA-256)."""
        if len(data) > artefact.length:
            raise TooLarge(f"{artefact.path}: more than the signed {artefact.length} bytes")
        check = ArtefactCheck(artefact)
        check.update(data)
        check.finish()
