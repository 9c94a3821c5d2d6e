"""External workers' provider outages over HTTP: like the built-in workers', they
spend no attempt, within PROVIDER_OUTAGE_MAX."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx

from tests.conftest import ApiFactory
from tests.helpers import job_body

API = "/api/v1"


async def _claimed(client: httpx.AsyncClient) -> dict[str, Any]:
    created = await client.post(f"{API}/jobs", json=job_body(max_attempts=2))
    assert created.status_code == 201, created.text
    answer = await client.post(f"{API}/jobs/claim", json={"worker_id": "ext-1", "limit": 1})
    [job] = answer.json()["jobs"]
    return dict(job)


async def _fail(client: httpx.AsyncClient, job: dict[str, Any], **body: Any) -> dict[str, Any]:
    answer = await client.post(
        f"{API}/jobs/{job['id']}/fail",
        json={"message": "connection refused", "lease_token": job["lease_token"], **body},
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def test_an_outage_reported_over_http_spends_no_attempt(api_factory: ApiFactory) -> None:
    async with api_factory(RETRY_BACKOFF_BASE="50ms") as client:
        job = await _claimed(client)
        # max_attempts=2, yet five outages in a row do not fail the job.
        for outage in range(5):
            out = await _fail(client, job, category="provider_unavailable")
            assert (out["status"], out["attempt"]) == ("pending", 0), outage
            assert out["outage_since"] is not None
            job = await _claim_when_due(client)
            assert job["attempt"] == 1  # the same attempt runs again
        entries = (await client.get(f"{API}/jobs/{job['id']}")).json()["errors"]
        assert [e["deferred"] for e in entries] == [True] * 5


async def _claim_when_due(client: httpx.AsyncClient) -> dict[str, Any]:
    for _ in range(100):
        answer = await client.post(f"{API}/jobs/claim", json={"worker_id": "ext-1", "limit": 1})
        if answer.json()["jobs"]:
            return dict(answer.json()["jobs"][0])
        await asyncio.sleep(0.05)
    raise AssertionError("the deferred job never became runnable")


async def test_rate_limited_over_http_waits_the_retry_after(api_factory: ApiFactory) -> None:
    async with api_factory() as client:
        job = await _claimed(client)
        out = await _fail(client, job, category="rate_limited", retry_after_seconds=120)
        assert (out["status"], out["attempt"]) == ("pending", 0)
        wait = datetime.fromisoformat(out["run_after"]) - datetime.fromisoformat(out["updated_at"])
        assert 119 <= wait.total_seconds() <= 121


async def test_a_bad_retry_after_is_refused_naming_the_field(api_factory: ApiFactory) -> None:
    async with api_factory() as client:
        job = await _claimed(client)
        answer = await client.post(
            f"{API}/jobs/{job['id']}/fail",
            json={
                "category": "rate_limited",
                "message": "slow down",
                "lease_token": job["lease_token"],
                "retry_after_seconds": -1,
            },
        )
        assert answer.status_code == 422
        assert "retry_after_seconds" in answer.text


async def test_without_an_outage_budget_outages_spend_attempts(api_factory: ApiFactory) -> None:
    async with api_factory(PROVIDER_OUTAGE_MAX="0") as client:
        job = await _claimed(client)
        out = await _fail(client, job, category="provider_unavailable")
        assert (out["status"], out["attempt"]) == ("pending", 1)
        assert out["outage_since"] is None


async def test_other_failures_over_http_still_spend_the_attempt(api_factory: ApiFactory) -> None:
    async with api_factory() as client:
        job = await _claimed(client)
        out = await _fail(client, job, category="timeout")
        assert (out["status"], out["attempt"]) == ("pending", 1)
