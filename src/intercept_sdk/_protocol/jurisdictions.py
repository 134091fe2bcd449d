"""Local rules on objecting to a listing: deadlines and remedies per jurisdiction.

Whoever is stopped at the point of service must be told how to object, and the rule
differs by place. The SPC rule (法释〔2017〕7号, digested in ``DOMAIN.md``) lets the debtor
ask the enforcing court for correction, the court reviews within 15 days, and a rejection
may be taken to the higher court (复议) within 10 days of service. Jiangsu (苏办发〔2017〕8号,
seed 003) and Huai'an (seed 002) set a 10-day window to apply, a 3-day review and 复议. Every
seed also lets the person ask the unit that applied a measure for 复核.

This module ships those rules as a small immutable table, read from nowhere but this
file (so a notice never depends on the network or a configuration file). A client picks
one with its ``jurisdiction`` option (``"national"`` by default); an unknown name raises
:class:`~intercept_sdk.ConfigurationError` with the known names, never a silent default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .._exceptions import ConfigurationError

__all__ = ["DEFAULT_JURISDICTION", "JURISDICTIONS", "ObjectionRule", "objection_rule"]

_CN_DIGITS = "零一二三四五六七八九"


def _cn_days(n: int) -> str:
    """A day count in Chinese numerals as the notices write it (3 -> 三, 15 -> 十五)."""
    if n < 10:
        return _CN_DIGITS[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else _CN_DIGITS[tens]) + "十" + (_CN_DIGITS[ones] if ones else "")


@dataclass(frozen=True)
class ObjectionRule:
    """How a listed person objects, in one jurisdiction, with the text it comes from.

    ``application_days``: days from receiving the decision to apply for correction (None:
    the rule sets no window). ``review_days``: days the court has to review. ``reconsider``:
    a rejection may go to the higher court for 复议; ``reconsider_days`` its window (None:
    not fixed by the text). ``source``/``passage``: the seed file (or ``DOMAIN.md``) and
    its verbatim words, so the notice can be traced to its basis.
    """

    key: str
    title: str
    application_days: int | None
    review_days: int
    reconsider: bool
    reconsider_days: int | None
    source: str
    passage: str

    def objection_sentence(self, courts: str) -> str:
        """The Chinese sentence on correction and 复议, for the notice."""
        window = (
            f"自收到决定之日起{_cn_days(self.application_days)}日内"
            if self.application_days is not None
            else ""
        )
        text = (
            f"如认为失信信息有误，可{window}向执行法院（{courts}）书面申请纠正，"
            f"法院应在{_cn_days(self.review_days)}日内审查"
        )
        if self.reconsider:
            within = (
                f"自驳回决定送达之日起{_cn_days(self.reconsider_days)}日内"
                if self.reconsider_days is not None
                else ""
            )
            text += f"；对驳回不服的，可{within}向上一级人民法院申请复议"
        return text + "；审查及复议期间不停止失信名单的效力"


_RULES = (
    ObjectionRule(
        key="national",
        title="最高人民法院《关于公布失信被执行人名单信息的若干规定》",
        application_days=None,
        review_days=15,
        reconsider=True,
        reconsider_days=10,
        source="DOMAIN.md",
        passage="Objection (纠正申请) to the enforcing court; the court reviews within 15 days; "
        "if rejected, 复议 to the higher court within 10 days of service",
    ),
    ObjectionRule(
        key="jiangsu",
        title="江苏省《关于建立对失信被执行人联合惩戒机制的实施意见》（苏办发〔2017〕8号）",
        application_days=10,
        review_days=3,
        reconsider=True,
        reconsider_days=None,
        source="003_c01f265b446f0458.txt",
        passage="被执行人认为将其纳入失信名单错误的,可以自收到决定之日起 10 日内向作出决定的"
        "人民法院申请纠正,人民法院应当自收到申请之日起 3 日内审查",
    ),
    ObjectionRule(
        key="huaian",
        title="《淮安市失信被执行人联合惩戒实施方案》",
        application_days=10,
        review_days=3,
        reconsider=True,
        reconsider_days=None,
        source="002_1e102a156839d75c.txt",
        passage="被执行人认为将其纳入失信名单错误的,可以自收到决定之日起10日内向作出决定的"
        "人民法院申请纠正,人民法院应当自收到申请之日起3日内审查",
    ),
)

#: The jurisdiction a client uses unless told otherwise: the SPC's national rule.
DEFAULT_JURISDICTION = "national"
#: Every shipped rule by key (``national``, ``jiangsu``, ``huaian``).
JURISDICTIONS: Mapping[str, ObjectionRule] = MappingProxyType({r.key: r for r in _RULES})


def objection_rule(key: str | None = None) -> ObjectionRule:
    """The rule of jurisdiction ``key`` (None: :data:`DEFAULT_JURISDICTION`).

    Raises :class:`~intercept_sdk.ConfigurationError` naming the known keys otherwise.
    """
    if key is None:
        key = DEFAULT_JURISDICTION
    rule = JURISDICTIONS.get(key) if isinstance(key, str) else None
    if rule is None:
        raise ConfigurationError(
            f"unknown jurisdiction {key!r}; expected one of {', '.join(JURISDICTIONS)}"
        )
    return rule
