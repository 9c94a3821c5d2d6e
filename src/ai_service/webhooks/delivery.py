"""The deliverer: POSTs due outbox events, signed, and records every attempt.

One round (`Deliverer.step`, run by the `webhooks` maintenance service in the one
process that leads it, about every second) takes due pending deliveries in batches
(`Store.claim_deliveries`: taken for as long as a batch may take, so a deliverer
that dies mid-way leaves them due again), POSTs a batch concurrently (at most
`CONCURRENCY` at once, each within `WEBHOOK_TIMEOUT`) and records the outcomes in
one statement.

Each attempt:

* body: the event's payload as fixed at the state change, as JSON;
* headers: `content-type: application/json`, `webhook-id` (the same on every attempt
  of one event), `webhook-timestamp` (this attempt's Unix time) and
  `webhook-signature` (`sign`), plus `traceparent` when the job was created in a trace;
* the destination is checked again (`outbound.OutboundClient`: the host is resolved
  and the connection pinned to the address checked); redirects are never followed.

A 2xx answer delivers the event. Anything else (another status, a redirect, a
timeout, a refused connection, a destination the URL rules refuse) is a failed
attempt: retried after `retry_delay` (exponential from `FIRST_DELAY`, capped by
`WEBHOOK_RETRY_MAX_DELAY`, jittered), until `WEBHOOK_MAX_AGE` after the event, when
the delivery is failed for good. Only a short excerpt of an answer is kept,
with secrets masked.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from ai_service import outbound
from ai_service.config import Settings
from ai_service.metrics import Metrics
from ai_service.redact import redact_url, redactor_for, settings_secrets, url_secrets
from ai_service.store import Delivery, DeliveryOutcome, Store
from ai_service.webhooks.sign import SigningKey, webhook_id

log = logging.getLogger("ai_service.webhooks")

BATCH = 64  # deliveries taken per statement
CONCURRENCY = 16  # POSTs in flight at once
FIRST_DELAY = 2.0  # seconds before the first retry (jittered into 1-2 s)
ATTEMPTS_KEPT = 50  # newest attempts kept per delivery (`attempts` counts them all)
EXCERPT_BYTES = 200  # bytes of a receiver's answer kept with a failed attempt
# Seconds a taken delivery stays taken beyond the time its batch may need (each of the
# BATCH / CONCURRENCY waves of POSTs within WEBHOOK_TIMEOUT).
LEASE_MARGIN = 30.0
# The payload's keys in the documented order (jsonb keeps its own).
PAYLOAD_ORDER = ("type", "job_id", "owner_service", "owner_ref", "status", "timestamp")
USER_AGENT = "ai-service-webhooks/1"


def retry_delay(failed_attempts: int, cap: float, jitter: float) -> float:
    """Seconds before the next attempt after `failed_attempts` (>= 1) failed ones.

    Exponential from `FIRST_DELAY`, capped at `cap`, jittered into the upper half of
    the window by `jitter` in [0, 1).
    """
    window = min(cap, FIRST_DELAY * 2.0 ** min(max(failed_attempts - 1, 0), 40))
    return float(window * (0.5 + 0.5 * jitter))


def encode_payload(payload: dict[str, Any]) -> bytes:
    """The request body: the payload as compact JSON, keys in the documented order."""
    ordered = {key: payload[key] for key in PAYLOAD_ORDER if key in payload}
    ordered |= {key: value for key, value in payload.items() if key not in ordered}
    return orjson.dumps(ordered)


class Deliverer:
    """Delivers the outbox's due events (see the module doc). Needs `WEBHOOK_SECRET`."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        metrics: Metrics,
        *,
        client: outbound.OutboundClient | None = None,
    ) -> None:
        if settings.webhook_secret is None:
            raise ValueError("webhooks need WEBHOOK_SECRET")
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.key = SigningKey.of(settings.webhook_secret)
        self.client = client or outbound.OutboundClient(
            settings.webhook_url_allow, max_redirects=0, max_connections=CONCURRENCY
        )
        self._secrets = [s for s in settings_secrets(settings) if s]
        self.delivered = 0
        self.failed = 0

    @property
    def lease(self) -> float:
        """Seconds the deliveries of one batch stay taken (they are due again after it)."""
        return self.settings.webhook_timeout * -(-BATCH // CONCURRENCY) + LEASE_MARGIN

    async def close(self) -> None:
        """Close the outbound connections."""
        await self.client.aclose()

    async def step(self) -> int:
        """Attempt every due delivery once; returns how many attempts were made."""
        attempted = 0
        while True:
            batch = await self.store.claim_deliveries(batch=BATCH, lease=self.lease)
            if not batch:
                return attempted
            limit = asyncio.Semaphore(CONCURRENCY)
            outcomes = await asyncio.gather(*(self._attempt(d, limit) for d in batch))
            await self._record(batch, outcomes)
            attempted += len(batch)
            if len(batch) < BATCH:
                return attempted

    async def _record(self, batch: Sequence[Delivery], outcomes: Sequence[DeliveryOutcome]) -> None:
        statuses = await self.store.record_deliveries(
            outcomes, max_age=self.settings.webhook_max_age, attempts_kept=ATTEMPTS_KEPT
        )
        by_id = {d.id: d for d in batch}
        for outcome in outcomes:
            status = statuses.get(outcome.delivery_id)
            if status is None:
                continue  # no longer pending (recorded by another deliverer)
            label = {"delivered": "delivered", "failed": "failed"}.get(status, "retried")
            self.metrics.webhook_deliveries.labels(label).inc()
            if status == "delivered":
                self.delivered += 1
            elif status == "failed":
                self.failed += 1
                delivery = by_id[outcome.delivery_id]
                log.warning(
                    "webhook %s of job %s to %s failed for good after %d attempts: %s",
                    webhook_id(delivery.id),
                    delivery.job_id,
                    redact_url(delivery.url),
                    delivery.attempts + 1,
                    outcome.error,
                )

    async def _attempt(self, delivery: Delivery, limit: asyncio.Semaphore) -> DeliveryOutcome:
        async with limit:
            return await self.attempt(delivery)

    async def attempt(self, delivery: Delivery) -> DeliveryOutcome:
        """POST one delivery once; the outcome to record (never raises for the network)."""
        body = encode_payload(delivery.payload)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **self.key.headers(webhook_id(delivery.id), timestamp, body),
        }
        if delivery.traceparent:
            headers["traceparent"] = delivery.traceparent
        at = datetime.now(UTC)
        started = time.perf_counter()
        status: int | None = None
        excerpt: str | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.settings.webhook_timeout):
                async with self.client.stream(
                    "POST",
                    delivery.url,
                    content=body,
                    headers=headers,
                    timeout=self.settings.webhook_timeout,
                    follow_redirects=False,
                ) as response:
                    status = response.status_code
                    if not 200 <= status < 300:
                        excerpt = await _excerpt(response)
                        error = f"HTTP {status}"
        except outbound.DestinationNotAllowed:
            error = "destination not allowed (an internal address; see WEBHOOK_URL_ALLOW)"
        except (TimeoutError, httpx.TimeoutException):
            error = f"no answer within {self.settings.webhook_timeout:g}s"
        except httpx.HTTPError as exc:
            error = f"connection failed: {type(exc).__name__}: {exc}"[:300]
        except Exception as exc:  # one odd answer must not stop the batch's records
            log.exception("webhook %s: unexpected error", webhook_id(delivery.id))
            error = f"internal error: {type(exc).__name__}"
        duration_ms = round((time.perf_counter() - started) * 1000)
        ok = error is None
        redactor = redactor_for([*self._secrets, *url_secrets(delivery.url)])
        return DeliveryOutcome(
            delivery_id=delivery.id,
            ok=ok,
            at=at,
            duration_ms=duration_ms,
            http_status=status,
            error=redactor.text(error) if error is not None else None,
            response=redactor.text(excerpt) if excerpt else None,
            delay=0.0
            if ok
            else retry_delay(
                delivery.attempts + 1, self.settings.webhook_retry_max_delay, random.random()
            ),
        )


async def _excerpt(response: httpx.Response) -> str:
    """The start of an answer's body (at most `EXCERPT_BYTES`), as text."""
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= EXCERPT_BYTES:
            break
    return data[:EXCERPT_BYTES].decode("utf-8", "replace")
