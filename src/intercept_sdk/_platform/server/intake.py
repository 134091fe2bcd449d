"""Report intake: ``POST /reports`` -- parse, verify, validate and store a batch.

A body is ``{"reports": [<envelope>, ...]}`` of signed subscriber reports (see
``docs/protocol.md``). Every signature is verified against the registered subscriber
keys before any payload is read; each authenticated payload must then pass the
protocol's own :func:`~intercept_sdk._protocol.reports.validate_report` (one schema for
the SDK that builds reports and the platform that receives them) and name the subscriber
who signed it. A batch is accepted or refused as a whole; a refusal names the first
report that failed the earliest step (``report <i>: <why>``). Accepted batches are
stored de-duplicated by ``report_id`` (:mod:`.storage`).

Verification is spread over a few threads: libsodium (through cffi) releases the GIL
while it verifies, which is most of the work, so a batch uses every core.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from ..._exceptions import FormatError, InvalidReport
from ..._protocol.reports import validate_report
from ..._protocol.signing import REPORT_TYPE, Envelope, canonical_json
from ..units import Unit, flag_report, load_units
from .limits import Limits
from .responses import error
from .storage import ReportRow, ReportStore, ReportStoreError
from .subscribers import SubscriberKeys, Subscribers

__all__ = ["PARALLEL_MIN", "POOL_WORKERS", "BadSignature", "Intake", "Refused"]

log = logging.getLogger("intercept_sdk.platform")


class Refused(Exception):
    """A batch refused as a whole: HTTP status and a message safe to echo."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


class BadSignature(Refused):
    """A report whose signature does not verify (step 2 of :meth:`Intake.verify_batch`)."""


# The envelopes the SDK sends are canonical JSON (``Envelope.to_bytes``), and a Sender's
# body is ``{"reports":[`` + envelopes joined by "," + ``]}``. Such a body is read with
# these patterns instead of a JSON parse plus a re-serialisation per envelope: a match is
# exactly the canonical JSON of what ``json.loads`` would return for it (keys in order,
# no spaces, nothing escaped), so the stored bytes and every check are the same. Any
# other body takes the general path.
_B64 = rb"[A-Za-z0-9+/]*={0,2}"
_SIG = rb'\{"keyid":"[0-9a-f]{64}","sig":"' + _B64 + rb'"\}'
_CANONICAL_ENVELOPE = re.compile(
    rb'\{"payload":"(' + _B64 + rb')","payload_type":"' + re.escape(REPORT_TYPE.encode())
    + rb'","signatures":\[(' + _SIG + rb"(?:," + _SIG + rb")*)\]\}"
)  # fmt: skip
_CANONICAL_SIG = re.compile(rb'\{"keyid":"([0-9a-f]{64})","sig":"(' + _B64 + rb')"\}')
_BATCH_HEAD = b'{"reports":['
_BATCH_TAIL = b"]}"
_COMMA = 0x2C
_MAX_CONTENT_LENGTH_DIGITS = 19
if sys.version_info >= (3, 11):
    _b64decode_strict: Callable[[bytes], bytes] = functools.partial(
        binascii.a2b_base64, strict_mode=True
    )  # what base64.b64decode(validate=True) calls
else:  # pragma: no cover - Python 3.10

    def _b64decode_strict(data: bytes) -> bytes:
        return base64.b64decode(data, validate=True)


#: Below this many reports a batch is verified on the request's own thread.
PARALLEL_MIN = 32


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


#: Threads verifying one batch (the request's own included), at most 4.
POOL_WORKERS = max(1, min(4, _usable_cores()))
#: A batch is cut into this many chunks per thread, so that a thread that gets less CPU
#: (another process on its core) leaves its share to the others.
_CHUNKS_PER_WORKER = 4

_Outcome = ReportRow | Refused
_T = TypeVar("_T")
_Parsed = list[tuple[Envelope, bytes]]  # (envelope, the canonical bytes to store)


class Intake:
    """``POST /reports`` for one app: bounds, the verification threads, the store."""

    def __init__(self, subscribers: Subscribers, store: ReportStore, limits: Limits) -> None:
        self.subscribers = subscribers
        self.store = store
        self.limits = limits
        self.limiter: anyio.CapacityLimiter | None = None
        self._inflight = 0
        self._per_client: dict[str, int] = {}
        # Threads that verify signatures (see PARALLEL_MIN); started with the app.
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._unit_cache: tuple[int, float, dict[str, Unit]] | None = None

    # -- lifecycle

    def start_pool(self) -> None:
        """Start the verification threads (idempotent); without them, batches verify inline."""
        with self._pool_lock:
            if self._pool is None and POOL_WORKERS > 1:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    POOL_WORKERS - 1, thread_name_prefix="intercept-platform-verify"
                )

    def stop_pool(self) -> None:
        """Stop the verification threads without waiting (bounded, idempotent).

        Work not started yet is cancelled; a batch waiting for it verifies the rest on
        its own thread. A chunk already running finishes on its own (each is bounded by
        ``max_reports_per_batch`` verifications).
        """
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # -- the endpoint

    async def post(self, request: Request) -> Response:
        """``POST /reports``: the whole batch is stored (200) or refused (4xx/503).

        Bounded per client address (``max_uploads_per_client``, then 429) and overall
        (``max_inflight_report_requests``, then 503), both with Retry-After; the body must
        arrive within ``body_timeout`` (else 408), so a client that trickles its body
        holds a slot for a bounded time and never more than its own share of them.
        """
        if self._inflight >= self.limits.max_inflight_report_requests:
            return error(503, "too many report uploads in progress", retry_after=1)
        peer = request.client.host if request.client is not None else ""
        mine = self._per_client.get(peer, 0)
        if mine >= self.limits.max_uploads_per_client:
            return error(429, "too many report uploads in progress from you", retry_after=1)
        self._inflight += 1
        self._per_client[peer] = mine + 1
        try:
            body: bytes | Response = error(408, "request body not received in time")
            with anyio.move_on_after(self.limits.body_timeout):
                body = await self._read_body(request)
            if isinstance(body, Response):
                return body
            status, result = await anyio.to_thread.run_sync(self.ingest, body, limiter=self.limiter)
        except ClientDisconnect:
            return error(400, "client disconnected")
        finally:
            self._inflight -= 1
            left = self._per_client.get(peer, 1) - 1
            if left > 0:
                self._per_client[peer] = left
            else:
                self._per_client.pop(peer, None)
        return JSONResponse(result, status, headers={"Retry-After": "5"} if status == 503 else None)

    async def _read_body(self, request: Request) -> bytes | Response:
        """The request body, at most ``max_body_bytes``; else a 413 (after a bounded drain)."""
        cap = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > _MAX_CONTENT_LENGTH_DIGITS:
                return error(400, "bad Content-Length")
            if int(declared) > cap:
                return await self._too_large(request, 0)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                return await self._too_large(request, len(body))
        return bytes(body)

    async def _too_large(self, request: Request, seen: int) -> Response:
        # Read (and drop) a bounded amount of the rest, so that a client that sends its
        # whole body before reading the answer sees the 413 rather than a reset.
        if seen <= self.limits.max_drain_bytes:
            with contextlib.suppress(ClientDisconnect):
                async for chunk in request.stream():
                    seen += len(chunk)
                    if seen > self.limits.max_drain_bytes:
                        break
        return error(413, f"request body larger than {self.limits.max_body_bytes} bytes")

    # -- one batch

    def ingest(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Parse, verify, validate and store one batch (in a worker thread); never raises
        :class:`Refused`: returns (HTTP status, JSON answer)."""
        try:
            rows = self.verify_batch(body)
        except Refused as exc:
            log.warning("report batch refused (%d): %s", exc.status, exc.message)
            return exc.status, {"error": exc.message}
        try:
            accepted, duplicates = self.store.insert(rows)
        except ReportStoreError:
            log.exception("cannot store reports")
            return 503, {"error": "report store unavailable"}
        log.info(
            "report batch: %d accepted, %d duplicate(s) from %s",
            len(accepted), len(duplicates), ",".join(sorted({r.subscriber_id for r in rows})),
        )  # fmt: skip
        self._flag(rows, set(accepted))
        return 200, {"accepted": accepted, "duplicates": duplicates}

    def _units(self, directory: Path) -> dict[str, Unit]:
        """The unit records, re-read when the directory changed or every 30 s."""
        mtime = os.stat(directory).st_mtime_ns
        now = time.monotonic()
        cached = self._unit_cache
        if cached is None or cached[0] != mtime or now - cached[1] > 30.0:
            cached = self._unit_cache = (mtime, now, load_units(directory))
        return cached[2]

    def _flag(self, rows: list[ReportRow], accepted: set[str]) -> None:
        """Check each accepted report against its unit's record (:func:`flag_report`): a
        unit reporting on a measure it does not enforce is logged here and shown in the
        statistics and the console. A flagged report is still stored: it is signed
        evidence. Never raises (the batch is already committed)."""
        directory = self.subscribers.directory
        if directory is None or not accepted:
            return
        try:
            units = self._units(directory)
            flagged: dict[str, list[str]] = {}  # flag -> report ids (one log line per flag)
            for r in rows:
                if r.report_id not in accepted:
                    continue
                payload = {"subscriber_id": r.subscriber_id, "kind": r.kind, "measure": r.measure}
                for flag in flag_report(units.get(r.subscriber_id), payload):
                    flagged.setdefault(flag, []).append(r.report_id)
            for flag, ids in flagged.items():
                log.warning("%d report(s) flagged (first %s): %s", len(ids), ids[0], flag)
        except Exception:  # a broken unit record must not fail intake
            log.exception("reports not checked against the unit records")

    def verify_batch(self, body: bytes) -> list[ReportRow]:
        """Parse, verify and check one batch; raise :class:`Refused` for the first problem.

        Three steps, each over the whole batch in order, so the answer names the first
        report that fails the earliest step: (1) the envelopes' shape; (2) every signature,
        before any payload is parsed (the signing key names the subscriber), spread over
        the verification threads; (3) the payloads, now authenticated, on this thread:
        validating them is Python work that holds the GIL, so sharing it out only adds
        GIL hand-offs (measured: 33.3 against 34.5 ms per 500-report batch when the
        threads also validated).
        """
        envelopes = self.canonical_envelopes(body)
        if envelopes is None:
            envelopes = self.parsed_envelopes(body)
        keys = self.subscribers.snapshot()
        first_bad = [len(envelopes)]  # lowest failing index so far (shared by the chunks)

        def work(lo: int, hi: int) -> list[frozenset[str] | BadSignature]:
            # Stops at the first bad signature, and skips whatever lies after a bad one
            # found by another chunk: the batch is refused anyway, so a batch of junk
            # signatures costs one verification per chunk, not one per report.
            out: list[frozenset[str] | BadSignature] = []
            for i in range(lo, hi):
                if i > first_bad[0]:
                    break
                who = self.signers(keys, envelopes[i][0], i)
                out.append(who)
                if isinstance(who, BadSignature):
                    first_bad[0] = min(first_bad[0], i)
                    break
            return out

        signed_by = self._map_chunks(work, len(envelopes))
        for who in signed_by:
            if isinstance(who, BadSignature):
                raise who
        assert len(signed_by) == len(envelopes)
        rows: list[ReportRow] = []
        for i, ((env, raw), who) in enumerate(zip(envelopes, signed_by, strict=True)):
            assert not isinstance(who, BadSignature)
            row = row_of(env, who, raw, i)
            if isinstance(row, Refused):
                raise row
            rows.append(row)
        return rows

    # -- step 1: the envelopes

    def parsed_envelopes(self, body: bytes) -> _Parsed:
        """Step 1 for any JSON body."""
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise Refused(400, "body is not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("reports"), list):
            raise Refused(400, 'body must be {"reports": [<envelope>, ...]}')
        items: list[Any] = doc["reports"]
        self._check_count(len(items))
        # The signature covers the base64-decoded payload, so re-encoding the outer JSON
        # object to feed Envelope.from_bytes is harmless.
        return [self._parsed_envelope(obj, f"report {i}") for i, obj in enumerate(items)]

    def _parsed_envelope(self, obj: Any, where: str) -> tuple[Envelope, bytes]:
        if not isinstance(obj, dict):
            raise Refused(400, f"{where}: not a JSON object")
        try:
            raw = canonical_json(obj)
            env = Envelope.from_bytes(raw)
        except (FormatError, ValueError, TypeError, RecursionError) as exc:
            raise Refused(400, f"{where}: {exc}") from None
        if env.payload_type != REPORT_TYPE:
            raise Refused(400, f"{where}: payload_type must be {REPORT_TYPE}")
        self._check_signature_count(env, where)
        return env, raw

    def canonical_envelopes(self, body: bytes) -> _Parsed | None:
        """Step 1 for a body of canonical envelopes (what the SDK sends), else None.

        Same checks and results as :meth:`parsed_envelopes`, without parsing JSON.
        """
        spans = _canonical_spans(body)
        if spans is None:
            return None
        self._check_count(len(spans))
        return [self._canonical_envelope(m, i) for i, m in enumerate(spans)]

    def _canonical_envelope(self, m: re.Match[bytes], i: int) -> tuple[Envelope, bytes]:
        payload_b64, sigs_json = m.group(1, 2)
        try:
            payload = _b64decode_strict(payload_b64)
        except (binascii.Error, ValueError):
            raise Refused(400, f"report {i}: payload is not valid base64") from None
        try:
            sigs = tuple(
                (kid.decode(), _b64decode_strict(sig))
                for kid, sig in _CANONICAL_SIG.findall(sigs_json)
            )
        except (binascii.Error, ValueError):
            raise Refused(400, f"report {i}: signature is not valid base64") from None
        env = Envelope(REPORT_TYPE, payload, sigs)
        if len(sigs) > 1:
            self._check_signature_count(env, f"report {i}")
        return env, m.group(0)

    def _check_count(self, n: int) -> None:
        if n > self.limits.max_reports_per_batch:
            raise Refused(413, f"at most {self.limits.max_reports_per_batch} reports per batch")

    def _check_signature_count(self, env: Envelope, where: str) -> None:
        """1..max signatures, each under a different key id: a repeated key id could
        only make the server verify the same key again (signature-work flood)."""
        if not env.signatures or len(env.signatures) > self.limits.max_signatures_per_report:
            raise Refused(
                400, f"{where}: needs 1..{self.limits.max_signatures_per_report} signatures"
            )
        if len(env.signatures) > 1 and len({kid for kid, _ in env.signatures}) != len(
            env.signatures
        ):
            raise Refused(400, f"{where}: a key id appears twice among the signatures")

    # -- steps 2 and 3: signatures, then payloads

    @staticmethod
    def signers(keys: SubscriberKeys, env: Envelope, i: int) -> frozenset[str] | BadSignature:
        """Step 2 for one report: the subscribers whose key signed it, or why not (not
        raised). Runs on the verification threads: libsodium releases the GIL."""
        valid = keys.valid_keyids(env)
        if not valid:
            if any(kid in keys.keys for kid, _ in env.signatures):
                return BadSignature(403, f"report {i}: signature does not verify")
            return BadSignature(403, f"report {i}: not signed by any registered subscriber")
        if len(valid) == 1:
            (only,) = valid
            return keys.owners[only]
        return frozenset(sid for k in valid for sid in keys.owners[k])

    def _map_chunks(self, work: Callable[[int, int], list[_T]], n: int) -> list[_T]:
        """``work(0, n)``, in chunks shared between the verification threads and this one.

        The pool takes chunks from the front while this thread takes them from the back,
        so neither waits for the other unless both are busy (a core taken by another
        process, the pool busy with another batch, or stopped: then this thread does all).
        """
        pool = self._pool
        if pool is None or n < PARALLEL_MIN:
            return work(0, n)
        parts = min(_CHUNKS_PER_WORKER * POOL_WORKERS, max(2, n // (PARALLEL_MIN // 2)))
        bounds = [(n * k // parts, n * (k + 1) // parts) for k in range(parts)]
        results: list[list[_T] | None] = [None] * parts
        futures: list[concurrent.futures.Future[list[_T]] | None] = []
        for lo, hi in bounds:
            try:
                futures.append(pool.submit(work, lo, hi))
            except RuntimeError:  # the pool was shut down meanwhile: do it here
                futures.append(None)
        for k in range(parts - 1, -1, -1):
            future = futures[k]
            if future is None or future.cancel():  # not started by the pool: take it
                results[k] = work(*bounds[k])
        out: list[_T] = []
        for done, future in zip(results, futures, strict=True):
            if done is not None:
                out.extend(done)
            elif future is not None:  # always: a chunk without a future was done above
                out.extend(future.result())
        return out


def _canonical_spans(body: bytes) -> list[re.Match[bytes]] | None:
    """The envelope matches of an SDK-shaped body, or None if it is shaped otherwise."""
    if not (body.startswith(_BATCH_HEAD) and body.endswith(_BATCH_TAIL)):
        return None
    end = len(body) - len(_BATCH_TAIL)
    pos = len(_BATCH_HEAD)
    spans: list[re.Match[bytes]] = []
    match = _CANONICAL_ENVELOPE.match
    while True:
        m = match(body, pos, end)
        if m is None:
            return None
        spans.append(m)
        pos = m.end()
        if pos == end:
            return spans
        if body[pos] != _COMMA:
            return None
        pos += 1


def row_of(env: Envelope, signers: frozenset[str], envelope: bytes, i: int) -> _Outcome:
    """Step 3 for one authenticated report: the row to store, or why it is refused.

    The payload must pass :func:`validate_report` -- the protocol's schema, the same the
    SDK applies before signing (no unknown fields, finite numbers only, nothing shaped
    like an ID number...) -- and its ``subscriber_id`` must be one of ``signers``, the
    subscribers holding a key whose signature verified.
    """
    try:
        report = validate_report(env.payload_json())
    except (FormatError, RecursionError):
        return Refused(400, f"report {i}: payload is not a JSON object")
    except InvalidReport as exc:
        return Refused(400, f"report {i}: {exc}")
    sid = report["subscriber_id"]
    if sid not in signers:
        return Refused(403, f"report {i}: not signed by the key registered for its subscriber_id")
    return ReportRow(
        report["report_id"],
        sid,
        report["kind"],
        report["measure"],
        report["entry_id"],
        report["case_no"],
        report["created_at"],
        envelope,
    )
