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
