"""The registry snapshot of a worker (`worker.presence.snapshot`): bounded, secret-free.

A real `Runner` over a pool that is never opened: building the snapshot reads
only the runner's own state, no database.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from ai_service.store import Store
from ai_service.worker.breaker import BreakerState
from ai_service.worker.handler import HandlerContext
from ai_service.worker.leases import InFlight
from ai_service.worker.main import handler_specs
from ai_service.worker.presence import ENTRIES_MAX, SNAPSHOT_VERSION, TEXT_MAX, snapshot
from ai_service.worker.runner import Runner
from tests.factories import make_job
from tests.helpers import make_settings

PASSWORD = "wx-pass-secret-5511"
QUERY_TOKEN = "wx-query-secret-5512"
API_KEY = "sk-llm-secret-5513"


@pytest.fixture
async def runner() -> AsyncIterator[Runner]:
    settings = make_settings(
        "postgresql://unused/db",
        LLM_BASE_URL="http://127.0.0.1:9/v1",
        LLM_API_KEY=API_KEY,
        WHISPERX_URL=f"http://wx:{PASSWORD}@127.0.0.1:9/?token={QUERY_TOKEN},http://127.0.0.1:8",
        WORKER_CONCURRENCY="6",
        BREAKER_FAILURES="1",
    )
    pool: AsyncConnectionPool = AsyncConnectionPool("postgresql://unused/db", open=False)
    async with httpx.AsyncClient() as http:
        yield Runner(
            Store(pool), HandlerContext(settings=settings, http=http), handler_specs(settings)
        )


async def test_the_snapshot_names_handlers_slots_and_breakers_as_worker_status_does(
    runner: Runner,
) -> None:
    snap = snapshot(runner)
    assert snap["v"] == SNAPSHOT_VERSION
    assert snap["stopping"] is False
    assert snap["concurrency"] == 6
    assert snap["in_flight"] == 0
    handlers = {h["name"]: h for h in snap["handlers"]}
    assert set(handlers) == {"llm", "transcription", "noop"}
    status = runner.status()
    for handler in status["handlers"]:
        mine = handlers[handler["name"]]
        assert mine["task_types"] == handler["task_types"]
        assert mine["enabled"] == handler["enabled"]
        slots = status["slots"][handler["name"]]
        assert mine["slots"] == {k: slots[k] for k in ("slots", "limit", "in_use")}
    # The same breakers, URLs as /worker/status shows them (credentials removed).
    assert [(b["provider"], b["url"], b["state"]) for b in snap["breakers"]] == [
        (b["provider"], b["url"], b["state"]) for b in status["breakers"]
    ]
    assert {b["provider"] for b in snap["breakers"]} == {"llm", "whisperx#1", "whisperx#2"}
    assert snap["counters"]["processed"] == 0
    assert snap["last_claim_at"] is None
    json.dumps(snap)  # stored as jsonb as it is


async def test_the_snapshot_holds_no_credential_and_cuts_long_texts(runner: Runner) -> None:
    breaker = runner.breakers.breakers["whisperx#1"]
    breaker.failed("connection refused " + "x" * 5000)
    assert breaker.state is BreakerState.OPEN
    snap = snapshot(runner)
    text = json.dumps(snap)
    for secret in (PASSWORD, QUERY_TOKEN, API_KEY):
        assert secret not in text
    [entry] = [b for b in snap["breakers"] if b["provider"] == "whisperx#1"]
    assert entry["state"] == "open"
    assert entry["url"] == "http://127.0.0.1:9/?token=%2A%2A%2A"
    assert entry["last_error"].startswith("connection refused")
    assert len(entry["last_error"]) == TEXT_MAX
    assert entry["consecutive_failures"] == 1


async def test_the_snapshot_counts_jobs_in_flight_without_listing_them(runner: Runner) -> None:
    # Bounded whatever the load: how many jobs, per handler slot, never the jobs.
    noop = next(spec for spec in runner.specs if spec.name == "noop")
    jobs = [make_job(task_type="noop") for _ in range(5)]
    for job in jobs:
        runner.leases.add(InFlight(job=job, spec=noop, started=datetime.now(UTC)))
    runner.stopping = True
    snap = snapshot(runner)
    assert snap["stopping"] is True
    assert snap["in_flight"] == 5
    assert {h["name"]: h["slots"]["in_use"] for h in snap["handlers"]}["noop"] == 5
    text = json.dumps(snap)
    assert not any(str(job.id) in text for job in jobs)
    assert len(snap["handlers"]) <= ENTRIES_MAX
    assert len(snap["breakers"]) <= ENTRIES_MAX
