"""intercept-sdk: offline, verified enforcement of the list of dishonest judgment debtors.

The public API is what ``__all__`` lists; everything in ``_``-prefixed modules is private.
"""

from ._catalog import Measure, get_measure, measures
from ._client import AsyncClient, Client, LastError, Status, Watch, WatchChange
from ._decisions import Decision, Entity, Match, Officer, Person
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
from ._fetch import RetryPolicy
from ._identifiers import (
    IdNumberInfo,
    id_number_info,
    normalize_id_number,
    normalize_org_code,
    normalize_uscc,
)
from ._models import Entry, Related, parse_entry
from ._reports import SubscriberKeys, load_subscriber_key
from ._sync import SyncResult

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "BaseVersionMismatch",
    "Client",
    "ClientClosed",
    "ConfigurationError",
    "Decision",
    "DigestMismatch",
    "Entity",
    "Entry",
    "ExpiredError",
    "FormatError",
    "HTTPStatusError",
    "IdNumberInfo",
    "InterceptError",
    "Intercepted",
    "InvalidEntry",
    "InvalidIdentifier",
    "InvalidInput",
    "InvalidReport",
    "LastError",
    "Match",
    "Measure",
    "NetworkError",
    "NeverSynced",
    "Officer",
    "OutboxFull",
    "Person",
    "Related",
    "ReportError",
    "RetryPolicy",
    "RollbackError",
    "RootRotationError",
    "SignatureError",
    "Status",
    "StoreCorrupted",
    "StoreError",
    "SubscriberKeys",
    "SyncError",
    "SyncResult",
    "TooLarge",
    "TrustRootError",
    "UnknownMeasure",
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
