"""`ai_service_client.Worker` against the real API: claim, heartbeat, batched
completions, failures, a lease taken away, and the graceful stop on SIGTERM
(the worker as a subprocess)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import ai_service_client as sdk
from tests.conftest import ApiFactory
from tests.helpers import wait_for

TASK = "call_analysis"
JOB: dict[str, Any] = {
    "owner_service": "telephony",
    "task_type": TASK,
    "model_profile": "m",
    "input": {"text": "hello"},
}
FAST = sdk.RetryPolicy(attempts=3, backoff_base=0.01, backoff_max=0.05)


class BodyLog(httpx.AsyncHTTPTransport):
    """A real transport that keeps the JSON body of each request, by path."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[tuple[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.bodies.append((request.url.path, body))
        return await super().handle_async_request(request)

    def sent(self, path: str) -> list[Any]:
        return [body for p, body in self.bodies if p == path]


@pytest.fixture
async def base_url(api_factory: ApiFactory) -> AsyncIterator[str]:
    # The rescuer runs often: a job whose heartbeats stopped would be taken back at once.
    async with api_factory(RESCUE_INTERVAL="0.2s") as http:
        yield str(http.base_url)


async def create_jobs(client: sdk.AsyncClient, count: int, prefix: str = "job") -> list[str]:
    batch = await client.create_batch([{"owner_ref": f"{prefix}-{i}"} for i in range(count)], JOB)
    return [item.id for item in batch.jobs]


async def statuses(client: sdk.AsyncClient) -> dict[str, str]:
    return {job.owner_ref: job.status async for job in client.iter_jobs()}


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[sdk.AsyncClient]:
    async with sdk.AsyncClient(base_url, retry=FAST) as client:
        yield client


async def test_worker_runs_jobs_concurrently_and_completes_them_in_batches(
    base_url: str, client: sdk.AsyncClient
) -> None:
    await create_jobs(client, 12)
    running = 0
    peak = 0

    async def handle(job: sdk.ClaimedJob) -> dict[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.2)
        running -= 1
        return {"ref": job.owner_ref, "length": len(job.input["text"])}

    wire = BodyLog()
    async with sdk.AsyncClient(base_url, retry=FAST, transport=wire) as worker_client:
        worker = sdk.Worker([TASK], handle, concurrency=4, client=worker_client, wait_seconds=1)
        serving = asyncio.create_task(worker.serve())
        await wait_for(
            lambda: _all(client, "completed", 12), timeout=20, what="every job completed"
        )
        worker.stop()
        await asyncio.wait_for(serving, 10)

    async for job in client.iter_jobs(include="result"):
        assert job.result == {"ref": job.owner_ref, "length": 5}
        assert job.attempt == 1
    assert peak == 4
    batches = wire.sent("/api/v1/jobs/complete")
    assert sum(len(b["jobs"]) for b in batches) == 12
    assert max(len(b["jobs"]) for b in batches) > 1  # results finishing together share a call
    assert all(body["lease_seconds"] == 60 for body in wire.sent("/api/v1/jobs/claim"))


async def _all(client: sdk.AsyncClient, status: str, count: int) -> bool:
    found = await statuses(client)
    return len(found) == count and set(found.values()) == {status}


async def test_heartbeats_keep_a_job_longer_than_its_lease(
    base_url: str, client: sdk.AsyncClient
) -> None:
    """A 3 s job under a 1 s lease, with the rescuer running every 0.2 s."""
    await create_jobs(client, 1)

    def handle(job: sdk.ClaimedJob) -> dict[str, Any]:  # a plain function: in a thread
        threading.Event().wait(3)
        return {"slow": True}

    worker = sdk.Worker(
        [TASK], handle, 1, base_url=base_url, lease_seconds=1, heartbeat_interval=0.25
    )
    serving = asyncio.create_task(worker.serve())
    await wait_for(lambda: _all(client, "completed", 1), timeout=15, what="the slow job")
    worker.stop()
    await asyncio.wait_for(serving, 10)
    [job] = [j async for j in client.iter_jobs(include="result,errors")]
    assert job.result == {"slow": True}
    assert job.attempt == 1
    assert job.errors == []  # never rescued


async def test_handler_errors_fail_the_job_with_their_category(client: sdk.AsyncClient) -> None:
    await create_jobs(client, 1, "typed")
    await create_jobs(client, 1, "plain")

    def handle(job: sdk.ClaimedJob) -> dict[str, Any]:
        if job.owner_ref.startswith("typed"):
            raise sdk.WorkerError("no speech", category="bad_input", retryable=False)
        raise RuntimeError("bug in the handler")

    worker = sdk.Worker([TASK], handle, 2, client=client, wait_seconds=1)
    serving = asyncio.create_task(worker.serve())
    await wait_for(lambda: _all(client, "failed", 2), timeout=15, what="both jobs failed")
    worker.stop()
    await asyncio.wait_for(serving, 10)
    by_ref = {job.owner_ref: job async for job in client.iter_jobs()}
    assert (by_ref["typed-0"].error_category, by_ref["typed-0"].error_message) == (
        "bad_input",
        "no speech",
    )
    assert by_ref["plain-0"].error_category == "handler_error"
    assert by_ref["plain-0"].error_message == "RuntimeError: bug in the handler"


async def test_a_cancelled_job_stops_its_async_handler_at_the_next_heartbeat(
    client: sdk.AsyncClient,
) -> None:
    [job_id] = await create_jobs(client, 1)
    started = asyncio.Event()
    stopped = asyncio.Event()

    async def handle(job: sdk.ClaimedJob) -> dict[str, Any]:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return {}

    worker = sdk.Worker([TASK], handle, 1, client=client, heartbeat_interval=0.2, wait_seconds=1)
    serving = asyncio.create_task(worker.serve())
    await asyncio.wait_for(started.wait(), 10)
    await client.cancel(job_id)
    await asyncio.wait_for(stopped.wait(), 5)
    worker.stop()
    await asyncio.wait_for(serving, 10)
    assert (await client.get(job_id)).status == "cancelled"


WORKER_SCRIPT = """
import logging, sys, time
import ai_service_client as sdk

logging.basicConfig(level=logging.INFO)

def handle(job):
    print("started", job.owner_ref, flush=True)
    time.sleep(float(job.input["seconds"]))
    return {"done": job.owner_ref}

sdk.Worker(["call_analysis"], handle, concurrency=2, wait_seconds=1,
           grace_period=float(sys.argv[1])).run()
print("stopped", flush=True)
"""


async def start_worker_process(
    tmp_path: Path, base_url: str, grace: float
) -> asyncio.subprocess.Process:
    """The worker script as a process: handler lines on stdout, its log in worker.log."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER_SCRIPT))
    with (tmp_path / "worker.log").open("ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            str(grace),
            env={"AI_SERVICE_URL": base_url, "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )


async def test_sigterm_stops_claiming_and_finishes_the_jobs_in_flight(
    tmp_path: Path, base_url: str, client: sdk.AsyncClient
) -> None:
    await client.create(**{**JOB, "input": {"seconds": 1.5}}, owner_ref="in-flight")
    proc = await start_worker_process(tmp_path, base_url, grace=30)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.decode().split() == ["started", "in-flight"]
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    late = await client.create(**{**JOB, "input": {"seconds": 0}}, owner_ref="after-sigterm")
    output = (await asyncio.wait_for(proc.stdout.read(), 30)).decode()
    output += (tmp_path / "worker.log").read_text()
    assert await proc.wait() == 0, output
    assert "stopped" in output
    found = await statuses(client)
    assert found == {"in-flight": "completed", "after-sigterm": "pending"}, output
    assert (await client.get(late.id)).attempt == 0  # never claimed after the signal


async def test_sigterm_gives_back_jobs_that_outlive_the_grace_period(
    tmp_path: Path, base_url: str, client: sdk.AsyncClient
) -> None:
    job = await client.create(**{**JOB, "input": {"seconds": 30}}, owner_ref="long")
    proc = await start_worker_process(tmp_path, base_url, grace=0.5)
    assert proc.stdout is not None
    await asyncio.wait_for(proc.stdout.readline(), 30)
    proc.send_signal(signal.SIGTERM)
    # The handler thread sleeps on; the interpreter waits for it before exiting.
    await wait_for(
        lambda: _given_back(client, job.id), timeout=15, what="the job given back to the queue"
    )
    proc.kill()
    await proc.wait()
    back = await client.get(job.id)
    # Released, not failed: pending again with its attempt unspent and no error.
    assert (back.attempt, back.error_category, back.error_count) == (0, None, 0)
    assert back.result is None


async def _given_back(client: sdk.AsyncClient, job_id: str) -> bool:
    job = await client.get(job_id)
    return job.status == "pending" and job.lease_expires_at is None


def test_worker_repr_and_concurrency_check() -> None:
    worker = sdk.Worker([TASK], lambda job: {}, 2, worker_id=f"w-{uuid.uuid4().hex[:6]}")
    assert "w-" in repr(worker)
    with pytest.raises(ValueError, match="concurrency"):
        sdk.Worker([TASK], lambda job: {}, 0)
