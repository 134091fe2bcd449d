"""Identifier normalisation and validation (GB 11643, GB 32100, GB 11714).

Why these tests matter: an identifier that passes wrongly lets a listed person through
(or blocks a stranger); one that fails with a bare ``ValueError`` or an unclear message
leaves the integrator unable to tell the clerk what to fix. So every rejection is checked
for its exact type, ``kind`` and reason, and the check-character arithmetic is checked
both on golden examples and, with hypothesis, on every generated code and every
single-character change of it.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from intercept_sdk import InterceptError, InvalidInput
from intercept_sdk._exceptions import InvalidIdentifier
from intercept_sdk._protocol.identifiers import (
    USCC_ALPHABET,
    id_check,
    id_number_info,
    mask_identifier,
    normalize_id_number,
    normalize_org_code,
    normalize_uscc,
    org_code_check,
    uscc_check,
)

ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ORG_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"
# A fixed "today" so that the tests do not depend on the clock.
TODAY = dt.date(2026, 1, 1)


def rejects(fn: object, value: object, kind: str, *fragments: str, **kw: object) -> str:
    """Assert ``fn(value)`` raises exactly InvalidIdentifier of ``kind`` naming ``fragments``.

    Returns the reason. Also checks that the message never echoes the rejected value
    (it may be a real person's ID number).
    """
    with pytest.raises(InvalidIdentifier) as info:
        fn(value, **kw)  # type: ignore[operator]
    exc = info.value
    assert type(exc) is InvalidIdentifier
    assert exc.kind == kind
    for fragment in fragments:
        assert fragment in exc.reason, (fragment, exc.reason)
    if isinstance(value, str) and len(value.strip()) >= 6:
        assert value.strip() not in str(exc)
    return exc.reason


# -- reference implementations written from the standards, independent of the SDK -------


def ref_id_check(body17: str) -> str:
    return "10X98765432"[sum(int(c) * w for c, w in zip(body17, ID_WEIGHTS, strict=True)) % 11]


def ref_uscc_check(body17: str) -> str:
    total = sum(USCC_ALPHABET.index(c) * pow(3, i, 31) for i, c in enumerate(body17))
    return USCC_ALPHABET[(31 - total % 31) % 31]


def ref_org_check(body8: str) -> str:
    total = sum(ORG_ALPHABET.index(c) * w for c, w in zip(body8, ORG_WEIGHTS, strict=True))
    c = 11 - total % 11
    return {10: "X", 11: "0"}.get(c, str(c))


# -- strategies ---------------------------------------------------------------------------

birth_dates = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2025, 12, 31))


@st.composite
def id_numbers(draw: st.DrawFn) -> str:
    area = draw(st.text(DIGITS, min_size=6, max_size=6))
    birth = draw(birth_dates)
    seq = draw(st.text(DIGITS, min_size=3, max_size=3))
    body = f"{area}{birth:%Y%m%d}{seq}"
    return body + ref_id_check(body)


@st.composite
def legacy_id_numbers(draw: st.DrawFn) -> str:
    area = draw(st.text(DIGITS, min_size=6, max_size=6))
    birth = draw(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(1999, 12, 31)))
    seq = draw(st.text(DIGITS, min_size=3, max_size=3))
    return f"{area}{birth:%y%m%d}{seq}"


@st.composite
def org_codes(draw: st.DrawFn, alphabet: str = ORG_ALPHABET) -> str:
    body = draw(st.text(alphabet, min_size=8, max_size=8))
    return body + ref_org_check(body)


@st.composite
def usccs(draw: st.DrawFn) -> str:
    # Positions 1-8 over the whole alphabet: the first 8 need not be digits.
    head = draw(st.text(USCC_ALPHABET, min_size=8, max_size=8))
    body = head + draw(org_codes(USCC_ALPHABET))
    return body + ref_uscc_check(body)


def fullwidth(c: str) -> str:
    return chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c


@st.composite
def mangled(draw: st.DrawFn, code: str) -> str:
    """``code`` as a clerk might paste it: full-width, lower-case and spaced out."""
    out = []
    for original in code:
        c = original
        if c.isalpha() and draw(st.booleans()):
            c = c.lower()
        if draw(st.booleans()):
            c = fullwidth(c)
        out.append(c)
        out.append(draw(st.sampled_from(["", "", "", " ", "\u3000", "\t"])))
    lead = draw(st.sampled_from(["", " ", "  ", "\u3000"]))
    trail = draw(st.sampled_from(["", " ", "\t", "\u3000 "]))
    return lead + "".join(out) + trail


# -- the SDK's check functions agree with the standards ------------------------------------


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(st.text(DIGITS, min_size=17, max_size=17))
def test_id_check_matches_standard(body: str) -> None:
    assert id_check(body) == ref_id_check(body)


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(st.text(USCC_ALPHABET, min_size=17, max_size=17))
def test_uscc_check_matches_standard(body: str) -> None:
    assert uscc_check(body) == ref_uscc_check(body)


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(st.text(ORG_ALPHABET, min_size=8, max_size=8))
def test_org_code_check_matches_standard(body: str) -> None:
    assert org_code_check(body) == ref_org_check(body)


def test_check_functions_on_golden_examples() -> None:
    assert id_check("36042619910101007") == "1"
    assert id_check("12010319880601824") == "1"
    assert uscc_check("91110000600037341") == "L"
    assert uscc_check("91110108551385082") == "Q"
    assert org_code_check("60003734") == "1"


# -- resident ID numbers ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["360426199101010071", "120103198806018241"])
def test_golden_id_numbers_are_valid(value: str) -> None:
    assert normalize_id_number(value) == value


def test_legacy_15_digit_id_is_converted() -> None:
    assert normalize_id_number("110223790813697") == "110223197908136972"
    info = id_number_info("110223790813697")
    assert info.id_number == "110223197908136972"
    assert info.birth_date == dt.date(1979, 8, 13)
    assert info.sex == "男"


def test_id_number_info() -> None:
    a = id_number_info("360426199101010071")
    assert (a.birth_date, a.sex) == (dt.date(1991, 1, 1), "男")
    b = id_number_info("120103198806018241")
    assert (b.birth_date, b.sex) == (dt.date(1988, 6, 1), "女")
    assert b.age_on(dt.date(2019, 5, 31)) == 30
    assert b.age_on(dt.date(2019, 6, 1)) == 31
    assert a.age_on(dt.date(1991, 1, 1)) == 0
    assert a.age_on(dt.date(2008, 12, 31)) == 17
    assert a.age_on(dt.date(2009, 1, 1)) == 18


def test_age_of_29_february_birthday_counts_on_1_march() -> None:
    body = "11010120000229123"
    info = id_number_info(body + ref_id_check(body))
    assert info.birth_date == dt.date(2000, 2, 29)
    assert info.age_on(dt.date(2018, 2, 28)) == 17
    assert info.age_on(dt.date(2018, 3, 1)) == 18
    assert info.age_on(dt.date(2020, 2, 29)) == 20


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("36042619910101104x", "36042619910101104X"),
        ("11010519491231109ｘ", "11010519491231109X"),
        ("11010519491231109Ｘ", "11010519491231109X"),
        (" 360426 19910101 0071 ", "360426199101010071"),
        ("３６０４２６１９９１０１０１００７１", "360426199101010071"),
        ("\u3000360426199101010071\t", "360426199101010071"),
        ("１１０２２３７９０８１３６９７", "110223197908136972"),
    ],
)
def test_id_number_normalisation(value: str, expected: str) -> None:
    assert ref_id_check(expected[:17]) == expected[17]
    assert normalize_id_number(value) == expected


def test_id_wrong_length() -> None:
    rejects(normalize_id_number, "36042619910101007", "id_number", "length", "17")
    rejects(normalize_id_number, "3604261991010100711", "id_number", "length", "19")
    rejects(normalize_id_number, "", "id_number", "length", "0")


def test_id_letter_inside_digits() -> None:
    rejects(normalize_id_number, "3604261991010A0071", "id_number", "character at position 14")
    rejects(normalize_id_number, "X60426199101010071", "id_number", "character at position 1")
    rejects(normalize_id_number, "36042619910101007A", "id_number", "position 18")
    rejects(normalize_id_number, "11022379081369X", "id_number", "position 15")


def test_id_bad_check_character_names_expected_and_got() -> None:
    reason = rejects(normalize_id_number, "360426199101010072", "id_number")
    assert reason == "checksum expected 1 got 2"
    reason = rejects(normalize_id_number, "120103198806018240", "id_number")
    assert reason == "checksum expected 1 got 0"


@pytest.mark.parametrize("birth", ["19990230", "19990229", "19991301", "19990000", "00000101"])
def test_id_impossible_birth_date(birth: str) -> None:
    body = f"110101{birth}123"
    rejects(normalize_id_number, body + ref_id_check(body), "id_number", "impossible birth date")


def test_id_legacy_impossible_birth_date() -> None:
    rejects(normalize_id_number, "110223990230697", "id_number", "impossible birth date")


def test_id_future_birth_date() -> None:
    body = "11010120200501123"
    value = body + ref_id_check(body)
    reason = rejects(normalize_id_number, value, "id_number", "future", today=dt.date(2020, 4, 30))
    assert "impossible birth date" in reason
    assert normalize_id_number(value, today=dt.date(2020, 5, 1)) == value
    far = "11010121000101123"
    rejects(normalize_id_number, far + ref_id_check(far), "id_number", "future")


@pytest.mark.parametrize("value", [360426199101010071, None, b"360426199101010071", ["x"]])
def test_id_not_a_string(value: object) -> None:
    rejects(normalize_id_number, value, "id_number", "expected a string")


@pytest.mark.parametrize(
    "value",
    [
        "360426-199101010071",  # hyphen is only for organisation codes
        "360426199101010071.",
        "３６０４２６１９９１０１０１００７１。",
        "٣٦٠٤٢٦١٩٩١٠١٠١٠٠٧١",  # Arabic-Indic digits are digits, but not ASCII ones
    ],
)
def test_id_other_characters_are_rejected(value: str) -> None:
    rejects(normalize_id_number, value, "id_number")


def test_invalid_identifier_is_an_intercept_error_and_a_value_error() -> None:
    assert issubclass(InvalidIdentifier, InvalidInput)
    assert issubclass(InvalidIdentifier, InterceptError)
    assert issubclass(InvalidIdentifier, ValueError)
    exc = InvalidIdentifier("uscc", "length must be 18, got 3")
    assert str(exc) == "invalid uscc: length must be 18, got 3"


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(id_numbers())
def test_generated_id_numbers_round_trip(value: str) -> None:
    assert normalize_id_number(value, today=TODAY) == value
    info = id_number_info(value)
    assert info.birth_date.strftime("%Y%m%d") == value[6:14]
    assert info.sex == ("男" if int(value[16]) % 2 else "女")


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(st.data())
def test_mangled_id_numbers_round_trip(data: st.DataObject) -> None:
    value = data.draw(id_numbers())
    assert normalize_id_number(data.draw(mangled(value)), today=TODAY) == value


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(id_numbers(), st.integers(0, 17), st.data())
def test_every_single_character_change_to_an_id_number_is_rejected(
    value: str, pos: int, data: st.DataObject
) -> None:
    # Weights are non-zero mod 11 and digit differences are 1-9: the sum always changes.
    alphabet = DIGITS if pos < 17 else DIGITS + "X"
    new = data.draw(st.sampled_from([c for c in alphabet if c != value[pos]]))
    changed = value[:pos] + new + value[pos + 1 :]
    rejects(normalize_id_number, changed, "id_number", today=TODAY)


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(legacy_id_numbers())
def test_legacy_conversion_agrees_with_18_digit_rule(value: str) -> None:
    body = value[:6] + "19" + value[6:]
    full = body + ref_id_check(body)
    assert normalize_id_number(value) == full
    assert normalize_id_number(full) == full
    assert id_number_info(value) == id_number_info(full)
    assert id_number_info(value).sex == ("男" if int(value[14]) % 2 else "女")


# -- unified social credit codes ----------------------------------------------------------


@pytest.mark.parametrize("value", ["91110000600037341L", "91110108551385082Q"])
def test_golden_usccs_are_valid(value: str) -> None:
    assert normalize_uscc(value) == value


@pytest.mark.parametrize("first", ["A", "N", "Y", "5", "1"])
def test_uscc_may_start_with_a_letter(first: str) -> None:
    org = "MA01X3C0" + org_code_check("MA01X3C0")
    body = first + "2" + "110108" + org
    value = body + uscc_check(body)
    assert len(value) == 18
    assert normalize_uscc(value) == value
    assert normalize_uscc(value.lower()) == value


def test_uscc_normalisation() -> None:
    assert normalize_uscc(" 9111 0000 6000 3734 1l ") == "91110000600037341L"
    assert normalize_uscc("９１１１００００６０００３７３４１Ｌ") == "91110000600037341L"
    assert normalize_uscc("９１１１００００６０００３７３４１ｌ") == "91110000600037341L"


def test_uscc_wrong_length() -> None:
    rejects(normalize_uscc, "91110000600037341", "uscc", "length", "17")
    rejects(normalize_uscc, "91110000600037341LL", "uscc", "length", "19")


@pytest.mark.parametrize("bad", ["I", "O", "Z", "S", "V"])
def test_uscc_characters_outside_the_alphabet_name_the_position(bad: str) -> None:
    value = "91110000600037341L"
    rejects(normalize_uscc, bad + value[1:], "uscc", "character at position 1")
    rejects(normalize_uscc, value[:17] + bad, "uscc", "character at position 18")
    rejects(normalize_uscc, value[:4] + bad.lower() + value[5:], "uscc", "position 5")


def test_uscc_bad_check_character() -> None:
    reason = rejects(normalize_uscc, "91110000600037341M", "uscc")
    assert reason == "checksum expected L got M"


def test_uscc_whose_embedded_org_code_fails_is_rejected_even_with_a_good_uscc_check() -> None:
    body = "91110000" + "60003734" + "2"  # the org check character should be 1
    value = body + uscc_check(body)
    reason = rejects(normalize_uscc, value, "uscc", "embedded organisation code")
    assert "expected 1 got 2" in reason


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(usccs())
def test_generated_usccs_round_trip(value: str) -> None:
    assert normalize_uscc(value) == value
    assert normalize_org_code(value[8:17]) == value[8:17]


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(st.data())
def test_mangled_usccs_round_trip(data: st.DataObject) -> None:
    value = data.draw(usccs())
    assert normalize_uscc(data.draw(mangled(value))) == value


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(usccs(), st.integers(0, 17), st.data())
def test_every_single_character_change_to_a_uscc_is_rejected(
    value: str, pos: int, data: st.DataObject
) -> None:
    # 3^i mod 31 is never 0 and value differences are 1-30, so the USCC check always
    # catches it; a change at positions 9-17 may be caught by the embedded org check first.
    new = data.draw(st.sampled_from([c for c in USCC_ALPHABET if c != value[pos]]))
    rejects(normalize_uscc, value[:pos] + new + value[pos + 1 :], "uscc")


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(usccs(), st.integers(8, 16), st.data())
def test_digit_change_in_embedded_org_code_is_caught_even_after_recomputing_uscc_check(
    value: str, pos: int, data: st.DataObject
) -> None:
    assume(value[pos] in DIGITS)
    new = data.draw(st.sampled_from([c for c in DIGITS if c != value[pos]]))
    body = value[:pos] + new + value[pos + 1 : 17]
    rejects(normalize_uscc, body + uscc_check(body), "uscc", "embedded organisation code")


# -- organisation codes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["60003734-1", "600037341", "６０００３７３４－１", " 6000 3734 - 1 ", "60003734－1"]
)
def test_golden_org_code_with_or_without_hyphen(value: str) -> None:
    assert normalize_org_code(value) == "600037341"


def test_org_code_with_x_check_character() -> None:
    body = next(
        f"{n:08d}" for n in range(10_000_000, 10_001_000) if ref_org_check(f"{n:08d}") == "X"
    )
    assert normalize_org_code(body + "X") == body + "X"
    assert normalize_org_code(body + "-x") == body + "X"


def test_org_code_errors() -> None:
    rejects(normalize_org_code, "60003734", "org_code", "length", "8")
    rejects(normalize_org_code, "60003734--1", "org_code", "length")
    rejects(normalize_org_code, "6000373-41", "org_code", "length")
    rejects(normalize_org_code, "60003734-2", "org_code")
    assert rejects(normalize_org_code, "600037342", "org_code") == "checksum expected 1 got 2"
    rejects(normalize_org_code, "6000373#1", "org_code", "character at position 8")
    rejects(normalize_org_code, "60003734A", "org_code", "position 9")
    rejects(normalize_org_code, 600037341, "org_code", "expected a string")


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(org_codes())
def test_generated_org_codes_round_trip(value: str) -> None:
    assert normalize_org_code(value) == value
    assert normalize_org_code(value[:8] + "-" + value[8]) == value


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(st.data())
def test_mangled_org_codes_round_trip(data: st.DataObject) -> None:
    value = data.draw(org_codes())
    hyphenated = value[:8] + data.draw(st.sampled_from(["", "-", "－"])) + value[8]
    assert normalize_org_code(data.draw(mangled(hyphenated))) == value


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(org_codes(), st.integers(0, 8), st.data())
def test_every_single_digit_change_to_an_org_code_is_rejected(
    value: str, pos: int, data: st.DataObject
) -> None:
    # Weights 3,7,9,10,5,8,4,2 are non-zero mod 11 and digit differences are 1-9.
    assume(value[pos] in DIGITS)
    alphabet = DIGITS + "X" if pos == 8 else DIGITS
    new = data.draw(st.sampled_from([c for c in alphabet if c != value[pos]]))
    rejects(normalize_org_code, value[:pos] + new + value[pos + 1 :], "org_code")


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(org_codes(), st.integers(0, 7))
def test_letter_change_by_a_multiple_of_11_keeps_an_org_code_valid(value: str, pos: int) -> None:
    """A documented weakness of GB 11714 itself, not of the SDK.

    Characters are worth 0-35 and the check is mod 11, so swapping a character for one
    worth 11 or 22 more or less (0 ↔ B ↔ M, 1 ↔ C ↔ N, A ↔ L ↔ W, ...) leaves the weighted
    sum unchanged mod 11: the changed code is accepted. (USCCs do not have this weakness:
    their check is mod 31 over a 31-character alphabet.)
    """
    v = ORG_ALPHABET.index(value[pos])
    partners = [ORG_ALPHABET[w] for w in (v - 22, v - 11, v + 11, v + 22) if 0 <= w < 36]
    assert partners
    for p in partners:
        changed = value[:pos] + p + value[pos + 1 :]
        assert normalize_org_code(changed) == changed


def test_org_code_0_and_b_share_a_check_character() -> None:
    assert normalize_org_code("60003734-1") == "600037341"
    assert normalize_org_code("6B003734-1") == "6B0037341"


# -- no other character slips through ------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "kind", "value"),
    [
        (normalize_id_number, "id_number", "360426199101010071\u00ad"),
        (normalize_uscc, "uscc", "91110000600037341L\x00"),
        (normalize_org_code, "org_code", "60003734_1"),
        (normalize_org_code, "org_code", "60003734/1"),
    ],
)
def test_stray_characters_are_rejected(fn: object, kind: str, value: str) -> None:
    rejects(fn, value, kind)


_USCC_FF = "91110000FF0000012" + uscc_check("91110000FF0000012")


@pytest.mark.parametrize(
    ("fn", "kind", "value"),
    [
        # "6000373S8" is a valid organisation code; U+017F upper-cases to "S".
        (normalize_org_code, "org_code", "6000373\u017f8"),
        # "FF0000012" is a valid organisation code; the ligature upper-cases to "FF".
        (normalize_org_code, "org_code", "\ufb000000012"),
        # U+0131 (dotless i) upper-cases to "I".
        (normalize_org_code, "org_code", "6000373\u0131" + org_code_check("6000373I")),
        # The same ligature inside an otherwise valid USCC.
        (normalize_uscc, "uscc", _USCC_FF.replace("FF", "\ufb00")),
        # Superscript digits are digits to str.isdigit(), but not ASCII ones.
        (normalize_id_number, "id_number", "36042619910101007\u00b9"),
    ],
)
def test_non_ascii_characters_that_fold_into_the_alphabet_are_rejected(
    fn: object, kind: str, value: str
) -> None:
    """Only full-width forms are folded and only ASCII letters upper-cased: ``str.upper()``
    of other letters (long s → S, ligature ff → FF, dotless i → I) must not smuggle them
    into the alphabet."""
    rejects(fn, value, kind)


def test_the_folded_forms_are_valid_codes() -> None:
    """The rejections above are meaningful: the ASCII spellings are valid codes."""
    assert normalize_org_code("6000373S8") == "6000373S8"
    assert normalize_org_code("FF0000012") == "FF0000012"
    assert normalize_org_code("6000373I" + org_code_check("6000373I"))
    assert normalize_uscc(_USCC_FF) == _USCC_FF


# -- masking ------------------------------------------------------------------------------


def test_mask_identifier_keeps_only_the_ends() -> None:
    assert mask_identifier("360426199101010071") == "3604**********0071"
    assert mask_identifier("91110000600037341L") == "9111**********341L"
    assert mask_identifier("600037341") == "6000*7341"
    assert mask_identifier("12345678") == "********"
    assert "19910101" not in mask_identifier("360426199101010071")


@settings(deadline=None, max_examples=50)
@given(id_numbers())
def test_mask_never_reveals_the_birth_date(value: str) -> None:
    masked = mask_identifier(value)
    assert len(masked) == len(value)
    assert masked[4:14] == "*" * 10


# -- the fast paths agree with the full validation -----------------------------------------


def outcome(fn: object, value: str, **kw: object) -> str:
    """The canonical value, or the reason of the rejection."""
    try:
        return str(fn(value, **kw))  # type: ignore[operator]
    except InvalidIdentifier as exc:
        return f"rejected: {exc.reason}"


@settings(deadline=None)
@given(
    st.one_of(
        id_numbers(),
        st.text(DIGITS, min_size=17, max_size=17).map(lambda b: b + ref_id_check(b)),
        st.text(DIGITS, min_size=17, max_size=17).flatmap(
            lambda b: st.sampled_from(DIGITS + "Xx").map(lambda c: b + c)
        ),
    )
)
def test_id_fast_path_agrees_with_full_validation(value: str) -> None:
    # ``today`` given (or a leading space) forces the full path; the plain call may take
    # the fast path for canonical 18-character input.
    full = outcome(normalize_id_number, value, today=dt.date.today())
    assert outcome(normalize_id_number, value) == full
    assert outcome(normalize_id_number, " " + value) == full


@settings(deadline=None)
@given(
    st.one_of(
        usccs(),
        st.text(USCC_ALPHABET, min_size=17, max_size=17).map(lambda b: b + ref_uscc_check(b)),
        st.text(USCC_ALPHABET, min_size=18, max_size=18),
    )
)
def test_uscc_fast_path_agrees_with_full_validation(value: str) -> None:
    assert outcome(normalize_uscc, value) == outcome(normalize_uscc, " " + value + " ")


# -- the fast paths agree with the full checks ----------------------------------------------


def _outcome(fn: object, value: str, **kw: object) -> str:
    try:
        return "ok " + fn(value, **kw)  # type: ignore[operator]
    except InvalidIdentifier as exc:
        return f"error {exc}"


@settings(deadline=None, max_examples=400)  # a loaded CI machine must not make it flaky
@given(st.text(DIGITS, min_size=17, max_size=17), st.sampled_from("0123456789Xx"), st.booleans())
def test_fast_id_number_path_agrees_with_the_full_check(
    body: str, last: str, right_check: bool
) -> None:
    """``today=None`` takes the fast path; an explicit today takes the full one."""
    value = body + (id_check(body) if right_check else last)
    assert _outcome(normalize_id_number, value) == _outcome(
        normalize_id_number, value, today=dt.date.today()
    )


@settings(deadline=None, max_examples=400)  # a loaded CI machine must not make it flaky
@given(
    st.text(USCC_ALPHABET, min_size=16, max_size=16),
    st.sampled_from(USCC_ALPHABET),
    st.booleans(),
    st.booleans(),
)
def test_fast_uscc_path_agrees_with_the_check_functions(
    body16: str, last: str, right_org: bool, right_uscc: bool
) -> None:
    body = body16 + (org_code_check(body16[8:16]) if right_org else last)
    value = body + (uscc_check(body) if right_uscc else last)
    valid = uscc_check(value[:17]) == value[17] and org_code_check(value[8:16]) == value[16]
    got = _outcome(normalize_uscc, value)
    assert got.startswith("ok") == valid, (value, got)
    if valid:
        assert got == "ok " + value
    else:  # the same message as the full check gives (a spelling the fast path skips)
        assert got == _outcome(normalize_uscc, " " + value)
