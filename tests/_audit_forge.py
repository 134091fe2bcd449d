"""What someone who can write the audit directory does to it, as reusable test code.

Written from the format the module docstring of ``intercept_sdk._client.audit`` defines,
without importing the package: the attacks must not share the code they attack. An
attacker without the per-cache secret can only use the old, unkeyed chain
(``key=None``); an insider who read ``audit.key`` uses the real chain key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

ZERO = "0" * 64


def chain_key(secret: bytes) -> bytes:
    return hmac.digest(secret, b"intercept-sdk audit chain v1", "sha256")


def read_secret(cache: Path) -> bytes:
    return bytes.fromhex((cache / "audit.key").read_text().strip())


def dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def link(key: bytes | None, prev: str, body: dict[str, Any]) -> str:
    data = prev.encode() + dumps(body)
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.digest(key, data, "sha256").hex()


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def rechain(
    rows_: list[dict[str, Any]],
    key: bytes | None,
    sign: Callable[[bytes], bytes] | None = None,
) -> tuple[bytes, str]:
    """``rows_`` renumbered and chained again: the file's bytes and its last ``h``.
    Checkpoints name the new heads, and keep their old signatures unless ``sign`` (a
    forger's key) signs the new ones."""
    prev, out = ZERO, []
    for seq, row in enumerate(rows_, 1):
        body = {k: v for k, v in row.items() if k != "h"}
        body.update(seq=seq, prev=prev)
        if "checkpoint" in body:
            body["checkpoint"] = prev
            if sign is not None:
                body["sig"] = sign(prev.encode()).hex()
        h = link(key, prev, body)
        out.append(dumps({**body, "h": h}) + b"\n")
        prev = h
    return b"".join(out), prev


def rewrite_index(audit_dir: Path, key: bytes, files: list[Path], *, signed: bool) -> None:
    """A consistent INDEX for ``files`` as they are now: each opened, its last line
    recorded as its head, and closed."""
    entries: list[dict[str, Any]] = []
    for path in files:
        data = rows(path)
        last = data[-1]
        entries.append({"op": "open", "file": path.name, "signed": signed})
        head = {"file": path.name, "at": last["seq"], "head": last["h"]}
        entries += [{"op": "head", **head}, {"op": "close", **head}]
    prev, out = ZERO, []
    for seq, entry in enumerate(entries, 1):
        body = {"seq": seq, "t": "2026-01-31T08:00:00+00:00", **entry, "prev": prev}
        h = link(key, prev, body)
        out.append(dumps({**body, "h": h}) + b"\n")
        prev = h
    (audit_dir / "INDEX").write_bytes(b"".join(out))
