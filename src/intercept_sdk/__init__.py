"""intercept-sdk: offline, verified enforcement of the list of dishonest judgment debtors.

The public API is what ``__all__`` lists; everything in ``_``-prefixed modules is private.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs; at run time names load lazily
    from ._client.client import AsyncClient, Client
    from ._client.decisions import Decision, Entity, Ignored, Match, Officer, Person, Subject
    from ._client.health import Health
    from ._client.hooks import Event, EventHooks
    from ._client.keys import SubscriberKeys, load_subscriber_key
    from ._client.ledger import LedgerEvent, Restriction
    from ._client.metrics import Metrics
    from ._client.options import ClientOptions, UnknownOption
    from ._client.retry import RetryPolicy
    from ._client.status import LastError, Status
    from ._client.store import StoreState
    from ._client.sync import SyncResult
    from ._client.watches import Listener, Watch, WatchChange
    from ._exceptions import (
        BaseVersionMismatch,
        ClientClosed,
        ConfigurationError,
        DigestMismatch,
        ExpiredError,
        FormatError,
        HTTPStatusError,
        Intercepted,
        InterceptError,
        InvalidEntry,
        InvalidIdentifier,
        InvalidInput,
        InvalidReport,
        NetworkError,
        NeverSynced,
        NotRegistered,
        OutboxFull,
        ReportError,
        RollbackError,
        RootRotationError,
        SignatureError,
        StoreCorrupted,
        StoreError,
        SyncError,
        TooLarge,
        TrustRootError,
        UnknownMeasure,
        VerificationError,
    )
    from ._platform.publish import PublishResult
    from ._protocol.catalog import Measure, get_measure, measures
    from ._protocol.identifiers import (
        IdNumberInfo,
        id_number_info,
        normalize_id_number,
        normalize_org_code,
        normalize_uscc,
    )
    from ._protocol.models import Entry, Related, parse_entry

# Names load lazily (PEP 562) so that `import intercept_sdk` and the CLI start fast, and a
# process that only needs the store (a worker checking) does not import the server stack.
_LAZY: dict[str, str] = {
    "AsyncClient": "._client.client",
    "BaseVersionMismatch": "._exceptions",
    "Client": "._client.client",
    "ClientClosed": "._exceptions",
    "ClientOptions": "._client.options",
    "ConfigurationError": "._exceptions",
    "Decision": "._client.decisions",
    "DigestMismatch": "._exceptions",
    "Entity": "._client.decisions",
    "Entry": "._protocol.models",
    "Event": "._client.hooks",
    "EventHooks": "._client.hooks",
    "ExpiredError": "._exceptions",
    "FormatError": "._exceptions",
    "HTTPStatusError": "._exceptions",
    "Health": "._client.health",
    "IdNumberInfo": "._protocol.identifiers",
    "Ignored": "._client.decisions",
    "InterceptError": "._exceptions",
    "Intercepted": "._exceptions",
    "InvalidEntry": "._exceptions",
    "InvalidIdentifier": "._exceptions",
    "InvalidInput": "._exceptions",
    "InvalidReport": "._exceptions",
    "LastError": "._client.status",
    "Match": "._client.decisions",
    "Measure": "._protocol.catalog",
    "Metrics": "._client.metrics",
    "NetworkError": "._exceptions",
    "NotRegistered": "._exceptions",
    "NeverSynced": "._exceptions",
    "Officer": "._client.decisions",
    "OutboxFull": "._exceptions",
    "Person": "._client.decisions",
    "PublishResult": "._platform.publish",
    "Related": "._protocol.models",
    "ReportError": "._exceptions",
    "RetryPolicy": "._client.retry",
    "RollbackError": "._exceptions",
    "RootRotationError": "._exceptions",
    "SignatureError": "._exceptions",
    "Status": "._client.status",
    "LedgerEvent": "._client.ledger",
    "Listener": "._client.watches",
    "Restriction": "._client.ledger",
    "StoreCorrupted": "._exceptions",
    "StoreError": "._exceptions",
    "StoreState": "._client.store",
    "Subject": "._client.decisions",
    "SubscriberKeys": "._client.keys",
    "SyncError": "._exceptions",
    "SyncResult": "._client.sync",
    "TooLarge": "._exceptions",
    "TrustRootError": "._exceptions",
    "UnknownMeasure": "._exceptions",
    "UnknownOption": "._client.options",
    "VerificationError": "._exceptions",
    "Watch": "._client.watches",
    "WatchChange": "._client.watches",
    "get_measure": "._protocol.catalog",
    "id_number_info": "._protocol.identifiers",
    "load_subscriber_key": "._client.keys",
    "measures": "._protocol.catalog",
    "normalize_id_number": "._protocol.identifiers",
    "normalize_org_code": "._protocol.identifiers",
    "normalize_uscc": "._protocol.identifiers",
    "parse_entry": "._protocol.models",
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'intercept_sdk' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "BaseVersionMismatch",
    "Client",
    "ClientClosed",
    "ClientOptions",
    "ConfigurationError",
    "Decision",
    "DigestMismatch",
    "Entity",
    "Entry",
    "Event",
    "EventHooks",
    "ExpiredError",
    "FormatError",
    "HTTPStatusError",
    "Health",
    "IdNumberInfo",
    "Ignored",
    "InterceptError",
    "Intercepted",
    "InvalidEntry",
    "InvalidIdentifier",
    "InvalidInput",
    "InvalidReport",
    "LastError",
    "LedgerEvent",
    "Listener",
    "Match",
    "Measure",
    "Metrics",
    "NetworkError",
    "NeverSynced",
    "NotRegistered",
    "Officer",
    "OutboxFull",
    "Person",
    "PublishResult",
    "Related",
    "ReportError",
    "Restriction",
    "RetryPolicy",
    "RollbackError",
    "RootRotationError",
    "SignatureError",
    "Status",
    "StoreCorrupted",
    "StoreError",
    "StoreState",
    "Subject",
    "SubscriberKeys",
    "SyncError",
    "SyncResult",
    "TooLarge",
    "TrustRootError",
    "UnknownMeasure",
    "UnknownOption",
    "VerificationError",
    "Watch",
    "WatchChange",
    "get_measure",
    "id_number_info",
    "load_subscriber_key",
    "measures",
    "normalize_id_number",
    "normalize_org_code",
    "normalize_uscc",
    "parse_entry",
]
