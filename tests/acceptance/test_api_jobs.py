"""Acceptance tests of the job endpoints of the HTTP API (`/api/v1/jobs*`).

A real API served by uvicorn on 127.0.0.1 over a fresh PostgreSQL database per
test; every assertion goes through HTTP.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.conftest import ApiFactory
from tests.helpers import job_body

API = "/api/v1"


def ts(value: str) -> datetime:
    """Parse a timestamp of the API (ISO 8601 with an offset or `Z`)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, f"timestamp without timezone: {value}"
    return parsed


async def create(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await client.post(f"{API}/jobs", json=job_body(**overrides))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def create_raw(client: httpx.AsyncClient, **overrides: Any) -> httpx.Response:
    return await client.post(f"{API}/jobs", json=job_body(**overrides))


async def get(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"{API}/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def claim(
    client: httpx.AsyncClient, worker_id: str = "worker-1", **fields: Any
) -> list[dict[str, Any]]:
    response = await client.post(f"{API}/jobs/claim", json={"worker_id": worker_id, **fields})
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs


async def claim_one(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    jobs = await claim(client, **fields)
    assert len(jobs) == 1, jobs
    return jobs[0]


async def list_ids(client: httpx.AsyncClient, **params: Any) -> list[str]:
    response = await client.get(f"{API}/jobs", params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None
    return [job["id"] for job in body["jobs"]]


async def fail(
    client: httpx.AsyncClient, job: dict[str, Any], category: str, **fields: Any
) -> httpx.Response:
    body = {"category": category, "message": f"{category} happened", **fields}
    if "lease_token" in job and "lease_token" not in fields:
        body["lease_token"] = job["lease_token"]
    return await client.post(f"{API}/jobs/{job['id']}/fail", json=body)


def assert_envelope(response: httpx.Response, status: int, error: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "details"}, body
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["details"], dict)
    if error is not None:
        assert body["error"] == error, body


# -- create -------------------------------------------------------------------------


async def test_create_returns_201_with_a_pending_job_and_defaults(api: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    response = await api.post(f"{API}/jobs", json=job_body(input={"user": "hi", "n": [1, 2]}))
    assert response.status_code == 201
    job = response.json()
    uuid.UUID(job["id"])
    assert job["created"] is True
    assert job["status"] == "pending"
    assert job["owner_service"] == "telephony"
    assert job["owner_ref"] == "beeline/call-1"
    assert job["task_type"] == "llm_chat"
    assert job["model_profile"] == "qwen2.5-14b"
    assert job["input"] == {"user": "hi", "n": [1, 2]}
    assert job["priority"] == 0
    assert job["max_attempts"] == 3
    assert job["attempt"] == 0
    assert job["result"] is None
    assert job["errors"] == []
    assert job["error_category"] is None
    assert job["worker_id"] is None
    assert job["idempotency_key"] is None
    assert job["started_at"] is None
    assert job["finished_at"] is None
    assert "lease_token" not in job
    created_at = ts(job["created_at"])
    assert before - timedelta(seconds=5) < created_at < datetime.now(UTC) + timedelta(seconds=5)
    # No run_after given: runnable at once.
    assert ts(job["run_after"]) <= created_at + timedelta(milliseconds=1)
    assert await get(api, job["id"]) == {k: v for k, v in job.items() if k != "created"}


async def test_create_stores_every_optional_field(api: httpx.AsyncClient) -> None:
    run_after = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    job = await create(
        api,
        priority=-7,
        max_attempts=5,
        run_after=run_after.isoformat(),
        idempotency_key="call-1:analysis",
    )
    assert job["priority"] == -7
    assert job["max_attempts"] == 5
    assert ts(job["run_after"]) == run_after
    assert job["idempotency_key"] == "call-1:analysis"
    # A run_after given with another offset is the same instant.
    other = await create(api, run_after="2030-01-01T12:00:00+03:00")
    assert ts(other["run_after"]) == datetime(2030, 1, 1, 9, 0, tzinfo=UTC)


async def test_repeated_idempotency_key_returns_the_existing_job_with_200(
    api: httpx.AsyncClient,
) -> None:
    first = await create(api, idempotency_key="k-1", input={"v": 1, "w": 2})
    # The same request again; object members in another order and an explicit default
    # are still the same request.
    again = await api.post(
        f"{API}/jobs",
        json=job_body(idempotency_key="k-1", input={"w": 2, "v": 1}, priority=0, max_attempts=3),
    )
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["created"] is False
    assert body["id"] == first["id"]
    assert again.headers["location"] == f"/api/v1/jobs/{first['id']}"
    assert await list_ids(api) == [first["id"]]


async def test_idempotency_key_with_another_request_is_409_and_changes_nothing(
    api: httpx.AsyncClient,
) -> None:
    first = await create(api, idempotency_key="k-1", input={"v": 1})
    for change in ({"input": {"v": 2}}, {"priority": 9}, {"owner_ref": "beeline/other"}):
        body = job_body(idempotency_key="k-1", input={"v": 1}) | change
        response = await api.post(f"{API}/jobs", json=body)
        assert response.status_code == 409, response.text
        error = response.json()
        assert error["error"] == "idempotency_conflict"
        assert error["message"].startswith("idempotency_key: already used for job")
        assert error["details"] == {"field": "idempotency_key", "job_id": first["id"]}
    assert await get(api, first["id"]) == {k: v for k, v in first.items() if k != "created"}
    assert await list_ids(api) == [first["id"]]


async def test_batch_item_reusing_a_key_with_another_request_is_409_and_inserts_nothing(
    api: httpx.AsyncClient,
) -> None:
    existing = await create(api, idempotency_key="k-old", input={"v": 1})
    defaults = {k: v for k, v in job_body().items() if k not in ("input",)}
    items = [
        {"idempotency_key": "k-new", "input": {"v": 0}},
        {"idempotency_key": "k-old", "input": {"v": 1}},  # the same request: fine
        {"idempotency_key": "k-old", "input": {"v": 2}},  # another one: conflict
    ]
    response = await api.post(f"{API}/jobs/batch", json={"defaults": defaults, "jobs": items})
    assert response.status_code == 409, response.text
    error = response.json()
    assert error["error"] == "idempotency_conflict"
    assert error["details"] == {"field": "jobs[2].idempotency_key", "job_id": existing["id"]}
    assert error["message"].startswith("jobs[2].idempotency_key: ")
    assert await list_ids(api) == [existing["id"]]
    # Without the conflicting item the batch goes through, the repeat matching.
    ok = await api.post(f"{API}/jobs/batch", json={"defaults": defaults, "jobs": items[:2]})
    assert ok.status_code == 201, ok.text
    assert [i["created"] for i in ok.json()["jobs"]] == [True, False]
    assert ok.json()["jobs"][1]["id"] == existing["id"]


async def test_idempotency_key_is_unique_per_owner_service_only(api: httpx.AsyncClient) -> None:
    a = await create(api, owner_service="telephony", idempotency_key="same")
    b = await create(api, owner_service="monitoring-tg", idempotency_key="same")
    assert a["id"] != b["id"]
    assert b["created"] is True
    assert sorted(await list_ids(api)) == sorted([a["id"], b["id"]])


# -- batch create -------------------------------------------------------------------


async def test_batch_merges_defaults_and_shallow_merges_input(api: httpx.AsyncClient) -> None:
    defaults = {
        "owner_service": "monitoring-tg",
        "task_type": "tg_analysis",
        "model_profile": "qwen2.5-14b",
        "priority": 5,
        "input": {"system": "Answer as JSON.", "lang": "ru", "opts": {"a": 1}},
    }
    items: list[dict[str, Any]] = [
        {"owner_ref": "channel/1", "input": {"user": "first"}},
        {"owner_ref": "channel/2", "input": {"lang": "en", "opts": {"b": 2}}, "priority": 9},
        {"owner_ref": "channel/3"},
        {"owner_ref": "channel/4", "task_type": "transcribe", "model_profile": "whisperx"},
    ]
    response = await api.post(f"{API}/jobs/batch", json={"defaults": defaults, "jobs": items})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["created"] == 4
    assert body["existing"] == 0
    assert [item["owner_ref"] for item in body["jobs"]] == [i["owner_ref"] for i in items]
    assert all(item["created"] is True and item["status"] == "pending" for item in body["jobs"])
    jobs = [await get(api, item["id"]) for item in body["jobs"]]

    assert jobs[0]["input"] == {
        "system": "Answer as JSON.",
        "lang": "ru",
        "opts": {"a": 1},
        "user": "first",
    }
    # Item keys win; nested objects are replaced, not merged (shallow merge).
    assert jobs[1]["input"] == {"system": "Answer as JSON.", "lang": "en", "opts": {"b": 2}}
    assert jobs[1]["priority"] == 9
    assert jobs[2]["input"] == defaults["input"]
    assert [j["priority"] for j in jobs] == [5, 9, 5, 5]
    assert [j["owner_service"] for j in jobs] == ["monitoring-tg"] * 4
    assert [j["task_type"] for j in jobs] == ["tg_analysis"] * 3 + ["transcribe"]
    assert jobs[3]["model_profile"] == "whisperx"


async def test_batch_without_defaults_takes_complete_items(api: httpx.AsyncClient) -> None:
    items = [job_body(owner_ref=f"beeline/{i}") for i in range(3)]
    response = await api.post(f"{API}/jobs/batch", json={"jobs": items})
    assert response.status_code == 201, response.text
    assert response.json()["created"] == 3
    assert len(await list_ids(api)) == 3


async def test_batch_reports_existing_idempotency_keys_with_created_false(
    api: httpx.AsyncClient,
) -> None:
    existing = await create(api, idempotency_key="k-old")
    items = [
        {"owner_ref": existing["owner_ref"], "idempotency_key": "k-old"},
        {"owner_ref": "r/2", "idempotency_key": "k-new"},
        {"owner_ref": "r/2", "idempotency_key": "k-new"},  # repeated inside the batch
        {"owner_ref": "r/4"},
    ]
    defaults = {k: v for k, v in job_body().items() if k != "owner_ref"}
    response = await api.post(f"{API}/jobs/batch", json={"defaults": defaults, "jobs": items})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["created"] == 2
    assert body["existing"] == 2
    out = body["jobs"]
    assert [item["created"] for item in out] == [False, True, False, True]
    assert out[0]["id"] == existing["id"]
    assert out[2]["id"] == out[1]["id"]
    assert [item["idempotency_key"] for item in out] == ["k-old", "k-new", "k-new", None]
    assert len(await list_ids(api)) == 3

    # The same batch again creates nothing new except the key-less item.
    again = await api.post(f"{API}/jobs/batch", json={"defaults": defaults, "jobs": items})
    assert again.status_code in (200, 201), again.text
    assert again.json()["created"] == 1
    assert again.json()["existing"] == 3
    assert len(await list_ids(api)) == 4


# -- get ----------------------------------------------------------------------------


async def test_get_unknown_job_is_404_in_the_envelope(api: httpx.AsyncClient) -> None:
    job_id = str(uuid.uuid4())
    response = await api.get(f"{API}/jobs/{job_id}")
    assert_envelope(response, 404, "job_not_found")
    assert job_id in response.json()["message"]


async def test_get_never_shows_the_lease_token(api: httpx.AsyncClient) -> None:
    await create(api)
    claimed = await claim_one(api)
    job = await get(api, claimed["id"])
    assert job["status"] == "running"
    assert "lease_token" not in job
    assert claimed["lease_token"] not in (await api.get(f"{API}/jobs/{claimed['id']}")).text
    listed = (await api.get(f"{API}/jobs")).text
    assert claimed["lease_token"] not in listed


# -- list ---------------------------------------------------------------------------


async def test_list_is_newest_first_and_applies_every_filter(api: httpx.AsyncClient) -> None:
    a = await create(api, owner_service="telephony", owner_ref="beeline/1")
    b = await create(api, owner_service="telephony", owner_ref="beeline/2", task_type="transcribe")
    c = await create(api, owner_service="monitoring-tg", owner_ref="channel/1")
    d = await create(api, owner_service="monitoring-pf", owner_ref="pf/1", model_profile="vision")
    e = await create(api, owner_service="telephony", owner_ref="beeline/1", priority=100)
    f = await create(api, owner_service="monitoring-tg", owner_ref="channel/2", priority=50)
    # e (priority 100) -> worker-a completes; f (50) -> worker-b fails permanently.
    e_run = await claim_one(api, worker_id="worker-a")
    f_run = await claim_one(api, worker_id="worker-b")
    assert (e_run["id"], f_run["id"]) == (e["id"], f["id"])
    done = await api.post(
        f"{API}/jobs/{e['id']}/complete", json={"result": {}, "lease_token": e_run["lease_token"]}
    )
    assert done.status_code == 200
    assert (await fail(api, f_run, "invalid_input")).status_code == 200
    cancelled = await api.post(f"{API}/jobs/{d['id']}/cancel")
    assert cancelled.status_code == 200

    everything = [f["id"], e["id"], d["id"], c["id"], b["id"], a["id"]]
    assert await list_ids(api) == everything
    assert await list_ids(api, status="pending") == [c["id"], b["id"], a["id"]]
    assert await list_ids(api, status=["completed", "failed"]) == [f["id"], e["id"]]
    assert await list_ids(api, status="cancelled") == [d["id"]]
    assert await list_ids(api, status="running") == []
    assert await list_ids(api, owner_service="telephony") == [e["id"], b["id"], a["id"]]
    assert await list_ids(api, owner_ref="beeline/1") == [e["id"], a["id"]]
    assert await list_ids(api, task_type="transcribe") == [b["id"]]
    assert await list_ids(api, model_profile="vision") == [d["id"]]
    assert await list_ids(api, worker_id="worker-a") == [e["id"]]
    assert await list_ids(api, worker_id="worker-b") == [f["id"]]
    assert await list_ids(api, error_category="invalid_input") == [f["id"]]
    assert await list_ids(api, error_category="timeout") == []
    # created_after is inclusive, created_before exclusive.
    assert await list_ids(api, created_after=c["created_at"]) == everything[:4]
    assert await list_ids(api, created_before=c["created_at"]) == [b["id"], a["id"]]
    assert await list_ids(api, created_after=b["created_at"], created_before=d["created_at"]) == [
        c["id"],
        b["id"],
    ]
    # Filters combine with AND.
    assert await list_ids(api, owner_service="telephony", status="pending") == [
        b["id"],
        a["id"],
    ]
    assert await list_ids(api, owner_service="telephony", task_type="transcribe") == [b["id"]]
    assert await list_ids(api, owner_service="nobody") == []


async def test_list_pages_with_a_keyset_cursor(api: httpx.AsyncClient) -> None:
    # A batch shares one created_at, so the order falls back to the id: pages must
    # still neither skip nor repeat a job.
    defaults = {k: v for k, v in job_body().items() if k != "owner_ref"}
    batch = await api.post(
        f"{API}/jobs/batch",
        json={"defaults": defaults, "jobs": [{"owner_ref": f"r/{i}"} for i in range(23)]},
    )
    assert batch.status_code == 201
    singles = [await create(api, owner_ref=f"single/{i}") for i in range(4)]
    other = await create(api, owner_service="monitoring-tg")

    seen: list[dict[str, Any]] = []
    pages: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 10, "owner_service": "telephony"}
        if cursor is not None:
            params["cursor"] = cursor
        response = await api.get(f"{API}/jobs", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        seen.extend(body["jobs"])
        pages.append(len(body["jobs"]))
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
        assert cursor
    assert pages == [10, 10, 7]
    ids = [job["id"] for job in seen]
    assert len(ids) == len(set(ids)) == 27
    assert other["id"] not in ids
    expected = {item["id"] for item in batch.json()["jobs"]} | {s["id"] for s in singles}
    assert set(ids) == expected
    keys = [(ts(job["created_at"]), job["id"]) for job in seen]
    assert keys == sorted(keys, reverse=True)  # newest first, id as the tie-break


PAYLOAD_FIELDS = {"input", "result", "errors", "error_details"}


async def test_list_returns_the_summary_by_default_and_payloads_on_request(
    api: httpx.AsyncClient,
) -> None:
    job = await create(api, input={"text": "hello"})
    running = await claim_one(api)
    assert (await fail(api, running, "timeout", details={"after": 5})).status_code == 200
    full = await get(api, job["id"])

    [summary] = (await api.get(f"{API}/jobs")).json()["jobs"]
    assert not PAYLOAD_FIELDS & set(summary)
    assert summary == {k: v for k, v in full.items() if k not in PAYLOAD_FIELDS}
    assert summary["error_count"] == 1

    for params in (
        {"include": "input,result,errors,error_details"},
        {"include": ["input", "result", "errors", "error_details"]},
        {"include": ["input,result", "errors,error_details"]},
    ):
        body = (await api.get(f"{API}/jobs", params=params)).json()
        assert body["jobs"] == [full], params
        assert body["truncated"] is False
    [some] = (await api.get(f"{API}/jobs", params={"include": "errors"})).json()["jobs"]
    assert some["errors"] == full["errors"]
    assert not {"input", "result", "error_details"} & set(some)

    for bad in ("inputs", "input,lease_token", "", "input,", "id"):
        response = await api.get(f"{API}/jobs", params={"include": bad})
        assert_envelope(response, 422)
        assert response.json()["details"]["field"] == "include", bad
        assert response.json()["message"].startswith("include: "), bad


async def test_list_of_twenty_10_mb_jobs_is_small_by_default_and_pages_payloads_under_a_cap(
    api_factory: ApiFactory,
) -> None:
    big = 10 * 1024 * 1024
    async with api_factory(MAX_BODY_BYTES=str(16 * 1024 * 1024)) as client:
        for i in range(20):
            response = await client.post(
                f"{API}/jobs", json=job_body(owner_ref=f"big/{i}", input={"pad": "x" * big})
            )
            assert response.status_code == 201, response.status_code
        listed = await client.get(f"{API}/jobs", params={"limit": 20})
        assert listed.status_code == 200
        assert len(listed.content) < 100 * 1024
        body = listed.json()
        assert len(body["jobs"]) == 20
        assert (body["next_cursor"], body["truncated"]) == (None, False)
        order = [job["id"] for job in body["jobs"]]

        # With the inputs: one page stays under the 8 MiB cap plus one job (a job larger
        # than the cap comes alone), `truncated` says why the page is short, and
        # `next_cursor` continues without a gap.
        cursor: str | None = None
        for expected_id in order[:3]:
            params: dict[str, Any] = {"limit": 20, "include": "input"}
            if cursor is not None:
                params["cursor"] = cursor
            page = await client.get(f"{API}/jobs", params=params)
            assert page.status_code == 200
            assert len(page.content) < big + 100 * 1024
            data = page.json()
            assert [job["id"] for job in data["jobs"]] == [expected_id]
            assert data["jobs"][0]["input"] == {"pad": "x" * big}
            assert data["truncated"] is True
            cursor = data["next_cursor"]
            assert cursor is not None


async def test_list_page_that_ends_exactly_has_no_next_cursor(api: httpx.AsyncClient) -> None:
    for i in range(4):
        await create(api, owner_ref=f"r/{i}")
    first = (await api.get(f"{API}/jobs", params={"limit": 2})).json()
    assert len(first["jobs"]) == 2
    assert first["next_cursor"]
    second = await api.get(f"{API}/jobs", params={"limit": 2, "cursor": first["next_cursor"]})
    assert second.status_code == 200
    assert len(second.json()["jobs"]) == 2
    assert second.json()["next_cursor"] is None
    everything = (await api.get(f"{API}/jobs", params={"limit": 4})).json()
    assert everything["next_cursor"] is None
    assert len(everything["jobs"]) == 4


async def test_list_default_limit_is_50(api: httpx.AsyncClient) -> None:
    defaults = {k: v for k, v in job_body().items() if k != "owner_ref"}
    jobs = [{"owner_ref": f"r/{i}"} for i in range(51)]
    assert (
        await api.post(f"{API}/jobs/batch", json={"defaults": defaults, "jobs": jobs})
    ).status_code == 201
    body = (await api.get(f"{API}/jobs")).json()
    assert len(body["jobs"]) == 50
    assert body["next_cursor"] is not None


# -- claim --------------------------------------------------------------------------


async def test_claim_takes_jobs_by_priority_with_fresh_leases(api: httpx.AsyncClient) -> None:
    low = await create(api, owner_ref="low", priority=0)
    high = await create(api, owner_ref="high", priority=10)
    mid = await create(api, owner_ref="mid", priority=5)
    before = datetime.now(UTC)
    first = await claim(api, worker_id="w-1", limit=2, lease_seconds=60)
    assert [j["id"] for j in first] == [high["id"], mid["id"]]
    for job in first:
        assert job["status"] == "running"
        assert job["worker_id"] == "w-1"
        assert job["attempt"] == 1
        uuid.UUID(job["lease_token"])
        assert ts(job["started_at"]) >= before - timedelta(seconds=5)
        lease = ts(job["lease_expires_at"]) - ts(job["started_at"])
        assert timedelta(seconds=59) <= lease <= timedelta(seconds=61)
    assert first[0]["lease_token"] != first[1]["lease_token"]
    rest = await claim(api, worker_id="w-2", limit=5)
    assert [j["id"] for j in rest] == [low["id"]]
    # Default lease: WORKER_LEASE_TIMEOUT (15 minutes).
    lease = ts(rest[0]["lease_expires_at"]) - ts(rest[0]["started_at"])
    assert timedelta(seconds=899) <= lease <= timedelta(seconds=901)
    assert await claim(api, worker_id="w-3", limit=5) == []
    assert (await get(api, low["id"]))["worker_id"] == "w-2"


async def test_claim_default_limit_is_one(api: httpx.AsyncClient) -> None:
    for i in range(3):
        await create(api, owner_ref=f"r/{i}")
    assert len(await claim(api)) == 1


async def test_claim_filters_by_task_types_and_model_profiles(api: httpx.AsyncClient) -> None:
    chat = await create(api, task_type="llm_chat", model_profile="qwen2.5-14b")
    asr = await create(api, task_type="transcribe", model_profile="whisperx")
    vision = await create(api, task_type="llm_chat", model_profile="vision")
    got = await claim(api, task_types=["transcribe", "nothing"], limit=10)
    assert [j["id"] for j in got] == [asr["id"]]
    got = await claim(api, model_profiles=["vision"], limit=10)
    assert [j["id"] for j in got] == [vision["id"]]
    assert await claim(api, task_types=["llm_chat"], model_profiles=["whisperx"], limit=10) == []
    got = await claim(api, task_types=["llm_chat"], model_profiles=["qwen2.5-14b"], limit=10)
    assert [j["id"] for j in got] == [chat["id"]]


async def test_claim_skips_jobs_scheduled_for_later(api: httpx.AsyncClient) -> None:
    later = await create(api, run_after=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    now = await create(api, run_after=(datetime.now(UTC) - timedelta(hours=1)).isoformat())
    assert [j["id"] for j in await claim(api, limit=10)] == [now["id"]]
    assert (await get(api, later["id"]))["status"] == "pending"


# -- complete -----------------------------------------------------------------------


async def test_complete_with_the_lease_token_stores_the_result(api: httpx.AsyncClient) -> None:
    await create(api)
    job = await claim_one(api)
    result = {"content": "ok", "usage": {"total_tokens": 12}, "list": [1, "two", None]}
    response = await api.post(
        f"{API}/jobs/{job['id']}/complete",
        json={"result": result, "lease_token": job["lease_token"]},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    # The answer is short; the result is read back with GET.
    assert set(answer) == {"id", "status", "finished_at"}
    assert answer["id"] == job["id"]
    assert answer["status"] == "completed"
    done = await get(api, job["id"])
    assert done["status"] == "completed"
    assert done["result"] == result
    assert done["lease_expires_at"] is None
    assert "lease_token" not in done
    assert done["finished_at"] == answer["finished_at"]
    assert ts(done["finished_at"]) >= ts(done["started_at"])


async def test_complete_with_a_stale_token_is_409_and_changes_nothing(
    api: httpx.AsyncClient,
) -> None:
    await create(api)
    job = await claim_one(api)
    before = await get(api, job["id"])
    for token in (str(uuid.uuid4()), None):
        body: dict[str, Any] = {"result": {"x": 1}}
        if token is not None:
            body["lease_token"] = token
        response = await api.post(f"{API}/jobs/{job['id']}/complete", json=body)
        assert_envelope(response, 409)
    assert await get(api, job["id"]) == before


async def test_complete_twice_with_another_result_is_409(api: httpx.AsyncClient) -> None:
    await create(api)
    job = await claim_one(api)
    body = {"result": {"n": 1}, "lease_token": job["lease_token"]}
    assert (await api.post(f"{API}/jobs/{job['id']}/complete", json=body)).status_code == 200
    again = await api.post(f"{API}/jobs/{job['id']}/complete", json={**body, "result": {"n": 2}})
    assert_envelope(again, 409)
    assert (await get(api, job["id"]))["result"] == {"n": 1}


async def test_a_repeated_complete_or_fail_of_the_same_attempt_answers_success(
    api: httpx.AsyncClient,
) -> None:
    """A lost reply: the caller sends the same outcome again under the same lease."""
    await create(api, owner_ref="c")
    await create(api, owner_ref="f")
    done, failed = await claim(api, limit=2)
    body = {"result": {"n": 1}, "lease_token": done["lease_token"]}
    first = await api.post(f"{API}/jobs/{done['id']}/complete", json=body)
    again = await api.post(f"{API}/jobs/{done['id']}/complete", json=body)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["status"] == "completed"
    assert again.json()["finished_at"] == first.json()["finished_at"]  # nothing changed
    fail = {"category": "invalid_input", "message": "bad", "lease_token": failed["lease_token"]}
    first = await api.post(f"{API}/jobs/{failed['id']}/fail", json=fail)
    again = await api.post(f"{API}/jobs/{failed['id']}/fail", json=fail)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["attempt"] == 1
    other = await api.post(f"{API}/jobs/{failed['id']}/fail", json={**fail, "message": "other"})
    assert_envelope(other, 409)


async def test_complete_unknown_job_is_404(api: httpx.AsyncClient) -> None:
    response = await api.post(f"{API}/jobs/{uuid.uuid4()}/complete", json={"result": {}})
    assert_envelope(response, 404, "job_not_found")


# -- fail ---------------------------------------------------------------------------


async def test_transient_failure_goes_back_to_pending_with_a_later_run_after(
    api: httpx.AsyncClient,
) -> None:
    categories = ["provider_unavailable", "rate_limited", "timeout"]
    for i, _ in enumerate(categories):
        await create(api, owner_ref=f"r/{i}")
    jobs = await claim(api, worker_id="worker-7", limit=3)
    for job, category in zip(jobs, categories, strict=True):
        before = datetime.now(UTC)
        response = await fail(api, job, category, details={"http_status": 503})
        assert response.status_code == 200, response.text
        failed = response.json()
        assert failed["status"] == "pending", category
        # RETRY_BACKOFF_BASE is 10 s: the first retry waits 5-10 s (jittered).
        delay = ts(failed["run_after"]) - before
        assert timedelta(seconds=4) < delay < timedelta(seconds=11), category
        assert failed["error_category"] == category
        assert failed["error_message"] == f"{category} happened"
        assert failed["error_details"] == {"http_status": 503}
        # An outage spends no attempt (the same attempt runs again); a timeout does.
        assert failed["attempt"] == (0 if category != "timeout" else 1)
        assert failed["finished_at"] is None
        assert failed["lease_expires_at"] is None
        [entry] = failed["errors"]
        assert entry["attempt"] == 1
        assert entry["category"] == category
        assert entry["message"] == f"{category} happened"
        assert entry["worker"] == "worker-7"
        at = ts(entry["at"])
        assert before - timedelta(seconds=5) < at < datetime.now(UTC) + timedelta(seconds=5)
        # The old lease is gone: only a repeat of this very failure is recognised.
        complete = {"result": {}, "lease_token": job["lease_token"]}
        assert_envelope(await api.post(f"{API}/jobs/{job['id']}/complete", json=complete), 409)
    # Backing off: none is claimable yet.
    assert await claim(api, limit=10) == []


async def test_explicit_retryable_flag_overrides_the_category(api: httpx.AsyncClient) -> None:
    await create(api, owner_ref="a")
    await create(api, owner_ref="b")
    first, second = await claim(api, limit=2)
    retried = await fail(api, first, "provider_error", retryable=True)
    assert retried.json()["status"] == "pending"
    final = await fail(api, second, "timeout", retryable=False)
    assert final.json()["status"] == "failed"


async def test_permanent_failure_fails_the_job_at_once(api: httpx.AsyncClient) -> None:
    categories = ["invalid_input", "provider_error", "provider_auth", "internal", "custom.thing"]
    for i, _ in enumerate(categories):
        await create(api, owner_ref=f"r/{i}")
    jobs = await claim(api, limit=len(categories))
    for job, category in zip(jobs, categories, strict=True):
        response = await fail(api, job, category)
        assert response.status_code == 200, response.text
        failed = response.json()
        assert failed["status"] == "failed", category
        assert failed["error_category"] == category
        assert failed["attempt"] == 1
        assert failed["finished_at"] is not None
        assert len(failed["errors"]) == 1
        assert await get(api, job["id"]) == failed
        complete = {"result": {}, "lease_token": job["lease_token"]}
        assert_envelope(await api.post(f"{API}/jobs/{job['id']}/complete", json=complete), 409)


async def test_retryable_failures_stop_when_attempts_are_used_up(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(RETRY_BACKOFF_BASE="0.05", RETRY_BACKOFF_MAX="0.1") as client:
        created = await create(client, max_attempts=2)
        first = await claim_one(client, worker_id="w-1")
        retried = (await fail(client, first, "timeout")).json()
        assert retried["status"] == "pending"
        assert retried["attempt"] == 1
        await asyncio.sleep(0.2)  # the backoff is at most 0.1 s here
        second = await claim_one(client, worker_id="w-2")
        assert second["id"] == created["id"]
        assert second["attempt"] == 2
        response = await fail(client, second, "timeout")
        assert response.status_code == 200
        final = response.json()
        assert final["status"] == "failed"
        assert final["attempt"] == 2
        assert final["error_category"] == "timeout"
        assert [(e["attempt"], e["worker"]) for e in final["errors"]] == [(1, "w-1"), (2, "w-2")]
        await asyncio.sleep(0.2)
        assert await claim(client) == []


async def test_fail_unknown_job_is_404(api: httpx.AsyncClient) -> None:
    response = await api.post(
        f"{API}/jobs/{uuid.uuid4()}/fail", json={"category": "internal", "message": "x"}
    )
    assert_envelope(response, 404, "job_not_found")


# -- heartbeat ----------------------------------------------------------------------


async def test_heartbeat_extends_the_lease(api: httpx.AsyncClient) -> None:
    await create(api)
    job = await claim_one(api, lease_seconds=30)
    first_expiry = ts(job["lease_expires_at"])
    response = await api.post(
        f"{API}/jobs/{job['id']}/heartbeat",
        json={"lease_token": job["lease_token"], "extend_seconds": 600},
    )
    assert response.status_code == 200, response.text
    beat = response.json()
    assert beat["id"] == job["id"]
    assert beat["status"] == "running"
    extended = ts(beat["lease_expires_at"])
    assert extended - first_expiry > timedelta(seconds=500)
    assert (await get(api, job["id"]))["lease_expires_at"] == beat["lease_expires_at"]
    # Without extend_seconds the lease runs the claim's own length (30 s) from now,
    # not WORKER_LEASE_TIMEOUT: a dead external worker's job waits 30 s, not 15 min.
    default = await api.post(
        f"{API}/jobs/{job['id']}/heartbeat", json={"lease_token": job["lease_token"]}
    )
    assert default.status_code == 200
    remaining = ts(default.json()["lease_expires_at"]) - datetime.now(UTC)
    assert timedelta(seconds=25) < remaining < timedelta(seconds=35)


async def test_heartbeat_after_cancel_is_409(api: httpx.AsyncClient) -> None:
    await create(api)
    job = await claim_one(api)
    cancelled = await api.post(f"{API}/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    beat = await api.post(
        f"{API}/jobs/{job['id']}/heartbeat", json={"lease_token": job["lease_token"]}
    )
    assert_envelope(beat, 409)
    done = await api.post(
        f"{API}/jobs/{job['id']}/complete", json={"result": {}, "lease_token": job["lease_token"]}
    )
    assert_envelope(done, 409)
    assert (await get(api, job["id"]))["status"] == "cancelled"


async def test_heartbeat_with_a_stale_token_is_409(api: httpx.AsyncClient) -> None:
    await create(api)
    old = await claim_one(api, worker_id="w-old")
    # A manual retry takes the job away; another worker claims it.
    assert (await api.post(f"{API}/jobs/{old['id']}/retry")).status_code == 200
    new = await claim_one(api, worker_id="w-new")
    assert new["id"] == old["id"]
    assert new["lease_token"] != old["lease_token"]
    stale = await api.post(
        f"{API}/jobs/{old['id']}/heartbeat", json={"lease_token": old["lease_token"]}
    )
    assert_envelope(stale, 409, "lease_lost")
    stale_complete = await api.post(
        f"{API}/jobs/{old['id']}/complete", json={"result": {}, "lease_token": old["lease_token"]}
    )
    assert_envelope(stale_complete, 409, "lease_lost")
    assert_envelope(await fail(api, old, "internal"), 409, "lease_lost")
    current = await get(api, new["id"])
    assert current["status"] == "running"
    assert current["worker_id"] == "w-new"
    fresh = await api.post(
        f"{API}/jobs/{new['id']}/heartbeat", json={"lease_token": new["lease_token"]}
    )
    assert fresh.status_code == 200


async def test_heartbeat_of_a_pending_job_is_409_and_unknown_job_404(
    api: httpx.AsyncClient,
) -> None:
    job = await create(api)
    beat = await api.post(
        f"{API}/jobs/{job['id']}/heartbeat", json={"lease_token": str(uuid.uuid4())}
    )
    assert_envelope(beat, 409)
    missing = await api.post(
        f"{API}/jobs/{uuid.uuid4()}/heartbeat", json={"lease_token": str(uuid.uuid4())}
    )
    assert_envelope(missing, 404, "job_not_found")


# -- retry and cancel of one job -----------------------------------------------------


async def test_retry_of_a_failed_job_grants_one_more_attempt_and_keeps_history(
    api: httpx.AsyncClient,
) -> None:
    await create(api, max_attempts=1)
    job = await claim_one(api)
    assert (await fail(api, job, "timeout")).json()["status"] == "failed"  # attempts used up
    before = datetime.now(UTC)
    response = await api.post(f"{API}/jobs/{job['id']}/retry")
    assert response.status_code == 200, response.text
    retried = response.json()
    assert retried["status"] == "pending"
    assert retried["max_attempts"] == 2
    assert retried["attempt"] == 1
    assert retried["finished_at"] is None
    assert len(retried["errors"]) == 1
    assert ts(retried["run_after"]) <= datetime.now(UTC) + timedelta(seconds=1)
    assert ts(retried["run_after"]) >= before - timedelta(seconds=5)
    again = await claim_one(api)
    assert again["id"] == job["id"]
    assert again["attempt"] == 2


async def test_retries_stop_at_100_attempts_and_the_history_stays_bounded(
    api: httpx.AsyncClient,
) -> None:
    job = await create(api, max_attempts=1)
    for attempt in range(1, 101):
        running = await claim_one(api)
        assert running["attempt"] == attempt
        failed = await fail(api, running, "internal")
        assert failed.json()["status"] == "failed"
        retry = await api.post(f"{API}/jobs/{job['id']}/retry")
        if attempt < 100:
            assert retry.status_code == 200, retry.text
            assert retry.json()["max_attempts"] == attempt + 1
    # The 100th attempt was the last a job may have: no retry can grant another.
    assert_envelope(retry, 409, "attempts_exhausted")
    assert retry.json()["message"] == (
        f"cannot retry job {job['id']}: it has used 100 attempts and a job may have at most 100"
    )
    after = await get(api, job["id"])
    assert (after["status"], after["attempt"], after["max_attempts"]) == ("failed", 100, 100)
    assert after["error_count"] == 100
    assert len(after["errors"]) == 20
    assert [e["attempt"] for e in after["errors"]] == list(range(81, 101))
    bulk = await api.post(f"{API}/jobs/retry", json={"status": ["failed"]})
    assert bulk.json()["count"] == 0
    assert await get(api, job["id"]) == after


async def test_retry_of_a_running_job_revokes_the_lease(api: httpx.AsyncClient) -> None:
    await create(api)
    job = await claim_one(api)
    response = await api.post(f"{API}/jobs/{job['id']}/retry")
    assert response.status_code == 200
    assert response.json()["status"] == "pending"
    late = await api.post(
        f"{API}/jobs/{job['id']}/complete", json={"result": {}, "lease_token": job["lease_token"]}
    )
    assert_envelope(late, 409)
    assert (await get(api, job["id"]))["status"] == "pending"


async def test_retry_of_pending_or_completed_jobs_is_409_and_unknown_404(
    api: httpx.AsyncClient,
) -> None:
    pending = await create(api, owner_ref="p", priority=0)
    await create(api, owner_ref="c", priority=10)
    running = await claim_one(api)
    assert running["owner_ref"] == "c"
    completed = await api.post(
        f"{API}/jobs/{running['id']}/complete",
        json={"result": {}, "lease_token": running["lease_token"]},
    )
    assert completed.status_code == 200
    assert_envelope(await api.post(f"{API}/jobs/{pending['id']}/retry"), 409, "invalid_transition")
    assert_envelope(await api.post(f"{API}/jobs/{running['id']}/retry"), 409, "invalid_transition")
    assert_envelope(await api.post(f"{API}/jobs/{uuid.uuid4()}/retry"), 404, "job_not_found")
    assert (await get(api, pending["id"]))["status"] == "pending"
    assert (await get(api, running["id"]))["status"] == "completed"


async def test_cancel_pending_job_and_refuse_cancelling_finished_ones(
    api: httpx.AsyncClient,
) -> None:
    job = await create(api)
    response = await api.post(f"{API}/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    assert await claim(api) == []
    assert_envelope(await api.post(f"{API}/jobs/{job['id']}/cancel"), 409, "invalid_transition")
    assert_envelope(await api.post(f"{API}/jobs/{uuid.uuid4()}/cancel"), 404, "job_not_found")


# -- retry and cancel by filter -------------------------------------------------------


async def _failed_jobs(client: httpx.AsyncClient, categories: list[str]) -> list[dict[str, Any]]:
    """Create and fail one job per category (permanently), in order."""
    out = []
    for i, category in enumerate(categories):
        await create(client, owner_ref=f"failing/{i}")
        job = await claim_one(client)
        response = await fail(client, job, category, retryable=False)
        assert response.json()["status"] == "failed"
        out.append(response.json())
    return out


async def test_cancel_after_a_failed_attempt_has_category_cancelled(
    api: httpx.AsyncClient,
) -> None:
    job = await create(api)
    running = await claim_one(api)
    retried = await fail(api, running, "provider_unavailable", details={"status": 503})
    assert retried.json()["status"] == "pending"
    cancelled = await api.post(f"{API}/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert (body["status"], body["error_category"]) == ("cancelled", "cancelled")
    assert body["error_details"] is None
    assert [e["category"] for e in body["errors"]] == ["provider_unavailable"]
    # A category filter matches failed jobs only: list cancelled ones by their status.
    assert await list_ids(api, error_category="cancelled") == []
    assert await list_ids(api, status="cancelled") == [job["id"]]
    assert await list_ids(api, error_category="provider_unavailable") == []


async def test_retry_by_filter_resets_exactly_the_matching_jobs(api: httpx.AsyncClient) -> None:
    failed = await _failed_jobs(api, ["provider_error", "provider_error", "invalid_input"])
    pending = await create(api, owner_ref="untouched")
    response = await api.post(f"{API}/jobs/retry", json={"error_category": "provider_error"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 2
    assert sorted(body["ids"]) == sorted([failed[0]["id"], failed[1]["id"]])
    for job in failed[:2]:
        after = await get(api, job["id"])
        assert after["status"] == "pending"
        assert after["max_attempts"] >= after["attempt"] + 1
        assert len(after["errors"]) == 1
    assert (await get(api, failed[2]["id"]))["status"] == "failed"
    assert (await get(api, pending["id"]))["status"] == "pending"
    # Nothing left to retry with that filter.
    again = await api.post(f"{API}/jobs/retry", json={"error_category": "provider_error"})
    assert again.json() == {"count": 0, "ids": [], "ids_truncated": False}


async def test_bulk_retry_by_category_leaves_a_running_attempt_alone(
    api: httpx.AsyncClient,
) -> None:
    # The reproduction: a job failed once (provider_error), was retried and runs again
    # (the claim keeps the previous attempt's category); a bulk retry of provider_error
    # failures must leave that healthy attempt and its lease alone.
    job = await create(api, owner_ref="flaky")
    first = await claim_one(api)
    failed = await fail(api, first, "provider_error", retryable=False)
    assert failed.json()["status"] == "failed"
    assert (await api.post(f"{API}/jobs/{job['id']}/retry")).status_code == 200
    second = await claim_one(api)
    assert (second["id"], second["status"], second["error_category"]) == (
        job["id"],
        "running",
        "provider_error",
    )
    [other] = await _failed_jobs(api, ["provider_error"])
    for body in (
        {"error_category": "provider_error"},
        {"error_category": "provider_error", "status": ["failed", "running"]},
    ):
        response = await api.post(f"{API}/jobs/retry", json=body)
        assert response.status_code == 200, response.text
        expected = [other["id"]] if body.get("status") is None else []
        assert response.json() == {"count": len(expected), "ids": expected, "ids_truncated": False}
    after = await get(api, job["id"])
    assert (after["status"], after["attempt"]) == ("running", 2)
    beat = await api.post(
        f"{API}/jobs/{job['id']}/heartbeat", json={"lease_token": second["lease_token"]}
    )
    assert beat.status_code == 200  # the lease still holds
    assert await list_ids(api, error_category="provider_error", status="running") == []


async def test_bulk_answers_count_every_job_and_list_the_first_100_ids(
    api: httpx.AsyncClient,
) -> None:
    created = await api.post(
        f"{API}/jobs/batch",
        json={
            "defaults": {k: v for k, v in job_body().items() if k != "owner_ref"},
            "jobs": [{"owner_ref": f"many/{i}"} for i in range(150)],
        },
    )
    assert created.status_code == 201, created.text
    ids = sorted(uuid.UUID(j["id"]) for j in created.json()["jobs"])
    response = await api.post(f"{API}/jobs/cancel", json={"owner_service": "telephony"})
    body = response.json()
    assert (body["count"], body["ids_truncated"]) == (150, True)
    assert [uuid.UUID(i) for i in body["ids"]] == ids[:100]  # oldest first


async def test_retry_by_filter_takes_running_jobs_only_when_named(
    api: httpx.AsyncClient,
) -> None:
    await create(api, owner_ref="a", task_type="transcribe")
    running = await claim_one(api)
    pending = await create(api, owner_ref="b", task_type="transcribe")
    # By default a bulk retry takes failed jobs: the running attempt is healthy work.
    response = await api.post(f"{API}/jobs/retry", json={"task_type": "transcribe"})
    assert response.json() == {"count": 0, "ids": [], "ids_truncated": False}
    assert (await get(api, running["id"]))["status"] == "running"
    response = await api.post(
        f"{API}/jobs/retry", json={"task_type": "transcribe", "status": ["running"]}
    )
    assert response.json() == {"count": 1, "ids": [running["id"]], "ids_truncated": False}
    assert (await get(api, running["id"]))["status"] == "pending"
    assert (await get(api, pending["id"]))["status"] == "pending"
    only_completed = await api.post(
        f"{API}/jobs/retry", json={"task_type": "transcribe", "status": ["completed", "pending"]}
    )
    assert only_completed.json() == {"count": 0, "ids": [], "ids_truncated": False}


async def test_cancel_by_filter_cancels_pending_and_running_matches(
    api: httpx.AsyncClient,
) -> None:
    tg_pending = await create(api, owner_service="monitoring-tg", owner_ref="c/1")
    await create(api, owner_service="monitoring-tg", owner_ref="c/2", priority=10)
    tg_running = await claim_one(api)
    assert tg_running["owner_ref"] == "c/2"
    await create(api, owner_service="monitoring-tg", owner_ref="c/3", priority=10)
    tg_done = await claim_one(api)
    await api.post(
        f"{API}/jobs/{tg_done['id']}/complete",
        json={"result": {}, "lease_token": tg_done["lease_token"]},
    )
    other = await create(api, owner_service="telephony")

    response = await api.post(f"{API}/jobs/cancel", json={"owner_service": "monitoring-tg"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 2
    assert sorted(body["ids"]) == sorted([tg_pending["id"], tg_running["id"]])
    assert (await get(api, tg_pending["id"]))["status"] == "cancelled"
    assert (await get(api, tg_running["id"]))["status"] == "cancelled"
    assert (await get(api, tg_done["id"]))["status"] == "completed"
    assert (await get(api, other["id"]))["status"] == "pending"
    # The cancelled worker's lease is gone.
    late = await api.post(
        f"{API}/jobs/{tg_running['id']}/heartbeat", json={"lease_token": tg_running["lease_token"]}
    )
    assert_envelope(late, 409)


async def test_cancel_by_filter_with_status_and_time_window(api: httpx.AsyncClient) -> None:
    old = await create(api, owner_ref="old")
    await asyncio.sleep(0.01)
    cut = datetime.now(UTC)
    await asyncio.sleep(0.01)
    new = await create(api, owner_ref="new")
    response = await api.post(
        f"{API}/jobs/cancel", json={"status": ["pending"], "created_after": cut.isoformat()}
    )
    assert response.json() == {"count": 1, "ids": [new["id"]], "ids_truncated": False}
    response = await api.post(
        f"{API}/jobs/cancel", json={"created_before": cut.isoformat(), "status": ["running"]}
    )
    assert response.json() == {"count": 0, "ids": [], "ids_truncated": False}
    assert (await get(api, old["id"]))["status"] == "pending"


async def test_bulk_actions_with_an_empty_filter_need_all_true(api: httpx.AsyncClient) -> None:
    await create(api, owner_ref="a")
    await create(api, owner_ref="b")
    await claim_one(api)

    async def statuses() -> list[str]:
        return sorted(j["status"] for j in (await api.get(f"{API}/jobs")).json()["jobs"])

    for action in ("retry", "cancel"):
        bodies: list[dict[str, Any]] = [{}, {"all": False}, {"status": []}]
        for body in bodies:
            refused = await api.post(f"{API}/jobs/{action}", json=body)
            assert refused.status_code == 422, (action, body, refused.text)
            assert refused.json()["details"].get("field") == "all"
            assert "all" in refused.json()["message"]
    assert await statuses() == ["pending", "running"]

    retried = await api.post(f"{API}/jobs/retry", json={"all": True})
    assert retried.status_code == 200
    assert retried.json()["count"] == 0  # no failed job; the running one is left alone
    assert await statuses() == ["pending", "running"]
    cancelled = await api.post(f"{API}/jobs/cancel", json={"all": True})
    assert cancelled.status_code == 200
    assert cancelled.json()["count"] == 2
    assert await statuses() == ["cancelled", "cancelled"]


# -- mirror path ----------------------------------------------------------------------


async def test_mirror_path_completes_a_pending_job_without_a_claim(
    api: httpx.AsyncClient,
) -> None:
    job = await create(api)
    response = await api.post(f"{API}/jobs/{job['id']}/complete", json={"result": {"label": "x"}})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    done = await get(api, job["id"])
    assert done["status"] == "completed"
    assert done["result"] == {"label": "x"}
    assert done["finished_at"] is not None
    assert done["worker_id"] is None
    assert await claim(api) == []


async def test_mirror_path_fails_a_pending_job_without_retrying(api: httpx.AsyncClient) -> None:
    job = await create(api)
    response = await api.post(
        f"{API}/jobs/{job['id']}/fail",
        json={"category": "timeout", "message": "the caller timed out", "details": {"s": 30}},
    )
    assert response.status_code == 200, response.text
    failed = response.json()
    assert failed["status"] == "failed"
    assert failed["error_category"] == "timeout"
    assert failed["error_details"] == {"s": 30}
    assert len(failed["errors"]) == 1
    assert await claim(api) == []


async def test_mirror_complete_of_a_pending_job_with_a_lease_token_is_409(
    api: httpx.AsyncClient,
) -> None:
    job = await create(api)
    response = await api.post(
        f"{API}/jobs/{job['id']}/complete",
        json={"result": {}, "lease_token": str(uuid.uuid4())},
    )
    assert_envelope(response, 409)
    assert (await get(api, job["id"]))["status"] == "pending"


async def test_create_answers_with_the_location_of_the_job(api: httpx.AsyncClient) -> None:
    response = await api.post(f"{API}/jobs", json=job_body(owner_ref="loc/1"))
    assert response.status_code == 201
    assert response.headers["location"] == f"/api/v1/jobs/{response.json()['id']}"
    fetched = await api.get(response.headers["location"])
    assert fetched.json()["owner_ref"] == "loc/1"


async def test_batch_complete_stores_results_fenced_per_job(api: httpx.AsyncClient) -> None:
    for i in range(3):
        assert (
            await api.post(f"{API}/jobs", json=job_body(owner_ref=f"bc/{i}"))
        ).status_code == 201
    claimed = (await api.post(f"{API}/jobs/claim", json={"worker_id": "ext", "limit": 3})).json()
    first, second, third = claimed["jobs"]
    # The third job is cancelled meanwhile: its token no longer holds it.
    assert (await api.post(f"{API}/jobs/{third['id']}/cancel")).status_code == 200
    items = [
        {"id": job["id"], "lease_token": job["lease_token"], "result": {"n": n}}
        for n, job in enumerate((first, second, third))
    ]
    response = await api.post(f"{API}/jobs/complete", json={"jobs": items})
    assert response.status_code == 200
    assert response.json() == {
        "completed": [first["id"], second["id"]],
        "rejected": [third["id"]],
    }
    assert (await api.get(f"{API}/jobs/{first['id']}")).json()["result"] == {"n": 0}
    assert (await api.get(f"{API}/jobs/{second['id']}")).json()["status"] == "completed"
    third_now = (await api.get(f"{API}/jobs/{third['id']}")).json()
    assert third_now["status"] == "cancelled"
    assert third_now["result"] is None


async def test_batch_complete_refuses_a_repeated_id_and_changes_nothing(
    api: httpx.AsyncClient,
) -> None:
    assert (await api.post(f"{API}/jobs", json=job_body(owner_ref="bc/dup"))).status_code == 201
    [job] = (await api.post(f"{API}/jobs/claim", json={"worker_id": "ext"})).json()["jobs"]
    item = {"id": job["id"], "lease_token": job["lease_token"], "result": {}}
    response = await api.post(f"{API}/jobs/complete", json={"jobs": [item, item]})
    assert response.status_code == 422
    assert "jobs[1].id" in response.json()["message"]
    assert (await api.get(f"{API}/jobs/{job['id']}")).json()["status"] == "running"


async def test_batch_refuses_an_idempotency_key_in_defaults(api: httpx.AsyncClient) -> None:
    body = {
        "defaults": job_body(idempotency_key="shared"),
        "jobs": [{"owner_ref": "x"}, {"owner_ref": "y"}],
    }
    response = await api.post(f"{API}/jobs/batch", json=body)
    assert response.status_code == 422
    assert "defaults.idempotency_key" in response.json()["message"]
    assert (await api.get(f"{API}/stats")).json()["total"] == 0


async def test_timeout_seconds_is_stored_validated_and_part_of_the_idempotent_request(
    api: httpx.AsyncClient,
) -> None:
    created = await create(api, timeout_seconds=120, idempotency_key="t-1")
    assert created["timeout_seconds"] == 120
    assert (await get(api, created["id"]))["timeout_seconds"] == 120
    assert (await create_raw(api, timeout_seconds=120, idempotency_key="t-1")).status_code == 200
    other = await create_raw(api, timeout_seconds=60, idempotency_key="t-1")
    assert_envelope(other, 409, "idempotency_conflict")
    for bad in (0, 604801, 1.5, True):
        response = await create_raw(api, owner_ref=f"bad/{bad}", timeout_seconds=bad)
        assert_envelope(response, 422)
        assert "timeout_seconds" in response.text
    assert (await create(api, owner_ref="none"))["timeout_seconds"] is None


async def test_release_gives_a_running_job_back_without_spending_its_attempt(
    api: httpx.AsyncClient,
) -> None:
    created = (await api.post("/api/v1/jobs", json=job_body(task_type="release-me"))).json()
    claim = await api.post(
        "/api/v1/jobs/claim", json={"worker_id": "stopping", "task_types": ["release-me"]}
    )
    [job] = claim.json()["jobs"]
    assert job["attempt"] == 1
    released = await api.post(
        f"/api/v1/jobs/{created['id']}/release", json={"lease_token": job["lease_token"]}
    )
    assert released.status_code == 200, released.text
    body = released.json()
    assert (body["status"], body["attempt"], body["lease_expires_at"]) == ("pending", 0, None)
    # The old token holds nothing any more: a second release (or a stale one) is a 409.
    again = await api.post(
        f"/api/v1/jobs/{created['id']}/release", json={"lease_token": job["lease_token"]}
    )
    assert again.status_code == 409
    assert again.json()["error"] == "lease_lost"
    # Claimed again at once, as its first attempt.
    reclaim = await api.post(
        "/api/v1/jobs/claim", json={"worker_id": "next", "task_types": ["release-me"]}
    )
    assert [(j["id"], j["attempt"]) for j in reclaim.json()["jobs"]] == [(created["id"], 1)]
    wrong = await api.post(
        f"/api/v1/jobs/{created['id']}/release",
        json={"lease_token": "00000000-0000-4000-8000-000000000000"},
    )
    assert wrong.status_code == 409
    assert wrong.json()["error"] == "lease_lost"
    missing = await api.post(f"/api/v1/jobs/{created['id']}/release", json={})
    assert missing.status_code == 422
    assert "lease_token" in missing.text
