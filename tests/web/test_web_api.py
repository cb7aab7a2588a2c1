"""The JSON API on a real SQLite file with the real escalation runner (ticked by hand, FakeClock)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from comms.clock import FakeClock
from comms.errors import ValidationError
from escalation.runner import EscalationRunner
from tests.web.conftest import ClientFactory
from tests.web.support import TOKENS, HoldChannel, bearer, eventually, login

Client = TestClient[web.Request, web.Application]
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def assert_error(resp: Any, status: int, code: str, *fragments: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    for fragment in fragments:
        assert fragment in body["error"]["message"], body["error"]["message"]
    return body


async def raise_alert(client: Client, room: str = "CT-1", severity: str = "severe") -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/incidents", json={"room": room, "severity": severity}, headers=bearer(room)
    )
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


# ----------------------------------------------------------------------------------- POST /api/v1/incidents


async def test_raise_incident_returns_201_with_id_code_state_links(client: Client) -> None:
    resp = await client.post(
        "/api/v1/incidents", json={"room": "CT-1", "severity": "severe"}, headers=bearer("CT-1")
    )
    assert resp.status == 201
    body = await resp.json()
    assert uuid.UUID(body["id"])
    assert re.fullmatch(r"[A-Z0-9]{6}", body["code"])
    assert body["state"] == "paging"  # the first tier started in the raise's own transaction
    assert body["severity"] == "severe"
    assert body["links"] == {
        "self": f"/api/v1/incidents/{body['id']}",
        "legs": f"/api/v1/incidents/{body['id']}/legs",
        "page": f"/incidents/{body['id']}",
    }
    assert resp.headers["Location"] == body["links"]["self"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"   ", "empty"),
        (b"[1, 2]", "JSON list"),
        (b'"severe"', "JSON str"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_bad_json_is_400(client: Client, raw: bytes, fragment: str) -> None:
    headers = {**bearer("CT-1"), "Content-Type": "application/json"}
    resp = await client.post("/api/v1/incidents", data=raw, headers=headers)
    await assert_error(resp, 400, "bad_json", fragment, "expected a JSON object")


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        ({}, 422, "missing_field", "['room', 'severity']"),
        ({"room": "CT-1"}, 422, "missing_field", "['severity']"),
        ({"severity": "severe"}, 422, "missing_field", "['room']"),
        ({"room": "CT-1", "severity": "severe", "patient": "x"}, 422, "unknown_field", "['patient']"),
        ({"room": 7, "severity": "severe"}, 422, "invalid", "field 'room' is a JSON int"),
        ({"room": "CT-1", "severity": None}, 422, "invalid", "field 'severity' is a JSON NoneType"),
        (
            {"room": "CT-1", "severity": "critical"},
            422,
            "unknown_severity",
            "mild, moderate, severe, unknown",
        ),
        ({"room": "CT-1", "severity": "SEVERE"}, 422, "unknown_severity", "'SEVERE'"),
        ({"room": "XR-404", "severity": "severe"}, 404, "unknown_room", "'XR-404' does not exist"),
        ({"room": "CT-2", "severity": "severe"}, 403, "wrong_room", "belongs to room 'CT-1'"),
    ],
)
async def test_bad_alert_bodies_are_clear_4xx(
    client: Client, body: dict[str, Any], status: int, code: str, fragment: str
) -> None:
    resp = await client.post("/api/v1/incidents", json=body, headers=bearer("CT-1"))
    await assert_error(resp, status, code, fragment)


@pytest.mark.parametrize(
    ("headers", "code", "fragment"),
    [
        ({}, "not_authenticated", "room device token"),
        ({"Authorization": "Bearer "}, "bad_authorization", "expected 'Bearer <room device token>'"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "bad_authorization", "scheme 'Basic'"),
        ({"Authorization": "Bearer not-a-real-token"}, "bad_token", "matches no room"),
        ({"Authorization": "Bearer " + TOKENS["CT-1"] + "x"}, "bad_token", "matches no room"),
    ],
)
async def test_missing_or_bad_token_is_401(
    client: Client, headers: dict[str, str], code: str, fragment: str
) -> None:
    resp = await client.post(
        "/api/v1/incidents", json={"room": "CT-1", "severity": "severe"}, headers=headers
    )
    await assert_error(resp, 401, code, fragment)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_deactivated_room_token_is_403(client: Client) -> None:
    resp = await client.post(
        "/api/v1/incidents", json={"room": "MR-9", "severity": "mild"}, headers=bearer("MR-9")
    )
    await assert_error(resp, 403, "room_inactive", "'MR-9' is deactivated")


async def test_staff_session_cannot_raise_through_the_device_route(client: Client) -> None:
    await login(client, "tina")
    resp = await client.post("/api/v1/incidents", json={"room": "CT-1", "severity": "severe"})
    await assert_error(resp, 403, "forbidden", "needs a room device token", "your roles are technologist")


async def test_runner_refusal_is_422(make_client: ClientFactory) -> None:
    class RefusingRunner:
        async def raise_incident(self, *, room_code: str, severity: str, source: str) -> str:
            raise ValidationError(f"room {room_code!r} has no escalation policy: expected one")

    client = await make_client(runner=RefusingRunner())
    resp = await client.post(
        "/api/v1/incidents", json={"room": "CT-1", "severity": "severe"}, headers=bearer("CT-1")
    )
    await assert_error(resp, 422, "rejected", "has no escalation policy")


async def test_body_over_the_limit_is_413_and_server_stays_up(client: Client) -> None:
    big = b'{"room": "' + b"x" * 70_000 + b'"}'
    resp = await client.post(
        "/api/v1/incidents", data=big, headers={**bearer("CT-1"), "Content-Type": "application/json"}
    )
    await assert_error(resp, 413, "payload_too_large", "65536")
    await raise_alert(client)


async def test_unknown_path_and_wrong_method_are_json(client: Client) -> None:
    await assert_error(await client.get("/api/v1/nothing-here"), 404, "not_found", "GET /api/v1/nothing-here")
    resp = await client.delete("/api/v1/incidents")
    body = await assert_error(resp, 405, "method_not_allowed", "DELETE", "expected one of POST")
    assert body["error"]["message"]
    assert resp.headers["Allow"] == "POST"


async def test_unexpected_failure_is_500_json_and_server_goes_on(
    make_client: ClientFactory, client: Client
) -> None:
    class BrokenRunner:
        async def raise_incident(self, *, room_code: str, severity: str, source: str) -> str:
            raise RuntimeError("disk on fire")

    broken = await make_client(runner=BrokenRunner())
    resp = await broken.post(
        "/api/v1/incidents", json={"room": "CT-1", "severity": "severe"}, headers=bearer("CT-1")
    )
    body = await assert_error(resp, 500, "internal", "failure is logged")
    assert "disk on fire" not in body["error"]["message"]
    assert (await broken.get("/api/v1/rooms/CT-1", headers=bearer("CT-1"))).status == 200


# ---------------------------------------------------------------------------------- GET incident, legs, room


async def test_incident_view_follows_the_escalation_to_accept(
    client: Client, runner: EscalationRunner, channel: HoldChannel, clock: FakeClock
) -> None:
    raised = await raise_alert(client, severity="moderate")
    url = raised["links"]["self"]

    first = await (await client.get(url, headers=bearer("CT-1"))).json()
    assert first["state"] == "paging"  # tier 0 started, ada's leg created and placed by the raise itself
    assert first["accepted_by"] is None
    assert first["seconds_to_accept"] is None

    assert await runner.tick() == 0  # nothing left to decide until tier 0's deadline
    await eventually(lambda: len(channel.orders) == 1)
    leg_id = channel.orders[0].leg_id
    await eventually(lambda: channel.rang(leg_id))
    calling = await (await client.get(url, headers=bearer("CT-1"))).json()
    assert calling["state"] == "paging"
    assert calling["status_line"] == {"text": "Calling Dr Ada Diaz… (tier 1)", "tone": "calling"}

    clock.advance(7.4)
    result = await runner.try_accept(leg_id, digits="1", method="rfc4733")
    assert result.won

    # staff see the same incident
    await login(client, "carl")
    body = await (await client.get(url)).json()
    assert body["state"] == "accepted"
    assert body["severity"] == "moderate"
    assert body["room"]["code"] == "CT-1"
    assert body["room"]["name"] == "Scanner CT-1"
    assert body["site"]["code"] == "MAIN"
    assert body["site"]["timezone"] == "America/Chicago"
    assert body["accepted_by"]["display_name"] == "Ada Diaz"
    assert body["seconds_to_accept"] == 7.4
    assert body["status_line"] == {"text": "Accepted by Dr Ada Diaz after 7.4 s", "tone": "accepted"}
    assert ISO_MS.fullmatch(body["raised_at"])
    assert ISO_MS.fullmatch(body["accepted_at"])
    assert body["raised_at"] == "2026-01-05T14:00:00.000Z"
    assert body["accepted_at"] == "2026-01-05T14:00:07.400Z"
    seqs = [e["seq"] for e in body["timeline"]]
    assert seqs == list(range(1, len(seqs) + 1))
    kinds = [e["kind"] for e in body["timeline"]]
    assert kinds[0] == "incident.raised"
    assert kinds.index("leg.created") < kinds.index("leg.ringing") < kinds.index("incident.accepted")
    assert all(ISO_MS.fullmatch(e["at"]) for e in body["timeline"])
    assert body["timeline"][0]["data"]["severity"] == "moderate"

    legs = await (await client.get(raised["links"]["legs"])).json()
    assert legs["incident_id"] == raised["id"]
    [leg] = legs["legs"]
    assert leg["id"] == leg_id
    assert leg["tier"] == 0
    assert leg["person"]["display_name"] == "Ada Diaz"
    assert leg["status"] == "accepted"
    assert leg["address"] == "sip:ada@127.0.0.1"
    assert [e["kind"] for e in leg["events"]][:3] == ["leg.created", "leg.invite_sent", "leg.ringing"]


async def test_incident_view_shows_exhaustion(
    client: Client, runner: EscalationRunner, channel: HoldChannel, clock: FakeClock
) -> None:
    raised = await raise_alert(client)
    url = raised["links"]["self"]
    await runner.tick()
    await eventually(lambda: len(channel.orders) == 1)
    clock.advance(30.5)
    await runner.tick()  # tier 0 times out: ada cancelled, bob dialled
    await eventually(lambda: len(channel.orders) == 2)
    body = await (await client.get(url, headers=bearer("CT-1"))).json()
    assert body["status_line"] == {"text": "Calling Dr Bob Stone… (tier 2)", "tone": "calling"}
    clock.advance(30.5)
    await runner.tick()
    body = await (await client.get(url, headers=bearer("CT-1"))).json()
    assert body["state"] == "exhausted"
    assert body["status_line"] == {
        "text": "Nobody accepted — activate the code team now",
        "tone": "exhausted",
    }


async def test_device_reads_only_its_own_rooms_incidents(client: Client) -> None:
    raised = await raise_alert(client, room="CT-1")
    ok = await client.get(raised["links"]["self"], headers=bearer("CT-1"))
    assert ok.status == 200
    for path in (raised["links"]["self"], raised["links"]["legs"]):
        resp = await client.get(path, headers=bearer("CT-2"))
        await assert_error(resp, 403, "wrong_room", "belongs to room 'CT-2'")


async def test_device_view_leaves_out_contact_addresses(
    client: Client, runner: EscalationRunner, channel: HoldChannel
) -> None:
    raised = await raise_alert(client)
    await runner.tick()
    await eventually(lambda: len(channel.orders) == 1)
    await eventually(lambda: channel.rang(channel.orders[0].leg_id))
    device_incident = await (await client.get(raised["links"]["self"], headers=bearer("CT-1"))).text()
    device_legs = await (await client.get(raised["links"]["legs"], headers=bearer("CT-1"))).text()
    for text in (device_incident, device_legs):
        assert "ada@127.0.0.1" not in text
        assert "Ada Diaz" in text  # who is being called is the room's business
    await login(client, "tina")
    staff_legs = await (await client.get(raised["links"]["legs"])).json()
    assert staff_legs["legs"][0]["address"] == "sip:ada@127.0.0.1"
    staff_incident = await (await client.get(raised["links"]["self"])).json()
    created = next(e for e in staff_incident["timeline"] if e["kind"] == "leg.created")
    assert created["data"]["address"] == "sip:ada@127.0.0.1"


async def test_incident_read_errors(client: Client) -> None:
    raised = await raise_alert(client)
    await assert_error(
        await client.get(raised["links"]["self"]), 401, "not_authenticated", "got no valid session"
    )
    await assert_error(
        await client.get(raised["links"]["self"], headers={"Authorization": "Bearer nope"}), 401, "bad_token"
    )
    missing = str(uuid.uuid4())
    await assert_error(
        await client.get(f"/api/v1/incidents/{missing}", headers=bearer("CT-1")), 404, "not_found", missing
    )
    await assert_error(
        await client.get("/api/v1/incidents/not-a-uuid/legs", headers=bearer("CT-1")),
        404,
        "not_found",
        "not a UUID",
    )


async def test_every_staff_role_reads_incidents(make_client: ClientFactory) -> None:
    for username in ("ada", "tina", "root", "carl"):
        client = await make_client()
        raised = await raise_alert(client)
        await login(client, username)
        assert (await client.get(raised["links"]["self"])).status == 200
        assert (await client.get(raised["links"]["legs"])).status == 200


async def test_room_lookup(client: Client) -> None:
    resp = await client.get("/api/v1/rooms/CT-1", headers=bearer("CT-1"))
    assert resp.status == 200
    assert await resp.json() == {
        "code": "CT-1",
        "name": "Scanner CT-1",
        "active": True,
        "site": {"code": "MAIN", "name": "Main Hospital", "timezone": "America/Chicago"},
    }
    await assert_error(await client.get("/api/v1/rooms/CT-2", headers=bearer("CT-1")), 403, "wrong_room")
    await login(client, "tina")
    await assert_error(await client.get("/api/v1/rooms/NOPE"), 404, "unknown_room")


async def test_admin_rotates_a_room_token(client: Client) -> None:
    await login(client, "tina")
    await assert_error(
        await client.post("/api/v1/rooms/CT-1/device-token"), 403, "forbidden", "role admin", "technologist"
    )
    await login(client, "root")
    resp = await client.post("/api/v1/rooms/CT-1/device-token")
    assert resp.status == 200
    body = await resp.json()
    assert body["room"] == "CT-1"
    assert len(body["token"]) >= 43
    assert body["page"] == f"/rooms/CT-1?token={body['token']}"
    client.session.cookie_jar.clear()
    await assert_error(await client.get("/api/v1/rooms/CT-1", headers=bearer("CT-1")), 401, "bad_token")
    fresh = await client.get("/api/v1/rooms/CT-1", headers={"Authorization": f"Bearer {body['token']}"})
    assert fresh.status == 200
    await login(client, "root")
    await assert_error(await client.post("/api/v1/rooms/NOPE/device-token"), 404, "unknown_room")
