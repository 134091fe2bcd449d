"""Synthetic list entries for the demo, the benchmarks and the tests.

Why: the real list holds personal data that must never leave the platform, yet the SDK has
to be exercised at the real scale (millions of entries) with data that *looks* real:
Chinese names, companies, courts whose names match the court code in the case number,
identifiers whose check characters are right. Everything here is invented; a generated
ID number can coincide with a real person's only by chance, so generated data must never
be shown as if it were real.

What is guaranteed:

* **Source format.** :func:`generate_entries` yields dicts in the publisher's JSON Lines
  source format: exactly the field names of :class:`~intercept_sdk._protocol.models.Entry`, dates as
  ``YYYY-MM-DD``, ``revoked_at`` as an ISO 8601 date-time with a ``+08:00`` offset, amounts
  as decimal strings, identifiers in canonical form. Every dict equals
  ``parse_entry(d).to_json_dict()``, i.e. it is already in the form the model writes back.
* **Validity.** Every entry passes `parse_entry` (including the
  measure-code check), except the ``minors`` entries, which are persons under 18 on
  ``published_at`` and fail with a ``minor`` reason only. Their ``entry_id`` starts with
  ``M`` (all others with ``E``) so that a test can find them.
* **Determinism.** The output depends only on the arguments: the same ``seed`` gives the
  same entries on every run and machine (``random.Random`` with an integer seed). ``today``
  defaults to a fixed reference day, not the clock, for the same reason.
* **Streaming and speed.** Entries are produced one at a time (a generator); nothing grows
  with ``n`` except the set of positions chosen for minors and restricted entries. One
  million entries take roughly 10 s on a typical core (37 s of CPU measured on a slow,
  heavily shared 2-vCPU VM); the hot path avoids ``date`` arithmetic and ``int()`` per
  character by using lookup tables built once.

Not guaranteed: uniqueness of person ID numbers across entries. As on the real list, the
same (synthetic) person can appear in several entries; with a million persons a few
hundred ID numbers repeat. Entity codes repeat only with negligible probability.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import os
import random
import tempfile
from bisect import bisect as _bisect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from operator import mul as _mul
from pathlib import Path
from typing import Any

from .._protocol.catalog import ROLES
from .._protocol.identifiers import USCC_ALPHABET

__all__ = [
    "COURTS",
    "MEASURE_CODES",
    "REFERENCE_TODAY",
    "generate_entries",
    "valid_id_number",
    "valid_org_code",
    "valid_uscc",
    "write_jsonl",
]

#: The day ``generate_entries`` treats as "today" when none is given. Fixed rather than
#: ``date.today()`` so that a seed always gives the same entries.
REFERENCE_TODAY = _dt.date(2026, 10, 31)

#: Measure codes that explicit ``measures`` lists are drawn from. Each must exist in the
#: measure catalog (``tests/test_synth.py`` checks this).
MEASURE_CODES: tuple[str, ...] = (
    "consumption.star_hotel",
    "consumption.private_school",
    "travel.flight",
    "travel.rail_premium",
    "realestate.purchase",
    "procurement.supplier",
    "bidding.tender",
    "subsidy.application",
    "office.civil_servant",
    "office.soe_executive",
    "finance.credit",
    "policy.support",
    "supervision.key_target",
)

# -- courts -------------------------------------------------------------------------------
# (place prefix used in company names, intermediate court name, its code,
#  ((basic court name, court code, 6-digit administrative division), ...))
# Court codes follow the case-number rule: province abbreviation + 2 digits (intermediate
# court) or + 4 digits from the administrative division (basic court).
_CITIES: tuple[tuple[str, str, str, tuple[tuple[str, str, str], ...]], ...] = (
    ("北京", "北京市第一中级人民法院", "京01", (("北京市海淀区人民法院", "京0108", "110108"),)),
    (
        "北京",
        "北京市第二中级人民法院",
        "京02",
        (
            ("北京市东城区人民法院", "京0101", "110101"),
            ("北京市西城区人民法院", "京0102", "110102"),
        ),
    ),
    ("北京", "北京市第三中级人民法院", "京03", (("北京市朝阳区人民法院", "京0105", "110105"),)),
    (
        "天津",
        "天津市第一中级人民法院",
        "津01",
        (
            ("天津市和平区人民法院", "津0101", "120101"),
            ("天津市南开区人民法院", "津0104", "120104"),
        ),
    ),
    (
        "石家庄",
        "河北省石家庄市中级人民法院",
        "冀01",
        (("石家庄市长安区人民法院", "冀0102", "130102"),),
    ),
    (
        "唐山",
        "河北省唐山市中级人民法院",
        "冀02",
        (
            ("唐山市路南区人民法院", "冀0202", "130202"),
            ("唐山市路北区人民法院", "冀0203", "130203"),
        ),
    ),
    ("太原", "山西省太原市中级人民法院", "晋01", (("太原市小店区人民法院", "晋0105", "140105"),)),
    ("沈阳", "辽宁省沈阳市中级人民法院", "辽01", (("沈阳市和平区人民法院", "辽0102", "210102"),)),
    (
        "哈尔滨",
        "黑龙江省哈尔滨市中级人民法院",
        "黑01",
        (("哈尔滨市南岗区人民法院", "黑0103", "230103"),),
    ),
    (
        "上海",
        "上海市第一中级人民法院",
        "沪01",
        (
            ("上海市闵行区人民法院", "沪0112", "310112"),
            ("上海市浦东新区人民法院", "沪0115", "310115"),
        ),
    ),
    ("南京", "江苏省南京市中级人民法院", "苏01", (("南京市玄武区人民法院", "苏0102", "320102"),)),
    ("苏州", "江苏省苏州市中级人民法院", "苏05", (("苏州市姑苏区人民法院", "苏0508", "320508"),)),
    ("杭州", "浙江省杭州市中级人民法院", "浙01", (("杭州市西湖区人民法院", "浙0106", "330106"),)),
    ("宁波", "浙江省宁波市中级人民法院", "浙02", (("宁波市鄞州区人民法院", "浙0212", "330212"),)),
    ("合肥", "安徽省合肥市中级人民法院", "皖01", (("合肥市蜀山区人民法院", "皖0104", "340104"),)),
    ("厦门", "福建省厦门市中级人民法院", "闽02", (("厦门市思明区人民法院", "闽0203", "350203"),)),
    ("南昌", "江西省南昌市中级人民法院", "赣01", (("南昌市东湖区人民法院", "赣0102", "360102"),)),
    ("九江", "江西省九江市中级人民法院", "赣04", (("德安县人民法院", "赣0426", "360426"),)),
    ("济南", "山东省济南市中级人民法院", "鲁01", (("济南市历下区人民法院", "鲁0102", "370102"),)),
    ("青岛", "山东省青岛市中级人民法院", "鲁02", (("青岛市市南区人民法院", "鲁0202", "370202"),)),
    ("郑州", "河南省郑州市中级人民法院", "豫01", (("郑州市金水区人民法院", "豫0105", "410105"),)),
    ("武汉", "湖北省武汉市中级人民法院", "鄂01", (("武汉市江岸区人民法院", "鄂0102", "420102"),)),
    ("长沙", "湖南省长沙市中级人民法院", "湘01", (("长沙市岳麓区人民法院", "湘0104", "430104"),)),
    ("广州", "广东省广州市中级人民法院", "粤01", (("广州市天河区人民法院", "粤0106", "440106"),)),
    ("深圳", "广东省深圳市中级人民法院", "粤03", (("深圳市福田区人民法院", "粤0304", "440304"),)),
    (
        "南宁",
        "广西壮族自治区南宁市中级人民法院",
        "桂01",
        (("南宁市青秀区人民法院", "桂0103", "450103"),),
    ),
    ("重庆", "重庆市第五中级人民法院", "渝05", (("重庆市渝中区人民法院", "渝0103", "500103"),)),
    ("成都", "四川省成都市中级人民法院", "川01", (("成都市武侯区人民法院", "川0107", "510107"),)),
    ("昆明", "云南省昆明市中级人民法院", "云01", (("昆明市五华区人民法院", "云0102", "530102"),)),
    ("西安", "陕西省西安市中级人民法院", "陕01", (("西安市雁塔区人民法院", "陕0113", "610113"),)),
    ("兰州", "甘肃省兰州市中级人民法院", "甘01", (("兰州市城关区人民法院", "甘0102", "620102"),)),
    (
        "乌鲁木齐",
        "新疆维吾尔自治区乌鲁木齐市中级人民法院",
        "新01",
        (("乌鲁木齐市天山区人民法院", "新0102", "650102"),),
    ),
)

# Flattened: (place, court name, court code, area, intermediate name, intermediate code).
_Basic = tuple[str, str, str, str, str, str]
_BASIC: tuple[_Basic, ...] = tuple(
    (place, name, code, area, mid_name, mid_code)
    for place, mid_name, mid_code, basics in _CITIES
    for name, code, area in basics
)

#: Every court the generator uses, name → court code (basic and intermediate courts).
COURTS: Mapping[str, str] = {
    **{mid_name: mid_code for _, mid_name, mid_code, _ in _CITIES},
    **{name: code for _, name, code, _, _, _ in _BASIC},
}

# Administrative divisions for ID numbers: the courts' districts plus a few others
# (110223 is the old 通县 code of the GB 11643 legacy example).
_ID_AREAS: tuple[str, ...] = (
    *(b[3] for b in _BASIC),
    "110223",
    "130481",
    "320582",
    "330782",
    "350583",
    "370683",
    "410381",
    "440781",
    "510681",
)
# Registration areas for USCCs: the same districts plus province- and city-level codes.
_USCC_AREAS: tuple[str, ...] = (*_ID_AREAS, "110000", "310000", "440300", "330100", "130200")

# -- names --------------------------------------------------------------------------------
_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏"
    "魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵"
    "万钱严覃武戴莫孔向汤"
)
_COMPOUND_SURNAMES = ("欧阳", "司马", "诸葛", "上官")
_GIVEN_MALE = "伟强磊军勇杰涛明超刚辉建国斌宇浩凯鑫鹏飞龙海志宏峰亮成俊德永金波林华文平东晨"
_GIVEN_FEMALE = "芳娜敏静丽艳娟秀霞桂英玉兰红丹萍燕春晓雪梅琳婷慧莉倩颖佳月华文平玲"
_TRADE_NAMES = (
    "宏达", "恒泰", "鑫源", "华诚", "金瑞", "永盛", "瑞丰", "博远", "天成", "嘉禾",
    "联创", "盛世", "汇通", "明珠", "新纪元", "广厦", "德信", "顺发", "昌隆", "正阳",
    "锦程", "富源", "兴业", "旭日", "万和", "中晟", "聚丰", "同创", "海纳", "东升",
)  # fmt: skip
_INDUSTRIES = (
    "建材", "商贸", "科技", "房地产开发", "建筑工程", "物流", "餐饮管理", "投资管理",
    "农业开发", "机械设备", "电子", "服装", "食品", "化工", "汽车销售", "装饰工程",
    "文化传媒", "医药", "钢铁", "纺织", "贸易", "实业", "置业", "环保科技",
)  # fmt: skip
_VILLAGES = ("东关", "王庄", "李家", "新华", "前进", "河西", "张湾", "马坊", "柳林", "红星")
_SCHOOL_KINDS = ("培训学校", "职业技能培训学校", "艺术培训中心", "幼儿园")

_OBLIGATIONS = (
    "被执行人应于判决生效后十日内支付申请执行人货款人民币{a}元及利息",
    "被执行人应于本判决生效之日起十日内偿还申请执行人借款本金人民币{a}元及逾期利息",
    "被执行人应支付申请执行人工程款人民币{a}元，并负担案件受理费",
    "被执行人应于调解书生效后三十日内给付申请执行人租金人民币{a}元",
    "被执行人应向申请执行人支付劳动报酬人民币{a}元及经济补偿金",
    "被执行人应赔偿申请执行人经济损失人民币{a}元，并负担诉讼费用",
    "被执行人应归还申请执行人信用卡透支本金人民币{a}元及相应利息、滞纳金",
    "被执行人应于判决生效后十五日内返还申请执行人购房款人民币{a}元并支付违约金",
)

# Registration authority (USCC position 1) → organisation types (position 2), GB 32100.
_USCC_TYPES: Mapping[str, str] = {
    "1": "1239",
    "2": "19",
    "3": "1234569",
    "4": "19",
    "5": "1239",
    "6": "129",
    "7": "129",
    "8": "19",
    "9": "123",
    "A": "19",
    "N": "12349",
    "Y": "1",
}
# First characters ``valid_uscc`` draws when none is given, with their weights.
_USCC_FIRSTS = "99999999999999551NNAY"

# Every entity gets a legal representative; these other roles sometimes (catalog order).
_ROLES_EXTRA = tuple(role for role in ROLES if role != "legal_rep")
_DIGITS = "0123456789"
_EARLIEST_BIRTH = _dt.date(1950, 1, 1).toordinal()
_FIRST_PUBLISHED = _dt.date(2015, 1, 1).toordinal()
_SEXES = ("男", "女")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_BIAS = 48 * sum(_ID_WEIGHTS)
_ID_CHECK = "10X98765432"
_ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
_USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))
# Byte translation tables: ASCII code of a character → its value in the check sums.
_ORG_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ORG_VALUES = bytes(_ORG_ALPHABET.find(chr(b)) % 256 for b in range(256))
_USCC_VALUES = bytes(USCC_ALPHABET.find(chr(b)) % 256 for b in range(256))
_DAY0 = _dt.date(1940, 1, 1).toordinal()
_DAY_END = _dt.date(2060, 1, 1).toordinal()
# Latest allowed ``today``: published_at, filed_at, revoked_at and birth dates are looked up
# in the day table, which ends in 2059.
_LAST_TODAY = _dt.date(2049, 12, 31).toordinal()
# Situation 1 (able but refuses) dominates real lists; severities mostly 1.
_SITUATION_CUMULATIVE = (0.70, 0.75, 0.83, 0.93, 0.98)
_SEVERITY_CUMULATIVE = (0.6, 0.9)


def _shift_years(day: _dt.date, years: int) -> _dt.date:
    """The same calendar day ``years`` later (negative: earlier); 29 February → 28th."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def _fast_id_check(body17: str) -> str:
    """``id_check`` without a per-character ``int()`` (the generator's hot path).

    ASCII digit bytes are the digit + 48, so the weighted sum of the bytes exceeds the
    weighted sum of the digits by 48 * sum(weights). ``tests/test_synth.py`` checks that
    this agrees with :func:`~intercept_sdk._protocol.identifiers.id_check`.
    """
    total = sum(map(_mul, body17.encode("ascii"), _ID_WEIGHTS)) - _ID_BIAS
    return _ID_CHECK[total % 11]


def _fast_org_body_check(body8: str) -> str:
    """``org_code_check`` through a byte translation table (agreement is tested)."""
    total = sum(map(_mul, body8.encode("ascii").translate(_ORG_VALUES), _ORG_WEIGHTS))
    c = 11 - total % 11
    return "X" if c == 10 else "0" if c == 11 else _DIGITS[c]


def _fast_uscc_check(body17: str) -> str:
    """``uscc_check`` through a byte translation table (agreement is tested)."""
    total = sum(map(_mul, body17.encode("ascii").translate(_USCC_VALUES), _USCC_WEIGHTS))
    return USCC_ALPHABET[-total % 31]


# One day of the lookup table: (date, "YYYY-MM-DD", "YYYYMMDD", ordinal of the same day
# 18 years earlier, ... 10 years earlier, year, month * 100 + day). 29 February shifted by
# whole years becomes 28 February.
_Day = tuple[_dt.date, str, str, int, int, int, int]


@functools.lru_cache(maxsize=1)
def _days() -> tuple[_Day, ...]:
    """Per-day lookup table from 1940 to 2059, indexed by ``ordinal - _DAY0``.

    Built once (about 44,000 days, a fraction of a second) because date arithmetic and
    formatting would otherwise be a large part of the cost of an entry.
    """
    out = []
    for o in range(_DAY0, _DAY_END):
        d = _dt.date.fromordinal(o)
        iso = d.isoformat()
        out.append(
            (
                d,
                iso,
                iso.replace("-", ""),
                _shift_years(d, -18).toordinal(),
                _shift_years(d, -10).toordinal(),
                d.year,
                d.month * 100 + d.day,
            )
        )
    return tuple(out)


def _id_from_birth(rng: random.Random, area: str, birth: int, male: bool) -> str:
    """ID number for ``birth`` (an ordinal); the check character is computed."""
    rand = rng.random
    # Sequence 001-999; its last digit carries the sex (odd = male).
    seq = int(rand() * 100) * 10 + int(rand() * 5) * 2 + (1 if male else 0)
    if seq == 0:
        seq = 2
    if _DAY0 <= birth < _DAY_END:
        ymd = _days()[birth - _DAY0][2]
    else:
        ymd = _dt.date.fromordinal(birth).strftime("%Y%m%d")
    body = f"{area}{ymd}{seq:03d}"
    return body + _fast_id_check(body)


def valid_id_number(
    rng: random.Random,
    *,
    birth_from: _dt.date = _dt.date(1950, 1, 1),
    birth_to: _dt.date = _dt.date(2000, 12, 31),
    sex: str | None = None,
) -> str:
    """A valid 18-character resident ID number (GB 11643) with a birth date in the range.

    The area code is a real administrative division, the birth date lies in
    ``[birth_from, birth_to]`` (both inclusive), the sequence digit is odd for ``sex="男"``
    and even for ``sex="女"`` (random when ``None``), and the check character is right, so
    ``normalize_id_number`` returns the value unchanged (provided ``birth_to`` is not in
    the future: a future birth date is rejected there).
    """
    if birth_from > birth_to:
        raise ValueError("birth_from must not be after birth_to")
    if sex is None:
        male = rng.random() < 0.5
    elif sex in _SEXES:
        male = sex == "男"
    else:
        raise ValueError('sex must be "男", "女" or None')
    if birth_from.year < 1000:
        raise ValueError("birth_from must not be before the year 1000")
    birth = rng.randint(birth_from.toordinal(), birth_to.toordinal())
    return _id_from_birth(rng, rng.choice(_ID_AREAS), birth, male)


def _org_body(rng: random.Random) -> str:
    # Older codes are all digits; codes issued with USCCs since 2015 typically start "MA".
    # Only characters of the USCC alphabet, so the code can be embedded in a USCC.
    if rng.random() < 0.6:
        return f"{10_000_000 + int(rng.random() * 90_000_000)}"
    return "MA" + "".join(rng.choices(USCC_ALPHABET, k=6))


def valid_org_code(rng: random.Random) -> str:
    """A valid organisation code (GB 11714) in canonical form: 9 characters, no hyphen.

    Uses only characters of the USCC alphabet, so every generated code can also be the
    embedded code (positions 9-17) of a USCC.
    """
    body = _org_body(rng)
    return body + _fast_org_body_check(body)


def valid_uscc(rng: random.Random, *, first: str | None = None, area: str | None = None) -> str:
    """A valid unified social credit code (GB 32100) whose embedded org code validates.

    Position 1 is ``first`` or drawn mostly ``9`` with some ``5``, ``1`` and letter
    authorities (``N``, ``A``, ``Y``); position 2 is an organisation type that authority
    uses; positions 3-8 are a real administrative division (``area`` if given); positions
    9-17 are a valid organisation code and position 18 the right check character.
    """
    if first is None:
        first = rng.choice(_USCC_FIRSTS)
    elif len(first) != 1 or first not in USCC_ALPHABET or first == "0":
        raise ValueError("first must be one character of the USCC alphabet other than 0")
    second = rng.choice(_USCC_TYPES.get(first, "19"))
    if area is None:
        area = rng.choice(_USCC_AREAS)
    elif len(area) != 6 or not area.isdigit() or not area.isascii():
        raise ValueError("area must be 6 ASCII digits")
    body = first + second + area + valid_org_code(rng)
    return body + _fast_uscc_check(body)


def _person_name(rng: random.Random, male: bool) -> str:
    """Surname (1 % compound) + one or two given characters typical of the sex."""
    rand = rng.random
    given = _GIVEN_MALE if male else _GIVEN_FEMALE
    if rand() < 0.01:
        surname = _COMPOUND_SURNAMES[int(rand() * len(_COMPOUND_SURNAMES))]
    else:
        surname = _SURNAMES[int(rand() * len(_SURNAMES))]
    first = given[int(rand() * len(given))]
    if rand() < 0.6:
        return surname + first + given[int(rand() * len(given))]
    return surname + first


def _person_id(
    rng: random.Random, area: str, published: _Day, minor: bool, days: tuple[_Day, ...]
) -> tuple[str, bool, int]:
    """(ID number, male, age on ``published``) of an adult, or of a minor aged 10-17.

    Adults are born from 1950 to exactly 18 years before ``published``, so their age that
    day is at least 18 by the rule of ``IdNumberInfo.age_on``; minors are born after that
    and at least 10 years before.
    """
    rand = rng.random
    _, _, _, eighteen, ten, p_year, p_md = published
    if minor:
        birth = eighteen + 1 + int(rand() * (ten - eighteen))
        male = rand() < 0.5
    else:
        birth = _EARLIEST_BIRTH + int(rand() * (eighteen + 1 - _EARLIEST_BIRTH))
        male = rand() < 0.7
    b = days[birth - _DAY0]
    age = p_year - b[5] - (p_md < b[6])
    seq = int(rand() * 100) * 10 + int(rand() * 5) * 2 + (1 if male else 0)
    body = f"{area}{b[2]}{seq or 2:03d}"
    return body + _fast_id_check(body), male, age


def _entity_name_and_uscc(
    rng: random.Random, place: str, basic_court: str, area: str
) -> tuple[str, str]:
    """Entity name and USCC of a matching kind (company 91, sole trader 92, ...)."""
    r = rng.random()
    trade = rng.choice(_TRADE_NAMES)
    if r < 0.88:
        suffix = "有限公司" if rng.random() < 0.85 else "股份有限公司"
        prefix = place if rng.random() < 0.5 else place + "市"
        return prefix + trade + rng.choice(_INDUSTRIES) + suffix, _uscc_of(rng, "91", area)
    district = basic_court.removesuffix("人民法院")
    if r < 0.92:
        return district + trade + rng.choice(_INDUSTRIES) + "经营部", _uscc_of(rng, "92", area)
    if r < 0.95:
        return place + trade + "农民专业合作社", _uscc_of(rng, "93", area)
    if r < 0.97:
        return place + "市" + trade + rng.choice(_SCHOOL_KINDS), _uscc_of(rng, "52", area)
    village = rng.choice(_VILLAGES)
    return district + village + "村股份经济合作社", _uscc_of(rng, "N2", area)


def _uscc_of(rng: random.Random, prefix: str, area: str) -> str:
    body = prefix + area + valid_org_code(rng)
    return body + _fast_uscc_check(body)


def generate_entries(
    n: int,
    *,
    seed: int = 0,
    entity_ratio: float = 0.3,
    restricted: int = 0,
    audience: Sequence[str] = (),
    minors: int = 0,
    revoked_ratio: float = 0.0,
    start_id: int = 1,
    today: _dt.date | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield ``n`` synthetic list entries in the publisher's JSON Lines source format.

    ``entity_ratio`` of the entries (in expectation) are entities, the rest persons.
    Exactly ``minors`` entries are persons aged 10-17 on ``published_at`` (entry_id prefix
    ``M``; ``parse_entry`` rejects them as minors) and exactly ``restricted`` entries have
    ``visibility="restricted"`` and the given ``audience``; the two sets are disjoint and
    their positions are drawn from the seed. ``revoked_ratio`` of the entries (in
    expectation) have ``status="revoked"`` and a ``revoked_at`` after ``published_at``.
    Entry ids are ``E`` (or ``M``) + the 8-digit number ``start_id + position``.
    ``published_at`` lies in ``[2015-01-01, today)``; ``today`` defaults to
    :data:`REFERENCE_TODAY`.

    Raises ``ValueError`` for a negative ``n``, ratios outside [0, 1], ``minors +
    restricted > n``, or ``restricted`` entries without an audience.
    """
    if n < 0:
        raise ValueError("n must not be negative")
    if not 0.0 <= entity_ratio <= 1.0 or not 0.0 <= revoked_ratio <= 1.0:
        raise ValueError("entity_ratio and revoked_ratio must lie in [0, 1]")
    if minors < 0 or restricted < 0 or minors + restricted > n:
        raise ValueError("minors and restricted must be >= 0 and together at most n")
    if isinstance(audience, str):
        raise ValueError("audience must be a sequence of subscriber ids, not one string")
    if restricted and not audience:
        raise ValueError("restricted entries need a non-empty audience")
    if start_id < 0 or start_id + n > 100_000_000:
        raise ValueError("entry ids must fit in 8 digits")
    today = today or REFERENCE_TODAY
    if not _FIRST_PUBLISHED < today.toordinal() <= _LAST_TODAY:
        raise ValueError("today must lie between 2015-01-02 and 2049-12-31")
    return _generate(
        n,
        seed=seed,
        entity_ratio=entity_ratio,
        restricted=restricted,
        audience=list(audience),
        minors=minors,
        revoked_ratio=revoked_ratio,
        start_id=start_id,
        today=today,
    )


def _generate(
    n: int,
    *,
    seed: int,
    entity_ratio: float,
    restricted: int,
    audience: list[str],
    minors: int,
    revoked_ratio: float,
    start_id: int,
    today: _dt.date,
) -> Iterator[dict[str, Any]]:
    """The entries of :func:`generate_entries`, one part after the other.

    Each part draws from the one stream ``rng`` in a fixed order (the tests pin the
    output of a seed), so the parts are called in the order the fields appear.
    """
    # Positions of minors and restricted entries come from their own stream: making entries
    # restricted changes nothing else in the run (minors do shift the later draws).
    chosen = random.Random(seed * 2 + 1).sample(range(n), minors + restricted)
    minor_at = frozenset(chosen[:minors])
    restricted_at = frozenset(chosen[minors:])
    rng = random.Random(seed * 2)
    rand = rng.random
    basics = _BASIC
    n_basic = len(basics)
    today_o = today.toordinal()
    pub_span = today_o - _FIRST_PUBLISHED
    days = _days()

    for pos in range(n):
        is_minor = pos in minor_at
        is_restricted = pos in restricted_at
        basic = basics[int(rand() * n_basic)]
        published_o = _FIRST_PUBLISHED + int(rand() * pub_span)
        published = days[published_o - _DAY0]
        filed = days[published_o - 1 - int(rand() * 400) - _DAY0]
        court = _courts(rand, basic, filed[5])
        amounts = _amounts(rand)
        entry: dict[str, Any] = {
            "entry_id": f"{'M' if is_minor else 'E'}{start_id + pos:08d}",
            "case_no": f"({filed[5]}){court[1]}{court[5]}{1 + int(rand() * 9999)}号",
        }
        if is_minor or rand() >= entity_ratio:
            related: list[dict[str, str]] = []
            _add_person(entry, rng, basic[3], published, is_minor=is_minor, days=days)
        else:
            related = _add_entity(entry, rng, basic, published, days)
        _add_listing(entry, rand, court, amounts, published=published, filed=filed)
        _add_status(
            entry,
            rng,
            published,
            days_since=today_o - published_o,
            revoked_ratio=revoked_ratio,
            days=days,
        )
        entry["visibility"] = "restricted" if is_restricted else "public"
        if rand() < 0.85:
            entry["measures"] = ["*"]
        else:
            entry["measures"] = sorted(rng.sample(MEASURE_CODES, 1 + int(rand() * 4)))
        entry["related"] = related
        entry["audience"] = list(audience) if is_restricted else []
        yield entry


_Court = tuple[str, str, str, str, str, str, int]
"""Enforcing court name and code, basis issuer, code and kind, case kind, basis year."""
_Amounts = tuple[int, str, str, str]
"""Principal in yuan, performance, performed and unperformed amounts as written."""


def _courts(rand: Callable[[], float], basic: _Basic, filed_year: int) -> _Court:
    """Enforcement mostly at the basic court, sometimes at the intermediate court; the
    basis is a judgment of first instance, or of second instance by the higher court."""
    _, basic_name, court_code, _, mid_name, mid_code = basic
    court_name = basic_name
    if rand() < 0.15:
        court_name = basis_issuer = mid_name
        court_code = basis_code = mid_code
        basis_kind = "民初"
    elif rand() < 0.25:
        basis_issuer, basis_code, basis_kind = mid_name, mid_code, "民终"
    else:
        basis_issuer, basis_code = basic_name, court_code
        basis_kind = "民初" if rand() < 0.9 else "刑初"
    case_kind = "执" if rand() < 0.85 else "执恢"
    basis_year = max(2013, filed_year - int(rand() * 3))
    return court_name, court_code, basis_issuer, basis_code, basis_kind, case_kind, basis_year


def _amounts(rand: Callable[[], float]) -> _Amounts:
    """The adjudged sum in yuan (1,000 to ~30 million), in cents with interest added,
    and how much of it was performed."""
    principal = int(10 ** (3 + rand() * 4.5))
    total = principal * 100 + (int(rand() * 100_000) if rand() < 0.3 else 0)
    if rand() < 0.75:
        performance, performed = "全部未履行", 0
    else:
        performance, performed = "部分未履行", 1 + int(rand() * (total - 1))
    yuan, fen = divmod(total - performed, 100)
    unperformed_text = f"{yuan}.{fen:02d}" if fen else f"{yuan}"
    yuan, fen = divmod(performed, 100)
    performed_text = f"{yuan}.{fen:02d}" if fen else f"{yuan}"
    return principal, performance, performed_text, unperformed_text


def _add_person(
    entry: dict[str, Any],
    rng: random.Random,
    area: str,
    published: _Day,
    *,
    is_minor: bool,
    days: tuple[_Day, ...],
) -> None:
    """A person's fields: mostly born in the court's area, ID number, name, gender, age."""
    rand = rng.random
    person_area = area if rand() < 0.7 else _ID_AREAS[int(rand() * len(_ID_AREAS))]
    id_number, male, age = _person_id(rng, person_area, published, is_minor, days)
    entry["subject_type"] = "person"
    entry["name"] = _person_name(rng, male)
    entry["id_number"] = id_number
    entry["gender"] = "男" if male else "女"
    entry["age"] = age


def _add_entity(
    entry: dict[str, Any],
    rng: random.Random,
    basic: _Basic,
    published: _Day,
    days: tuple[_Day, ...],
) -> list[dict[str, str]]:
    """An entity's fields and codes; returns its related persons (legal representative
    first, sometimes other officers, most with an ID number)."""
    rand = rng.random
    place, basic_name, _, area, _, _ = basic
    name, uscc = _entity_name_and_uscc(rng, place, basic_name, area)
    entry["subject_type"] = "entity"
    entry["name"] = name
    r = rand()
    if r < 0.95:
        entry["uscc"] = uscc
    if r >= 0.75:  # 20 % give both, 5 % (old entries) the organisation code only
        entry["org_code"] = uscc[8:17]
    related: list[dict[str, str]] = []
    for role in ("legal_rep", *(_ROLES_EXTRA if rand() < 0.3 else ())):
        if role != "legal_rep" and rand() < 0.7:
            continue
        rel_area = _ID_AREAS[int(rand() * len(_ID_AREAS))]
        rel_id, rel_male, _ = _person_id(rng, rel_area, published, False, days)
        person = {"role": role, "name": _person_name(rng, rel_male)}
        if rand() < 0.85:
            person["id_number"] = rel_id
        related.append(person)
    entry["legal_rep_name"] = related[0]["name"]
    return related


def _add_listing(
    entry: dict[str, Any],
    rand: Callable[[], float],
    court: _Court,
    amounts: _Amounts,
    *,
    published: _Day,
    filed: _Day,
) -> None:
    """Court, basis, obligation, situation, dates, amounts, severity and term."""
    court_name, _, basis_issuer, basis_code, basis_kind, _, basis_year = court
    principal, performance, performed_text, unperformed_text = amounts
    situation = 1 + _bisect(_SITUATION_CUMULATIVE, rand())
    entry["court"] = court_name
    entry["basis_doc_no"] = f"({basis_year}){basis_code}{basis_kind}{1 + int(rand() * 19999)}号"
    entry["basis_issuer"] = basis_issuer
    entry["obligation"] = _OBLIGATIONS[int(rand() * len(_OBLIGATIONS))].format(a=principal)
    entry["performance"] = performance
    entry["situation"] = situation
    entry["published_at"] = published[1]
    entry["filed_at"] = filed[1]
    entry["performed_amount"] = performed_text
    entry["unperformed_amount"] = unperformed_text
    entry["severity"] = 1 + _bisect(_SEVERITY_CUMULATIVE, rand())
    if situation != 1:
        # Situations 2-6 are listed for 2 years, sometimes extended by 1-3 years.
        extra = 0 if rand() < 0.85 else 1 + int(rand() * 3)
        entry["valid_until"] = _shift_years(published[0], 2 + extra).isoformat()


def _add_status(
    entry: dict[str, Any],
    rng: random.Random,
    published: _Day,
    *,
    days_since: int,
    revoked_ratio: float,
    days: tuple[_Day, ...],
) -> None:
    """``status``, and for a revoked entry ``revoked_at``: a day after ``published``
    (``days_since`` days before today at most), in office hours, China time."""
    rand = rng.random
    if rand() < revoked_ratio:
        revoked = days[published[0].toordinal() + 1 + int(rand() * days_since) - _DAY0]
        seconds = 28_800 + int(rand() * 36_000)  # office hours, 08:00 to 18:00
        entry["status"] = "revoked"
        entry["status_ground"] = "wrongly_listed" if rand() < 0.5 else "objection_upheld"
        entry["revoked_at"] = (
            f"{revoked[1]}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}+08:00"
        )
    else:
        entry["status"] = "active"


def write_jsonl(path: Path, entries: Iterable[Mapping[str, Any]]) -> int:
    """Write ``entries`` to ``path`` as JSON Lines (UTF-8, one compact object per line).

    Streams: memory does not grow with the number of entries. The file is written to a
    temporary name next to ``path`` and renamed at the end, so ``path`` never holds a
    partial list (if ``entries`` raises, the old file is left as it was). The file gets
    mode 0644: the data is synthetic. Returns the number of lines written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            write = f.write
            for entry in entries:
                write(dumps(entry))
                write("\n")
                count += 1
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return count
