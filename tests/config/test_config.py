"""config.load: defaults, file, environment overrides, and every refusal message."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from comms.errors import CommsError
from config import ConfigError, Settings, load


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "comms.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(_write(tmp_path, text), env or {})
    return info.value.problems


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load(None, {})
    assert s.data.dir == tmp_path / "var"
    assert s.database.url == f"sqlite+aiosqlite:///{tmp_path / 'var' / 'comms.db'}"
    assert s.database.backend == "sqlite"
    assert (s.http.host, s.http.port, s.http.public_base_url) == ("127.0.0.1", 8080, "http://127.0.0.1:8080")
    assert (s.sip.host, s.sip.port, s.sip.transports) == ("127.0.0.1", 5060, ("udp", "tcp"))
    assert (s.sip.tls_port, s.sip.tls_cert, s.sip.tls_key) == (None, None, None)
    assert s.sip.from_uri == "sip:comms@127.0.0.1"
    assert (s.media.rtp_port_min, s.media.rtp_port_max) == (20000, 20999)
    assert s.escalation.default_ring_timeout_s == 30
    assert s.escalation.tick_safety_poll_s == 1.0
    assert s.prompts.cache_dir == tmp_path / "var" / "prompts"
    assert s.prompts.voice == "en-us"
    assert s.security.session_secret_ephemeral
    assert len(s.security.session_secret) >= 32
    assert s.security.cookie_secure is False
    assert s.log.level == "INFO"
    assert s.source is None


def test_settings_are_frozen_and_hide_secrets(tmp_path: Path) -> None:
    s = load(
        _write(
            tmp_path,
            '[security]\nsession_secret = "s3cret-s3cret-s3cret-s3cret-s3cret!"\n'
            '[database]\nurl = "postgresql+asyncpg://comms:pw@db:5432/comms"\n',
        ),
        {},
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.sip.port = 1  # type: ignore[misc]
    assert "s3cret" not in repr(s)
    assert "pw@" not in repr(s)
    assert s.security.session_secret_ephemeral is False
    assert s.database.backend == "postgresql"


def test_example_file_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    example = Path(__file__).resolve().parents[2] / "config" / "comms.example.toml"
    s = load(example, {})
    assert isinstance(s, Settings)
    assert s.source == example
    assert s.sip.port == 5060


def test_file_values_and_derived_defaults(tmp_path: Path) -> None:
    cert = tmp_path / "sip.crt"
    key = tmp_path / "sip.key"
    cert.write_text("x")
    key.write_text("x")
    s = load(
        _write(
            tmp_path,
            f"""
[data]
dir = "{tmp_path / "d"}"
[http]
host = "::1"
port = 0
public_base_url = "https://comms.example.org/"
[sip]
host = "PBX.example.org"
transports = ["UDP", "tls"]
tls_port = 5061
tls_cert = "{cert}"
tls_key = "{key}"
[escalation]
tick_safety_poll_s = 2
[log]
level = "debug"
""",
        ),
        {},
    )
    assert s.http.public_base_url == "https://comms.example.org"
    assert s.http.port == 0
    assert s.security.cookie_secure is True
    assert s.sip.host == "pbx.example.org"
    assert s.sip.from_uri == "sip:comms@pbx.example.org"
    assert s.sip.transports == ("udp", "tls")
    assert (s.sip.tls_cert, s.sip.tls_key) == (cert, key)
    assert s.escalation.tick_safety_poll_s == 2.0
    assert isinstance(s.escalation.tick_safety_poll_s, float)
    assert s.log.level == "DEBUG"
    assert s.database.url.endswith(f"{tmp_path / 'd' / 'comms.db'}")


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[sip]\nport = 5062\n[http]\nport = 9000\n")
    s = load(
        path,
        {
            "COMMS_SIP__PORT": "5070",
            "COMMS_SIP__TRANSPORTS": "udp, tcp ,tls",
            "COMMS_SIP__TLS_PORT": "5071",
            "COMMS_SIP__TLS_CERT": str(path),
            "COMMS_SIP__TLS_KEY": str(path),
            "COMMS_SECURITY__COOKIE_SECURE": "yes",
            "COMMS_ESCALATION__TICK_SAFETY_POLL_S": "0.25",
            "COMMS_CONFIG": "/ignored/not/a/setting",
            "PATH": "/usr/bin",
        },
    )
    assert (s.sip.port, s.http.port, s.sip.tls_port) == (5070, 9000, 5071)
    assert s.sip.transports == ("udp", "tcp", "tls")
    assert s.security.cookie_secure is True
    assert s.escalation.tick_safety_poll_s == 0.25


def test_empty_environment_value_unsets_an_optional_key(tmp_path: Path) -> None:
    s = load(_write(tmp_path, "[sip]\ntls_port = 5071\n"), {"COMMS_SIP__TLS_PORT": ""})
    assert s.sip.tls_port is None


def test_config_error_is_a_comms_error() -> None:
    assert issubclass(ConfigError, CommsError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sip]\nport = 70000\n", "sip.port = 70000: expected 1–65535, or 0 for a port chosen by the OS"),
        ("[sip]\nport = -1\n", "sip.port = -1: expected 1–65535"),
        ('[sip]\nport = "5060"\n', 'sip.port = "5060": expected an integer 1–65535'),
        ("[sip]\nport = true\n", "sip.port = true: expected an integer"),
        ("[http]\nport = 1.5\n", "http.port = 1.5: expected an integer"),
        ('[http]\nhost = "bad host!"\n', 'http.host = "bad host!": expected an IP address or a host name'),
        (
            '[http]\npublic_base_url = "ftp://x"\n',
            'http.public_base_url = "ftp://x": expected an http:// or https://',
        ),
        (
            '[http]\npublic_base_url = "https://x?a=1"\n',
            "expected an http:// or https:// URL with a host and no query",
        ),
        (
            '[sip]\ntransports = ["udp", "sctp"]\n',
            'sip.transports = ["udp", "sctp"]: expected a non-empty list',
        ),
        ("[sip]\ntransports = []\n", "sip.transports = []: expected a non-empty list of distinct transports"),
        ('[sip]\ntransports = ["udp", "udp"]\n', "expected a non-empty list of distinct transports"),
        ('[sip]\ntransports = "udp"\n', 'sip.transports = "udp": expected a list of strings'),
        ('[sip]\nfrom_uri = "comms@example.org"\n', 'sip.from_uri = "comms@example.org": expected a SIP URI'),
        ('[sip]\nfrom_uri = "sip:example.org"\n', "expected a SIP URI with user and host"),
        ("[media]\nrtp_port_min = 80\n", "media.rtp_port_min = 80: expected 1024–65535"),
        ("[media]\nrtp_port_min = 20001\n", "media.rtp_port_min = 20001: expected an even port"),
        (
            "[media]\nrtp_port_min = 30000\n",
            "media.rtp_port_max = 20999: expected at least media.rtp_port_min + 1",
        ),
        (
            "[escalation]\ndefault_ring_timeout_s = 5\n",
            "escalation.default_ring_timeout_s = 5: expected 10–120 seconds",
        ),
        (
            "[escalation]\ntick_safety_poll_s = 0\n",
            "escalation.tick_safety_poll_s = 0: expected 0.05–60 seconds",
        ),
        (
            '[escalation]\ntick_safety_poll_s = "1"\n',
            'tick_safety_poll_s = "1": expected a number 0.05–60 seconds',
        ),
        ('[prompts]\nvoice = "en us"\n', 'prompts.voice = "en us": expected an espeak-ng voice name'),
        ('[prompts]\ncache_dir = ""\n', 'prompts.cache_dir = "": expected a path string'),
        ('[security]\nsession_secret = "short"\n', 'security.session_secret = "short": expected at least 32'),
        ('[security]\ncookie_secure = "yes"\n', 'security.cookie_secure = "yes": expected true or false'),
        (
            '[log]\nlevel = "LOUD"\n',
            'log.level = "LOUD": expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL',
        ),
        (
            '[database]\nurl = "mysql://x/y"\n',
            'database.url = "mysql://x/y": expected sqlite+aiosqlite:///<file>',
        ),
        (
            '[database]\nurl = "postgresql://u@h/db"\n',
            "expected sqlite+aiosqlite:///<file> or postgresql+asyncpg://",
        ),
        ("[data]\ndir = 3\n", "data.dir = 3: expected a path string"),
        ("[htp]\nport = 1\n", "unknown section [htp] (did you mean 'http'?)"),
        ("[http]\nprot = 1\n", "unknown key http.prot (did you mean 'port'?)"),
        ("[http]\nzzz = 1\n", "unknown key http.zzz"),
        ("sip = 1\n", "sip = 1: expected a table [sip]"),
        (
            '[sip]\ntransports = ["tls"]\n',
            'sip.tls_port is unset: expected a value because sip.transports includes "tls"',
        ),
        (
            '[sip]\ntls_cert = "/nonexistent/c.pem"\n',
            'sip.tls_cert = "/nonexistent/c.pem": expected an existing readable',
        ),
        ("[sip]\ntls_port = 5060\n", "sip.tls_port = 5060: expected a port different from sip.port"),
    ],
)
def test_each_bad_value_is_refused_with_key_value_and_expectation(
    tmp_path: Path, text: str, message: str
) -> None:
    problems = _problems(tmp_path, text)
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"COMMS_SIP__PORT": "70000"}, "sip.port = 70000 (from COMMS_SIP__PORT): expected 1–65535"),
        ({"COMMS_SIP__PORT": "abc"}, 'sip.port = "abc" (from COMMS_SIP__PORT): expected an integer 1–65535'),
        ({"COMMS_SIP_PORT": "5070"}, "environment COMMS_SIP_PORT: expected COMMS_SIP__PORT (two underscores"),
        (
            {"COMMS_SIP__PROT": "5070"},
            "environment COMMS_SIP__PROT names no setting (did you mean 'COMMS_SIP__PORT'?)",
        ),
        ({"COMMS_NOPE__X": "1"}, "environment COMMS_NOPE__X names no setting"),
        ({"COMMS_SECURITY__COOKIE_SECURE": "maybe"}, "expected true or false (also 1/0, yes/no, on/off)"),
        ({"COMMS_ESCALATION__TICK_SAFETY_POLL_S": "soon"}, "expected a number 0.05–60 seconds"),
        (
            {"COMMS_SIP__TRANSPORTS": ""},
            "sip.transports = [] (from COMMS_SIP__TRANSPORTS): expected a non-empty",
        ),
    ],
)
def test_bad_environment_is_refused(tmp_path: Path, env: dict[str, str], message: str) -> None:
    problems = _problems(tmp_path, "", env)
    assert any(message in p for p in problems), problems


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "[sip]\nport = 70000\n[http]\nprot = 1\n[log]\nlevel = 'x'\n")
    with pytest.raises(ConfigError) as info:
        load(path, {"COMMS_MEDIA__RTP_PORT_MIN": "1"})
    assert len(info.value.problems) == 4
    text = str(info.value)
    assert text.startswith(f"{path}: 4 problems:")
    for needle in ("sip.port = 70000", "http.prot", "log.level", "media.rtp_port_min = 1 (from"):
        assert needle in text


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found: expected a TOML file at"):
        load(tmp_path / "nope.toml", {})
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 2"):
        load(_write(tmp_path, "[sip]\nport = = 1\n"), {})
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe[sip]")
    with pytest.raises(ConfigError, match="cannot read the file"):
        load(tmp_path / "bad.toml", {})


def test_node_dialin_and_twilio_sections() -> None:
    from pathlib import Path as _P

    from config.loader import load as _load
    from config.settings import ConfigError as _CE

    env = {
        "COMMS_TWILIO__ACCOUNT_SID": "AC" + "0" * 32,
        "COMMS_TWILIO__AUTH_TOKEN": "secret",
        "COMMS_TWILIO__FROM_NUMBER": "+13125550100",
        "COMMS_NODE__ID": "node-b",
        "COMMS_DIALIN__USERS": "reaction,code",
    }
    s = _load(None, env)
    assert s.twilio is not None
    assert s.twilio.from_number == "+13125550100"
    assert s.node.id == "node-b"
    assert s.dialin.users == ("reaction", "code")
    assert _load(None, {}).twilio is None
    try:
        _load(None, {"COMMS_TWILIO__ACCOUNT_SID": "AC" + "0" * 32})
    except _CE as exc:
        text = str(exc)
    else:
        raise AssertionError("a partial [twilio] section was accepted")
    assert "twilio.auth_token is unset" in text
    assert "twilio.from_number is unset" in text
    _ = _P


def test_ice_and_turn_settings_reach_the_node(tmp_path: Path) -> None:
    from comms.cli import app_config

    path = _write(
        tmp_path,
        '[ice]\nstun_urls = ["stun:turn.example.org:3478"]\nturn_urls = ["turns:turn.example.org:5349"]\n'
        'turn_secret = "a-secret-of-at-least-16"\nturn_ttl_s = 600\n',
    )
    config = app_config(load(path, {}))
    assert [server.urls for server in config.ice_servers] == [("stun:turn.example.org:3478",)]
    assert config.turn is not None
    assert config.turn.urls == ("turns:turn.example.org:5349",) and config.turn.ttl_s == 600
    assert "a-secret-of-at-least-16" not in repr(config.turn)
