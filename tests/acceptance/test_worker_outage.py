"""Provider outages against the in-process worker: nothing is spent, nothing is lost.

The LLM stub refuses connections (it is not started yet, on a port chosen in
advance), then comes back on the same port; one of two WhisperX instances is
down for good. Small breaker intervals keep the tests quick.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from typing import Any

import pytest

from ai_service.jobs import JobStatus
from ai_service.store import Store
from ai_service.worker.breaker import BreakerState
from tests.helpers import free_port, new_job, wait_for
from tests.stubs import closed_port_url, sine_wav
from tests.stubs.openai_server import OpenAIStub
from tests.stubs.whisperx_server import WhisperXStub
from tests.workers import running_worker

MODEL = "qwen2.5-14b"
API_KEY = "sk-outage-secret-4821"
BREAKER_ENV = {
    "BREAKER_FAILURES": "3",
    "BREAKER_PROBE_INTERVAL": "0.1s",
    "BREAKER_PROBE_MAX": "0.4s",
}


async def test_an_llm_outage_holds_the_jobs_without_spending_attempts_then_they_all_complete(
    store: Store, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    stub = OpenAIStub(models=[MODEL], api_key=API_KEY, port=port)
    caplog.set_level(logging.INFO, logger="ai_service")
    env = {
        "LLM_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "LLM_API_KEY": API_KEY,
        "WORKER_CONCURRENCY": "4",
        **BREAKER_ENV,
    }
    async with running_worker(database_url, **env) as runner:
        breaker = runner.breakers.breakers["llm"]
        created = await store.create_jobs(
            [new_job(owner_ref=f"o-{i}", input={"user": f"job:o-{i} hi"}) for i in range(20)]
        )
        ids = [c.job.id for c in created]
        await wait_for(lambda: breaker.state is BreakerState.OPEN, 10, "the breaker to open")
        opened_probes = breaker.probes
        await asyncio.sleep(1.5)  # the outage goes on; the worker must sit still

        jobs = [await store.get_job(i) for i in ids]
        assert [j.status for j in jobs] == [JobStatus.PENDING] * len(jobs)
        assert all(j.attempt == 0 for j in jobs)  # no attempt spent on the outage
        met = [j for j in jobs if j.errors]
        assert met  # the first jobs met the outage and were deferred...
        assert all(e["deferred"] and e["attempt"] == 1 for j in met for e in j.errors)
        assert all(j.outage_since is not None for j in met)
        assert runner.counters.processed == 0
        # ...and then the worker stopped sending: a few probes, backing off to 0.4 s.
        assert 1 <= breaker.probes - opened_probes <= 10
        status = runner.status()
        [row] = [b for b in status["breakers"] if b["provider"] == "llm"]
        assert row["state"] == "open"
        assert row["url"] == f"http://127.0.0.1:{port}/v1"
        assert row["last_error"]
        assert 'ai_provider_up{provider="llm"} 0.0' in runner.metrics.render().decode()

        with stub:  # the server is back, on the same port
            await wait_for(
                lambda: _all_completed(store, ids), 10, "every job to complete after the outage"
            )
            status = runner.status()
        assert stub.model_requests >= 1  # the probe saw it come back
        assert stub.successes == len(ids)
    jobs = [await store.get_job(i) for i in ids]
    assert all(j.attempt == 1 for j in jobs)  # each ran exactly one counted attempt
    assert all(j.outage_since is None for j in jobs)
    assert [b["state"] for b in status["breakers"] if b["provider"] == "llm"] == ["closed"]
    assert 'ai_provider_up{provider="llm"} 1.0' in runner.metrics.render().decode()
    assert runner.counters.failed == 0
    # One line per state change, and no secret anywhere.
    changes = [
        match.group(1)
        for r in caplog.records
        if (match := re.search(r": circuit (\w+)", r.getMessage()))
    ]
    assert changes == ["open", "half_open", "closed"]
    assert API_KEY not in caplog.text
    assert API_KEY not in json.dumps(status)


async def _all_completed(store: Store, ids: list[Any]) -> bool:
    jobs = [await store.get_job(i) for i in ids]
    return all(j.status is JobStatus.COMPLETED for j in jobs)


async def test_with_one_of_two_whisperx_instances_down_its_jobs_go_to_the_other(
    store: Store, database_url: str
) -> None:
    audio = base64.b64encode(sine_wav(1.0)).decode()
    down = closed_port_url()
    with WhisperXStub() as whisperx:
        env = {"WHISPERX_URL": f"{down},{whisperx.base_url}", **BREAKER_ENV}
        async with running_worker(database_url, **env) as runner:
            created = await store.create_jobs(
                [
                    new_job(
                        owner_ref=f"t-{i}",
                        task_type="transcription",
                        model_profile="whisperx",
                        input={"audio_base64": audio},
                    )
                    for i in range(8)
                ]
            )
            ids = [c.job.id for c in created]
            await wait_for(lambda: _all_completed(store, ids), 30, "every transcription")
            first, second = (runner.breakers.breakers[k] for k in ("whisperx#1", "whisperx#2"))
            states = (first.state, second.state)
        jobs = [await store.get_job(i) for i in ids]
    assert [j.attempt for j in jobs] == [1] * len(jobs)  # none failed, none deferred
    assert all(not j.errors for j in jobs)
    assert {j.result["attempts"][0]["instance"] for j in jobs if j.result} == {whisperx.base_url}
    assert whisperx.successes == len(jobs)
    assert states == (BreakerState.OPEN, BreakerState.CLOSED)
