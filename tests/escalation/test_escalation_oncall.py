"""Weekly rotation math, with hypothesis properties across DST transitions."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comms.errors import ValidationError
from escalation.oncall import RotationSpec, handoff, resolve_local, shifts_between, who_is_on_call

UTC = dt.UTC
ZONES = ("America/Chicago", "America/New_York", "Europe/London")


def utc(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> dt.datetime:
    return dt.datetime(y, m, d, hh, mm, ss, tzinfo=UTC)


def rot(time: str = "08:00", weekday: int = 0, zone: str = "America/Chicago", **kw: object) -> RotationSpec:
    members = kw.pop("members", ("ana", "ben", "cy"))
    start = kw.pop("start_date", dt.date(2026, 1, 1))
    return RotationSpec(members, weekday, time, zone, start)  # type: ignore[arg-type]


# --- examples -------------------------------------------------------------------------------------


def test_first_handoff_is_at_or_after_start_date_and_members_cycle() -> None:
    r = rot(
        weekday=0, start_date=dt.date(2026, 1, 1)
    )  # a Thursday -> first hand-off Monday 2026-01-05 08:00 CST
    assert handoff(r, 0) == utc(2026, 1, 5, 14)
    assert who_is_on_call(r, utc(2026, 1, 5, 13, 59)) is None
    assert who_is_on_call(r, utc(2026, 1, 5, 14)) == "ana"
    assert who_is_on_call(r, utc(2026, 1, 12, 13, 59, 59)) == "ana"
    assert who_is_on_call(r, utc(2026, 1, 12, 14)) == "ben"
    assert who_is_on_call(r, utc(2026, 1, 19, 14)) == "cy"
    assert who_is_on_call(r, utc(2026, 1, 26, 14)) == "ana"


def test_start_date_on_the_handoff_weekday_counts() -> None:
    r = rot(weekday=0, start_date=dt.date(2026, 1, 5))
    assert handoff(r, 0) == utc(2026, 1, 5, 14)


def test_handoff_keeps_local_wall_time_across_spring_forward() -> None:
    r = rot(weekday=0, time="08:00", zone="America/New_York", start_date=dt.date(2026, 3, 2))
    assert handoff(r, 0) == utc(2026, 3, 2, 13)  # EST
    assert handoff(r, 1) == utc(2026, 3, 9, 12)  # EDT: the week was 167 hours
    assert handoff(r, 1) - handoff(r, 0) == dt.timedelta(hours=167)


def test_gap_handoff_moves_to_first_valid_instant() -> None:
    # 2026-03-08 02:00 CST -> 03:00 CDT in Chicago; 02:30 does not exist
    assert resolve_local(dt.date(2026, 3, 8), dt.time(2, 30), ZoneInfo("America/Chicago")) == utc(
        2026, 3, 8, 8
    )
    r = rot(weekday=6, time="02:30", start_date=dt.date(2026, 3, 1))
    assert handoff(r, 1) == utc(2026, 3, 8, 8)
    assert handoff(r, 1).astimezone(ZoneInfo("America/Chicago")).strftime("%H:%M %Z") == "03:00 CDT"
    assert who_is_on_call(r, utc(2026, 3, 8, 7, 59, 59)) == "ana"
    assert who_is_on_call(r, utc(2026, 3, 8, 8)) == "ben"
    # London: 2026-03-29 01:00 GMT -> 02:00 BST
    assert resolve_local(dt.date(2026, 3, 29), dt.time(1, 30), ZoneInfo("Europe/London")) == utc(
        2026, 3, 29, 1
    )


def test_ambiguous_handoff_uses_fold_0_the_first_occurrence() -> None:
    # 2026-11-01 02:00 CDT -> 01:00 CST in Chicago; 01:30 happens twice
    assert resolve_local(dt.date(2026, 11, 1), dt.time(1, 30), ZoneInfo("America/Chicago")) == utc(
        2026, 11, 1, 6, 30
    )
    r = rot(weekday=6, time="01:30", start_date=dt.date(2026, 10, 25))
    assert handoff(r, 1) == utc(2026, 11, 1, 6, 30)
    assert who_is_on_call(r, utc(2026, 11, 1, 7, 30)) == "ben"  # the second 01:30 is still ben's
    # London: 2026-10-25 02:00 BST -> 01:00 GMT
    assert resolve_local(dt.date(2026, 10, 25), dt.time(1, 30), ZoneInfo("Europe/London")) == utc(
        2026, 10, 25, 0, 30
    )


def test_shifts_between_clips_to_the_window() -> None:
    r = rot(weekday=0, start_date=dt.date(2026, 1, 5))
    shifts = shifts_between(r, utc(2026, 1, 1), utc(2026, 1, 20))
    assert [(s.member, s.start, s.end, s.week) for s in shifts] == [
        ("ana", utc(2026, 1, 5, 14), utc(2026, 1, 12, 14), 0),
        ("ben", utc(2026, 1, 12, 14), utc(2026, 1, 19, 14), 1),
        ("cy", utc(2026, 1, 19, 14), utc(2026, 1, 20), 2),
    ]
    assert shifts_between(r, utc(2026, 1, 1), utc(2026, 1, 2)) == []
    assert shifts_between(rot(members=()), utc(2026, 1, 1), utc(2026, 2, 1)) == []
    assert who_is_on_call(rot(members=()), utc(2026, 6, 1)) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"time": "8:00"}, "handoff_time: expected local 'HH:MM'"),
        ({"time": "24:00"}, "handoff_time"),
        ({"weekday": 7}, "handoff_weekday: expected 0"),
        ({"zone": "Mars/Olympus"}, "zone: expected an IANA time zone"),
    ],
)
def test_bad_specs_are_refused_with_the_key_and_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        rot(**kwargs)  # type: ignore[arg-type]


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValidationError, match="expected an aware datetime"):
        who_is_on_call(rot(), dt.datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValidationError, match="start <= end"):
        shifts_between(rot(), utc(2026, 2, 1), utc(2026, 1, 1))


# --- properties -----------------------------------------------------------------------------------

# DST transition dates (local) in 2025-2028 for the three zones, to aim hand-offs and windows at them
TRANSITIONS = {
    "America/Chicago": [
        (2025, 3, 9),
        (2025, 11, 2),
        (2026, 3, 8),
        (2026, 11, 1),
        (2027, 3, 14),
        (2027, 11, 7),
    ],
    "America/New_York": [
        (2025, 3, 9),
        (2025, 11, 2),
        (2026, 3, 8),
        (2026, 11, 1),
        (2027, 3, 14),
        (2027, 11, 7),
    ],
    "Europe/London": [
        (2025, 3, 30),
        (2025, 10, 26),
        (2026, 3, 29),
        (2026, 10, 25),
        (2027, 3, 28),
        (2027, 10, 31),
    ],
}
# wall times at and around the transitions (00:30-03:30) plus ordinary ones
TIMES = st.sampled_from(
    ["00:00", "00:30", "01:00", "01:30", "01:59", "02:00", "02:30", "02:59", "03:00", "08:00", "23:30"]
)


@st.composite
def rotation_and_window(draw: st.DrawFn) -> tuple[RotationSpec, dt.datetime, dt.datetime, dt.date]:
    zone = draw(st.sampled_from(ZONES))
    y, m, d = draw(st.sampled_from(TRANSITIONS[zone]))
    transition_day = dt.date(y, m, d)
    # hand-off weekday is mostly the transition's (a Sunday), so hand-offs land on DST days
    weekday = draw(st.one_of(st.just(transition_day.weekday()), st.integers(0, 6)))
    start_date = transition_day - dt.timedelta(days=draw(st.integers(0, 40)))
    members = tuple(f"m{i}" for i in range(draw(st.integers(1, 5))))
    r = RotationSpec(members, weekday, draw(TIMES), zone, start_date)
    centre = dt.datetime.combine(transition_day, dt.time(0), tzinfo=UTC)
    start = centre + dt.timedelta(minutes=draw(st.integers(-60 * 24 * 50, 60 * 24 * 2)))
    end = start + dt.timedelta(minutes=draw(st.integers(0, 60 * 24 * 60)))
    return r, start, end, transition_day


@settings(max_examples=300, deadline=None)
@given(rotation_and_window())
def test_shifts_tile_the_window_with_one_member_each(
    case: tuple[RotationSpec, dt.datetime, dt.datetime, dt.date],
) -> None:
    r, start, end, _ = case
    shifts = shifts_between(r, start, end)
    first = handoff(r, 0)
    covered_from = max(start, first)
    if covered_from >= end:
        assert shifts == []
        return
    assert shifts[0].start == covered_from
    assert shifts[-1].end == end
    for a, b in itertools.pairwise(shifts):
        assert a.end == b.start  # contiguous, non-overlapping
        assert b.week == a.week + 1
        assert b.member == r.members[(r.members.index(a.member) + 1) % len(r.members)]
    for s in shifts:
        assert s.start < s.end
        assert s.start.tzinfo is UTC
        assert s.member == r.members[s.week % len(r.members)]
        # exactly one member throughout: at both ends of the interval
        assert who_is_on_call(r, s.start) == s.member
        assert who_is_on_call(r, s.end - dt.timedelta(microseconds=1)) == s.member
    if start < first:
        assert who_is_on_call(r, start) is None


def check_handoff(r: RotationSpec, week: int) -> None:
    """Hand-off ``week`` is at the local wall time (gap: the first valid instant; ambiguous: fold=0)."""
    tz = ZoneInfo(r.zone)
    at = handoff(r, week)
    wanted = r.local_time()
    local = at.astimezone(tz)
    day = r.start_date + dt.timedelta(days=(r.handoff_weekday - r.start_date.weekday()) % 7 + 7 * week)
    naive = dt.datetime.combine(day, wanted)
    exists = naive.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive
    if exists:
        ambiguous = naive.replace(tzinfo=tz, fold=1).utcoffset() != naive.replace(tzinfo=tz).utcoffset()
        assert local.replace(tzinfo=None) == naive
        assert local.fold == 0  # the first occurrence of an ambiguous time
        assert at == naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
        if ambiguous:
            assert (at + dt.timedelta(hours=1)).astimezone(tz).replace(tzinfo=None) == naive  # the repeat
    else:
        # in a spring-forward gap: at the transition, the first instant that exists after the wall time
        assert local.date() == day
        assert local.time() > wanted
        assert (at - dt.timedelta(seconds=1)).astimezone(tz).utcoffset() != local.utcoffset()
        assert (at - dt.timedelta(seconds=1)).astimezone(tz).time() < wanted
    assert who_is_on_call(r, at) == r.members[week % len(r.members)]
    if week > 0:
        assert who_is_on_call(r, at - dt.timedelta(microseconds=1)) == r.members[(week - 1) % len(r.members)]
        hours = (at - handoff(r, week - 1)) / dt.timedelta(hours=1)
        assert 166 <= hours <= 170  # a week, give or take the DST hour


@settings(max_examples=300, deadline=None)
@given(rotation_and_window(), st.one_of(st.none(), st.integers(0, 8)))
def test_handoffs_happen_at_the_local_wall_time(
    case: tuple[RotationSpec, dt.datetime, dt.datetime, dt.date], pick: int | None
) -> None:
    r, _, _, transition_day = case
    first_day = r.start_date + dt.timedelta(days=(r.handoff_weekday - r.start_date.weekday()) % 7)
    # None: the hand-off in the week of the DST change (on its day when the weekday matches), else any
    check_handoff(r, pick if pick is not None else max(0, (transition_day - first_day).days // 7))


@pytest.mark.parametrize("zone", ZONES)
def test_every_transition_day_and_wall_time_grid(zone: str) -> None:
    """Exhaustively: a Sunday hand-off at each wall time around 00:00-03:30, on each DST day 2025-2027."""
    gaps = folds = 0
    for y, m, d in TRANSITIONS[zone]:
        day = dt.date(y, m, d)
        for minutes in range(0, 4 * 60, 15):
            wall = f"{minutes // 60:02d}:{minutes % 60:02d}"
            r = RotationSpec(("a", "b"), day.weekday(), wall, zone, day - dt.timedelta(days=7))
            check_handoff(r, 1)
            naive = dt.datetime.combine(day, r.local_time())
            tz = ZoneInfo(zone)
            gaps += naive.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) != naive
            folds += naive.replace(tzinfo=tz, fold=1).utcoffset() != naive.replace(tzinfo=tz).utcoffset()
            shifts = shifts_between(r, handoff(r, 0), handoff(r, 3))
            assert [s.member for s in shifts] == ["a", "b", "a"]
    assert gaps == 3 * 4  # four 15-minute wall times vanish on each of the 3 spring-forward days
    assert folds - gaps == 3 * 4  # ... and four happen twice on each of the 3 fall-back days
