"""A generic signed webhook channel: one JSON POST per leg (and per cancel) to an integration endpoint.

Wire format
-----------
``POST <url>`` with ``Content-Type: application/json`` and a JSON object (``event`` = ``page`` | ``cancel``,
the leg and incident ids, the incident code, severity, site, room, person, tier, ring timeout and the
idempotency key; no PHI). Headers:

* ``X-Comms-Timestamp``: Unix seconds (integer) when the request was signed;
* ``X-Comms-Signature``: ``sha256=`` + hex HMAC-SHA256 over ``f"{timestamp}.{body}"`` with the shared secret
  (the receiver recomputes it, compares in constant time and refuses stale timestamps);
* ``Idempotency-Key``: the outbox key (``incident:tier:target:channel:attempt``); a retry or a resend after a
  crash carries the same key, so a receiver drops duplicates.

Delivery: each attempt has a total timeout; a transport error, a timeout, 408, 429 or 5xx is retried with
exponential back-off (``backoff_s * 2**n``), other 4xx are final. A 2xx is recorded as ``leg.delivered``,
which is a device receipt and **never** an accept: the leg stays live until a tier timeout or an accept
cancels it (then a ``cancel`` POST is sent and the leg ends ``cancelled``). Retries exhausted: ``leg.ended``
with cause ``failed``, so the tree moves on at once. An accept through an integration comes back through the
API, never through this channel.

Addressing: a contact whose address is an ``http(s)://`` URL is posted there; any other address (a relay
set-up, where every leg of a kind goes to one paging gateway) is posted to the configured ``url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from comms.clock import Clock
from escalation.channel import LegOrder, LegReporter

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Comms-Signature"
TIMESTAMP_HEADER = "X-Comms-Timestamp"
RETRYABLE = frozenset({408, 425, 429})


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Comms-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(
    secret: bytes, timestamp: str, body: bytes, signature: str, *, now: float, max_age_s: float = 300
) -> bool:
    """Receiver side: the signature matches and the timestamp is fresh (constant-time compare)."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > max_age_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


@dataclass(frozen=True)
class Delivery:
    status: int | None
    attempts: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookChannel:
    """Places legs as signed JSON POSTs (see the module docstring)."""

    def __init__(
        self,
        clock: Clock,
        *,
        secret: bytes,
        url: str | None = None,
        kind: str = "webhook",
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        if not secret:
            raise ValueError("webhook secret is empty: expected a shared secret of at least 16 bytes")
        self.kind = kind
        self._clock = clock
        self._secret = secret
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retries = retries
        self._backoff_s = backoff_s
        self._session: aiohttp.ClientSession | None = None
        self._cancelled: dict[str, asyncio.Event] = {}
        self._reasons: dict[str, str] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _target(self, address: str) -> str:
        if address.startswith(("http://", "https://")):
            return address
        if self._url is None:
            raise ValueError(f"address {address!r} is not an http(s) URL and no relay url is configured")
        return self._url

    async def post(self, url: str, payload: dict[str, Any], *, key: str) -> Delivery:
        """POST ``payload`` signed, with retries and back-off; never raises for the receiver's failure."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        status: int | None = None
        error: str | None = None
        for attempt in range(1, self._retries + 2):
            ts = int(self._clock.now().timestamp())
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: str(ts),
                SIGNATURE_HEADER: sign(self._secret, ts, body),
                "Idempotency-Key": key,
            }
            try:
                async with self._session.post(url, data=body, headers=headers) as resp:
                    status, error = resp.status, None
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
            if status is not None and (status < 500 and status not in RETRYABLE):
                return Delivery(status, attempt, None if status < 300 else f"HTTP {status}")
            if attempt <= self._retries:
                await self._clock.sleep(self._backoff_s * 2 ** (attempt - 1))
        return Delivery(status, self._retries + 1, error or f"HTTP {status}")

    async def place(self, order: LegOrder, reporter: LegReporter) -> None:
        leg = order.leg_id
        cancelled = self._cancelled.setdefault(leg, asyncio.Event())
        try:
            url = self._target(order.address)
            payload = {
                "event": "page",
                "leg_id": leg,
                "incident_id": order.incident_id,
                "incident_code": order.incident_code,
                "severity": order.severity,
                "site": order.site_name,
                "room": order.room_code,
                "person_id": order.person_id,
                "person": order.person_name,
                "tier": order.tier,
                "ring_timeout_s": order.ring_timeout_s,
                "idempotency_key": order.idempotency_key,
            }
            await reporter.record(
                leg, "leg.invite_sent", {"channel": self.kind, "key": order.idempotency_key}
            )
            result = await self.post(url, payload, key=order.idempotency_key or leg)
            if not result.ok:
                await reporter.record(
                    leg,
                    "leg.ended",
                    {
                        "status": result.status,
                        "cause": "failed",
                        "reason": result.error,
                        "attempts": result.attempts,
                        "by": "remote",
                    },
                )
                return
            await reporter.record(
                leg, "leg.delivered", {"status": result.status, "attempts": result.attempts}
            )
            await cancelled.wait()  # a receipt is not an accept: live until a timeout or an accept cancels it
            reason = self._reasons.get(leg, "cancelled")
            cancel = await self.post(
                url, {"event": "cancel", "leg_id": leg, "reason": reason}, key=f"{leg}:cancel"
            )
            await reporter.record(leg, "leg.cancel_sent", {"reason": reason, "status": cancel.status})
            await reporter.record(leg, "leg.ended", {"status": None, "cause": "cancelled", "by": "local"})
        finally:
            self._cancelled.pop(leg, None)
            self._reasons.pop(leg, None)

    async def cancel(self, leg_id: str, reason: str) -> None:
        event = self._cancelled.get(leg_id)
        if event is not None and not event.is_set():
            self._reasons[leg_id] = reason
            event.set()

    async def __aenter__(self) -> WebhookChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.close()
