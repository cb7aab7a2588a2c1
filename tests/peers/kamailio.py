"""Kamailio 5.6 (Debian) as registrar and record-routing proxy, run in the foreground for one test.

    kamailio -f FILE -DD -E -m 64 -M 8

The generated config listens on 127.0.0.1:PORT (UDP and TCP). It keeps registrations in memory (usrloc
db_mode 0), record-routes every dialog-creating request, routes in-dialog requests by Route (loose_route),
delivers to a registered contact when the Request-URI user is registered, and otherwise forwards to ``target``
("host:port"), if any. With ``users`` it challenges REGISTER (401) and INVITE (407) with digest (plain-text
passwords in the config, ``pv_www_authenticate``/``pv_proxy_authenticate``), no database.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path

from .ports import HOST, PortInUse, free_port, retry_bind
from .process import PeerProcess

MODULE_PATH = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"


def _config(port: int, target: str | None, users: Mapping[str, str], realm: str) -> str:
    auth_block = ""
    if users:
        checks = "\n".join(
            f'    if ($fU == "{user}") {{ $var(pw) = "{password}"; }}' for user, password in users.items()
        )
        auth_block = f"""
    $var(pw) = "";
{checks}
    if (is_method("REGISTER")) {{
        if (!pv_www_authenticate("{realm}", "$var(pw)", "0")) {{ www_challenge("{realm}", "0"); exit; }}
        consume_credentials();
    }} else if (is_method("INVITE") && !is_present_hf("Route")) {{
        if (!pv_proxy_authenticate("{realm}", "$var(pw)", "0")) {{ proxy_challenge("{realm}", "0"); exit; }}
        consume_credentials();
    }}
"""
    forward = (
        f'    $du = "sip:{target}";\n    route(RELAY);\n    exit;\n'
        if target
        else '    sl_send_reply("404", "Not Found");\n    exit;\n'
    )
    return f"""#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=2
tcp_children=2
auto_aliases=no
listen=udp:{HOST}:{port}
listen=tcp:{HOST}:{port}
alias="{HOST}:{port}"
mpath="{MODULE_PATH}"

loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "corex.so"
loadmodule "auth.so"

modparam("usrloc", "db_mode", 0)
modparam("registrar", "use_path", 0)
modparam("rr", "enable_full_lr", 1)
modparam("rr", "append_fromtag", 1)
modparam("auth", "nonce_expire", 300)

request_route {{
    xlog("L_INFO", "request $rm $ru from $si:$sp\\n");
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (!sanity_check()) {{ exit; }}
    if (is_method("OPTIONS") && $rU == $null) {{ sl_send_reply("200", "OK"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ route(RELAY); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not Here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ route(RELAY); }} exit; }}
    t_check_trans();
{auth_block}
    if (is_method("REGISTER")) {{ save("location"); exit; }}
    if (loose_route()) {{ route(RELAY); exit; }}
    record_route();
    if (lookup("location")) {{ route(RELAY); exit; }}
{forward}}}

route[RELAY] {{
    if (!t_relay()) {{ sl_reply_error(); }}
    exit;
}}
"""


class Kamailio:
    """``target`` ("host:port") receives requests for users that are not registered here."""

    def __init__(
        self,
        tmp_dir: Path,
        *,
        target: str | None = None,
        users: Mapping[str, str] | None = None,
        realm: str = "kamailio.test",
    ) -> None:
        self.dir = tmp_dir / "kamailio"
        self.target = target
        self.users = dict(users or {})
        self.realm = realm
        self.port = 0
        self._process: PeerProcess | None = None

    @property
    def output(self) -> str:
        return self._process.output if self._process else ""

    async def wait_log(self, pattern: str, within: float = 5.0) -> str:
        """Wait until Kamailio's log matches ``pattern`` (the script logs "request METHOD R-URI from IP:PORT")."""
        assert self._process is not None, "start() first"
        return (await self._process.wait_output(pattern, within)).group(0)

    def uri(self, user: str | None = None, transport: str = "udp") -> str:
        suffix = ";transport=tcp" if transport == "tcp" else ""
        return f"sip:{user + '@' if user else ''}{HOST}:{self.port}{suffix}"

    def route(self) -> str:
        """A loose-route URI for an outbound-proxy setting."""
        return f"sip:{HOST}:{self.port};lr"

    async def start(self) -> None:
        await retry_bind(self._start_once)

    async def _start_once(self) -> None:
        self.port = free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "kamailio.cfg"
        config.write_text(_config(self.port, self.target, self.users, self.realm))
        argv = ["kamailio", "-f", str(config), "-DD", "-E", "-m", "64", "-M", "8", "-Y", str(self.dir)]
        process = PeerProcess("kamailio", argv, cwd=self.dir)
        await process.start()
        self._process = process
        try:
            await self._wait_ready(process)
        except (RuntimeError, TimeoutError) as exc:
            await process.stop()
            if "in use" in process.output.lower() or "bind" in process.output.lower():
                raise PortInUse(f"kamailio could not bind {self.port}: {process.output[-800:]}") from exc
            raise RuntimeError(f"kamailio did not start:\n{process.output[-3000:]}") from exc

    async def _wait_ready(self, process: PeerProcess) -> None:
        """Kamailio is ready when it answers an OPTIONS on its UDP port."""
        branch = uuid.uuid4().hex
        options = (
            f"OPTIONS sip:{HOST}:{self.port} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:9;branch=z9hG4bK{branch}\r\n"
            f"From: <sip:probe@{HOST}>;tag=probe\r\nTo: <sip:{HOST}:{self.port}>\r\nCall-ID: {branch}\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((HOST, 0))
            sock.setblocking(False)
            data = options.replace(f"{HOST}:9", f"{HOST}:{sock.getsockname()[1]}").encode()
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(10.0):
                while True:
                    if process.returncode is not None:
                        raise RuntimeError(f"kamailio exited with {process.returncode}")
                    sock.sendto(data, (HOST, self.port))
                    with contextlib.suppress(TimeoutError):
                        reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), 0.2)
                        if reply.startswith(b"SIP/2.0 "):
                            return

    async def stop(self) -> None:
        if self._process is not None:
            await self._process.stop(grace=5.0)
