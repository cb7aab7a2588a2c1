"""The reference softphone: a pjsua2 (PJSIP) endpoint driven from asyncio.

Theory of operation
-------------------
PJSIP is not thread-safe from Python's point of view, so one dedicated thread (the *engine*, in
:mod:`sip.softphone._engine`) owns the whole pjsua2 library: it calls ``libCreate/libInit/libStart``, every
other pjsua2 API, and ``libDestroy``. It polls ``libHandleEvents(5)`` (``threadCnt=0``,
``mainThreadOnly=True``), and between polls drains a queue of commands from asyncio and runs its own timed
jobs (scripted answers, digits, hang-ups, the delayed release of media objects). Results come back as
``concurrent.futures.Future`` wrapped for asyncio; events come back with ``loop.call_soon_threadsafe``.
asyncio code never holds a SWIG object: calls are named by our own handles (``"c1"``, ``"c2"``…) because pjsua
reuses its call ids.

What a phone does with an incoming call is its :class:`Behaviour` (answer after a delay or never, or reject
with a status; after the answer optionally press digits by RFC 4733 or SIP INFO, play a WAV, record to a WAV,
hang up). Outbound calls follow the same script from the answer on.

pjproject is GPL-2.0-or-later, so ``pjsua2`` is an optional extra: it is imported only when a phone starts,
and its absence raises :class:`SoftphoneUnavailable` saying how to install it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from comms.errors import CommsError

if TYPE_CHECKING:
    from sip.softphone._engine import Engine

log = logging.getLogger(__name__)

DtmfMethod = Literal["rfc4733", "info"]
INSTALL_HINT = "pip install contrast-comms[softphone]"

E = TypeVar("E", bound="PhoneEvent")
T = TypeVar("T")


class SoftphoneError(CommsError):
    """The softphone could not do what it was asked (pjsua2 refused, unknown call, not started)."""


class SoftphoneUnavailable(SoftphoneError):
    """The optional ``pjsua2`` package is not installed."""


@dataclass(frozen=True)
class Behaviour:
    """The script a phone follows.

    For incoming calls: ``reject`` (a status such as 486 or 603) refuses at once; otherwise the phone sends
    180 (if ``ringing``) and answers after ``answer_after`` seconds, or never when it is ``None`` (it rings
    until the caller cancels). For every call, once answered: digits ``press`` are sent ``press_after``
    seconds later by ``dtmf``; ``play`` is played into the call; each call is recorded to
    ``record_dir/<handle>.wav``; the phone hangs up ``hangup_after`` seconds after the answer (``None``: it
    waits for the other side).
    """

    answer_after: float | None = 0.0
    reject: int | None = None
    ringing: bool = True
    press: str = ""
    press_after: float = 2.0
    dtmf: DtmfMethod = "rfc4733"
    hangup_after: float | None = None
    play: Path | None = None
    record_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.reject is not None and not 300 <= self.reject <= 699:
            raise ValueError(f"Behaviour.reject must be a final status 300..699, got {self.reject}")
        if self.dtmf not in ("rfc4733", "info"):
            raise ValueError(f"Behaviour.dtmf must be 'rfc4733' or 'info', got {self.dtmf!r}")
        bad = set(self.press) - set("0123456789*#ABCD")
        if bad:
            raise ValueError(f"Behaviour.press has characters that are not DTMF digits: {sorted(bad)}")


@dataclass(frozen=True)
class SoftphoneConfig:
    """Where the phone listens and who it is.

    Ports 0 take a free port from the OS; ``tcp_port=None`` disables TCP. ``registrar`` (``sip:host:port``)
    makes the phone REGISTER as ``user``; ``proxy`` is an outbound proxy (loose-routed) for every request;
    ``username``/``password`` answer any digest challenge. ``log_file`` receives the full PJSIP log (level 5).
    ``dtmf_payload_type`` renumbers telephone-event in our offers (``None``: PJSIP's 120).
    """

    host: str = "127.0.0.1"
    udp_port: int = 0
    tcp_port: int | None = 0
    user: str = "phone"
    display: str | None = None
    registrar: str | None = None
    proxy: str | None = None
    username: str | None = None
    password: str | None = None
    user_agent: str = "ContrastComms-Softphone/0.1 (pjsua2)"
    log_file: Path | None = None
    console_log_level: int = 0
    dtmf_payload_type: int | None = 101


@dataclass(frozen=True, kw_only=True)
class PhoneEvent:
    """Something that happened on the phone. ``call`` is our handle ("" for phone-wide events)."""

    call: str
    mono: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, kw_only=True)
class IncomingCall(PhoneEvent):
    remote_uri: str
    local_uri: str
    call_id: str


@dataclass(frozen=True, kw_only=True)
class Ringing(PhoneEvent):
    status: int


@dataclass(frozen=True, kw_only=True)
class Answered(PhoneEvent):
    pass


@dataclass(frozen=True, kw_only=True)
class MediaActive(PhoneEvent):
    pass


@dataclass(frozen=True, kw_only=True)
class DtmfReceived(PhoneEvent):
    digit: str
    method: DtmfMethod


@dataclass(frozen=True, kw_only=True)
class DtmfSent(PhoneEvent):
    digits: str
    method: DtmfMethod


@dataclass(frozen=True, kw_only=True)
class Disconnected(PhoneEvent):
    status: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class RecordingClosed(PhoneEvent):
    path: Path


@dataclass(frozen=True, kw_only=True)
class Registered(PhoneEvent):
    status: int
    reason: str


def _load_engine() -> Any:
    try:
        return importlib.import_module("sip.softphone._engine")
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "pjsua2":
            raise SoftphoneUnavailable(
                f"the reference softphone needs the optional pjsua2 package: {INSTALL_HINT}"
            ) from exc
        raise


class Softphone:
    """A pjsua2 softphone on its own thread. One per process (pjsua2 has one library instance)."""

    _running: ClassVar[Softphone | None] = None

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self._behaviour = behaviour or Behaviour()
        self._engine: Engine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[PhoneEvent] = asyncio.Queue()
        self.history: list[PhoneEvent] = []
        self._consumed: set[int] = set()
        self._changed = asyncio.Event()
        self.udp_port = 0
        self.tcp_port: int | None = None
        self.config = SoftphoneConfig()

    async def start(self, config: SoftphoneConfig | None = None, behaviour: Behaviour | None = None) -> int:
        """Start the engine thread; return the UDP port it listens on."""
        if self._engine is not None:
            raise SoftphoneError("softphone already started: call stop() first")
        self.config = config or SoftphoneConfig()
        if behaviour is not None:
            self._behaviour = behaviour
        module = _load_engine()
        if Softphone._running is not None:
            raise SoftphoneError(
                f"a softphone already runs in this process (udp port {Softphone._running.udp_port}): pjsua2 "
                "has one library instance per process; stop it first"
            )
        self._loop = asyncio.get_running_loop()
        engine: Engine = module.Engine(self.config, self._behaviour, self._emit_threadsafe)
        Softphone._running = self
        started = engine.start()
        try:
            udp, tcp = await asyncio.wrap_future(started)
        except BaseException:
            Softphone._running = None
            await asyncio.to_thread(engine.join, 5.0)
            raise
        self._engine = engine
        self.udp_port, self.tcp_port = udp, tcp
        log.info("softphone started on udp %s:%s tcp %s", self.config.host, udp, tcp)
        return udp

    def uri(self, transport: str = "udp") -> str:
        """The SIP URI that reaches this phone."""
        if transport == "tcp":
            return f"sip:{self.config.user}@{self.config.host}:{self.tcp_port};transport=tcp"
        return f"sip:{self.config.user}@{self.config.host}:{self.udp_port}"

    def set_behaviour(self, behaviour: Behaviour) -> None:
        """Script for calls that arrive from now on (and outbound calls dialled without their own script)."""
        self._behaviour = behaviour
        if self._engine is not None:
            # A plain (atomic) attribute store, not a queued command: a call arriving right after this
            # returns must see the new script, even before the engine drains its command queue.
            self._engine.behaviour = behaviour

    async def dial(
        self,
        uri: str,
        *,
        behaviour: Behaviour | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> str:
        """Call ``uri``; return the call handle at once (follow it with :meth:`wait_for`)."""
        script = behaviour or self._behaviour
        hdrs = tuple(headers)
        return await self._run(lambda e: e.dial(uri, script, hdrs))

    async def answer(self, call: str, status: int = 200) -> None:
        await self._run(lambda e: e.answer(call, status))

    async def hangup(self, call: str, status: int | None = None) -> None:
        """End a call: BYE when answered, CANCEL when dialling, ``status`` while it rings here."""
        await self._run(lambda e: e.hangup(call, status))

    async def send_dtmf(self, call: str, digits: str, method: DtmfMethod = "rfc4733") -> None:
        await self._run(lambda e: e.send_dtmf(call, digits, method))

    def events(self) -> AsyncIterator[PhoneEvent]:
        """Every event, in order, as it happens."""

        async def iterate() -> AsyncIterator[PhoneEvent]:
            while True:
                yield await self._queue.get()

        return iterate()

    async def wait_for(
        self,
        kind: type[E],
        *,
        call: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 (the deadline is part of the question)
        where: Callable[[E], bool] | None = None,
    ) -> E:
        """The first event of ``kind`` (for ``call``) not yet returned, past or future; else TimeoutError."""
        async with asyncio.timeout(timeout):
            while True:
                for index, event in enumerate(self.history):
                    if index in self._consumed or not isinstance(event, kind):
                        continue
                    if call is not None and event.call != call:
                        continue
                    if where is not None and not where(event):
                        continue
                    self._consumed.add(index)
                    return event
                self._changed.clear()
                await self._changed.wait()

    async def stop(self) -> None:
        """Hang up every call, destroy the library and join the thread."""
        engine, self._engine = self._engine, None
        if engine is None:
            return
        done = engine.request_stop()
        try:
            await asyncio.wait_for(asyncio.wrap_future(done), 10.0)
        finally:
            await asyncio.to_thread(engine.join, 5.0)
            if not engine.is_alive():
                Softphone._running = None
        log.info("softphone stopped")

    async def __aenter__(self) -> Softphone:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- plumbing --------------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[Engine], T]) -> T:
        if self._engine is None:
            raise SoftphoneError("softphone not started: call start() first")
        future: concurrent.futures.Future[T] = self._engine.submit(fn)
        return await asyncio.wrap_future(future)

    def _emit_threadsafe(self, event: PhoneEvent) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: PhoneEvent) -> None:
        log.debug("softphone event %s", event)
        self.history.append(event)
        self._queue.put_nowait(event)
        self._changed.set()
