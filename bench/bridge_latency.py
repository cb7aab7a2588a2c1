"""Bench: what the media gateway adds between a room (WebRTC, Opus) and a phone leg (SIP, G.711), and how many
bridges one node holds.

Two processes on 127.0.0.1: the *gateway* (MediaGateway + our SIP user agent, the system under test, with a
small control HTTP API) and the *generator* (aiortc room peers and one SIP user agent answering as the phones).
CPU is read from the gateway process only.

1. Latency (one bridge): the room peer sends a 100 ms 1 kHz burst every 500 ms, the phone a 100 ms 700 Hz burst
   every 500 ms (offset 240 ms). Send time = when the peer hands the first burst frame to its sender; detect
   time = when the other peer *receives* the first frame above -30 dBFS (RTP arrival on the phone; the room
   peer's decoded frame, with aiortc's receive buffer bypassed as in the gateway). So the figure is the
   gateway's added one-way latency plus the peers' encode/decode and loopback (< 1 ms).
2. Capacity: bridges are added in steps; after each step 5 s of steady state are measured. Frame loss =
   (frames the mixer found missing from the room + packets the phones did not receive) / expected. The largest
   step under 1 % loss (and the gateway below 95 % of the machine's CPU) is ``bridges_max``.

Usage: ``uv run python bench/bridge_latency.py [--max 80] [--step 10] [--bursts 30]``
Prints ``RESULT key=value`` lines.
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
from aiortc.mediastreams import MediaStreamError

from comms.clock import SystemClock
from media import audio
from media.bridge import attach_rtp
from media.gateway import MediaGateway
from media.rtp import RtpPacket
from media.webrtc import low_latency_audio
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
    clock = SystemClock()
    gw = MediaGateway(clock)
    ua = await UserAgent.start(clock, UaConfig(tcp_port=None))
    calls: dict[str, Call] = {}

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
        return web.json_response(
            {"cpu": t.user + t.system, "wall": time.monotonic(), "rooms": rooms, "jb": jb}
        )

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
class BurstTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, bursts: bool) -> None:
        super().__init__()
        self.bursts = bursts
        self.n = 0
        self.start: float | None = None
        self.sent: list[float] = []

    async def recv(self) -> av.AudioFrame:
        if self.start is None:
            self.start = time.monotonic()
        delay = self.start + self.n * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        k = self.n % PERIOD
        if k < BURST and self.bursts:
            t = (np.arange(FRAME) + self.n * FRAME) / RATE
            samples = (np.sin(2 * np.pi * 1000 * t) * 0.5 * 32767).astype(np.int16)
            if k == 0:
                self.sent.append(time.monotonic())
        else:
            # low-level noise so the stream is never digital silence (Opus DTX off anyway)
            samples = np.zeros(FRAME, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self.n * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        self.n += 1
        return frame


class RoomPeer:
    def __init__(self, bursts: bool) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = BurstTrack(bursts)
        self.detected: list[float] = []
        self.frames_in = 0
        self._above = False
        self._task: asyncio.Task[None] | None = None

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            for tr in self.pc.getTransceivers():
                if tr.receiver.track is track:
                    low_latency_audio(tr.receiver)
            self._task = asyncio.get_running_loop().create_task(self._listen(track))

    async def _listen(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.AudioFrame):
                    continue
                self.frames_in += 1
                level = dbfs(frame.to_ndarray().reshape(-1))
                if level > THRESHOLD_DBFS and not self._above:
                    self.detected.append(time.monotonic())
                self._above = level > THRESHOLD_DBFS - 10
        except MediaStreamError:
            return

    async def connect(self, http: ClientSession, base: str, room: str) -> None:
        self.pc.addTrack(self.track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.localDescription is not None
        async with http.post(f"{base}/offer", json={"room": room, "sdp": self.pc.localDescription.sdp}) as r:
            answer = (await r.json())["sdp"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


class PhoneProbe:
    """Hooks one answered call's RtpSession: bursts out at known times, burst onsets detected on RTP arrival."""

    def __init__(self, call: Call, bursts: bool) -> None:
        assert call.media is not None
        self.media = call.media
        self.bursts = bursts
        self.k = 0
        self.sent: list[float] = []
        self.detected: list[float] = []
        self._above = False
        attach_rtp(self.media, lambda s: None, self._next)
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
        probes[room] = PhoneProbe(call, bursting["flag"])

    phones.on_incoming(on_incoming)
    host, sip_port = phones.address("UDP")
    peers: dict[str, RoomPeer] = {}
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
                peer = RoomPeer(bursts)
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
            print(f"RESULT bridge_latency_webrtc_to_sip_p50_ms={statistics.median(w2s):.1f}")
            print(f"RESULT bridge_latency_webrtc_to_sip_p95_ms={pct(w2s, 0.95):.1f}")
            print(f"RESULT bridge_latency_sip_to_webrtc_p50_ms={statistics.median(s2w):.1f}")
            print(f"RESULT bridge_latency_sip_to_webrtc_p95_ms={pct(s2w, 0.95):.1f}")
            print(f"RESULT bridge_latency_p95_ms={p95:.1f}")
            async with http.get(f"{base}/stats") as r:
                lat_stats = await r.json()
            print("RTP leg jitter buffer [target ms, depth, jitter ms]:", lat_stats["jb"].get("lat"))
            print("bridge parties [in, out, underruns, dropped]:", lat_stats["rooms"].get("lat"))

            # 2. capacity ramp
            async def snapshot() -> dict[str, Any]:
                async with http.get(f"{base}/stats") as r:
                    data: dict[str, Any] = await r.json()
                data["phones"] = {k: p.media.stats.packets_received for k, p in probes.items()}
                t = os.times()
                data["gen_cpu"] = t.user + t.system
                return data

            best = 0
            cpu_per_call = None
            n = 1
            while n < args.max:
                target = min(args.max, n + args.step if n > 1 else args.step)
                for i in range(n, target):
                    await add_bridge(f"b{i}", False)
                n = target
                await asyncio.sleep(2.0)
                a = await snapshot()
                await asyncio.sleep(args.window)
                b = await snapshot()
                wall = b["wall"] - a["wall"]
                cpu = (b["cpu"] - a["cpu"]) / wall
                expected = wall / 0.02
                # room -> gateway frames missing (the generator's sending or the gateway's receiving) and
                # gateway -> phone packets missing (the gateway's bridge and RTP leg)
                room_missing = phone_missing = total = 0.0
                for code, parties in b["rooms"].items():
                    before = a["rooms"].get(code)
                    if before is None or "room" not in parties or "room" not in before:
                        continue
                    room_missing += max(0.0, expected - (parties["room"][0] - before["room"][0]))
                    total += expected
                for code, count in b["phones"].items():
                    if code in a["phones"]:
                        phone_missing += max(0.0, expected - (count - a["phones"][code]))
                        total += expected
                loss = 100.0 * (room_missing + phone_missing) / total if total else 100.0
                cpu_pct = 100.0 * cpu
                gen_cpu = 100.0 * (b["gen_cpu"] - a["gen_cpu"]) / wall
                print(
                    f"bridges={n}: gateway CPU {cpu_pct:.0f}% of one core (generator {gen_cpu:.0f}%), "
                    f"frame loss {loss:.2f}% (room->gateway {200.0 * room_missing / total:.2f}%, "
                    f"gateway->phone {200.0 * phone_missing / total:.2f}%)"
                )
                if n >= 10 and cpu_per_call is None:
                    cpu_per_call = cpu_pct / n
                if loss < 1.0 and cpu_pct < 95.0 * (os.cpu_count() or 1):
                    best = n
                else:
                    break
            if cpu_per_call is not None:
                print(f"RESULT cpu_per_bridge_pct_of_core={cpu_per_call:.1f}")
            print(f"RESULT bridges_max={best}")
    finally:
        for peer in peers.values():
            await peer.pc.close()
        await phones.close()
        proc.terminate()
        proc.wait(10)
        await asyncio.to_thread(port_file.unlink, True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max", type=int, default=80)
    parser.add_argument("--step", type=int, default=10)
    parser.add_argument("--bursts", type=int, default=30)
    parser.add_argument("--window", type=float, default=5.0)
    args = parser.parse_args()
    if args.gateway is not None:
        asyncio.run(run_gateway(args.gateway))
    else:
        asyncio.run(run_generator(args))


if __name__ == "__main__":
    main()
