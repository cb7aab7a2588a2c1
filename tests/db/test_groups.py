"""PersonGroup rows on real SQLite and PostgreSQL: field checks in the model, and the database's own constraints."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from comms.db.models import Person, PersonGroup, PersonGroupMember
from comms.db.types import GroupPick
from comms.errors import ValidationError
from tests.db.factories import make_site_room


def test_model_checks_name_and_size() -> None:
    with pytest.raises(ValidationError, match="group name 'body pool' is not valid: expected 1-64 of"):
        PersonGroup(name="body pool")
    with pytest.raises(ValidationError, match="group size 0 is out of range: expected 1-50 members"):
        PersonGroup(name="pool", size=0)


async def test_members_keep_their_order_and_the_database_refuses_bad_rows(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as s, s.begin():
        site, _ = await make_site_room(s)
        people = [Person(username=f"p{i}", display_name=f"P {i}") for i in range(3)]
        s.add_all(people)
        await s.flush()
        group = PersonGroup(
            site_id=site.id,
            name="pool",
            pick=GroupPick.LEAST_RECENT,
            size=2,
            members=[PersonGroupMember(position=i, person_id=p.id) for i, p in enumerate(reversed(people))],
        )
        s.add(group)
        site_id, ids = site.id, [p.id for p in reversed(people)]
    async with sessions() as s:
        got = await s.scalar(sa.select(PersonGroup).options(selectinload(PersonGroup.members)))
        assert got is not None
        assert (got.pick, got.size, got.active) == (GroupPick.LEAST_RECENT, 2, True)
        assert [m.person_id for m in got.members] == ids
    bad = [
        {
            "id": "g2",
            "site_id": site_id,
            "name": "pool",
            "pick": "all",
            "size": 1,
            "active": True,
        },  # same name
        {"id": "g3", "site_id": site_id, "name": "big", "pick": "all", "size": 51, "active": True},
        {"id": "g4", "site_id": site_id, "name": "rr", "pick": "round_robin", "size": 1, "active": True},
    ]
    for row in bad:
        with pytest.raises(sa.exc.IntegrityError):
            async with sessions() as s, s.begin():
                # past the ORM's checks (raw text): the database's constraints alone must refuse it
                await s.execute(
                    sa.text(
                        "INSERT INTO person_group (id, site_id, name, pick, size, active) "
                        "VALUES (:id, :site_id, :name, :pick, :size, :active)"
                    ),
                    row,
                )
