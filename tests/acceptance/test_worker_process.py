"""`python -m ai_service worker` as a real process: status server, signals, kill -9.

Each test starts the worker as a subprocess against the test database and a
stub OpenAI-compatible server on loopback; its stderr (JSON logs) goes to a
file under `tmp_path`, shown when something goes wrong. Subprocesses are
always killed in `finally`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from ai_service.config import ENV_NAMES
from ai_service.jobs import Job, JobStatus
from ai_service.store import Store
from tests.conftest import ApiFactory
from tests.helpers import free_port, job_body, new_job
from tests.stubs.openai_server import OpenAIStub

MODEL = "qwen2.5-14b"
API_KEY = "sk-worker-secret-7f3a9c"
START_TIMEOUT = 30.0


@dataclass
class WorkerProcess:
    """A running `ai-service worker` and its status server."""

    proc: asyncio.subprocess.Process
    base_url: str
    log_path: Path
    http: httpx.AsyncClient

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def status(self) -> dict[str, Any]:
        response = await self.http.get("/worker/status")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait_exit(self, timeout: float) -> int:
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"worker still running after {timeout}s:\n{self.log()}") from None


@asynccontextmanager
async def worker_process(
    tmp_path: Path, database_url: str, name: str = "worker", **env: str
) -> AsyncIterator[WorkerProcess]:
    """Start `python -m ai_service worker`; yields once `/healthz` answers."""
    port = free_port()
    # Nothing of this shell's AI Service configuration may leak into the worker.
    known = set(ENV_NAMES.values())
    full_env = {k: v for k, v in os.environ.items() if k not in known}
    full_env.update(
        DATABASE_URL=database_url,
        MIGRATE_ON_START="false",
        WORKER_HTTP_HOST="127.0.0.1",
        WORKER_HTTP_PORT=str(port),
        WORKER_ID="w-test",
        WORKER_POLL_INTERVAL="0.2s",
        RETRY_BACKOFF_BASE="0.05s",
        RETRY_BACKOFF_MAX="0.1s",
    )
    full_env.update(env)
    log_path = tmp_path / f"{name}.stderr.log"
    base_url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ai_service",
            "worker",
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
            worker = WorkerProcess(proc, base_url, log_path, http)
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if proc.returncode is not None:
                    raise AssertionError(f"worker exited with {proc.returncode}:\n{worker.log()}")
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker did not start:\n{worker.log()}")
                await asyncio.sleep(0.05)
            yield worker
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def wait_for_job(
    store: Store, job_id: UUID, statuses: set[JobStatus], timeout: float = 15
) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = await store.get_job(job_id)
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.status} after {timeout}s: {job}")
        await asyncio.sleep(0.02)


async def wait_until(condition: Any, timeout: float = 15, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def create(store: Store, marker: str, **overrides: Any) -> Job:
    [created] = await store.create_jobs(
        [new_job(owner_ref=marker, input={"user": f"job:{marker} Classify this"}, **overrides)]
    )
    return created.job


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


# -- status server ----------------------------------------------------------------------


async def test_status_server_reports_handlers_in_flight_jobs_counters_and_metrics(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    with OpenAIStub(models=[MODEL]) as stub:
        async with worker_process(
            tmp_path, database_url, LLM_BASE_URL=stub.base_url, LLM_API_KEY=API_KEY
        ) as worker:
            assert (await worker.http.get("/healthz")).json() == {"status": "ok"}
            ready = await worker.http.get("/readyz")
            assert ready.status_code == 200, ready.text

            # One permanent failure and one success, one after the other.
            stub.fail_next("bad_request")
            bad = await create(store, "bad")
            await wait_for_job(store, bad.id, {JobStatus.FAILED})
            good = await create(store, "good")
            await wait_for_job(store, good.id, {JobStatus.COMPLETED})

            stub.latency = 3.0
            slow = await create(store, "slow", task_type="call_analysis")
            await wait_until(lambda: stub.in_flight == 1, what="the slow provider call")
            status = await worker.status()
            metrics = await worker.http.get("/metrics")
            log_text = worker.log()

    assert status["worker_id"] == "w-test"
    started = parse_time(status["started_at"])
    assert status["shutting_down"] is False
    handlers = {h["name"]: h for h in status["handlers"]}
    llm = handlers["llm"]
    assert llm["enabled"] is True
    assert llm["task_types"] == ["call_analysis", "chat_completion", "llm_chat"]
    assert llm["model_profiles"] == [MODEL]
    assert llm["providers"]["llm"].startswith(stub.base_url)
    transcription = handlers["transcription"]
    assert transcription["enabled"] is False
    assert "transcription" in transcription["task_types"]
    assert transcription["disabled_reason"]

    [flight] = status["in_flight"]
    assert flight["job_id"] == str(slow.id)
    assert flight["task_type"] == "call_analysis"
    assert flight["handler"] == "llm"
    assert parse_time(flight["started_at"]) >= started

    counters = status["counters"]
    assert counters["processed"] == 2
    assert counters["completed"] == 1
    assert counters["failed"] == 1
    assert counters["failed_by_category"] == {"invalid_input": 1}
    # The claim loop keeps polling while a slot is free, so only bounds are certain.
    assert started <= parse_time(status["last_claim_at"]) <= datetime.now(UTC)

    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'ai_jobs_claimed_total{model_profile="qwen2.5-14b",task_type="llm_chat"} 2.0' in (
        metrics.text
    )
    assert 'ai_jobs_completed_total{model_profile="qwen2.5-14b",task_type="llm_chat"} 1.0' in (
        metrics.text
    )
    assert 'category="invalid_input"' in metrics.text
    assert "ai_job_run_duration_seconds_bucket" in metrics.text

    assert API_KEY not in str(status)
    assert API_KEY not in log_text
    assert all(r.headers.get("authorization") == f"Bearer {API_KEY}" for r in stub.requests)


async def test_status_and_logs_never_show_credentials_of_the_llm_url_or_the_api_key(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    secrets = [API_KEY, "url-jwt-secret-91b", "url-query-secret-3c4"]
    with OpenAIStub(models=[MODEL]) as stub:
        url = (
            f"http://127.0.0.1:{stub.port}/v1"
            "?api_key=url-query-secret-3c4&jwt=url-jwt-secret-91b&model=m"
        )
        async with worker_process(
            tmp_path, database_url, LLM_BASE_URL=url, LLM_API_KEY=API_KEY
        ) as worker:
            # Whatever the provider makes of it, the job's outcome is logged.
            job = await create(store, "creds")
            done = await wait_for_job(
                store, job.id, {JobStatus.COMPLETED, JobStatus.FAILED}, timeout=10
            )
            response = await worker.http.get("/worker/status")
            log_text = worker.log()
    assert response.status_code == 200
    llm = next(h for h in response.json()["handlers"] if h["name"] == "llm")
    shown = llm["providers"]["llm"]
    # Every query value is masked but the harmless `model`.
    assert shown == (f"http://127.0.0.1:{stub.port}/v1?api_key=%2A%2A%2A&jwt=%2A%2A%2A&model=m"), (
        shown
    )
    for secret in secrets:
        assert secret not in response.text, secret
        assert secret not in log_text, secret
        assert secret not in str(done.error_message), secret
        assert secret not in str(done.errors), secret
    assert "handler llm enabled" in log_text  # the log was really written


async def test_user_info_in_llm_base_url_stops_the_worker_naming_the_variable(
    database_url: str,
) -> None:
    # Credentials in the URL would be sent as Basic auth instead of LLM_API_KEY.
    known = set(ENV_NAMES.values())
    env = {k: v for k, v in os.environ.items() if k not in known}
    env.update(
        DATABASE_URL=database_url,
        LLM_BASE_URL="http://llm-user:url-password-91b@127.0.0.1:9/v1",
        LLM_API_KEY=API_KEY,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ai_service",
        "worker",
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
    output = (stdout + stderr).decode()
    assert proc.returncode == 2, output
    assert "configuration error: LLM_BASE_URL must not contain user:password@" in output
    assert "put the key in LLM_API_KEY" in output
    assert "url-password-91b" not in output
    assert API_KEY not in output


async def test_without_llm_base_url_the_llm_handler_is_disabled_and_jobs_stay_pending(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    async with worker_process(tmp_path, database_url, LLM_API_KEY=API_KEY) as worker:
        job = await create(store, "nobody")
        assert (await worker.http.get("/readyz")).status_code == 200
        await asyncio.sleep(1.0)  # five poll intervals
        status = await worker.status()
        still = await store.get_job(job.id)
        log_text = worker.log()
    llm = next(h for h in status["handlers"] if h["name"] == "llm")
    assert llm["enabled"] is False
    assert "LLM_BASE_URL" in llm["disabled_reason"]
    assert llm["task_types"] == ["call_analysis", "chat_completion", "llm_chat"]
    assert status["in_flight"] == []
    assert status["counters"]["processed"] == 0
    assert still.status is JobStatus.PENDING
    assert still.attempt == 0
    assert "LLM_BASE_URL" in log_text


# -- graceful shutdown ------------------------------------------------------------------


async def test_sigterm_stops_claiming_and_lets_in_flight_jobs_finish(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    with OpenAIStub(models=[MODEL], latency=1.0) as stub:
        async with worker_process(
            tmp_path, database_url, LLM_BASE_URL=stub.base_url, WORKER_CONCURRENCY="3"
        ) as worker:
            jobs = [await create(store, f"g{i}") for i in range(3)]
            await wait_until(lambda: stub.in_flight == 3, what="three provider calls")
            pid = worker.proc.pid
            worker.proc.send_signal(signal.SIGTERM)
            # /readyz turns 503 while the in-flight jobs finish (about a second).
            for _ in range(100):
                unready = await worker.http.get("/readyz")
                if unready.status_code == 503:
                    break
                await asyncio.sleep(0.01)
            # Created while shutting down: a freed slot must not take it.
            late = await create(store, "late")
            returncode = await worker.wait_exit(10)
            log_text = worker.log()
    assert returncode == 0, log_text
    assert unready.status_code == 503
    assert unready.json()["error"] == "shutting_down"
    for job in jobs:
        done = await store.get_job(job.id)
        assert done.status is JobStatus.COMPLETED, log_text
        assert done.attempt == 1
    assert all(stub.deliveries[f"g{i}"] == 1 for i in range(3))
    untouched = await store.get_job(late.id)
    assert untouched.status is JobStatus.PENDING
    assert untouched.attempt == 0
    assert stub.requests_received == 3
    # Its registry row was marked stopped as it went (`GET /api/v1/workers`).
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT pid, stopped_at, status FROM workers")
        [row] = await cur.fetchall()
    assert row["pid"] == pid
    assert row["stopped_at"] is not None
    assert row["status"]["stopping"] is True
    assert row["status"]["counters"]["completed"] == 3


async def test_sigterm_past_the_shutdown_timeout_returns_jobs_to_pending_uncounted(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    with OpenAIStub(models=[MODEL], latency=30.0) as stub:
        async with worker_process(
            tmp_path,
            database_url,
            LLM_BASE_URL=stub.base_url,
            WORKER_CONCURRENCY="2",
            WORKER_SHUTDOWN_TIMEOUT="0.5s",
        ) as worker:
            jobs = [await create(store, f"r{i}") for i in range(2)]
            await wait_until(lambda: stub.in_flight == 2, what="two provider calls")
            running = [await store.get_job(j.id) for j in jobs]
            sent = time.monotonic()
            worker.proc.send_signal(signal.SIGTERM)
            returncode = await worker.wait_exit(10)
            took = time.monotonic() - sent
            log_text = worker.log()
        # Read before the stub stops: stopping releases its held requests as answers.
        successes = stub.successes
    assert returncode == 0, log_text
    # Far less than the provider's 30 s and the default 30 s grace: it did not wait.
    assert took < 8.0, f"exit took {took:.1f}s\n{log_text}"
    assert [j.attempt for j in running] == [1, 1]
    for job in jobs:
        back = await store.get_job(job.id)
        assert back.status is JobStatus.PENDING, log_text
        assert back.attempt == 0  # the interrupted attempt does not count
        assert back.errors == []
        assert back.lease_token is None
        assert back.lease_expires_at is None
        assert back.result is None
    assert successes == 0


# -- kill -9 ----------------------------------------------------------------------------


async def test_kill_9_job_is_rescued_then_completed_once_and_the_dead_lease_is_refused(
    store: Store, database_url: str, tmp_path: Path, api_factory: ApiFactory
) -> None:
    lease, rescue_interval, margin = 2.0, 0.5, 1.0
    with OpenAIStub(models=[MODEL], latency=30.0) as slow, OpenAIStub(models=[MODEL]) as fast:
        async with api_factory(
            RESCUE_INTERVAL="0.5s", RETRY_BACKOFF_BASE="0.1s", RETRY_BACKOFF_MAX="0.2s"
        ) as api:
            created = await api.post(
                "/api/v1/jobs",
                json=job_body(owner_ref="k9", input={"user": "job:k9 Classify this"}),
            )
            assert created.status_code == 201, created.text
            job_id = UUID(created.json()["id"])

            async with worker_process(
                tmp_path,
                database_url,
                name="doomed",
                LLM_BASE_URL=slow.base_url,
                WORKER_ID="w-doomed",
                WORKER_LEASE_TIMEOUT="2s",
            ) as doomed:
                await wait_until(lambda: slow.in_flight == 1, what="the slow provider call")
                claimed = await store.get_job(job_id)
                assert claimed.status is JobStatus.RUNNING
                assert claimed.worker_id == "w-doomed"
                dead_token = claimed.lease_token
                assert dead_token is not None
                doomed.proc.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                assert await doomed.wait_exit(5) == -signal.SIGKILL

            rescued = await wait_for_job(store, job_id, {JobStatus.PENDING}, timeout=10)
            took = time.monotonic() - killed
            assert took <= lease + rescue_interval + margin, f"rescued after {took:.2f}s"
            assert rescued.lease_token is None
            assert rescued.attempt == 1
            [entry] = rescued.errors
            assert entry["category"] == "lease_expired"
            assert entry["worker"] == "w-doomed"
            assert rescued.error_category == "lease_expired"

            late = {"lease_token": str(dead_token), "result": {"content": "from the dead"}}
            refused = await api.post(f"/api/v1/jobs/{job_id}/complete", json=late)
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"] == "lease_lost"
            assert (await store.get_job(job_id)).status is JobStatus.PENDING

            async with worker_process(
                tmp_path,
                database_url,
                name="successor",
                LLM_BASE_URL=fast.base_url,
                WORKER_ID="w-successor",
            ):
                done = await wait_for_job(store, job_id, {JobStatus.COMPLETED}, timeout=15)

            refused_again = await api.post(f"/api/v1/jobs/{job_id}/complete", json=late)
            assert refused_again.status_code == 409, refused_again.text
            after = await store.get_job(job_id)
        slow_deliveries = slow.deliveries["k9"]

    assert done.worker_id == "w-successor"
    assert done.attempt == 2
    assert done.result is not None
    assert done.result["content"] == "echo: job:k9 Classify this"
    assert fast.deliveries["k9"] == 1
    assert fast.requests_received == 1
    assert slow_deliveries == 0
    # The refused late completion changed nothing.
    assert after == done
