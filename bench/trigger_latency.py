"""Trigger latency: from sending ``POST /api/v1/incidents`` to the alert INVITE arriving at a SIP listener.

A real node (``comms serve``, SQLite, its own process) pages a radiologist whose SIP phone is a small UDP listener
in this process; the listener timestamps each INVITE on arrival and answers 486 Busy Here so the leg ends at once.
Two series in one run. *Isolated* (the headline): each incident is raised on an idle node -- the previous one
has been answered 486 and finished (state ``exhausted``) -- so every figure is one trigger's own latency.
*Back-to-back*: the next POST goes out the moment the previous INVITE arrives, so it also waits behind the
previous incident's tail (its 486, the leg's end, the decision that exhausts it) on the node's one event loop
and one SQLite connection.

    uv run python bench/trigger_latency.py [--incidents 300]

Ends with ``RESULT trigger_to_invite_p99_ms=<x> ms`` (isolated) and the back-to-back p99.
Goal: p99 ≤ 20 ms on the 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from comms.db.engine import create_engine, migrate, session_factory, sqlite_url  # noqa: E402
from comms.db.models import ContactMethod, EscalationPolicy, Person, PolicyTier, Room, Site  # noqa: E402
from comms.db.types import ContactKind  # noqa: E402
from sip.message import Request, parse_message  # noqa: E402
from sip.transaction import make_response  # noqa: E402

TOKEN = "bench-room-token"


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Listener(asyncio.DatagramProtocol):
    """The radiologist's phone: timestamps INVITEs, answers 486."""

    def __init__(self) -> None:
        self.arrivals: asyncio.Queue[float] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self._seen: set[str] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        t = time.perf_counter()
        msg = parse_message(data)
        if not isinstance(msg, Request) or msg.method != "INVITE":
            return
        assert self.transport is not None
        self.transport.sendto(bytes(make_response(msg, 486, to_tag="bench")), addr)
        if msg.call_id not in self._seen:  # a retransmission is not a new arrival
            self._seen.add(msg.call_id)
            self.arrivals.put_nowait(t)


async def build_directory(url: str, phone_port: int) -> None:
    await migrate(url)
    engine = create_engine(url)
    async with session_factory(engine)() as s, s.begin():
        site = Site(code="bench", name="Bench Imaging", timezone="America/Chicago", us_state="IL")
        s.add(site)
        await s.flush()
        s.add(
            Room(
                site_id=site.id,
                code="CT1",
                name="CT 1",
                device_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
            )
        )
        person = Person(username="drbench", display_name="Dr Bench", roles="radiologist", npi="1234567893")
        s.add(person)
        await s.flush()
        s.add(
            ContactMethod(
                person_id=person.id, kind=ContactKind.SIP, address=f"sip:drbench@127.0.0.1:{phone_port}"
            )
        )
        policy = EscalationPolicy(site_id=site.id, name="bench", version=1)
        s.add(policy)
        await s.flush()
        s.add(PolicyTier(policy_id=policy.id, position=1, ring_timeout_s=30, targets=["person:drbench"]))
    await engine.dispose()


async def wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            if proc.poll() is not None:
                raise SystemExit(f"comms serve exited with {proc.returncode}")
            try:
                async with http.get(url + "/login"):
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise SystemExit("comms serve did not start listening within 10 s")


async def wait_exhausted(http: aiohttp.ClientSession, base: str, incident_id: str) -> None:
    """Until the node has finished with the incident (its only tier got 486 Busy Here), then a short pause."""
    for _ in range(500):
        async with http.get(
            f"{base}/api/v1/incidents/{incident_id}", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp:
            if (await resp.json())["state"] == "exhausted":
                await asyncio.sleep(0.02)
                return
        await asyncio.sleep(0.005)
    raise SystemExit(f"incident {incident_id} was not exhausted within ~5 s of its 486")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(incidents: int) -> None:
    with tempfile.TemporaryDirectory(prefix="comms-bench-") as tmp:
        data = Path(tmp)
        loop = asyncio.get_running_loop()
        listener = Listener()
        phone_port = free_port(socket.SOCK_DGRAM)
        await loop.create_datagram_endpoint(lambda: listener, local_addr=("127.0.0.1", phone_port))
        url = sqlite_url(data / "comms.db")
        await build_directory(url, phone_port)
        http_port, sip_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
        (data / "comms.toml").write_text(
            f'[data]\ndir = "{data}"\n[http]\nport = {http_port}\n[sip]\nport = {sip_port}\ntransports = ["udp"]\n'
            '[log]\nlevel = "WARNING"\n'
        )
        env = dict(os.environ)
        proc = subprocess.Popen(
            [sys.executable, "-m", "comms.cli", "serve", "--config", str(data / "comms.toml")], env=env
        )
        try:
            base = f"http://127.0.0.1:{http_port}"
            await wait_http(base, proc)
            isolated: list[float] = []
            back_to_back: list[float] = []
            async with aiohttp.ClientSession() as http:
                for settle, series in ((True, isolated), (False, back_to_back)):
                    for i in range(incidents + 10):
                        t0 = time.perf_counter()
                        async with http.post(
                            base + "/api/v1/incidents",
                            json={"room": "CT1", "severity": "severe"},
                            headers={"Authorization": f"Bearer {TOKEN}"},
                        ) as resp:
                            if resp.status != 201:
                                raise SystemExit(f"POST answered {resp.status}: {await resp.text()}")
                            incident_id = (await resp.json())["id"]
                        t1 = await asyncio.wait_for(listener.arrivals.get(), 5)
                        if i >= 10:  # the first few warm caches and connections
                            series.append((t1 - t0) * 1000)
                        if settle:  # the node finishes this incident (486 → exhausted) before the next one
                            await wait_exhausted(http, base, incident_id)
        finally:
            proc.terminate()
            proc.wait(10)
    for name, series in (("isolated", isolated), ("back-to-back", back_to_back)):
        print(
            f"{name:>12}: {len(series)} incidents, POST -> INVITE ms: min {min(series):.2f}  "
            f"p50 {pct(series, 50):.2f}  p95 {pct(series, 95):.2f}  p99 {pct(series, 99):.2f}  "
            f"max {max(series):.2f}  mean {statistics.fmean(series):.2f}"
        )
    print(f"RESULT trigger_to_invite_p50_ms={pct(isolated, 50):.2f} ms")
    print(f"RESULT trigger_to_invite_p99_ms={pct(isolated, 99):.2f} ms")
    print(f"RESULT trigger_to_invite_back_to_back_p99_ms={pct(back_to_back, 99):.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--incidents", type=int, default=300)
    asyncio.run(main(parser.parse_args().incidents))
