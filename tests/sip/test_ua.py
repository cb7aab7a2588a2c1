"""UserAgent ↔ UserAgent on loopback: real sockets, real transactions, no mocks."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

from media import sdp
from sip.auth import Credentials, DigestServer
from sip.errors import TransportError
from sip.message import Request, Response, parse_message
from sip.transaction import Timers, make_response
from sip.ua import (
    Call,
    CallAnswered,
    CallEnded,
    CallRinging,
    CallState,
    CallTrying,
    DtmfReceived,
    MediaStarted,
    UserAgent,
    parse_dtmf_info,
)
from tests.sip.conftest import Inbox, TlsFiles, UaFactory, free_tcp_port, free_udp_port, next_event, uri_of

pytestmark = pytest.mark.timeout(60)

ALICE = "sip:alice@127.0.0.1"


async def ring_then_answer(call: Call) -> None:
    await call.ring()
    await asyncio.sleep(0.05)
    await call.answer()


async def ring_only(call: Call) -> None:
    await call.ring()


async def answered_pair(make_ua: UaFactory, transport: str = "UDP", **cfg: object) -> tuple[Call, Call]:
    alice = await make_ua(**cfg)
    bob = await make_ua(**cfg)
    inbox = Inbox(ring_then_answer)
    bob.on_incoming(inbox)
    out = await alice.dial(uri_of(bob, transport), from_uri=ALICE)
    await next_event(out, CallAnswered)
    inc = await inbox.next()
    await next_event(inc, CallAnswered)
    return out, inc


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_call_setup_and_caller_hangs_up(make_ua: UaFactory, transport: str) -> None:
    out, inc = await answered_pair(make_ua, transport)
    kinds = [type(e) for e in out.history]
    assert kinds[:3] == [CallTrying, CallRinging, CallAnswered]
    ringing = next(e for e in out.history if isinstance(e, CallRinging))
    assert ringing.status == 180
    assert not ringing.early_media
    assert out.state is CallState.CONFIRMED
    assert inc.state is CallState.CONFIRMED
    assert inc.direction == "inbound"
    assert str(inc.remote_uri) == ALICE
    await out.hangup()
    ended_out = await out.wait_ended()
    ended_in = await asyncio.wait_for(inc.wait_ended(), 5)
    assert (ended_out.by, ended_in.by) == ("local", "remote")
    assert ended_in.utc.tzinfo is not None
    assert ended_in.mono > 0


async def test_callee_hangs_up(ua_pair: tuple[UserAgent, UserAgent]) -> None:
    alice, bob = ua_pair
    inbox = Inbox(ring_then_answer)
    bob.on_incoming(inbox)
    out = await alice.dial(uri_of(bob), from_uri=ALICE)
    inc = await inbox.next()
    await next_event(inc, CallAnswered)
    await inc.hangup()
    assert (await asyncio.wait_for(out.wait_ended(), 5)).by == "remote"
    assert (await inc.wait_ended()).by == "local"


async def test_ring_timeout_sends_cancel(make_ua: UaFactory) -> None:
    alice, bob = await make_ua(), await make_ua()
    inbox = Inbox(ring_only)
    bob.on_incoming(inbox)
    started = time.monotonic()
    out = await alice.dial(uri_of(bob), from_uri=ALICE, ring_timeout=0.5)
    ended = await asyncio.wait_for(out.wait_ended(), 5)
    assert ended.by == "timeout", ended
    assert ended.status == 487, ended
    assert time.monotonic() - started < 2.0
    inc = await inbox.next()
    callee_end = await asyncio.wait_for(inc.wait_ended(), 5)
    assert (callee_end.by, callee_end.status) == ("remote", 487)


async def test_busy_486(make_ua: UaFactory) -> None:
    alice, bob = await make_ua(), await make_ua()

    async def busy(call: Call) -> None:
        await call.reject(486)

    bob.on_incoming(busy)
    out = await alice.dial(uri_of(bob), from_uri=ALICE)
    ended = await asyncio.wait_for(out.wait_ended(), 5)
    assert (ended.status, ended.by, ended.reason) == (486, "remote", "Busy Here")


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_unreachable_port_fails_fast(make_ua: UaFactory, transport: str) -> None:
    alice = await make_ua()
    port = free_udp_port() if transport == "UDP" else free_tcp_port()
    suffix = "" if transport == "UDP" else ";transport=tcp"
    started = time.monotonic()
    out = await alice.dial(f"sip:bob@127.0.0.1:{port}{suffix}", from_uri=ALICE)
    ended = await asyncio.wait_for(out.wait_ended(), 5)
    assert ended.by == "transport", ended
    assert str(port) in ended.reason
    assert time.monotonic() - started < 1.0


async def test_early_media_in_183_then_answer(make_ua: UaFactory) -> None:
    alice, bob = await make_ua(), await make_ua()
    answer_now = asyncio.Event()

    async def early(call: Call) -> None:
        await call.ring(early_media=True)
        await answer_now.wait()
        await call.answer()

    inbox = Inbox(early)
    bob.on_incoming(inbox)
    out = await alice.dial(uri_of(bob), from_uri=ALICE)
    ringing = await next_event(out, CallRinging)
    assert isinstance(ringing, CallRinging)
    assert (ringing.status, ringing.early_media) == (183, True)
    await next_event(out, MediaStarted)  # the callee's RTP reaches us before the answer
    assert out.state is CallState.PROCEEDING
    answer_now.set()
    await next_event(out, CallAnswered)
    inc = await inbox.next()
    await next_event(inc, CallAnswered)
    await out.send_dtmf("3")
    got = await next_event(inc, DtmfReceived)
    assert isinstance(got, DtmfReceived)
    assert got.digit == "3"
    await out.hangup()


async def test_tcp_peer_closing_the_connection_fails_the_call_at_once(make_ua: UaFactory) -> None:
    alice = await make_ua()

    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        out = await alice.dial(f"sip:bob@127.0.0.1:{port};transport=tcp", from_uri=ALICE)
        ended = await asyncio.wait_for(out.wait_ended(), 5)
        assert ended.by == "transport"
        assert "closed" in ended.reason
        assert time.monotonic() - started < 1.0
    finally:
        server.close()
        await server.wait_closed()


async def test_info_dtmf_both_ways(make_ua: UaFactory) -> None:
    out, inc = await answered_pair(make_ua)
    await out.send_dtmf("5", method="info")
    got = await next_event(inc, DtmfReceived)
    assert isinstance(got, DtmfReceived)
    assert (got.digit, got.method) == ("5", "info")
    await inc.send_dtmf("#", method="info", info_type="application/dtmf")
    got = await next_event(out, DtmfReceived)
    assert isinstance(got, DtmfReceived)
    assert (got.digit, got.method) == ("#", "info")


def test_parse_dtmf_info_bodies() -> None:
    assert parse_dtmf_info("application/dtmf-relay", b"Signal=1\r\nDuration=160\r\n") == "1"
    assert parse_dtmf_info("application/dtmf-relay", b"Signal= *\r\nDuration=100") == "*"
    assert parse_dtmf_info("application/dtmf", b"1") == "1"
    assert parse_dtmf_info("application/dtmf", b"11") == "#"
    assert parse_dtmf_info("application/dtmf", b"x") is None
    assert parse_dtmf_info("text/plain", b"1") is None


async def test_rfc4733_dtmf_both_ways(make_ua: UaFactory) -> None:
    out, inc = await answered_pair(make_ua)
    await out.send_dtmf("1")
    got = await next_event(inc, DtmfReceived)
    assert isinstance(got, DtmfReceived)
    assert (got.digit, got.method) == ("1", "rfc4733")
    await inc.send_dtmf("9")
    got = await next_event(out, DtmfReceived)
    assert isinstance(got, DtmfReceived)
    assert (got.digit, got.method) == ("9", "rfc4733")


async def test_reinvite_hold_and_unhold(make_ua: UaFactory) -> None:
    out, inc = await answered_pair(make_ua)
    await out.hold()
    assert inc.negotiated is not None
    assert inc.negotiated.direction == "recvonly"
    assert out.negotiated is not None
    assert out.negotiated.direction == "sendonly"
    await out.unhold()
    assert inc.negotiated.direction == "sendrecv"
    assert out.negotiated.direction == "sendrecv"
    assert out.state is CallState.CONFIRMED
    assert inc.state is CallState.CONFIRMED
    await inc.hold()  # the callee can re-INVITE too
    assert out.negotiated.direction == "recvonly"
    await out.hangup()
    assert (await asyncio.wait_for(inc.wait_ended(), 5)).by == "remote"


async def test_options(make_ua: UaFactory) -> None:
    alice, bob = await make_ua(), await make_ua()
    assert await alice.options(uri_of(bob)) == 200
    assert await alice.options(uri_of(bob, "TCP")) == 200
    with pytest.raises(TransportError, match=r"unreachable|refused"):
        await alice.options(f"sip:127.0.0.1:{free_udp_port()}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        started = time.monotonic()
        assert await alice.options(f"sip:127.0.0.1:{silent.getsockname()[1]}", timeout=0.3) == 408
        assert time.monotonic() - started < 1.5


async def test_digest_protected_call(make_ua: UaFactory) -> None:
    alice, bob = await make_ua(), await make_ua()
    server = DigestServer("contrast", {"alice": "s3cret"}.get, secret=b"k" * 32)
    bob.require_auth(server)
    inbox = Inbox(ring_then_answer)
    bob.on_incoming(inbox)
    # without credentials: refused
    refused = await alice.dial(uri_of(bob), from_uri=ALICE)
    ended = await asyncio.wait_for(refused.wait_ended(), 5)
    assert (ended.status, ended.by) == (401, "remote")
    # with credentials: the INVITE is retried once with an Authorization header
    out = await alice.dial(uri_of(bob), from_uri=ALICE, credentials=Credentials("alice", "s3cret"))
    await next_event(out, CallAnswered)
    inc = await inbox.next()
    assert inc.invite.headers.get("Authorization") is not None
    assert out.invite.cseq[0] == 2
    await out.hangup()
    assert (await asyncio.wait_for(inc.wait_ended(), 5)).by == "remote"
    # a wrong password is refused once more and not retried again
    wrong = await alice.dial(uri_of(bob), from_uri=ALICE, credentials=Credentials("alice", "nope"))
    assert (await asyncio.wait_for(wrong.wait_ended(), 5)).status in (401, 403)


async def test_tls_call_with_generated_ca(make_ua: UaFactory, tls_files: TlsFiles) -> None:
    tls = {"tls_port": 0, "tls_certfile": str(tls_files.cert), "tls_keyfile": str(tls_files.key),
           "tls_cafile": str(tls_files.ca)}  # fmt: skip
    out, inc = await answered_pair(make_ua, "TLS", **tls)
    assert inc.invite.top_via.transport == "TLS"
    await out.send_dtmf("7", method="info")
    assert (await next_event(inc, DtmfReceived)).digit == "7"  # type: ignore[attr-defined]
    await out.hangup()
    assert (await asyncio.wait_for(inc.wait_ended(), 5)).by == "remote"


async def test_tls_bad_certificate_is_a_clear_transport_failure(
    make_ua: UaFactory, tls_files: TlsFiles
) -> None:
    bob = await make_ua(tls_port=0, tls_certfile=str(tls_files.cert), tls_keyfile=str(tls_files.key))
    bob.on_incoming(Inbox(ring_then_answer))
    alice = await make_ua(  # trusts a CA that did not sign bob's certificate
        tls_port=0,
        tls_certfile=str(tls_files.cert),
        tls_keyfile=str(tls_files.key),
        tls_cafile=str(tls_files.other_ca),
    )
    out = await alice.dial(uri_of(bob, "TLS"), from_uri=ALICE)
    ended = await asyncio.wait_for(out.wait_ended(), 5)
    assert ended.by == "transport"
    assert "certificate" in ended.reason, ended.reason
    assert "verif" in ended.reason, ended.reason


async def test_tls_listener_without_certificate_is_refused(make_ua: UaFactory) -> None:
    with pytest.raises(TransportError, match="tls_certfile"):
        await make_ua(tls_port=0)


async def test_malformed_datagram_answered_400_and_ua_keeps_serving(make_ua: UaFactory) -> None:
    bob = await make_ua()
    host, port = bob.address("UDP")
    bad = (
        "OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bKbad1;rport\r\n"
        "From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: bad-1\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 999\r\n\r\n"
    )
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        raw.setblocking(False)
        lport = raw.getsockname()[1]
        raw.sendto(b"\x00\xffgarbage that is not SIP\r\n\r\n", (host, port))
        raw.sendto(bad.format(lport=lport).encode(), (host, port))
        data = await asyncio.wait_for(loop.sock_recv(raw, 65535), 3)
    answer = parse_message(data)
    assert isinstance(answer, Response)
    assert answer.status == 400
    assert "Content-Length" in answer.reason
    assert answer.top_via.received == "127.0.0.1"
    assert answer.top_via.rport == lport
    alice = await make_ua()
    assert await alice.options(uri_of(bob)) == 200


async def test_no_ack_for_200_ends_with_bye(make_ua: UaFactory) -> None:
    bob = await make_ua(timers=Timers(t1=0.02, t2=0.08))
    inbox = Inbox(ring_then_answer)
    bob.on_incoming(inbox)
    host, port = bob.address("UDP")
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        raw.setblocking(False)
        lport = raw.getsockname()[1]
        invite = (
            f"INVITE sip:bob@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bKnoack;rport\r\n"
            "From: <sip:x@127.0.0.1>;tag=a1\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: noack-1\r\n"
            f"CSeq: 1 INVITE\r\nContact: <sip:x@127.0.0.1:{lport}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        raw.sendto(invite.encode(), (host, port))
        inc = await inbox.next()
        ended = await asyncio.wait_for(inc.wait_ended(), 5)
        assert ended.by == "timeout"
        assert "ACK" in ended.reason
        seen: list[str] = []
        while True:
            msg = parse_message(await asyncio.wait_for(loop.sock_recv(raw, 65535), 3))
            seen.append(str(getattr(msg, "status", None) or getattr(msg, "method", "")))
            if seen[-1] == "BYE":
                break
    assert seen.count("200") >= 3  # the 2xx was retransmitted before giving up


async def test_late_200_after_cancel_is_acked_and_byed(make_ua: UaFactory) -> None:
    """A raw UAS that answers 180, then 200 to the INVITE instead of honouring the CANCEL."""
    alice = await make_ua()
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        raw.setblocking(False)
        rport = raw.getsockname()[1]
        out = await alice.dial(f"sip:bob@127.0.0.1:{rport}", from_uri=ALICE, ring_timeout=0.3)

        async def recv() -> tuple[object, tuple[str, int]]:
            data, addr = await asyncio.wait_for(loop.sock_recvfrom(raw, 65535), 3)
            return parse_message(data), addr

        invite, addr = await recv()
        ringing = make_response(invite, 180, to_tag="late1")  # type: ignore[arg-type]
        ringing.headers.add("Contact", f"<sip:bob@127.0.0.1:{rport}>")
        raw.sendto(bytes(ringing), addr)
        cancel, _ = await recv()
        assert getattr(cancel, "method", None) == "CANCEL"
        assert cancel.headers.get("Reason") is None  # type: ignore[attr-defined]
        ok = make_response(invite, 200, to_tag="late1", body=b"", content_type=None)  # type: ignore[arg-type]
        ok.headers.add("Contact", f"<sip:bob@127.0.0.1:{rport}>")
        raw.sendto(bytes(ok), addr)
        methods: list[str | None] = []
        while "BYE" not in methods:
            msg, _ = await recv()
            if getattr(msg, "method", None) != "CANCEL":  # CANCEL retransmissions: we never answer it
                methods.append(getattr(msg, "method", None))
        assert methods == ["ACK", "BYE"]
    ended = await asyncio.wait_for(out.wait_ended(), 5)
    assert ended.by == "timeout"


async def test_retransmitted_200_is_acked_again(make_ua: UaFactory) -> None:
    """A raw UAS sends its 200 twice (as if our ACK were lost): each copy gets the same ACK."""
    alice = await make_ua()
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        raw.setblocking(False)
        port = raw.getsockname()[1]
        out = await alice.dial(f"sip:bob@127.0.0.1:{port}", from_uri=ALICE)
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(raw, 65535), 3)
        invite = parse_message(data)
        assert isinstance(invite, Request)
        answer, _ = sdp.answer_offer(invite.body.decode(), "127.0.0.1", 4000, session_id=7)
        ok = make_response(invite, 200, to_tag="rt1", body=answer.encode(), content_type="application/sdp")
        ok.headers.add("Contact", f"<sip:bob@127.0.0.1:{port}>")
        acks = []
        for _ in range(2):
            raw.sendto(bytes(ok), addr)
            ack = parse_message(await asyncio.wait_for(loop.sock_recv(raw, 65535), 3))
            assert isinstance(ack, Request)
            acks.append(ack)
        assert [a.method for a in acks] == ["ACK", "ACK"]
        assert acks[0].top_via.branch == acks[1].top_via.branch
        assert acks[0].cseq == (1, "ACK")
        await next_event(out, CallAnswered)
        assert sum(isinstance(e, CallAnswered) for e in out.history) == 1


async def test_ring_timeout_before_any_provisional_ends_at_once_and_cancels_on_the_first_1xx(
    make_ua: UaFactory,
) -> None:
    alice = await make_ua()
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        raw.setblocking(False)
        port = raw.getsockname()[1]
        out = await alice.dial(f"sip:bob@127.0.0.1:{port}", from_uri=ALICE, ring_timeout=0.2)
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(raw, 65535), 3)
        invite = parse_message(data)
        assert isinstance(invite, Request)
        ended = await asyncio.wait_for(out.wait_ended(), 3)
        assert (ended.by, ended.status) == ("timeout", None)
        assert "no provisional" in ended.reason
        raw.sendto(bytes(make_response(invite, 180, to_tag="r1")), addr)
        while True:  # INVITE retransmissions may come first
            msg = parse_message(await asyncio.wait_for(loop.sock_recv(raw, 65535), 3))
            if isinstance(msg, Request) and msg.method == "CANCEL":
                break
        assert msg.cseq == (invite.cseq[0], "CANCEL")
        assert msg.top_via.branch == invite.top_via.branch


async def test_silent_target_times_out_with_timer_b(make_ua: UaFactory) -> None:
    alice = await make_ua(timers=Timers(t1=0.01, t2=0.04))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        out = await alice.dial(f"sip:bob@127.0.0.1:{silent.getsockname()[1]}", from_uri=ALICE)
        ended = await asyncio.wait_for(out.wait_ended(), 5)
    assert (ended.status, ended.by) == (408, "timeout")


async def test_unknown_method_and_unknown_dialog(make_ua: UaFactory) -> None:
    bob = await make_ua()
    host, port = bob.address("UDP")
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        raw.setblocking(False)
        lport = raw.getsockname()[1]
        results = []
        for i, (method, to_tag) in enumerate(
            [("FOO", ""), ("REGISTER", ""), ("BYE", ";tag=zz"), ("INFO", "")]
        ):
            req = (
                f"{method} sip:bob@{host}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bKm{i};rport\r\n"
                f"From: <sip:x@127.0.0.1>;tag=f{i}\r\nTo: <sip:bob@127.0.0.1>{to_tag}\r\nCall-ID: m-{i}\r\n"
                f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
            raw.sendto(req.encode(), (host, port))
            msg = parse_message(await asyncio.wait_for(loop.sock_recv(raw, 65535), 3))
            assert isinstance(msg, Response)
            results.append(msg.status)
    assert results == [501, 405, 481, 481]


async def test_call_without_handler_is_refused(make_ua: UaFactory) -> None:
    alice, bob = await make_ua(), await make_ua()
    out = await alice.dial(uri_of(bob), from_uri=ALICE)
    ended = await asyncio.wait_for(out.wait_ended(), 5)
    assert ended.status == 480


async def test_events_iterators_each_see_the_whole_call(make_ua: UaFactory) -> None:
    out, _ = await answered_pair(make_ua)
    await out.hangup()
    first = [type(e) async for e in out.events()]
    second = [type(e) async for e in out.events()]
    assert first == second
    assert first[-1] is CallEnded


# --- against SIPp's built-in scenarios ----------------------------------------------------------------------


async def run_sipp(tmp_path: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "sipp", *args, "-i", "127.0.0.1", "-m", "1", "-nostdin", "-timeout", "20s", "-timeout_error",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


def sipp_counts(output: str) -> tuple[int, int]:
    ok = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", output)
    failed = re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", output)
    return (int(ok[-1]) if ok else -1, int(failed[-1]) if failed else -1)


@pytest.mark.peer
@pytest.mark.skipif(shutil.which("sipp") is None, reason="needs SIPp (Debian sip-tester)")
async def test_we_call_sipp_uas(make_ua: UaFactory, tmp_path: Path) -> None:
    port = free_udp_port()
    sipp = asyncio.ensure_future(run_sipp(tmp_path, "-sn", "uas", "-p", str(port)))
    alice = await make_ua()
    for _ in range(100):  # SIPp binds within a few hundred ms: wait until the port is taken
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                break
        await asyncio.sleep(0.05)
    out = await alice.dial(f"sip:service@127.0.0.1:{port}", from_uri=ALICE)
    await next_event(out, CallAnswered)
    await out.hangup()
    assert (await out.wait_ended()).by == "local"
    code, output = await asyncio.wait_for(sipp, 30)
    assert code == 0, output[-3000:]
    assert sipp_counts(output) == (1, 0), output[-3000:]


@pytest.mark.peer
@pytest.mark.skipif(shutil.which("sipp") is None, reason="needs SIPp (Debian sip-tester)")
async def test_sipp_uac_calls_us(make_ua: UaFactory, tmp_path: Path) -> None:
    bob = await make_ua()
    inbox = Inbox(ring_then_answer)
    bob.on_incoming(inbox)
    host, port = bob.address("UDP")
    code, output = await run_sipp(tmp_path, "-sn", "uac", f"{host}:{port}", "-p", str(free_udp_port()))
    assert code == 0, output[-3000:]
    assert sipp_counts(output) == (1, 0), output[-3000:]
    inc = await inbox.next()
    ended = await asyncio.wait_for(inc.wait_ended(), 5)
    assert ended.by == "remote"
    assert any(isinstance(e, CallAnswered) for e in inc.history)
