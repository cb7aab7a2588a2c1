"""Fixtures for the vertical slice: a whole Contrast Comms node on loopback (SQLite, our SIP stack, real prompts)
and a directory whose radiologists' phones are real peers (SIPp, the pjsua2 softphone)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from comms.app import CommsApp
from tests.peers.fixtures import sipp, softphone  # noqa: F401  (fixtures)
from tests.support import NodeReads, Rad, RoomSpec, prompt_cache, seed_site, started_node

__all__ = ["ROOM_TOKEN", "Node", "Radiologist", "node", "prompt_cache"]

ROOM_TOKEN = "room-ct2-device-token"


@dataclass
class Radiologist:
    username: str
    name: str
    uri: str


class Node(NodeReads):
    """A started node plus helpers to fill its directory and read its evidence."""

    event_timeout = 15.0
    state_timeout = 30.0

    def __init__(self, app: CommsApp) -> None:
        self.app = app

    async def directory(self, tiers: Sequence[Sequence[Radiologist]], *, ring_timeout_s: int = 10) -> None:
        """Room CT2 (device token :data:`ROOM_TOKEN`); tier *i* calls ``tiers[i]`` on their SIP URIs."""
        await seed_site(
            self.sessions,
            [[Rad(r.username, r.name, sip=r.uri) for r in tier] for tier in tiers],
            rooms=[RoomSpec("CT2", "CT 2", ROOM_TOKEN)],
            ring_timeout_s=ring_timeout_s,
        )


@pytest.fixture
async def node(tmp_path: Path, prompt_cache: Path) -> AsyncIterator[Node]:
    async with started_node(tmp_path, prompt_cache, ivr_timeout_s=4.0) as app:
        yield Node(app)
