"""The Python client (`ai_service_client`) against the real API on loopback.

Every method of `Client` (run in a thread: the API serves on this test's loop)
and of `AsyncClient`, the typed errors with the API's envelope, pagination
across pages, and `wait` returning as soon as a job finishes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

import ai_service_client as sdk
from tests.conftest import ApiFactory
from tests.helpers import wait_for
from tests.stubs.webhook_receiver import WebhookReceiver

TOKEN = f"tok-{uuid.uuid4().hex}"
READER = f"read-{uuid.uuid4().hex}"
AUTH = {
    "AI_SERVICE_TOKEN": TOKEN,
    "AI_SERVICE_TOKENS": f"{READER}:reader",
    "WEBHOOK_URL_ALLOW": "127.0.0.1",
    "WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}
JOB: dict[str, Any] = {
    "owner_service": "telephony",
    "owner_ref": "call-1",
    "task_type": "call_analysis",
    "model_profile": "qwen2.5-14b",
    "input": {"text": "hello"},
}
BATCH_DEFAULTS: sdk.JobSpec = {
    "owner_service": "telephony",
    "task_type": "call_analysis",
    "model_profile": "qwen2.5-14b",
    "input": {"text": "hello"},
}
FAST = sdk.RetryPolicy(attempts=3, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture
async def base_url(api_factory: ApiFactory) -> AsyncIterator[str]:
    async with api_factory(**AUTH) as http:
        yield str(http.base_url)


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[sdk.AsyncClient]:
    async with sdk.AsyncClient(base_url, TOKEN, retry=FAST) as client:
        yield client


async def test_sync_client_every_method_against_the_api(base_url: str) -> None:
    """create (idempotent repeat), batch, get, list pages, claim, heartbeat, complete,
    complete_many, fail, retry, cancel, stats and wait, with the blocking client."""

    def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with sdk.Client(base_url, TOKEN, retry=FAST) as client:
            first = client.create(**JOB, idempotency_key="k-1", priority=5)
            again = client.create(**JOB, idempotency_key="k-1", priority=5)
            seen["create"] = (first.created, again.created, again.id == first.id, first.priority)
            batch = client.create_batch(
                [{"owner_ref": f"b-{i}", "idempotency_key": f"b-{i}"} for i in range(4)],
                defaults={k: v for k, v in JOB.items() if k != "owner_ref"},
            )
            seen["batch"] = (batch.created, batch.existing, len(batch.jobs))
            seen["get"] = client.get(first.id).status
            seen["iter"] = [j.owner_ref for j in client.iter_jobs(limit=2)]
            claimed = client.claim("w-sync", task_types=["call_analysis"], limit=3)
            seen["claimed"] = len(claimed)
            one, two, three = claimed
            beat = client.heartbeat(one.id, one.lease_token, extend_seconds=120)
            seen["heartbeat"] = (beat.id == one.id, beat.status)
            done = client.complete(one.id, {"label": "ok"}, lease_token=one.lease_token)
            seen["complete"] = done.status
            many = client.complete_many([(two.id, two.lease_token, {"label": "two"})])
            seen["complete_many"] = (many.completed == [two.id], many.rejected)
            failed = client.fail(
                three.id,
                category="bad_input",
                message="no",
                lease_token=three.lease_token,
                retryable=False,
            )
            seen["fail"] = (failed.status, failed.error_category)
            seen["retry"] = client.retry(three.id).status
            seen["cancel"] = client.cancel(three.id).status
            seen["wait"] = (client.wait(one.id, timeout=5).result, client.wait(two.id, 5).status)
            stats = client.stats()
            seen["stats"] = (stats.total, stats.by_status["completed"])
        return seen

    seen = await asyncio.to_thread(scenario)
    assert seen["create"] == (True, False, True, 5)
    assert seen["batch"] == (4, 0, 4)
    assert seen["get"] == "pending"
    assert len(seen["iter"]) == 5  # three pages of two: every job once, newest first
    assert seen["iter"] == ["b-3", "b-2", "b-1", "b-0", "call-1"]
    assert seen["claimed"] == 3
    assert seen["heartbeat"] == (True, "running")
    assert seen["complete"] == "completed"
    assert seen["complete_many"] == (True, [])
    assert seen["fail"] == ("failed", "bad_input")
    assert seen["retry"] == "pending"
    assert seen["cancel"] == "cancelled"
    assert seen["wait"] == ({"label": "ok"}, "completed")
    assert seen["stats"] == (5, 2)


async def test_async_client_every_method_against_the_api(client: sdk.AsyncClient) -> None:
    first = await client.create(**JOB, idempotency_key="a-1", traceparent=TRACEPARENT)
    assert first.created
    assert first.status == "pending"
    assert (await client.create(**JOB, idempotency_key="a-1")).created is False
    batch = await client.create_batch([{**JOB, "owner_ref": f"b-{i}"} for i in range(3)])
    assert (batch.created, batch.existing) == (3, 0)
    assert (await client.get(first.id)).input == {"text": "hello"}
    refs = [job.owner_ref async for job in client.iter_jobs(limit=1, include="input")]
    assert refs == ["b-2", "b-1", "b-0", "call-1"]
    page = await client.list_jobs(limit=2, owner_ref="b-1")
    assert [j.owner_ref for j in page.jobs] == ["b-1"]
    assert page.next_cursor is None
    claimed = await client.claim("w-async", limit=2, lease_seconds=30)
    assert len(claimed) == 2
    one, two = claimed
    assert (await client.heartbeat(one.id, one.lease_token)).status == "running"
    assert (await client.complete(one.id, {"n": 1}, one.lease_token)).status == "completed"
    many = await client.complete_many([(two.id, two.lease_token, {"n": 2})])
    assert many.completed == [two.id]
    third = (await client.claim("w-async"))[0]
    failed = await client.fail(
        third.id, category="bad_input", message="x", lease_token=third.lease_token
    )
    assert failed.status == "failed"
    assert (await client.retry(third.id)).status == "pending"
    assert (await client.cancel(third.id)).status == "cancelled"
    assert (await client.wait(one.id, timeout=5)).result == {"n": 1}
    stats = await client.stats()
    assert stats.total == 4
    assert stats.by_status["cancelled"] == 1


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_callback_url_and_traceparent_and_the_webhook_verifies(
    client: sdk.AsyncClient,
) -> None:
    """The service's signed webhook passes `verify_webhook` (and a tampered one does not)."""
    secret = AUTH["WEBHOOK_SECRET"]
    with WebhookReceiver(secret) as receiver:
        url = receiver.url("/done") + "?token=receiver-secret"
        job = await client.create(**JOB, callback_url=url, traceparent=TRACEPARENT)
        stored = await client.get(job.id)
        assert stored.traceparent == TRACEPARENT  # the header was stored with the job
        assert stored.callback_url is not None
        assert stored.callback_url.startswith(receiver.url("/done"))
        assert "receiver-secret" not in stored.callback_url  # masked by the service
        await client.cancel(job.id)
        await wait_for(receiver.delivered, timeout=15, what="the webhook")
        [got] = receiver.received
    payload = sdk.verify_webhook(got.headers, got.body, secret)
    assert (payload["job_id"], payload["status"]) == (job.id, "cancelled")
    with pytest.raises(sdk.WebhookVerificationError):
        sdk.verify_webhook(got.headers, got.body.replace(b"cancelled", b"completed"), secret)
    batch = await client.create_batch(
        [{"owner_ref": "b"}], defaults=BATCH_DEFAULTS, traceparent=TRACEPARENT
    )
    assert (await client.get(batch.jobs[0].id)).traceparent == TRACEPARENT


async def test_wait_returns_as_soon_as_another_client_completes_the_job(
    client: sdk.AsyncClient,
) -> None:
    job = await client.create(**JOB)
    waiter = asyncio.create_task(client.wait(job.id, timeout=20))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    [claimed] = await client.claim("w", limit=1)
    await client.complete(claimed.id, {"answer": 42}, claimed.lease_token)
    done = await asyncio.wait_for(waiter, 5)
    assert (done.status, done.result) == ("completed", {"answer": 42})


async def test_wait_raises_wait_timeout_with_the_last_state(client: sdk.AsyncClient) -> None:
    job = await client.create(**JOB)
    with pytest.raises(sdk.WaitTimeout) as caught:
        await client.wait(job.id, timeout=0.5)
    assert caught.value.job.id == job.id
    assert caught.value.job.status == "pending"


async def test_unknown_job_raises_not_found_with_the_envelope(client: sdk.AsyncClient) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(sdk.NotFound) as caught:
        await client.get(missing)
    error = caught.value
    assert (error.status_code, error.error) == (404, "job_not_found")
    assert error.details == {"job_id": missing}
    assert missing in error.message


async def test_stale_lease_token_raises_lease_lost(client: sdk.AsyncClient) -> None:
    await client.create(**JOB)
    [claimed] = await client.claim("w")
    wrong = str(uuid.uuid4())
    with pytest.raises(sdk.LeaseLost) as caught:
        await client.heartbeat(claimed.id, wrong)
    assert isinstance(caught.value, sdk.Conflict)
    assert (caught.value.status_code, caught.value.error) == (409, "lease_lost")
    with pytest.raises(sdk.LeaseLost):
        await client.complete(claimed.id, {"x": 1}, lease_token=wrong)


async def test_invalid_field_raises_invalid_request_naming_it(client: sdk.AsyncClient) -> None:
    with pytest.raises(sdk.InvalidRequest) as caught:
        await client.create(**{**JOB, "priority": 5000})  # type: ignore[typeddict-item]
    error = caught.value
    assert error.status_code == 422
    assert error.message.startswith("priority:")
    assert error.details["errors"][0]["field"] == "priority"


async def test_unknown_filter_raises_invalid_request(client: sdk.AsyncClient) -> None:
    with pytest.raises(sdk.InvalidRequest) as caught:
        await client.list_jobs(statuses="failed")  # type: ignore[call-arg]
    assert caught.value.message.startswith("statuses:")


async def test_wrong_token_raises_unauthorized_and_role_raises_forbidden(base_url: str) -> None:
    async with sdk.AsyncClient(base_url, "wrong-token", retry=FAST) as wrong:
        with pytest.raises(sdk.Unauthorized) as caught:
            await wrong.stats()
    assert (caught.value.status_code, caught.value.error) == (401, "unauthorized")
    assert "wrong-token" not in str(caught.value)
    async with sdk.AsyncClient(base_url, READER, retry=FAST) as reader:
        with pytest.raises(sdk.Forbidden) as forbidden:
            await reader.create(**JOB)
        assert (await reader.stats()).total == 0
    assert forbidden.value.status_code == 403


async def test_idempotency_conflict_is_typed(client: sdk.AsyncClient) -> None:
    await client.create(**JOB, idempotency_key="same")
    with pytest.raises(sdk.IdempotencyConflict) as caught:
        await client.create(**{**JOB, "input": {"text": "other"}}, idempotency_key="same")
    assert caught.value.details["field"] == "idempotency_key"


async def test_environment_configures_url_and_token(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AI_SERVICE_URL", base_url)
    monkeypatch.setenv("AI_SERVICE_TOKEN", TOKEN)
    async with sdk.AsyncClient(retry=FAST) as client:
        assert (await client.stats()).total == 0
        assert TOKEN not in repr(client)
        assert base_url.rstrip("/") in repr(client)
