"""Fixtures for the engine's integration tests: a whole node (tests/slice) plus tree options, and databases."""

from __future__ import annotations

import sqlalchemy as sa

from comms.db.models import EscalationPolicy, PolicyTier, Site
from tests.db_fixtures import backend, clock, db_url, engine, sessions, sf  # noqa: F401  (fixtures)
from tests.peers.fixtures import baresip, sipp, softphone  # noqa: F401  (fixtures)
from tests.slice.conftest import Node, node, prompt_cache  # noqa: F401  (fixtures)


async def tree_options(
    target: Node,
    *,
    parallel: dict[int, bool] | None = None,
    severe_fanout: int | None = None,
    repeat: int | None = None,
    onsite_uri: str | None = None,
) -> None:
    """Set paging-tree options on the directory :meth:`Node.directory` wrote."""
    async with target.sessions() as s, s.begin():
        policy = await s.scalar(sa.select(EscalationPolicy))
        assert policy is not None
        if severe_fanout is not None:
            policy.severe_fanout = severe_fanout
        if repeat is not None:
            policy.repeat = repeat
        for tier in (await s.scalars(sa.select(PolicyTier))).all():
            if parallel and tier.position in parallel:
                tier.parallel = parallel[tier.position]
        if onsite_uri is not None:
            site = await s.scalar(sa.select(Site))
            assert site is not None
            site.onsite_activation_uri = onsite_uri
