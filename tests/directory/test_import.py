"""import_directory on real SQLite and PostgreSQL: idempotent, updates, deactivates, versions, all-or-nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from comms.clock import FakeClock
from comms.db.events import chain_events, verify_chain
from comms.db.models import (
    Base,
    ContactMethod,
    EscalationPolicy,
    Person,
    PersonGroup,
    Room,
    Rotation,
    Site,
)
from comms.db.types import ContactKind, GroupPick
from comms.directory import DirectoryError, ImportReport, import_directory, token_hash

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "directory.example.toml"
CT2_TOKEN = "demo-ct2-device-token-change-me"


async def _snapshot(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (as sorted tuples), to prove that nothing changed."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = (await conn.execute(sa.select(table))).all()
            out[table.name] = sorted((tuple(map(repr, r)) for r in rows), key=repr)
    return out


async def _import(sessions: async_sessionmaker[AsyncSession], path: Path, clock: FakeClock) -> ImportReport:
    clock.advance(1.0)
    return await import_directory(sessions, path, clock)


def _edited(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    text = EXAMPLE.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "directory.toml"
    path.write_text(text)
    return path


async def test_first_import_creates_all_and_second_changes_nothing(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, clock: FakeClock
) -> None:
    first = await _import(sessions, EXAMPLE, clock)
    assert first.changes == 17
    assert first.created[:2] == ["site NSI", "person achen"]
    assert "group NSI/body-pool" in first.created
    assert set(first.tokens) == {"MR1"}
    assert "room MR1: " + first.tokens["MR1"] in str(first)
    async with sessions() as s:
        rooms = {r.code: r for r in (await s.scalars(sa.select(Room))).all()}
        assert rooms["CT2"].device_token_hash == token_hash(CT2_TOKEN)
        assert rooms["MR1"].device_token_hash == token_hash(first.tokens["MR1"])
        assert rooms["CT2"].sip_phone_uri == "sip:ct2-room@127.0.0.1"
        people = (await s.scalars(sa.select(Person).order_by(Person.username))).all()
        assert [(p.username, p.roles, p.npi) for p in people] == [
            ("achen", "radiologist", "1234567893"),
            ("bpatel", "radiologist", "1987654328"),
            ("cgarcia", "admin,radiologist", "1543210987"),
            ("dtech", "technologist", None),
        ]
        contacts = (await s.scalars(sa.select(ContactMethod))).all()
        assert sorted(c.address for c in contacts) == [
            "+13125550101",
            "+13125550102",
            "sip:achen@127.0.0.1:5071",
            "sip:bpatel@127.0.0.1:5072",
            "sip:cgarcia@127.0.0.1:5073",
            "wctp:5550101",
        ]
        assert {c.kind for c in contacts if c.address.startswith("wctp:")} == {ContactKind.PAGER}
        group = await s.scalar(sa.select(PersonGroup).options(selectinload(PersonGroup.members)))
        assert group is not None
        assert (group.name, group.pick, group.size, group.active) == (
            "body-pool",
            GroupPick.LEAST_RECENT,
            1,
            True,
        )
        usernames = {p.id: p.username for p in people}
        assert [usernames[m.person_id] for m in group.members] == ["bpatel", "cgarcia"]
        rotation = await s.scalar(
            sa.select(Rotation)
            .where(Rotation.name == "Radiologist primary")
            .options(selectinload(Rotation.members))
        )
        assert rotation is not None
        ids = {p.id: p.username for p in people}
        assert [ids[m.person_id] for m in rotation.members] == ["achen", "bpatel", "cgarcia"]
        policy = await s.scalar(sa.select(EscalationPolicy).options(selectinload(EscalationPolicy.tiers)))
        assert policy is not None
        assert (policy.version, policy.active) == (1, True)
        assert [(t.ring_timeout_s, t.parallel) for t in policy.tiers] == [
            (30, True),
            (30, True),
            (45, True),
            (60, True),
        ]
        assert policy.tiers[3].targets == ["group:body-pool"]
        assert (policy.repeat, policy.severe_fanout) == (2, 2)
        assert policy.snapshot()["tiers"][2]["targets"] == [
            "rotation:primary",
            "rotation:backup",
            "person:cgarcia",
        ]
        events = await chain_events(s, None)
        assert len(events) == first.changes
        assert {e.kind for e in events} == {"directory.created"}
        assert verify_chain(events) == []
        assert all("0101" not in str(e.data) for e in events)  # numbers are masked in the evidence

    before = await _snapshot(engine)
    second = await _import(sessions, EXAMPLE, clock)
    assert second.changes == 0
    assert str(second) == f"{EXAMPLE}: 0 changes"
    assert second.tokens == {}
    assert await _snapshot(engine) == before


async def test_changes_are_updated_removals_deactivated_and_policies_versioned(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, clock: FakeClock, tmp_path: Path
) -> None:
    first = await _import(sessions, EXAMPLE, clock)
    mr1_hash = token_hash(first.tokens["MR1"])
    edited = _edited(
        tmp_path,
        ('name = "CT Scanner 2"', 'name = "CT Scanner Two"'),
        ('[[room]]\nsite = "NSI"\ncode = "MR1"\nname = "MRI 1"\n', ""),
        ('display_name = "Dr. Bharat Patel"', 'display_name = "Dr. B. Patel"'),
        ('kind = "pstn_voice"\naddress = "(312) 555-0101"', 'kind = "sip"\naddress = "sips:achen@example.org"'),
        ('members = ["achen", "bpatel", "cgarcia"]', 'members = ["cgarcia", "achen", "bpatel"]'),
        ("ring_timeout_s = 45", "ring_timeout_s = 60"),
        ("repeat = 2 ", "repeat = 3 "),
        ('# onsite_activation_uri = "sip:code-team@127.0.0.1"', 'onsite_activation_uri = "sip:code-team@127.0.0.1"'),
        ('[[person]]\nusername = "dtech"\ndisplay_name = "Dana Tech, RT(R)(CT)"\nroles = ["technologist"]\n', ""),
    )  # fmt: skip
    report = await _import(sessions, edited, clock)
    assert sorted(report.updated) == [
        "person bpatel: display_name",
        "policy NSI/Contrast reaction v2: tiers, repeat",
        "room CT2: name",
        "rotation NSI/Radiologist primary: members",
        "site NSI: onsite_activation_uri",
    ]
    assert report.created == ["contact achen sip sips:a***@example.org"]
    assert sorted(report.deactivated) == ["contact achen pstn_voice +1312555****", "person dtech", "room MR1"]
    assert report.tokens == {}
    async with sessions() as s:
        mr1 = await s.scalar(sa.select(Room).where(Room.code == "MR1"))
        assert mr1 is not None
        assert (mr1.active, mr1.device_token_hash) == (False, mr1_hash)
        policies = (
            await s.scalars(
                sa.select(EscalationPolicy)
                .options(selectinload(EscalationPolicy.tiers))
                .order_by(EscalationPolicy.version)
            )
        ).all()
        assert [(p.version, p.active) for p in policies] == [(1, False), (2, True)]
        assert [t.ring_timeout_s for t in policies[0].tiers] == [30, 30, 45, 60]  # history kept
        assert [t.ring_timeout_s for t in policies[1].tiers] == [30, 30, 60, 60]
        assert (policies[0].repeat, policies[1].repeat, policies[1].severe_fanout) == (2, 3, 2)
        site = await s.scalar(sa.select(Site))
        assert site is not None
        assert site.onsite_activation_uri == "sip:code-team@127.0.0.1"
        people = {p.id: p.username for p in (await s.scalars(sa.select(Person))).all()}
        primary = await s.scalar(
            sa.select(Rotation)
            .where(Rotation.name == "Radiologist primary")
            .options(selectinload(Rotation.members))
        )
        assert primary is not None
        assert [people[m.person_id] for m in primary.members] == ["cgarcia", "achen", "bpatel"]
        assert len(await chain_events(s, None)) == first.changes + report.changes
        assert verify_chain(await chain_events(s, None)) == []

    again = await _import(sessions, edited, clock)
    assert again.changes == 0

    back = await _import(sessions, EXAMPLE, clock)
    assert sorted(back.reactivated) == [
        "contact achen pstn_voice +1312555****",
        "person dtech",
        "room MR1",
    ]
    assert "policy NSI/Contrast reaction v3: tiers, repeat" in back.updated
    assert "site NSI: onsite_activation_uri" in back.updated
    assert "contact achen sip sips:a***@example.org" in back.deactivated
    assert back.tokens == {}  # MR1 keeps the token it had
    async with sessions() as s:
        mr1 = await s.scalar(sa.select(Room).where(Room.code == "MR1"))
        assert mr1 is not None
        assert (mr1.active, mr1.device_token_hash) == (True, mr1_hash)


async def test_broken_file_is_refused_whole_and_changes_nothing(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, clock: FakeClock, tmp_path: Path
) -> None:
    await _import(sessions, EXAMPLE, clock)
    before = await _snapshot(engine)
    broken = _edited(
        tmp_path,
        ('name = "CT Scanner 2"', 'name = "Renamed (must not land)"'),
        ('npi = "1987654328"', 'npi = "1987654320"'),
        ('address = "+1 312 555 0102"', 'address = "555"'),
        ('handoff_time = "07:00"', 'handoff_time = "25:00"'),
    )
    with pytest.raises(DirectoryError) as info:
        await _import(sessions, broken, clock)
    problems = info.value.problems
    assert len(problems) == 3, [str(p) for p in problems]
    text = str(info.value)
    assert text.startswith(f"{broken}: refused, 3 problems, nothing imported:")
    for needle in ("person[1].npi", "person[1].contact[1].address", "TOO_SHORT", "rotation[0].handoff_time"):
        assert needle in text
    assert all(p.line for p in problems)
    assert await _snapshot(engine) == before


async def test_database_conflict_rolls_back_everything(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, clock: FakeClock, tmp_path: Path
) -> None:
    """A token still held by a deactivated room: the database refuses; nothing of the import remains."""
    await _import(sessions, EXAMPLE, clock)
    before = await _snapshot(engine)
    clash = _edited(
        tmp_path,
        (
            'code = "CT2"',
            'code = "CT3"',
        ),  # CT2 leaves the file (deactivated, keeps its hash); CT3 wants the token
        ('name = "Dr. Alice Chen"', 'name = "Dr. A. Chen"'),
    )
    with pytest.raises(DirectoryError, match="the database refused the import, nothing was changed"):
        await _import(sessions, clash, clock)
    assert await _snapshot(engine) == before


async def test_unreadable_file_is_a_directory_error(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock, tmp_path: Path
) -> None:
    with pytest.raises(DirectoryError, match="cannot read the file"):
        await import_directory(sessions, tmp_path / "missing.toml", clock)
