"""Bench: what the media gateway adds between a room (WebRTC, Opus) and a phone leg (SIP, G.711), and how many
bridges one node holds.

Two processes on 127.0.0.1: the *gateway* (MediaGateway + our SIP user agent, the system under test, with a
small control HTTP API) and the *generator* (aiortc room peers and one SIP user agent answering as the phones).
CPU is read from the gateway process only (``/proc/<pid>/stat``, utime + stime of all its threads).

The generator is kept cheap so that it is not what saturates: its room peers send pre-encoded Opus packets
(encoded once at start, cycled; aiortc packs them without encoding), all paced by one shared 20 ms tick, and
count what they receive from the gateway at the receiver's decoder queue without decoding (only the latency
peer decodes, to find burst onsets).

1. Latency (one bridge): the room peer sends a 100 ms 1 kHz burst every 500 ms, the phone a 100 ms 700 Hz burst
   every 500 ms (offset 240 ms). Send time = when the peer hands the first burst frame to its sender; detect
   time = when the other peer *receives* the first frame above -30 dBFS (RTP arrival on the phone; the room
   peer's decoded frame, with aiortc's receive buffer bypassed as in the gateway). So the figure is the
   gateway's added one-way latency plus the peers' encode/decode and loopback (< 1 ms).
2. Capacity: bridges are added in steps; after each step ``--window`` seconds of steady state are measured.
   Frame loss per direction = frames missing / expected (50 per second per bridge): room → gateway (what the
   gateway's bridge received from the room peers), gateway → phone (RTP packets the phones received),
   phone → gateway (RTP packets the gateway's legs received), gateway → room (Opus frames the room peers
   received). The largest step with every direction under 1 % is ``bridges_max``; the first step that fails
   ends the ramp (``bridges_failed_at``). A failing window is measured once more (``--retries 1``) before the
   step counts as failed, because on a shared machine another process's load spike stalls the gateway.

Usage: ``uv run python bench/bridge_latency.py [--max 80] [--step 10] [--bursts 30] [--window 5]``
Prints ``RESULT <name>=<value> <unit>`` lines. ``--floor`` only times the per-frame parts of one bridge (Opus
decode/encode, resampling, G.711, SRTP) in this process: the codec floor of a bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aioice.ice
import av
import numpy as np
from aiohttp import ClientSession, ClientTimeout, web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from comms.clock import SystemClock
from media import audio
from media.bridge import OpusDecoder, OpusEncoder, attach_rtp
from media.gateway import MediaGateway
from media.pacer import Pacer
from media.rtp import RtpPacket
from media.webrtc import low_latency_audio, prefer_opus, tap_encoded_audio
from sip.ua import Call, CallAnswered, UaConfig, UserAgent

# loopback host candidates only (aioice leaves 127.0.0.1 out by default)
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

RATE = 48000
FRAME = 960
PERIOD = 25  # frames: 500 ms
BURST = 5  # frames: 100 ms
PHONE_OFFSET = 12  # frames: 240 ms
THRESHOLD_DBFS = -30.0
WARM_UP_S = 3.0


def dbfs(x: np.ndarray) -> float:
    rms = math.sqrt(float(np.mean(x.astype(np.float64) ** 2))) if x.size else 0.0
    return -120.0 if rms <= 0 else 20 * math.log10(rms / 32768)


# ------------------------------------------------------------------------------------------------ gateway side
async def run_gateway(port_file: Path) -> None:
    if os.environ.get("BENCH_GATEWAY_SLOW"):
        # diagnostics: log every event-loop callback that runs longer than 20 ms
        from asyncio import events as aio_events

        run = aio_events.Handle._run

        def timed(self: Any) -> None:
            t0 = time.perf_counter()
            run(self)
            took = time.perf_counter() - t0
            if took > 0.02:
                print(f"gateway slow callback {took * 1000:.0f} ms: {self._callback!r:.160}", file=sys.stderr)

        aio_events.Handle._run = timed  # type: ignore[method-assign]
    if os.environ.get("BENCH_GATEWAY_DEBUG"):
        import logging

        logging.basicConfig(level=logging.INFO, format="gateway %(name)s %(message)s")
        asyncio.get_running_loop().set_debug(True)
        asyncio.get_running_loop().slow_callback_duration = 0.04
    clock = SystemClock()
    gw = MediaGateway(clock)
    ua = await UserAgent.start(clock, UaConfig(tcp_port=None))
    calls: dict[str, Call] = {}
    lag = {"max_ms": 0.0, "over_50ms": 0}

    def watch_lag(due: float) -> None:
        late = (time.monotonic() - due) * 1000
        lag["max_ms"] = max(lag["max_ms"], late)
        if late > 50:
            lag["over_50ms"] += 1
        asyncio.get_running_loop().call_later(0.01, watch_lag, time.monotonic() + 0.01)

    watch_lag(time.monotonic())

    async def offer(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"sdp": await gw.room_offer(body["room"], body["sdp"])})

    async def phone(request: web.Request) -> web.Response:
        body = await request.json()
        room = body["room"]
        call = await ua.dial(body["uri"], from_uri="sip:gateway@127.0.0.1")
        async for ev in call.events():
            if isinstance(ev, CallAnswered):
                break
        gw.open_incident(room, room)
        await gw.join_phone(room, call)
        calls[room] = call
        return web.json_response({"ok": True})

    async def stats(request: web.Request) -> web.Response:
        t = os.times()
        rooms: dict[str, Any] = {}
        for code, room in gw.rooms.items():
            rooms[code] = {
                pid: [s.frames_in, s.frames_out, s.underruns, s.dropped]
                for pid, s in room.bridge.stats().items()
            }
        # diagnostics: the RTP legs' jitter buffers (a private attribute of media.session: bench only)
        jb = {
            code: [call.media._jb.target_ms, call.media._jb.depth, round(call.media._jb.jitter_ms, 1)]
            for code, call in calls.items()
            if call.media is not None
        }
        rtp_in = {code: call.media.stats.packets_received for code, call in calls.items() if call.media}
        tracks = {
            code: {
                pid: [t.queue.dropped, t.queue.underruns, t.queue.trimmed]
                for pid, t in room.bridge._tracks.items()
            }
            for code, room in gw.rooms.items()
        }
        out = {"cpu": t.user + t.system, "wall": time.monotonic(), "rooms": rooms, "jb": jb, "rtp_in": rtp_in}
        out.update(lag=dict(lag), tracks=tracks)
        lag["max_ms"], lag["over_50ms"] = 0.0, 0
        return web.json_response(out)

    app = web.Application()
    app.router.add_post("/offer", offer)
    app.router.add_post("/phone", phone)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await asyncio.to_thread(port_file.write_text, str(port))
    try:
        await asyncio.Event().wait()
    finally:
        await gw.close()
        await ua.close()


# ------------------------------------------------------------------------------------------------ generator side
class Ticker:
    """One 20 ms tick for every generator peer (a shared future per tick, not a sleep per peer per frame)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.k = 0
        self._next: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.k += 1
        fut, self._next = self._next, asyncio.get_running_loop().create_future()
        fut.set_result(None)
        delay = self.start + self.k * 0.02 - time.monotonic()
        asyncio.get_running_loop().call_later(max(0.0, delay), self._tick)

    async def wait(self) -> int:
        await asyncio.shield(self._next)
        return self.k


def pre_encode(bursts: bool) -> list[bytes]:
    """One period (500 ms) of Opus packets: a 1 kHz burst then quiet noise, or noise at -40 dBFS only."""
    rng = np.random.default_rng(7)
    # what a browser sends (Chrome: "voip" SILK/hybrid, ~32 kb/s), so the gateway decodes what it would in use
    enc = OpusEncoder(bitrate=32000, complexity=10, application="voip")
    out = []
    for n in range(PERIOD):
        if bursts and n < BURST:
            t = (np.arange(FRAME) + n * FRAME) / RATE
            samples = (np.sin(2 * np.pi * 1000 * t) * 0.5 * 32767).astype(np.int16)
        else:
            samples = rng.normal(0, 330, FRAME).astype(np.int16)  # speech-like level, never digital silence
        out.extend(enc.encode(samples))
    return out


class PacketTrack(MediaStreamTrack):
    """Sends pre-encoded Opus packets every 20 ms (aiortc's sender packs them without encoding)."""

    kind = "audio"

    def __init__(self, ticker: Ticker, packets: list[bytes], bursts: bool) -> None:
        super().__init__()
        self.ticker = ticker
        self.packets = packets
        self.bursts = bursts
        self.n = 0
        self.start: int | None = None
        self.sent: list[float] = []

    async def recv(self) -> av.Packet[Any]:
        if self.start is None:
            self.start = self.ticker.k
        while self.start + self.n >= self.ticker.k:  # not behind the tick: wait for the next one
            await self.ticker.wait()
        k = self.n % PERIOD
        if self.bursts and k == 0:
            self.sent.append(time.monotonic())
        packet = av.Packet(self.packets[k])
        packet.pts = self.n * FRAME
        packet.time_base = fractions.Fraction(1, RATE)
        self.n += 1
        return packet


class RoomPeer:
    def __init__(self, ticker: Ticker, packets: list[bytes], bursts: bool) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = PacketTrack(ticker, packets, bursts)
        self.bursts = bursts
        self.detected: list[float] = []
        self.frames_in = 0
        self._above = False
        self._decoder = OpusDecoder() if bursts else None

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            for tr in self.pc.getTransceivers():
                if tr.receiver.track is track:
                    low_latency_audio(tr.receiver)
                    tap = tap_encoded_audio(tr.receiver)
                    if tap is not None:
                        tap.sink = self._received

    def _received(self, data: bytes) -> None:
        self.frames_in += 1
        if self._decoder is None:
            return  # capacity peers count frames, they do not decode
        for chunk in self._decoder.decode(data):
            level = dbfs(chunk)
            if level > THRESHOLD_DBFS and not self._above:
                self.detected.append(time.monotonic())
            self._above = level > THRESHOLD_DBFS - 10

    async def connect(self, http: ClientSession, base: str, room: str) -> None:
        self.pc.addTrack(self.track)
        for tr in self.pc.getTransceivers():
            prefer_opus(tr)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.localDescription is not None
        async with http.post(f"{base}/offer", json={"room": room, "sdp": self.pc.localDescription.sdp}) as r:
            answer = (await r.json())["sdp"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


class PhoneProbe:
    """Hooks one answered call's RtpSession: bursts out at known times, burst onsets detected on RTP arrival."""

    def __init__(self, call: Call, bursts: bool, pacer: Pacer) -> None:
        assert call.media is not None
        self.media = call.media
        self.bursts = bursts
        self.k = 0
        self.sent: list[float] = []
        self.detected: list[float] = []
        self._above = False
        attach_rtp(self.media, lambda s: None, self._next)
        self.media.pace_with(pacer)  # one 20 ms tick for all the phones
        original = self.media._on_datagram

        def on_datagram(data: bytes, addr: tuple[str, int]) -> None:
            if self.bursts:
                try:
                    pkt = RtpPacket.parse(data)
                    level = dbfs(audio.decode("PCMU", pkt.payload)) if pkt.payload_type == 0 else -120.0
                except Exception:
                    level = -120.0
                if level > THRESHOLD_DBFS and not self._above:
                    self.detected.append(time.monotonic())
                self._above = level > THRESHOLD_DBFS - 10
            original(data, addr)

        self.media._on_datagram = on_datagram  # type: ignore[method-assign]

    def _next(self) -> np.ndarray | None:
        k = (self.k - PHONE_OFFSET) % PERIOD
        self.k += 1
        if not self.bursts or k >= BURST:
            return None
        if k == 0:
            self.sent.append(time.monotonic())
        t = np.arange(160) / 8000 + k * 0.02
        return (np.sin(2 * np.pi * 700 * t) * 0.5 * 32767).astype(np.int16)


DIRECTIONS = ("room->gateway", "gateway->phone", "phone->gateway", "gateway->room")


def losses(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Frame loss per direction (%) between two snapshots: frames missing / 50 per second per bridge."""
    expected = (b["mono"] - a["mono"]) / 0.02
    pairs: list[tuple[str, float | None, float | None]] = []
    for code, parties in b["rooms"].items():
        before = (a["rooms"].get(code) or {}).get("room")
        after = parties.get("room")
        pairs.append(("room->gateway", before[0] if before else None, after[0] if after else None))
    pairs += [("gateway->phone", a["phones"].get(c), v) for c, v in b["phones"].items()]
    pairs += [("phone->gateway", a["rtp_in"].get(c), v) for c, v in b["rtp_in"].items()]
    pairs += [("gateway->room", a["peers"].get(c), v) for c, v in b["peers"].items()]
    missing = dict.fromkeys(DIRECTIONS, 0.0)
    counted = dict.fromkeys(DIRECTIONS, 0.0)
    for name, v0, v1 in pairs:
        if v0 is not None and v1 is not None:
            missing[name] += max(0.0, expected - (v1 - v0))
            counted[name] += expected
    return {k: 100.0 * missing[k] / counted[k] if counted[k] else 100.0 for k in DIRECTIONS}


def match(sent: list[float], detected: list[float]) -> list[float]:
    out = []
    for d in detected:
        before = [s for s in sent if s <= d and d - s < 0.4]
        if before:
            out.append((d - before[-1]) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def run_generator(args: argparse.Namespace) -> None:
    port_file = Path(f"/tmp/bridge-bench-{os.getpid()}.port")
    proc = subprocess.Popen([sys.executable, __file__, "--gateway", str(port_file)])
    clock = SystemClock()
    phones = await UserAgent.start(clock, UaConfig(tcp_port=None))
    probes: dict[str, PhoneProbe] = {}
    bursting = {"flag": True}

    async def on_incoming(call: Call) -> None:
        await call.answer()
        room = call.request_uri.user or ""
        probes[room] = PhoneProbe(call, bursting["flag"], Pacer.of(clock))

    phones.on_incoming(on_incoming)
    host, sip_port = phones.address("UDP")
    peers: dict[str, RoomPeer] = {}
    ticker = Ticker()
    packets = {True: pre_encode(True), False: pre_encode(False)}
    try:
        port = ""
        for _ in range(400):
            port = await asyncio.to_thread(lambda: port_file.read_text() if port_file.exists() else "")
            if port:
                break
            await asyncio.sleep(0.05)
        if not port:
            raise RuntimeError(f"the gateway process did not start (exit status {proc.poll()})")
        base = f"http://127.0.0.1:{port}"
        async with ClientSession(timeout=ClientTimeout(total=30)) as http:

            async def add_bridge(room: str, bursts: bool) -> None:
                bursting["flag"] = bursts
                peer = RoomPeer(ticker, packets[bursts], bursts)
                peers[room] = peer
                await peer.connect(http, base, room)
                for _ in range(200):
                    if peer.pc.connectionState == "connected":
                        break
                    await asyncio.sleep(0.02)
                async with http.post(
                    f"{base}/phone", json={"room": room, "uri": f"sip:{room}@{host}:{sip_port}"}
                ) as r:
                    await r.json()

            # 1. latency through one bridge
            await add_bridge("lat", True)
            warm = time.monotonic() + WARM_UP_S  # start-up bursts settle first (FrameQueue trimming)
            await asyncio.sleep(WARM_UP_S + args.bursts * 0.5 + 1.0)
            room, phone = peers["lat"], probes["lat"]
            w2s = match([t for t in room.track.sent if t > warm], phone.detected)
            s2w = match([t for t in phone.sent if t > warm], room.detected)
            print("webrtc_to_sip each:", " ".join(f"{v:.0f}" for v in w2s))
            print("sip_to_webrtc each:", " ".join(f"{v:.0f}" for v in s2w))
            for name, values in (("webrtc_to_sip", w2s), ("sip_to_webrtc", s2w)):
                if not values:
                    print(f"no bursts detected {name}")
                    continue
                print(
                    f"{name}: n={len(values)} p50={statistics.median(values):.1f} ms "
                    f"p95={pct(values, 0.95):.1f} ms max={max(values):.1f} ms"
                )
            p95 = max(pct(w2s, 0.95) if w2s else 1e9, pct(s2w, 0.95) if s2w else 1e9)
            print(f"RESULT bridge_latency_webrtc_to_sip_p50_ms={statistics.median(w2s):.1f} ms")
            print(f"RESULT bridge_latency_webrtc_to_sip_p95_ms={pct(w2s, 0.95):.1f} ms")
            print(f"RESULT bridge_latency_sip_to_webrtc_p50_ms={statistics.median(s2w):.1f} ms")
            print(f"RESULT bridge_latency_sip_to_webrtc_p95_ms={pct(s2w, 0.95):.1f} ms")
            print(f"RESULT bridge_latency_p95_ms={p95:.1f} ms")
            async with http.get(f"{base}/stats") as r:
                lat_stats = await r.json()
            print("RTP leg jitter buffer [target ms, depth, jitter ms]:", lat_stats["jb"].get("lat"))
            print("bridge parties [in, out, underruns, dropped]:", lat_stats["rooms"].get("lat"))

            # 2. capacity ramp
            clk_tck = os.sysconf("SC_CLK_TCK")
            stat_path = Path(f"/proc/{proc.pid}/stat")

            def gateway_cpu() -> float:
                fields = stat_path.read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / clk_tck  # utime + stime, all threads

            async def snapshot() -> dict[str, Any]:
                async with http.get(f"{base}/stats") as r:
                    data: dict[str, Any] = await r.json()
                data["proc_cpu"] = gateway_cpu()
                data["mono"] = time.monotonic()
                data["phones"] = {k: p.media.stats.packets_received for k, p in probes.items()}
                data["peers"] = {k: p.frames_in for k, p in peers.items()}
                t = os.times()
                data["gen_cpu"] = t.user + t.system
                return data

            best = 0
            failed_at = None
            cpu_per_call = None
            n = 1
            while n < args.max:
                target = min(args.max, n + args.step if n > 1 else args.step)
                for i in range(n, target):
                    await add_bridge(f"b{i}", False)
                n = target
                await asyncio.sleep(2.0)
                for attempt in range(1 + args.retries):
                    a = await snapshot()
                    await asyncio.sleep(args.window)
                    b = await snapshot()
                    if attempt < args.retries and max(losses(a, b).values()) >= 1.0:
                        print(f"  bridges={n}: loss >= 1 % in this window, measuring again", flush=True)
                        continue
                    break
                wall = b["mono"] - a["mono"]
                cpu = (b["proc_cpu"] - a["proc_cpu"]) / wall
                loss = losses(a, b)
                cpu_pct = 100.0 * cpu
                gen_cpu = 100.0 * (b["gen_cpu"] - a["gen_cpu"]) / wall
                tracks_b = [v for room in b["tracks"].values() for v in room.values()]
                print(
                    f"  gateway loop lag max {b['lag']['max_ms']:.0f} ms, {b['lag']['over_50ms']} times > 50 ms; "
                    f"WebRTC out queues dropped/underruns/trimmed "
                    f"{[sum(v[i] for v in tracks_b) for i in range(3)]}",
                    flush=True,
                )
                print(
                    f"bridges={n}: gateway CPU {cpu_pct:.0f}% of one core ({cpu_pct / n:.2f}%/bridge; generator "
                    f"{gen_cpu:.0f}%), frame loss " + ", ".join(f"{k} {v:.2f}%" for k, v in loss.items()),
                    flush=True,
                )
                if max(loss.values()) < 1.0:
                    best = n
                    cpu_per_call = cpu_pct / n  # at the largest count held
                else:
                    failed_at = n
                    break
            if cpu_per_call is not None:
                print(f"RESULT cpu_per_bridge_pct_of_core={cpu_per_call:.2f} %")
            print(f"RESULT bridges_max={best} bridges")
            if failed_at is not None:
                print(f"RESULT bridges_failed_at={failed_at} bridges")
    finally:
        for peer in peers.values():
            await peer.pc.close()
        await phones.close()
        proc.terminate()
        proc.wait(10)
        await asyncio.to_thread(port_file.unlink, True)


def measure_floor(iterations: int = 2000) -> None:
    """What one bridge costs per 20 ms frame at least, part by part (this process, one thread, µs)."""
    from aiortc.rtp import RtpPacket as AiortcRtpPacket
    from pylibsrtp import Policy, Session

    from media.bridge import Resampler

    rng = np.random.default_rng(3)
    t = np.arange(FRAME * 50) / RATE
    voice = (
        np.sin(2 * np.pi * 180 * t) * 4000 * (1 + np.sin(2 * np.pi * 3 * t)) + rng.normal(0, 500, t.size)
    ).astype(np.int16)
    frames = [voice[i * FRAME : (i + 1) * FRAME] for i in range(50)]
    browser = OpusEncoder(bitrate=32000, complexity=10, application="voip")
    packets = [p for f in frames for p in browser.encode(f)]
    key = bytes(range(30))
    tx = Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    rx = Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    dec, enc, down, up = OpusDecoder(), OpusEncoder(), Resampler("down"), Resampler("up")
    seq = [0]

    def srtp_round_trip() -> None:
        seq[0] += 1
        pkt = AiortcRtpPacket(
            payload_type=111, sequence_number=seq[0] & 0xFFFF, timestamp=seq[0] * 960, ssrc=1
        )
        pkt.payload = packets[seq[0] % len(packets)]
        AiortcRtpPacket.parse(rx.unprotect(tx.protect(pkt.serialize())))

    parts: dict[str, Any] = {
        "opus_decode_browser_voip": lambda i: dec.decode(packets[i % len(packets)]),
        "opus_encode_gateway": lambda i: enc.encode(frames[i % 50]),
        "resample_down_up": lambda i: (down.process(frames[i % 50]), up.process(frames[i % 50][:160])),
        "g711_encode_decode": lambda i: audio.decode("PCMU", audio.encode("PCMU", frames[i % 50][:160])),
        "srtp_rtp_round_trip": lambda i: srtp_round_trip(),
    }
    total = 0.0
    for name, fn in parts.items():
        t0 = time.perf_counter()
        for i in range(iterations):
            fn(i)
        us = (time.perf_counter() - t0) / iterations * 1e6
        total += us
        print(f"RESULT floor_{name}_us={us:.1f} us")
    print(f"RESULT floor_codec_path_per_bridge_us={total:.1f} us")
    print(f"RESULT floor_codec_path_pct_of_core_per_bridge={total / 200:.2f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max", type=int, default=80)
    parser.add_argument("--step", type=int, default=10)
    parser.add_argument("--bursts", type=int, default=30)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--floor", action="store_true", help="only time the per-frame parts of one bridge")
    parser.add_argument(
        "--retries", type=int, default=1, help="re-measure a failing step (a shared machine has load spikes)"
    )
    args = parser.parse_args()
    if args.floor:
        measure_floor()
    elif args.gateway is not None:
        asyncio.run(run_gateway(args.gateway))
    else:
        asyncio.run(run_generator(args))


if __name__ == "__main__":
    main()
