"""The platform's key directory and its signed root metadata.

Why a directory of plain files: the platform operator must be able to move the offline
root keys to a safe (or an HSM-backed signer) while the publisher keeps running with only
the online keys (identifier hash keys are per key epoch, in the publisher state). So
every key is its own PEM file, and which keys are
*current* is decided by the newest signed root (``root.json``), never by file names: a
key file is used for a role only when its key id is listed for that role.

Layout::

    keys_dir/                       0700
      root-1.pem .. root-N.pem      offline root role (Ed25519, PKCS#8 PEM, 0600)
      online-1.pem ..               online role, signs manifests (0600)
      root/1.root.json ..           every signed root, never changed once written
      root.json                     copy of the newest root: what integrators pin
      retired/v<N>/*.pem            keys that left their role at root N+1
      staged/                       new keys of an unfinished rotation (see below)
      subscribers/<id>.ed25519.pem  subscriber report-signing keys (public)
      subscribers/<id>.x25519.pem   subscriber restricted-box keys (public)
      state/                        publisher state, key epochs (see ``_platform.publish``)

Guarantees:

* :func:`keygen` creates the whole directory in a private temporary sibling and renames
  it into place, so a crash never leaves a half-made key directory under the real name,
  and it never overwrites an existing one.
* :func:`rotate_root` writes the new private keys durably *before* the new root that
  names them, and self-verifies the new root (both thresholds, version exactly N+1)
  before writing it, so the platform can never publish a root it cannot sign with or a
  root that clients would reject.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from .._exceptions import (
    ConfigurationError,
    FormatError,
    InvalidInput,
    RootRotationError,
    VerificationError,
)
from .._protocol import names
from .._protocol.names import SUBSCRIBER_ID_RE
from .._protocol.signing import (
    ROOT_TYPE,
    Envelope,
    SigningKey,
    canonical_json,
    keyid_of,
    load_private_key,
    load_public_key,
    load_x25519_public,
    sign_envelope,
    write_private_key,
    write_public_key,
)
from .._util import atomic_write, ensure_private_dir, format_utc, fsync_dir, parse_utc, utcnow

__all__ = [
    "ROOT_FILE",
    "SUBSCRIBER_ID_RE",
    "KeyDir",
    "add_subscriber",
    "build_root_payload",
    "keygen",
    "role_keys",
    "rotate_root",
    "sign_root",
    "validate_subscriber_id",
]

log = logging.getLogger("intercept_sdk._platform.keys")

ROOT_FILE = "root.json"
_ROOT_NAME_RE = re.compile(r"([1-9][0-9]{0,9})\.root\.json")
_DEFAULT_ROOT_EXPIRES = 365 * 86400.0


def validate_subscriber_id(subscriber_id: str) -> str:
    """Return ``subscriber_id`` if it is safe as a file/path name, else ConfigurationError.

    The shape is the protocol's (:data:`~intercept_sdk._protocol.names.SUBSCRIBER_ID_RE`,
    re-exported here as ``SUBSCRIBER_ID_RE``); for the key directory a bad id is a
    configuration error.
    """
    try:
        return names.validate_subscriber_id(subscriber_id)
    except InvalidInput as exc:
        raise ConfigurationError(str(exc)) from None


def _check_count(name: str, signers: int, threshold: int) -> None:
    if isinstance(signers, bool) or not isinstance(signers, int) or signers < 1:
        raise ConfigurationError(f"{name}: number of keys must be at least 1, got {signers!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ConfigurationError(f"{name}: threshold must be an integer, got {threshold!r}")
    if not 1 <= threshold <= signers:
        raise ConfigurationError(
            f"{name}: threshold must be between 1 and the number of keys ({signers}), "
            f"got {threshold}"
        )


def _expiry(now: _dt.datetime | None, seconds: float) -> tuple[_dt.datetime, str]:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ConfigurationError(f"expiry must be a positive number of seconds, got {seconds!r}")
    t = now if now is not None else utcnow()
    if t.tzinfo is None:
        raise ConfigurationError("now must be a timezone-aware datetime")
    return t, format_utc(t + _dt.timedelta(seconds=seconds))


def build_root_payload(
    *,
    version: int,
    expires: str,
    root_keys: Iterable[SigningKey | Ed25519PublicKey],
    root_threshold: int,
    online_keys: Iterable[SigningKey | Ed25519PublicKey],
    online_threshold: int,
) -> dict[str, Any]:
    """The root payload of protocol.md (type, spec, version, expires, keys, roles).

    Key ids in each role are sorted, so the same keys always give the same bytes.
    """
    keys: dict[str, dict[str, str]] = {}

    def ids(items: Iterable[SigningKey | Ed25519PublicKey]) -> list[str]:
        out: list[str] = []
        for item in items:
            pub = item.public if isinstance(item, SigningKey) else item
            kid = keyid_of(pub)
            keys[kid] = {"keytype": "ed25519", "public": pub.public_bytes_raw().hex()}
            out.append(kid)
        return sorted(set(out))

    return {
        "type": "root",
        "spec": 1,
        "version": version,
        "expires": expires,
        "keys": keys,
        "roles": {
            "root": {"keyids": ids(root_keys), "threshold": root_threshold},
            "online": {"keyids": ids(online_keys), "threshold": online_threshold},
        },
    }


def sign_root(payload: Mapping[str, Any], signers: list[SigningKey]) -> bytes:
    """Envelope bytes of ``payload`` (canonical JSON) signed by every key in ``signers``.

    Low level on purpose: no check that the signers are the right ones or enough, so
    tests can forge and under-sign roots. :func:`keygen` and :func:`rotate_root` check.
    """
    return sign_envelope(ROOT_TYPE, canonical_json(dict(payload)), signers).to_bytes()


def role_keys(payload: Mapping[str, Any], role: str) -> tuple[dict[str, Ed25519PublicKey], int]:
    """Public keys (by key id) and threshold of ``role`` in a root payload.

    Only for a payload whose signatures were already checked (or our own file); raises
    FormatError when the role, a key id or a key is malformed.
    """
    try:
        spec = payload["roles"][role]
        keyids = spec["keyids"]
        threshold = spec["threshold"]
        table = payload["keys"]
        if not isinstance(keyids, list) or not isinstance(threshold, int):
            raise TypeError
        out: dict[str, Ed25519PublicKey] = {}
        for kid in keyids:
            info = table[kid]
            if info["keytype"] != "ed25519":
                raise TypeError
            out[kid] = Ed25519PublicKey.from_public_bytes(bytes.fromhex(info["public"]))
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"root metadata: role {role!r} is malformed") from None
    return out, threshold


def _verify_root_signatures(
    envelope: Envelope, payload: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> None:
    """Self-check: threshold of the root's own root role, and of the previous root's."""
    checks = [("new", payload)] + ([("previous", previous)] if previous is not None else [])
    for label, p in checks:
        keys, threshold = role_keys(p, "root")
        good = envelope.valid_keyids(keys)
        if len(good) < threshold:
            raise RootRotationError(
                f"root version {payload.get('version')}: {len(good)} valid signatures of the "
                f"{label} root role, threshold is {threshold}"
            )


class KeyDir:
    """Read access to a key directory made by :func:`keygen`.

    Nothing is cached across calls except the directory path, so a rotation done by
    another process is seen on the next call. Private keys are loaded only when asked,
    so the publisher works with the offline root keys removed from the machine.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not (self.path / ROOT_FILE).is_file():
            raise ConfigurationError(
                f"{self.path} is not a key directory (no {ROOT_FILE}); run keygen first"
            )

    # -- paths ------------------------------------------------------------------------
    @property
    def root_dir(self) -> Path:
        return self.path / "root"

    @property
    def state_dir(self) -> Path:
        """Private publisher state (never inside a site directory)."""
        return ensure_private_dir(self.path / "state")

    @property
    def subscribers_dir(self) -> Path:
        return self.path / "subscribers"

    # -- root -------------------------------------------------------------------------
    @property
    def root_bytes(self) -> bytes:
        """The newest signed root, as written (the file integrators pin)."""
        try:
            return (self.path / ROOT_FILE).read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read {self.path / ROOT_FILE}: {exc}") from None

    @property
    def root_payload(self) -> dict[str, Any]:
        """Payload of the newest root (our own file: parsed without re-verifying)."""
        return Envelope.from_bytes(self.root_bytes).payload_json()

    @property
    def root_version(self) -> int:
        version = self.root_payload.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise FormatError(f"{self.path / ROOT_FILE}: version is not a positive integer")
        return version

    @property
    def root_expires(self) -> _dt.datetime:
        try:
            return parse_utc(str(self.root_payload["expires"]))
        except (KeyError, ValueError):
            raise FormatError(f"{self.path / ROOT_FILE}: expires is not a UTC date-time") from None

    def root_files(self) -> dict[int, Path]:
        """Every stored ``root/<N>.root.json`` by version."""
        out: dict[int, Path] = {}
        if self.root_dir.is_dir():
            for p in self.root_dir.iterdir():
                m = _ROOT_NAME_RE.fullmatch(p.name)
                if m:
                    out[int(m.group(1))] = p
        return dict(sorted(out.items()))

    def role(self, role: str) -> tuple[dict[str, Ed25519PublicKey], int]:
        """Public keys (by key id) and threshold of ``role`` in the newest root."""
        return role_keys(self.root_payload, role)

    # -- private keys -----------------------------------------------------------------
    def _all_private(self) -> dict[str, SigningKey]:
        """Every Ed25519 private key file in the directory, by key id.

        Current files win over staged ones, staged over retired, so a key id found in
        several places (after an interrupted rotation) loads from the current file.
        """
        found: dict[str, SigningKey] = {}
        places = [self.path / "retired", self.path / "staged", self.path]
        for place in places:
            if not place.is_dir():
                continue
            pattern = "**/*.pem" if place.name == "retired" else "*.pem"
            for p in sorted(place.glob(pattern)):
                if not (p.name.startswith("root-") or p.name.startswith("online-")):
                    continue
                key = SigningKey(load_private_key(p))
                found[key.keyid] = key
        return found

    def _keys_for(self, role: str) -> list[SigningKey]:
        wanted, _ = self.role(role)
        have = self._all_private()
        return [have[k] for k in sorted(wanted) if k in have]

    def root_keys(self) -> list[SigningKey]:
        """Root-role private keys present here (may be fewer than the role lists)."""
        return self._keys_for("root")

    def online_keys(self) -> list[SigningKey]:
        """Online-role private keys present here, checked against the online threshold."""
        keys = self._keys_for("online")
        _, threshold = self.role("online")
        if len(keys) < threshold:
            raise ConfigurationError(
                f"{self.path}: {len(keys)} online key file(s) match root version "
                f"{self.root_version}, the online threshold is {threshold}"
            )
        return keys

    # -- subscribers ------------------------------------------------------------------
    def _subscriber_files(self, suffix: str) -> dict[str, Path]:
        out: dict[str, Path] = {}
        if self.subscribers_dir.is_dir():
            for p in sorted(self.subscribers_dir.iterdir()):
                if p.name.endswith(suffix):
                    sid = p.name[: -len(suffix)]
                    if names.is_subscriber_id(sid):
                        out[sid] = p
        return out

    def subscriber_box_keys(self) -> dict[str, X25519PublicKey]:
        """X25519 public keys of registered subscribers (who may get restricted boxes)."""
        return {s: load_x25519_public(p) for s, p in self._subscriber_files(".x25519.pem").items()}

    def subscriber_report_keys(self) -> dict[str, Ed25519PublicKey]:
        """Ed25519 public keys of registered subscribers (who may sign reports)."""
        return {s: load_public_key(p) for s, p in self._subscriber_files(".ed25519.pem").items()}


def _generate(n: int) -> list[SigningKey]:
    return [SigningKey.generate() for _ in range(n)]


def _write_keys(directory: Path, prefix: str, keys: list[SigningKey]) -> None:
    for i, key in enumerate(keys, start=1):
        write_private_key(directory / f"{prefix}-{i}.pem", key.private)


def _write_root(directory: Path, version: int, data: bytes) -> None:
    root_dir = directory / "root"
    root_dir.mkdir(mode=0o755, exist_ok=True)
    target = root_dir / f"{version}.root.json"
    if target.exists():
        raise ConfigurationError(f"{target} already exists; signed roots are never rewritten")
    atomic_write(target, data, mode=0o644)
    atomic_write(directory / ROOT_FILE, data, mode=0o644)


def keygen(
    keys_dir: Path | str,
    *,
    signers: int = 1,
    threshold: int = 1,
    online_signers: int = 1,
    online_threshold: int = 1,
    root_expires: float = _DEFAULT_ROOT_EXPIRES,
    now: _dt.datetime | None = None,
) -> Path:
    """Create a new key directory with root version 1; return the path of ``root.json``.

    ``signers``/``threshold`` size the offline root role, ``online_*`` the online role
    that signs manifests. Refuses (ConfigurationError) when ``keys_dir`` exists and is
    not empty: keys are never overwritten.
    """
    keys_dir = Path(keys_dir)
    _check_count("root role", signers, threshold)
    _check_count("online role", online_signers, online_threshold)
    _, expires = _expiry(now, root_expires)
    if keys_dir.exists() and (not keys_dir.is_dir() or any(keys_dir.iterdir())):
        raise ConfigurationError(f"{keys_dir} already exists; refusing to overwrite keys")
    keys_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{keys_dir.name}.", suffix=".tmp", dir=keys_dir.parent))
    try:
        os.chmod(tmp, 0o700)
        root_keys, online_keys = _generate(signers), _generate(online_signers)
        _write_keys(tmp, "root", root_keys)
        _write_keys(tmp, "online", online_keys)
        payload = build_root_payload(
            version=1,
            expires=expires,
            root_keys=root_keys,
            root_threshold=threshold,
            online_keys=online_keys,
            online_threshold=online_threshold,
        )
        data = sign_root(payload, root_keys)
        _verify_root_signatures(Envelope.from_bytes(data), payload, None)
        _write_root(tmp, 1, data)
        for sub in ("retired", "subscribers", "state"):
            ensure_private_dir(tmp / sub)
        if keys_dir.exists():
            keys_dir.rmdir()  # empty (checked above); rename cannot replace it portably
        os.rename(tmp, keys_dir)
        fsync_dir(keys_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "created key directory %s: root role %d-of-%d, online role %d-of-%d, root v1 expires %s",
        keys_dir,
        threshold,
        signers,
        online_threshold,
        online_signers,
        expires,
    )
    return keys_dir / ROOT_FILE


def _finish_pending(kd: KeyDir) -> None:
    """Complete the file moves of a rotation interrupted after its root was written.

    Current-role membership comes from ``root.json``; this only tidies file names:
    keys no longer in any role go to ``retired/v<N>/``, staged keys of the current root
    take the ``root-i``/``online-i`` names.
    """
    files = kd.root_files()
    if files:
        newest = max(files)
        if newest > kd.root_version:
            # Crash between writing root/<N>.root.json and root.json: the directory wins.
            atomic_write(kd.path / ROOT_FILE, files[newest].read_bytes(), mode=0o644)
            log.warning("root.json was behind root/%d.root.json; repaired", newest)
    staged = kd.path / "staged"
    payload = kd.root_payload
    version = kd.root_version
    current = set(role_keys(payload, "root")[0]) | set(role_keys(payload, "online")[0])
    retired = ensure_private_dir(kd.path / "retired")
    moved_out: list[Path] = []
    for p in sorted(kd.path.glob("*.pem")):
        key = SigningKey(load_private_key(p))
        if key.keyid not in current:
            dest = ensure_private_dir(retired / f"v{version - 1}") / p.name
            n = 1
            while dest.exists():
                dest = dest.with_name(f"{p.stem}.{n}.pem")
                n += 1
            os.replace(p, dest)
            moved_out.append(dest)
    if staged.is_dir():
        staged_keys = sorted(staged.glob("*.pem"))
        if any(SigningKey(load_private_key(p)).keyid in current for p in staged_keys):
            for p in staged_keys:
                if (kd.path / p.name).exists():
                    raise ConfigurationError(
                        f"cannot finish rotation: {kd.path / p.name} is still a current key"
                    )
                os.replace(p, kd.path / p.name)
        else:
            # A rotation that died before writing its root: its keys were never trusted.
            for p in staged_keys:
                p.unlink()
        staged.rmdir()
    fsync_dir(kd.path)
    if moved_out:
        log.info("retired %d key file(s) of root version %d", len(moved_out), version - 1)


def rotate_root(
    keys_dir: Path | str,
    *,
    new_root_signers: int | None = None,
    new_threshold: int | None = None,
    rotate_online: bool = False,
    online_signers: int | None = None,
    online_threshold: int | None = None,
    expires: float = _DEFAULT_ROOT_EXPIRES,
    now: _dt.datetime | None = None,
) -> int:
    """Make and write root version N+1; return N+1.

    * ``new_root_signers``: generate that many new root keys (None keeps the current
      ones); ``new_threshold`` (None keeps the current threshold).
    * ``rotate_online``: generate new online keys (``online_signers``/``online_threshold``
      default to the current counts).
    * With nothing rotated this just renews the root's expiry.

    The new root is signed by the root keys of version N present here and by the new
    root keys; it is checked against both thresholds before anything is written. Old key
    files are moved to ``retired/v<N>/``.
    """
    kd = KeyDir(keys_dir)
    _finish_pending(kd)
    old_payload = kd.root_payload
    old_version = kd.root_version
    old_root_pub, old_threshold = role_keys(old_payload, "root")
    old_online_pub, old_online_threshold = role_keys(old_payload, "online")
    old_root_keys = kd.root_keys()
    if len(old_root_keys) < old_threshold:
        raise ConfigurationError(
            f"{len(old_root_keys)} root key file(s) of root version {old_version} present, "
            f"its threshold is {old_threshold}; bring the offline root keys to sign"
        )
    _, expires_text = _expiry(now, expires)

    new_root_keys = [] if new_root_signers is None else _generate(new_root_signers)
    root_members: list[SigningKey | Ed25519PublicKey] = (
        list(old_root_pub.values()) if new_root_signers is None else list(new_root_keys)
    )
    threshold = old_threshold if new_threshold is None else new_threshold
    _check_count("root role", len(root_members), threshold)

    if rotate_online:
        n_online = len(old_online_pub) if online_signers is None else online_signers
        t_online = old_online_threshold if online_threshold is None else online_threshold
        _check_count("online role", n_online, t_online)
        new_online: list[SigningKey | Ed25519PublicKey] = list(_generate(n_online))
    else:
        if online_signers is not None or online_threshold is not None:
            raise ConfigurationError("online_signers/online_threshold need rotate_online=True")
        t_online = old_online_threshold
        new_online = list(old_online_pub.values())

    version = old_version + 1
    payload = build_root_payload(
        version=version,
        expires=expires_text,
        root_keys=root_members,
        root_threshold=threshold,
        online_keys=new_online,
        online_threshold=t_online,
    )
    signers: dict[str, SigningKey] = {k.keyid: k for k in old_root_keys}
    signers.update({k.keyid: k for k in new_root_keys})
    data = sign_root(payload, list(signers.values()))
    try:
        _verify_root_signatures(Envelope.from_bytes(data), payload, old_payload)
    except VerificationError as exc:
        raise ConfigurationError(f"refusing to write root version {version}: {exc}") from None

    # 1. New private keys, durably, before any root names them.
    staged = kd.path / "staged"
    if staged.exists():
        shutil.rmtree(staged)
    ensure_private_dir(staged)
    if new_root_signers is not None:
        _write_keys(staged, "root", new_root_keys)
    if rotate_online:
        _write_keys(staged, "online", [k for k in new_online if isinstance(k, SigningKey)])
    fsync_dir(staged)
    # 2. The root (immutable file first, then the pinned copy).
    _write_root(kd.path, version, data)
    # 3. File names: retire old keys, move staged ones into place.
    _finish_pending(kd)
    log.info(
        "root rotated to version %d (new root keys: %s, new online keys: %s), expires %s",
        version,
        new_root_signers is not None,
        rotate_online,
        expires_text,
    )
    return version


def add_subscriber(
    keys_dir: Path | str,
    subscriber_id: str,
    ed25519_public_pem: bytes | None,
    x25519_public_pem: bytes | None,
) -> None:
    """Register (or re-key) a subscriber's public keys under ``keys_dir/subscribers/``.

    The Ed25519 key verifies the subscriber's reports; the X25519 key receives its
    restricted boxes. Each PEM is parsed before anything is written, so a bad key never
    replaces a good one.
    """
    kd = KeyDir(keys_dir)
    validate_subscriber_id(subscriber_id)
    if ed25519_public_pem is None and x25519_public_pem is None:
        raise ConfigurationError("add_subscriber needs an Ed25519 and/or an X25519 public key")
    ed = load_public_key(ed25519_public_pem) if ed25519_public_pem is not None else None
    xk = load_x25519_public(x25519_public_pem) if x25519_public_pem is not None else None
    directory = ensure_private_dir(kd.subscribers_dir)
    if ed is not None:
        write_public_key(directory / f"{subscriber_id}.ed25519.pem", ed)
    if xk is not None:
        write_public_key(directory / f"{subscriber_id}.x25519.pem", xk)
    log.info(
        "registered subscriber %s (report key: %s, box key: %s)",
        subscriber_id,
        ed is not None,
        xk is not None,
    )


def issue_subscriber_token(keys_dir: Path | str, subscriber_id: str) -> str:
    """A new read-access token for ``subscriber_id``; returns it (shown once).

    Only the token's SHA-256 is kept, as ``keys_dir/subscribers/<id>.token.sha256``
    (0600): the platform server reads it to let the subscriber list its own reports
    (``GET /reports`` with ``Authorization: Bearer <token>``). Issuing again replaces the
    previous token, which stops working within one re-scan of the directory.
    """
    kd = KeyDir(keys_dir)
    validate_subscriber_id(subscriber_id)
    token = "isk-sub-" + secrets.token_urlsafe(32)
    directory = ensure_private_dir(kd.subscribers_dir)
    digest = hashlib.sha256(token.encode()).hexdigest()
    atomic_write(directory / f"{subscriber_id}.token.sha256", (digest + "\n").encode(), mode=0o600)
    log.info("issued a read token for subscriber %s", subscriber_id)
    return token
