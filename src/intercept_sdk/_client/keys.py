"""The unit's own keys: a subscriber's report-signing and restricted-entry key pair files.

Generated on the unit's machine (``intercept-sdk subscriber keygen``); only the public
halves ever leave it. File names are part of the protocol (:mod:`.._protocol.reports`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .._exceptions import ConfigurationError
from .._protocol.reports import (
    REPORT_KEY_FILE,
    REPORT_PUB_FILE,
    RESTRICTED_KEY_FILE,
    RESTRICTED_PUB_FILE,
)
from .._protocol.signing import (
    SigningKey,
    load_private_key,
    load_x25519_private,
    write_private_key,
    write_public_key,
)

__all__ = ["SubscriberKeys", "load_subscriber_key", "subscriber_keygen"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubscriberKeys:
    """A subscriber's private keys.

    ``report`` signs feedback reports; ``restricted`` (optional) opens the subscriber's
    box of restricted entries. Only the public halves ever leave the unit.
    """

    report: Ed25519PrivateKey
    restricted: X25519PrivateKey | None = None

    @property
    def report_public(self) -> Ed25519PublicKey:
        return self.report.public_key()

    @property
    def keyid(self) -> str:
        """Key id of the report key, as it appears in the envelope's signatures."""
        return SigningKey.of(self.report).keyid


def subscriber_keygen(out_dir: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Create a subscriber's key pairs in ``out_dir`` and return the two public key files.

    Writes ``report.ed25519.pem`` (mode 0600) + ``report.ed25519.pub.pem`` and
    ``restricted.x25519.pem`` (0600) + ``restricted.x25519.pub.pem``, each atomically. The
    returned ``(report public, restricted public)`` paths are what the unit registers with
    the platform. Existing private keys are never replaced unless ``overwrite=True``
    (:class:`ConfigurationError`): losing a report key means every queued report becomes
    unverifiable.
    """
    out = Path(out_dir)
    targets = [out / REPORT_KEY_FILE, out / RESTRICTED_KEY_FILE]
    if not overwrite:
        existing = [p.name for p in targets if p.exists()]
        if existing:
            raise ConfigurationError(
                f"{out} already holds {', '.join(existing)}; refusing to replace a private key "
                "(pass overwrite=True to rotate)"
            )
    if not out.exists():
        out.mkdir(mode=0o700, parents=True)
    report = Ed25519PrivateKey.generate()
    restricted = X25519PrivateKey.generate()
    write_private_key(out / REPORT_KEY_FILE, report)
    write_public_key(out / REPORT_PUB_FILE, report.public_key())
    write_private_key(out / RESTRICTED_KEY_FILE, restricted)
    write_public_key(out / RESTRICTED_PUB_FILE, restricted.public_key())
    return out / REPORT_PUB_FILE, out / RESTRICTED_PUB_FILE


def _warn_if_readable(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        _log.warning(
            "private key %s is readable by other users (mode %o); chmod 600 it", path, mode & 0o777
        )


def load_subscriber_key(path_or_dir: Path | str) -> SubscriberKeys:
    """Load a subscriber's private keys from a key directory or a report key file.

    A directory must hold ``report.ed25519.pem``; ``restricted.x25519.pem`` is loaded when
    present. A file is the Ed25519 report key; a ``restricted.x25519.pem`` next to it is
    loaded when present. Raises :class:`ConfigurationError` for a missing or wrong key; a
    private key readable by group/others is loaded but logged as a warning.
    """
    path = Path(path_or_dir)
    if path.is_dir():
        report_path = path / REPORT_KEY_FILE
        if not report_path.is_file():
            raise ConfigurationError(f"{path} holds no {REPORT_KEY_FILE} (run subscriber keygen)")
    elif path.is_file():
        report_path = path
    else:
        raise ConfigurationError(f"subscriber key {path} does not exist")
    restricted_path = report_path.parent / RESTRICTED_KEY_FILE
    _warn_if_readable(report_path)
    report = load_private_key(report_path)
    restricted = None
    if restricted_path.is_file() and restricted_path != report_path:
        _warn_if_readable(restricted_path)
        restricted = load_x25519_private(restricted_path)
    return SubscriberKeys(report=report, restricted=restricted)
