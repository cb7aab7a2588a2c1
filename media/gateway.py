"""MediaGateway: rooms, consoles and phone legs joined into one live session per room, and its evidence.

How it runs
-----------
Per room code there is one :class:`Room`: its :class:`~media.webrtc.RoomSession` (the tablet's WebRTC
connection, replaced on every reconnect) and its :class:`~media.bridge.AudioBridge` (mix-minus of the room,
radiologist consoles and phone legs). A radiologist joins a room either with a browser
(:meth:`MediaGateway.console_offer`) or on the phone they accepted on (:meth:`MediaGateway.join_phone`, with
the ``sip.ua.Call`` the SIP channel kept up after the accept).

While an incident is open (:meth:`open_incident` … :meth:`close_incident`) a once-a-second tick, timed by the
one clock, samples every party into the incident's :class:`~media.supervision.Supervision` core and hands
the resulting evidence (``media.established``, ``media.video_joined``, ``media.supervision``,
``media.lost``/``media.restored``, ``media.restore_attempt``, every 5 s ``media.quality``) to the ``evidence``
callback in order, through one queue and one writer task (the composition root wires it to
``comms.db.events.append_event``). Media loss never hangs up: a lost phone leg gets one re-INVITE (refreshing
our offer) per loss; a lost room waits for the tablet page, which reconnects by itself; the room page shows
the alarm from :meth:`room_status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiortc import MediaStreamTrack

from comms.clock import Clock, TimerHandle
from comms.ids import new_id
from comms.tasks import TaskSet
from media import audio
from media.bridge import NARROW_FRAME, AudioBridge, BridgeTrack, Pcm, Resampler
from media.errors import MediaError
from media.supervision import Alarm, PartySample, Sample, Supervision
from media.turn import TurnRest
from media.webrtc import ConsoleSession, IceServer, PassThroughVideoTrack, RoomSession

__all__ = ["MediaEvidence", "MediaGateway", "Room", "StreamLeg"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MediaEvidence:
    """One fact for the evidence log of ``incident_id`` (``leg_id`` when it is about a phone leg)."""

    incident_id: str
    kind: str
    data: dict[str, Any]
    leg_id: str | None = None


EvidenceSink = Callable[[MediaEvidence], Awaitable[None]]


@dataclass
class _Phone:
    party: str
    call: Any  # sip.ua.Call (duck-typed: media, state, unhold(), wait_ended())
    leg_id: str | None
    watcher: asyncio.Task[None] | None = None
    restore_tried: bool = False


class StreamLeg:
    """A phone leg carried as 20 ms frames of 8 kHz µ-law over a WebSocket (Twilio Media Streams).

    The WebSocket adapter calls :meth:`receive` with each inbound payload and sends what ``send`` is given.
    """

    def __init__(self, bridge: AudioBridge, party: str, send: Callable[[bytes], None]) -> None:
        self.bridge = bridge
        self.party = party
        self._send = send
        self._up = Resampler("up")
        self._down = Resampler("down")
        self._pending = b""
        self.frames_in = 0
        self.frames_out = 0

    def receive(self, ulaw: bytes) -> None:
        self._pending += ulaw
        while len(self._pending) >= NARROW_FRAME:
            chunk, self._pending = self._pending[:NARROW_FRAME], self._pending[NARROW_FRAME:]
            self.frames_in += 1
            self.bridge.push_pcm(self.party, self._up.process(audio.decode("PCMU", chunk)))

    def on_mix(self, wide: Pcm) -> None:
        self.frames_out += 1
        self._send(audio.encode("PCMU", self._down.process(wide)))


@dataclass
class _Incident:
    id: str
    room_code: str
    supervision: Supervision
    phones: dict[str, _Phone] = field(default_factory=dict)
    streams: dict[str, tuple[StreamLeg, str | None]] = field(default_factory=dict)
    last_quality: float = 0.0


@dataclass
class Room:
    code: str
    session: RoomSession
    bridge: AudioBridge
    consoles: dict[str, ConsoleSession] = field(default_factory=dict)
    room_out: BridgeTrack | None = None
    alarms: list[str] = field(default_factory=list)


class MediaGateway:
    """Rooms by code; phones and consoles joined to them; per-second supervision of open incidents."""

    def __init__(
        self,
        clock: Clock,
        *,
        ice_servers: Sequence[IceServer] = (),
        evidence: EvidenceSink | None = None,
        loss_after_s: float = 3.0,
        quality_every_s: float = 5.0,
        video_passthrough: bool = True,
        turn: TurnRest | None = None,
    ) -> None:
        self.clock = clock
        #: TURN servers with short-lived credentials minted per page load (media/turn.py); None: only the
        #: ``ice_servers`` as given
        self.turn = turn
        #: forward the room camera's encoded VP8 to consoles (False: decode and re-encode per console)
        self.video_passthrough = video_passthrough
        self.ice_servers = tuple(ice_servers)
        self.loss_after_s = loss_after_s
        self.quality_every_s = quality_every_s
        self.rooms: dict[str, Room] = {}
        self.incidents: dict[str, _Incident] = {}
        self._evidence = evidence
        self._queue: asyncio.Queue[MediaEvidence | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._timer: TimerHandle | None = None
        self._t0 = 0.0
        self._k = 0
        self.history: list[MediaEvidence] = []  # what was emitted (bounded to the last 1000)
        self._closed = False
        self._tasks = TaskSet(log, "media gateway")

    def ice_servers_for(self, user: str) -> tuple[IceServer, ...]:
        """The ICE servers for one connection of ``user`` (a person id, ``room-<code>``, ``gateway``): the
        configured ones plus, with ``turn``, its TURN URLs with a credential minted now. Never the secret."""
        if self.turn is None:
            return self.ice_servers
        cred = self.turn.credential(user, self.clock.now().timestamp())
        return (*self.ice_servers, IceServer(self.turn.urls, cred.username, cred.credential))

    # --- rooms ---------------------------------------------------------------------------------------------------
    def room(self, code: str) -> Room:
        room = self.rooms.get(code)
        if room is None:
            bridge = AudioBridge(self.clock, name=f"room {code}", opus=True)

            def on_audio(track: MediaStreamTrack) -> MediaStreamTrack:
                if "room" not in bridge.mixer.parties:
                    room_ref.room_out = bridge.add_webrtc("room", "room", track)
                else:  # a reconnect: new tracks both ways (aiortc stopped the old ones with the old sender)
                    bridge.set_inbound("room", track)
                    room_ref.room_out = bridge.new_output("room")
                return room_ref.room_out

            def on_video(track: MediaStreamTrack) -> None:
                for console in room_ref.consoles.values():
                    self._feed_console(room_ref, console)

            def on_state(state: str) -> None:
                log.info("[room=%s] tablet connection %s", code, state)

            session = RoomSession(
                code, self.clock, self.ice_servers, on_audio=on_audio, on_video=on_video, on_state=on_state
            )
            room_ref = room = Room(code, session, bridge)
            session.camera = lambda: self._camera(room_ref)
            self.rooms[code] = room
        return room

    async def room_offer(self, room_code: str, offer_sdp: str) -> str:
        """The tablet of ``room_code`` (re)connects: answer its offer."""
        session = self.room(room_code).session
        session.ice_servers = self.ice_servers_for("gateway")
        return await session.accept_offer(offer_sdp)

    async def console_offer(self, room_code: str, person_id: str, offer_sdp: str) -> tuple[str, str]:
        """A radiologist's browser joins ``room_code``: returns ``(console_id, answer_sdp)``."""
        room = self.room(room_code)
        console_id = new_id()
        console = ConsoleSession(
            console_id,
            person_id,
            self.clock,
            self.ice_servers_for("gateway"),
            passthrough=self.video_passthrough,
        )
        party = f"browser:{console_id}"
        out = room.bridge.add_webrtc(party, "browser", None)
        self._feed_console(room, console)
        room.consoles[console_id] = console

        def on_audio(track: MediaStreamTrack) -> None:
            room.bridge.set_inbound(party, track)

        def on_state(state: str) -> None:
            log.info("[room=%s console=%s] %s", room_code, console_id, state)
            if state in ("failed", "closed"):
                asyncio.get_running_loop().create_task(self.leave_console(room_code, console_id))

        answer = await console.accept_offer(offer_sdp, out, on_audio, on_state)
        if console.video_in is not None:  # the latest console with a camera is what the room sees
            room.session.video_back.switch(console.subscribe_camera())
        self._ensure_ticking()
        return console_id, answer

    def _feed_console(self, room: Room, console: ConsoleSession) -> None:
        video = console.video_out
        if isinstance(video, PassThroughVideoTrack):
            video.switch(room.session.tap)
        else:
            video.switch(room.session.subscribe_video())

    def _camera(self, room: Room) -> MediaStreamTrack | None:
        """A new subscription to the camera of the latest console that has one."""
        for console in reversed(list(room.consoles.values())):
            if console.video_in is not None:
                return console.subscribe_camera()
        return None

    async def leave_console(self, room_code: str, console_id: str) -> None:
        room = self.rooms.get(room_code)
        if room is None:
            return
        console = room.consoles.pop(console_id, None)
        if console is None:
            return
        room.bridge.remove(f"browser:{console_id}")
        await console.close()
        room.session.video_back.switch(self._camera(room))

    # --- incidents and phone legs ---------------------------------------------------------------------------------
    def open_incident(self, incident_id: str, room_code: str) -> None:
        """Start the supervision record of ``incident_id`` (idempotent)."""
        if incident_id in self.incidents:
            return
        self.room(room_code)
        sup = Supervision(incident_id, self.clock.monotonic(), loss_after=self.loss_after_s)
        self.incidents[incident_id] = _Incident(
            incident_id, room_code, sup, last_quality=self.clock.monotonic()
        )
        self._ensure_ticking()

    async def close_incident(self, incident_id: str) -> dict[str, Any]:
        """End the record (phone legs stay joined until they hang up); returns the summary, also as evidence."""
        inc = self.incidents.pop(incident_id, None)
        if inc is None:
            return {}
        summary = inc.supervision.summary()
        self._emit(MediaEvidence(incident_id, "media.summary", summary))
        return summary

    async def join_phone(self, incident_id: str, call: Any, *, leg_id: str | None = None) -> str:
        """Bridge an answered ``sip.ua.Call`` (its ``media`` RtpSession running) into the incident's room.

        Returns the party id. The party leaves when the call ends; media loss never hangs it up.
        """
        inc = self.incidents.get(incident_id)
        if inc is None:
            raise MediaError(
                f"cannot join a phone to incident {incident_id}: not open (call open_incident first)"
            )
        session = getattr(call, "media", None)
        if session is None or getattr(session, "state", None) != "running":
            state = getattr(session, "state", None)
            raise MediaError(f"cannot bridge call {call!r}: its RTP session is {state}, expected running")
        room = self.rooms[inc.room_code]
        party = f"phone:{getattr(call, 'id', new_id())}"
        room.bridge.add_phone(party, session)
        phone = _Phone(party, call, leg_id)
        inc.phones[party] = phone
        phone.watcher = asyncio.get_running_loop().create_task(self._watch_call(inc, room, phone))
        self._emit(MediaEvidence(incident_id, "media.phone_joined", {"party": party}, leg_id))
        return party

    def reachable(self, incident_id: str, room_code: str) -> bool:
        """Open the incident's record in ``room_code``; whether anyone is there for an accepted phone leg to talk
        to (the room's live session, or another party already bridged)."""
        self.open_incident(incident_id, room_code)
        room = self.rooms[room_code]
        return room.session.state == "connected" or bool(room.bridge.mixer.parties)

    async def on_accepted(self, order: Any, call: Any) -> bool:
        """``escalation.sip_channel.AcceptedCallHandler``: bridge the winner's call into the incident's room.

        ``order`` is an ``escalation.channel.LegOrder`` (``incident_id``, ``room_code``, ``leg_id``). Returns
        False, joining nothing, when nobody is there to talk to (no live room session and no other party), so the
        channel can say so and hang up; True once the call is bridged (the record is audio-only until a console
        shows video).
        """
        if not self.reachable(order.incident_id, order.room_code):
            log.info(
                "[incident=%s] accepted call not bridged: room %s has no live session",
                order.incident_id,
                order.room_code,
            )
            return False
        try:
            await self.join_phone(order.incident_id, call, leg_id=order.leg_id)
        except MediaError as exc:
            log.warning(
                "[incident=%s leg=%s] accepted call not bridged: %s", order.incident_id, order.leg_id, exc
            )
            return False
        return True

    def join_stream(
        self, incident_id: str, stream_id: str, send: Callable[[bytes], None], *, leg_id: str | None = None
    ) -> StreamLeg:
        """Bridge a media stream (Twilio ``<Connect><Stream>``): ``send`` gets 160 bytes of µ-law every 20 ms."""
        inc = self.incidents.get(incident_id)
        if inc is None:
            raise MediaError(f"cannot join stream {stream_id} to incident {incident_id}: not open")
        room = self.rooms[inc.room_code]
        party = f"pstn:{stream_id}"
        leg = StreamLeg(room.bridge, party, send)
        room.bridge.add_pcm(party, leg.on_mix)
        inc.streams[party] = (leg, leg_id)
        self._emit(
            MediaEvidence(incident_id, "media.phone_joined", {"party": party, "via": "stream"}, leg_id)
        )
        return leg

    def leave_stream(self, incident_id: str, leg: StreamLeg, reason: str) -> None:
        inc = self.incidents.get(incident_id)
        room = self.rooms.get(inc.room_code) if inc is not None else None
        if room is not None:
            room.bridge.remove(leg.party)
        if inc is not None and inc.streams.pop(leg.party, None) is not None:
            self._emit(MediaEvidence(inc.id, "media.phone_left", {"party": leg.party, "reason": reason}))

    async def _watch_call(self, inc: _Incident, room: Room, phone: _Phone) -> None:
        try:
            ended = await phone.call.wait_ended()
            reason = getattr(ended, "reason", "")
        except Exception as exc:
            reason = f"watch failed: {exc}"
        room.bridge.remove(phone.party)
        inc.phones.pop(phone.party, None)
        self._emit(
            MediaEvidence(inc.id, "media.phone_left", {"party": phone.party, "reason": reason}, phone.leg_id)
        )

    # --- status for pages ----------------------------------------------------------------------------------------
    def room_status(self, room_code: str) -> dict[str, Any]:
        room = self.rooms.get(room_code)
        if room is None:
            return {"connected": False, "state": "new", "alarms": [], "parties": []}
        now = self.clock.monotonic()
        stats = room.bridge.stats()
        alarms = []
        for inc in self.incidents.values():
            if inc.room_code == room_code:
                alarms.extend(inc.supervision.lost_parties())
        return {
            "connected": room.session.state == "connected",
            "state": room.session.state,
            "alarms": sorted(set(alarms)),
            "video_frames": room.session.monitor.frames,
            "parties": [
                {
                    "party": s.party,
                    "kind": s.kind,
                    "frames_in": s.frames_in,
                    "quiet_s": None if s.last_in_mono is None else round(now - s.last_in_mono, 1),
                }
                for s in stats.values()
            ],
        }

    # --- the one-second tick --------------------------------------------------------------------------------------
    def _ensure_ticking(self) -> None:
        if self._writer is None and self._evidence is not None:
            self._writer = asyncio.get_running_loop().create_task(self._write(), name="media-evidence")
        if self._timer is None and not self._closed:
            self._t0 = self.clock.monotonic()
            self._k = 0
            self._timer = self.clock.call_later(1.0, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self.clock.monotonic()
        try:
            for inc in list(self.incidents.values()):
                self._supervise(inc, now)
        except Exception:
            log.exception("media supervision tick failed")
        finally:
            self._k = max(self._k + 1, int(now - self._t0))
            self._timer = self.clock.call_later(max(0.0, self._t0 + self._k + 1 - now), self._tick)

    def _supervise(self, inc: _Incident, now: float) -> None:
        room = self.rooms[inc.room_code]
        stats = room.bridge.stats()
        room_stats = stats.get("room")
        connected = room.session.state == "connected"
        room_sample = PartySample(
            "room", "room", room_stats.last_in_mono if room_stats else None, delivering_audio=connected
        )
        radiologists: list[PartySample] = []
        for phone in inc.phones.values():
            st = stats.get(phone.party)
            media = getattr(phone.call, "media", None)
            radiologists.append(
                PartySample(
                    phone.party,
                    "phone",
                    st.last_in_mono if st else None,
                    delivering_audio=getattr(media, "state", None) == "running",
                    leg_id=phone.leg_id,
                )
            )
        for party, (_leg, leg_id) in inc.streams.items():
            st = stats.get(party)
            radiologists.append(
                PartySample(
                    party, "pstn", st.last_in_mono if st else None, delivering_audio=True, leg_id=leg_id
                )
            )
        for cid, console in room.consoles.items():
            party = f"browser:{cid}"
            st = stats.get(party)
            last_video = console.video_out.last_sent_mono
            radiologists.append(
                PartySample(
                    party,
                    "browser",
                    st.last_in_mono if st else None,
                    delivering_audio=console.state == "connected",
                    delivering_video=console.state == "connected"
                    and last_video is not None
                    and now - last_video <= 1.5,
                )
            )
        sample = Sample(room_sample, room.session.monitor.last_frame_mono, tuple(radiologists))
        for action in inc.supervision.observe(now, sample):
            self._emit(MediaEvidence(inc.id, action.kind, action.data, action.leg_id))
            if isinstance(action, Alarm):
                self._on_alarm(inc, room, action)
        if now - inc.last_quality >= self.quality_every_s - 1e-6:
            inc.last_quality = now
            self._tasks.spawn(self._quality(inc, room))

    def _on_alarm(self, inc: _Incident, room: Room, alarm: Alarm) -> None:
        party = str(alarm.data.get("party"))
        if alarm.kind == "media.lost":
            log.warning("[incident=%s] media lost from %s: alarm raised, call kept up", inc.id, party)
            phone = inc.phones.get(party)
            if phone is not None and not phone.restore_tried:
                phone.restore_tried = True
                self._tasks.spawn(self._reinvite(inc, phone))
            elif party == "room":
                self._emit(
                    MediaEvidence(
                        inc.id, "media.restore_attempt", {"party": party, "method": "tablet_reconnect"}
                    )
                )
        else:
            phone = inc.phones.get(party)
            if phone is not None:
                phone.restore_tried = False

    async def _reinvite(self, inc: _Incident, phone: _Phone) -> None:
        try:
            await phone.call.unhold()  # a re-INVITE with our current offer, sendrecv
            result = "sent"
        except Exception as exc:  # the peer may be gone: keep the call, log the attempt
            result = f"failed: {exc}"
        self._emit(
            MediaEvidence(
                inc.id,
                "media.restore_attempt",
                {"party": phone.party, "method": "reinvite", "result": result},
                phone.leg_id,
            )
        )

    async def _quality(self, inc: _Incident, room: Room) -> None:
        data: dict[str, Any] = {"room": await room.session.stats()}
        for party, st in room.bridge.stats().items():
            data[party] = {"frames_in": st.frames_in, "dropped": st.dropped, "underruns": st.underruns}
        for phone in inc.phones.values():
            media = getattr(phone.call, "media", None)
            if media is not None:
                s = media.stats
                data[phone.party]["rtp"] = {
                    "packets_in": s.packets_received,
                    "lost": s.lost,
                    "jitter_ms": round(s.jitter_ms, 1),
                }
        self._emit(MediaEvidence(inc.id, "media.quality", data))

    # --- evidence writer -----------------------------------------------------------------------------------------
    def _emit(self, evidence: MediaEvidence) -> None:
        self.history.append(evidence)
        if len(self.history) > 1000:
            del self.history[:100]
        if self._evidence is not None:
            self._queue.put_nowait(evidence)
            if self._writer is None:
                self._writer = asyncio.get_running_loop().create_task(self._write(), name="media-evidence")

    async def _write(self) -> None:
        assert self._evidence is not None
        while True:
            item = await self._queue.get()
            if item is None:
                return
            try:
                await self._evidence(item)
            except Exception:
                log.exception("[incident=%s] could not record %s", item.incident_id, item.kind)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._tasks.close()
        for inc in self.incidents.values():
            for phone in inc.phones.values():
                if phone.watcher is not None:
                    phone.watcher.cancel()
        for room in self.rooms.values():
            for cid in list(room.consoles):
                await self.leave_console(room.code, cid)
            await room.bridge.close()
            await room.session.close()
        if self._writer is not None:
            self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
