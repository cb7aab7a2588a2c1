"""The settings, as frozen dataclasses, built once at start-up by :func:`config.loader.load`.

Every field is already checked and normalised (paths absolute, log level upper-case, URLs without trailing
slash): code that receives a :class:`Settings` never validates it again. See ``config/SCHEMA.md`` for each
key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from comms.errors import CommsError


class ConfigError(CommsError):
    """The configuration was refused. ``problems`` holds one line per bad value (key, value, expectation)."""

    def __init__(self, problems: list[str], source: str = "configuration") -> None:
        self.problems = list(problems)
        self.source = source
        if len(problems) == 1:
            text = f"{source}: {problems[0]}"
        else:
            text = f"{source}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(text)


@dataclass(frozen=True)
class DataSettings:
    dir: Path


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = field(repr=False)  # may hold a password

    @property
    def backend(self) -> str:
        return "postgresql" if self.url.startswith("postgresql") else "sqlite"


@dataclass(frozen=True)
class HttpSettings:
    host: str
    port: int
    public_base_url: str


@dataclass(frozen=True)
class SipSettings:
    host: str
    port: int
    transports: tuple[str, ...]
    tls_port: int | None
    tls_cert: Path | None
    tls_key: Path | None
    from_uri: str


@dataclass(frozen=True)
class MediaSettings:
    host: str
    rtp_port_min: int
    rtp_port_max: int


@dataclass(frozen=True)
class EscalationSettings:
    default_ring_timeout_s: int
    tick_safety_poll_s: float
    watchdog_stale_s: float = 5.0
    """Ticks silent longer than this raise the operational alarm (log + event + ops contact)."""


@dataclass(frozen=True)
class PromptsSettings:
    cache_dir: Path
    voice: str


@dataclass(frozen=True)
class SecuritySettings:
    session_secret: str = field(repr=False)
    cookie_secure: bool
    session_secret_ephemeral: bool = False
    """No secret was configured: a random one was made for this process (sessions end on restart)."""


@dataclass(frozen=True)
class LogSettings:
    level: str


@dataclass(frozen=True)
class NodeSettings:
    id: str = "node-1"
    """Names this process in leases and evidence; must differ between nodes sharing one database."""
    lease_s: float = 15.0
    """How long a claim (an incident being decided, an unsent outbox row) holds before another node may take it."""
    dead_after_s: float = 10.0
    """A node whose heartbeat is older than this is dead: the others end its live legs and move on."""


@dataclass(frozen=True)
class OpsSettings:
    webhook_url: str | None = None
    """The ops contact the watchdog alarms: a signed JSON POST (``None``: log and evidence only)."""
    webhook_secret: str | None = field(default=None, repr=False)
    """The HMAC secret of that POST (required with ``webhook_url``)."""


@dataclass(frozen=True)
class DialInConfig:
    users: tuple[str, ...] = ("reaction",)
    """Request-URI users that reach the technologist dial-in (``sip:reaction@<sip.host>``)."""
    fallback_number: str = "the code team"
    """Spoken to a technologist when nobody accepted."""


@dataclass(frozen=True)
class TwilioConfig:
    account_sid: str
    auth_token: str = field(repr=False)
    from_number: str
    api_base_url: str | None = None
    """Only for tests and staging: where the Twilio REST API is (default: Twilio's own)."""
    webhook_port: int = 0
    """Port of the Twilio webhook listener (its routes are signed by Twilio, not by our sessions)."""
    dialin_number: str | None = None
    """Our Twilio number for the technologist dial-in (E.164); its voice URL is ``<public>/twilio/dialin``."""


@dataclass(frozen=True)
class PagerConfig:
    """The pager channel's gateways (contact kind ``pager``): at least one of WCTP, SNPP or SMTP is set."""

    wctp_url: str | None = None
    """WCTP 1.3 gateway (``wctp:<recipient id>`` addresses)."""
    wctp_sender_id: str = "contrast-comms"
    wctp_security_code: str | None = field(default=None, repr=False)
    snpp_host: str | None = None
    """SNPP gateway, RFC 1861 (``snpp:<pager id>`` addresses)."""
    snpp_port: int = 444
    snpp_level: int = 3
    """1 and 2 are one-way; 3 is two-way (the pager's reply can accept)."""
    snpp_login: str | None = None
    snpp_password: str | None = field(default=None, repr=False)
    smtp_host: str | None = None
    """SMTP relay for e-mail-to-pager (``mailto:<address>`` addresses)."""
    smtp_port: int = 25
    smtp_from: str = "alerts@localhost"
    poll_s: float = 5.0
    """How often a two-way page's status and replies are polled."""
    timeout_s: float = 10.0
    """How long one request to a gateway may take."""


@dataclass(frozen=True)
class IceConfig:
    """ICE servers for the room and console WebRTC sessions (all empty: host candidates only)."""

    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    """TURN servers (coturn with ``use-auth-secret``): browsers get a credential minted per page load."""
    turn_secret: str | None = field(default=None, repr=False)
    """coturn's ``static-auth-secret`` (required with ``turn_urls``); never sent to a browser."""
    turn_ttl_s: int = 86400
    """How long a minted TURN credential is valid."""


@dataclass(frozen=True)
class Settings:
    data: DataSettings
    database: DatabaseSettings
    http: HttpSettings
    sip: SipSettings
    media: MediaSettings
    escalation: EscalationSettings
    prompts: PromptsSettings
    security: SecuritySettings
    log: LogSettings
    source: Path | None = None
    node: NodeSettings = field(default_factory=NodeSettings)
    dialin: DialInConfig = field(default_factory=DialInConfig)
    twilio: TwilioConfig | None = None
    """The TOML file the settings came from (``None``: defaults and environment only)."""
    ops: OpsSettings = field(default_factory=OpsSettings)
    pager: PagerConfig | None = None
    """The pager channel (``None``: no pager gateway configured, pager contacts are skipped)."""
    ice: IceConfig = field(default_factory=IceConfig)
    """STUN/TURN for WebRTC (``[ice]``)."""
