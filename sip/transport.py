"""SIP transports over asyncio: UDP, TCP and TLS (RFC 3261 §18, RFC 3581).

Theory of operation
-------------------
:class:`TransportLayer` owns one UDP socket, an optional TCP listener and an optional TLS listener, all bound to
``host``; port 0 lets the OS choose. Every whole message that arrives (a datagram, or a frame cut from a stream by
:class:`~sip.message.StreamFramer`) is parsed and handed to ``on_message(message, source)``. On an inbound request
the top Via is stamped with ``received``/``rport`` (§18.2.1, RFC 3581) so that the transaction layer and
:meth:`TransportLayer.send_response` can route the answer back the way it came.

Sending never blocks the caller: :meth:`send_request` and :meth:`send_response` queue bytes; a stream connection
that must be opened first is opened in the background and a failure (refused, TLS verification) comes back through
the ``on_error`` callback given with the message. Stream connections are reused in both directions, keyed by the
remote address (transport, host, port).

Failing fast matters more than anything for paging: the UDP socket runs with ``IP_RECVERR`` so that an ICMP port
unreachable shows up at once (``error_received``), and its offending destination is read from the socket's error
queue and reported through ``on_unreachable(peer, reason)``.

A malformed message never kills a listener: a request that still has enough headers to address an answer gets its
:class:`~sip.errors.SipParseError` status (400, 413, 505…); anything else is dropped and logged at INFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from sip.errors import SipParseError, TransportError
from sip.message import Headers, Request, Response, StreamFramer, Via, parse_message

log = logging.getLogger(__name__)

IP_RECVERR = getattr(socket, "IP_RECVERR", 11)  # Linux; not exported by Python 3.11's socket module
MAX_DATAGRAM = 65_535

REASONS: dict[int, str] = {
    400: "Bad Request",
    413: "Request Entity Too Large",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    505: "Version Not Supported",
}


@dataclass(frozen=True)
class Peer:
    """A remote transport address: ``transport`` is ``UDP``, ``TCP`` or ``TLS``."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport}:{self.host}:{self.port}"


@dataclass(frozen=True)
class Source:
    """Where an inbound message came from; ``connection`` is set for TCP/TLS (answers go back on it)."""

    peer: Peer
    connection: StreamConnection | None = field(default=None, compare=False)


MessageHandler = Callable[[Request | Response, Source], None]
UnreachableHandler = Callable[[Peer, str], None]
ErrorCallback = Callable[[str], None]


def _ignore_error(reason: str) -> None:
    log.info("send failed with nobody waiting: %s", reason)


def stamp_via(request: Request | Response, host: str, port: int) -> None:
    """Add ``received`` (and fill ``rport``) on the top Via of an inbound request (§18.2.1, RFC 3581 §4)."""
    values = request.headers.get_all("Via")
    if not values:
        return
    top = Via.parse(values[0])
    params: dict[str, str | None] = {}
    if top.param("rport") is not None:
        params["rport"] = str(port)
        params["received"] = host
    elif top.host != host:
        params["received"] = host
    if not params:
        return
    new_top = str(top.with_params(**params))
    rebuilt = Headers()
    done = False
    for name, value in request.headers:
        if not done and name == "Via":
            rebuilt.add(name, new_top)
            done = True
        else:
            rebuilt.add(name, value)
    request.headers = rebuilt


def response_peer(via: Via, transport: str, source: Peer | None = None) -> Peer:
    """Where a response goes when it cannot ride the request's connection (§18.2.2, RFC 3581 §4)."""
    default = 5061 if transport == "TLS" else 5060
    maddr = via.param("maddr")
    if maddr:
        return Peer(transport, maddr, via.port or default)
    received = via.received
    if received:
        # rport names the UDP source port; a stream's ephemeral port is useless once its connection is gone
        rport = via.rport if transport == "UDP" else None
        return Peer(transport, received, rport if rport else (via.port or default))
    if source is not None:
        return source
    return Peer(transport, via.host.strip("[]"), via.port or default)


def _salvage_error_response(data: bytes, error: SipParseError) -> Response | None:
    """Build the error answer for a malformed request if the addressing headers survive, else ``None``."""
    text = data.lstrip(b"\r\n").decode("utf-8", errors="replace")
    head = text.split("\r\n\r\n", 1)[0].split("\n\n", 1)[0]
    lines = head.replace("\r\n", "\n").split("\n")
    if not lines or lines[0].startswith("SIP/") or " " not in lines[0]:
        return None
    wanted = {"via": "Via", "v": "Via", "from": "From", "f": "From", "to": "To", "t": "To",
              "call-id": "Call-ID", "i": "Call-ID", "cseq": "CSeq"}  # fmt: skip
    found: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        canonical = wanted.get(name.strip().lower())
        if colon and canonical:
            found.append((canonical, value.strip()))
    names = {n for n, _ in found}
    if not {"Via", "From", "To", "Call-ID", "CSeq"} <= names:
        return None
    headers = Headers()
    try:
        for name, value in found:
            headers.add(name, value)
        via = Via.parse(headers.get_all("Via")[0])
    except SipParseError:
        return None
    if not via.branch and not via.host:
        return None
    detail = " ".join(str(error).split())[:160]
    reason = f"{REASONS.get(error.status, 'Bad Request')} ({detail})"
    return Response(error.status, reason, headers)


class StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection; whole SIP messages are cut by :class:`StreamFramer`."""

    def __init__(self, layer: TransportLayer, peer: Peer) -> None:
        self.layer = layer
        self.peer = peer
        self._framer = StreamFramer()
        self._transport: asyncio.Transport | None = None
        self._pending: list[tuple[bytes, ErrorCallback]] = []
        self.closed = False

    # --- asyncio.Protocol ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self.peer.port == 0:  # inbound: learn the remote address now
            host, port = transport.get_extra_info("peername")[:2]
            self.peer = Peer(self.peer.transport, host, port)
            self.layer._register(self)
        pending, self._pending = self._pending, []
        for data, _ in pending:
            transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._framer.feed(data)
        except SipParseError as exc:
            log.info("closing %s: cannot frame the stream: %s", self.peer, exc)
            self.close()
            return
        for frame in frames:
            self.layer._deliver(frame, Source(self.peer, self), stream=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.layer._unregister(self)
        if exc is not None:
            log.info("connection %s lost: %s", self.peer, exc)
        if not self.layer._closed:
            # transactions still waiting on this connection fail now rather than at Timer B/F
            self.layer._unreachable(self.peer, f"{self.peer.transport} connection to {self.peer.host}:"
                                    f"{self.peer.port} closed{f': {exc}' if exc else ''}")  # fmt: skip

    # --- ours --------------------------------------------------------------------------------------------
    def write(self, data: bytes, on_error: ErrorCallback) -> None:
        if self.closed:
            on_error(f"{self.peer.transport} connection to {self.peer.host}:{self.peer.port} is closed")
        elif self._transport is None:
            self._pending.append((data, on_error))
        else:
            self._transport.write(data)

    def fail(self, reason: str) -> None:
        self.closed = True
        pending, self._pending = self._pending, []
        for _, on_error in pending:
            on_error(reason)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, layer: TransportLayer, sock: socket.socket) -> None:
        self.layer = layer
        self.sock = sock

    def datagram_received(self, data: bytes, addr: tuple[str | bytes | int, ...]) -> None:
        host, port = str(addr[0]), int(addr[1])
        self.layer._deliver(data, Source(Peer("UDP", host, port)), stream=False)

    def error_received(self, exc: Exception) -> None:
        # With IP_RECVERR the kernel queues the ICMP error with the datagram's original destination.
        drained = False
        while True:
            try:
                _, _, _, addr = self.sock.recvmsg(1, 1024, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                log.info("cannot read the UDP error queue: %s", err)
                break
            drained = True
            if addr:
                peer = Peer("UDP", str(addr[0]), int(addr[1]))
                reason = f"UDP destination {peer.host}:{peer.port} unreachable ({exc})"
                self.layer._unreachable(peer, reason)
        if not drained:
            log.info("UDP socket error with no destination attached: %s", exc)


class TransportLayer:
    """The UDP/TCP/TLS sockets of one user agent."""

    def __init__(
        self,
        host: str,
        on_message: MessageHandler,
        on_unreachable: UnreachableHandler,
        *,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self._on_message = on_message
        self._on_unreachable = on_unreachable
        self._client_ssl = client_ssl
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_sock: socket.socket | None = None
        self._servers: dict[str, asyncio.Server] = {}
        self._ports: dict[str, int] = {}
        self._conns: dict[Peer, StreamConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    async def start(
        cls,
        host: str,
        on_message: MessageHandler,
        on_unreachable: UnreachableHandler,
        *,
        udp_port: int | None = 0,
        tcp_port: int | None = 0,
        tls_port: int | None = None,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> TransportLayer:
        """Bind the listeners (``None`` disables one; 0 asks the OS for a port)."""
        layer = cls(host, on_message, on_unreachable, client_ssl=client_ssl)
        loop = asyncio.get_running_loop()
        try:
            if udp_port is not None:
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
                    sock.bind((host, udp_port))
                    sock.setblocking(False)
                except OSError as exc:
                    sock.close()
                    raise TransportError(f"cannot bind UDP {host}:{udp_port}: {exc}") from exc
                udp_transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(layer, sock), sock=sock
                )
                layer._udp = udp_transport
                layer._udp_sock = sock
                layer._ports["UDP"] = sock.getsockname()[1]
            if tcp_port is not None:
                await layer._listen("TCP", tcp_port, None)
            if tls_port is not None:
                if server_ssl is None:
                    raise TransportError(
                        f"tls_port={tls_port} needs a server TLS context (certificate and key)"
                    )
                await layer._listen("TLS", tls_port, server_ssl)
        except BaseException:
            await layer.close()
            raise
        return layer

    async def _listen(self, transport: str, port: int, ctx: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: StreamConnection(self, Peer(transport, "", 0)), self.host, port, ssl=ctx
            )
        except OSError as exc:
            raise TransportError(f"cannot listen on {transport} {self.host}:{port}: {exc}") from exc
        self._servers[transport] = server
        self._ports[transport] = server.sockets[0].getsockname()[1]

    # --- addresses --------------------------------------------------------------------------------------------
    def address(self, transport: str = "UDP") -> tuple[str, int]:
        """The bound (host, port) of ``transport``; :class:`TransportError` if it is not enabled."""
        transport = transport.upper()
        if transport not in self._ports:
            raise TransportError(
                f"transport {transport} is not enabled: expected one of {sorted(self._ports) or 'none'}"
            )
        return self.host, self._ports[transport]

    def has(self, transport: str) -> bool:
        return transport.upper() in self._ports

    # --- sending ------------------------------------------------------------------------------------------
    def send_request(self, request: Request, dest: Peer, on_error: ErrorCallback = _ignore_error) -> None:
        """Send ``request`` to ``dest``, opening (or reusing) a connection for TCP/TLS."""
        self.send_bytes(bytes(request), dest, on_error)

    def send_response(
        self, response: Response, source: Source, on_error: ErrorCallback = _ignore_error
    ) -> None:
        """Send ``response`` to the request that came from ``source`` (§18.2.2)."""
        data = bytes(response)
        conn = source.connection
        if conn is not None and not conn.closed:
            conn.write(data, on_error)
            return
        try:
            via = response.top_via
        except SipParseError as exc:
            on_error(f"cannot route response {response.status}: {exc}")
            return
        peer = source.peer if conn is None else None
        self.send_bytes(data, response_peer(via, source.peer.transport, peer), on_error)

    def send_bytes(self, data: bytes, dest: Peer, on_error: ErrorCallback = _ignore_error) -> None:
        if self._closed:
            on_error("the transport layer is closed")
            return
        if dest.transport == "UDP":
            if self._udp is None:
                on_error("UDP is not enabled on this user agent")
                return
            if len(data) > MAX_DATAGRAM:
                on_error(f"message of {len(data)} bytes is too large for UDP")
                return
            try:
                self._udp.sendto(data, (dest.host, dest.port))
            except OSError as exc:
                on_error(f"UDP send to {dest.host}:{dest.port} failed: {exc}")
            return
        if dest.transport not in ("TCP", "TLS"):
            on_error(f"unsupported transport {dest.transport!r}: expected UDP, TCP or TLS")
            return
        conn = self._conns.get(dest)
        if conn is None or conn.closed:
            conn = StreamConnection(self, dest)
            self._conns[dest] = conn
            task = asyncio.get_running_loop().create_task(self._connect(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        conn.write(data, on_error)

    async def _connect(self, conn: StreamConnection) -> None:
        loop = asyncio.get_running_loop()
        peer = conn.peer
        ctx: ssl.SSLContext | None = None
        if peer.transport == "TLS":
            ctx = self._client_ssl or ssl.create_default_context()
        try:
            await loop.create_connection(
                lambda: conn,
                peer.host,
                peer.port,
                ssl=ctx,
                server_hostname=peer.host if ctx is not None else None,
                local_addr=(self.host, 0),
            )
        except ssl.SSLCertVerificationError as exc:
            reason = (
                f"TLS certificate of {peer.host}:{peer.port} failed verification: {exc.verify_message}"
                f" (check tls_cafile, or the peer's certificate and its subjectAltName)"
            )
            self._fail(conn, reason)
        except ssl.SSLError as exc:
            self._fail(conn, f"TLS handshake with {peer.host}:{peer.port} failed: {exc}")
        except ConnectionRefusedError:
            self._fail(conn, f"{peer.transport} connection to {peer.host}:{peer.port} refused")
        except OSError as exc:
            what = errno.errorcode.get(exc.errno or 0, "")
            self._fail(conn, f"{peer.transport} connection to {peer.host}:{peer.port} failed: {what} {exc}")

    def _fail(self, conn: StreamConnection, reason: str) -> None:
        log.info("%s", reason)
        if self._conns.get(conn.peer) is conn:
            del self._conns[conn.peer]
        conn.fail(reason)

    def _register(self, conn: StreamConnection) -> None:
        self._conns.setdefault(conn.peer, conn)

    def _unregister(self, conn: StreamConnection) -> None:
        if self._conns.get(conn.peer) is conn:
            del self._conns[conn.peer]

    # --- receiving ----------------------------------------------------------------------------------------
    def _deliver(self, data: bytes, source: Source, *, stream: bool) -> None:
        if not data.strip(b"\r\n"):
            return  # keep-alive
        try:
            message = parse_message(data, stream=stream)
            if isinstance(message, Request):
                stamp_via(message, source.peer.host, source.peer.port)
        except SipParseError as exc:
            answer = _salvage_error_response(data, exc)
            if answer is None:
                log.info("dropped a malformed message from %s: %s", source.peer, exc)
                return
            log.info("answering a malformed request from %s with %d: %s", source.peer, exc.status, exc)
            stamp_via(answer, source.peer.host, source.peer.port)
            self.send_response(answer, source)
            return
        try:
            self._on_message(message, source)
        except Exception:
            log.exception("handler failed on %r from %s; the listener goes on", message, source.peer)

    def _unreachable(self, peer: Peer, reason: str) -> None:
        log.info("%s", reason)
        try:
            self._on_unreachable(peer, reason)
        except Exception:
            log.exception("unreachable handler failed for %s", peer)

    # --- shutdown -----------------------------------------------------------------------------------------
    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()
        for server in self._servers.values():
            server.close()
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self._udp is not None:
            self._udp.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
