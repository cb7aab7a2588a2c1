"""A program started for a test: output collected, stopped cleanly (SIGTERM, then SIGKILL) by its own pid."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


class PeerProcess:
    """``argv`` run with stdout and stderr merged into :attr:`output` (also logged at DEBUG)."""

    def __init__(self, name: str, argv: Sequence[str], *, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.cwd = cwd
        self.output = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._grew = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    async def start(self) -> None:
        log.debug("%s: starting %s", self.name, " ".join(self.argv))
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.cwd,
            env={**os.environ, "TERM": "dumb"},
            start_new_session=True,  # its own process group: forked children (Kamailio's) are stopped too
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        while True:
            chunk = await self._proc.stdout.read(65536)
            if not chunk:
                break
            text = chunk.decode("utf-8", "replace")
            self.output += text
            for line in text.splitlines():
                log.debug("%s| %s", self.name, line)
            self._grew.set()
        self._grew.set()

    async def wait_output(self, pattern: str, within: float = 5.0) -> re.Match[str]:
        """Wait until the output matches ``pattern``; fail if the program exits first."""
        regex = re.compile(pattern)
        async with asyncio.timeout(within):
            while True:
                found = regex.search(self.output)
                if found:
                    return found
                if self._reader is not None and self._reader.done():
                    raise RuntimeError(
                        f"{self.name} exited ({self.returncode}) before printing {pattern!r}:\n{self.output[-3000:]}"
                    )
                self._grew.clear()
                await self._grew.wait()

    async def wait(self, within: float) -> int:
        """Wait for the program to exit by itself; return its exit status."""
        assert self._proc is not None
        rc = await asyncio.wait_for(self._proc.wait(), within)
        if self._reader is not None:
            await self._reader
        return rc

    async def stop(self, grace: float = 3.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; return the exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                log.warning("%s (pid %s) ignored SIGTERM for %.1f s: killing it", self.name, proc.pid, grace)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        with contextlib.suppress(ProcessLookupError):  # children that outlived the leader hold our pipe open
            os.killpg(proc.pid, signal.SIGKILL)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        return proc.returncode
