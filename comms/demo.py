"""``comms demo``: the whole product on the embedded default, with three simulated radiologists.

The radiologists' phones are the pjsua2 reference softphone (``comms phone listen``), one process each, on
loopback: Dr Chen (primary on call) never answers, Dr Patel (backup) answers and declines with 2, Dr Garcia (third
tier) answers and accepts with 1. The demo imports a directory (one site, two rooms, the three radiologists, a
technologist and an admin), starts a node (SQLite under ``var/demo``, HTTP, SIP), prints the room page and the
staff login, presses the room button once (unless ``--no-auto``) and prints the evidence as it is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import sqlalchemy as sa

from comms.app import AppConfig, CommsApp
from comms.clock import SystemClock
from comms.db.engine import create_engine, migrate, session_factory, sqlite_url
from comms.db.models import Event, Incident
from comms.directory import import_directory
from comms.security import hash_password

PHONES = (
    # username, display name, npi, behaviour flags for `comms phone listen`
    ("achen", "Dr. Alice Chen", "1234567893", ["--never-answer"]),
    (
        "bpatel",
        "Dr. Bharat Patel",
        "1987654328",
        ["--answer-after", "2", "--press", "2", "--press-after", "1.5"],
    ),
    (
        "cgarcia",
        "Dr. Carmen Garcia",
        "1543210987",
        ["--answer-after", "3", "--press", "1", "--press-after", "1.5"],
    ),
)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _directory(ports: dict[str, int], tokens: dict[str, str], admin_hash: str) -> str:
    people = []
    for username, name, npi, _ in PHONES:
        people.append(
            f'[[person]]\nusername = "{username}"\ndisplay_name = "{name}"\nroles = ["radiologist"]\nnpi = "{npi}"\n'
            f'[[person.contact]]\nkind = "sip"\naddress = "sip:{username}@127.0.0.1:{ports[username]}"\n'
            'label = "demo softphone"\n'
        )
    return "\n".join(
        [
            '[[site]]\ncode = "NSI"\nname = "Northside Imaging"\ntimezone = "America/Chicago"\nus_state = "IL"\n',
            f'[[room]]\nsite = "NSI"\ncode = "CT2"\nname = "CT 2"\ndevice_token = "{tokens["CT2"]}"\n',
            f'[[room]]\nsite = "NSI"\ncode = "MR1"\nname = "MRI 1"\ndevice_token = "{tokens["MR1"]}"\n',
            *people,
            '[[person]]\nusername = "dtech"\ndisplay_name = "Dana Tech"\nroles = ["technologist"]\n',
            '[[person]]\nusername = "admin"\ndisplay_name = "Demo Admin"\n'
            f'roles = ["admin", "compliance", "scheduler"]\npassword_hash = "{admin_hash}"\n',
            '[[rotation]]\nsite = "NSI"\nname = "Primary"\ntier = "primary"\nhandoff_weekday = 0\n'
            'handoff_time = "07:00"\nstart_date = 2026-01-05\nmembers = ["achen"]\n',
            '[[rotation]]\nsite = "NSI"\nname = "Backup"\ntier = "backup"\nhandoff_weekday = 0\n'
            'handoff_time = "07:00"\nstart_date = 2026-01-05\nmembers = ["bpatel"]\n',
            '[[policy]]\nsite = "NSI"\nname = "Contrast reaction"\n'
            '[[policy.tier]]\nring_timeout_s = 10\ntargets = ["rotation:primary"]\n'
            '[[policy.tier]]\nring_timeout_s = 10\ntargets = ["rotation:backup"]\n'
            '[[policy.tier]]\nring_timeout_s = 20\ntargets = ["person:cgarcia"]\n',
        ]
    )


async def _wait_listening(
    data_dir: Path, phones: list[asyncio.subprocess.Process], limit_s: float = 30.0
) -> None:
    """Wait until every demo phone printed its 'listening on' line (pjsua2 takes a few seconds to start)."""
    clock = SystemClock()
    end = clock.monotonic() + limit_s
    pending = {username for username, *_ in PHONES}
    while pending:
        for username, proc in zip([u for u, *_ in PHONES], phones, strict=True):
            log = data_dir / f"phone-{username}.log"
            if proc.returncode is not None:
                raise SystemExit(f"demo phone {username} exited ({proc.returncode}): see {log}")
            text = await asyncio.to_thread(log.read_text, errors="replace")
            if "listening on" in text:
                pending.discard(username)
        if clock.monotonic() > end:
            raise SystemExit(f"demo phones {sorted(pending)} did not start within {limit_s:.0f} s")
        await clock.sleep(0.1)


async def _follow(app: CommsApp, incident_id: str) -> None:
    """Print the incident's evidence as it is written, until it is accepted or exhausted and its legs ended."""
    assert app.sessions is not None
    printed = 0
    who: dict[str, str] = {}
    clock = SystemClock()
    quiet_until: float | None = None
    while True:
        async with app.sessions() as s:
            events = (
                await s.scalars(sa.select(Event).where(Event.incident_id == incident_id).order_by(Event.seq))
            ).all()
            incident = await s.get(Incident, incident_id)
        for ev in events[printed:]:
            if ev.kind == "leg.created" and ev.leg_id:
                who[ev.leg_id] = str(ev.data.get("person", "?"))
            label = f"[{who.get(ev.leg_id, '?')}]" if ev.leg_id else ""
            at = ev.at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            data = ", ".join(
                f"{k}={v}" for k, v in sorted(ev.data.items()) if k not in ("person_id", "policy")
            )
            print(f"  {ev.seq:3d}  {at}  {ev.kind:22s} {label:20s} {data}", flush=True)
        printed = len(events)
        assert incident is not None
        if incident.state.value in ("accepted", "exhausted", "resolved", "cancelled"):
            quiet_until = quiet_until or clock.monotonic() + 8.0  # let the legs finish their goodbyes
            if clock.monotonic() > quiet_until:
                print(f"\nIncident {incident.code}: {incident.state.value}.", flush=True)
                return
        await clock.sleep(0.2)


def _fresh_dir(data_dir: Path) -> Path:
    """The demo's data dir, without the database of an earlier run (the prompt cache is kept)."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    for old in data_dir.glob("comms.db*"):
        old.unlink()
    return data_dir


async def run_demo(*, data_dir: Path, http_port: int, sip_port: int, auto: bool) -> int:
    data_dir = _fresh_dir(data_dir)
    clock = SystemClock()
    ports = {username: _free_udp_port() for username, *_ in PHONES}
    phones: list[asyncio.subprocess.Process] = []
    for username, _name, _npi, flags in PHONES:
        argv = [
            "phone",
            "listen",
            "--port",
            str(ports[username]),
            "--tcp-port",
            "-1",
            "--user",
            username,
            *flags,
        ]
        with (data_dir / f"phone-{username}.log").open("wb") as log:
            phones.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "comms.cli", *argv, stdout=log, stderr=subprocess.STDOUT
                )
            )
    await _wait_listening(data_dir, phones)
    tokens = {"CT2": secrets.token_urlsafe(24), "MR1": secrets.token_urlsafe(24)}
    admin_password = secrets.token_urlsafe(9)
    directory = data_dir / "directory.toml"
    text = _directory(ports, tokens, hash_password(admin_password))
    await asyncio.to_thread(directory.write_text, text, encoding="utf-8")
    url = sqlite_url(data_dir / "comms.db")
    await migrate(url)
    engine = create_engine(url)
    try:
        report = await import_directory(session_factory(engine), directory, SystemClock())
    finally:
        await engine.dispose()
    print(report, flush=True)
    app = CommsApp(
        AppConfig(
            database_url=url,
            data_dir=data_dir,
            http_port=http_port,
            sip_udp_port=sip_port,
            sip_tcp_port=sip_port,
            sip_from_uri="sip:alerts@127.0.0.1",
        )
    )
    try:
        await app.start()
    except OSError as exc:
        for p in phones:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        print(
            f"comms demo: cannot listen ({exc}); pass --http-port/--sip-port with free ports", file=sys.stderr
        )
        return 2
    try:
        room_url = f"{app.http_url}/rooms/CT2?token={tokens['CT2']}"
        print(
            "\nContrast Comms demo is running.\n"
            f"  Room button (CT 2):  {room_url}\n"
            f"  Staff login:         {app.http_url}/login   user 'admin', password '{admin_password}'\n"
            f"  Device API:          curl -X POST {app.http_url}/api/v1/incidents "
            f'-H \'Authorization: Bearer {tokens["CT2"]}\' -d \'{{"room": "CT2", "severity": "severe"}}\'\n'
            "  Radiologists:        Dr Chen (primary) never answers, Dr Patel (backup) presses 2,\n"
            "                       Dr Garcia (tier 3) presses 1.  Phone logs: "
            f"{data_dir}/phone-*.log\n",
            flush=True,
        )
        if auto:
            await clock.sleep(1.0)
            async with aiohttp.ClientSession() as http:
                resp = await http.post(
                    f"{app.http_url}/api/v1/incidents",
                    json={"room": "CT2", "severity": "severe"},
                    headers={"Authorization": f"Bearer {tokens['CT2']}"},
                )
                body = await resp.json()
            print(
                f"Pressed the CT 2 button: incident {body.get('code')} — evidence as it is written:",
                flush=True,
            )
            await _follow(app, str(body["id"]))
        print("Serving until Ctrl-C. Press the room button in a browser to page again.", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await app.stop()
        for p in phones:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in phones:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(p.wait(), 5)
    return 0
