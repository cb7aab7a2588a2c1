"""The composition root: wires the store, the SIP user agent, the prompts, the channels, the escalation runner
and the web app into one running service. Every adapter is built here and nowhere else."""

from __future__ import annotations

import logging
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from comms.clock import Clock, SystemClock
from comms.db.engine import migrate, node_engine, session_factory
from comms.db.inline_sqlite import Checkpointer
from comms.twilio_web import build_twilio_app
from comms.web import media_routes
from comms.web.app import build_app
from comms.web.context import WebServices
from config.settings import Settings
from escalation.channel import Channel
from escalation.dialin import DialIn, DialInSettings, chain_accepted
from escalation.onsite import SipAnnouncer
from escalation.pager import PagerChannel, PagerSettings
from escalation.runner import EscalationRunner
from escalation.sip_channel import SipChannel
from escalation.twilio_channel import (
    TwilioSettings,
    TwilioSmsChannel,
    TwilioVoiceChannel,
    close_twilio_client,
    twilio_client,
)
from escalation.twilio_dialin import TwilioDialIn
from escalation.twilio_streams import StreamGrants, chain_twilio_accepted, room_stream_handler
from escalation.video_link import VideoLinkSender
from escalation.watchdog import OpsContact, Watchdog
from ivr.prompts import PromptRenderer
from ivr.twiml import Voice
from media.gateway import MediaGateway
from media.turn import TurnRest
from media.webrtc import IceServer
from sip.ua import UaConfig, UserAgent

log = logging.getLogger(__name__)


def ice_settings(settings: Settings) -> tuple[tuple[IceServer, ...], TurnRest | None]:
    """``AppConfig.ice_servers`` and ``AppConfig.turn`` from ``[ice]`` (STUN as is; TURN via its secret)."""
    ice = settings.ice
    stun = (IceServer(ice.stun_urls),) if ice.stun_urls else ()
    if not ice.turn_urls or ice.turn_secret is None:
        return stun, None
    return stun, TurnRest(ice.turn_urls, ice.turn_secret, ice.turn_ttl_s)


def pager_settings(settings: Settings) -> PagerSettings | None:
    """The pager channel's settings from ``[pager]`` (``None`` when no pager gateway is configured): the same
    fields, plus the public URL the pages link to."""
    if settings.pager is None:
        return None
    return PagerSettings(**asdict(settings.pager), public_base_url=settings.http.public_base_url)


@dataclass(frozen=True)
class AppConfig:
    """What the service needs to start (built from :class:`config.settings.Settings` by the CLI)."""

    database_url: str
    data_dir: Path
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    sip_host: str = "127.0.0.1"
    sip_udp_port: int = 5060
    sip_tcp_port: int | None = 5060
    sip_from_uri: str = "sip:alerts@127.0.0.1"
    node_id: str = "node-1"
    session_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    cookie_secure: bool = False
    prompt_cache_dir: Path | None = None
    voice: str = "en-us"
    safety_poll_s: float = 1.0
    ivr_timeout_s: float = 5.0
    min_ring_s: float = 10.0
    lease_s: float = 15.0
    node_dead_after_s: float = 10.0
    watchdog_stale_s: float = 5.0
    ops_webhook_url: str | None = None
    """The ops contact the watchdog alarms (signed with ``webhook_secret``)."""
    webhook_secret: bytes = b""
    dialin: DialInSettings | None = field(default_factory=DialInSettings)
    """The technologist dial-in (``sip:reaction@<sip_host>``); ``None`` refuses inbound calls."""
    twilio: TwilioSettings | None = None
    """Twilio voice and SMS channels; their webhooks listen on ``twilio_port`` (Twilio signs them)."""
    twilio_port: int = 0
    pager: PagerSettings | None = None
    """The pager channel (WCTP, SNPP, e-mail) for ``pager`` contacts; ``None``: no pager gateway."""
    ice_servers: tuple[IceServer, ...] = ()
    """STUN/TURN servers for the room and console WebRTC sessions (none: host candidates only)."""
    turn: TurnRest | None = None
    """TURN servers whose short-lived credentials are minted per page load from coturn's shared secret."""


class CommsApp:
    """One Contrast Comms node."""

    def __init__(self, config: AppConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.engine: AsyncEngine | None = None
        self._checkpointer: Checkpointer | None = None
        self.sessions: async_sessionmaker[AsyncSession] | None = None
        self.ua: UserAgent | None = None
        self.runner: EscalationRunner | None = None
        self.watchdog: Watchdog | None = None
        self.dialin: DialIn | None = None
        self.prompts: PromptRenderer | None = None
        self._web: web.AppRunner | None = None
        self._twilio_web: web.AppRunner | None = None
        self._twilio_client: object | None = None
        self.twilio_dialin: TwilioDialIn | None = None
        self._pager: PagerChannel | None = None
        self.gateway: MediaGateway | None = None
        self.video_links: VideoLinkSender | None = None
        self.http_port: int = config.http_port
        self.twilio_port: int = config.twilio_port

    @property
    def http_url(self) -> str:
        return f"http://{self.config.http_host}:{self.http_port}"

    async def start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        await migrate(cfg.database_url)
        self.engine, self._checkpointer = node_engine(cfg.database_url)
        self.sessions = session_factory(self.engine)
        self.ua = await UserAgent.start(
            self.clock, UaConfig(host=cfg.sip_host, udp_port=cfg.sip_udp_port, tcp_port=cfg.sip_tcp_port)
        )
        self.prompts = PromptRenderer(cfg.prompt_cache_dir or cfg.data_dir / "prompts", voice=cfg.voice)
        self.gateway = MediaGateway(
            self.clock,
            ice_servers=cfg.ice_servers,
            turn=cfg.turn,
            evidence=media_routes.db_evidence_sink(self.sessions, self.clock, source=cfg.node_id),
        )
        channel = SipChannel(
            self.ua, self.prompts, self.clock, from_uri=cfg.sip_from_uri, ivr_timeout_s=cfg.ivr_timeout_s
        )
        channel.on_accepted = self.gateway.on_accepted
        channels: dict[str, Channel] = {channel.kind: channel}
        voice: TwilioVoiceChannel | None = None
        sms: TwilioSmsChannel | None = None
        grants = StreamGrants(self.clock)
        if cfg.twilio is not None:
            self._twilio_client = client = twilio_client(cfg.twilio)
            voice = TwilioVoiceChannel(client, cfg.twilio, self.clock, self.sessions)
            # an accepted radiologist on a Twilio call hears the room through a media stream
            voice.on_accepted = room_stream_handler(self.gateway, grants, cfg.twilio.public_base_url)
            sms = TwilioSmsChannel(client, cfg.twilio, self.clock, self.sessions)
            channels[voice.kind] = voice
            channels[sms.kind] = sms
        if cfg.pager is not None:
            self._pager = PagerChannel(cfg.pager, self.clock)
            channels[self._pager.kind] = self._pager
        self.runner = EscalationRunner(
            self.sessions,
            self.clock,
            node_id=cfg.node_id,
            channels=channels,
            announcers={"sip": SipAnnouncer(self.ua, self.prompts, from_uri=cfg.sip_from_uri)},
            safety_poll_s=cfg.safety_poll_s,
            min_ring_s=cfg.min_ring_s,
            lease_s=cfg.lease_s,
            node_dead_after_s=cfg.node_dead_after_s,
        )
        await self.runner.start()
        if cfg.dialin is not None:
            self.dialin = DialIn(
                self.sessions, self.runner, self.prompts, self.clock, cfg.dialin, node_id=cfg.node_id
            )
            self.ua.on_incoming(self.dialin.handle)
            # a technologist waiting on the line gets the radiologist first; otherwise the room's live session
            channel.on_accepted = chain_accepted(self.dialin.on_accepted, self.gateway.on_accepted)
            if cfg.twilio is not None and voice is not None and voice.on_accepted is not None:
                # likewise a radiologist who accepts on a Twilio call: a media stream bridged to the caller's leg
                streamed = self.dialin.twilio_accepted_handler(
                    grants, cfg.twilio.public_base_url, Voice(cfg.twilio.voice, cfg.twilio.language)
                )
                voice.on_accepted = chain_twilio_accepted(streamed, voice.on_accepted)
        if cfg.twilio is not None and cfg.twilio.dialin_number is not None and voice is not None:
            self.twilio_dialin = tdi = TwilioDialIn(
                self.sessions,
                self.runner,
                self._twilio_client,
                cfg.twilio,
                self.clock,
                grants,
                cfg.dialin,
                node_id=cfg.node_id,
                prompts=self.prompts,
            )
            # a technologist waiting on the Twilio number gets the radiologist first (a conference, or a stream
            # bridged to the radiologist's SIP leg); otherwise the room
            assert voice.on_accepted is not None
            voice.on_accepted = chain_twilio_accepted(tdi.on_twilio_accepted, voice.on_accepted)
            first = (self.dialin.on_accepted,) if self.dialin is not None else ()
            channel.on_accepted = chain_accepted(*first, tdi.on_sip_accepted, self.gateway.on_accepted)
        # after the accept chains are final: a radiologist who accepted on a phone is texted the console link
        # (in the background, once the chain has joined the call); the link is under the public base URL
        gateways = [g.public_base_url for g in (cfg.twilio, cfg.pager) if g is not None]
        self.video_links = links = VideoLinkSender(
            self.sessions,
            self.clock,
            public_base_url=gateways[0] if gateways else f"http://{cfg.http_host}:{cfg.http_port}",
            node_id=cfg.node_id,
            twilio=cfg.twilio,
            twilio_client=self._twilio_client,
            pager=cfg.pager,
        )
        if channel.on_accepted is not None:
            channel.on_accepted = links.sip_hook(channel.on_accepted, prompts=self.prompts)
        if voice is not None and voice.on_accepted is not None:
            voice.on_accepted = links.twilio_hook(voice.on_accepted)
        if sms is not None:
            sms.attach(self.runner)
        # the watchdog runs in a thread with its own engine and ops client: a stalled loop still raises it
        ops = None
        if cfg.ops_webhook_url and cfg.webhook_secret:
            ops = OpsContact(cfg.ops_webhook_url, cfg.webhook_secret)
        self.watchdog = Watchdog(
            self.runner,
            self.clock,
            database_url=cfg.database_url,
            ops=ops,
            stale_after_s=cfg.watchdog_stale_s,
        )
        self.watchdog.start()
        services = WebServices(
            session_factory=self.sessions,
            clock=self.clock,
            runner=self.runner,
            session_secret=cfg.session_secret,
            cookie_secure=cfg.cookie_secure,
        )
        http_app = build_app(services)
        media_routes.install(http_app, self.gateway)
        self._web = web.AppRunner(http_app, access_log=None)
        await self._web.setup()
        site = web.TCPSite(self._web, cfg.http_host, cfg.http_port)
        await site.start()
        for address in self._web.addresses:  # the real port when 0 was asked for
            self.http_port = int(address[1])
            break
        if cfg.twilio is not None:
            hooks = build_twilio_app(
                cfg.twilio,
                sessions=self.sessions,
                clock=self.clock,
                node_id=cfg.node_id,
                voice=voice,
                sms=sms,
                dialin=self.twilio_dialin,
                grants=grants,
            )
            self._twilio_web = web.AppRunner(hooks, access_log=None)
            await self._twilio_web.setup()
            await web.TCPSite(self._twilio_web, cfg.http_host, cfg.twilio_port).start()
            for address in self._twilio_web.addresses:
                self.twilio_port = int(address[1])
                break
        log.info(
            "Contrast Comms node %s: HTTP %s, SIP %s", cfg.node_id, self.http_url, self.ua.address("UDP")
        )

    async def stop(self) -> None:
        if self._web is not None:
            await self._web.cleanup()
        if self._twilio_web is not None:
            await self._twilio_web.cleanup()
        if self.watchdog is not None:
            await self.watchdog.stop()
        if self.dialin is not None:
            await self.dialin.close()
        if self.twilio_dialin is not None:
            await self.twilio_dialin.close()
        if self.video_links is not None:
            await self.video_links.close()
        if self.runner is not None:
            await self.runner.stop()
        if self.gateway is not None:
            await self.gateway.close()
        if self._pager is not None:
            await self._pager.close()
        if self._twilio_client is not None:
            await close_twilio_client(self._twilio_client)
        if self.ua is not None:
            await self.ua.close()
        if self.engine is not None:
            await self.engine.dispose()
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
