"""The deliverer against real receivers on loopback: signed POSTs, retries with the same
webhook-id, every attempt recorded, and no delivery the URL rules refuse."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ai_service.jobs import Job
from ai_service.metrics import Metrics
from ai_service.store import Store
from ai_service.webhooks.delivery import EXCERPT_BYTES, Deliverer
from ai_service.webhooks.sign import webhook_id
from tests.helpers import make_settings, new_job
from tests.stubs import closed_port_url
from tests.stubs.echo_server import EchoServer
from tests.stubs.webhook_receiver import WebhookReceiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def receiver() -> Any:
    with WebhookReceiver(SECRET) as r:
        yield r


async def sql(store: Store, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with store.pool.connection() as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


@pytest.fixture
async def deliverer(store: Store) -> AsyncIterator[Deliverer]:
    d = make_deliverer(store, WEBHOOK_URL_ALLOW="127.0.0.1")
    yield d
    await d.close()


def make_deliverer(store: Store, **env: str) -> Deliverer:
    settings = make_settings("postgresql://unused/db", WEBHOOK_SECRET=SECRET, **env)
    return Deliverer(store, settings, Metrics())


async def completed(store: Store, url: str, **fields: Any) -> Job:
    """A job with callback `url`, completed through the mirror path (its event due now)."""
    [created] = await store.create_jobs(
        [new_job(callback_url=url, owner_ref=f"call-{uuid.uuid4()}", **fields)]
    )
    return await store.complete(created.job.id, {"ok": True})


async def test_an_event_is_posted_signed_with_its_payload_and_trace(
    store: Store, deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    job = await completed(store, receiver.url("/hooks?k=1"), traceparent=TRACEPARENT)
    assert await deliverer.step() == 1
    [got] = receiver.received
    assert got.verified  # by the reference library, with the same secret
    assert got.path == "/hooks"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["traceparent"] == TRACEPARENT
    [delivery] = await store.list_deliveries(job.id)
    assert got.webhook_id == webhook_id(delivery.id)
    assert got.payload == {
        "type": "job.completed",
        "job_id": str(job.id),
        "owner_service": job.owner_service,
        "owner_ref": job.owner_ref,
        "status": "completed",
        "timestamp": delivery.payload["timestamp"],
    }
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    assert delivery.attempt_log[0]["http_status"] == 204
    assert deliverer.metrics.webhook_deliveries.labels("delivered")._value.get() == 1
    # Nothing is due any more.
    assert await deliverer.step() == 0
    assert len(receiver.received) == 1


async def test_a_job_without_trace_context_sends_no_traceparent(
    store: Store, deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    await completed(store, receiver.url())
    await deliverer.step()
    [got] = receiver.received
    assert got.verified
    assert "traceparent" not in got.headers


async def due_now(store: Store) -> None:
    await sql(
        store, "UPDATE webhook_deliveries SET next_attempt_at = now() WHERE status = 'pending'"
    )


async def test_a_failed_attempt_is_retried_with_the_same_webhook_id(
    store: Store, deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    job = await completed(store, receiver.url())
    receiver.fail_next("error", times=2)
    await deliverer.step()
    [delivery] = await store.list_deliveries(job.id)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("pending", 1, "HTTP 500")
    assert delivery.next_attempt_at is not None
    await due_now(store)
    await deliverer.step()
    await due_now(store)
    await deliverer.step()
    [delivery] = await store.list_deliveries(job.id)
    assert (delivery.status, delivery.attempts) == ("delivered", 3)
    assert [a["http_status"] for a in delivery.attempt_log] == [500, 500, 204]
    excerpt = delivery.attempt_log[0]["response"]
    assert excerpt.startswith("boom")
    assert len(excerpt.encode()) <= EXCERPT_BYTES
    assert {r.webhook_id for r in receiver.received} == {webhook_id(delivery.id)}
    assert all(r.verified for r in receiver.received)
    assert deliverer.metrics.webhook_deliveries.labels("retried")._value.get() == 2


async def test_the_first_retry_comes_within_seconds(
    store: Store, deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    job = await completed(store, receiver.url())
    receiver.fail_next("error")
    await deliverer.step()
    [row] = await sql(
        store,
        "SELECT extract(epoch FROM next_attempt_at - now())::float8 AS wait "
        "FROM webhook_deliveries WHERE job_id = %s",
        [job.id],
    )
    assert 0 < row["wait"] <= 2.0


async def test_a_redirect_is_a_failed_attempt_and_is_not_followed(
    store: Store, deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    job = await completed(store, receiver.url("/moved"))
    receiver.fail_next("redirect")
    await deliverer.step()
    assert [r.path for r in receiver.received] == ["/moved"]
    [delivery] = await store.list_deliveries(job.id)
    assert delivery.status == "pending"
    assert delivery.attempt_log[0]["http_status"] == 302


async def test_a_refused_connection_is_a_failed_attempt(store: Store, deliverer: Deliverer) -> None:
    job = await completed(store, closed_port_url() + "/hooks")
    await deliverer.step()
    [delivery] = await store.list_deliveries(job.id)
    assert delivery.status == "pending"
    [attempt] = delivery.attempt_log
    assert attempt["http_status"] is None
    assert attempt["error"].startswith("connection failed: ConnectError")


async def test_a_receiver_that_does_not_answer_in_time_is_a_failed_attempt(
    store: Store, receiver: WebhookReceiver
) -> None:
    deliverer = make_deliverer(store, WEBHOOK_URL_ALLOW="127.0.0.1", WEBHOOK_TIMEOUT="1s")
    try:
        job = await completed(store, receiver.url())
        receiver.fail_next("slow")
        await deliverer.step()
    finally:
        await deliverer.close()
    [delivery] = await store.list_deliveries(job.id)
    assert delivery.last_error == "no answer within 1s"


async def test_an_internal_destination_is_never_contacted_unless_allowed(
    store: Store, receiver: WebhookReceiver
) -> None:
    # The job's URL passed its check at create (or its name resolved elsewhere then):
    # the deliverer checks again and refuses loopback without WEBHOOK_URL_ALLOW.
    deliverer = make_deliverer(store)
    try:
        job = await completed(store, receiver.url())
        await deliverer.step()
    finally:
        await deliverer.close()
    assert receiver.received == []
    [delivery] = await store.list_deliveries(job.id)
    assert delivery.status == "pending"
    assert delivery.last_error is not None
    assert delivery.last_error.startswith("destination not allowed")


async def test_an_event_still_failing_at_its_maximum_age_fails_for_good(
    store: Store, receiver: WebhookReceiver
) -> None:
    deliverer = make_deliverer(store, WEBHOOK_URL_ALLOW="127.0.0.1", WEBHOOK_MAX_AGE="1h")
    try:
        job = await completed(store, receiver.url())
        await sql(store, "UPDATE webhook_deliveries SET created_at = now() - interval '61 minutes'")
        receiver.fail_always("error")
        await deliverer.step()
        assert await deliverer.step() == 0  # never tried again
    finally:
        await deliverer.close()
    [delivery] = await store.list_deliveries(job.id)
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert deliverer.metrics.webhook_deliveries.labels("failed")._value.get() == 1


async def test_secrets_in_a_receivers_answer_are_masked(store: Store) -> None:
    deliverer = make_deliverer(store, WEBHOOK_URL_ALLOW="127.0.0.1")
    try:
        with EchoServer(status=403) as echo:
            # The echo quotes the URL back, token included.
            job = await completed(store, echo.base_url + "/h?token=s3cr3t-receiver-token")
            await deliverer.step()
    finally:
        await deliverer.close()
    [delivery] = await store.list_deliveries(job.id)
    [attempt] = delivery.attempt_log
    assert attempt["http_status"] == 403
    assert "token=" in attempt["response"]
    assert "s3cr3t-receiver-token" not in str(delivery.attempt_log)


async def test_many_events_are_delivered_in_one_round(
    store: Store, deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    jobs = [await completed(store, receiver.url()) for _ in range(70)]  # more than a batch
    assert await deliverer.step() == 70
    assert len(receiver.received) == 70
    assert {r.payload["job_id"] for r in receiver.received} == {str(j.id) for j in jobs}
    assert all(r.verified for r in receiver.received)
