"""On-call math for a simple weekly rotation (pure: no clock, no I/O).

A :class:`RotationSpec` lists members in order, a hand-off weekday and a local wall time ("HH:MM") in the
site's IANA zone, and a start date. The first hand-off is the first date on or after ``start_date`` that falls
on the hand-off weekday, at the hand-off time; hand-off ``n`` is ``7 * n`` local *calendar* days later at the
same wall time (so a week that crosses a DST change is 167 or 169 hours long, and the hand-off stays at, say,
08:00 local). Member ``n % len(members)`` covers ``[handoff(n), handoff(n + 1))``. Before the first hand-off
nobody is on call (``None``).

Wall times that do not exist or exist twice (PEP 495):

* **spring forward** (a gap, e.g. 02:30 on 2026-03-08 in America/Chicago): the hand-off happens at the first
  valid instant after the gap, i.e. the transition itself (03:00 CDT = 08:00 UTC);
* **fall back** (an ambiguous time, e.g. 01:30 on 2026-11-01 in America/Chicago): ``fold=0``, the *first*
  occurrence (01:30 CDT = 06:30 UTC), so the outgoing member never covers the repeated hour twice.

All instants in and out are aware datetimes; results are in UTC.

Groups (pools): :func:`pick_least_recent` chooses the ``size`` members of a group paged least recently (never
paged counts as least recent; ties keep the group's listed order), so a pool's pages spread over its members.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from comms.errors import ValidationError

UTC = dt.UTC
_WEEK = dt.timedelta(days=7)


@dataclass(frozen=True)
class RotationSpec:
    """A weekly rotation. ``handoff_weekday``: 0 = Monday ... 6 = Sunday; ``handoff_time``: local "HH:MM"."""

    members: tuple[str, ...]
    handoff_weekday: int
    handoff_time: str
    zone: str
    start_date: dt.date

    def __post_init__(self) -> None:
        if not 0 <= self.handoff_weekday <= 6:
            raise ValidationError(
                f"rotation handoff_weekday: expected 0 (Monday) to 6 (Sunday), got {self.handoff_weekday!r}"
            )
        self.local_time()  # validates the format
        self.tz()

    def local_time(self) -> dt.time:
        try:
            hh, mm = self.handoff_time.split(":")
            if len(hh) != 2 or len(mm) != 2:
                raise ValueError("not two digits")
            return dt.time(int(hh), int(mm))
        except ValueError as exc:
            raise ValidationError(
                f"rotation handoff_time: expected local 'HH:MM' (00:00 to 23:59), got {self.handoff_time!r}"
            ) from exc

    def tz(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValidationError(
                f"rotation zone: expected an IANA time zone such as 'America/Chicago', got {self.zone!r}"
            ) from exc


@dataclass(frozen=True)
class Shift:
    """``member`` is on call over ``[start, end)`` (UTC); ``week`` is the hand-off number ``n``."""

    member: str
    start: dt.datetime
    end: dt.datetime
    week: int


def resolve_local(day: dt.date, wall: dt.time, tz: ZoneInfo) -> dt.datetime:
    """The UTC instant of local ``day`` + ``wall`` in ``tz``: gap -> end of the gap, ambiguous -> fold=0."""
    naive = dt.datetime.combine(day, wall)
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return first  # exists (for an ambiguous time fold=0 is the first occurrence)
    # In a gap: fold=0 reads the wall time with the offset from before the transition (an instant after it),
    # fold=1 with the offset from after it (an instant before it). Bisect for the transition between them.
    lo = int(naive.replace(tzinfo=tz, fold=1).timestamp())  # offset from before the transition applies
    hi = int(first.timestamp())  # offset from after the transition applies
    offset_after = first.astimezone(tz).utcoffset()
    while hi - lo > 1:  # tzdata transitions fall on whole seconds
        mid = (lo + hi) // 2
        if dt.datetime.fromtimestamp(mid, tz).utcoffset() == offset_after:
            hi = mid
        else:
            lo = mid
    return dt.datetime.fromtimestamp(hi, UTC)


def _first_day(rotation: RotationSpec) -> dt.date:
    ahead = (rotation.handoff_weekday - rotation.start_date.weekday()) % 7
    return rotation.start_date + dt.timedelta(days=ahead)


def handoff(rotation: RotationSpec, week: int) -> dt.datetime:
    """The UTC instant of hand-off number ``week`` (0 = the first, at/after ``start_date``)."""
    return resolve_local(_first_day(rotation) + week * _WEEK, rotation.local_time(), rotation.tz())


def _week_at(rotation: RotationSpec, at: dt.datetime) -> int:
    """The hand-off number whose shift contains ``at`` (negative before the first hand-off)."""
    local_day = at.astimezone(rotation.tz()).date()
    week = (local_day - _first_day(rotation)).days // 7
    while at < handoff(rotation, week):
        week -= 1
    while at >= handoff(rotation, week + 1):
        week += 1
    return week


def _aware(value: dt.datetime, name: str) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{name}: expected an aware datetime, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def who_is_on_call(rotation: RotationSpec, at: dt.datetime) -> str | None:
    """The member on call at ``at``, or ``None`` before the first hand-off or with no members."""
    at = _aware(at, "at")
    if not rotation.members:
        return None
    week = _week_at(rotation, at)
    return rotation.members[week % len(rotation.members)] if week >= 0 else None


def shifts_between(rotation: RotationSpec, start: dt.datetime, end: dt.datetime) -> list[Shift]:
    """The shifts covering ``[start, end)``, clipped to it, in order, in UTC.

    They are contiguous and non-overlapping; the time before the first hand-off has no shift.
    """
    start, end = _aware(start, "start"), _aware(end, "end")
    if end < start:
        raise ValidationError(
            f"shifts_between: expected start <= end, got {start.isoformat()} > {end.isoformat()}"
        )
    if not rotation.members or start == end:
        return []
    week = max(_week_at(rotation, start), 0)
    shifts: list[Shift] = []
    begin = max(start, handoff(rotation, week))
    while begin < end:
        stop = min(handoff(rotation, week + 1), end)
        shifts.append(Shift(rotation.members[week % len(rotation.members)], begin, stop, week))
        week += 1
        begin = stop
    return shifts


def pick_least_recent(
    members: Sequence[str], last_paged: Mapping[str, dt.datetime | None], size: int
) -> tuple[str, ...]:
    """The ``size`` members paged least recently, in that order (oldest page first).

    ``last_paged`` maps a member to the instant of their latest page (absent or ``None``: never paged, which
    comes first). Ties -- equal instants, or several never paged -- keep the order of ``members``. Fewer
    members than ``size``: all of them.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValidationError(f"pick_least_recent size {size!r}: expected an integer of 1 or more")
    if len(set(members)) != len(members):
        raise ValidationError(
            f"pick_least_recent members {list(members)!r} repeat a member: expected each once"
        )

    def key(item: tuple[int, str]) -> tuple[bool, dt.datetime, int]:
        index, member = item
        at = last_paged.get(member)
        if at is None:
            return (False, _EPOCH, index)
        return (True, _aware(at, f"last page of {member!r}"), index)

    ranked = sorted(enumerate(members), key=key)
    return tuple(member for _, member in ranked[:size])


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
