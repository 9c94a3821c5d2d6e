"""The built-in LLM worker against a stub OpenAI-compatible server on loopback.

The runner runs in this process (`running_worker`) with its own store, as
`ai-service worker` wires it: the retry backoff comes from the settings, so
`RETRY_BACKOFF_BASE=0.05s` makes retried jobs come back at once. The stub is a
real HTTP server; `ScriptedStub` adds what `OpenAIStub` lacks (any status code,
a seeded random share of 500s, per-job delays).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
import pytest
from starlette.responses import JSONResponse, Response

from ai_service.jobs import Job, JobStatus
from ai_service.maintenance import Maintenance
from ai_service.store import Store
from tests.conftest import ApiFactory
from tests.helpers import make_settings, new_job, wait_for
from tests.stubs import closed_port_url
from tests.stubs.openai_server import OpenAIStub, RecordedRequest
from tests.workers import running_worker, wait_until_finished

MODEL = "qwen2.5-14b"
CHAT_FIELDS = {"model", "messages", "max_tokens", "response_format", "temperature", "top_p", "stop"}


class ScriptedStub(OpenAIStub):
    """`OpenAIStub` plus scripted answers with any status, random 500s and per-job delays.

    - `answer_next(status, body)`: the next request gets exactly that answer (e.g. 403);
    - `failure_rate` / `seed`: each request without a queued failure fails with
      500 (`server_error`) with that probability, drawn from a seeded `Random`;
    - `delays[marker]`: extra seconds spent on requests carrying `job:<marker>`.
    """

    def __init__(
        self,
        *,
        failure_rate: float = 0.0,
        seed: int = 0,
        delays: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        self.failure_rate = failure_rate
        self.delays = dict(delays or {})
        self.random_failures = 0
        self._random = random.Random(seed)
        self._answers: deque[tuple[int, dict[str, Any]]] = deque()
        super().__init__(**kwargs)

    def answer_next(self, status: int, body: dict[str, Any]) -> None:
        with self._lock:
            self._answers.append((status, body))

    async def _process(self, recorded: RecordedRequest, failure: str | None) -> Response:
        delay = self.delays.get(recorded.marker or "")
        if delay:
            await self.hang(delay)
        with self._lock:
            answer = self._answers.popleft() if self._answers else None
            if answer is None and failure is None and self._random.random() < self.failure_rate:
                failure = "server_error"
                self.random_failures += 1
        if answer is not None:
            recorded.outcome = f"http_{answer[0]}"
            return JSONResponse(answer[1], status_code=answer[0])
        return await super()._process(recorded, failure)


async def job_status(store: Store, job_id: UUID, status: JobStatus) -> bool:
    return (await store.get_job(job_id)).status is status


async def create(store: Store, **overrides: Any) -> Job:
    [created] = await store.create_jobs([new_job(**overrides)])
    return created.job


async def test_llm_chat_job_completes_with_content_model_usage_and_duration(
    store: Store, database_url: str
) -> None:
    with OpenAIStub(models=["qwen2.5-14b"]) as stub:
        async with running_worker(database_url, LLM_BASE_URL=stub.base_url):
            [c] = await store.create_jobs([new_job(input={"system": "Be brief", "user": "hi"})])
            await wait_until_finished(store, [c.job.id])
    job = await store.get_job(c.job.id)
    assert job.status is JobStatus.COMPLETED
    assert job.result is not None
    assert job.result["content"] == "echo: hi"
    assert job.result["model"] == "qwen2.5-14b"
    assert job.result["usage"]["total_tokens"] is not None
    assert job.result["finish_reason"] == "stop"
    assert job.result["duration_ms"] >= 0


# -- what is claimed and what is sent ---------------------------------------------------


async def test_all_three_llm_task_types_run_but_another_model_profile_is_not_claimed(
    store: Store, database_url: str
) -> None:
    with OpenAIStub(models=[MODEL]) as stub:
        async with running_worker(database_url, LLM_BASE_URL=stub.base_url) as runner:
            other = await create(
                store, model_profile="llama-3-70b", input={"user": "job:other not mine"}
            )
            ours = [
                await create(store, task_type=task_type, input={"user": f"job:{task_type} hi"})
                for task_type in ("llm_chat", "chat_completion", "call_analysis")
            ]
            await wait_until_finished(store, [j.id for j in ours])
            # A few more poll intervals: the other profile's job must stay untouched.
            await asyncio.sleep(0.6)
            other_now = await store.get_job(other.id)
            assert runner.counters.completed == 3
    for job in ours:
        done = await store.get_job(job.id)
        assert done.status is JobStatus.COMPLETED, done
        assert done.result is not None
        assert done.result["content"] == f"echo: job:{job.task_type} hi"
    assert other_now.status is JobStatus.PENDING
    assert other_now.attempt == 0
    assert other_now.worker_id is None
    assert stub.requests_received == 3
    assert stub.deliveries["other"] == 0
    assert all(r.body["model"] == MODEL for r in stub.requests)


async def test_only_chat_fields_are_forwarded_and_domain_metadata_is_ignored(
    store: Store, database_url: str
) -> None:
    job_input = {
        "system": "Answer as JSON.",
        "user": "job:analysis Classify this call",
        "max_tokens": 64,
        "response_format": {"type": "json_object"},
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["\n\n"],
        # Domain metadata a caller may add: none of it may reach the provider.
        "call_id": "beeline-42",
        "operator": {"name": "Ivan", "team": 3},
        "model": "gpt-4o",
        "n": 5,
        "stream": True,
        "tools": [{"type": "function", "function": {"name": "x"}}],
    }
    with OpenAIStub(models=[MODEL]) as stub:
        async with running_worker(database_url, LLM_BASE_URL=stub.base_url):
            job = await create(store, task_type="call_analysis", input=job_input)
            await wait_until_finished(store, [job.id])
    [request] = stub.requests
    assert set(request.body) == CHAT_FIELDS
    assert request.body["model"] == MODEL
    assert request.body["messages"] == [
        {"role": "system", "content": "Answer as JSON."},
        {"role": "user", "content": "job:analysis Classify this call"},
    ]
    assert request.body["max_tokens"] == 64
    assert request.body["response_format"] == {"type": "json_object"}
    assert request.body["temperature"] == 0.2
    assert request.body["top_p"] == 0.9
    assert request.body["stop"] == ["\n\n"]
    done = await store.get_job(job.id)
    assert done.status is JobStatus.COMPLETED
    assert done.result is not None
    # The stub answers JSON when asked for json_object; the content is that JSON text.
    assert json.loads(done.result["content"]) == {"echo": "job:analysis Classify this call"}
    assert set(done.result) >= {"content", "model", "usage", "finish_reason", "duration_ms"}
    assert done.result["usage"]["prompt_tokens"] >= 1
    assert done.result["usage"]["completion_tokens"] >= 1


async def test_explicit_messages_are_sent_as_given(store: Store, database_url: str) -> None:
    messages = [
        {"role": "system", "content": "Answer as JSON."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": "job:msgs Classify this text"},
    ]
    with OpenAIStub(models=[MODEL]) as stub:
        async with running_worker(database_url, LLM_BASE_URL=stub.base_url):
            job = await create(store, input={"messages": messages, "max_tokens": 256})
            await wait_until_finished(store, [job.id])
    [request] = stub.requests
    assert request.body["messages"] == messages
    assert request.body["max_tokens"] == 256
    assert set(request.body) == {"model", "messages", "max_tokens"}
    done = await store.get_job(job.id)
    assert done.status is JobStatus.COMPLETED
    assert done.result is not None
    assert done.result["content"] == "echo: job:msgs Classify this text"
    assert stub.deliveries["msgs"] == 1


INVALID_INPUTS: list[dict[str, Any]] = [
    {},
    {"messages": []},
    {"messages": "Classify this text"},
    {"messages": [{"role": "wizard", "content": "hi"}]},
    {"messages": [{"role": "user"}]},
    {"system": "Only a system prompt, nothing to answer"},
    {"user": "   "},
    {"user": 42},
    {"user": "hi", "max_tokens": "lots"},
    {"user": "hi", "response_format": "json"},
    {"text": "a domain field is not a chat message"},
]


async def test_input_without_usable_chat_messages_fails_invalid_input_without_a_provider_call(
    store: Store, database_url: str
) -> None:
    with OpenAIStub(models=[MODEL]) as stub:
        async with running_worker(database_url, LLM_BASE_URL=stub.base_url) as runner:
            jobs = [await create(store, input=job_input) for job_input in INVALID_INPUTS]
            await wait_until_finished(store, [j.id for j in jobs])
            assert runner.counters.failed == len(INVALID_INPUTS)
            assert runner.counters.failed_by_category == {"invalid_input": len(INVALID_INPUTS)}
    for job, job_input in zip(jobs, INVALID_INPUTS, strict=True):
        failed = await store.get_job(job.id)
        assert failed.status is JobStatus.FAILED, (job_input, failed)
        assert failed.error_category == "invalid_input", (job_input, failed.error_message)
        assert failed.attempt == 1, job_input
        assert failed.error_message is not None
        assert "input" in failed.error_message, failed.error_message
    assert stub.requests_received == 0


# -- provider answers -------------------------------------------------------------------


@dataclass
class ProviderCase:
    """How the provider answers the first call, and what must become of the job."""

    id: str
    setup: Callable[[ScriptedStub], None] = lambda stub: None
    env: dict[str, str] = field(default_factory=dict)
    stub_kwargs: dict[str, Any] = field(default_factory=dict)
    base_url: str | None = None  # None: the stub's
    status: JobStatus = JobStatus.FAILED
    category: str = "invalid_input"
    attempts: int = 1  # attempts used by the end
    deferrals: int = 0  # outage answers before the end: history entries, no attempt spent
    waits: float = 0.0  # the least time between the failure and the next attempt
    requests: int | None = 1  # stub requests by the end (None: not counted, nothing listens)
    says: str = ""  # the server's own message text, expected in error_message


PROVIDER_CASES = [
    ProviderCase(
        "400-current-vllm-shape",
        setup=lambda stub: stub.fail_next("bad_request"),
        category="invalid_input",
        says="max_tokens is too large for this model",
    ),
    ProviderCase(
        "400-older-vllm-flat-shape",
        setup=lambda stub: stub.fail_next("flat_error"),
        category="invalid_input",
        says="This model's maximum context length is 4096 tokens.",
    ),
    ProviderCase(
        "401-wrong-api-key",
        stub_kwargs={"api_key": "the-right-key-1234"},
        env={"LLM_API_KEY": "a-wrong-key-5678"},
        category="provider_auth",
        says="Unauthorized",
    ),
    ProviderCase(
        "403-forbidden",
        setup=lambda stub: stub.answer_next(
            403,
            {"error": {"message": "Key lacks access to this model", "type": "Forbidden"}},
        ),
        category="provider_auth",
        says="Key lacks access to this model",
    ),
    ProviderCase(
        "404-unknown-model",
        env={"LLM_MODEL": "missing-model"},
        category="provider_error",
        says="The model `missing-model` does not exist.",
    ),
    ProviderCase(
        "200-malformed-body",
        setup=lambda stub: stub.fail_next("malformed"),
        category="provider_error",
    ),
    ProviderCase(
        "429-rate-limited-then-ok",
        setup=lambda stub: stub.fail_next("rate_limit"),
        status=JobStatus.COMPLETED,
        category="rate_limited",
        attempts=1,
        deferrals=1,
        waits=1.0,  # the stub's Retry-After: 1, not RETRY_BACKOFF_BASE's 0.05 s
        requests=2,
        says="Too many requests, retry later",
    ),
    ProviderCase(
        # /v1/models still answers: the request failed, not the server; attempts count.
        "500-with-a-healthy-probe-then-ok",
        setup=lambda stub: stub.fail_next("server_error"),
        status=JobStatus.COMPLETED,
        category="provider_error",
        attempts=2,
        requests=2,
        says="EngineCore died",
    ),
    ProviderCase(
        "503-empty-body-then-ok",
        setup=lambda stub: stub.fail_next("unavailable"),
        status=JobStatus.COMPLETED,
        category="provider_unavailable",
        attempts=1,
        deferrals=1,
        requests=2,
        says="503",
    ),
    ProviderCase(
        "timeout-then-ok",
        setup=lambda stub: stub.fail_next("hang"),
        stub_kwargs={"hang_seconds": 3.0},
        env={"LLM_TIMEOUT": "0.5s"},
        status=JobStatus.COMPLETED,
        category="timeout",
        attempts=2,
        requests=2,
    ),
    ProviderCase(
        # No breaker: the job meets the outage until its budget is spent, then fails,
        # without having spent an attempt on it.
        "connection-refused-past-the-outage-budget",
        base_url="closed",
        env={"PROVIDER_OUTAGE_MAX": "0.5s", "BREAKER_FAILURES": "0"},
        status=JobStatus.FAILED,
        category="provider_unavailable",
        attempts=1,
        requests=None,
    ),
]


@pytest.mark.parametrize("case", PROVIDER_CASES, ids=[c.id for c in PROVIDER_CASES])
async def test_provider_answers_map_to_categories_and_retry_only_transient_ones(
    store: Store, database_url: str, case: ProviderCase
) -> None:
    with ScriptedStub(models=[MODEL], **case.stub_kwargs) as stub:
        case.setup(stub)
        base_url = closed_port_url() if case.base_url == "closed" else stub.base_url
        env = {"LLM_BASE_URL": base_url, **case.env}
        profile = env.get("LLM_MODEL", MODEL)
        async with running_worker(database_url, **env) as runner:
            job = await create(
                store, model_profile=profile, input={"user": f"job:{case.id} Classify this"}
            )
            await wait_until_finished(store, [job.id], timeout=15)
            counters = runner.counters
        done = await store.get_job(job.id)
        requests = stub.requests_received
        deliveries = stub.deliveries[case.id]

    assert done.status is case.status, (done.status, done.error_category, done.error_message)
    assert done.attempt == case.attempts
    assert [e["category"] for e in done.errors] == [case.category] * len(done.errors)
    if case.status is JobStatus.COMPLETED:
        # Retried after a transient failure, then delivered exactly once.
        assert len(done.errors) == case.attempts - 1 + case.deferrals
        assert [e.get("deferred", False) for e in done.errors] == [bool(case.deferrals)] * len(
            done.errors
        )
        assert done.result is not None
        assert done.result["content"] == f"echo: job:{case.id} Classify this"
        assert deliveries == 1
        assert counters.retried == case.attempts - 1
        assert counters.deferred == case.deferrals
        assert done.outage_since is None  # cleared by the completion
        assert done.started_at is not None
        failed_at = datetime.fromisoformat(done.errors[0]["at"])
        assert (done.started_at - failed_at).total_seconds() >= case.waits
        message = done.errors[0]["message"]
    elif case.base_url == "closed":
        # Deferred (attempt 1 each time) until the budget ran out: the last entry failed it.
        assert len(done.errors) >= 2
        assert [e["attempt"] for e in done.errors] == [1] * len(done.errors)
        assert [e["deferred"] for e in done.errors] == [True] * (len(done.errors) - 1) + [False]
        assert done.outage_since is not None
        assert (done.finished_at - done.outage_since).total_seconds() >= 0.5
        assert counters.failed == 1
        message = done.error_message or ""
    else:
        assert len(done.errors) == case.attempts
        assert done.error_category == case.category
        assert done.result is None
        assert counters.failed == 1
        message = done.error_message or ""
    if case.requests is not None:
        assert requests == case.requests  # permanent failures are not retried
    assert case.says in message, message
    # A readable message, not a dict dumped as text; and no key in it.
    assert "{'" not in message
    assert "a-wrong-key-5678" not in message


async def test_llm_base_url_with_a_query_string_still_reaches_the_chat_endpoint(
    store: Store, database_url: str
) -> None:
    # redact_url masks `?api_key=...` in /worker/status, so such URLs are expected;
    # the requests must still go to <base>/v1/chat/completions.
    with OpenAIStub(models=[MODEL]) as stub:
        url = f"{stub.base_url}/v1?api_key=url-query-secret"
        async with running_worker(database_url, LLM_BASE_URL=url):
            job = await create(store, input={"user": "job:query hi"})
            await wait_until_finished(store, [job.id])
    done = await store.get_job(job.id)
    assert done.status is JobStatus.COMPLETED, (done.error_category, done.error_message)
    assert stub.deliveries["query"] == 1


# -- concurrency ------------------------------------------------------------------------


async def test_worker_concurrency_keeps_n_jobs_in_flight(store: Store, database_url: str) -> None:
    concurrency = 6
    seen_in_flight = 0
    with OpenAIStub(models=[MODEL], latency=0.3) as stub:
        async with running_worker(
            database_url, LLM_BASE_URL=stub.base_url, WORKER_CONCURRENCY=str(concurrency)
        ) as runner:
            jobs = [await create(store, input={"user": f"job:c{i} hi"}) for i in range(24)]
            deadline = asyncio.get_running_loop().time() + 20
            while runner.counters.completed < len(jobs):
                # Jobs at the provider; finished ones whose result is being written
                # have already given their slot back.
                handling = sum(1 for f in runner.in_flight.values() if not f.recording)
                seen_in_flight = max(seen_in_flight, handling)
                assert asyncio.get_running_loop().time() < deadline, runner.counters
                await asyncio.sleep(0.01)
    # Claim limit 4 < concurrency 6: the runner claims again to fill every slot.
    assert stub.max_in_flight == concurrency
    assert seen_in_flight == concurrency
    assert all(stub.deliveries[f"c{i}"] == 1 for i in range(len(jobs)))


async def test_a_finished_job_frees_its_slot_at_once_without_waiting_for_the_others(
    store: Store, database_url: str
) -> None:
    # Two slots: one long job holds the first, the short jobs stream through the
    # second. The poll interval is long, so only an immediate refill keeps them moving.
    with ScriptedStub(models=[MODEL], latency=0.05, delays={"long": 3.0}) as stub:
        long_job = await create(store, priority=10, input={"user": "job:long"})
        shorts = [await create(store, input={"user": f"job:s{i}"}) for i in range(8)]
        async with running_worker(
            database_url,
            LLM_BASE_URL=stub.base_url,
            WORKER_CONCURRENCY="2",
            WORKER_POLL_INTERVAL="30s",
        ) as runner:
            await wait_until_finished(store, [j.id for j in shorts], timeout=10)
            assert await job_status(store, long_job.id, JobStatus.RUNNING)
            await wait_until_finished(store, [long_job.id], timeout=10)
            # The counter follows the write's answer, a moment after the row changed.
            for _ in range(200):
                if runner.counters.completed == 9:
                    break
                await asyncio.sleep(0.01)
            assert runner.counters.completed == 9
    assert stub.requests_received == 9


# -- leases -----------------------------------------------------------------------------


async def test_heartbeats_keep_the_lease_of_a_job_longer_than_the_lease_timeout(
    store: Store, database_url: str
) -> None:
    env = {"WORKER_LEASE_TIMEOUT": "1s", "RESCUE_INTERVAL": "0.2s"}
    maintenance = Maintenance(store, make_settings(database_url, **env))
    maintenance.start()
    try:
        # Control: a job claimed by a worker that never heartbeats is rescued.
        ghost = await create(store, task_type="ghost_task", input={"user": "ghost"})
        await store.claim("ghost-worker", limit=1, lease_seconds=1, task_types=["ghost_task"])
        with OpenAIStub(models=[MODEL], latency=3.0) as stub:
            async with running_worker(database_url, LLM_BASE_URL=stub.base_url, **env) as runner:
                job = await create(store, input={"user": "job:slow hi"})
                await wait_until_finished(store, [job.id], timeout=15)
                counters = runner.counters
    finally:
        await maintenance.stop()
    done = await store.get_job(job.id)
    assert done.status is JobStatus.COMPLETED
    assert done.attempt == 1
    assert done.errors == []
    assert stub.requests_received == 1
    assert stub.deliveries["slow"] == 1
    assert counters.completed == 1
    assert counters.discarded == 0
    rescued = await store.get_job(ghost.id)
    assert [e["category"] for e in rescued.errors] == ["lease_expired"]
    assert maintenance.rescued == 1  # the ghost only


async def test_cancel_through_the_api_stops_the_running_work_and_discards_it(
    store: Store, database_url: str, api_factory: ApiFactory
) -> None:
    with OpenAIStub(models=[MODEL], latency=5.0) as stub:
        async with (
            api_factory() as api,
            running_worker(
                database_url, LLM_BASE_URL=stub.base_url, WORKER_LEASE_TIMEOUT="1s"
            ) as runner,
        ):
            job = await create(store, input={"user": "job:cancelled hi"})
            await wait_for(lambda: stub.in_flight == 1, what="the provider call")
            response = await api.post(f"/api/v1/jobs/{job.id}/cancel")
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "cancelled"
            # The next heartbeat (every lease/3) finds the lease gone and stops the work,
            # long before the provider would have answered.
            await wait_for(lambda: not runner.in_flight, timeout=2.5, what="work stopped")
            assert stub.successes == 0
            counters = runner.counters
    done = await store.get_job(job.id)
    assert done.status is JobStatus.CANCELLED
    assert done.result is None
    assert counters.discarded == 1
    assert counters.completed == 0
    assert counters.processed == 0


async def test_result_arriving_after_a_cancel_is_discarded(store: Store, database_url: str) -> None:
    # Default lease (15 min): no heartbeat happens before the provider answers, so the
    # completion itself must be refused by the lease-token fence.
    with OpenAIStub(models=[MODEL], latency=1.0) as stub:
        async with running_worker(database_url, LLM_BASE_URL=stub.base_url) as runner:
            job = await create(store, input={"user": "job:late hi"})
            await wait_for(lambda: stub.in_flight == 1, what="the provider call")
            cancelled = await store.cancel(job.id)
            assert cancelled.status is JobStatus.CANCELLED
            await wait_for(lambda: runner.counters.discarded == 1, timeout=5, what="discard")
            counters = runner.counters
    assert stub.deliveries["late"] == 1  # the provider answered...
    done = await store.get_job(job.id)
    assert done.status is JobStatus.CANCELLED  # ...but nothing was stored
    assert done.result is None
    assert counters.completed == 0


# -- volume with transient failures -----------------------------------------------------


async def test_thousand_jobs_with_30_percent_transient_failures_all_complete_exactly_once(
    store: Store, database_url: str
) -> None:
    count = 1000
    new_jobs = [
        new_job(
            owner_ref=f"load-{i}",
            max_attempts=20,  # 0.3**20: no job runs out of attempts
            input={"user": f"job:load-{i} Classify this text"},
        )
        for i in range(count)
    ]
    with ScriptedStub(models=[MODEL], latency=0.005, failure_rate=0.3, seed=1234) as stub:
        async with running_worker(
            database_url, LLM_BASE_URL=stub.base_url, WORKER_CONCURRENCY="32"
        ) as runner:
            created = await store.create_jobs(new_jobs)
            ids = [c.job.id for c in created]
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:

                async def all_done() -> bool:
                    cur = await conn.execute(
                        "SELECT count(*) FROM jobs WHERE status IN ('completed', 'failed')"
                    )
                    row = await cur.fetchone()
                    return row is not None and row[0] == count

                await wait_for(all_done, timeout=90, what="1000 jobs finished")
            counters = runner.counters
    jobs = [await store.get_job(i) for i in ids]
    assert [j.status for j in jobs] == [JobStatus.COMPLETED] * count
    assert {f"load-{i}" for i in range(count)} == set(stub.deliveries)
    assert all(n == 1 for n in stub.deliveries.values())
    assert stub.successes == count
    # Every failed call was recorded once, as one retried attempt of exactly one job.
    failures = stub.requests_received - count
    assert stub.random_failures == failures
    assert 200 < failures < 500
    assert sum(len(j.errors) for j in jobs) == failures
    assert all(j.attempt == len(j.errors) + 1 for j in jobs)
    # 500s while /v1/models answers: the requests failed, not the server.
    assert {e["category"] for j in jobs for e in j.errors} == {"provider_error"}
    assert counters.completed == count
    assert counters.retried == failures
    assert counters.discarded == 0
