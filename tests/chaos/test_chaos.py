"""kill -9 during escalation, short CI version (``-m chaos``; ``bench/chaos.py`` runs >= 200 cycles)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import Chaos
from tests.pg import migrated_database

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(170)]


async def test_single_node_sqlite_20_kills(tmp_path: Path) -> None:
    url = await migrated_database("sqlite", tmp_path)
    verdict = await Chaos(url, tmp_path, nodes=("node-a",), cycles=20, seed=4).run()
    print(verdict)
    assert verdict.ok, verdict
    assert verdict.accepted > 0 and verdict.exhausted >= 0 and verdict.pages > verdict.incidents


async def test_two_nodes_postgresql_20_kills_then_one_stays_dead(tmp_path: Path) -> None:
    url = await migrated_database("postgresql", tmp_path)
    verdict = await Chaos(
        url, tmp_path, nodes=("node-a", "node-b"), cycles=20, seed=7, keep_one_dead=True
    ).run()
    print(verdict)
    assert verdict.ok, verdict
    assert verdict.accepted > 0
