"""The pjsua2 side of the softphone: all of it runs on the engine thread (see :mod:`sip.softphone.phone`).

This is the only module of the project that imports ``pjsua2``. Rules learnt the hard way (docs NOTES.md): one
thread does every pjsua2 call from ``libCreate`` to ``libDestroy``; ``sndAutoCloseTime=-1`` and the null sound
device; PCMU/PCMA first; transports bound to the configured host; a ``Call`` object is released inside its
DISCONNECTED callback and its media objects at least 200 ms later on this thread.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pjsua2 as pj

from sip.softphone.phone import (
    Answered,
    Behaviour,
    Disconnected,
    DtmfMethod,
    DtmfReceived,
    DtmfSent,
    IncomingCall,
    MediaActive,
    PhoneEvent,
    RecordingClosed,
    Registered,
    Ringing,
    SoftphoneConfig,
    SoftphoneError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
MEDIA_RELEASE_DELAY = 0.25
_CODEC_PRIORITY = {"PCMU/8000": 255, "PCMA/8000": 254}


@dataclass
class _Slot:
    """One call, as the engine tracks it. ``call`` is dropped inside the DISCONNECTED callback."""

    handle: str
    call: Any
    behaviour: Behaviour
    direction: str
    answered: bool = False
    media_active: bool = False
    ringing_sent: set[int] = field(default_factory=set)
    player: Any = None
    recorder: Any = None
    record_path: Path | None = None


class _PjCall(pj.Call):  # type: ignore[misc]
    def __init__(self, engine: Engine, handle: str, account: Any, call_id: int) -> None:
        super().__init__(account, call_id)
        self.engine = engine
        self.handle = handle

    def onCallState(self, prm: Any) -> None:
        self.engine.guard(self.engine.on_call_state, self.handle)

    def onCallMediaState(self, prm: Any) -> None:
        self.engine.guard(self.engine.on_media_state, self.handle)

    def onDtmfDigit(self, prm: Any) -> None:
        self.engine.guard(self.engine.on_dtmf, self.handle, str(prm.digit), int(prm.method))

    def onCallSdpCreated(self, prm: Any) -> None:
        wanted = self.engine.config.dtmf_payload_type
        if wanted is None or prm.remSdp.wholeSdp:
            return  # an answer keeps the offerer's payload types
        prm.sdp.wholeSdp = renumber_telephone_event(str(prm.sdp.wholeSdp), wanted)


class _PjAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine

    def onIncomingCall(self, prm: Any) -> None:
        self.engine.guard(self.engine.on_incoming, int(prm.callId))

    def onRegState(self, prm: Any) -> None:
        self.engine.emit(Registered(call="", status=int(prm.code), reason=str(prm.reason)))


class Engine(threading.Thread):
    """Owns pjsua2. Methods other than ``start``/``submit``/``request_stop`` run on this thread only."""

    def __init__(
        self, config: SoftphoneConfig, behaviour: Behaviour, emit: Callable[[PhoneEvent], None]
    ) -> None:
        super().__init__(name="softphone-pjsua2", daemon=True)
        self.config = config
        self.behaviour = behaviour
        self.emit = emit
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._jobs: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._handles = itertools.count(1)
        self._slots: dict[str, _Slot] = {}
        self._stopping = False
        self._ready: concurrent.futures.Future[tuple[int, int | None]] = concurrent.futures.Future()
        self._finished: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._ep: Any = None
        self._account: Any = None

    # -- called from other threads ---------------------------------------------------------------------------

    def start(self) -> concurrent.futures.Future[tuple[int, int | None]]:  # type: ignore[override]
        super().start()
        return self._ready

    def submit(self, fn: Callable[[Engine], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(self))
            except BaseException as exc:
                future.set_exception(_translate(exc))

        self._commands.put(run)
        return future

    def request_stop(self) -> concurrent.futures.Future[None]:
        def stop() -> None:
            self._stopping = True

        self._commands.put(stop)
        return self._finished

    # -- the thread ------------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            ports = self._init()
        except BaseException as exc:
            self._ready.set_exception(_translate(exc))
            self._destroy()
            self._finished.set_result(None)
            return
        self._ready.set_result(ports)
        try:
            while not self._stopping:
                self._ep.libHandleEvents(5)
                self._drain()
                self._run_due_jobs()
            self._shutdown()
        except BaseException as exc:
            log.exception("softphone engine failed")
            self._destroy()
            self._finished.set_exception(_translate(exc))
            return
        self._finished.set_result(None)

    def _init(self) -> tuple[int, int | None]:
        cfg = self.config
        ep = pj.Endpoint()
        self._ep = ep
        ep.libCreate()
        ep_cfg = pj.EpConfig()
        ep_cfg.uaConfig.threadCnt = 0
        ep_cfg.uaConfig.mainThreadOnly = True
        ep_cfg.uaConfig.userAgent = cfg.user_agent
        ep_cfg.uaConfig.maxCalls = 4
        ep_cfg.medConfig.sndAutoCloseTime = -1
        ep_cfg.medConfig.noVad = True
        ep_cfg.medConfig.clockRate = 8000  # G.711 only: recordings come out as 8 kHz mono
        ep_cfg.medConfig.sndClockRate = 8000
        ep_cfg.medConfig.ecTailLen = 0
        ep_cfg.logConfig.consoleLevel = cfg.console_log_level
        ep_cfg.logConfig.level = 5 if cfg.log_file else cfg.console_log_level
        if cfg.log_file:
            ep_cfg.logConfig.filename = str(cfg.log_file)
        ep.libInit(ep_cfg)
        ep.audDevManager().setNullDev()
        for codec in ep.codecEnum2():
            # PCMU then PCMA, nothing else: two PJSIP peers would otherwise settle on speex or opus
            codec_id = str(codec.codecId)
            priority = next((p for prefix, p in _CODEC_PRIORITY.items() if codec_id.startswith(prefix)), 0)
            ep.codecSetPriority(codec_id, priority)

        udp_cfg = pj.TransportConfig()
        udp_cfg.boundAddress = cfg.host
        udp_cfg.port = cfg.udp_port
        udp_id = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, udp_cfg)
        udp_port = int(ep.transportGetInfo(udp_id).localName.rsplit(":", 1)[1])
        tcp_port: int | None = None
        if cfg.tcp_port is not None:
            tcp_cfg = pj.TransportConfig()
            tcp_cfg.boundAddress = cfg.host
            tcp_cfg.port = cfg.tcp_port
            tcp_id = ep.transportCreate(pj.PJSIP_TRANSPORT_TCP, tcp_cfg)
            tcp_port = int(ep.transportGetInfo(tcp_id).localName.rsplit(":", 1)[1])
        ep.libStart()

        acc_cfg = pj.AccountConfig()
        display = f'"{cfg.display}" ' if cfg.display else ""
        if cfg.registrar:
            registrar_host = cfg.registrar.split(":", 1)[1].split(";", 1)[0]
            acc_cfg.idUri = f"{display}<sip:{cfg.user}@{registrar_host}>"
            acc_cfg.regConfig.registrarUri = cfg.registrar
            acc_cfg.regConfig.registerOnAdd = True
            acc_cfg.regConfig.timeoutSec = 300
        else:
            acc_cfg.idUri = f"{display}<sip:{cfg.user}@{cfg.host}:{udp_port}>"
            acc_cfg.regConfig.registerOnAdd = False
        if cfg.proxy:
            acc_cfg.sipConfig.proxies.append(cfg.proxy)
        if cfg.username is not None and cfg.password is not None:
            acc_cfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", cfg.username, 0, cfg.password))
        acc_cfg.natConfig.contactRewriteUse = 0
        acc_cfg.natConfig.viaRewriteUse = 0
        acc_cfg.natConfig.sdpNatRewriteUse = 0
        acc_cfg.natConfig.sipOutboundUse = 0
        acc_cfg.mediaConfig.transportConfig.boundAddress = cfg.host
        acc_cfg.mediaConfig.transportConfig.port = 0
        self._account = _PjAccount(self)
        self._account.create(acc_cfg, True)
        return udp_port, tcp_port

    def _drain(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            command()

    def _run_due_jobs(self) -> None:
        now = time.monotonic()
        while self._jobs and self._jobs[0][0] <= now:
            _, _, job = heapq.heappop(self._jobs)
            self.guard(job)

    def later(self, delay: float, job: Callable[[], None]) -> None:
        heapq.heappush(self._jobs, (time.monotonic() + max(0.0, delay), next(self._seq), job))

    def guard(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a callback; an exception must not unwind into PJSIP's C stack."""
        try:
            fn(*args)
        except Exception:
            log.exception("softphone callback %s%r failed", getattr(fn, "__name__", fn), args)

    def _shutdown(self) -> None:
        if self._slots:
            self._ep.hangupAllCalls()
            deadline = time.monotonic() + 2.0
            while self._slots and time.monotonic() < deadline:
                self._ep.libHandleEvents(10)
        # let the 200 ms media releases and final transactions run
        deadline = time.monotonic() + MEDIA_RELEASE_DELAY + 0.05
        while time.monotonic() < deadline:
            self._ep.libHandleEvents(10)
            self._run_due_jobs()
        self._destroy()

    def _destroy(self) -> None:
        for slot in self._slots.values():
            slot.call = None
        self._slots.clear()
        self._jobs.clear()
        if self._account is not None:
            try:
                self._account.shutdown()
            except Exception:
                log.exception("softphone account shutdown failed")
            self._account = None
        if self._ep is not None:
            try:
                # Calls were hung up and waited for in _shutdown; skipping the network part of the teardown
                # (un-REGISTER, waiting for transactions) saves a second per phone.
                self._ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
            except Exception:
                log.exception("softphone libDestroy failed")
            self._ep = None

    # -- commands (engine thread) ----------------------------------------------------------------------------

    def _slot(self, handle: str) -> _Slot:
        slot = self._slots.get(handle)
        if slot is None or slot.call is None:
            raise SoftphoneError(f"no live call {handle!r}: known calls are {sorted(self._slots)}")
        return slot

    def dial(self, uri: str, behaviour: Behaviour, headers: tuple[tuple[str, str], ...]) -> str:
        handle = f"c{next(self._handles)}"
        call = _PjCall(self, handle, self._account, pj.PJSUA_INVALID_ID)
        self._slots[handle] = _Slot(handle, call, behaviour, "outbound")
        prm = pj.CallOpParam(True)
        for name, value in headers:
            header = pj.SipHeader()
            header.hName, header.hValue = name, value
            prm.txOption.headers.append(header)
        try:
            call.makeCall(uri, prm)
        except BaseException:
            self._slots.pop(handle, None)
            raise
        return handle

    def answer(self, handle: str, status: int = 200) -> None:
        slot = self._slot(handle)
        prm = pj.CallOpParam()
        prm.statusCode = status
        slot.call.answer(prm)

    def hangup(self, handle: str, status: int | None = None) -> None:
        slot = self._slot(handle)
        prm = pj.CallOpParam()
        if status is not None:
            prm.statusCode = status
        slot.call.hangup(prm)

    def send_dtmf(self, handle: str, digits: str, method: DtmfMethod) -> None:
        slot = self._slot(handle)
        prm = pj.CallSendDtmfParam()
        prm.digits = digits
        prm.duration = 160
        prm.method = pj.PJSUA_DTMF_METHOD_SIP_INFO if method == "info" else pj.PJSUA_DTMF_METHOD_RFC2833
        slot.call.sendDtmf(prm)
        self.emit(DtmfSent(call=handle, digits=digits, method=method))

    # -- callbacks (engine thread) ---------------------------------------------------------------------------

    def on_incoming(self, call_id: int) -> None:
        handle = f"c{next(self._handles)}"
        call = _PjCall(self, handle, self._account, call_id)
        behaviour = self.behaviour
        slot = _Slot(handle, call, behaviour, "inbound")
        self._slots[handle] = slot
        info = call.getInfo()
        self.emit(
            IncomingCall(
                call=handle,
                remote_uri=str(info.remoteUri),
                local_uri=str(info.localUri),
                call_id=str(info.callIdString),
            )
        )
        if behaviour.reject is not None:
            self.hangup(handle, behaviour.reject)
            return
        if behaviour.ringing:
            self.answer(handle, 180)
        if behaviour.answer_after is not None:
            self.later(behaviour.answer_after, lambda: self._answer_if_ringing(handle))

    def _answer_if_ringing(self, handle: str) -> None:
        slot = self._slots.get(handle)
        if slot is not None and slot.call is not None and not slot.answered:
            self.answer(handle, 200)

    def on_call_state(self, handle: str) -> None:
        slot = self._slots.get(handle)
        if slot is None or slot.call is None:
            return
        info = slot.call.getInfo()
        state = info.state
        if state == pj.PJSIP_INV_STATE_EARLY and slot.direction == "outbound":
            status = int(info.lastStatusCode)
            if status not in slot.ringing_sent:
                slot.ringing_sent.add(status)
                self.emit(Ringing(call=handle, status=status))
        elif state == pj.PJSIP_INV_STATE_CONFIRMED and not slot.answered:
            slot.answered = True
            self.emit(Answered(call=handle))
            self._script_after_answer(slot)
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            status, reason = int(info.lastStatusCode), str(info.lastReason)
            # Release the Call object inside its own DISCONNECTED callback (pjsua reuses call ids); the media
            # objects go MEDIA_RELEASE_DELAY later, on this thread.
            slot.call = None
            self._slots.pop(handle, None)
            self.later(MEDIA_RELEASE_DELAY, lambda: self._release_media(slot))
            self.emit(Disconnected(call=handle, status=status, reason=reason))

    def _script_after_answer(self, slot: _Slot) -> None:
        handle, script = slot.handle, slot.behaviour
        if script.press:
            self.later(script.press_after, lambda: self._press(handle, script.press, script.dtmf))
        if script.hangup_after is not None:
            self.later(script.hangup_after, lambda: self._hangup_if_live(handle))

    def _press(self, handle: str, digits: str, method: DtmfMethod) -> None:
        if handle in self._slots and self._slots[handle].call is not None:
            self.send_dtmf(handle, digits, method)

    def _hangup_if_live(self, handle: str) -> None:
        if handle in self._slots and self._slots[handle].call is not None:
            self.hangup(handle)

    def _release_media(self, slot: _Slot) -> None:
        slot.player = None
        recorder, slot.recorder = slot.recorder, None
        if recorder is not None:
            # pjmedia 2.15 removes conference ports asynchronously: the WAV file is completed (data flushed,
            # RIFF sizes written) on the conference clock tick after the recorder is deleted, so RecordingClosed
            # waits until the file says it is complete.
            del recorder
            if slot.record_path is not None:
                self._announce_recording(slot.handle, slot.record_path, time.monotonic() + 2.0)

    def _announce_recording(self, handle: str, path: Path, give_up_at: float) -> None:
        if _wav_complete(path) or time.monotonic() > give_up_at:
            self.emit(RecordingClosed(call=handle, path=path))
        else:
            self.later(0.01, lambda: self._announce_recording(handle, path, give_up_at))

    def on_media_state(self, handle: str) -> None:
        slot = self._slots.get(handle)
        if slot is None or slot.call is None:
            return
        info = slot.call.getInfo()
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO or media.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                continue
            audio = slot.call.getAudioMedia(index)
            script = slot.behaviour
            if script.play is not None and slot.player is None:
                player = pj.AudioMediaPlayer()
                player.createPlayer(str(script.play), pj.PJMEDIA_FILE_NO_LOOP)
                player.startTransmit(audio)
                slot.player = player
            if script.record_dir is not None and slot.recorder is None:
                path = script.record_dir / f"{handle}.wav"
                recorder = pj.AudioMediaRecorder()
                recorder.createRecorder(str(path))
                audio.startTransmit(recorder)
                slot.recorder, slot.record_path = recorder, path
            if not slot.media_active:
                slot.media_active = True
                self.emit(MediaActive(call=handle))

    def on_dtmf(self, handle: str, digit: str, method: int) -> None:
        name: DtmfMethod = "info" if method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc4733"
        self.emit(DtmfReceived(call=handle, digit=digit, method=name))


def _wav_complete(path: Path) -> bool:
    """True when the RIFF header's size field matches the file's size (pjmedia writes it last)."""
    try:
        with path.open("rb") as wav:
            head = wav.read(8)
            size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 8 and head[:4] == b"RIFF" and int.from_bytes(head[4:], "little") + 8 == size


def renumber_telephone_event(sdp: str, payload_type: int) -> str:
    """Give telephone-event/8000 the payload type ``payload_type`` in an SDP offer (PJSIP picks 120).

    Most phones, and SIPp's RFC 4733 captures, use 101; a peer that sends 101 to a PJSIP that offered 120 is
    ignored.
    """
    found = re.search(r"^a=rtpmap:(\d+) telephone-event/8000", sdp, re.MULTILINE)
    if found is None or int(found.group(1)) == payload_type:
        return sdp
    old = found.group(1)
    if re.search(rf"^a=rtpmap:{payload_type} ", sdp, re.MULTILINE):
        return sdp  # the wanted number is taken by another format
    lines = []
    for line in sdp.split("\r\n"):
        if line.startswith("m=audio "):
            head, *formats = line.split(" ")
            parts = [head, *formats[:2], *(str(payload_type) if f == old else f for f in formats[2:])]
            line = " ".join(parts)
        elif line.startswith((f"a=rtpmap:{old} ", f"a=fmtp:{old} ")):
            line = line.replace(f":{old} ", f":{payload_type} ", 1)
        lines.append(line)
    return "\r\n".join(lines)


def _translate(exc: BaseException) -> BaseException:
    """pjsua2 raises its own ``Error`` objects; turn them into a SoftphoneError naming what failed."""
    if isinstance(exc, pj.Error):
        return SoftphoneError(f"pjsua2 {exc.title}: {exc.reason} (status {exc.status})")
    return exc
