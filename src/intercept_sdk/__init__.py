"""intercept-sdk: offline, verified enforcement of the list of dishonest judgment debtors."""

from ._exceptions import *  # noqa: F403
from ._exceptions import __all__ as _exc_all
from ._identifiers import normalize_id_number, normalize_org_code, normalize_uscc

__version__ = "0.1.0"

__all__ = [*_exc_all, "normalize_id_number", "normalize_org_code", "normalize_uscc"]
