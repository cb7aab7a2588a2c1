"""Short-lived TURN credentials (coturn ``use-auth-secret``): the scheme, expiry, the pages' ICE configuration
carrying a fresh credential (never the secret), and the ``[ice]`` settings' validation."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.app import ice_settings
from comms.clock import FakeClock
from comms.db.models import Person
from comms.web.app import build_app
from comms.web.media_routes import install
from config.loader import load
from config.settings import ConfigError
from escalation.runner import EscalationRunner
from media.errors import MediaError
from media.gateway import MediaGateway
from media.turn import TurnRest, turn_credential
from media.webrtc import IceServer
from tests.web.support import PASSWORD, bearer, make_services

SECRET = "s3cret-shared-with-coturn-0123456789"
TURN_URLS = ("turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp")


def coturn_accepts(secret: str, username: str, credential: str, now_unix: float) -> bool:
    """What coturn checks under use-auth-secret: the expiry before the separator, then the HMAC."""
    expiry, _, _user = username.partition(":")
    if not expiry.isdigit() or int(expiry) <= now_unix:
        return False
    expected = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    return hmac.compare_digest(expected, credential)


def test_credential_is_the_turn_rest_scheme_and_expires() -> None:
    now = 1_767_225_600.7
    cred = turn_credential(SECRET, "person-42", now, ttl_s=3600)
    assert cred.username == "1767229200:person-42"
    assert cred.expires_unix == 1_767_229_200
    # an independent computation of base64(HMAC-SHA1(secret, username))
    digest = hmac.new(SECRET.encode(), b"1767229200:person-42", hashlib.sha1).digest()
    assert cred.credential == base64.b64encode(digest).decode() and len(cred.credential) == 28
    assert coturn_accepts(SECRET, cred.username, cred.credential, now)
    assert coturn_accepts(SECRET, cred.username, cred.credential, now + 3599)
    assert not coturn_accepts(SECRET, cred.username, cred.credential, now + 3600)  # expired
    assert not coturn_accepts("another-secret-entirely-0123", cred.username, cred.credential, now)
    assert turn_credential(SECRET, "person-42", now).expires_unix == 1_767_225_600 + 86400  # default: a day


def test_bad_inputs_are_refused_with_what_was_expected() -> None:
    with pytest.raises(MediaError, match="no ':'"):
        turn_credential(SECRET, "evil:1999999999", 0)
    with pytest.raises(MediaError, match="empty secret"):
        turn_credential("", "x", 0)
    with pytest.raises(MediaError, match="positive number of seconds"):
        turn_credential(SECRET, "x", 0, ttl_s=0)
    with pytest.raises(MediaError, match="expected turn: or turns:"):
        TurnRest(("stun:turn.example.org",), SECRET)
    with pytest.raises(MediaError, match="at least one"):
        TurnRest((), SECRET)
    assert SECRET not in repr(TurnRest(TURN_URLS, SECRET))


def test_gateway_mints_a_fresh_credential_per_connection() -> None:
    clock = FakeClock()
    stun = IceServer(("stun:turn.example.org:3478",))
    gw = MediaGateway(clock, ice_servers=[stun], turn=TurnRest(TURN_URLS, SECRET, ttl_s=600))
    first = gw.ice_servers_for("room-CT-1")
    assert first[0] == stun and first[1].urls == TURN_URLS
    clock.advance(30.0)
    second = gw.ice_servers_for("room-CT-1")
    now = clock.now().timestamp()
    assert second[1].username == f"{int(now) + 600}:room-CT-1" != first[1].username
    assert second[1].credential is not None
    assert coturn_accepts(SECRET, second[1].username or "", second[1].credential, now)
    gw.turn = None
    assert gw.ice_servers_for("x") == (stun,)


async def test_room_page_and_console_get_a_fresh_credential_not_the_secret(
    sf: async_sessionmaker[AsyncSession],
) -> None:
    clock = FakeClock()
    gateway = MediaGateway(clock, turn=TurnRest(TURN_URLS, SECRET, ttl_s=3600))
    runner = EscalationRunner(sf, clock, node_id="turn-test", channels={})
    app = build_app(make_services(sf, clock, runner, session_secret=b"k" * 32))
    install(app, gateway)
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        # the room tablet (device token)
        resp = await client.get("/api/v1/rooms/CT-1/media", headers=bearer("CT-1"))
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        text = await resp.text()
        assert SECRET not in text
        (turn,) = (await resp.json())["ice_servers"]
        assert turn["urls"] == list(TURN_URLS)
        now = clock.now().timestamp()
        assert turn["username"] == f"{int(now) + 3600}:room-CT-1"
        assert coturn_accepts(SECRET, turn["username"], turn["credential"], now)

        # a later fetch (the page reconnecting) gets a credential that lives from then on
        clock.advance(120.0)
        resp = await client.get("/api/v1/rooms/CT-1/media", headers=bearer("CT-1"))
        later = (await resp.json())["ice_servers"][0]
        assert later["username"] == f"{int(now) + 120 + 3600}:room-CT-1"
        assert not coturn_accepts(SECRET, turn["username"], turn["credential"], now + 3600)
        assert coturn_accepts(SECRET, later["username"], later["credential"], now + 3600)

        # a radiologist's console: the credential names the person
        login = await client.post("/login", json={"username": "ada", "password": PASSWORD})
        assert login.status == 200, await login.text()
        async with sf() as s:
            ada = (await s.execute(sa.select(Person.id).where(Person.username == "ada"))).scalar_one()
        resp = await client.get("/api/v1/rooms/CT-1/media")
        staff = (await resp.json())["ice_servers"][0]
        assert staff["username"].endswith(f":{ada}") and SECRET not in await resp.text()
    finally:
        await client.close()
        await gateway.close()
        await runner.stop()


def write(tmp_path: Path, ice: str) -> Path:
    path = tmp_path / "comms.toml"
    path.write_text(f"[ice]\n{ice}\n", encoding="utf-8")
    return path


def test_ice_settings_become_stun_and_turn_rest(tmp_path: Path) -> None:
    settings = load(
        write(
            tmp_path,
            f'stun_urls = ["stun:turn.example.org:3478"]\nturn_urls = {list(TURN_URLS)!r}\n'.replace("'", '"')
            + f'turn_secret = "{SECRET}"\nturn_ttl_s = 600',
        ),
        {},
    )
    assert SECRET not in repr(settings)
    servers, turn = ice_settings(settings)
    assert servers == (IceServer(("stun:turn.example.org:3478",)),)
    assert turn == TurnRest(TURN_URLS, SECRET, 600)
    assert ice_settings(load(None, {})) == ((), None)  # default: host candidates only
    env = {"COMMS_ICE__TURN_URLS": TURN_URLS[0], "COMMS_ICE__TURN_SECRET": SECRET}
    assert ice_settings(load(None, env))[1] == TurnRest((TURN_URLS[0],), SECRET)


@pytest.mark.parametrize(
    ("ice", "message"),
    [
        (
            f"turn_urls = [{TURN_URLS[0]!r}]".replace("'", '"'),
            "ice.turn_secret is unset but ice.turn_urls is set",
        ),
        (f'turn_secret = "{SECRET}"', "ice.turn_secret is set but ice.turn_urls is empty"),
        ('turn_urls = ["http://turn.example.org"]\nturn_secret = "' + SECRET + '"', "turn: or turns: URLs"),
        ('stun_urls = ["turn:turn.example.org"]', "stun: URLs such as"),
        ('turn_urls = ["turn:"]\nturn_secret = "' + SECRET + '"', "turn: or turns: URLs"),
        ('turn_urls = ["turn:t.example.org"]\nturn_secret = "short"', "at least 16 characters"),
        ('turn_urls = ["turn:t.example.org"]\nturn_secret = "' + SECRET + '"\nturn_ttl_s = 5', "60–604800"),
        ('turn_url = ["turn:t.example.org"]', "did you mean 'turn_urls'"),
    ],
)
def test_bad_ice_settings_are_refused_clearly(tmp_path: Path, ice: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, ice), {})
    assert message in str(info.value)
