"""baresip 1.0 (Debian ``baresip-core``) headless, driven through its ``ctrl_tcp`` module.

The config directory is generated: SIP on 127.0.0.1 (UDP and TCP on one port; TLS on port + 1 when a
certificate is given), a 440 Hz sine as microphone (``ausine`` needs 48 kHz stereo or baresip never sends its
200 OK), received audio written to a WAV file, G.711 only, and ``ctrl_tcp`` on a free port. Commands go as
netstring-framed JSON (``dial``, ``accept``, ``hangup``, ``sndcode``); events (``CALL_INCOMING``,
``CALL_ESTABLISHED``, ``CALL_DTMF_START``, ``CALL_CLOSED``…) are collected in :attr:`Baresip.events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from pathlib import Path
from typing import Any

from .ports import HOST, PortInUse, free_port, retry_bind
from .process import PeerProcess
from .tlscert import LoopbackCert

log = logging.getLogger(__name__)
MODULES = Path("/usr/lib/baresip/modules")


class Baresip:
    def __init__(
        self,
        tmp_dir: Path,
        *,
        user: str = "bob",
        password: str | None = None,
        auth_user: str | None = None,
        answermode: str = "manual",
        cert: LoopbackCert | None = None,
        cafile: Path | None = None,
        outbound: str | None = None,
        account_params: str = "",
    ) -> None:
        self.dir = tmp_dir / f"baresip-{user}"
        self.user = user
        self.password = password
        self.auth_user = auth_user
        self.answermode = answermode
        self.cert = cert
        self.cafile = cafile
        self.outbound = outbound
        self.account_params = account_params
        self.sip_port = 0
        self.ctrl_port = 0
        self.events: list[dict[str, Any]] = []
        self._consumed: set[int] = set()
        self._changed = asyncio.Event()
        self._responses: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tokens = itertools.count(1)
        self._process: PeerProcess | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._listener: asyncio.Task[None] | None = None

    @property
    def tls_port(self) -> int | None:
        return self.sip_port + 1 if self.cert is not None else None

    @property
    def output(self) -> str:
        return self._process.output if self._process else ""

    def uri(self, transport: str = "udp") -> str:
        if transport == "tls":
            return f"sip:{self.user}@{HOST}:{self.tls_port};transport=tls"
        if transport == "tcp":
            return f"sip:{self.user}@{HOST}:{self.sip_port};transport=tcp"
        return f"sip:{self.user}@{HOST}:{self.sip_port}"

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "poll_method epoll",
            f"sip_listen {HOST}:{self.sip_port}",
            f"net_interface {HOST}",
            "audio_player aufile," + str(self.dir / "received.wav"),
            "audio_source ausine,440",
            "audio_alert aufile,/dev/null",
            "ausrc_srate 48000",
            "ausrc_channels 2",
            "rtp_timeout 0",
            f"module_path {MODULES}",
            "module g711.so",
            "module ausine.so",
            "module aufile.so",
            "module_app account.so",
            "module_app menu.so",
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen {HOST}:{self.ctrl_port}",
        ]
        if self.cert is not None:
            lines.append(f"sip_certificate {self.cert.combined}")
        if self.cafile is not None:
            lines.append(f"sip_cafile {self.cafile}")
        (self.dir / "config").write_text("\n".join(lines) + "\n")
        params = [f"answermode={self.answermode}", "regint=0"]
        if self.password is not None:
            params.append(f"auth_pass={self.password}")
        if self.auth_user is not None:
            params.append(f"auth_user={self.auth_user}")
        if self.outbound is not None:
            params.append(f'outbound="{self.outbound}"')
        if self.account_params:
            params.append(self.account_params)
        (self.dir / "accounts").write_text(f"<sip:{self.user}@{HOST}>;" + ";".join(params) + "\n")
        (self.dir / "contacts").write_text("")

    async def start(self) -> None:
        await retry_bind(self._start_once)

    async def _start_once(self) -> None:
        self.sip_port = free_port(span=2 if self.cert else 1)
        self.ctrl_port = free_port(udp=False)
        self._write_config()
        process = PeerProcess(f"baresip[{self.user}]", ["baresip", "-f", str(self.dir), "-v"])
        await process.start()
        self._process = process
        try:
            await process.wait_output(r"baresip is ready|ctrl_tcp: TCP socket listening", 10.0)
            self._reader, self._writer = await asyncio.open_connection(HOST, self.ctrl_port)
        except (RuntimeError, OSError, TimeoutError) as exc:
            await process.stop()
            if "in use" in process.output.lower() or isinstance(exc, OSError):
                raise PortInUse(f"baresip could not bind: {process.output[-800:]}") from exc
            raise
        self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        assert self._reader is not None
        reader = self._reader
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                length = int((await reader.readuntil(b":"))[:-1])
                payload = await reader.readexactly(length)
                await reader.readexactly(1)  # the netstring's trailing ","
                message = json.loads(payload)
                if message.get("response"):
                    future = self._responses.pop(str(message.get("token")), None)
                    if future is not None and not future.done():
                        future.set_result(message)
                elif message.get("event"):
                    log.debug("baresip event %s", message)
                    self.events.append(message)
                    self._changed.set()

    async def command(self, command: str, params: str | None = None, within: float = 5.0) -> dict[str, Any]:
        """Send one ctrl_tcp command; return baresip's response (``ok``, ``data``)."""
        assert self._writer is not None, "start() first"
        token = str(next(self._tokens))
        body: dict[str, Any] = {"command": command, "token": token}
        if params is not None:
            body["params"] = params
        payload = json.dumps(body).encode()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._responses[token] = future
        self._writer.write(str(len(payload)).encode() + b":" + payload + b",")
        await self._writer.drain()
        return await asyncio.wait_for(future, within)

    async def dial(self, uri: str) -> dict[str, Any]:
        return await self.command("dial", uri)

    async def accept(self) -> dict[str, Any]:
        return await self.command("accept")

    async def hangup(self) -> dict[str, Any]:
        return await self.command("hangup")

    async def sndcode(self, digit: str) -> dict[str, Any]:
        return await self.command("sndcode", digit)

    async def wait_event(self, kind: str, within: float = 10.0, **fields: str) -> dict[str, Any]:
        """The first event of ``kind`` (with the given fields) not returned before, past or future."""
        async with asyncio.timeout(within):
            while True:
                for index, event in enumerate(self.events):
                    if index in self._consumed or event.get("type") != kind:
                        continue
                    if any(event.get(k) != v for k, v in fields.items()):
                        continue
                    self._consumed.add(index)
                    return event
                self._changed.clear()
                await self._changed.wait()

    async def stop(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError, TimeoutError):
                await self.command("quit", within=1.0)
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._process is not None:
            await self._process.stop()
