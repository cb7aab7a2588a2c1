"""Gateway test fixtures: aioice offers 127.0.0.1 (it leaves loopback out by default), real peers only."""

from __future__ import annotations

import aioice.ice
import pytest

from tests.peers.fixtures import softphone  # noqa: F401 - fixture re-export


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host candidates on 127.0.0.1 only: tests run on loopback without STUN/TURN."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
