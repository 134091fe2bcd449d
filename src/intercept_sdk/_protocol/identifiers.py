"""Normalisation and validation of Chinese identifiers.

* Resident ID number (居民身份证号码, GB 11643-1999), 18 characters, legacy 15 digits accepted
  and converted.
* Unified social credit code (统一社会信用代码, GB 32100-2015), 18 characters.
* Organisation code (组织机构代码, GB 11714-1997), 8 characters + check, hyphen optional.

Why normalise first: clerks paste identifiers from scanned forms and Chinese input methods,
so full-width digits/letters, the full-width hyphen, spaces and lower-case letters are
common and harmless. Anything else is rejected with :class:`InvalidIdentifier` naming the
kind and the exact reason; nothing ever passes silently, and the value is never echoed.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
from dataclasses import dataclass
from operator import mul as _mul
from typing import Literal

from .._exceptions import InvalidIdentifier

__all__ = [
    "IdNumberInfo",
    "id_check",
    "id_number_info",
    "mask_identifier",
    "normalize_id_number",
    "normalize_org_code",
    "normalize_uscc",
    "org_code_check",
    "uscc_check",
]

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_VALUE = {c: i for i, c in enumerate(USCC_ALPHABET)}
_USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))
_ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
_ORG_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ORG_VALUE = {c: i for i, c in enumerate(_ORG_ALPHABET)}

# Full-width ASCII block (U+FF01..U+FF5E) maps to ASCII by subtracting 0xFEE0.
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_SPACES = {ord(c): None for c in " \t\r\n\u3000\u00a0\u2002\u2003\u2009\u200b\ufeff"}
_HYPHENS = {ord(c): "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2212\ufe63"}


def _prepare(value: object, kind: str) -> str:
    if not isinstance(value, str):
        raise InvalidIdentifier(kind, f"expected a string, got {type(value).__name__}")
    text = value.translate(_FULLWIDTH).translate(_SPACES).translate(_HYPHENS)
    if not text.isascii():
        # str.upper() would map some non-ASCII letters (U+017F, U+FB00 ...) into the code
        # alphabet; anything non-ASCII left after full-width folding is simply invalid.
        pos = next(i for i, c in enumerate(text) if not c.isascii())
        raise InvalidIdentifier(kind, f"character at position {pos + 1} is not allowed")
    return text.upper()


def id_check(body17: str) -> str:
    """Check character of a resident ID number for its first 17 digits."""
    total = sum(int(c) * w for c, w in zip(body17, _ID_WEIGHTS, strict=False))
    return _ID_CHECK[total % 11]


def uscc_check(body17: str) -> str:
    """Check character of a unified social credit code for its first 17 characters."""
    total = sum(_USCC_VALUE[c] * w for c, w in zip(body17, _USCC_WEIGHTS, strict=False))
    return USCC_ALPHABET[(31 - total % 31) % 31]


def org_code_check(body8: str) -> str:
    """Check character of an organisation code for its first 8 characters."""
    total = sum(_ORG_VALUE[c] * w for c, w in zip(body8, _ORG_WEIGHTS, strict=False))
    c = 11 - total % 11
    return "X" if c == 10 else "0" if c == 11 else str(c)


def _check_birth_date(digits: str, kind: str, offset: int) -> _dt.date:
    try:
        return _dt.date(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        raise InvalidIdentifier(
            kind,
            f"impossible birth date {digits[0:4]}-{digits[4:6]}-{digits[6:8]} "
            f"at positions {offset + 1}-{offset + 8}",
        ) from None


_FAST_ID = re.compile(r"[0-9]{17}[0-9Xx]\Z")
_FAST_USCC = re.compile(r"[0-9A-HJ-NP-RTUW-Y]{18}\Z")
_today_cache: list[object] = [0.0, ""]
# The USCC fast path weighs ASCII bytes through translation tables that give a code
# character's value (the tests check agreement with the plain sums).
_USCC_BYTE_VALUES = bytes(USCC_ALPHABET.find(chr(b)) % 256 for b in range(256))
_ORG_BYTE_VALUES = bytes(_ORG_ALPHABET.find(chr(b)) % 256 for b in range(256))
_valid_births: dict[str, bool] = {}


def _today_str() -> str:
    """Today as YYYYMMDD, recomputed at most once a minute (the check path is hot)."""
    now = time.monotonic()
    if now - float(_today_cache[0]) > 60.0:  # type: ignore[arg-type]
        _today_cache[0] = now
        _today_cache[1] = _dt.date.today().strftime("%Y%m%d")
    return str(_today_cache[1])


def _fast_id(text: str) -> str | None:
    """The common case (18 ASCII characters, already canonical) without translation."""
    if text[17] == "x":
        text = text[:17] + "X"
    # The weights are 2**(17-i) mod 11 and 13 = 2 (mod 11): reading the 17 ASCII digits
    # as a base-13 number gives the weighted sum / 2 modulo 11, in C.
    if _ID_CHECK[2 * int(text[:17], 13) % 11] != text[17]:
        return None  # let the slow path produce the exact message
    birth = text[6:14]
    valid = _valid_births.get(birth)
    if valid is None:
        valid = _valid_date(birth)
        if len(_valid_births) >= 100_000:
            _valid_births.clear()
        _valid_births[birth] = valid
    if not valid or birth > _today_str():
        return None
    return text


def _valid_date(digits: str) -> bool:
    try:
        _dt.date(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return False
    return True


def normalize_id_number(value: str, *, today: _dt.date | None = None) -> str:
    """Return the canonical 18-character resident ID number, or raise InvalidIdentifier.

    A legacy 15-digit number is converted (``19`` inserted after the area code, check
    character computed). The birth date must exist and must not lie in the future
    relative to ``today`` (default: the current date).
    """
    kind = "id_number"
    if today is None and type(value) is str and len(value) == 18 and _FAST_ID.match(value):
        fast = _fast_id(value)
        if fast is not None:
            return fast
    text = _prepare(value, kind)
    if len(text) == 15:
        for i, c in enumerate(text):
            if not c.isascii() or not c.isdigit():
                raise InvalidIdentifier(
                    kind, f"character at position {i + 1} must be a digit in a 15-digit number"
                )
        body = text[:6] + "19" + text[6:]
        try:
            birth = _check_birth_date(body[6:14], kind, 6)
        except InvalidIdentifier:
            raise InvalidIdentifier(
                kind,
                f"impossible birth date 19{text[6:8]}-{text[8:10]}-{text[10:12]} "
                "at positions 7-12 of the 15-digit number",
            ) from None
        text = body + id_check(body)
    elif len(text) == 18:
        for i, c in enumerate(text[:17]):
            if not c.isascii() or not c.isdigit():
                raise InvalidIdentifier(kind, f"character at position {i + 1} must be a digit")
        last = text[17]
        if last not in "0123456789X":
            raise InvalidIdentifier(kind, "character at position 18 must be a digit or X")
        birth = _check_birth_date(text[6:14], kind, 6)
        expected = id_check(text[:17])
        if expected != last:
            raise InvalidIdentifier(kind, f"checksum expected {expected} got {last}")
    else:
        raise InvalidIdentifier(kind, f"length must be 18 (or legacy 15), got {len(text)}")
    if birth > (today or _dt.date.today()):
        raise InvalidIdentifier(kind, f"impossible birth date {birth.isoformat()} is in the future")
    return text


def normalize_uscc(value: str) -> str:
    """Return the canonical unified social credit code, or raise InvalidIdentifier.

    The first character may be a letter (registration authorities such as A, N, Y).
    Positions 9-17 are the embedded organisation code, which must validate too.
    """
    kind = "uscc"
    if type(value) is str and _FAST_USCC.match(value):
        codes = value.encode("ascii")
        total = sum(map(_mul, codes[:17].translate(_USCC_BYTE_VALUES), _USCC_WEIGHTS))
        org = sum(map(_mul, codes[8:16].translate(_ORG_BYTE_VALUES), _ORG_WEIGHTS))
        org_check = 11 - org % 11
        if USCC_ALPHABET[-total % 31] == value[17] and value[16] == (
            "X" if org_check == 10 else "0" if org_check == 11 else str(org_check)
        ):
            return value  # the common case; anything wrong gets its message below
        text = value
    else:
        text = _prepare(value, kind)
    if len(text) != 18:
        raise InvalidIdentifier(kind, f"length must be 18, got {len(text)}")
    for i, c in enumerate(text):
        if c not in _USCC_VALUE:
            raise InvalidIdentifier(
                kind,
                f"character at position {i + 1} is not in the code alphabet "
                "0-9 A-H J-N P-R T U W-Y",
            )
    expected = uscc_check(text[:17])
    if expected != text[17]:
        raise InvalidIdentifier(kind, f"checksum expected {expected} got {text[17]}")
    embedded = text[8:17]
    org_expected = org_code_check(embedded[:8])
    if org_expected != embedded[8]:
        raise InvalidIdentifier(
            kind,
            f"embedded organisation code (positions 9-17) checksum expected {org_expected} "
            f"got {embedded[8]}",
        )
    return text


def normalize_org_code(value: str) -> str:
    """Return the canonical 9-character organisation code (no hyphen), or raise."""
    kind = "org_code"
    text = _prepare(value, kind)
    if len(text) == 10 and text[8] == "-":
        text = text[:8] + text[9]
    if len(text) != 9:
        raise InvalidIdentifier(kind, f"length must be 9 (or 10 with hyphen), got {len(text)}")
    for i, c in enumerate(text[:8]):
        if c not in _ORG_VALUE:
            raise InvalidIdentifier(kind, f"character at position {i + 1} must be 0-9 or A-Z")
    if text[8] not in "0123456789X":
        raise InvalidIdentifier(kind, "character at position 9 must be a digit or X")
    expected = org_code_check(text[:8])
    if expected != text[8]:
        raise InvalidIdentifier(kind, f"checksum expected {expected} got {text[8]}")
    return text


@dataclass(frozen=True)
class IdNumberInfo:
    """What a resident ID number says about its holder."""

    id_number: str
    birth_date: _dt.date
    sex: Literal["男", "女"]

    def age_on(self, day: _dt.date) -> int:
        """Completed years of age on ``day`` (a birthday on 29 February counts on 1 March)."""
        years = day.year - self.birth_date.year
        if (day.month, day.day) < (self.birth_date.month, self.birth_date.day):
            years -= 1
        return years


def id_number_info(value: str) -> IdNumberInfo:
    """Normalise ``value`` and derive birth date and sex (17th digit odd = male)."""
    number = normalize_id_number(value)
    birth = _dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    sex: Literal["男", "女"] = "男" if int(number[16]) % 2 == 1 else "女"
    return IdNumberInfo(number, birth, sex)


def mask_identifier(value: str) -> str:
    """Masked display form: first 4 and last 4 characters kept (1101**********1234)."""
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]
