"""The two deadlines of supervision, defined once for the unit and the platform.

Why this module exists: the unit's restriction ledger decides when a lift is *due* and
when it is *overdue*, and the platform's statistics judge the same lifts and the same
quarterly summaries for its 通报; if the two counted differently, a unit could be on time by
its own reckoning and late by the platform's. So both call these functions.

* **Lift deadline** (the courts delete within 3 working days; the unit must lift as
  promptly): the end, in China, of the N-th working day after the day the change was
  known (that day does not count: a notice received in the evening leaves no time that
  day). Working days are Monday-Friday, minus ``holidays``, plus ``extra_workdays``
  (调休 weekend days).
* **Feedback due** (每季度结束后30日内, 15 days in the Huai'an text): the quarter's last day
  plus N days, inclusive, as a China date.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Set as AbstractSet

from .reports import CHINA_TZ

__all__ = ["feedback_due", "is_working_day", "lift_deadline"]


def is_working_day(
    day: _dt.date,
    holidays: AbstractSet[_dt.date] = frozenset(),
    extra_workdays: AbstractSet[_dt.date] = frozenset(),
) -> bool:
    """Monday-Friday unless a holiday; a weekend day only when listed as worked."""
    if day in extra_workdays:
        return True
    return day.weekday() < 5 and day not in holidays


def lift_deadline(
    known: _dt.datetime,
    working_days: int,
    holidays: AbstractSet[_dt.date] = frozenset(),
    extra_workdays: AbstractSet[_dt.date] = frozenset(),
) -> _dt.datetime:
    """The instant (UTC) a lift becomes overdue when the restriction's end was known at
    ``known``: midnight in China ending the ``working_days``-th working day after
    ``known``'s China date. ValueError for a negative count."""
    if working_days < 0:
        raise ValueError("working days must not be negative")
    day = known.astimezone(CHINA_TZ).date()
    left = working_days
    while left:
        day += _dt.timedelta(days=1)
        if is_working_day(day, holidays, extra_workdays):
            left -= 1
    end = _dt.datetime.combine(day + _dt.timedelta(days=1), _dt.time(), tzinfo=CHINA_TZ)
    return end.astimezone(_dt.timezone.utc)


def feedback_due(quarter_end: _dt.datetime, days: int) -> _dt.date:
    """The last day (inclusive, China date) on which the summary of a quarter ending at
    ``quarter_end`` (exclusive, as :func:`~.reports.quarterly_window` gives it) is on time."""
    last_day = (quarter_end.astimezone(CHINA_TZ) - _dt.timedelta(days=1)).date()
    return last_day + _dt.timedelta(days=days)
