"""Models on real SQLite and real PostgreSQL: UTC round trip, validation, constraints, the deadline index."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from comms.clock import UTC, FakeClock
from comms.db.models import ContactMethod, Incident, Person, PolicyTier, Site
from comms.db.types import ContactKind, IncidentState
from comms.errors import ValidationError
from comms.phone import PhoneNumberError
from tests.db.factories import make_incident, make_person, make_policy, make_site_room


async def test_datetime_round_trip_is_aware_utc_ms(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock
) -> None:
    chicago = zoneinfo.ZoneInfo("America/Chicago")
    raised = dt.datetime(2026, 3, 8, 1, 59, 59, 987654, tzinfo=chicago)  # the night DST starts there
    async with sessions() as s:
        inc = await make_incident(s, clock)
        inc.raised_at = raised
        inc.tier_deadline = dt.datetime(2026, 7, 1, 12, 0, 0, 1999, tzinfo=UTC)
        await s.commit()
        iid = inc.id
    async with sessions() as s:
        row = await s.get_one(Incident, iid)
        assert row.raised_at.tzinfo is UTC
        assert row.raised_at == dt.datetime(2026, 3, 8, 7, 59, 59, 987000, tzinfo=UTC)
        assert row.tier_deadline == dt.datetime(2026, 7, 1, 12, 0, 0, 1000, tzinfo=UTC)
        assert row.tier_deadline is not None
        assert row.tier_deadline.tzinfo is UTC
        assert row.accepted_at is None


async def test_naive_datetime_is_refused(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock
) -> None:
    async with sessions() as s:
        inc = await make_incident(s, clock)
        inc.tier_deadline = dt.datetime(2026, 1, 1, 12, 0)  # noqa: DTZ001 - the point of the test
        with pytest.raises(sa.exc.StatementError, match="naive"):
            await s.flush()


async def test_due_incidents_by_deadline_in_time_order(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock
) -> None:
    now = clock.now()
    offsets = [5.0, -0.001, -3600.0, 0.0, -0.5, 86400.0]
    async with sessions() as s:
        for off in offsets:
            inc = await make_incident(s, clock)
            inc.state = IncidentState.PAGING
            inc.tier_deadline = now + dt.timedelta(seconds=off)
        await s.commit()
    async with sessions() as s:
        due = (
            await s.scalars(
                sa.select(Incident.tier_deadline)
                .where(Incident.tier_deadline <= now)
                .order_by(Incident.tier_deadline)
            )
        ).all()
    expected = sorted(now + dt.timedelta(seconds=o) for o in offsets if o <= 0)
    assert list(due) == expected


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("timezone", "America/Chicag0", "is not an IANA zone"),
        ("timezone", "../etc/passwd", "is not an IANA zone"),
        ("us_state", "XX", "is not a two-letter USPS code"),
        ("code", "bad code!", "is not a short code"),
    ],
)
def test_site_fields_are_validated(field: str, value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Site(**{"code": "S", "name": "n", "timezone": "America/Chicago", "us_state": "IL", field: value})


def test_us_state_is_normalised() -> None:
    assert Site(code="S", name="n", timezone="UTC", us_state="il").us_state == "IL"


@pytest.mark.parametrize(
    ("npi", "message"),
    [
        ("1234567890", "fails the Luhn check"),
        ("123456789", "is not 10 digits"),
        ("12345678x3", "not 10 digits"),
    ],
)
def test_npi_is_checked(npi: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Person(username="dr", display_name="Dr", roles="radiologist", npi=npi)


async def test_radiologist_needs_npi(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as s:
        s.add(Person(username="nonpi", display_name="Dr No", roles="radiologist"))
        with pytest.raises(ValidationError, match="radiologist without an NPI"):
            await s.flush()


def test_roles_are_known_and_sorted() -> None:
    p = Person(username="x", display_name="X", roles="technologist, admin")
    assert p.roles == "admin,technologist"
    with pytest.raises(ValidationError, match="role 'nurse' is unknown"):
        Person(username="y", display_name="Y", roles="nurse")


async def test_contact_addresses_are_normalised(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as s:
        person = await make_person(s)
        pstn = ContactMethod(person_id=person.id, kind=ContactKind.PSTN_VOICE, address="(312) 555-0142")
        sip = ContactMethod(person_id=person.id, kind="sip", address="SIP:Dr.Ng@Example.ORG;transport=tcp")
        late_kind = ContactMethod(person_id=person.id, address="312 555 0143")
        late_kind.kind = ContactKind.SMS
        s.add_all([pstn, sip, late_kind])
        await s.commit()
        assert pstn.address == "+13125550142"
        assert sip.address == "sip:Dr.Ng@example.org;transport=tcp"
        assert late_kind.address == "+13125550143"


@pytest.mark.parametrize(
    ("kind", "address", "reason"),
    [
        ("pstn_voice", "12345", "TOO_SHORT"),
        ("sms", "+999 123", "INVALID_COUNTRY_CODE"),
        ("sms", "hello", "NOT_A_NUMBER"),
        ("sip", "sip:example.org", "NO_SIP_USER"),
        ("sip", "tel:+13125550142", "BAD_SIP_SCHEME"),
        ("sip", "http://x", "BAD_SIP_URI"),
    ],
)
def test_bad_contact_address_names_the_reason(kind: str, address: str, reason: str) -> None:
    with pytest.raises(PhoneNumberError) as info:
        ContactMethod(person_id="p", kind=kind, address=address)
    assert info.value.reason == reason
    assert repr(address) in str(info.value)
    assert "expected" in str(info.value) or reason in str(info.value)


@pytest.mark.parametrize(
    ("timeout", "targets", "message"),
    [
        (9, ["rotation:primary"], "ring timeout 9 s is out of range: expected 10-120 s"),
        (121, ["rotation:primary"], "out of range"),
        (30, [], "are empty"),
        (30, ["rotation:tertiary"], "is not valid"),
        (30, ["person:a", "person:a"], "repeat a target"),
    ],
)
def test_policy_tier_is_validated(timeout: int, targets: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PolicyTier(position=0, ring_timeout_s=timeout, targets=targets)


async def test_database_checks_refuse_what_the_orm_would(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """Raw inserts bypass the ORM checks; the database's CHECK constraints still hold."""
    async with sessions() as s:
        site, _room = await make_site_room(s)
        policy = await make_policy(s, site)
        await s.commit()
    async with sessions() as s:
        with pytest.raises(sa.exc.IntegrityError):
            await s.execute(
                sa.insert(PolicyTier).values(
                    policy_id=policy.id, position=7, ring_timeout_s=5, targets=["rotation:primary"]
                )
            )
    async with engine.connect() as conn:
        with pytest.raises(sa.exc.IntegrityError):
            await conn.execute(
                sa.text(
                    "INSERT INTO incident (id, code, site_id, room_id, severity, state, policy_snapshot, "
                    "raised_at, next_seq) VALUES ('i', 'c', :site, :room, 'bogus', 'raised', '{}', "
                    "CURRENT_TIMESTAMP, 1)"
                ),
                {"site": site.id, "room": _room.id},
            )


async def test_snapshot_freezes_tiers(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as s:
        site, _ = await make_site_room(s)
        policy = await make_policy(s, site)
        snap = policy.snapshot()
    assert snap["version"] == 1
    assert [t["targets"] for t in snap["tiers"]] == [["rotation:primary"], ["rotation:backup"]]
    assert [t["ring_timeout_s"] for t in snap["tiers"]] == [30, 30]
