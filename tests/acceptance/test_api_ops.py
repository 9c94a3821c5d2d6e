"""Acceptance tests of the operational endpoints: probes, `/api/v1/stats`,
`/metrics` and the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ApiFactory
from tests.helpers import free_port, job_body
from tests.processes import ServiceGroup

API = "/api/v1"


async def create(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await client.post(f"{API}/jobs", json=job_body(**overrides))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def claim(client: httpx.AsyncClient, task_type: str, limit: int) -> list[dict[str, Any]]:
    response = await client.post(
        f"{API}/jobs/claim", json={"worker_id": "w-1", "task_types": [task_type], "limit": limit}
    )
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    assert len(jobs) == limit
    return jobs


async def complete(client: httpx.AsyncClient, job: dict[str, Any]) -> None:
    response = await client.post(
        f"{API}/jobs/{job['id']}/complete",
        json={"result": {"ok": True}, "lease_token": job["lease_token"]},
    )
    assert response.status_code == 200, response.text


async def fail(client: httpx.AsyncClient, job: dict[str, Any], category: str) -> dict[str, Any]:
    body: dict[str, Any] = {"category": category, "message": "boom"}
    if "lease_token" in job:
        body["lease_token"] = job["lease_token"]
    response = await client.post(f"{API}/jobs/{job['id']}/fail", json=body)
    assert response.status_code == 200, response.text
    out: dict[str, Any] = response.json()
    return out


# -- probes -------------------------------------------------------------------------


async def test_healthz_and_readyz_answer_200(api: httpx.AsyncClient) -> None:
    health = await api.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


async def test_database_down_gives_503_in_the_envelope_and_healthz_stays_200(
    api_factory: ApiFactory,
) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    async with api_factory(DATABASE_URL=nowhere) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200
        start = time.monotonic()
        ready, job, created, metrics = await asyncio.gather(
            client.get("/readyz"),
            client.get(f"{API}/jobs/{uuid.uuid4()}"),
            client.post(f"{API}/jobs", json=job_body()),
            client.get("/metrics"),
        )
        assert time.monotonic() - start < 15
        for response in (ready, job, created):
            assert response.status_code == 503, (response.request.url, response.text)
            body = response.json()
            assert set(body) == {"error", "message", "details"}
            assert body["error"] == "database_unavailable"
            assert "postgresql://" not in response.text  # no connection string leaks
        # The process counters are still served.
        assert metrics.status_code == 200
        assert "ai_http_request_duration_seconds" in metrics.text


# -- stats --------------------------------------------------------------------------


async def test_stats_of_an_empty_queue(api: httpx.AsyncClient) -> None:
    response = await api.get(f"{API}/stats")
    assert response.status_code == 200
    stats = response.json()
    assert stats["total"] == 0
    assert stats["by_status"] == {
        "pending": 0,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert stats["by_task_type"] == {}
    assert stats["by_model_profile"] == {}
    assert stats["failed_by_category"] == {}
    assert stats["oldest_pending_age_seconds"] is None
    assert stats["oldest_runnable_age_seconds"] is None
    assert stats["scheduled"] == {"count": 0, "capped": False, "next_run_after": None}
    assert [(p["completed"], p["failed"]) for p in stats["throughput_1h"]] == [(0, 0)] * 60
    assert stats["recent"] == {
        "completed_1h": 0,
        "failed_1h": 0,
        "completed_24h": 0,
        "failed_24h": 0,
    }
    assert stats["run_duration_24h"] == {}


def counts(**values: int) -> dict[str, int]:
    out = {"pending": 0, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}
    out.update(values)
    return out


async def test_stats_after_a_known_mix_of_jobs(api: httpx.AsyncClient, database_url: str) -> None:
    chat = {"task_type": "llm_chat", "model_profile": "qwen2.5-14b"}
    asr = {"task_type": "transcribe", "model_profile": "whisperx"}
    analysis = {"task_type": "call_analysis", "model_profile": "qwen2.5-14b"}
    # pending llm_chat x2 (one of them old)
    old = await create(api, owner_ref="p/1", **chat)
    await create(api, owner_ref="p/2", **chat)
    # pending transcribe scheduled for later
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    await create(api, owner_ref="s/1", run_after=later, **asr)
    # completed transcribe x3
    for i in range(3):
        await create(api, owner_ref=f"t/{i}", **asr)
    done = await claim(api, "transcribe", 3)
    # call_analysis: one running, two failed (invalid_input)
    for i in range(3):
        await create(api, owner_ref=f"a/{i}", **analysis)
    running, *failing = await claim(api, "call_analysis", 3)
    for job in failing:
        assert (await fail(api, job, "invalid_input"))["status"] == "failed"
    # llm_chat on vision: one failed on the mirror path (provider_auth), one cancelled
    mirror = await create(api, owner_ref="m/1", task_type="llm_chat", model_profile="vision")
    assert (await fail(api, mirror, "provider_auth"))["status"] == "failed"
    cancelled = await create(api, owner_ref="c/1", task_type="llm_chat", model_profile="vision")
    assert (await api.post(f"{API}/jobs/{cancelled['id']}/cancel")).status_code == 200
    # ocr on vision: a transient failure, back to pending (not a failed job)
    await create(api, owner_ref="o/1", task_type="ocr", model_profile="vision")
    [ocr] = await claim(api, "ocr", 1)
    assert (await fail(api, ocr, "timeout"))["status"] == "pending"

    # Known ages and durations: the oldest runnable job has waited 120 s; the three
    # transcriptions complete after 10 s (just now), 20 s (2 h ago) and 30 s (26 h ago):
    # completed here, with those times, as the rollups count a job when it finishes.
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE jobs SET created_at = now() - interval '120 seconds',"
            " run_after = now() - interval '120 seconds' WHERE id = %s",
            (old["id"],),
        )
        for job, ago, took in zip(done, ("0", "2 hours", "26 hours"), (10, 20, 30), strict=True):
            await conn.execute(
                "UPDATE jobs SET status = 'completed', result = '{}', lease_expires_at = NULL,"
                " finished_at = now() - %s::interval,"
                " started_at = now() - %s::interval - make_interval(secs => %s)"
                " WHERE id = %s",
                (ago, ago, took, job["id"]),
            )

    response = await api.get(f"{API}/stats")
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["total"] == 12
    assert stats["by_status"] == counts(pending=4, running=1, completed=3, failed=3, cancelled=1)
    assert stats["by_task_type"] == {
        "call_analysis": counts(running=1, failed=2),
        "llm_chat": counts(pending=2, failed=1, cancelled=1),
        "ocr": counts(pending=1),
        "transcribe": counts(pending=1, completed=3),
    }
    assert stats["by_model_profile"] == {
        "qwen2.5-14b": counts(pending=2, running=1, failed=2),
        "vision": counts(pending=1, failed=1, cancelled=1),
        "whisperx": counts(pending=1, completed=3),
    }
    assert stats["failed_by_category"] == {"invalid_input": 2, "provider_auth": 1}
    # The scheduled transcription and the ocr job backing off are not waiting.
    assert 119 <= stats["oldest_runnable_age_seconds"] < 130
    assert stats["oldest_pending_age_seconds"] == stats["oldest_runnable_age_seconds"]
    assert (stats["scheduled"]["count"], stats["scheduled"]["capped"]) == (2, False)
    next_run = datetime.fromisoformat(stats["scheduled"]["next_run_after"])
    assert datetime.now(UTC) < next_run < datetime.now(UTC) + timedelta(hours=1)
    assert stats["recent"] == {
        "completed_1h": 1,
        "failed_1h": 3,
        "completed_24h": 2,
        "failed_24h": 3,
    }
    duration = stats["run_duration_24h"]
    assert set(duration) == {"transcribe"}
    assert duration["transcribe"]["completed_24h"] == 2
    # Bucket estimates: both durations (10 s, 20 s) are in the [10 s, 30 s) bucket,
    # interpolated at ranks 1 and 1.9 of 2 (the exact figures are 15 and 19.5).
    assert duration["transcribe"]["p50_seconds"] == 20.0
    assert duration["transcribe"]["p95_seconds"] == 29.0
    throughput = stats["throughput_1h"]
    assert len(throughput) == 60
    assert sum(p["completed"] for p in throughput) == 1
    assert sum(p["failed"] for p in throughput) == 3
    generated = datetime.fromisoformat(stats["generated_at"].replace("Z", "+00:00"))
    assert abs(generated - datetime.now(UTC)) < timedelta(seconds=5)
    assert running["status"] == "running"


async def test_stats_count_jobs_by_owner_service(api: httpx.AsyncClient) -> None:
    assert (await api.get(f"{API}/stats")).json()["by_owner"] == {}
    for i in range(3):
        await create(api, owner_service="telephony", owner_ref=f"t/{i}", task_type="calls")
    for i in range(4):
        await create(api, owner_service="monitoring-pf", owner_ref=f"m/{i}", task_type="bulk")
    done, failing, running = await claim(api, "bulk", 3)
    await complete(api, done)
    assert (await fail(api, failing, "invalid_input"))["status"] == "failed"
    [call] = await claim(api, "calls", 1)
    assert (await fail(api, call, "timeout"))["status"] == "pending"  # retried
    cancel = await create(api, owner_service="crm", owner_ref="c/1")
    assert (await api.post(f"{API}/jobs/{cancel['id']}/cancel")).status_code == 200

    stats = (await api.get(f"{API}/stats")).json()
    assert stats["by_owner"] == {
        "crm": counts(cancelled=1),
        "monitoring-pf": counts(pending=1, running=1, completed=1, failed=1),
        "telephony": counts(pending=3),
    }
    assert stats["by_status"] == counts(pending=4, running=1, completed=1, failed=1, cancelled=1)
    assert running["owner_service"] == "monitoring-pf"


async def test_metrics_gauge_pending_and_running_by_owner_within_a_bounded_set(
    api: httpx.AsyncClient,
) -> None:
    # 12 owners, owner-i with i + 1 pending jobs; owner-11 has one running too.
    batch = [
        job_body(owner_service=f"owner-{i:02}", owner_ref=f"{i}/{k}", task_type=f"t{i}")
        for i in range(12)
        for k in range(i + 1)
    ]
    response = await api.post(f"{API}/jobs/batch", json={"jobs": batch})
    assert response.status_code == 201, response.text
    await claim(api, "t11", 1)

    found = samples((await api.get("/metrics")).text)
    owners = {labels["owner_service"] for labels, _ in found["ai_jobs_by_owner"]}
    assert owners == {f"owner-{i:02}" for i in range(2, 12)} | {"other"}
    assert value(found, "ai_jobs_by_owner", owner_service="owner-11", status="pending") == 11
    assert value(found, "ai_jobs_by_owner", owner_service="owner-11", status="running") == 1
    assert value(found, "ai_jobs_by_owner", owner_service="owner-05", status="pending") == 6
    # owner-00 (1 job) and owner-01 (2 jobs) are summed as `other`.
    assert value(found, "ai_jobs_by_owner", owner_service="other", status="pending") == 3
    assert value(found, "ai_jobs_by_owner", owner_service="other", status="running") == 0


async def test_stats_and_get_job_reject_unknown_query_parameters(
    api: httpx.AsyncClient,
) -> None:
    job = await create(api)
    for path, params in (
        (f"{API}/stats", {"verbose": "1"}),
        (f"{API}/stats", {"by": "task_type", "since": "1h"}),
        (f"{API}/jobs/{job['id']}", {"include": "input"}),
        (f"{API}/jobs/{job['id']}", {"fields": "id"}),
    ):
        response = await api.get(path, params=params)
        assert response.status_code == 422, (path, response.text)
        body = response.json()
        name = sorted(params)[0]
        assert body["error"] == "invalid_request"
        assert body["details"]["field"] == name
        assert body["message"] == f"{name}: is not a query parameter of this endpoint"
    assert (await api.get(f"{API}/stats")).status_code == 200
    assert (await api.get(f"{API}/jobs/{job['id']}")).status_code == 200


async def test_stats_stay_exact_after_counter_compaction(api: httpx.AsyncClient) -> None:
    # Trigger-written deltas are folded into the counters every ~2 s; the numbers
    # must not move when that happens.
    for i in range(5):
        await create(api, owner_ref=f"r/{i}")
    [job] = await claim(api, "llm_chat", 1)
    await complete(api, job)
    first = (await api.get(f"{API}/stats")).json()
    await asyncio.sleep(2.5)
    second = (await api.get(f"{API}/stats")).json()
    assert second["by_status"] == first["by_status"] == counts(pending=4, completed=1)
    assert second["total"] == first["total"] == 5


# -- /metrics -----------------------------------------------------------------------


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus samples by sample name."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The value of the one sample of `name` whose labels include `labels` (0 if none)."""
    matches = [v for lab, v in found.get(name, []) if labels.items() <= lab.items()]
    assert len(matches) <= 1, (name, labels, matches)
    return matches[0] if matches else 0.0


async def test_metrics_expose_job_counters_histograms_gauges_and_http_latency(
    api: httpx.AsyncClient,
) -> None:
    chat = {"task_type": "llm_chat", "model_profile": "qwen2.5-14b"}
    asr = {"task_type": "transcribe", "model_profile": "whisperx"}
    await create(api, owner_ref="c/1", idempotency_key="k", **chat)
    await create(api, owner_ref="c/2", **chat)
    repeat = await api.post(
        f"{API}/jobs", json=job_body(owner_ref="c/1", idempotency_key="k", **chat)
    )
    assert repeat.status_code == 200  # not counted as created
    batch = await api.post(
        f"{API}/jobs/batch", json={"defaults": asr, "jobs": [job_body(**asr) for _ in range(3)]}
    )
    assert batch.status_code == 201
    first, second = await claim(api, "llm_chat", 2)
    await complete(api, first)
    await fail(api, second, "timeout")  # retried: back to pending
    asr_failed, _asr_running = await claim(api, "transcribe", 2)
    await fail(api, asr_failed, "invalid_input")
    assert (await api.get(f"{API}/jobs/{first['id']}")).status_code == 200
    assert (await api.get(f"{API}/jobs/{uuid.uuid4()}")).status_code == 404

    response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    chat_labels = {"task_type": "llm_chat", "model_profile": "qwen2.5-14b"}
    asr_labels = {"task_type": "transcribe", "model_profile": "whisperx"}
    assert value(found, "ai_jobs_created_total", **chat_labels) == 2
    assert value(found, "ai_jobs_created_total", **asr_labels) == 3
    assert value(found, "ai_jobs_claimed_total", **chat_labels) == 2
    assert value(found, "ai_jobs_claimed_total", **asr_labels) == 2
    assert value(found, "ai_jobs_completed_total", **chat_labels) == 1
    assert value(found, "ai_jobs_completed_total", **asr_labels) == 0
    assert value(found, "ai_jobs_failed_total", **chat_labels, category="timeout") == 1
    assert value(found, "ai_jobs_failed_total", **asr_labels, category="invalid_input") == 1
    # Histograms: queue wait per task type, run duration per task type and outcome.
    assert value(found, "ai_job_queue_wait_seconds_count", task_type="llm_chat") == 2
    assert value(found, "ai_job_queue_wait_seconds_count", task_type="transcribe") == 2
    assert value(found, "ai_job_queue_wait_seconds_bucket", task_type="llm_chat", le="+Inf") == 2
    run = "ai_job_run_duration_seconds_count"
    assert value(found, run, task_type="llm_chat", outcome="completed") == 1
    assert value(found, run, task_type="llm_chat", outcome="failed") == 1
    assert value(found, run, task_type="transcribe", outcome="failed") == 1
    # Gauges of the queue right now, by task type.
    assert value(found, "ai_jobs", status="pending", task_type="llm_chat") == 1
    assert value(found, "ai_jobs", status="pending", task_type="transcribe") == 1
    assert value(found, "ai_jobs", status="running", task_type="transcribe") == 1
    assert value(found, "ai_jobs", status="running", task_type="llm_chat") == 0
    # HTTP latency by method, route template (not the raw path) and status.
    http = "ai_http_request_duration_seconds_count"
    job_route = "/api/v1/jobs/{job_id}"
    assert value(found, http, method="GET", route=job_route, status="200") == 1
    assert value(found, http, method="GET", route=job_route, status="404") == 1
    assert value(found, http, method="POST", route="/api/v1/jobs", status="201") == 2
    assert value(found, http, method="POST", route="/api/v1/jobs", status="200") == 1
    routes = {lab["route"] for lab, _ in found[http]}
    assert not any(re.search(r"[0-9a-f]{8}-[0-9a-f]{4}", r) for r in routes), routes


def created_by_process(metrics_dir: Path) -> dict[int, float]:
    """`ai_jobs_created_total` as each API process wrote it into the multiprocess files."""
    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.removeprefix("counter_"))
        for key, count, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[1] == "ai_jobs_created_total":
                counts[pid] = counts.get(pid, 0.0) + count
    return counts


async def test_metrics_of_two_api_processes_add_up(tmp_path: Path, database_url: str) -> None:
    """HTTP_WORKERS=2: requests land on both processes; /metrics, whichever answers, counts all."""
    parent = tmp_path / "metrics"
    parent.mkdir()
    async with ServiceGroup(tmp_path, database_url) as services:
        api = await services.start(
            "api", "api", HTTP_WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(parent)
        )
        [run_dir] = parent.iterdir()  # this run's own directory, made by `ai-service api`
        try:
            created = await created_through_both(api.base_url, run_dir)
        finally:
            # SIGTERM, not the group's SIGKILL: uvicorn stops its worker processes.
            stopped = await api.terminate()
        assert stopped == 0
    assert list(parent.iterdir()) == []  # removed with the run: the next one starts from zero
    assert created > 0


async def created_through_both(base_url: str, run_dir: Path) -> int:
    """Create jobs until both API processes counted some; check /metrics adds them up."""

    async def create_on_a_new_connection(n: int) -> None:
        async with httpx.AsyncClient(base_url=base_url) as http:
            await create(http, owner_ref=f"mp/{n}")

    created = 0
    deadline = time.monotonic() + 60
    # The kernel hands each new connection to either process: go on until both counted.
    while len([c for c in created_by_process(run_dir).values() if c > 0]) < 2:
        assert time.monotonic() < deadline, created_by_process(run_dir)
        await asyncio.gather(*(create_on_a_new_connection(created + i) for i in range(8)))
        created += 8
    per_process = created_by_process(run_dir)
    assert sum(per_process.values()) == created
    assert all(c < created for c in per_process.values())  # neither saw them all
    for _ in range(6):
        async with httpx.AsyncClient(base_url=base_url) as http:
            response = await http.get("/metrics")
        assert response.status_code == 200
        found = samples(response.text)
        assert value(found, "ai_jobs_created_total", task_type="llm_chat") == created
        http_count = "ai_http_request_duration_seconds_count"
        assert value(found, http_count, method="POST", route="/api/v1/jobs") == created
        assert value(found, "ai_jobs", status="pending", task_type="llm_chat") == created
    return created


async def test_metrics_stay_small_after_5000_distinct_task_types_and_profiles(
    api: httpx.AsyncClient,
) -> None:
    # Label values come from a bounded set: caller-chosen task types, model profiles
    # and categories count as `other` instead of adding series for ever.
    async def exercise(task_type: str, profile: str, category: str) -> None:
        job = await create(api, owner_ref=f"warm/{task_type}", task_type=task_type,
                           model_profile=profile)  # fmt: skip
        [running] = await claim(api, task_type, 1)
        assert running["id"] == job["id"]
        await fail(api, running, category)
        second = await create(api, owner_ref=f"warm2/{task_type}", task_type=task_type,
                              model_profile=profile)  # fmt: skip
        [running] = await claim(api, task_type, 1)
        assert running["id"] == second["id"]
        await complete(api, running)

    # Every route, histogram and label set a known job touches, before measuring.
    await exercise("llm_chat", "qwen2.5-14b", "timeout")
    await exercise("custom-warm-up", "custom-profile", "invalid_input")
    warm = {"owner_service": "telephony", "input": {}, "owner_ref": "warm/batch"}
    batch = {"jobs": [warm | {"task_type": "custom-warm-up", "model_profile": "custom-profile"}]}
    assert (await api.post(f"{API}/jobs/batch", json=batch)).status_code == 201
    assert (await api.request("PROPFIND", f"{API}/jobs")).status_code == 405
    assert (await api.get("/metrics")).status_code == 200
    before = await api.get("/metrics")

    for start in range(0, 5000, 1000):
        items = [
            {"owner_ref": f"r/{i}", "task_type": f"type-{i}", "model_profile": f"profile-{i}"}
            for i in range(start, start + 1000)
        ]
        defaults = {"owner_service": "telephony", "input": {}}
        response = await api.post(f"{API}/jobs/batch", json={"defaults": defaults, "jobs": items})
        assert response.status_code == 201, response.text
    # Claim, complete and fail a few of them, with caller-made categories too.
    claimed = await api.post(
        f"{API}/jobs/claim",
        json={"worker_id": "w-1", "task_types": [f"type-{i}" for i in range(20)], "limit": 20},
    )
    jobs = claimed.json()["jobs"]
    assert len(jobs) == 20
    for n, job in enumerate(jobs):
        if n % 2:
            await complete(api, job)
        else:
            await fail(api, job, f"custom-category-{n}")
    weird = await api.request("PROPFIND", f"{API}/jobs")
    assert weird.status_code == 405

    after = await api.get("/metrics")
    assert after.status_code == 200
    text = after.text
    # Only numbers changed: 5000 new label values would add megabytes.
    assert len(after.content) - len(before.content) < 1024, (
        len(before.content),
        len(after.content),
    )
    assert len(after.content) < 64 * 1024
    for caller_made in ("type-", "profile-", "custom-", "PROPFIND"):
        assert caller_made not in text
    found = samples(text)
    other = {"task_type": "other", "model_profile": "other"}
    assert value(found, "ai_jobs_created_total", **other) == 5003
    assert value(found, "ai_jobs_claimed_total", **other) == 22
    assert value(found, "ai_jobs_completed_total", **other) == 11
    assert value(found, "ai_jobs_failed_total", **other, category="other") == 10
    assert value(found, "ai_jobs_failed_total", **other, category="invalid_input") == 1
    assert value(found, "ai_jobs_created_total", task_type="llm_chat",
                 model_profile="qwen2.5-14b") == 2  # fmt: skip
    assert value(found, "ai_job_queue_wait_seconds_count", task_type="other") == 22
    assert value(found, "ai_jobs", status="pending", task_type="other") == 4981
    assert value(found, "ai_http_request_duration_seconds_count", method="other",
                 route="/api/v1/jobs", status="405") == 2  # fmt: skip


# -- OpenAPI ------------------------------------------------------------------------

# method, path -> error statuses it must declare (every /api/v1 route also 401 and 503)
SEED_ROUTES: dict[tuple[str, str], set[int]] = {
    ("post", "/api/v1/jobs"): {409, 413, 414, 415, 422},
    ("get", "/api/v1/jobs"): {414, 422},
    ("post", "/api/v1/jobs/batch"): {409, 413, 414, 415, 422},
    ("post", "/api/v1/jobs/retry"): {413, 415, 422},
    ("post", "/api/v1/jobs/cancel"): {413, 415, 422},
    ("post", "/api/v1/jobs/claim"): {413, 415, 422},
    ("get", "/api/v1/jobs/{id}"): {404, 414, 422},
    ("post", "/api/v1/jobs/{id}/complete"): {404, 409, 413, 415, 422},
    ("post", "/api/v1/jobs/{id}/fail"): {404, 409, 413, 415, 422},
    ("post", "/api/v1/jobs/{id}/retry"): {404, 409, 422},
    ("post", "/api/v1/jobs/{id}/heartbeat"): {404, 409, 413, 415, 422},
    ("post", "/api/v1/jobs/{id}/cancel"): {404, 409, 422},
    ("get", "/api/v1/stats"): {422},
    ("get", "/api/v1/providers/status"): set(),
    ("get", "/api/v1/infra/status"): set(),
    ("get", "/healthz"): set(),
    ("get", "/readyz"): {503},
    ("get", "/metrics"): set(),
}

# request body schema -> fields it must require
REQUEST_BODIES: dict[tuple[str, str], set[str]] = {
    ("post", "/api/v1/jobs"): {"owner_service", "owner_ref", "task_type", "model_profile", "input"},
    ("post", "/api/v1/jobs/batch"): {"jobs"},
    ("post", "/api/v1/jobs/claim"): {"worker_id"},
    ("post", "/api/v1/jobs/{id}/complete"): {"result"},
    ("post", "/api/v1/jobs/{id}/fail"): {"category", "message"},
    ("post", "/api/v1/jobs/{id}/heartbeat"): {"lease_token"},
    ("post", "/api/v1/jobs/retry"): set(),
    ("post", "/api/v1/jobs/cancel"): set(),
}

LIST_FILTERS = {
    "status",
    "owner_service",
    "owner_ref",
    "task_type",
    "model_profile",
    "worker_id",
    "error_category",
    "created_after",
    "created_before",
}


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, re.sub(r"\{[^}]+\}", "{id}", path)): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    }


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    target: dict[str, Any] = doc
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    assert doc["openapi"].startswith("3.")
    return doc


async def test_openapi_lists_every_seed_route(api: httpx.AsyncClient) -> None:
    ops = operations(await openapi(api))
    missing = sorted(set(SEED_ROUTES) - set(ops))
    assert not missing, missing


async def test_openapi_declares_error_responses_in_the_envelope(api: httpx.AsyncClient) -> None:
    doc = await openapi(api)
    ops = operations(doc)
    problems = []
    for route, wanted in SEED_ROUTES.items():
        if route not in ops:
            continue  # reported by test_openapi_lists_every_seed_route
        if route[1].startswith("/api/v1/"):
            wanted = wanted | {401, 503}
        declared = ops[route]["responses"]
        for status in sorted(wanted):
            entry = declared.get(str(status))
            if entry is None:
                problems.append(f"{route}: {status} not declared")
                continue
            schema = resolve(doc, entry["content"]["application/json"]["schema"])
            props = set(schema.get("properties", {}))
            if not {"error", "message", "details"} <= props or not {
                "error",
                "message",
            } <= set(schema.get("required", [])):
                problems.append(f"{route}: {status} is not the error envelope: {schema}")
    assert not problems, "\n".join(problems)


async def test_openapi_declares_malformed_json_400_on_routes_with_a_body(
    api: httpx.AsyncClient,
) -> None:
    # Every route that reads a JSON body answers 400 malformed_json to broken JSON.
    ops = operations(await openapi(api))
    missing = [route for route in REQUEST_BODIES if "400" not in ops[route]["responses"]]
    assert not missing, missing


async def test_openapi_describes_request_and_response_schemas(api: httpx.AsyncClient) -> None:
    doc = await openapi(api)
    ops = operations(doc)
    for route, required in REQUEST_BODIES.items():
        body = ops[route].get("requestBody")
        assert body is not None, route
        schema = resolve(doc, body["content"]["application/json"]["schema"])
        assert required <= set(schema.get("required", [])), (route, schema.get("required"))
        assert schema.get("additionalProperties") is False, route  # unknown fields refused
    bulk = resolve(
        doc,
        ops[("post", "/api/v1/jobs/cancel")]["requestBody"]["content"]["application/json"][
            "schema"
        ],
    )
    assert LIST_FILTERS | {"all"} <= set(bulk["properties"])
    for route in SEED_ROUTES:
        if route not in ops or route == ("get", "/metrics"):
            continue
        success = {k: v for k, v in ops[route]["responses"].items() if k.startswith("2")}
        assert success, route
        for status, entry in success.items():
            schema = resolve(doc, entry["content"]["application/json"]["schema"])
            assert schema.get("properties"), (route, status, schema)
    create = ops[("post", "/api/v1/jobs")]["responses"]
    assert {"200", "201"} <= set(create)  # created, or matched by idempotency key
    job = resolve(doc, create["201"]["content"]["application/json"]["schema"])
    assert {"id", "status", "input", "result", "errors", "attempt", "run_after"} <= set(
        job["properties"]
    )
    params = {p["name"] for p in ops[("get", "/api/v1/jobs")]["parameters"]}
    assert LIST_FILTERS | {"limit", "cursor"} <= params
    metrics = ops[("get", "/metrics")]["responses"]["200"]
    assert "text/plain" in metrics["content"]


async def test_a_read_only_database_is_unready_and_writes_answer_503(
    api_factory: ApiFactory, database_url: str
) -> None:
    # What a demoted primary looks like after a failover: it answers, but refuses writes.
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    try:
        async with api_factory() as client:
            ready = await client.get("/readyz")
            created = await client.post("/api/v1/jobs", json=job_body())
            health = await client.get("/healthz")
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = off")
    assert ready.status_code == 503
    assert created.status_code == 503
    assert created.json()["error"] == "database_unavailable"
    assert created.headers["retry-after"] == "1"
    assert health.status_code == 200


async def test_http_claims_respect_profile_limits_shown_in_stats_and_metrics(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(MODEL_PROFILE_LIMITS="whisperx=2,qwen2.5-14b=64") as client:
        for i in range(5):
            await create(
                client, owner_ref=f"w/{i}", task_type="transcription", model_profile="whisperx"
            )
        answer = await client.post(
            f"{API}/jobs/claim",
            json={"worker_id": "w-1", "task_types": ["transcription"], "limit": 5},
        )
        assert len(answer.json()["jobs"]) == 2  # the limit, not the 5 asked for
        stats = (await client.get(f"{API}/stats")).json()
        assert stats["profile_limits"] == {
            "qwen2.5-14b": {"limit": 64, "running": 0},
            "whisperx": {"limit": 2, "running": 2},
        }
        text = (await client.get("/metrics")).text
        assert 'ai_model_profile_limit{model_profile="whisperx"} 2.0' in text
        assert 'ai_model_profile_running{model_profile="whisperx"} 2.0' in text
