"""Kill -9 escalation nodes at random moments and check that nothing is lost, stuck or accepted twice.

One harness run: a directory (3 tiers, ring timeout 10 s), ``len(nodes)`` worker processes
(:mod:`tests.chaos.worker`) on one database, a signed-webhook receiver that plays the radiologists' devices
(delivers, refuses with 410 -- the tree moves on at once --, and some deliveries are accepted shortly after
through :meth:`EscalationRunner.try_accept`, as the channel of a live call would), and a loop that raises
incidents and kill -9's a random node at a random instant, then restarts it. After the last kill the nodes
run undisturbed until every incident is closed.

Checked at the end (:class:`Verdict`): every incident accepted or exhausted (none lost, none stuck); at most
one ``incident.accepted`` and one ``leg.accepted`` per incident; duplicate notifications (pages with the same
idempotency key) at most one per kill; every evidence chain verifies.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from comms.clock import SystemClock
from comms.db.engine import create_engine, session_factory
from comms.db.events import verify_chain
from comms.db.models import Event, Incident
from escalation.runner import EscalationRunner
from escalation.webhook_channel import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.engine.helpers import SECRET, seed_directory

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Verdict:
    incidents: int
    kills: int
    accepted: int
    exhausted: int
    open_left: list[str]
    double_accepts: list[str]
    duplicates: int
    chain_problems: list[str]
    pages: int
    seconds: float

    @property
    def ok(self) -> bool:
        return (
            not self.open_left
            and not self.double_accepts
            and not self.chain_problems
            and self.duplicates <= self.kills
        )

    def __str__(self) -> str:
        return (
            f"{self.incidents} incidents, {self.kills} kill -9, {self.accepted} accepted, {self.exhausted} exhausted, "
            f"{len(self.open_left)} lost/stuck, {len(self.double_accepts)} double accepts, "
            f"{self.duplicates} duplicate pages (limit {self.kills}), {self.pages} pages, "
            f"{len(self.chain_problems)} chain problems, {self.seconds:.1f} s"
        )


@dataclass
class Worker:
    node: str
    url: str
    hook: str
    log: Path
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0

    async def start(self) -> None:
        self.starts += 1
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.chaos.worker", self.url, self.node, self.hook,
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=out,
        )  # fmt: skip
        out.close()
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if b"READY" not in line:
            raise RuntimeError(f"worker {self.node} did not start: {line!r}; see {self.log}")

    async def kill9(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                await self.kill9()


@dataclass
class Chaos:
    url: str
    workdir: Path
    nodes: tuple[str, ...] = ("node-a",)
    cycles: int = 20
    seed: int = 1
    incidents_per_cycle: int = 2
    keep_one_dead: bool = False
    """Multi-node: after the cycles, leave one node dead; the others must finish its incidents."""
    rng: random.Random = field(init=False)
    pages: collections.Counter[str] = field(default_factory=collections.Counter)
    draining: bool = False
    cycle_seconds: float = 0.0
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        clock = SystemClock()
        if not verify(
            SECRET, request.headers.get(TIMESTAMP_HEADER, ""), body, request.headers.get(SIGNATURE_HEADER, ""),
            now=clock.now().timestamp(),
        ):  # fmt: skip
            return web.Response(status=401)
        data = json.loads(body)
        if data["event"] != "page":
            return web.Response(status=200)
        self.pages[request.headers["Idempotency-Key"]] += 1
        roll = self.rng.random()
        if roll < 0.3:
            return web.Response(status=410)  # refused: the leg fails, the tree moves on at once
        if roll < 0.6 or self.draining:
            task = asyncio.ensure_future(self._accept_later(data["leg_id"]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.Response(status=200)

    async def _accept_later(self, leg_id: str) -> None:
        await asyncio.sleep(self.rng.uniform(0.05, 1.5))
        # the database may be busy while a node is killed: a press lost is not the engine's fault
        with contextlib.suppress(Exception):
            await self.controller.try_accept(leg_id, digits="1", method="rfc4733")

    async def run(self) -> Verdict:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        engine = create_engine(self.url)
        sf = session_factory(engine)
        rooms = await seed_directory(sf, [["a"], ["b", "c"], ["d"]], ring_timeout_s=10, rooms=8)
        self.controller = EscalationRunner(sf, SystemClock(), node_id="harness", channels={})
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        hook = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        workers = [Worker(n, self.url, hook, self.workdir / f"{n}.log") for n in self.nodes]
        kills = 0
        ids: list[str] = []
        try:
            await asyncio.gather(*(w.start() for w in workers))
            for cycle in range(self.cycles):
                for _ in range(self.incidents_per_cycle):
                    room = self.rng.choice(rooms)
                    severity = self.rng.choice(["moderate", "severe", "mild"])
                    ids.append(
                        await self.controller.raise_incident(
                            room_code=room, severity=severity, source="chaos"
                        )
                    )
                await asyncio.sleep(self.rng.uniform(0.05, 0.8))
                victim = self.rng.choice(workers)
                await victim.kill9()
                kills += 1
                last = cycle == self.cycles - 1
                if last and self.keep_one_dead and len(workers) > 1:
                    workers.remove(victim)
                    continue
                await asyncio.sleep(self.rng.uniform(0.0, 0.3))
                await victim.start()
            self.cycle_seconds = loop.time() - t0
            self.draining = True  # from now on every delivered page is accepted: the tail closes sooner
            # drain: everything must close on its own (ring timeouts are 10 s, 3 tiers, dead-node detection 3 s)
            deadline = loop.time() + 90
            while loop.time() < deadline:
                async with sf() as s:
                    open_ = await s.scalar(
                        sa.select(sa.func.count()).where(Incident.state.in_(("raised", "paging")))
                    )
                if not open_:
                    break
                await asyncio.sleep(0.25)
        finally:
            for w in workers:
                await w.stop()
            for task in list(self._tasks):
                task.cancel()
            await runner.cleanup()
        verdict = await self._verdict(sf, ids, kills, loop.time() - t0)
        print(f"kill phase {self.cycle_seconds:.1f} s, total {verdict.seconds:.1f} s")
        await engine.dispose()
        return verdict

    async def _verdict(self, sf: Any, ids: list[str], kills: int, seconds: float) -> Verdict:
        async with sf() as s:
            incidents = (await s.scalars(sa.select(Incident).where(Incident.id.in_(ids)))).all()
            events = (await s.scalars(sa.select(Event).where(Event.incident_id.in_(ids)))).all()
        by_incident: dict[str, list[Event]] = collections.defaultdict(list)
        for ev in events:
            assert ev.incident_id is not None
            by_incident[ev.incident_id].append(ev)
        double = [
            i
            for i, evs in by_incident.items()
            if sum(e.kind == "incident.accepted" for e in evs) > 1
            or sum(e.kind == "leg.accepted" for e in evs) > 1
        ]
        states = collections.Counter(i.state.value for i in incidents)
        return Verdict(
            incidents=len(ids),
            kills=kills,
            accepted=states["accepted"],
            exhausted=states["exhausted"],
            open_left=[i.id for i in incidents if i.state.value in ("raised", "paging")]
            + [i for i in ids if i not in {x.id for x in incidents}],
            double_accepts=double,
            duplicates=sum(n - 1 for n in self.pages.values() if n > 1),
            chain_problems=[str(p) for evs in by_incident.values() for p in verify_chain(evs)],
            pages=sum(self.pages.values()),
            seconds=seconds,
        )
