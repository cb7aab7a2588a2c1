"""Real ``comms serve`` processes for the chaos tests: write a settings file, start, kill -9, restart.

    node = ServeNode("node-a", workdir, db_url, prompts)
    await node.start()               # returns once it printed "Contrast Comms is serving: <url>  (SIP host:port …)"
    await node.kill9()               # SIGKILL: no clean stop, no goodbye to the database
    await node.start()               # the same settings file again (a restart keeps its node id)

Ports come from the OS (``port = 0``); the real ones are parsed from the line ``comms serve`` prints. The
node's log (stderr) goes to ``<workdir>/<node>.log``; a failed start raises with its tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVING = re.compile(rb"serving: (http://\S+)\s+\(SIP ([\d.]+):(\d+), node (\S+)\)")


class ServeNode:
    """One ``comms serve --config FILE`` process."""

    def __init__(
        self,
        node_id: str,
        workdir: Path,
        database_url: str,
        prompt_cache: Path,
        *,
        lease_s: float = 3.0,
        dead_after_s: float = 3.0,
        poll_s: float = 0.5,
        log_level: str = "INFO",
    ) -> None:
        self.node_id = node_id
        self.dir = workdir / node_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "comms.toml"
        self.log = workdir / f"{node_id}.log"
        self.config.write_text(
            f"""
[data]
dir = "{self.dir}"
[database]
url = "{database_url}"
[http]
port = 0
[sip]
port = 0
transports = ["udp"]
[prompts]
cache_dir = "{prompt_cache}"
[escalation]
tick_safety_poll_s = {poll_s}
[node]
id = "{node_id}"
lease_s = {lease_s}
dead_after_s = {dead_after_s}
[log]
level = "{log_level}"
"""
        )
        self.proc: asyncio.subprocess.Process | None = None
        self.http_url = ""
        self.sip_port = 0
        self.starts = 0

    @staticmethod
    def env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMMS_")}
        env["PYTHONPATH"] = str(ROOT)
        return env

    async def start(self, within: float = 40.0) -> None:
        self.starts += 1
        with self.log.open("ab") as err:
            err.write(f"\n===== start {self.starts} of {self.node_id} =====\n".encode())
            err.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "comms.cli", "serve", "--config", str(self.config),
                cwd=ROOT, env=self.env(), stdout=asyncio.subprocess.PIPE, stderr=err,
            )  # fmt: skip
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        except TimeoutError:
            line = b""
        found = SERVING.search(line)
        if found is None:
            await self.kill9()
            raise RuntimeError(f"{self.node_id} did not start: {line!r}\n{self.tail()}")
        self.http_url = found.group(1).decode()
        self.sip_port = int(found.group(3))
        assert found.group(4).decode() == self.node_id

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill9(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                await self.kill9()

    def tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text("utf-8", "replace")[-chars:]
        return ""


async def run_cli(*args: str, within: float = 60.0) -> str:
    """Run ``comms <args>`` to completion; return its stdout, raise with its output if it failed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comms.cli", *args, cwd=ROOT, env=ServeNode.env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), within)
    if proc.returncode != 0:
        raise RuntimeError(
            f"comms {' '.join(args)} exited {proc.returncode}:\n{out.decode()}\n{err.decode()}"
        )
    return out.decode()
