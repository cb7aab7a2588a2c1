"""Load the settings: defaults, then the TOML file, then ``COMMS_*`` environment overrides; check once.

Theory of operation
-------------------
``SCHEMA`` lists every section and key with its type, default and check. :func:`load` reads the TOML file (if
any), overlays the environment, converts and checks every value, derives the defaults that depend on others
(database URL, public base URL, SIP From URI, prompt cache, cookie flag), runs the cross-key checks, and
either returns a frozen :class:`~config.settings.Settings` or raises one :class:`~config.settings.ConfigError`
listing *every* problem, each as ``key = value: expected ...`` (``sip.port = 70000: expected 1–65535 ...``).

Environment overrides are ``COMMS_<SECTION>__<KEY>`` (two underscores between section and key, because keys
contain single underscores: ``COMMS_MEDIA__RTP_PORT_MIN=20000``). Values are text converted to the key's type:
integers, floats, booleans (``true/false/1/0/yes/no/on/off``), lists as comma-separated items (``udp,tcp``),
an empty value for an optional key means unset. A ``COMMS_`` variable naming an unknown key is refused with a
"did you mean"; one written with a single underscore (``COMMS_SIP_PORT``) is refused with the right spelling;
other ``COMMS_*`` variables (``COMMS_CONFIG`` ...) are not settings and are ignored.

Relative paths are resolved against the working directory at start-up (as the CLI's own path arguments are).
This module imports the standard library only (import-linter contract: no asyncio, no sqlalchemy).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from config.settings import (
    ConfigError,
    DatabaseSettings,
    DataSettings,
    DialInConfig,
    EscalationSettings,
    HttpSettings,
    IceConfig,
    LogSettings,
    MediaSettings,
    NodeSettings,
    OpsSettings,
    PagerConfig,
    PromptsSettings,
    SecuritySettings,
    Settings,
    SipSettings,
    TwilioConfig,
)

ENV_PREFIX = "COMMS_"
TRANSPORTS = ("udp", "tcp", "tls")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Refused(Exception):
    """A value failed its check; the argument is what was expected."""


# -------------------------------------------------------------------------------------------------- checks


PORT = "1–65535, or 0 for a port chosen by the OS"
RTP_PORT = "1024–65535"
RING_TIMEOUT = "10–120 seconds"
POLL = "0.05–60 seconds"


def _port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise _Refused(PORT)
    return value


def _rtp_port(value: int) -> int:
    if not 1024 <= value <= 65535:
        raise _Refused(RTP_PORT)
    return value


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*"
)


def _host(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        raise _Refused("an IP address or a host name such as 127.0.0.1")
    return value.lower()


def _nonempty(value: str) -> str:
    if not value.strip():
        raise _Refused("a non-empty string")
    return value


def _base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise _Refused(
            "an http:// or https:// URL with a host and no query, such as https://comms.example.org"
        )
    try:
        _ = parts.port
    except ValueError as exc:
        raise _Refused("an http:// or https:// URL with a valid port") from exc
    return value.rstrip("/")


_SIP_URI = re.compile(r"sips?:[^@\s:;]+@[A-Za-z0-9.\-\[\]:]+(;[^\s]*)?")


def _from_uri(value: str) -> str:
    if not _SIP_URI.fullmatch(value):
        raise _Refused("a SIP URI with user and host, such as sip:comms@example.org")
    return value


def _transports(value: list[str]) -> tuple[str, ...]:
    norm = [v.strip().lower() for v in value]
    if not norm or any(v not in TRANSPORTS for v in norm) or len(set(norm)) != len(norm):
        raise _Refused(f"a non-empty list of distinct transports from {list(TRANSPORTS)}")
    return tuple(norm)


def _ring_timeout(value: int) -> int:
    if not 10 <= value <= 120:
        raise _Refused(RING_TIMEOUT)
    return value


def _poll(value: float) -> float:
    if not 0.05 <= value <= 60.0:
        raise _Refused(POLL)
    return float(value)


SECONDS = "1–300 seconds"


def _seconds(value: float) -> float:
    if not 1.0 <= value <= 300.0:
        raise _Refused(SECONDS)
    return float(value)


def _webhook_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        raise _Refused("an http:// or https:// URL such as https://ops.example.org/hooks/comms")
    return value


def _webhook_secret(value: str) -> str:
    if len(value) < 16:
        raise _Refused("at least 16 characters (the HMAC-SHA256 key shared with the receiver)")
    return value


def _voice(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_+\-]{1,40}", value):
        raise _Refused("an espeak-ng voice name such as en-us")
    return value


def _secret(value: str) -> str:
    if len(value) < 32:
        raise _Refused(
            "at least 32 characters (make one with: python3 -c "
            "'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return value


def _level(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise _Refused(f"one of {', '.join(LOG_LEVELS)}")
    return value.upper()


def _node_id(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise _Refused("1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def _sip_users(value: list[str]) -> tuple[str, ...]:
    if not value or any(not re.fullmatch(r"[A-Za-z0-9_.!~*'()&=+$,;?/-]+", u) for u in value):
        raise _Refused('a non-empty list of SIP user parts such as ["reaction"]')
    return tuple(value)


def _account_sid(value: str) -> str:
    if not re.fullmatch(r"AC[0-9a-fA-F]{32}", value):
        raise _Refused("a Twilio Account SID: 'AC' followed by 32 hex digits")
    return value


def _e164(value: str) -> str:
    if not re.fullmatch(r"\+[1-9][0-9]{6,14}", value):
        raise _Refused("an E.164 number such as +13125550100")
    return value


REMOTE_PORT = "1–65535"
PAGER_TIMEOUT = "0.5–60 seconds"


def _remote_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise _Refused(REMOTE_PORT)
    return value


def _gateway_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        raise _Refused(
            "an http:// or https:// URL of the WCTP gateway, such as https://wctp.example.net/wctp"
        )
    try:
        _ = parts.port
    except ValueError as exc:
        raise _Refused("an http:// or https:// URL with a valid port") from exc
    return value


def _pager_word(value: str) -> str:
    # sent inside an SNPP command line or a WCTP attribute: one word of printable ASCII
    if not re.fullmatch(r"[!-~]{1,128}", value):
        raise _Refused("1-128 printable ASCII characters without spaces")
    return value


def _snpp_level(value: int) -> int:
    if value not in (1, 2, 3):
        raise _Refused("1, 2 or 3 (RFC 1861 level; 3 is two-way)")
    return value


def _mail_from(value: str) -> str:
    if not re.fullmatch(r"[^@\s<>,;]+@[A-Za-z0-9.\-]+", value):
        raise _Refused("one e-mail address such as alerts@comms.example.org")
    return value


def _pager_timeout(value: float) -> float:
    if not 0.5 <= value <= 60.0:
        raise _Refused(PAGER_TIMEOUT)
    return float(value)


TURN_TTL = "60–604800 seconds (1 minute to 7 days)"


def _ice_urls(scheme: tuple[str, ...], example: str) -> Callable[[list[str]], tuple[str, ...]]:
    def check(value: list[str]) -> tuple[str, ...]:
        for url in value:
            rest = url.split(":", 1)[1] if url.startswith(scheme) else ""
            host = rest.split("?", 1)[0].rsplit(":", 1)[0].strip("[]")
            if not host or any(c.isspace() for c in url):
                raise _Refused(f"a list of {' or '.join(scheme)} URLs such as {example!r}")
        return tuple(value)

    return check


def _turn_secret(value: str) -> str:
    if len(value) < 16:
        raise _Refused("at least 16 characters (coturn's static-auth-secret)")
    return value


def _turn_ttl(value: int) -> int:
    if not 60 <= value <= 604800:
        raise _Refused(TURN_TTL)
    return value


def _db_url(value: str) -> str:
    if value.startswith("sqlite+aiosqlite:///") and len(value) > len("sqlite+aiosqlite:///"):
        return value
    if re.fullmatch(r"postgresql\+asyncpg://[^/\s]*/[^/\s?]+(\?\S*)?", value):
        return value
    raise _Refused("sqlite+aiosqlite:///<file> or postgresql+asyncpg://user@host:port/dbname")


# -------------------------------------------------------------------------------------------------- schema

DERIVED = object()
"""Default computed from other keys after everything else is known."""


@dataclass(frozen=True)
class Key:
    kind: str  # int | float | bool | str | path | list
    default: Any
    check: Callable[[Any], Any] | None = None
    optional: bool = False
    hint: str = ""
    """The range, said after the type when a value has the wrong type ("an integer 1–65535 ...")."""


SCHEMA: dict[str, dict[str, Key]] = {
    "data": {"dir": Key("path", "var")},
    "database": {"url": Key("str", DERIVED, _db_url)},
    "http": {
        "host": Key("str", "127.0.0.1", _host),
        "port": Key("int", 8080, _port, hint=PORT),
        "public_base_url": Key("str", DERIVED, _base_url),
    },
    "sip": {
        "host": Key("str", "127.0.0.1", _host),
        "port": Key("int", 5060, _port, hint=PORT),
        "transports": Key("list", ["udp", "tcp"], _transports),
        "tls_port": Key("int", None, _port, optional=True, hint=PORT),
        "tls_cert": Key("path", None, optional=True),
        "tls_key": Key("path", None, optional=True),
        "from_uri": Key("str", DERIVED, _from_uri),
    },
    "media": {
        "host": Key("str", "127.0.0.1", _host),
        "rtp_port_min": Key("int", 20000, _rtp_port, hint=RTP_PORT),
        "rtp_port_max": Key("int", 20999, _rtp_port, hint=RTP_PORT),
    },
    "escalation": {
        "default_ring_timeout_s": Key("int", 30, _ring_timeout, hint=RING_TIMEOUT),
        "tick_safety_poll_s": Key("float", 1.0, _poll, hint=POLL),
        "watchdog_stale_s": Key("float", 5.0, _seconds, hint=SECONDS),
    },
    "prompts": {"cache_dir": Key("path", DERIVED), "voice": Key("str", "en-us", _voice)},
    "security": {
        "session_secret": Key("str", DERIVED, _secret),
        "cookie_secure": Key("bool", DERIVED),
    },
    "log": {"level": Key("str", "INFO", _level)},
    "node": {
        "id": Key("str", "node-1", _node_id),
        "lease_s": Key("float", 15.0, _seconds, hint=SECONDS),
        "dead_after_s": Key("float", 10.0, _seconds, hint=SECONDS),
    },
    "ops": {
        "webhook_url": Key("str", None, _webhook_url, optional=True),
        "webhook_secret": Key("str", None, _webhook_secret, optional=True),
    },
    "dialin": {
        "users": Key("list", ["reaction"], _sip_users),
        "fallback_number": Key("str", "the code team", _nonempty),
    },
    "twilio": {
        "account_sid": Key("str", None, _account_sid, optional=True),
        "auth_token": Key("str", None, _nonempty, optional=True),
        "from_number": Key("str", None, _e164, optional=True),
        "api_base_url": Key("str", None, _base_url, optional=True),
        "webhook_port": Key("int", 0, _port, hint=PORT),
        "dialin_number": Key("str", None, _e164, optional=True),
    },
    "ice": {
        "stun_urls": Key("list", [], _ice_urls(("stun:",), "stun:turn.example.org:3478")),
        "turn_urls": Key(
            "list", [], _ice_urls(("turn:", "turns:"), "turns:turn.example.org:5349?transport=tcp")
        ),
        "turn_secret": Key("str", None, _turn_secret, optional=True),
        "turn_ttl_s": Key("int", 86400, _turn_ttl, hint=TURN_TTL),
    },
    "pager": {
        "wctp_url": Key("str", None, _gateway_url, optional=True),
        "wctp_sender_id": Key("str", "contrast-comms", _pager_word),
        "wctp_security_code": Key("str", None, _pager_word, optional=True),
        "snpp_host": Key("str", None, _host, optional=True),
        "snpp_port": Key("int", 444, _remote_port, hint=REMOTE_PORT),
        "snpp_level": Key("int", 3, _snpp_level),
        "snpp_login": Key("str", None, _pager_word, optional=True),
        "snpp_password": Key("str", None, _pager_word, optional=True),
        "smtp_host": Key("str", None, _host, optional=True),
        "smtp_port": Key("int", 25, _remote_port, hint=REMOTE_PORT),
        "smtp_from": Key("str", "alerts@localhost", _mail_from),
        "poll_s": Key("float", 5.0, _poll, hint=POLL),
        "timeout_s": Key("float", 10.0, _pager_timeout, hint=PAGER_TIMEOUT),
    },
}

_EXPECT_TYPE = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "path": "a path string",
    "list": "a list of strings",
}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | list):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -------------------------------------------------------------------------------------------------- load


def load(path: Path | None, env: Mapping[str, str]) -> Settings:
    """Build the settings from ``path`` (TOML, optional) and ``env`` (usually ``os.environ``).

    Raises :class:`ConfigError` listing every problem; nothing is half-loaded.
    """
    source = str(path) if path is not None else "configuration"
    problems: list[str] = []
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError([f"file not found: expected a TOML file at {path}"], source) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"cannot read the file: {exc}"], source) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"not valid TOML: {exc}"], source) from exc
    base_dir = Path.cwd()

    given: dict[tuple[str, str], tuple[Any, str]] = {}  # (section, key) -> (value, origin suffix)
    for section, body in raw.items():
        if section not in SCHEMA:
            problems.append(f"unknown section [{section}]{_suggest(section, list(SCHEMA))}")
            continue
        if not isinstance(body, dict):
            problems.append(f"{section} = {_show(body)}: expected a table [{section}]")
            continue
        for key, value in body.items():
            if key not in SCHEMA[section]:
                problems.append(f"unknown key {section}.{key}{_suggest(key, list(SCHEMA[section]))}")
                continue
            given[(section, key)] = (value, "")
    _overlay_env(env, given, problems)

    values: dict[tuple[str, str], Any] = {}
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            if (section, key) in given:
                value, origin = given[(section, key)]
                shown = value
                try:
                    if isinstance(value, _EnvText):
                        value = shown = _from_env(spec, str(value))
                    values[(section, key)] = None if value is None else _convert(spec, value, base_dir)
                except _Refused as exc:
                    problems.append(f"{section}.{key} = {_show(shown)}{origin}: expected {exc}")
            elif spec.default is not DERIVED:
                default = spec.default
                values[(section, key)] = _convert(spec, default, base_dir) if default is not None else None
    if problems:
        raise ConfigError(problems, source)
    settings = _assemble(values, path, problems)
    if problems:
        raise ConfigError(problems, source)
    return settings


def _overlay_env(
    env: Mapping[str, str], given: dict[tuple[str, str], tuple[Any, str]], problems: list[str]
) -> None:
    flat = {f"{s}_{k}": (s, k) for s, keys in SCHEMA.items() for k in keys}
    env_names = [f"{ENV_PREFIX}{s.upper()}__{k.upper()}" for s, k in flat.values()]
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :]
        if "__" not in rest:
            if rest.lower() in flat:
                s, k = flat[rest.lower()]
                problems.append(
                    f"environment {name}: expected {ENV_PREFIX}{s.upper()}__{k.upper()} "
                    "(two underscores between section and key)"
                )
            continue
        section, _, key = rest.lower().partition("__")
        if section not in SCHEMA or key not in SCHEMA[section]:
            problems.append(f"environment {name} names no setting{_suggest(name, env_names)}")
            continue
        given[(section, key)] = (_EnvText(env[name]), f" (from {name})")


class _EnvText(str):
    """A value from the environment: text to convert to the key's type."""


def _convert(spec: Key, value: Any, base_dir: Path) -> Any:
    match spec.kind:
        case "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise _Refused(_EXPECT_TYPE["int"] + _range_hint(spec))
        case "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _Refused(_EXPECT_TYPE["float"] + _range_hint(spec))
            value = float(value)
        case "bool":
            if not isinstance(value, bool):
                raise _Refused(_EXPECT_TYPE["bool"])
        case "str":
            if not isinstance(value, str):
                raise _Refused(_EXPECT_TYPE["str"])
        case "path":
            if not isinstance(value, str) or not value.strip():
                raise _Refused(_EXPECT_TYPE["path"])
            p = Path(os.path.expanduser(value))
            value = p if p.is_absolute() else (base_dir / p)
        case "list":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _Refused(_EXPECT_TYPE["list"])
    return spec.check(value) if spec.check is not None else value


def _range_hint(spec: Key) -> str:
    return f" {spec.hint}" if spec.hint else ""


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _from_env(spec: Key, text: str) -> Any:
    text = text.strip()
    if text == "" and spec.optional:
        return None
    match spec.kind:
        case "int":
            try:
                return int(text)
            except ValueError:
                raise _Refused(_EXPECT_TYPE["int"] + _range_hint(spec)) from None
        case "float":
            try:
                return float(text)
            except ValueError:
                raise _Refused(_EXPECT_TYPE["float"] + _range_hint(spec)) from None
        case "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise _Refused("true or false (also 1/0, yes/no, on/off)")
        case "list":
            return [item.strip() for item in text.split(",") if item.strip()]
        case _:
            return text


def _assemble(
    values: dict[tuple[str, str], Any],
    path: Path | None,
    problems: list[str],
) -> Settings:
    def val(section: str, key: str) -> Any:
        return values.get((section, key))

    data_dir: Path = val("data", "dir")
    db_url = val("database", "url") or f"sqlite+aiosqlite:///{data_dir / 'comms.db'}"
    http_host, http_port = val("http", "host"), val("http", "port")
    url_host = f"[{http_host}]" if ":" in http_host else http_host
    base_url = val("http", "public_base_url") or f"http://{url_host}:{http_port}"
    sip_host = val("sip", "host")
    from_uri = val("sip", "from_uri") or f"sip:comms@{f'[{sip_host}]' if ':' in sip_host else sip_host}"
    transports = val("sip", "transports")
    tls_port, tls_cert, tls_key = val("sip", "tls_port"), val("sip", "tls_cert"), val("sip", "tls_key")
    if "tls" in transports:
        for key, value in (("tls_port", tls_port), ("tls_cert", tls_cert), ("tls_key", tls_key)):
            if value is None:
                problems.append(f'sip.{key} is unset: expected a value because sip.transports includes "tls"')
    for key, file in (("tls_cert", tls_cert), ("tls_key", tls_key)):
        if file is not None and not file.is_file():
            problems.append(f"sip.{key} = {_show(str(file))}: expected an existing readable file")
    if tls_port is not None and tls_port != 0 and tls_port == val("sip", "port"):
        problems.append(f"sip.tls_port = {tls_port}: expected a port different from sip.port")
    rtp_min, rtp_max = val("media", "rtp_port_min"), val("media", "rtp_port_max")
    if rtp_min % 2:
        problems.append(f"media.rtp_port_min = {rtp_min}: expected an even port (RTP even, RTCP odd)")
    if rtp_max - rtp_min < 1:
        problems.append(
            f"media.rtp_port_max = {rtp_max}: expected at least media.rtp_port_min + 1 ({rtp_min + 1})"
        )
    secret = val("security", "session_secret")
    ephemeral = secret is None
    cookie_secure = val("security", "cookie_secure")
    if cookie_secure is None:
        cookie_secure = base_url.startswith("https://")
    return Settings(
        data=DataSettings(dir=data_dir),
        database=DatabaseSettings(url=db_url),
        http=HttpSettings(host=http_host, port=http_port, public_base_url=base_url),
        sip=SipSettings(
            host=sip_host,
            port=val("sip", "port"),
            transports=transports,
            tls_port=tls_port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            from_uri=from_uri,
        ),
        media=MediaSettings(host=val("media", "host"), rtp_port_min=rtp_min, rtp_port_max=rtp_max),
        escalation=EscalationSettings(
            default_ring_timeout_s=val("escalation", "default_ring_timeout_s"),
            tick_safety_poll_s=val("escalation", "tick_safety_poll_s"),
            watchdog_stale_s=val("escalation", "watchdog_stale_s"),
        ),
        prompts=PromptsSettings(
            cache_dir=val("prompts", "cache_dir") or data_dir / "prompts", voice=val("prompts", "voice")
        ),
        security=SecuritySettings(
            session_secret=secret or secrets.token_urlsafe(32),
            cookie_secure=cookie_secure,
            session_secret_ephemeral=ephemeral,
        ),
        log=LogSettings(level=val("log", "level")),
        source=path,
        node=NodeSettings(
            id=val("node", "id"), lease_s=val("node", "lease_s"), dead_after_s=val("node", "dead_after_s")
        ),
        ops=_ops(val, problems),
        dialin=DialInConfig(users=val("dialin", "users"), fallback_number=val("dialin", "fallback_number")),
        twilio=_twilio(val, problems),
        pager=_pager(val, problems),
        ice=_ice(val, problems),
    )


def _ice(val: Callable[[str, str], Any], problems: list[str]) -> IceConfig:
    urls, secret = val("ice", "turn_urls"), val("ice", "turn_secret")
    if urls and secret is None:
        problems.append(
            "ice.turn_secret is unset but ice.turn_urls is set: expected coturn's static-auth-secret"
        )
    if secret is not None and not urls:
        problems.append("ice.turn_secret is set but ice.turn_urls is empty: expected the TURN URLs it is for")
    if bool(urls) != (secret is not None):
        return IceConfig(stun_urls=val("ice", "stun_urls"))
    return IceConfig(
        stun_urls=val("ice", "stun_urls"),
        turn_urls=urls,
        turn_secret=secret,
        turn_ttl_s=val("ice", "turn_ttl_s"),
    )


def _pager(val: Callable[[str, str], Any], problems: list[str]) -> PagerConfig | None:
    gateways = {"wctp_url": val("pager", "wctp_url"), "snpp_host": val("pager", "snpp_host")}
    gateways["smtp_host"] = val("pager", "smtp_host")
    needs = {"wctp_security_code": "wctp_url", "snpp_login": "snpp_host", "snpp_password": "snpp_login"}
    bad = False
    for key, needed in needs.items():
        if val("pager", key) is not None and val("pager", needed) is None:
            problems.append(f"pager.{key} is set but pager.{needed} is unset: expected both, or neither")
            bad = True
    if bad or all(v is None for v in gateways.values()):
        return None
    return PagerConfig(
        wctp_url=gateways["wctp_url"],
        wctp_sender_id=val("pager", "wctp_sender_id"),
        wctp_security_code=val("pager", "wctp_security_code"),
        snpp_host=gateways["snpp_host"],
        snpp_port=val("pager", "snpp_port"),
        snpp_level=val("pager", "snpp_level"),
        snpp_login=val("pager", "snpp_login"),
        snpp_password=val("pager", "snpp_password"),
        smtp_host=gateways["smtp_host"],
        smtp_port=val("pager", "smtp_port"),
        smtp_from=val("pager", "smtp_from"),
        poll_s=val("pager", "poll_s"),
        timeout_s=val("pager", "timeout_s"),
    )


def _ops(val: Callable[[str, str], Any], problems: list[str]) -> OpsSettings:
    url, secret = val("ops", "webhook_url"), val("ops", "webhook_secret")
    if (url is None) != (secret is None):
        unset = "webhook_secret" if secret is None else "webhook_url"
        problems.append(f"ops.{unset} is unset: expected ops.webhook_url and ops.webhook_secret together")
        return OpsSettings()
    return OpsSettings(webhook_url=url, webhook_secret=secret)


def _twilio(val: Callable[[str, str], Any], problems: list[str]) -> TwilioConfig | None:
    sid, token, number = (
        val("twilio", "account_sid"),
        val("twilio", "auth_token"),
        val("twilio", "from_number"),
    )
    given = {"account_sid": sid, "auth_token": token, "from_number": number}
    if all(v is None for v in given.values()):
        return None
    for key, value in given.items():
        if value is None:
            problems.append(
                f"twilio.{key} is unset: expected it with the other twilio keys (or none of them)"
            )
    if None in given.values():
        return None
    return TwilioConfig(
        account_sid=sid,
        auth_token=token,
        from_number=number,
        api_base_url=val("twilio", "api_base_url"),
        webhook_port=val("twilio", "webhook_port"),
        dialin_number=val("twilio", "dialin_number"),
    )
