"""TransportLayer on real loopback sockets: rport/received, §18.2.2 routing, connection reuse, fast failures."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sip.message import Request, Response, Via, parse_message
from sip.transport import Peer, Source, TransportLayer, response_peer, stamp_via
from tests.sip.conftest import free_tcp_port, free_udp_port

pytestmark = pytest.mark.timeout(30)


def options(via_transport: str, port: int, branch: str, *, call_id: str = "t-1") -> bytes:
    return (
        f"OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{via_transport} 192.0.2.7:{port};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=x\r\nTo: <sip:bob@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Recorder:
    def __init__(self) -> None:
        self.messages: asyncio.Queue[tuple[Request | Response, Source]] = asyncio.Queue()
        self.unreachable: asyncio.Queue[tuple[Peer, str]] = asyncio.Queue()

    def on_message(self, message: Request | Response, source: Source) -> None:
        self.messages.put_nowait((message, source))

    def on_unreachable(self, peer: Peer, reason: str) -> None:
        self.unreachable.put_nowait((peer, reason))


async def start_layer(rec: Recorder) -> TransportLayer:
    return await TransportLayer.start("127.0.0.1", rec.on_message, rec.on_unreachable)


def test_stamp_via_adds_received_and_rport() -> None:
    msg = parse_message(options("UDP", 5070, "z9hG4bK1"))
    assert isinstance(msg, Request)
    stamp_via(msg, "127.0.0.1", 40000)
    via = msg.top_via
    assert (via.received, via.rport, via.branch) == ("127.0.0.1", 40000, "z9hG4bK1")
    assert msg.headers.get("Call-ID") == "t-1"


def test_response_peer_follows_18_2_2() -> None:
    assert response_peer(Via.parse("SIP/2.0/UDP h.example:5070;maddr=10.0.0.9"), "UDP") == Peer(
        "UDP", "10.0.0.9", 5070
    )
    assert response_peer(
        Via.parse("SIP/2.0/UDP 192.0.2.7:5070;received=127.0.0.1;rport=4000"), "UDP"
    ) == Peer("UDP", "127.0.0.1", 4000)
    assert response_peer(Via.parse("SIP/2.0/UDP 192.0.2.7:5070;received=127.0.0.1"), "UDP") == Peer(
        "UDP", "127.0.0.1", 5070
    )
    assert response_peer(Via.parse("SIP/2.0/TLS 192.0.2.7"), "TLS") == Peer("TLS", "192.0.2.7", 5061)


async def test_udp_request_stamped_and_answered_to_rport() -> None:
    rec = Recorder()
    layer = await start_layer(rec)
    loop = asyncio.get_running_loop()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.bind(("127.0.0.1", 0))
            raw.setblocking(False)
            raw.sendto(options("UDP", 5070, "z9hG4bKu1"), layer.address("UDP"))
            msg, source = await asyncio.wait_for(rec.messages.get(), 3)
            assert isinstance(msg, Request)
            assert msg.top_via.rport == raw.getsockname()[1]
            assert msg.top_via.received == "127.0.0.1"
            from sip.transaction import make_response

            layer.send_response(make_response(msg, 200), source)
            answer = parse_message(await asyncio.wait_for(loop.sock_recv(raw, 65535), 3))
            assert isinstance(answer, Response)
            assert answer.status == 200
    finally:
        await layer.close()


async def test_tcp_connection_is_reused_both_ways() -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a, b = await start_layer(rec_a), await start_layer(rec_b)
    try:
        dest = Peer("TCP", *b.address("TCP"))
        for i in range(3):
            req = parse_message(options("TCP", a.address("TCP")[1], f"z9hG4bKt{i}", call_id=f"c{i}"))
            assert isinstance(req, Request)
            a.send_request(req, dest)
        sources = [(await asyncio.wait_for(rec_b.messages.get(), 3))[1] for _ in range(3)]
        assert len({s.peer for s in sources}) == 1  # one connection carried all three
        assert len(a._conns) == 1
        # the answer rides the same connection back
        msg = parse_message(options("TCP", a.address("TCP")[1], "z9hG4bKt0", call_id="c0"))
        assert isinstance(msg, Request)
        from sip.transaction import make_response

        b.send_response(make_response(msg, 200), sources[0])
        answer, source = await asyncio.wait_for(rec_a.messages.get(), 3)
        assert isinstance(answer, Response)
        assert source.peer == dest
    finally:
        await a.close()
        await b.close()


async def test_udp_port_unreachable_is_reported_with_its_destination() -> None:
    rec = Recorder()
    layer = await start_layer(rec)
    try:
        port = free_udp_port()
        req = parse_message(options("UDP", layer.address()[1], "z9hG4bKdead"))
        assert isinstance(req, Request)
        layer.send_request(req, Peer("UDP", "127.0.0.1", port))
        peer, reason = await asyncio.wait_for(rec.unreachable.get(), 2)
        assert peer == Peer("UDP", "127.0.0.1", port)
        assert "unreachable" in reason
    finally:
        await layer.close()


async def test_refused_tcp_connection_calls_on_error() -> None:
    layer = await start_layer(Recorder())
    try:
        errors: asyncio.Queue[str] = asyncio.Queue()
        req = parse_message(options("TCP", 5060, "z9hG4bKref"))
        assert isinstance(req, Request)
        port = free_tcp_port()
        layer.send_request(req, Peer("TCP", "127.0.0.1", port), errors.put_nowait)
        reason = await asyncio.wait_for(errors.get(), 2)
        assert "refused" in reason
        assert str(port) in reason
    finally:
        await layer.close()


async def test_bad_stream_closes_that_connection_only_and_400s_bad_requests() -> None:
    rec = Recorder()
    layer = await start_layer(rec)
    host, port = layer.address("TCP")
    try:
        # 1. a request without Content-Length on a stream cannot be framed: the connection is closed
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 1.2.3.4\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()
        # 2. a framed but malformed request is answered 400 on its connection
        reader, writer = await asyncio.open_connection(host, port)
        bad = options("TCP", 5060, "z9hG4bKbadtcp").replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
        writer.write(bad)
        line = await asyncio.wait_for(reader.readline(), 3)
        assert line.startswith(b"SIP/2.0 400 ")
        # 3. and the same connection still carries good requests
        writer.write(options("TCP", 5060, "z9hG4bKgood"))
        msg, _ = await asyncio.wait_for(rec.messages.get(), 3)
        assert isinstance(msg, Request)
        assert msg.top_via.branch == "z9hG4bKgood"
        writer.close()
    finally:
        await layer.close()
