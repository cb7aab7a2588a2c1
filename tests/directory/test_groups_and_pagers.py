"""Groups (pool targets) and pager contacts in the directory: address rules, every problem listed with its line,
nothing half-imported, idempotent re-import, member reorder, deactivation -- on real SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from comms.clock import FakeClock
from comms.db.events import chain_events, verify_chain
from comms.db.models import Base, ContactMethod, Person, PersonGroup
from comms.db.types import ContactKind, GroupPick
from comms.directory import DirectoryError, import_directory, validate_directory
from comms.errors import ValidationError
from comms.phone import PhoneNumberError, mask, normalize_address, normalize_pager_address

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "directory.example.toml"

# ------------------------------------------------------------------------------------------ pager addresses


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("wctp:5550101", "wctp:5550101"),
        ("WCTP:5550101", "wctp:5550101"),
        (" snpp:8001 ", "snpp:8001"),
        ("wctp:dr.chen@carrier-1", "wctp:dr.chen@carrier-1"),
        ("mailto:Achen.Page@Pager.Example.ORG", "mailto:Achen.Page@pager.example.org"),
        ("MAILTO:5550101@txt.example.net", "mailto:5550101@txt.example.net"),
    ],
)
def test_pager_addresses_are_normalised(text: str, normal: str) -> None:
    assert normalize_pager_address(text) == normal
    assert normalize_address("pager", text) == normal
    assert normalize_address("pager", normal) == normal  # idempotent


@pytest.mark.parametrize(
    ("text", "reason", "message"),
    [
        (
            "5550101",
            "BAD_PAGER_SCHEME",
            "has no scheme: expected wctp:<recipient id>, snpp:<pager id> or mailto:",
        ),
        ("tel:+13125550101", "BAD_PAGER_SCHEME", "has scheme 'tel': expected wctp:"),
        ("wctp:", "BAD_PAGER_ID", "recipient id '' is not valid: expected 1-64 of letters"),
        ("snpp:80 01", "BAD_PAGER_ID", "pager id '80 01' is not valid"),
        ("snpp:8001\r\nQUIT", "BAD_PAGER_ID", "pager id"),
        ("wctp:" + "9" * 65, "BAD_PAGER_ID", "expected 1-64"),
        ("mailto:achen", "BAD_PAGER_EMAIL", "is not one e-mail address: expected mailto:local@domain"),
        ("mailto:a@b.org,c@d.org", "BAD_PAGER_EMAIL", "(no name, no list, no spaces)"),
        ("mailto:Dr Chen <a@b.org>", "BAD_PAGER_EMAIL", "is not one e-mail address"),
    ],
)
def test_bad_pager_addresses_say_what_was_seen_and_expected(text: str, reason: str, message: str) -> None:
    with pytest.raises(PhoneNumberError) as info:
        normalize_address("pager", text)
    assert info.value.reason == reason
    assert message in str(info.value)
    assert repr(text) in str(info.value)


def test_pager_contacts_in_the_model_and_masked_in_logs() -> None:
    row = ContactMethod(kind=ContactKind.PAGER, address="MAILTO:achen@Pager.Example.org")
    assert row.address == "mailto:achen@pager.example.org"
    with pytest.raises(ValidationError, match="has scheme 'sip'"):
        ContactMethod(kind="pager", address="sip:achen@127.0.0.1")
    assert mask("mailto:achen@pager.example.org") == "mailto:a***@pager.example.org"
    assert "0101" not in mask("wctp:5550101")


# ------------------------------------------------------------------------------------------ validation

_HEAD = """\
[[site]]
code = "NSI"
name = "Northside Imaging"
timezone = "America/Chicago"
us_state = "IL"

[[site]]
code = "SSI"
name = "Southside Imaging"
timezone = "America/Chicago"
us_state = "IL"

[[person]]
username = "achen"
display_name = "Dr. Alice Chen"
roles = ["radiologist"]
npi = "1234567893"

[[person.contact]]
kind = "pager"
address = "pager:5550101"

[[person]]
username = "bpatel"
display_name = "Dr. Bharat Patel"
roles = ["radiologist"]
npi = "1987654328"

[[person.contact]]
kind = "pager"
address = "mailto:bpatel@"

[[person]]
username = "dtech"
display_name = "Dana Tech"
roles = ["technologist"]
"""
BROKEN = (
    _HEAD
    + """
[[group]]
site = "NSI"
name = "body pool"
members = ["achen"]

[[group]]
site = "NSI"
name = "neuro"
members = ["achen", "dtech", "ghost"]
pick = "round_robin"

[[group]]
site = "NSI"
name = "pool"
members = ["achen", "bpatel"]
size = 2

[[group]]
site = "NSI"
name = "pool2"
members = ["achen", "bpatel"]
pick = "least_recent"
size = 3

[[group]]
site = "NSI"
name = "pool2"
members = ["bpatel"]

[[group]]
site = "SSI"
name = "south"
members = ["achen"]

[[policy]]
site = "NSI"
name = "Contrast"

[[policy.tier]]
targets = ["group:pol", "group:south", "group:neuro", "group:with space"]
"""
)

EXPECTED = [
    (21, "person[0].contact[0].address", "pager address 'pager:5550101' has scheme 'pager': expected wctp:"),
    (31, "person[1].contact[0].address", "'bpatel@' is not one e-mail address"),
    (40, "group[0].name", "group name 'body pool' is not valid: expected 1-64 of A-Z a-z 0-9 _ . -"),
    (46, "group[1].members", "member 'dtech' is not a radiologist"),
    (46, "group[1].members", "person 'ghost' is not declared in this file"),
    (47, "group[1].pick", "'round_robin' is not allowed: expected one of all, least_recent"),
    (53, "group[2].size", 'size applies to pick = "least_recent" only'),
    (60, "group[3].size", "3 is more than the 2 member(s): expected 1-2"),
    (64, "group[4].name", "group 'pool2' appears twice at site 'NSI'"),
    (77, "policy[0].tier[0].targets", "tier target 'group:with space' is not valid"),
]


def test_broken_groups_and_pager_contacts_list_every_problem_with_line_and_path() -> None:
    _, problems = validate_directory(BROKEN, "broken.toml")
    found = [(p.line, p.path, p.reason) for p in problems]
    for line, path, reason in EXPECTED:
        assert any(f == line and pa == path and reason in r for f, pa, r in found), (
            line,
            path,
            reason,
            found,
        )
    assert len(problems) == len(EXPECTED), "\n".join(map(str, problems))


def test_policy_targets_name_groups_of_their_own_site() -> None:
    text = (
        _HEAD.replace('address = "pager:5550101"', 'address = "wctp:5550101"').replace(
            'address = "mailto:bpatel@"', 'address = "snpp:8001"'
        )
        + """
[[group]]
site = "NSI"
name = "pool"
members = ["achen", "bpatel"]
pick = "least_recent"

[[group]]
site = "SSI"
name = "south"
members = ["achen"]

[[policy]]
site = "NSI"
name = "Contrast"

[[policy.tier]]
targets = ["group:pol", "group:south"]
"""
    )
    d, problems = validate_directory(text, "f.toml")
    reasons = [p.reason for p in problems]
    assert reasons == [
        "target 'group:pol': site 'NSI' has no group 'pol' (did you mean 'pool'?)",
        "target 'group:south': site 'NSI' has no group 'south': expected one of pool",
    ]
    assert d.groups[0].pick is GroupPick.LEAST_RECENT and d.groups[0].size == 1
    assert [c.address for p in d.people for c in p.contacts] == ["wctp:5550101", "snpp:8001"]


# ------------------------------------------------------------------------------------------ import


async def _snapshot(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = (await conn.execute(sa.select(table))).all()
            out[table.name] = sorted((tuple(map(repr, r)) for r in rows), key=repr)
    return out


def _edited(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    text = EXAMPLE.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "directory.toml"
    path.write_text(text)
    return path


async def _group(sessions: async_sessionmaker[AsyncSession]) -> tuple[PersonGroup, list[str]]:
    async with sessions() as s:
        group = await s.scalar(sa.select(PersonGroup).options(selectinload(PersonGroup.members)))
        assert group is not None
        names = {p.id: p.username for p in (await s.scalars(sa.select(Person))).all()}
        return group, [names[m.person_id] for m in group.members]


async def test_groups_and_pagers_import_update_reorder_and_deactivate(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, clock: FakeClock, tmp_path: Path
) -> None:
    first = await import_directory(sessions, EXAMPLE, clock)
    assert "group NSI/body-pool" in first.created
    assert "contact achen pager wctp:555****" in first.created
    group, members = await _group(sessions)
    assert (group.pick, group.size, members) == (GroupPick.LEAST_RECENT, 1, ["bpatel", "cgarcia"])
    before = await _snapshot(engine)
    clock.advance(1)
    assert (await import_directory(sessions, EXAMPLE, clock)).changes == 0
    assert await _snapshot(engine) == before

    edited = _edited(
        tmp_path,
        ('members = ["bpatel", "cgarcia"]', 'members = ["cgarcia", "achen", "bpatel"]'),
        ('pick = "least_recent"', 'pick = "least_recent"\n'),
        ("size = 1    ", "size = 2    "),
        ('address = "wctp:5550101"', 'address = "snpp:5550101"'),
    )
    clock.advance(1)
    report = await import_directory(sessions, edited, clock)
    assert "group NSI/body-pool: size, members" in report.updated
    assert report.created == ["contact achen pager snpp:555****"]
    assert report.deactivated == ["contact achen pager wctp:555****"]
    group, members = await _group(sessions)
    assert (group.size, members) == (2, ["cgarcia", "achen", "bpatel"])
    clock.advance(1)
    assert (await import_directory(sessions, edited, clock)).changes == 0

    # the group leaves the file (and the tier that named it): deactivated, kept for history
    without = _edited(
        tmp_path,
        ('[[group]]\nsite = "NSI"\nname = "body-pool"', '[[retired]]\nsite = "NSI"\nname = "body-pool"'),
    )
    text = without.read_text()
    cut = text.index("[[retired]]")
    tail = text.index("[[policy]]")
    last_tier = text.rindex("[[policy.tier]]")
    without.write_text(text[:cut] + text[tail:last_tier])
    clock.advance(1)
    gone = await import_directory(sessions, without, clock)
    assert "group NSI/body-pool" in gone.deactivated
    group, members = await _group(sessions)
    assert group.active is False and members == ["cgarcia", "achen", "bpatel"]
    async with sessions() as s:
        assert verify_chain(await chain_events(s, None)) == []

    clock.advance(1)
    back = await import_directory(sessions, EXAMPLE, clock)
    assert "group NSI/body-pool: size, members" in back.reactivated


async def test_a_file_with_a_group_problem_changes_nothing(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, clock: FakeClock, tmp_path: Path
) -> None:
    await import_directory(sessions, EXAMPLE, clock)
    before = await _snapshot(engine)
    broken = _edited(
        tmp_path,
        ('name = "CT Scanner 2"', 'name = "Renamed (must not land)"'),
        ('members = ["bpatel", "cgarcia"]', 'members = ["bpatel", "dtech"]'),
        ('targets = ["group:body-pool"]', 'targets = ["group:body_pool"]'),
        ('address = "wctp:5550101"', 'address = "wctp:555 0101"'),
    )
    clock.advance(1)
    with pytest.raises(DirectoryError) as info:
        await import_directory(sessions, broken, clock)
    text = str(info.value)
    assert "refused, 3 problems, nothing imported" in text, text
    assert "group[0].members: member 'dtech' is not a radiologist" in text
    assert "target 'group:body_pool': site 'NSI' has no group 'body_pool' (did you mean 'body-pool'?)" in text
    assert "recipient id '555 0101' is not valid" in text
    assert await _snapshot(engine) == before
