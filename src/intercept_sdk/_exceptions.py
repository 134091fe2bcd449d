"""Every exception the SDK raises on purpose, in one tree.

Foreign exceptions (``httpx``, ``sqlite3``, ``cryptography``, ``pydantic``, ``OSError``)
are translated at the boundary where they occur, so an integrator only ever needs to
catch what is drawn here::

    InterceptError
    ├── ConfigurationError        bad option, unreadable key file, bad trust root pin
    ├── InvalidInput              anything a caller passed that cannot be used
    │   ├── InvalidIdentifier     ID number / USCC / organisation code (kind + exact reason)
    │   ├── InvalidEntry          a list entry that fails validation (reasons per field)
    │   ├── UnknownMeasure        a measure code not in the catalog
    │   └── InvalidReport         a report that cannot be built or is not accepted
    ├── VerificationError         something received failed verification; trusted state unchanged
    │   ├── SignatureError        missing, forged, unknown key, wrong role, below threshold
    │   ├── RollbackError         older version, or same version with other content
    │   ├── ExpiredError          metadata past its expiry (freeze attack)
    │   ├── DigestMismatch        artefact hash/length or state digest differs from the signed one
    │   ├── TooLarge              download longer than the signed length or the configured cap
    │   ├── BaseVersionMismatch   delta applied to a state other than its base
    │   ├── RootRotationError     new root not signed by both thresholds or skipping a version
    │   ├── TrustRootError        trust root missing, or not the pinned one
    │   └── FormatError           signed content that is not what the protocol says
    ├── StoreError                local cache unusable
    │   ├── StoreCorrupted        cache files do not match the signed digest (tampering, disk fault)
    │   └── NeverSynced           no verified version yet: the SDK never answers "allow" blind
    ├── SyncError                 a sync attempt failed; the last good version stays in force
    │   ├── NetworkError          connect / read timeout, reset, total deadline exceeded
    │   ├── HTTPStatusError       the platform answered with an error status (``status_code``)
    │   └── NotRegistered         the list has no sealed box for this unit: not (or no longer)
    │                             registered, or registered with another X25519 key
    ├── ReportError               the outbox cannot take the report
    │   └── OutboxFull            disk cap reached; nothing was dropped, the caller must act
    └── ClientClosed              the client was used after ``close()``

    Intercepted                   NOT an InterceptError: raised by ``Client.block()`` when the
                                  action is block. Kept outside the tree on purpose, so that a
                                  handler written as ``except InterceptError: fail_open()`` can
                                  never let a blocked person through.

Every class is importable from :mod:`intercept_sdk`. Messages say what was wrong and
where; they never contain a plaintext ID number of a listed person.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ._client.decisions import Decision

__all__ = [
    "BaseVersionMismatch",
    "ClientClosed",
    "ConfigurationError",
    "DigestMismatch",
    "ExpiredError",
    "FormatError",
    "HTTPStatusError",
    "InterceptError",
    "Intercepted",
    "InvalidEntry",
    "InvalidIdentifier",
    "InvalidInput",
    "InvalidReport",
    "NetworkError",
    "NeverSynced",
    "NotRegistered",
    "OutboxFull",
    "ReportError",
    "RollbackError",
    "RootRotationError",
    "SignatureError",
    "StoreCorrupted",
    "StoreError",
    "SyncError",
    "TooLarge",
    "TrustRootError",
    "UnknownMeasure",
    "VerificationError",
]


class InterceptError(Exception):
    """Root of every error the SDK raises on purpose."""


class ConfigurationError(InterceptError, ValueError):
    """An option, key file or trust root cannot be used as given."""


class InvalidInput(InterceptError, ValueError):
    """Something the caller passed cannot be used."""


class InvalidIdentifier(InvalidInput):
    """An identifier failed normalisation or validation.

    ``kind`` is ``"id_number"``, ``"uscc"`` or ``"org_code"``; ``reason`` is the exact
    reason (length, character at position N, checksum expected C got D, impossible date).
    The offending value is never echoed, since it may be a real person's ID number.
    """

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"invalid {kind}: {reason}")


class InvalidEntry(InvalidInput):
    """A list entry failed validation; ``reasons`` lists every problem found."""

    def __init__(self, entry_id: str | None, reasons: list[str]) -> None:
        self.entry_id = entry_id
        self.reasons = list(reasons)
        label = entry_id if entry_id else "<no entry_id>"
        super().__init__(f"invalid entry {label}: " + "; ".join(self.reasons))


class UnknownMeasure(InvalidInput):
    """A measure code that is not in the catalog."""


class InvalidReport(InvalidInput):
    """A report that cannot be built, or that the platform refused as malformed."""


class VerificationError(InterceptError):
    """Received data failed verification. The previously trusted state is unchanged."""


class SignatureError(VerificationError):
    """Missing or forged signature, unknown key, wrong role's key, or below threshold."""


class RollbackError(VerificationError):
    """A version older than the trusted one was offered as new."""


class ExpiredError(VerificationError):
    """Signed metadata is past its expiry: the list may be frozen by a mirror or attacker."""


class DigestMismatch(VerificationError):
    """Bytes or state differ from the hash/length/digest that the signed metadata binds."""


class TooLarge(VerificationError):
    """A download exceeded the length stated in signed metadata or the configured cap."""


class BaseVersionMismatch(VerificationError):
    """A delta was offered for a base version other than the local one."""


class RootRotationError(VerificationError):
    """A new root is not signed by both thresholds, or skips a version."""


class TrustRootError(VerificationError):
    """The trust root is missing, or is not the one pinned by the integrator."""


class FormatError(VerificationError):
    """Content (signed, or read from the cache) is not in the protocol's format."""


class StoreError(InterceptError):
    """The local cache cannot be used."""


class StoreCorrupted(StoreError):
    """The cache does not match its signed digest: tampering or a disk fault."""


class NeverSynced(StoreError):
    """No verified list version is available yet; the SDK refuses to answer blind."""


class SyncError(InterceptError):
    """A sync attempt failed. The last verified version stays in force."""


class NetworkError(SyncError):
    """Connect or read timeout, connection reset, or the total deadline was exceeded."""


class HTTPStatusError(SyncError):
    """The platform answered with an error status."""

    def __init__(self, message: str, status_code: int, retry_after: float | None = None) -> None:
        self.status_code = status_code
        self.retry_after = retry_after
        super().__init__(message)


class NotRegistered(SyncError):
    """The signed list carries no box for this unit (site format 2): the platform does not
    know its subscriber id and X25519 key, or removed it. Without the box the list cannot
    be read; the last verified version (if any) stays in force until it goes stale."""


class ReportError(InterceptError):
    """The outbox cannot take a report."""


class OutboxFull(ReportError):
    """The outbox reached its disk cap. Nothing was dropped; the report was not queued."""


class ClientClosed(InterceptError):
    """The client was used after ``close()``."""


class Intercepted(Exception):
    """Raised by ``Client.block()`` when the decision's action is ``block``.

    Carries the :class:`~intercept_sdk.Decision` and ``notice``: a Chinese text the clerk
    can show the person (case number, court, what is restricted, and how to object).
    Deliberately not a subclass of :class:`InterceptError`.
    """

    def __init__(self, decision: Decision, notice: str, report_id: str | None = None) -> None:
        self.decision = decision
        self.notice = notice
        self.report_id = report_id
        super().__init__(notice)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.decision, self.notice, self.report_id))
