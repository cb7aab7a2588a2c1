"""SIPp (Debian ``sip-tester`` 3.6.1) running one scenario from ``tests/data/sipp`` on loopback.

    uas = Sipp("uas_busy.xml", tmp_path)
    await uas.start()                      # UAS: waits until SIPp has bound its port
    ... our UA dials uas.uri() ...
    result = await uas.wait()              # SIPp exits after ``calls`` calls (-m) or ``timeout`` (-timeout)
    assert result.ok, result.report()

Every run traces unexpected messages (-trace_err), all messages (-trace_msg) and statistics (-trace_stat) into
``tmp_dir``; :meth:`SippResult.report` puts them in an assertion message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .ports import HOST, PortInUse, free_port, port_is_free, retry_bind
from .process import PeerProcess

SCENARIOS = Path(__file__).resolve().parents[1] / "data" / "sipp"
DTMF_PCAP = Path("/usr/share/sip-tester")


@dataclass(frozen=True)
class SippResult:
    returncode: int
    successful: int
    failed: int
    output: str
    errors: str
    messages: str
    stats: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Exit status 0, at least one successful call and no failed call."""
        return self.returncode == 0 and self.successful > 0 and self.failed == 0

    def report(self) -> str:
        return (
            f"SIPp exit {self.returncode}, {self.successful} successful, {self.failed} failed\n"
            f"--- unexpected messages ---\n{self.errors[-4000:]}\n"
            f"--- messages ---\n{self.messages[-6000:]}\n--- output ---\n{self.output[-2000:]}"
        )


class Sipp:
    """One SIPp process. ``remote`` ("host:port") makes it a UAC; without it, it waits as a UAS."""

    def __init__(
        self,
        scenario: str,
        tmp_dir: Path,
        *,
        remote: str | None = None,
        calls: int = 1,
        transport: str = "u1",
        timeout: float = 15.0,
        service: str = "service",
        variables: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        duration_ms: int = 1000,
        rate: float | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.scenario = SCENARIOS / scenario if not Path(scenario).is_absolute() else Path(scenario)
        if not self.scenario.is_file():
            raise FileNotFoundError(f"no SIPp scenario {self.scenario}")
        self.tmp_dir = tmp_dir
        self.remote = remote
        self.calls = calls
        self.transport = transport
        self.timeout = timeout
        self.service = service
        self.variables = dict(variables or {})
        self.auth = auth
        self.duration_ms = duration_ms
        self.rate = rate
        self.extra = list(extra)
        self.port = 0
        self.media_port = 0
        self._process: PeerProcess | None = None
        self._run = 0

    @property
    def tcp(self) -> bool:
        return self.transport.startswith("t")

    def uri(self, user: str | None = None) -> str:
        """The URI that reaches this SIPp (as a UAS)."""
        suffix = ";transport=tcp" if self.tcp else ""
        return f"sip:{user or self.service}@{HOST}:{self.port}{suffix}"

    def _files(self) -> dict[str, Path]:
        stem = f"{self.scenario.stem}-{self._run}"
        return {
            "err": self.tmp_dir / f"{stem}-errors.log",
            "msg": self.tmp_dir / f"{stem}-messages.log",
            "stat": self.tmp_dir / f"{stem}-stats.csv",
        }

    def _argv(self) -> list[str]:
        files = self._files()
        argv = ["sipp"]
        if self.remote:
            argv.append(self.remote)
        argv += [
            "-sf", str(self.scenario),
            "-i", HOST,
            "-p", str(self.port),
            "-mp", str(self.media_port),
            "-cp", str(free_port(tcp=False)),
            "-t", self.transport,
            "-m", str(self.calls),
            "-timeout", f"{self.timeout}s",
            "-timeout_error",
            "-s", self.service,
            "-d", str(self.duration_ms),
            "-nostdin",
            "-trace_err", "-error_file", str(files["err"]),
            "-trace_msg", "-message_file", str(files["msg"]),
            "-trace_stat", "-stf", str(files["stat"]), "-fd", "1",
        ]  # fmt: skip
        if self.rate is not None:
            argv += ["-r", str(self.rate)]
        if self.auth is not None:
            argv += ["-au", self.auth[0], "-ap", self.auth[1]]
            if self.remote:
                # SIPp's default digest uri is "sip:host:port", which does not match the Request-URI
                # "sip:service@host:port" its scenarios send (RFC 3261 §22.4: a strict UAS refuses it).
                argv += ["-auth_uri", f"{self.service}@{self.remote}"]
        for name, value in self.variables.items():
            argv += ["-set", name, value]
        return argv + self.extra

    async def start(self) -> None:
        """Start SIPp on fresh ports; as a UAS, return once its SIP port is bound."""
        await retry_bind(self._start_once)

    async def _start_once(self) -> None:
        self._run += 1
        self.port = free_port(udp=not self.tcp, tcp=self.tcp)
        self.media_port = free_port(tcp=False, span=4)
        process = PeerProcess(f"sipp[{self.scenario.stem}]", self._argv(), cwd=self.tmp_dir)
        await process.start()
        self._process = process
        async with asyncio.timeout(5.0):
            while port_is_free(self.port, udp=not self.tcp, tcp=self.tcp):
                if process.returncode is not None:
                    break
                await asyncio.sleep(0.02)
        if process.returncode is not None and process.returncode != 0:
            await process.stop()
            if "bind" in process.output.lower() or process.returncode == 254:
                raise PortInUse(f"SIPp could not bind port {self.port}: {process.output[-500:]}")
            raise RuntimeError(f"SIPp exited at once with {process.returncode}:\n{process.output[-3000:]}")

    async def wait(self, within: float | None = None) -> SippResult:
        """Wait until SIPp exits by itself (calls done or its own -timeout)."""
        assert self._process is not None, "start() first"
        limit = within if within is not None else self.timeout + 5.0
        try:
            rc = await self._process.wait(limit)
        except TimeoutError:
            rc = await self._process.stop() or -1
        return self._result(rc)

    async def stop(self) -> SippResult:
        """Stop SIPp now (SIGTERM) and collect what it did."""
        assert self._process is not None, "start() first"
        rc = await self._process.stop()
        return self._result(-1 if rc is None else rc)

    def _result(self, rc: int) -> SippResult:
        files = self._files()
        texts = {}
        for key, path in files.items():
            texts[key] = ""
            with contextlib.suppress(FileNotFoundError):
                texts[key] = path.read_text("utf-8", "replace")
        stats = _last_stats(texts["stat"])
        return SippResult(
            returncode=rc,
            successful=int(stats.get("SuccessfulCall(C)", "0") or 0),
            failed=int(stats.get("FailedCall(C)", "0") or 0),
            output=self._process.output if self._process else "",
            errors=texts["err"],
            messages=texts["msg"],
            stats=stats,
        )


def _last_stats(csv: str) -> dict[str, str]:
    lines = [line for line in csv.splitlines() if line.strip()]
    if len(lines) < 2:
        return {}
    header = lines[0].rstrip(";").split(";")
    values = lines[-1].rstrip(";").split(";")
    return dict(zip(header, values, strict=False))
