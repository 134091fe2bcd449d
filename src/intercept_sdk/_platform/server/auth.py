"""Who may call what: the operator's token and the subscribers' tokens.

Why bearer tokens: report *uploads* are already authenticated report by report (each is
signed with the subscriber's registered Ed25519 key, :mod:`.intake`), so the only calls
that need a credential are the reads -- ``GET /reports`` and ``GET /stats`` -- and a
bearer token is what every HTTP tool (curl, httpx, a browser's fetch) can send.

* **Operator**: ``<state>/operator.token``, created at first start (random, 0600, path
  logged and printed by ``intercept-sdk serve``). Reads every report and the statistics.
* **Subscriber**: a token issued by ``intercept-sdk subscriber add`` (printed once; only
  its SHA-256 is kept, as ``<subscribers>/<id>.token.sha256``). Reads its own reports;
  asking for another subscriber's is 403.
* Nobody else: 401 with ``WWW-Authenticate: Bearer``.

Tokens are compared by their SHA-256 (operator: ``hmac.compare_digest``; subscribers: a
dictionary keyed by the digest, so nothing is compared byte by byte against a secret).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..._exceptions import ConfigurationError
from .subscribers import Subscribers

__all__ = [
    "OPERATOR",
    "OPERATOR_TOKEN_FILE",
    "Auth",
    "Principal",
    "ensure_operator_token",
    "token_digest",
]

log = logging.getLogger("intercept_sdk.platform")

OPERATOR_TOKEN_FILE = "operator.token"  # noqa: S105 - a file name
_MAX_TOKEN = 256
_TOKEN_BYTES = 32


def token_digest(token: str) -> str:
    """The hex SHA-256 under which a token is stored and looked up."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> str:
    """A fresh random token (256 bits) with a readable prefix (``isk-op-``, ``isk-sub-``)."""
    return prefix + secrets.token_urlsafe(_TOKEN_BYTES)


def ensure_operator_token(state_dir: Path) -> Path:
    """``<state_dir>/operator.token``: created 0600 if absent, tightened if too open.

    Several server processes behind one load balancer each read their own state
    directory: copy the same file into each (docs/operations.md).
    """
    path = state_dir / OPERATOR_TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            log.warning("%s was readable by others; set to 0600", path)
            os.chmod(path, 0o600)
        return path
    try:
        os.write(fd, (new_token("isk-op-") + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    log.info("created the operator token %s", path)
    return path


def _read_operator_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the operator token {path}: {exc}") from None
    if not 16 <= len(token) <= _MAX_TOKEN:
        raise ConfigurationError(f"the operator token in {path} must be 16..256 characters")
    return token


@dataclass(frozen=True)
class Principal:
    """Who made a request: the operator (``subscriber_id is None``) or one subscriber."""

    subscriber_id: str | None

    @property
    def is_operator(self) -> bool:
        return self.subscriber_id is None


OPERATOR = Principal(None)


class Auth:
    """Resolves ``Authorization: Bearer <token>`` to a :class:`Principal`, or a 401."""

    def __init__(self, operator_token_path: Path, subscribers: Subscribers) -> None:
        self.operator_token_path = operator_token_path
        self._operator = token_digest(_read_operator_token(operator_token_path)).encode()
        self._subscribers = subscribers

    def identify(self, request: Request) -> Principal | Response:
        """The caller, or the 401 to answer (no credential, or an unknown one)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN:
            return _unauthorized("this endpoint needs Authorization: Bearer <token>")
        digest = token_digest(token)
        if hmac.compare_digest(digest.encode(), self._operator):
            return OPERATOR
        sid = self._subscribers.snapshot().tokens.get(digest)
        if sid is not None:
            return Principal(sid)
        return _unauthorized("unknown token")


def _unauthorized(message: str) -> Response:
    return JSONResponse(
        {"error": message}, 401, headers={"WWW-Authenticate": 'Bearer realm="intercept-platform"'}
    )
