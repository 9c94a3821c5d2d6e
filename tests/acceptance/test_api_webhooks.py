"""Completion webhooks end to end: a real API, real receivers on loopback that verify
every request with the `standardwebhooks` reference library.

1. A job with a `callback_url` that completes, fails or is cancelled: one signed POST
   of its event; `GET /jobs/{id}/deliveries` shows every attempt.
2. The URL rules at create: an internal destination is a 422 naming the field unless
   `WEBHOOK_URL_ALLOW` lists it; no callback at all without `WEBHOOK_SECRET`.
3. `WEBHOOK_URLS` defaults per owner_service; the `traceparent` header kept and sent on.
4. The receiver failing (500, then refusing connections) for two minutes while the API
   process is killed and started again: every event is delivered afterwards, with the
   same webhook-id on all its attempts and every signature valid.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from ai_service.webhooks.sign import webhook_id
from tests.conftest import ApiFactory
from tests.helpers import free_port, job_body, wait_for
from tests.processes import ServiceGroup
from tests.stubs.webhook_receiver import WebhookReceiver

API = "/api/v1"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HOOKS = {"WEBHOOK_SECRET": SECRET, "WEBHOOK_URL_ALLOW": "127.0.0.1"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def receiver() -> Any:
    with WebhookReceiver(SECRET) as r:
        yield r


async def create(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    headers = fields.pop("headers", {})
    body = job_body(owner_ref=f"call-{uuid.uuid4()}", task_type=f"t-{uuid.uuid4().hex[:8]}")
    response = await client.post(f"{API}/jobs", json=body | fields, headers=headers)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def complete(client: httpx.AsyncClient, job: dict[str, Any]) -> None:
    claimed = await client.post(
        f"{API}/jobs/claim", json={"worker_id": "w1", "task_types": [job["task_type"]]}
    )
    [running] = claimed.json()["jobs"]
    done = await client.post(
        f"{API}/jobs/{job['id']}/complete",
        json={"lease_token": running["lease_token"], "result": {"label": "ok"}},
    )
    assert done.status_code == 200, done.text


async def deliveries(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"{API}/jobs/{job_id}/deliveries")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["deliveries"]
    return found


async def test_a_completed_job_posts_one_signed_event(
    api_factory: ApiFactory, receiver: WebhookReceiver
) -> None:
    async with api_factory(**HOOKS) as client:
        job = await create(client, callback_url=receiver.url("/ai/done"))
        assert job["callback_url"] == receiver.url("/ai/done")
        await complete(client, job)
        await wait_for(lambda: receiver.delivered(), timeout=15, what="the webhook")
        [got] = receiver.received
        assert got.verified
        stored = (await client.get(f"{API}/jobs/{job['id']}")).json()
        assert got.payload == {
            "type": "job.completed",
            "job_id": job["id"],
            "owner_service": "telephony",
            "owner_ref": job["owner_ref"],
            "status": "completed",
            "timestamp": got.payload["timestamp"],
        }
        # The state change's time, in UTC.
        assert got.payload["timestamp"].endswith("Z")
        assert got.payload["timestamp"][:19] == stored["finished_at"][:19]
        [delivery] = await deliveries(client, job["id"])
        assert delivery["webhook_id"] == got.webhook_id
        assert delivery["status"] == "delivered"
        assert delivery["attempts"] == 1
        assert delivery["attempt_log"][0]["http_status"] == 204
        assert delivery["payload"] == got.payload
        # Delivered once: nothing more arrives.
        await asyncio.sleep(1.5)
        assert len(receiver.received) == 1


async def test_failed_and_cancelled_jobs_post_their_events(
    api_factory: ApiFactory, receiver: WebhookReceiver
) -> None:
    async with api_factory(**HOOKS) as client:
        failed = await create(client, callback_url=receiver.url("/f"))
        cancelled = await create(client, callback_url=receiver.url("/c"))
        fail = await client.post(
            f"{API}/jobs/{failed['id']}/fail", json={"category": "internal", "message": "local"}
        )
        assert fail.status_code == 200, fail.text
        assert (await client.post(f"{API}/jobs/{cancelled['id']}/cancel")).status_code == 200
        await wait_for(lambda: len(receiver.delivered()) == 2, timeout=15, what="two webhooks")
        by_path = {r.path: r for r in receiver.received}
        assert by_path["/f"].payload["type"] == "job.failed"
        assert by_path["/f"].payload["job_id"] == failed["id"]
        assert by_path["/c"].payload["type"] == "job.cancelled"
        assert by_path["/c"].payload["status"] == "cancelled"
        assert all(r.verified for r in receiver.received)


async def test_the_deliveries_show_every_attempt_of_a_retried_event(
    api_factory: ApiFactory, receiver: WebhookReceiver
) -> None:
    receiver.fail_next("error", times=2)
    async with api_factory(**HOOKS) as client:
        job = await create(client, callback_url=receiver.url())
        assert (await client.post(f"{API}/jobs/{job['id']}/cancel")).status_code == 200
        await wait_for(lambda: receiver.delivered(), timeout=30, what="the third attempt")
        [delivery] = await deliveries(client, job["id"])
    assert [r.status for r in receiver.received] == [500, 500, 204]
    assert {r.webhook_id for r in receiver.received} == {delivery["webhook_id"]}
    assert all(r.verified for r in receiver.received)
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 3
    log = delivery["attempt_log"]
    assert [a["attempt"] for a in log] == [1, 2, 3]
    assert [a["http_status"] for a in log] == [500, 500, 204]
    assert [a["error"] for a in log] == ["HTTP 500", "HTTP 500", None]
    assert log[0]["response"].startswith("boom")
    assert all(a["duration_ms"] >= 0 for a in log)
    assert delivery["delivered_at"] is not None
    assert delivery["next_attempt_at"] is None


async def test_a_job_without_a_callback_sends_nothing(
    api_factory: ApiFactory, receiver: WebhookReceiver
) -> None:
    async with api_factory(**HOOKS) as client:
        job = await create(client)
        assert job["callback_url"] is None
        await complete(client, job)
        await asyncio.sleep(1.5)
        assert await deliveries(client, job["id"]) == []
    assert receiver.received == []


INTERNAL = [
    "http://127.0.0.1:{port}/hooks",
    "http://localhost:{port}/hooks",
    "http://[::1]:{port}/hooks",
    "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.1/hooks",
    "http://2130706433:{port}/hooks",
]


async def test_internal_callback_urls_are_refused_unless_allowed(
    api_factory: ApiFactory, receiver: WebhookReceiver
) -> None:
    async with api_factory(WEBHOOK_SECRET=SECRET) as client:
        for template in INTERNAL:
            url = template.format(port=receiver.port)
            refused = await client.post(f"{API}/jobs", json=job_body(callback_url=url))
            assert refused.status_code == 422, (url, refused.text)
            error = refused.json()
            assert error["details"]["field"] == "callback_url"
            assert "WEBHOOK_URL_ALLOW" in error["message"]
        batch = await client.post(
            f"{API}/jobs/batch",
            json={
                "jobs": [
                    # A public address, written as one: no name to resolve, and never
                    # contacted (the batch is refused as a whole).
                    job_body(callback_url="https://1.1.1.1/hooks"),
                    job_body(callback_url=receiver.url()),
                ]
            },
        )
        assert batch.status_code == 422
        assert batch.json()["details"]["field"] == "jobs[1].callback_url"
        assert (await client.get(f"{API}/stats")).json()["total"] == 0  # nothing created
    # Listed in WEBHOOK_URL_ALLOW: accepted and delivered.
    async with api_factory(**HOOKS) as client:
        job = await create(client, callback_url=receiver.url())
        assert (await client.post(f"{API}/jobs/{job['id']}/cancel")).status_code == 200
        await wait_for(lambda: receiver.delivered(), timeout=15, what="the webhook")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/hooks", "http"),
        ("https://user:pw@example.com/hooks", "user:password@"),
        ("https://example.com/" + "x" * 2100, "2048"),
    ],
)
async def test_malformed_callback_urls_are_refused_naming_the_field(
    api_factory: ApiFactory, url: str, problem: str
) -> None:
    async with api_factory(WEBHOOK_SECRET=SECRET) as client:
        refused = await client.post(f"{API}/jobs", json=job_body(callback_url=url))
    assert refused.status_code == 422
    error = refused.json()
    assert "callback_url" in error["message"]
    assert problem in error["message"]
    assert "pw@" not in refused.text


async def test_without_a_webhook_secret_no_job_may_name_a_callback(api_factory: ApiFactory) -> None:
    async with api_factory() as client:
        refused = await client.post(
            f"{API}/jobs", json=job_body(callback_url="https://example.com/hooks")
        )
        assert refused.status_code == 422
        assert refused.json()["details"]["field"] == "callback_url"
        assert "WEBHOOK_SECRET" in refused.json()["message"]
        defaults = await client.post(
            f"{API}/jobs/batch",
            json={"defaults": {"callback_url": "https://example.com/h"}, "jobs": [job_body()]},
        )
        assert defaults.status_code == 422
        assert defaults.json()["details"]["field"] == "jobs[0].callback_url"


async def test_an_owner_services_default_callback_is_stored_and_used(
    api_factory: ApiFactory, receiver: WebhookReceiver
) -> None:
    default = receiver.url("/telephony?token=receiver-secret-token")
    async with api_factory(**HOOKS, WEBHOOK_URLS=f"telephony={default}") as client:
        job = await create(client)
        # Shown with its query values masked; stored as configured.
        assert job["callback_url"] == receiver.url("/telephony?token=%2A%2A%2A")
        other = await create(client, owner_service="crm")
        assert other["callback_url"] is None
        explicit = await create(client, callback_url=receiver.url("/mine"))
        for j in (job, other, explicit):
            assert (await client.post(f"{API}/jobs/{j['id']}/cancel")).status_code == 200
        await wait_for(lambda: len(receiver.delivered()) == 2, timeout=15, what="two webhooks")
        await asyncio.sleep(1.0)
        paths = sorted(r.path for r in receiver.received)
        assert paths == ["/mine", "/telephony"]
        [delivery] = await deliveries(client, job["id"])
        assert "receiver-secret-token" not in str(delivery)
        listed = (await client.get(f"{API}/jobs")).json()["jobs"]
        assert "receiver-secret-token" not in str(listed)


async def test_the_traceparent_header_is_stored_and_sent_with_the_webhook(
    api_factory: ApiFactory, receiver: WebhookReceiver
) -> None:
    async with api_factory(**HOOKS) as client:
        traced = await create(
            client, callback_url=receiver.url("/t"), headers={"traceparent": TRACEPARENT}
        )
        assert traced["traceparent"] == TRACEPARENT
        assert (await client.get(f"{API}/jobs/{traced['id']}")).json()["traceparent"] == TRACEPARENT
        # An invalid header is ignored (a new trace), not refused.
        untraced = await create(client, headers={"traceparent": "00-zz-not-a-trace-01"})
        assert untraced["traceparent"] is None
        batch = await client.post(
            f"{API}/jobs/batch",
            json={"jobs": [job_body(owner_ref="b1"), job_body(owner_ref="b2")]},
            headers={"traceparent": TRACEPARENT},
        )
        assert batch.status_code == 201
        listed = (await client.get(f"{API}/jobs", params={"owner_ref": "b1"})).json()["jobs"]
        assert [j["traceparent"] for j in listed] == [TRACEPARENT]
        assert (await client.post(f"{API}/jobs/{traced['id']}/cancel")).status_code == 200
        await wait_for(lambda: receiver.delivered(), timeout=15, what="the webhook")
    [got] = receiver.received
    assert got.headers["traceparent"] == TRACEPARENT
    assert got.verified


# -- the receiver down for two minutes, the API restarted meanwhile ------------------------

OUTAGE_500 = 60.0  # seconds the receiver answers 500
OUTAGE_REFUSED = 60.0  # then seconds nothing listens on its port
KILL_AT = 40.0  # the API is killed (SIGKILL) this long into the outage...
RESTART_AT = 75.0  # ...and a new one started this long into it


async def test_events_survive_a_two_minute_receiver_outage_and_an_api_restart(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    receiver = WebhookReceiver(SECRET, port).start()
    receiver.fail_always("error")
    env = {
        **HOOKS,
        "WEBHOOK_RETRY_MAX_DELAY": "5s",
        "WEBHOOK_TIMEOUT": "2s",
        "RESCUE_INTERVAL": "1h",
    }
    started = time.monotonic()
    try:
        async with ServiceGroup(tmp_path, database_url, **env) as services:
            api = await services.start("api", "api-1")
            async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
                jobs = [await create(client, callback_url=receiver.url(f"/e{i}")) for i in range(7)]
                for job in jobs[:3]:
                    await complete(client, job)
                for job in jobs[3:5]:
                    fail = await client.post(
                        f"{API}/jobs/{job['id']}/fail",
                        json={"category": "invalid_input", "message": "bad"},
                    )
                    assert fail.status_code == 200
                for job in jobs[5:]:
                    assert (await client.post(f"{API}/jobs/{job['id']}/cancel")).status_code == 200

            async def until(at: float) -> None:
                await asyncio.sleep(max(0.0, started + at - time.monotonic()))

            await until(KILL_AT)
            assert receiver.received, "attempts were made before the kill"
            assert not receiver.delivered()
            await api.kill()
            await until(OUTAGE_500)
            receiver.stop()  # connections refused from now on
            before_restart = len(receiver.received)
            await until(RESTART_AT)
            api = await services.start("api", "api-2")
            await until(OUTAGE_500 + OUTAGE_REFUSED)
            assert len(receiver.received) == before_restart  # nothing listened meanwhile
            receiver.fail_always(None)
            receiver.start()  # the same port: the receiver is back
            recovered = time.monotonic()

            async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:

                async def all_delivered() -> bool:
                    found = [await deliveries(client, j["id"]) for j in jobs]
                    return all(d and d[0]["status"] == "delivered" for d in found)

                await wait_for(all_delivered, timeout=30, what="every event delivered")
                caught_up = time.monotonic() - recovered
                found = {j["id"]: (await deliveries(client, j["id"])) for j in jobs}
    finally:
        receiver.stop()

    groups = receiver.by_webhook_id()
    expected_types = ["job.completed"] * 3 + ["job.failed"] * 2 + ["job.cancelled"] * 2
    for job, event_type in zip(jobs, expected_types, strict=True):
        [delivery] = found[job["id"]]
        assert delivery["event_type"] == event_type
        requests = groups[delivery["webhook_id"]]
        # Every attempt of the event went to its URL with the same webhook-id and a valid
        # signature; the 500s came before the kill and after it, then the refusals.
        assert {r.path for r in requests} == {f"/e{jobs.index(job)}"}
        assert all(r.verified for r in requests)
        assert [r.status for r in requests][-1] == 204
        assert all(r.status == 500 for r in requests[:-1])
        assert len(requests) >= 3
        assert all(r.payload == requests[0].payload for r in requests)
        assert requests[0].payload["job_id"] == job["id"]
        log = delivery["attempt_log"]
        assert delivery["attempts"] > len(requests) - 1  # refused attempts counted too
        assert any(a["error"] and a["error"].startswith("connection failed") for a in log)
        assert log[-1]["http_status"] == 204
    # Exactly the seven events, each delivered (answered 2xx) once.
    assert len(groups) == 7
    assert sorted(len([r for r in g if r.status == 204]) for g in groups.values()) == [1] * 7
    assert set(groups) == {webhook_id(uuid.UUID(d[0]["webhook_id"][4:])) for d in found.values()}
    # With WEBHOOK_RETRY_MAX_DELAY=5s every event follows within seconds of the recovery.
    assert caught_up < 20, caught_up
