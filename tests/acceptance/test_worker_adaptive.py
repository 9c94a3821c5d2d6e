"""`LLM_CONCURRENCY=auto` and `LLM_FORWARD_PRIORITY` in a running worker, against the
continuous-batching engine stub; the slots and limits in `/worker/status` and `/metrics`."""

from __future__ import annotations

import httpx

from ai_service.store import Store
from ai_service.worker.status import create_status_app
from tests.helpers import new_job
from tests.stubs.vllm_engine import VllmEngineStub
from tests.workers import running_worker, wait_until_finished


async def test_auto_follows_the_engine_and_forwards_priorities(
    store: Store, database_url: str
) -> None:
    engine = VllmEngineStub(max_num_seqs=8, step_base=0.002, tokens=4, priority_scheduling=True)
    with engine:
        created = await store.create_jobs(
            [
                new_job(
                    owner_ref=f"r{i}",
                    priority=5 if i % 10 == 0 else 0,
                    input={"user": f"job:r{i} hi"},
                )
                for i in range(200)
            ]
        )
        async with running_worker(
            database_url,
            LLM_BASE_URL=f"{engine.base_url}/v1",
            LLM_CONCURRENCY="auto",
            LLM_CONCURRENCY_MAX="32",
            LLM_METRICS_INTERVAL="100ms",
            LLM_FORWARD_PRIORITY="true",
        ) as runner:
            await wait_until_finished(store, [c.job.id for c in created], timeout=60)
            status = runner.status()
            transport = httpx.ASGITransport(app=create_status_app(runner, store))
            async with httpx.AsyncClient(transport=transport, base_url="http://w") as client:
                served = (await client.get("/worker/status")).json()
                metrics = (await client.get("/metrics")).text
    llm = status["slots"]["llm"]
    assert llm["slots"] == 32
    assert llm["dedicated"] is True
    assert 1 <= llm["limit"] <= 32
    adaptive = llm["adaptive"]
    assert adaptive["mode"] == "engine"
    assert adaptive["metrics_url"] == f"{engine.base_url}/metrics"
    assert adaptive["engine"] is not None
    assert served["slots"]["llm"]["adaptive"]["mode"] == "engine"
    assert 'ai_worker_slots_limit{handler="llm"}' in metrics
    assert 'ai_worker_slots_in_use{handler="llm"}' in metrics
    # vLLM serves lower values first: our priority 5 goes as -5.
    assert engine.priorities_seen == {0: 180, -5: 20}
    assert engine.deliveries == {f"r{i}": 1 for i in range(200)}


async def test_without_forwarding_no_priority_is_sent(store: Store, database_url: str) -> None:
    with VllmEngineStub(max_num_seqs=4, step_base=0.002, tokens=2) as engine:
        created = await store.create_jobs([new_job(owner_ref="a", priority=7)])
        async with running_worker(database_url, LLM_BASE_URL=engine.base_url) as runner:
            await wait_until_finished(store, [c.job.id for c in created], timeout=60)
            llm = runner.status()["slots"]["llm"]
    assert engine.priorities_seen == {0: 1}
    assert "adaptive" not in llm  # a fixed limit
