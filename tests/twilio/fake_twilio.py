"""A fake Twilio on 127.0.0.1:0: the REST API the ``twilio`` library calls, and Twilio's part of each call.

REST: ``POST /2010-04-01/Accounts/{AC}/Calls.json``, ``.../Calls/{CA}.json`` (update: cancel/complete) and
``.../Messages.json`` -- form bodies, Basic auth with the account SID and auth token, JSON answers shaped like
Twilio's (a 400 with ``code``/``message`` for a bad request, which the library raises as
``TwilioRestException``).

Twilio's part: for each call, the destination :class:`Phone` decides what happens (a person who keys a script,
an answering machine, no answer, busy). The fake fetches our TwiML URL with ``AnsweredBy``, speaks nothing but
records every ``<Say>``/``<Play>``, fills each ``<Gather>`` from the script (see :mod:`tests.twilio.twiml_caller`)
and posts its action; status callbacks carry ``SequenceNumber``, ``Timestamp`` (RFC 2822, 1 s resolution),
``SipResponseCode``, ``ParentCallSid``, and are delivered at the end of the call **shuffled and each twice**
(or at once, in order, with ``burst=False``). SMS: status callbacks ``sent``/``delivered`` (or
``undelivered``), shuffled and duplicated; :meth:`FakeTwilio.send_sms` plays an inbound SMS. Every webhook is
signed with the auth token over the *public* URL and sent to the real loopback address (a reverse proxy's
view), so the app must validate against its configured public base URL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
import math
import random
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from twilio.request_validator import RequestValidator

from media import audio
from tests.twilio.twiml_caller import Verb, gather_input, parse, parse_verbs


@dataclass
class Phone:
    """How a destination behaves: ``human`` (keys ``keys``), ``machine``, ``no_answer``, ``busy``, ``fail``."""

    answer: str = "human"
    keys: str = "1"
    ring_s: float = 0.05
    pause_s: float = 0.0
    """How long the person thinks before each Gather's keys (a hang-up from our side can come meanwhile)."""
    sms: str = "delivered"  # or "undelivered"
    tone_hz: float | None = None
    """What this person says into a media stream: a tone at this frequency (None: silence)."""


@dataclass
class FakeCall:
    sid: str
    to: str
    from_: str
    url: str
    status_callback: str | None
    events: list[str]
    machine_detection: str | None
    timeout_s: float
    status: str = "queued"
    answered_by: str | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    hangup: asyncio.Event = field(default_factory=asyncio.Event)
    spoken: list[str] = field(default_factory=list)
    statuses: list[dict[str, str]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    direction: str = "outbound-api"
    twiml: list[str] = field(default_factory=list)
    """Every TwiML document this call ran, in order (fetched, Gather/Redirect answers, REST updates)."""
    conferences: list[str] = field(default_factory=list)
    streams: list[FakeStream] = field(default_factory=list)
    updated: asyncio.Event = field(default_factory=asyncio.Event)
    next_twiml: str | None = None
    interrupt: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by a REST update or a hang-up: whatever the call waits on (a pause, a conference, a stream) ends."""


@dataclass
class FakeStream:
    """Twilio's side of one ``<Connect><Stream>``: sends a tone (or silence) as 20 ms µ-law frames, keeps what it
    hears (as 8 kHz int16 PCM frames)."""

    url: str
    parameters: dict[str, str]
    stream_sid: str
    status: int | None = None
    heard: list[Any] = field(default_factory=list)
    sent: int = 0
    closed_by: str = ""


@dataclass
class FakeConference:
    name: str
    sid: str
    participants: set[str] = field(default_factory=set)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    sequence: int = 0


class FakeTwilio:
    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        public_base: str,
        burst: bool = True,
        seed: int = 7,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.public_base = public_base.rstrip("/")
        self.webhook_base = ""  # the app's real address, set by the test once it listens
        self.burst = burst
        self.rng = random.Random(seed)
        self.phones: dict[str, Phone] = {}
        self.calls: dict[str, FakeCall] = {}
        self.messages: list[dict[str, str]] = []
        self.payloads: list[tuple[str, str]] = []
        """Everything we sent out through Twilio: ("say", text), ("sms", body), ("sms_reply", text)."""
        self.webhook_times: list[float] = []
        self.conferences: dict[str, FakeConference] = {}
        self.rest_requests: list[str] = []
        self._validator = RequestValidator(auth_token)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.base_url = ""

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        prefix = f"/2010-04-01/Accounts/{self.account_sid}"
        app.router.add_post(prefix + "/Calls.json", self._create_call)
        app.router.add_post(prefix + "/Calls/{sid}.json", self._update_call)
        app.router.add_post(prefix + "/Messages.json", self._create_message)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        self._http = aiohttp.ClientSession()
        return self.base_url

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- REST -----------------------------------------------------------------------------------------

    def _check_auth(self, request: web.Request) -> web.Response | None:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response(
                {"code": 20003, "message": "Authenticate", "status": 401, "more_info": ""}, status=401
            )
        return None

    @staticmethod
    def _error(code: int, message: str, status: int = 400) -> web.Response:
        return web.json_response(
            {"code": code, "message": message, "status": status, "more_info": ""}, status=status
        )

    async def _create_call(self, request: web.Request) -> web.Response:
        self.rest_requests.append("calls.create")
        if (refused := self._check_auth(request)) is not None:
            return refused
        form = await request.post()
        to, from_, url = str(form.get("To", "")), str(form.get("From", "")), str(form.get("Url", ""))
        if not to.startswith("+") or not url:
            return self._error(21201, f"Invalid 'To' Phone Number: {to}")
        if to not in self.phones:
            return self._error(21217, f"Phone number {to} does not appear to be valid")
        call = FakeCall(
            sid="CA" + secrets.token_hex(16),
            to=to,
            from_=from_,
            url=url,
            status_callback=str(form["StatusCallback"]) if "StatusCallback" in form else None,
            events=[str(v) for v in form.getall("StatusCallbackEvent", [])],
            machine_detection=str(form["MachineDetection"]) if "MachineDetection" in form else None,
            timeout_s=float(str(form.get("Timeout", "60"))),
        )
        self.calls[call.sid] = call
        self._spawn(self._play_call(call))
        return web.json_response(self._call_json(call), status=201)

    def _call_json(self, call: FakeCall) -> dict[str, Any]:
        return {
            "sid": call.sid,
            "account_sid": self.account_sid,
            "to": call.to,
            "from": call.from_,
            "status": call.status,
            "direction": "outbound-api",
            "answered_by": call.answered_by,
            "api_version": "2010-04-01",
        }

    async def _update_call(self, request: web.Request) -> web.Response:
        self.rest_requests.append("calls.update")
        if (refused := self._check_auth(request)) is not None:
            return refused
        call = self.calls.get(request.match_info["sid"])
        if call is None:
            return self._error(20404, "The requested resource was not found", 404)
        form = await request.post()
        status = str(form.get("Status", ""))
        if status == "canceled" and call.status in ("queued", "initiated", "ringing"):
            call.cancel.set()
        elif status == "completed":
            call.cancel.set()
            call.hangup.set()
            call.interrupt.set()
        elif "Twiml" in form:
            if call.status != "in-progress":
                return self._error(21220, "Call is not in-progress. Cannot redirect.")
            call.next_twiml = str(form["Twiml"])
            call.updated.set()
            call.interrupt.set()
        return web.json_response(self._call_json(call))

    async def _create_message(self, request: web.Request) -> web.Response:
        self.rest_requests.append("messages.create")
        if (refused := self._check_auth(request)) is not None:
            return refused
        form = await request.post()
        to, body = str(form.get("To", "")), str(form.get("Body", ""))
        if to not in self.phones:
            return self._error(21211, f"Invalid 'To' Phone Number: {to}")
        sid = "SM" + secrets.token_hex(16)
        msg = {"sid": sid, "to": to, "from": str(form.get("From", "")), "body": body, "status": "queued"}
        self.messages.append(msg)
        self.payloads.append(("sms", body))
        callback = str(form["StatusCallback"]) if "StatusCallback" in form else None
        if callback:
            self._spawn(self._message_statuses(msg, callback, self.phones[to].sms))
        return web.json_response(
            {**msg, "account_sid": self.account_sid, "direction": "outbound-api"}, status=201
        )

    # --- webhooks -------------------------------------------------------------------------------------

    def sign(self, public_url: str, params: dict[str, str]) -> str:
        return str(self._validator.compute_signature(public_url, params))

    async def post_webhook(
        self, public_url: str, params: dict[str, str], *, signature: str | None = "sign"
    ) -> tuple[int, str]:
        """POST ``params`` to our app (at its real address) signed over ``public_url``, as Twilio does."""
        assert self._http is not None and self.webhook_base, "start() and set webhook_base first"
        assert public_url.startswith(self.public_base), f"{public_url} is not under {self.public_base}"
        real = self.webhook_base + public_url[len(self.public_base) :]
        headers = {}
        if signature == "sign":
            headers["X-Twilio-Signature"] = self.sign(public_url, params)
        elif signature is not None:
            headers["X-Twilio-Signature"] = signature
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with self._http.post(real, data=params, headers=headers) as resp:
            text = await resp.text()
        self.webhook_times.append(loop.time() - started)
        return resp.status, text

    def _base_params(self, call: FakeCall) -> dict[str, str]:
        return {
            "AccountSid": self.account_sid,
            "CallSid": call.sid,
            "From": call.from_,
            "To": call.to,
            "Direction": call.direction,
            "ApiVersion": "2010-04-01",
        }

    def _status(self, call: FakeCall, status: str, **extra: str) -> None:
        call.status = status
        event = {"initiated": "initiated", "ringing": "ringing", "in-progress": "answered"}.get(
            status, "completed"
        )
        if call.status_callback is None or event not in call.events:
            return
        params = {
            **self._base_params(call),
            "CallStatus": status,
            "StatusCallbackEvent": event,
            "SequenceNumber": str(len(call.statuses)),
            "Timestamp": email.utils.format_datetime(email.utils.localtime().replace(microsecond=0)),
            "CallbackSource": "call-progress-events",
            "ParentCallSid": "",
            **extra,
        }
        call.statuses.append(params)
        if not self.burst:
            self._spawn(self.post_webhook(call.status_callback, params))

    async def _deliver_statuses(self, call: FakeCall) -> None:
        if not self.burst or call.status_callback is None:
            return
        batch = [p for p in call.statuses for _ in range(2)]
        self.rng.shuffle(batch)
        for params in batch:
            await self.post_webhook(call.status_callback, params)

    async def _wait(self, event: asyncio.Event, seconds: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _play_call(self, call: FakeCall) -> None:
        phone = self.phones[call.to]
        try:
            await asyncio.sleep(0.01)
            self._status(call, "initiated")
            if phone.answer == "fail":
                self._status(call, "failed", SipResponseCode="503")
                return
            self._status(call, "ringing", SipResponseCode="180")
            if phone.answer == "busy":
                self._status(call, "busy", SipResponseCode="486")
                return
            ring = call.timeout_s if phone.answer == "no_answer" else phone.ring_s
            if await self._wait(call.cancel, ring):
                self._status(call, "canceled", SipResponseCode="487")
                return
            if phone.answer == "no_answer":
                self._status(call, "no-answer", SipResponseCode="487")
                return
            detected = "human" if phone.answer == "human" else "machine_start"
            call.answered_by = detected if call.machine_detection else None
            extra = {"AnsweredBy": call.answered_by} if call.answered_by else {}
            self._status(call, "in-progress", SipResponseCode="200", **extra)
            await self._converse(call, phone, extra)
            self._status(call, "completed", SipResponseCode="200", CallDuration="7", **extra)
        finally:
            await self._deliver_statuses(call)
            call.done.set()

    async def _converse(self, call: FakeCall, phone: Phone, extra: dict[str, str]) -> None:
        status, twiml = await self.post_webhook(
            call.url, {**self._base_params(call), "CallStatus": "in-progress", **extra}
        )
        assert status == 200, f"TwiML fetch answered {status}: {twiml}"
        await self._run(call, phone, twiml)

    async def _run(self, call: FakeCall, phone: Phone, twiml: str) -> None:
        """Run TwiML as Twilio does, until the call hangs up or a document ends; a REST update replaces the
        document being run at once."""
        keys = deque(phone.keys)
        while twiml and not call.hangup.is_set():
            call.twiml.append(twiml)
            twiml = await self._document(call, phone, twiml, keys)
            if call.updated.is_set() and not call.hangup.is_set():
                call.updated.clear()
                call.interrupt.clear()
                twiml, call.next_twiml = call.next_twiml or "", None

    async def _document(self, call: FakeCall, phone: Phone, twiml: str, keys: deque[str]) -> str:
        """Run one document; returns the next one ('' when the call is over or the document ended)."""
        params = {**self._base_params(call), "CallStatus": "in-progress"}
        for verb in parse_verbs(twiml):
            if call.updated.is_set() or call.hangup.is_set():
                return ""
            match verb.tag:
                case "Say" | "Play":
                    call.spoken.append(verb.text)
                    self.payloads.append(("say", verb.text))
                case "Pause":
                    await self._wait(call.interrupt, float(verb.attrs.get("length", "1")))
                case "Redirect":
                    status, text = await self.post_webhook(verb.text, params)
                    assert status == 200, f"Redirect answered {status}: {text}"
                    return text
                case "Hangup":
                    return ""
                case "Gather":
                    spec = verb.gather
                    assert spec is not None
                    call.spoken += spec.spoken
                    self.payloads += [("say", text) for text in spec.spoken]
                    if phone.pause_s and await self._wait(call.hangup, phone.pause_s):
                        return ""  # we ended the call while the person was thinking
                    posted = gather_input(spec, keys)
                    if posted is None:
                        call.hangup.set()  # the caller hangs up
                        return ""
                    digits, key = posted
                    status, text = await self.post_webhook(
                        spec.action, {**params, "Digits": digits, "FinishedOnKey": key}
                    )
                    assert status == 200, f"Gather action answered {status}: {text}"
                    return text
                case "Dial":
                    await self._conference(call, verb)
                case "Connect":
                    await self._stream(call, phone, verb)
        return ""

    # --- conferences ----------------------------------------------------------------------------------

    async def _conference(self, call: FakeCall, verb: Verb) -> None:
        name = verb.conference or ""
        conf = self.conferences.get(name)
        if conf is None or conf.ended.is_set():
            conf = self.conferences[name] = FakeConference(name, "CF" + secrets.token_hex(16))
        call.conferences.append(name)
        conf.participants.add(call.sid)
        callback = verb.conference_attrs.get("statusCallback")
        await self._conference_event(conf, callback, "participant-join", call)
        ended = asyncio.get_running_loop().create_task(conf.ended.wait())
        interrupted = asyncio.get_running_loop().create_task(call.interrupt.wait())
        await asyncio.wait({ended, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        interrupted.cancel()
        conf.participants.discard(call.sid)
        await self._conference_event(conf, callback, "participant-leave", call)
        if verb.conference_attrs.get("endConferenceOnExit") == "true" and not conf.ended.is_set():
            conf.ended.set()
            await self._conference_event(conf, callback, "conference-end", call)

    async def _conference_event(
        self, conf: FakeConference, callback: str | None, event: str, call: FakeCall
    ) -> None:
        if not callback:
            return
        conf.sequence += 1
        params = {
            "AccountSid": self.account_sid,
            "ConferenceSid": conf.sid,
            "FriendlyName": conf.name,
            "StatusCallbackEvent": event,
            "SequenceNumber": str(conf.sequence),
            "Timestamp": email.utils.format_datetime(email.utils.localtime().replace(microsecond=0)),
        }
        if event != "conference-end":
            params["CallSid"] = call.sid
        for _ in range(2):  # Twilio may retry: every callback comes twice here
            await self.post_webhook(callback, params)

    # --- media streams --------------------------------------------------------------------------------

    async def _stream(self, call: FakeCall, phone: Phone, verb: Verb) -> None:
        """Open the WebSocket Twilio would open (signed over the public wss URL), send ``phone``'s tone and keep
        what comes back, until our side closes it or the call is interrupted (then send ``stop``)."""
        assert self._http is not None
        url = verb.stream_url or ""
        assert url.startswith("wss://"), f"<Stream url={url!r}>: Twilio only connects to wss://"
        public_host = self.public_base.split("://", 1)[1]
        assert url.startswith(f"wss://{public_host}/"), f"{url} is not under {self.public_base}"
        real = "ws" + self.webhook_base[len("http") :] + url[len(f"wss://{public_host}") :]
        stream = FakeStream(url, dict(verb.parameters), "MZ" + secrets.token_hex(16))
        call.streams.append(stream)
        headers = {"X-Twilio-Signature": self.sign(url, {})}
        try:
            ws = await self._http.ws_connect(real, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            stream.status = exc.status
            return
        stream.status = 101
        await ws.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await ws.send_json(
            {
                "event": "start",
                "sequenceNumber": "1",
                "streamSid": stream.stream_sid,
                "start": {
                    "streamSid": stream.stream_sid,
                    "accountSid": self.account_sid,
                    "callSid": call.sid,
                    "tracks": ["inbound"],
                    "customParameters": stream.parameters,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )

        async def talk() -> None:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            k = 0
            while not ws.closed:
                t = (np.arange(160) + k * 160) / 8000
                level = 0.3 * 32767 if phone.tone_hz else 0.0
                pcm = (np.sin(2 * math.pi * (phone.tone_hz or 0.0) * t) * level).astype(np.int16)
                payload = base64.b64encode(audio.encode("PCMU", pcm)).decode("ascii")
                await ws.send_json(
                    {"event": "media", "streamSid": stream.stream_sid, "media": {"payload": payload}}
                )
                stream.sent += 1
                k += 1
                await asyncio.sleep(max(0.0, t0 + k * 0.02 - loop.time()))

        async def listen() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if data.get("event") == "media":
                    assert data["streamSid"] == stream.stream_sid
                    stream.heard.append(audio.decode("PCMU", base64.b64decode(data["media"]["payload"])))
            stream.closed_by = stream.closed_by or "server"

        loop = asyncio.get_running_loop()
        talker = loop.create_task(talk())
        listener = loop.create_task(listen())
        interrupted = loop.create_task(call.interrupt.wait())
        await asyncio.wait({listener, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        if not listener.done():
            stream.closed_by = "twilio"
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json({"event": "stop", "streamSid": stream.stream_sid})
            await ws.close()
        for task in (talker, listener, interrupted):
            task.cancel()
        await asyncio.gather(talker, listener, interrupted, return_exceptions=True)
        await ws.close()

    async def replay_stream(self, call_sid: str, url: str, parameters: dict[str, str]) -> FakeStream:
        """Open one more stream as if for ``call_sid`` (an attacker replaying a signature and a token): returns
        it once our side has closed it (or after 3 s)."""
        call = FakeCall(call_sid, "", "", "", None, [], None, 0.0, status="in-progress")
        self._spawn(self._interrupt_later(call, 3.0))
        await self._stream(call, Phone(), Verb("Connect", stream_url=url, parameters=dict(parameters)))
        return call.streams[0]

    async def _interrupt_later(self, call: FakeCall, seconds: float) -> None:
        await asyncio.sleep(seconds)
        call.interrupt.set()

    # --- inbound calls --------------------------------------------------------------------------------

    def dial_in(self, from_: str, to: str, phone: Phone) -> FakeCall:
        """A person at ``from_`` calls our number ``to``: Twilio posts the number's voice URL
        (``/twilio/dialin``) and runs what we answer; the status callback (``/twilio/dialin/status``) gets
        ``completed`` when the call ends (shuffled and duplicated like the others)."""
        call = FakeCall(
            sid="CA" + secrets.token_hex(16),
            to=to,
            from_=from_,
            url=self.public_base + "/twilio/dialin",
            status_callback=self.public_base + "/twilio/dialin/status",
            events=["completed"],
            machine_detection=None,
            timeout_s=60.0,
            status="in-progress",
            direction="inbound",
        )
        self.calls[call.sid] = call
        self._spawn(self._inbound(call, phone))
        return call

    def hang_up(self, call: FakeCall) -> None:
        """The person on ``call`` hangs up."""
        call.hangup.set()
        call.interrupt.set()

    async def _inbound(self, call: FakeCall, phone: Phone) -> None:
        try:
            status, twiml = await self.post_webhook(
                call.url, {**self._base_params(call), "Direction": "inbound", "CallStatus": "ringing"}
            )
            assert status == 200, f"dial-in webhook answered {status}: {twiml}"
            await self._run(call, phone, twiml)
            self._status(call, "completed", CallDuration="9")
        finally:
            await self._deliver_statuses(call)
            call.done.set()

    async def _message_statuses(self, msg: dict[str, str], callback: str, outcome: str) -> None:
        await asyncio.sleep(0.01)
        base = {
            "AccountSid": self.account_sid,
            "MessageSid": msg["sid"],
            "SmsSid": msg["sid"],
            "From": msg["from"],
            "To": msg["to"],
        }
        statuses = ["sent", outcome]
        batch = [
            {
                **base,
                "MessageStatus": s,
                "SmsStatus": s,
                **({"ErrorCode": "30003"} if s == "undelivered" else {}),
            }
            for s in statuses
            for _ in range(2)
        ]
        self.rng.shuffle(batch)
        for params in batch:
            await self.post_webhook(callback, params)

    async def send_sms(self, from_: str, body: str, to: str) -> str:
        """An SMS from ``from_`` to our number ``to``: Twilio posts it to the inbound webhook; returns our reply."""
        params = {
            "AccountSid": self.account_sid,
            "MessageSid": "SM" + secrets.token_hex(16),
            "From": from_,
            "To": to,
            "Body": body,
            "NumMedia": "0",
        }
        status, twiml = await self.post_webhook(self.public_base + "/twilio/sms", params)
        assert status == 200, f"inbound SMS answered {status}: {twiml}"
        replies = parse(twiml).messages
        self.payloads += [("sms_reply", r) for r in replies]
        return " ".join(replies)
