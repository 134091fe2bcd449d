"""Ed25519 signing envelopes, key files and the X25519 box for restricted entries.

Why an envelope: signatures must cover the exact bytes received, so nothing is
re-serialised before verifying (a classic source of signature bypasses). A signed file is
a small JSON object holding the payload base64-encoded, its type, and the signatures; a
signature covers DSSE's pre-authentication encoding ``PAE(type, payload)``, which binds
the type so that a manifest signature can never pass as a root signature.

Nothing here decides trust (which keys, how many): that is :mod:`intercept_sdk._client.trust`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .._exceptions import ConfigurationError, FormatError, SignatureError, VerificationError

# Optional accelerator, as in the reference platform: with PyNaCl installed, libsodium
# makes the Ed25519 signatures (1.4-1.5x faster than cryptography's OpenSSL build on the
# project machine). Ed25519 signing is deterministic (RFC 8032), so both produce the same
# bytes; SigningKey checks that libsodium derives the same public key before using it.
_nacl_sign: Callable[[bytes, bytes], bytes] | None = None
_nacl_seed_keypair: Callable[[bytes], tuple[bytes, bytes]] | None = None
try:
    import nacl.bindings as _nacl_bindings  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the environment
    pass
else:  # pragma: no cover - depends on the environment
    _nacl_sign = _nacl_bindings.crypto_sign
    _nacl_seed_keypair = _nacl_bindings.crypto_sign_seed_keypair
SIGN_BACKEND = "cryptography" if _nacl_sign is None else "libsodium"
"""Which library makes Ed25519 signatures in this process."""

__all__ = [
    "MANIFEST_TYPE",
    "REPORT_TYPE",
    "ROOT_TYPE",
    "SIGN_BACKEND",
    "Envelope",
    "SigningKey",
    "canonical_json",
    "keyid_of",
    "load_private_key",
    "load_public_key",
    "load_x25519_private",
    "load_x25519_public",
    "open_box",
    "pae",
    "seal_box",
    "sign_envelope",
    "sign_single",
    "write_private_key",
]

ROOT_TYPE = "application/vnd.intercept-sdk.root+json"
MANIFEST_TYPE = "application/vnd.intercept-sdk.manifest+json"
REPORT_TYPE = "application/vnd.intercept-sdk.report+json"
_BOX_MAGIC = b"ISBOX1"


_DECODER = json.JSONDecoder()
_encode_str: Any = json.encoder.encode_basestring
_default: Any = json.JSONEncoder().default


def _c_encoder_factory() -> Any:
    """``json``'s C encoder constructor, if present and called as this code expects."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has it
        return None
    sample = {"b": [1.5, "é\n", True], "a": None}
    try:
        text = "".join(
            make({}, _default, _encode_str, None, ":", ",", True, False, True)(sample, 0)
        )
    except Exception:  # pragma: no cover - a future signature
        return None
    expected = json.dumps(sample, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return make if text == expected else None


_c_make_encoder: Any = _c_encoder_factory()


def canonical_json(obj: Any) -> bytes:
    """Deterministic UTF-8 JSON (sorted keys, no spaces, non-ASCII kept).

    Exactly ``json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))``,
    calling the C encoder directly (what ``json.dumps`` does underneath for these
    settings) to skip building a ``JSONEncoder`` per call.
    """
    if _c_make_encoder is None or isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    encode = _c_make_encoder({}, _default, _encode_str, None, ":", ",", True, False, True)
    return "".join(encode(obj, 0)).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what a signature actually covers."""
    t = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def keyid_of(public: Ed25519PublicKey) -> str:
    """Key id: hex SHA-256 of the raw 32-byte public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key with its key id.

    The key id (a SHA-256 of the public key) is computed once per object and cached:
    signing many reports with one key must not derive the public key every time.
    """

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def of(cls, private: Ed25519PrivateKey) -> SigningKey:
        """The (cached) SigningKey of ``private``: its key id is derived only once.

        A few recently used keys are remembered by identity (the cache holds them, so an
        id is never reused while cached); any other key gets a fresh object.
        """
        hit = _SIGNING_KEYS.get(id(private))
        if hit is not None and hit.private is private:
            return hit
        key = cls(private)
        key.keyid  # noqa: B018 - derive these now, outside the lock
        key._sodium_secret  # noqa: B018
        with _SIGNING_KEYS_LOCK:
            if len(_SIGNING_KEYS) >= _SIGNING_KEYS_MAX:
                _SIGNING_KEYS.pop(next(iter(_SIGNING_KEYS)))
            _SIGNING_KEYS[id(private)] = key
        return key

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @functools.cached_property
    def keyid(self) -> str:
        return keyid_of(self.public)

    @functools.cached_property
    def _frames(self) -> dict[str, bytes | None]:
        # payload type -> the fixed middle of a one-signature canonical envelope (see
        # sign_single), or None when the type or key id would need escaping in JSON
        return {}

    @property
    def public_hex(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ).hex()

    @functools.cached_property
    def _sodium_secret(self) -> bytes | None:
        # libsodium's 64-byte secret key for this key, or None to sign with cryptography.
        if _nacl_sign is None or _nacl_seed_keypair is None:
            return None
        try:
            seed = self.private.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            public, secret = _nacl_seed_keypair(seed)
        except Exception:  # pragma: no cover - a key libsodium cannot take
            return None
        raw_public = self.public.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return secret if public == raw_public else None

    def sign(self, data: bytes) -> bytes:
        secret = self._sodium_secret
        if secret is None or _nacl_sign is None:
            return self.private.sign(data)
        return _nacl_sign(data, secret)[:64]


# SigningKey.of: id(private key) -> its SigningKey (bounded; oldest dropped first).
_SIGNING_KEYS: dict[int, SigningKey] = {}
_SIGNING_KEYS_LOCK = threading.Lock()
_SIGNING_KEYS_MAX = 8


@dataclass(frozen=True)
class Envelope:
    """A parsed signed file. ``payload`` are the exact signed bytes."""

    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        """Parse the outer envelope only; the payload stays opaque bytes until verified."""
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise FormatError("signed file is not JSON") from None
        if not isinstance(obj, dict) or set(obj) != {"payload", "payload_type", "signatures"}:
            raise FormatError("signed file must have exactly payload, payload_type, signatures")
        ptype, payload_b64, sigs = obj["payload_type"], obj["payload"], obj["signatures"]
        if not isinstance(ptype, str) or not isinstance(payload_b64, str):
            raise FormatError("payload and payload_type must be strings")
        if not isinstance(sigs, list):
            raise FormatError("signatures must be a list")
        try:
            payload = base64.b64decode(payload_b64, validate=True)
        except (binascii.Error, ValueError):
            raise FormatError("payload is not valid base64") from None
        parsed: list[tuple[str, bytes]] = []
        for s in sigs:
            if (
                not isinstance(s, dict)
                or set(s) != {"keyid", "sig"}
                or not isinstance(s["keyid"], str)
                or not isinstance(s["sig"], str)
            ):
                raise FormatError("each signature must be {keyid, sig} strings")
            try:
                parsed.append((s["keyid"], base64.b64decode(s["sig"], validate=True)))
            except (binascii.Error, ValueError):
                raise FormatError("signature is not valid base64") from None
        return cls(ptype, payload, tuple(parsed))

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "payload_type": self.payload_type,
                "payload": base64.b64encode(self.payload).decode(),
                "signatures": [
                    {"keyid": k, "sig": base64.b64encode(s).decode()} for k, s in self.signatures
                ],
            }
        )

    def valid_keyids(self, keys: dict[str, Ed25519PublicKey]) -> set[str]:
        """Key ids among ``keys`` whose signature over PAE(type, payload) verifies."""
        message = pae(self.payload_type, self.payload)
        good: set[str] = set()
        for keyid, sig in self.signatures:
            key = keys.get(keyid)
            if key is None or keyid in good:
                continue
            try:
                key.verify(sig, message)
            except InvalidSignature:
                continue
            good.add(keyid)
        return good

    def payload_json(self) -> dict[str, Any]:
        """Decode the payload; call only after the signatures were checked."""
        data = self.payload
        try:
            # ``json.loads(data)``: bytes that start with "{" (and no NUL after it) are
            # UTF-8 to json's encoding detection, so decode them directly.
            if data[:1] == b"{" and data[1:2] != b"\x00":
                obj = _DECODER.decode(data.decode("utf-8", "surrogatepass"))
            else:
                obj = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise FormatError("signed payload is not JSON") from None
        if not isinstance(obj, dict):
            raise FormatError("signed payload must be a JSON object")
        return obj


def sign_envelope(payload_type: str, payload: bytes, keys: list[SigningKey]) -> Envelope:
    """Sign ``payload`` with every key in ``keys``."""
    message = pae(payload_type, payload)
    return Envelope(payload_type, payload, tuple((k.keyid, k.sign(message)) for k in keys))


_PLAIN_JSON_TEXT = frozenset(range(0x20, 0x7F)) - {ord('"'), ord("\\")}
_b64encode: Callable[[bytes], bytes] = functools.partial(binascii.b2a_base64, newline=False)


def sign_single(payload_type: str, payload: bytes, key: SigningKey) -> bytes:
    """``sign_envelope(payload_type, payload, [key]).to_bytes()``, assembled directly.

    The canonical JSON of a one-signature envelope is fixed text around the base64 of
    the payload and of the signature, so it is put together without building and
    serialising the object (reports are signed one by one on the caller's thread). A
    payload type or key id that would need escaping in JSON takes the general path.
    """
    frames = key._frames
    middle = frames.get(payload_type, b"")
    if middle == b"":
        middle = None
        if _PLAIN_JSON_TEXT.issuperset((payload_type + key.keyid).encode()):
            middle = b'","payload_type":"%b","signatures":[{"keyid":"%b","sig":"' % (
                payload_type.encode(),
                key.keyid.encode(),
            )
        frames[payload_type] = middle
    if middle is None:
        return sign_envelope(payload_type, payload, [key]).to_bytes()
    sig = key.sign(pae(payload_type, payload))
    return b"".join((b'{"payload":"', _b64encode(payload), middle, _b64encode(sig), b'"}]}'))


def write_private_key(path: Path, key: Ed25519PrivateKey | X25519PrivateKey) -> None:
    """Write an unencrypted PKCS#8 PEM private key with mode 0600, atomically."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    from .._util import atomic_write

    atomic_write(path, data, mode=0o600)


def write_public_key(path: Path, key: Ed25519PublicKey | X25519PublicKey) -> None:
    """Write a SubjectPublicKeyInfo PEM public key."""
    from .._util import atomic_write

    data = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write(path, data, mode=0o644)


def _read_key_bytes(source: Path | str | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read key file {source}: {exc.strerror}") from None


def load_private_key(source: Path | str | bytes) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from a PEM file or PEM bytes."""
    try:
        key = serialization.load_pem_private_key(_read_key_bytes(source), password=None)
    except (ValueError, TypeError):
        raise ConfigurationError("not a PEM private key (unencrypted PKCS#8 expected)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError("expected an Ed25519 private key")
    return key


def load_public_key(source: Path | str | bytes) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a PEM file or PEM bytes."""
    try:
        key = serialization.load_pem_public_key(_read_key_bytes(source))
    except (ValueError, TypeError):
        raise ConfigurationError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError("expected an Ed25519 public key")
    return key


def load_x25519_private(source: Path | str | bytes) -> X25519PrivateKey:
    """Load an X25519 private key (restricted-entry channel) from PEM."""
    try:
        key = serialization.load_pem_private_key(_read_key_bytes(source), password=None)
    except (ValueError, TypeError):
        raise ConfigurationError("not a PEM private key (unencrypted PKCS#8 expected)") from None
    if not isinstance(key, X25519PrivateKey):
        raise ConfigurationError("expected an X25519 private key")
    return key


def load_x25519_public(source: Path | str | bytes) -> X25519PublicKey:
    """Load an X25519 public key from PEM."""
    try:
        key = serialization.load_pem_public_key(_read_key_bytes(source))
    except (ValueError, TypeError):
        raise ConfigurationError("not a PEM public key") from None
    if not isinstance(key, X25519PublicKey):
        raise ConfigurationError("expected an X25519 public key")
    return key


def _box_key(shared: bytes, eph_pub: bytes, recipient_pub: bytes, context: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=eph_pub + recipient_pub,
        info=b"intercept-sdk box v1|" + context,
    ).derive(shared)


def seal_box(recipient: X25519PublicKey, plaintext: bytes, context: bytes) -> bytes:
    """Encrypt to one recipient: ephemeral X25519 + HKDF-SHA256 + AES-256-GCM.

    ``context`` (e.g. subscriber id and list version) is bound into the key derivation and
    the AEAD associated data, so a box cannot be replayed under another name or version.
    """
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    rpub = recipient.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key = _box_key(eph.exchange(recipient), eph_pub, rpub, context)
    nonce = os.urandom(12)
    header = _BOX_MAGIC + eph_pub + nonce
    return header + AESGCM(key).encrypt(nonce, plaintext, header + context)


def open_box(recipient: X25519PrivateKey, box: bytes, context: bytes) -> bytes:
    """Decrypt a box made by :func:`seal_box`; raise VerificationError if it fails."""
    n = len(_BOX_MAGIC)
    if len(box) < n + 32 + 12 + 16 or box[:n] != _BOX_MAGIC:
        raise FormatError("not an intercept-sdk box")
    eph_pub, nonce = box[n : n + 32], box[n + 32 : n + 44]
    header = box[: n + 44]
    rpub = recipient.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    try:
        shared = recipient.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        key = _box_key(shared, eph_pub, rpub, context)
        return AESGCM(key).decrypt(nonce, box[n + 44 :], header + context)
    except (InvalidTag, ValueError):
        raise VerificationError("restricted box does not open with this subscriber's key") from None


def verify_single(public: Ed25519PublicKey, envelope: Envelope) -> None:
    """Require a valid signature by ``public`` (used for subscriber reports)."""
    if not envelope.valid_keyids({keyid_of(public): public}):
        raise SignatureError("no valid signature by the expected key")
