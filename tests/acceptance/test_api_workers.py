"""`GET /api/v1/workers` against in-process workers: the worker registry end to end.

A worker (`tests.workers.running_worker`, wired as `ai-service worker` wires it)
writes its row every 0.2 s; the API lists it with its handlers, slots and
circuit breakers, marks it stopped when it stops, flags the ones not seen
lately, and never shows a credential of a configured provider URL.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from ai_service.cli import version
from ai_service.jobs import JobStatus
from ai_service.store import Store, WorkerEntry
from tests.conftest import ApiFactory
from tests.helpers import free_port, new_job, wait_for
from tests.stubs import closed_port_url
from tests.stubs.openai_server import OpenAIStub
from tests.workers import running_worker, wait_until_finished

API = "/api/v1"
MODEL = "qwen2.5-14b"
API_KEY = "sk-registry-secret-7301"
JWT = "jwt-registry-secret-7302"
WX_PASSWORD = "wx-registry-secret-7303"
BREAKER_ENV = {
    "BREAKER_FAILURES": "2",
    "BREAKER_PROBE_INTERVAL": "0.1s",
    "BREAKER_PROBE_MAX": "0.4s",
}


async def workers(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get(f"{API}/workers", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def row_of(client: httpx.AsyncClient, worker_id: str, **params: Any) -> dict[str, Any]:
    """The worker's entry (an empty dict while it has none)."""
    listed = (await workers(client, **params))["workers"]
    return next((w for w in listed if w["worker_id"] == worker_id), {})


async def test_a_running_worker_is_listed_with_its_handlers_slots_and_breakers_then_stopped(
    api: httpx.AsyncClient, store: Store, database_url: str
) -> None:
    # Slow answers: the row is seen with the three jobs in flight first.
    with OpenAIStub(models=[MODEL], api_key=API_KEY, latency=2.0) as llm:
        env = {
            "WORKER_ID": "registry-1",
            "LLM_BASE_URL": llm.base_url,
            "LLM_API_KEY": API_KEY,
            "WORKER_CONCURRENCY": "3",
        }
        async with running_worker(database_url, **env) as runner:
            created = await store.create_jobs(
                [new_job(owner_ref=f"r-{i}", input={"user": "hi"}) for i in range(3)]
            )

            async def busy() -> bool:
                row = await row_of(api, "registry-1")
                return bool(row) and row["in_flight"] == 3

            await wait_for(busy, 10, "the row to show three jobs in flight")
            running = await row_of(api, "registry-1")
            await wait_until_finished(store, [c.job.id for c in created])

            async def counted() -> bool:
                row = await row_of(api, "registry-1")
                return bool(row) and row["counters"]["completed"] == 3

            await wait_for(counted, 10, "the row to count the three completed jobs")
            body = await workers(api)
            row = await row_of(api, "registry-1")
            assert runner.status()["worker_id"] == "registry-1"

    assert body["alive"] == 1
    assert body["within_seconds"] == 60
    assert body["truncated"] is False
    assert row["alive"] is True
    assert row["state"] == "running"
    assert row["hostname"] == socket.gethostname()
    assert row["pid"] == os.getpid()
    assert row["version"] == version()
    assert row["stopped_at"] is None
    assert 0 <= row["seconds_since_seen"] < 5
    assert row["concurrency"] == 3
    assert running["slots_in_use"] == 3
    assert {h["name"]: h["slots"]["in_use"] for h in running["handlers"]}["llm"] == 3
    assert row["in_flight"] == 0
    assert row["slots_in_use"] == 0
    assert row["last_claim_at"] is not None
    handlers = {h["name"]: h for h in row["handlers"]}
    assert set(handlers) == {"llm", "transcription", "noop"}
    assert handlers["llm"]["enabled"] is True
    assert set(handlers["llm"]["task_types"]) >= {"llm_chat", "chat_completion"}
    assert handlers["llm"]["model_profiles"] == [MODEL]
    assert handlers["llm"]["slots"]["limit"] >= 1
    assert handlers["llm"]["slots"]["in_use"] == 0
    assert handlers["transcription"]["enabled"] is False
    assert handlers["transcription"]["disabled_reason"]
    assert row["breakers"] == [
        {
            "provider": "llm",
            "url": llm.base_url,
            "state": "closed",
            "since": row["breakers"][0]["since"],
            "last_error": None,
            "consecutive_failures": 0,
        }
    ]
    # A graceful stop marks the row stopped: still listed, no longer alive.
    stopped = await row_of(api, "registry-1")
    assert stopped["state"] == "stopped"
    assert stopped["alive"] is False
    assert stopped["stopped_at"] is not None
    assert (await workers(api))["alive"] == 0


async def test_an_open_breaker_shows_in_the_row_and_no_credential_ever_does(
    api: httpx.AsyncClient, store: Store, database_url: str
) -> None:
    port = free_port()  # the LLM server is down: nothing listens there
    whisperx = closed_port_url().replace("http://", f"http://wxuser:{WX_PASSWORD}@")
    env = {
        "WORKER_ID": "registry-outage",
        "LLM_BASE_URL": f"http://127.0.0.1:{port}/v1?jwt={JWT}",
        "LLM_API_KEY": API_KEY,
        "WHISPERX_URL": whisperx,
        **BREAKER_ENV,
    }
    async with running_worker(database_url, **env):
        created = await store.create_jobs(
            [new_job(owner_ref=f"o-{i}", input={"user": "hi"}) for i in range(4)]
        )

        async def opened() -> bool:
            row = await row_of(api, "registry-outage")
            states = {b["provider"]: b["state"] for b in row.get("breakers", [])}
            return states.get("llm") == "open"

        await wait_for(opened, 10, "the row to show the LLM breaker open")
        answer = await api.get(f"{API}/workers")
    row = next(w for w in answer.json()["workers"] if w["worker_id"] == "registry-outage")
    breakers = {b["provider"]: b for b in row["breakers"]}
    assert set(breakers) == {"llm", "whisperx#1"}
    assert breakers["llm"]["state"] == "open"
    assert breakers["llm"]["last_error"]
    assert breakers["llm"]["consecutive_failures"] >= 2
    assert breakers["llm"]["url"] == f"http://127.0.0.1:{port}/v1?jwt=%2A%2A%2A"
    assert breakers["whisperx#1"]["url"] == whisperx.replace(f"wxuser:{WX_PASSWORD}@", "")
    for secret in (API_KEY, JWT, WX_PASSWORD):
        assert secret not in answer.text
    jobs = [await store.get_job(c.job.id) for c in created]
    assert all(j.status is JobStatus.PENDING for j in jobs)  # held, not failed


async def test_a_worker_not_seen_within_the_window_is_flagged_unresponsive(
    api: httpx.AsyncClient, store: Store
) -> None:
    entry = WorkerEntry(
        worker_id="vanished",
        hostname="gpu-node-7",
        pid=4242,
        version="0.0.9",
        started_at=datetime.now(UTC) - timedelta(hours=1),
        status={"v": 1, "concurrency": 8, "in_flight": 2, "handlers": [], "breakers": []},
    )
    await store.upsert_worker(entry, fresh=15)
    async with store.pool.connection() as conn:
        await conn.execute(
            "UPDATE workers SET last_seen = now() - interval '120 seconds' "
            "WHERE worker_id = 'vanished'"
        )
    row = await row_of(api, "vanished")
    assert (row["alive"], row["state"]) == (False, "unresponsive")
    assert 119 <= row["seconds_since_seen"] < 180
    assert (row["hostname"], row["pid"], row["version"]) == ("gpu-node-7", 4242, "0.0.9")
    assert (row["concurrency"], row["in_flight"]) == (8, 2)
    # A wider window counts it alive again.
    wide = await row_of(api, "vanished", within=300)
    assert (wide["alive"], wide["state"]) == (True, "running")


async def test_a_row_of_another_release_is_listed_with_what_it_has(
    api: httpx.AsyncClient, store: Store
) -> None:
    entry = WorkerEntry(
        worker_id="future",
        hostname="h",
        pid=1,
        version="9.0.0",
        started_at=datetime.now(UTC),
        status={"v": 7, "handlers": "a new shape", "shiny": True},
    )
    await store.upsert_worker(entry, fresh=15)
    row = await row_of(api, "future")
    assert row["alive"] is True
    assert (row["handlers"], row["breakers"], row["concurrency"]) == ([], [], 0)


async def test_a_bad_window_is_a_422_naming_the_field(api_factory: ApiFactory) -> None:
    async with api_factory() as api:
        for params in ({"within": "0"}, {"within": "soon"}, {"within": "3601"}):
            response = await api.get(f"{API}/workers", params=params)
            assert response.status_code == 422, (params, response.text)
            assert "within" in response.json()["message"], response.text
        response = await api.get(f"{API}/workers", params={"withn": "5"})
        assert response.status_code == 422
        assert "withn" in response.json()["message"]
