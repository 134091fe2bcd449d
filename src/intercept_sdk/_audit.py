"""A tamper-evident local audit log of every decision.

Each process appends to its own file ``<cache>/audit/audit-<start>-<pid>.jsonl`` (so
several processes never interleave writes), one JSON line per decision::

    {"seq": 7, "t": "...", "measure": "...", "key": "<identifier key hex>",
     "action": "block", "entries": ["E1"], "version": 42, "prev": "<hex>", "h": "<hex>"}

``h = SHA-256(prev || canonical line without h)`` chains every line to the one before; the
first line's ``prev`` is 64 zeros. Editing, inserting or deleting a line breaks the chain,
which ``intercept-sdk audit verify`` reports with the file and line. When a subscriber key
is configured, every flushed batch ends with a ``checkpoint`` line signed with it, so even
someone who recomputes the chain cannot forge the signed heads.

No plaintext ID numbers: a subject is recorded only by its keyed identifier hash.

Writes are buffered off the check path: ``record()`` appends to an in-memory list; a
daemon thread flushes at least once per second and on ``close()``. A crash may lose the
unflushed tail (at most about a second), never break the chain: a torn last line is
detected and the next writer starts a new file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._exceptions import StoreCorrupted
from ._util import ensure_private_dir

__all__ = ["AuditLog", "AuditReport", "verify_audit"]

log = logging.getLogger("intercept_sdk.audit")
_ZERO = "0" * 64


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _chain(prev: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + _dumps(body)).hexdigest()


class AuditLog:
    """Buffered, hash-chained decision log for one process."""

    def __init__(
        self,
        directory: Path,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        flush_interval: float = 1.0,
    ) -> None:
        self.directory = ensure_private_dir(Path(directory))
        self.signing_key = signing_key
        self.flush_interval = flush_interval
        self._buf: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid = -1
        self._reset_file()

    def _reset_file(self) -> None:
        self._pid = os.getpid()
        self.path = self.directory / f"audit-{time.time_ns()}-{self._pid}.jsonl"
        self._prev = _ZERO
        self._seq = 0
        self._thread = None

    def record(
        self,
        *,
        measure: str,
        key: str,
        action: str,
        entries: Iterable[str],
        version: int,
        t: str,
    ) -> None:
        """Queue one decision; cheap (a list append), never blocks on I/O."""
        if self._closed:
            return
        if self._pid != os.getpid():  # forked child: own file, own thread
            with self._lock:
                if self._pid != os.getpid():
                    self._buf = []
                    self._reset_file()
        item = {
            "t": t,
            "measure": measure,
            "key": key,
            "action": action,
            "entries": list(entries),
            "version": version,
        }
        with self._lock:
            self._buf.append(item)
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(
                target=self._run, name="intercept-sdk-audit", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except OSError as exc:  # disk full etc.: keep the buffer, say so loudly
                log.error("audit log flush failed: %s", exc)

    def flush(self) -> None:
        """Write the buffered records (and a signed checkpoint) to disk, fsync'd."""
        with self._io_lock:
            with self._lock:
                items, self._buf = self._buf, []
            if not items:
                return
            lines: list[bytes] = []
            for item in items:
                self._seq += 1
                body = {"seq": self._seq, **item, "prev": self._prev}
                h = _chain(self._prev, body)
                lines.append(_dumps({**body, "h": h}) + b"\n")
                self._prev = h
            if self.signing_key is not None:
                self._seq += 1
                body = {"seq": self._seq, "checkpoint": self._prev, "prev": self._prev}
                sig = self.signing_key.sign(self._prev.encode()).hex()
                body["sig"] = sig
                h = _chain(self._prev, body)
                lines.append(_dumps({**body, "h": h}) + b"\n")
                self._prev = h
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, b"".join(lines))
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self, timeout: float = 2.0) -> None:
        """Flush and stop; idempotent and bounded."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with contextlib.suppress(OSError):
            self.flush()


@dataclass(frozen=True)
class AuditReport:
    """Result of verifying the audit directory."""

    files: int
    records: int
    checkpoints: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_audit(
    directory: Path, *, public_key: Ed25519PublicKey | None = None, raise_on_error: bool = False
) -> AuditReport:
    """Re-check every chain (and checkpoint signatures when ``public_key`` is given)."""
    files = records = checkpoints = 0
    problems: list[str] = []
    for path in sorted(Path(directory).glob("audit-*.jsonl")):
        files += 1
        prev = _ZERO
        with path.open("rb") as f:
            for n, raw in enumerate(f, 1):
                where = f"{path.name}:{n}"
                if not raw.endswith(b"\n"):
                    problems.append(f"{where}: torn last line (crash before flush completed)")
                    break
                try:
                    obj = json.loads(raw)
                    h = obj.pop("h")
                except (ValueError, KeyError, AttributeError):
                    problems.append(f"{where}: not an audit record")
                    break
                if obj.get("prev") != prev or _chain(prev, obj) != h:
                    problems.append(
                        f"{where}: hash chain broken (line edited, inserted or removed)"
                    )
                    break
                if "checkpoint" in obj:
                    checkpoints += 1
                    if public_key is not None:
                        try:
                            public_key.verify(bytes.fromhex(obj["sig"]), prev.encode())
                        except (InvalidSignature, ValueError):
                            problems.append(f"{where}: checkpoint signature invalid")
                            break
                else:
                    records += 1
                prev = h
    report = AuditReport(files, records, checkpoints, tuple(problems))
    if raise_on_error and problems:
        raise StoreCorrupted("audit log: " + "; ".join(problems))
    return report
