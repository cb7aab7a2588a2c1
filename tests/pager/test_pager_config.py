"""``[pager]`` settings: loaded and checked like every other section, and handed to the node's pager channel."""

from __future__ import annotations

from pathlib import Path

import pytest

from comms.app import pager_settings
from comms.cli import app_config
from config.loader import load
from config.settings import ConfigError

GOOD = """\
[http]
public_base_url = "https://comms.example.org/"

[pager]
wctp_url = "https://wctp.example.net/wctp"
wctp_security_code = "s3cret-code"
snpp_host = "SNPP.example.net"
snpp_level = 2
snpp_login = "comms"
snpp_password = "pw-1"
smtp_host = "127.0.0.1"
smtp_from = "alerts@comms.example.org"
poll_s = 2.5
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "comms.toml"
    path.write_text(text)
    return path


def test_pager_settings_reach_the_channel(tmp_path: Path) -> None:
    settings = load(_write(tmp_path, GOOD), {"COMMS_PAGER__SNPP_PORT": "4444"})
    assert settings.pager is not None
    assert (settings.pager.snpp_host, settings.pager.snpp_port, settings.pager.snpp_level) == (
        "snpp.example.net",
        4444,
        2,
    )
    assert "s3cret-code" not in repr(settings.pager) and "pw-1" not in repr(settings.pager)
    channel = app_config(settings).pager
    assert channel == pager_settings(settings)
    assert channel is not None
    assert channel.wctp_url == "https://wctp.example.net/wctp"
    assert (channel.wctp_security_code, channel.snpp_login, channel.snpp_password) == (
        "s3cret-code",
        "comms",
        "pw-1",
    )
    assert (channel.smtp_host, channel.smtp_port, channel.smtp_from) == (
        "127.0.0.1",
        25,
        "alerts@comms.example.org",
    )
    assert (channel.public_base_url, channel.poll_s, channel.timeout_s) == (
        "https://comms.example.org",
        2.5,
        10.0,
    )
    assert "s3cret-code" not in repr(channel)


def test_no_gateway_means_no_pager_channel(tmp_path: Path) -> None:
    settings = load(_write(tmp_path, "[pager]\nsnpp_port = 444\n"), {})
    assert settings.pager is None
    assert app_config(settings).pager is None
    assert load(None, {}).pager is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'wctp_url = "ftp://wctp.example.net"',
            'pager.wctp_url = "ftp://wctp.example.net": expected an http://',
        ),
        ("snpp_level = 4", "pager.snpp_level = 4: expected 1, 2 or 3 (RFC 1861 level; 3 is two-way)"),
        ("snpp_port = 0", "pager.snpp_port = 0: expected 1–65535"),
        (
            'snpp_host = "snpp example"',
            'pager.snpp_host = "snpp example": expected an IP address or a host name',
        ),
        (
            'smtp_host = "h"\nsmtp_from = "Alerts <a@b>"',
            'pager.smtp_from = "Alerts <a@b>": expected one e-mail',
        ),
        ('smtp_host = "h"\ntimeout_s = 0.1', "pager.timeout_s = 0.1: expected 0.5–60 seconds"),
        (
            'wctp_security_code = "x"',
            "pager.wctp_security_code is set but pager.wctp_url is unset: expected both",
        ),
        ('snpp_host = "h"\nsnpp_password = "x"', "pager.snpp_password is set but pager.snpp_login is unset"),
        (
            'snpp_host = "h"\nsnpp_login = "two words"',
            'pager.snpp_login = "two words": expected 1-128 printable',
        ),
        ('smtp_host = "h"\nsmtp_prot = 25', "unknown key pager.smtp_prot (did you mean 'smtp_port'?)"),
    ],
)
def test_bad_pager_settings_are_refused_with_key_value_and_expectation(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(_write(tmp_path, f"[pager]\n{text}\n"), {})
    assert message in str(info.value), str(info.value)
