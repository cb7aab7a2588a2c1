"""Fixtures for the dial-in tests: a whole node on loopback (SQLite, our SIP stack, espeak-ng prompts) with the
dial-in tuned for test speed, and a directory with two rooms and one tier of radiologists."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from escalation.dialin import DialInSettings
from tests.peers.fixtures import sipp, softphone  # noqa: F401  (fixtures)
from tests.slice.conftest import Node, Radiologist
from tests.support import Rad, RoomSpec, prompt_cache, seed_site, started_node  # noqa: F401  (prompt_cache)

FALLBACK = "555 0100"
SETTINGS = DialInSettings(
    fallback_number=FALLBACK,
    status_interval_s=4.0,
    ivr_timeout_s=4.0,
    inter_digit_timeout_s=1.5,
    retries=1,
    poll_s=0.2,
    accept_wait_s=15.0,
)
ROOM_PHONE = "sip:phone@127.0.0.1"
"""The softphone's From is ``sip:phone@127.0.0.1:<port>``: room CT2's phone (caller ID ignores the port)."""


class DialInNode(Node):
    async def dialin_directory(self, tier: Sequence[Radiologist], *, ring_timeout_s: int = 20) -> None:
        """Site north: room MR4 (dial code 674, no phone) and CT2 (its phone is the softphone); one tier."""
        await seed_site(
            self.sessions,
            [[Rad(r.username, r.name, sip=r.uri) for r in tier]],
            rooms=[RoomSpec("MR4"), RoomSpec("CT2", phone=ROOM_PHONE)],
            ring_timeout_s=ring_timeout_s,
        )


@pytest.fixture
async def node(
    tmp_path: Path,
    prompt_cache: Path,  # noqa: F811
) -> AsyncIterator[DialInNode]:
    async with started_node(tmp_path, prompt_cache, ivr_timeout_s=6.0, dialin=SETTINGS) as app:
        yield DialInNode(app)
