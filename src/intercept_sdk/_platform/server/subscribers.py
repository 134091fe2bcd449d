"""The registered subscribers' report keys, and the signature check that uses them.

Keys come from ``<dir>/<subscriber_id>.ed25519.pem`` (what ``intercept-sdk subscriber add``
writes), read-access tokens from ``<dir>/<subscriber_id>.token.sha256`` (the SHA-256 of
the token that command printed; see :mod:`.auth`). When PyNaCl is installed, libsodium
verifies the Ed25519 signatures (about 2-3x faster than cryptography's OpenSSL build,
measured on the project machine), because at thousands of reports per second
verification is the server's whole cost.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..._exceptions import ConfigurationError
from ..._protocol.signing import Envelope, keyid_of, load_public_key, pae
from .static import RACY_NS

# Optional accelerator (see the module docstring).
_sodium_open: Callable[[bytes, bytes], bytes] | None = None
_SodiumError: type[Exception] = Exception
try:
    import nacl.bindings as _nacl_bindings  # type: ignore[import-not-found, unused-ignore]
    import nacl.exceptions as _nacl_exceptions  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the environment
    pass
else:  # pragma: no cover - depends on the environment
    _sodium_open = _nacl_bindings.crypto_sign_open
    _SodiumError = _nacl_exceptions.CryptoError
VERIFY_BACKEND = "cryptography" if _sodium_open is None else "libsodium"
"""Which library verifies report signatures in this process."""

__all__ = ["NO_KEYS", "VERIFY_BACKEND", "SubscriberKeys", "Subscribers"]

log = logging.getLogger("intercept_sdk.platform")

_MAX_KEY_FILE = 16 * 1024
_MAX_SUBSCRIBERS = 100_000
_RESCAN = 30.0  # full re-scan of the key directory at least this often (s)
_ED25519_SIG = 64


@dataclass(frozen=True)
class SubscriberKeys:
    """One snapshot of the registry: every key, by key id, and who holds it."""

    keys: dict[str, Ed25519PublicKey]  # keyid -> key
    raw: dict[str, bytes]  # keyid -> raw 32-byte public key
    owners: dict[str, frozenset[str]]  # keyid -> subscriber ids holding that key
    tokens: dict[str, str] = dataclasses.field(default_factory=dict)  # sha256 -> id

    def valid_keyids(self, env: Envelope) -> set[str]:
        """Key ids among ours whose signature over PAE(type, payload) verifies.

        Same contract as :meth:`Envelope.valid_keyids`, which is used unless PyNaCl is
        installed: libsodium then does the (strict, RFC 8032) verification.
        """
        if _sodium_open is None:
            return env.valid_keyids(self.keys)
        message = pae(env.payload_type, env.payload)
        good: set[str] = set()
        for kid, sig in env.signatures:
            raw = self.raw.get(kid)
            if raw is None or kid in good or len(sig) != _ED25519_SIG:
                continue
            try:
                _sodium_open(sig + message, raw)
            except _SodiumError:
                continue
            good.add(kid)
        return good


NO_KEYS = SubscriberKeys({}, {}, {})


class Subscribers:
    """Ed25519 keys from ``<dir>/<subscriber_id>.ed25519.pem``, reloaded when the dir changes.

    ``intercept-sdk subscriber add`` writes key files atomically (rename), which changes
    the directory's mtime; a directory changed less than 2 s ago is re-scanned on every
    lookup, and a full re-scan happens at least every 30 s regardless. Unreadable key
    files are skipped with a warning. ``None`` as the directory: nobody is registered.
    """

    _SUFFIX = ".ed25519.pem"
    _TOKEN_SUFFIX = ".token.sha256"  # noqa: S105 - a file name

    def __init__(self, directory: Path | None) -> None:
        self._dir = directory
        self._lock = threading.Lock()
        self._keys = NO_KEYS
        self._stamp: tuple[int, int] | None = None
        self._racy = True
        self._loaded_at = 0.0

    @property
    def directory(self) -> Path | None:
        """The key directory (``None``: nobody is registered)."""
        return self._dir

    def snapshot(self) -> SubscriberKeys:
        """The current keys (thread-safe; re-scans only when the directory changed)."""
        if self._dir is None:
            return NO_KEYS
        with self._lock:
            try:
                st = os.stat(self._dir)
                stamp: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
            except OSError:
                stamp = None
            now = time.monotonic()
            if stamp == self._stamp and not self._racy and now - self._loaded_at < _RESCAN:
                return self._keys
            self._keys = self._scan() if stamp is not None else NO_KEYS
            self._stamp = stamp
            self._racy = stamp is None or time.time_ns() - st.st_mtime_ns < RACY_NS
            self._loaded_at = now
            return self._keys

    def _scan(self) -> SubscriberKeys:
        assert self._dir is not None
        keys: dict[str, Ed25519PublicKey] = {}
        owners: dict[str, set[str]] = {}
        try:
            names = sorted(os.listdir(self._dir))
        except OSError as exc:
            log.warning("cannot list subscriber keys in %s: %s", self._dir, exc.strerror)
            return self._keys
        count = 0
        for name in names:
            if name.startswith(".") or not name.endswith(self._SUFFIX):
                continue
            if count >= _MAX_SUBSCRIBERS:
                log.warning("more than %d subscriber keys; the rest are ignored", _MAX_SUBSCRIBERS)
                break
            key = self._load(self._dir / name)
            if key is not None:
                kid = keyid_of(key)
                keys[kid] = key
                owners.setdefault(kid, set()).add(name[: -len(self._SUFFIX)])
                count += 1
        if len(keys) != len(self._keys.keys):
            log.info("loaded %d subscriber key(s) from %s", len(keys), self._dir)
        raw = {
            kid: key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            for kid, key in keys.items()
        }
        tokens = self._tokens(names)
        return SubscriberKeys(keys, raw, {k: frozenset(v) for k, v in owners.items()}, tokens)

    def _tokens(self, names: list[str]) -> dict[str, str]:
        """token SHA-256 -> subscriber id, from the ``<id>.token.sha256`` files."""
        assert self._dir is not None
        tokens: dict[str, str] = {}
        for name in names[: _MAX_SUBSCRIBERS * 4]:
            if name.startswith(".") or not name.endswith(self._TOKEN_SUFFIX):
                continue
            try:
                with (self._dir / name).open("rb") as f:
                    text = f.read(256).decode("ascii", "replace").strip()
            except OSError as exc:
                log.warning("skipping subscriber token %s: %s", name, exc.strerror)
                continue
            if re.fullmatch(r"[0-9a-f]{64}", text) is None:
                log.warning("skipping subscriber token %s: not a hex SHA-256", name)
                continue
            tokens[text] = name[: -len(self._TOKEN_SUFFIX)]
        return tokens

    @staticmethod
    def _load(path: Path) -> Ed25519PublicKey | None:
        """The public key in ``path``, or None (with a warning) if it cannot be used."""
        try:
            with path.open("rb") as f:
                pem = f.read(_MAX_KEY_FILE + 1)
            if len(pem) > _MAX_KEY_FILE:
                raise ConfigurationError("key file too large")
            return load_public_key(pem)
        except (OSError, ConfigurationError) as exc:
            log.warning("skipping subscriber key %s: %s", path, exc)
            return None
