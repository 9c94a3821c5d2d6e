"""Fault injection against real processes.

1. Workers killed (`kill -9`) and frozen (SIGSTOP past their lease) during a run
   of 2,000 LLM jobs: nothing is lost and no result of a lost lease is stored.
2. PostgreSQL restarted under a running API and worker: 503 in the error
   envelope while it is down, recovery without restarting either process.
3. A provider that never answers: each attempt times out, the job fails after
   its attempts, and no running job outlives its lease.
4. A running job retried and claimed again by the worker still busy with it.

Workers and the API run as `python -m ai_service ...` subprocesses
(`tests.processes`); the LLM is an `OpenAIStub` on loopback in this process.
An audit trigger added to the test database records every status change of a
job (with the lease token before and after), so the fencing assertions look at
what really happened in the jobs table, not only at its final state.

Markers: every job's user text carries `job:<owner_ref>`, so the stub knows
which job each request belongs to.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from ai_service import embedded_db, migrate
from ai_service.jobs import Job, JobStatus
from ai_service.maintenance import Maintenance
from ai_service.store import Store
from ai_service.worker.handler import HandlerContext, HandlerSpec
from ai_service.worker.runner import Runner
from tests.conftest import DATA_ROOT
from tests.helpers import job_body, make_settings, new_job
from tests.processes import ServiceGroup, ServiceProcess, wait_ready
from tests.stubs.openai_server import OpenAIStub, RecordedRequest

MODEL = "qwen2.5-14b"
FAST_RETRIES = {"RETRY_BACKOFF_BASE": "0.05s", "RETRY_BACKOFF_MAX": "0.1s"}

AUDIT_SQL = """
CREATE TABLE job_audit (
    seq bigserial PRIMARY KEY,
    job_id uuid NOT NULL,
    old_status text NOT NULL,
    new_status text NOT NULL,
    old_token uuid,
    new_token uuid,
    worker_id text,
    attempt int NOT NULL,
    content text,
    lease_expires_at timestamptz,
    at timestamptz NOT NULL
);
CREATE FUNCTION job_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_audit (job_id, old_status, new_status, old_token, new_token, worker_id,
                           attempt, content, lease_expires_at, at)
    VALUES (NEW.id, OLD.status, NEW.status, OLD.lease_token, NEW.lease_token, NEW.worker_id,
            NEW.attempt, NEW.result->>'content', NEW.lease_expires_at, now());
    RETURN NULL;
END $$;
CREATE TRIGGER job_audit AFTER UPDATE ON jobs FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION job_audit();
"""


@asynccontextmanager
async def connect(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
    conn = await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    )
    async with conn:
        yield conn


async def fetch(database_url: str, sql: str) -> list[dict[str, Any]]:
    async with connect(database_url) as conn:
        cur = await conn.execute(sql)
        return await cur.fetchall()


async def install_audit(database_url: str) -> None:
    async with connect(database_url) as conn:
        await conn.execute(AUDIT_SQL)


async def audit_by_job(database_url: str) -> dict[str, list[dict[str, Any]]]:
    """Audit rows (status changes) per owner_ref, in the order they happened."""
    rows = await fetch(
        database_url,
        "SELECT j.owner_ref, a.* FROM job_audit a JOIN jobs j ON j.id = a.job_id ORDER BY a.seq",
    )
    events: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        events[row["owner_ref"]].append(row)
    return events


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Poll an async `condition()` until truthy; returns the seconds it took."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


# -- 1. kill -9 and freezes of workers during a run -------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One 200 answer of the stub: its unique content, the worker it went to, when."""

    content: str
    worker: str
    at: float  # time.monotonic()


class DeliveryLog:
    """The stub's `reply`: a unique `delivery-N` per answer, recorded per job marker.

    Each worker process has its own `LLM_API_KEY` (`key-<worker id>`), so the
    Authorization header says which worker received the answer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self.by_marker: dict[str, list[Delivery]] = defaultdict(list)

    def reply(self, recorded: RecordedRequest) -> str:
        key = recorded.headers.get("authorization", "").removeprefix("Bearer ")
        with self._lock:
            content = f"delivery-{next(self._numbers)}"
            self.by_marker[recorded.marker or "?"].append(
                Delivery(content, key.removeprefix("key-"), time.monotonic())
            )
        return content


JOBS = 2000  # at least; creation goes on until the faults are done too
BATCH = 50
CONCURRENCY = 16
# Jobs are created whenever fewer than this are pending: both workers stay busy, so
# every fault hits work in flight, and the queue never grows beyond what drains fast.
BACKLOG = 4 * CONCURRENCY
LEASE = 2.0
# A frozen worker sleeps past its lease (expiry + rescue interval + slack), so its
# jobs are rescued and handed to the other worker while it cannot see it.
FREEZE = 4.0
FAULTS = ("kill", "kill", "freeze")  # repeated in this order
MIN_KILLS = 5
MIN_FREEZES = 2


async def test_kill_9_and_freezes_of_workers_during_2000_jobs_lose_nothing_and_fence_results(
    database_url: str, tmp_path: Path
) -> None:
    """Every 1-2 s a random worker is killed (SIGKILL, replaced at once) or frozen
    (SIGSTOP past its lease, then SIGCONT) while jobs keep coming: the frozen one
    comes back holding work of leases that are gone, which fencing must refuse."""
    await install_audit(database_url)
    deliveries = DeliveryLog()
    rng = random.Random(7)
    markers: list[str] = []
    settings = make_settings(database_url, RESCUE_INTERVAL="0.3s", **FAST_RETRIES)
    store = await Store.open(database_url, wait=True, backoff_base=0.05, backoff_max=0.1)
    maintenance = Maintenance(store, settings)
    kills: list[str] = []
    freezes: list[str] = []
    # Worker id, then the SIGSTOP and SIGCONT times by this clock and by the database's.
    frozen: list[tuple[str, float, float, datetime, datetime]] = []
    started = time.monotonic()
    with OpenAIStub(models=[MODEL], latency=0.05, reply=deliveries.reply) as stub:
        async with ServiceGroup(
            tmp_path,
            database_url,
            LLM_BASE_URL=stub.base_url,
            LLM_MODEL=MODEL,
            WORKER_CONCURRENCY=str(CONCURRENCY),
            WORKER_CLAIM_LIMIT=str(CONCURRENCY),
            WORKER_LEASE_TIMEOUT=f"{LEASE}s",
            WORKER_POLL_INTERVAL="0.2s",
            RESCUE_INTERVAL="0.3s",
            **FAST_RETRIES,
        ) as services:
            numbers = itertools.count(1)

            async def spawn_worker() -> tuple[ServiceProcess, asyncio.Task[None]]:
                worker_id = f"w{next(numbers)}"
                process = await services.spawn(
                    "worker", worker_id, WORKER_ID=worker_id, LLM_API_KEY=f"key-{worker_id}"
                )
                return process, asyncio.create_task(wait_ready(process))

            faults_done = asyncio.Event()

            async def create_all() -> None:
                while len(markers) < JOBS or not faults_done.is_set():
                    [row] = await fetch(
                        database_url, "SELECT count(*) AS n FROM jobs WHERE status = 'pending'"
                    )
                    if row["n"] < BACKLOG:
                        batch = [f"k{i:05d}" for i in range(len(markers), len(markers) + BATCH)]
                        await store.create_jobs(
                            [
                                new_job(
                                    owner_ref=marker,
                                    input={"user": f"job:{marker} Classify this"},
                                    max_attempts=10,
                                )
                                for marker in batch
                            ]
                        )
                        markers.extend(batch)
                    await asyncio.sleep(0.05)

            async def in_flight(process: ServiceProcess, at_least: int, timeout: float) -> int:
                """Jobs the worker holds, polled until `at_least` or `timeout`."""
                deadline = time.monotonic() + timeout
                async with httpx.AsyncClient(base_url=process.base_url, timeout=2) as http:
                    while True:
                        status = (await http.get("/worker/status")).json()
                        count = len(status["in_flight"])
                        if count >= at_least or time.monotonic() > deadline:
                            return count
                        await asyncio.sleep(0.01)

            async def database_now() -> datetime:
                [row] = await fetch(database_url, "SELECT now() AS now")
                now: datetime = row["now"]
                return now

            async def completed() -> bool:
                [row] = await fetch(
                    database_url, "SELECT count(*) AS n FROM jobs WHERE status = 'completed'"
                )
                return bool(row["n"] == len(markers))

            workers = [await spawn_worker(), await spawn_worker()]
            for _, ready in workers:
                await ready
            maintenance.start()
            creator = asyncio.create_task(create_all())
            faults = itertools.cycle(FAULTS)
            try:
                while len(kills) < MIN_KILLS or len(freezes) < MIN_FREEZES:
                    await asyncio.sleep(rng.uniform(1.0, 2.0))
                    candidates = [w for w in workers if w[1].done()]
                    if not candidates:
                        await asyncio.wait([w[1] for w in workers], return_when="FIRST_COMPLETED")
                        continue
                    victim = rng.choice(candidates)
                    process = victim[0]
                    victim[1].result()  # raises (with its log) if it never became ready
                    # Strike while it holds work (a replacement may have only just started).
                    busy = await in_flight(process, at_least=CONCURRENCY // 2, timeout=3.0)
                    when = f"{process.name}@{time.monotonic() - started:.1f}s/{busy}"
                    if next(faults) == "kill":
                        assert await process.kill() == -signal.SIGKILL
                        kills.append(when)
                        workers.remove(victim)
                        workers.append(await spawn_worker())
                    else:
                        process.pause()
                        paused, paused_db = time.monotonic(), await database_now()
                        await asyncio.sleep(FREEZE)
                        resumed_db = await database_now()
                        process.resume()
                        frozen.append(
                            (process.name, paused, time.monotonic(), paused_db, resumed_db)
                        )
                        freezes.append(when)
                faults_done.set()
                await creator
                faults_stopped = time.monotonic()
                await wait_for(completed, 60, f"all jobs completed\n{services.logs()}")
                drained = time.monotonic() - faults_stopped
                for process, ready in workers:
                    await ready  # each replacement did come up...
                    assert process.running, process.log()  # ...and the thawed ones live on
            finally:
                creator.cancel()
                for _, ready in workers:
                    ready.cancel()
                await maintenance.stop()
                await store.close()
            logs = services.logs()
    elapsed = time.monotonic() - started

    jobs = {
        row["owner_ref"]: row
        for row in await fetch(
            database_url,
            "SELECT owner_ref, status, result->>'content' AS content, worker_id, attempt, errors"
            " FROM jobs",
        )
    }
    events = await audit_by_job(database_url)
    assert len(markers) >= JOBS
    assert sorted(jobs) == markers
    assert {row["status"] for row in jobs.values()} == {"completed"}, logs

    rescued = 0
    redelivered: list[str] = []
    superseded = 0  # answers a frozen worker got while frozen, then done again by another
    rescued_from_frozen = 0  # leases a frozen worker held and lost while it could not see
    for marker, job in jobs.items():
        made = deliveries.by_marker[marker]
        contents = [d.content for d in made]
        # No invented or foreign result: the content is one the stub made for this job.
        assert job["content"] in contents, (marker, job, made)
        # Fencing, from the audit trail: exactly one completion, the job's last change,
        # made with the lease token of the job's last claim...
        history = events[marker]
        completions = [e for e in history if e["new_status"] == "completed"]
        assert len(completions) == 1, history
        assert history[-1] is completions[0], history
        claims = [e for e in history if e["new_status"] == "running"]
        last_claim = claims[-1]
        assert history[-2] is last_claim, history
        assert completions[0]["old_token"] == last_claim["new_token"] is not None, history
        assert completions[0]["content"] == job["content"]
        # ...and the stored answer is the latest one that lease's worker received, not
        # one a killed or frozen earlier holder got.
        assert job["worker_id"] == last_claim["worker_id"], (job, history)
        to_last_holder = [d.content for d in made if d.worker == last_claim["worker_id"]]
        assert to_last_holder, (marker, made, history)
        assert job["content"] == to_last_holder[-1], (marker, made, history)
        # Every earlier claim ended in a rescue (lease expired), never in a result.
        assert [e["new_status"] for e in history] == ["running", "pending"] * (len(claims) - 1) + [
            "running",
            "completed",
        ], history
        assert job["attempt"] == len(claims)
        assert [e["category"] for e in job["errors"]] == ["lease_expired"] * (len(claims) - 1)
        rescued += len(claims) - 1
        if len(made) > 1:
            redelivered.append(marker)
        superseded += sum(
            1
            for d in made
            for worker, paused, resumed, _, _ in frozen
            if d.worker == worker and paused <= d.at <= resumed and d.content != job["content"]
        )
        rescued_from_frozen += sum(
            1
            for e in history
            for worker, _, _, paused_db, resumed_db in frozen
            if e["old_status"] == "running"
            and e["new_status"] == "pending"
            and e["worker_id"] == worker
            and paused_db <= e["at"] <= resumed_db
        )

    assert len(kills) >= MIN_KILLS
    assert len(freezes) >= MIN_FREEZES
    assert rescued > 0, "no fault hit a running job: the test proved nothing"
    # Frozen workers held leases that were rescued under them, so they came back with
    # stale work; (checked above) none of it was stored.
    assert rescued_from_frozen > 0, "no frozen worker lost a lease: fencing untested"
    faults_made = len(kills) + len(freezes)
    assert len(redelivered) <= faults_made * CONCURRENCY, (len(redelivered), kills, freezes)
    print(
        f"\n{len(markers)} jobs in {elapsed:.1f}s: {len(kills)} kills {kills}, "
        f"{len(freezes)} freezes {freezes}; {rescued} rescues ({rescued_from_frozen} "
        f"from frozen workers), {superseded} answers to frozen workers superseded, "
        f"{len(redelivered)} jobs delivered more than once, all completed {drained:.1f}s "
        f"after the last fault; stub requests {stub.requests_received}"
    )


# -- 2. PostgreSQL restarted mid-run ----------------------------------------------------


REQUEST_LIMIT = 8.0  # the pool waits 5 s for a connection before giving up with 503
RECOVERY_LIMIT = 15.0


@dataclass
class Outcome:
    """One HTTP request made during the scenario: status 0 is a client timeout."""

    what: str
    status: int
    body: Any
    seconds: float


async def timed(http: httpx.AsyncClient, what: str, method: str, url: str, **kw: Any) -> Outcome:
    started = time.monotonic()
    try:
        response = await http.request(method, url, **kw)
    except httpx.TimeoutException:
        return Outcome(what, 0, "client timeout", time.monotonic() - started)
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return Outcome(what, response.status_code, body, time.monotonic() - started)


async def test_postgres_restart_mid_run_answers_503_then_api_and_worker_recover_without_loss(
    tmp_path: Path,
) -> None:
    """A dedicated PostgreSQL, stopped (`immediate`) under an API and a worker, restarted."""
    # Under the project's .data/ like the session server: the pid suffix lets
    # conftest clean the directory up should this run be killed.
    data_dir = DATA_ROOT / f"test-pg-restart-{os.getpid()}"
    server = await asyncio.to_thread(embedded_db.ensure_running, data_dir, ["-c fsync=off"])
    try:
        await asyncio.to_thread(migrate.upgrade, server.url)
        await _restart_scenario(server, tmp_path)
    finally:
        await asyncio.to_thread(server.stop, "immediate")
        embedded_db.remove_data_dir(data_dir)


async def _restart_scenario(server: embedded_db.EmbeddedPostgres, tmp_path: Path) -> None:
    database_url = server.url
    created: dict[str, str] = {}  # marker -> job id, for every create answered 201
    refused: list[str] = []  # markers whose create was answered 503
    seen: list[Outcome] = []

    def body(marker: str) -> dict[str, Any]:
        return job_body(owner_ref=marker, input={"user": f"job:{marker} Classify this"})

    with OpenAIStub(models=[MODEL], latency=0.2) as stub:
        async with (
            ServiceGroup(
                tmp_path,
                database_url,
                LLM_BASE_URL=stub.base_url,
                LLM_MODEL=MODEL,
                RESCUE_INTERVAL="0.5s",
                **FAST_RETRIES,
            ) as services,
            # No keep-alive: a reused idle connection can race the server's keep-alive
            # close and fail with "disconnected", which would look like an API fault.
            httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_keepalive_connections=0)) as http,
        ):
            api = await services.start("api", "api")
            worker = await services.start(
                "worker",
                "worker",
                WORKER_ID="w-restart",
                WORKER_CONCURRENCY="4",
                WORKER_POLL_INTERVAL="0.2s",
                WORKER_LEASE_TIMEOUT="3s",
            )
            jobs_url = f"{api.base_url}/api/v1/jobs"

            # Before: 40 jobs, ~2 s of work for the worker.
            for i in range(40):
                marker = f"before-{i}"
                response = await http.post(jobs_url, json=body(marker))
                assert response.status_code == 201, response.text
                created[marker] = response.json()["id"]

            async def some_done() -> bool:
                rows = await fetch(
                    database_url, "SELECT count(*) AS n FROM jobs WHERE status = 'completed'"
                )
                return bool(rows[0]["n"] >= 8) and stub.in_flight > 0

            await wait_for(some_done, 20, "a run in progress")
            await asyncio.to_thread(server.stop, "immediate")
            stopped = time.monotonic()

            # While it is down: two rounds of every kind of request, all at once per round.
            for round_ in range(2):
                marker = f"during-{round_}"
                some_id = created["before-0"]
                outcomes = await asyncio.gather(
                    timed(http, "list", "GET", jobs_url),
                    timed(http, "create", "POST", jobs_url, json=body(marker)),
                    timed(http, "get", "GET", f"{jobs_url}/{some_id}"),
                    timed(http, "readyz", "GET", f"{api.base_url}/readyz"),
                    timed(http, "healthz", "GET", f"{api.base_url}/healthz"),
                    timed(http, "worker readyz", "GET", f"{worker.base_url}/readyz"),
                    timed(http, "worker healthz", "GET", f"{worker.base_url}/healthz"),
                )
                seen.extend(outcomes)
                by_what = {o.what: o for o in outcomes}
                if by_what["create"].status == 503:
                    refused.append(marker)
                for what in ("list", "create", "get", "readyz", "worker readyz"):
                    outcome = by_what[what]
                    assert outcome.status == 503, (outcome, api.log())
                    assert outcome.body["error"] == "database_unavailable", outcome
                    assert set(outcome.body) == {"error", "message", "details"}, outcome
                for what in ("healthz", "worker healthz"):
                    assert by_what[what].status == 200, by_what[what]
                slowest = max(outcomes, key=lambda o: o.seconds)
                assert slowest.seconds < REQUEST_LIMIT, slowest
            outage = time.monotonic() - stopped

            await asyncio.to_thread(server.start)
            restarted = time.monotonic()

            async def api_answers() -> bool:
                outcome = await timed(http, "list", "GET", jobs_url, params={"limit": 1})
                seen.append(outcome)
                return outcome.status == 200

            api_recovery = await wait_for(api_answers, RECOVERY_LIMIT, "the API to answer 200")
            ready = await timed(http, "readyz", "GET", f"{api.base_url}/readyz")
            assert ready.status == 200, ready

            # After: 10 more jobs; a create answered 503 is retried under a new marker.
            attempts = itertools.count()
            while sum(m.startswith("after-") for m in created) < 10:
                assert next(attempts) < 100, seen[-5:]
                marker = f"after-{len(created) + len(refused)}"
                outcome = await timed(http, "create", "POST", jobs_url, json=body(marker))
                seen.append(outcome)
                if outcome.status == 201:
                    created[marker] = outcome.body["id"]
                else:
                    assert outcome.status == 503, outcome
                    refused.append(marker)

            async def all_done() -> bool:
                rows = await fetch(
                    database_url, "SELECT count(*) AS n FROM jobs WHERE status = 'completed'"
                )
                return bool(rows[0]["n"] >= len(created))

            work_recovery = await wait_for(all_done, 30, f"every job completed\n{services.logs()}")
            worker_ready = await timed(http, "worker readyz", "GET", f"{worker.base_url}/readyz")
            # Neither process was restarted: the same pids, still running.
            assert api.running, api.log()
            assert worker.running, worker.log()
            assert [p.name for p in services.processes] == ["api", "worker"]
            api_log = api.log()

    assert worker_ready.status == 200, worker_ready
    # Never a 500 or a client timeout: 503 while down, 200/201 otherwise.
    assert all(o.status in (200, 201, 503) for o in seen), seen
    assert "unhandled error" not in api_log, api_log
    rows = await fetch(database_url, "SELECT id::text, owner_ref, status, worker_id FROM jobs")
    stored = {row["owner_ref"]: row for row in rows}
    # Every create answered 201 ended completed (by the same worker process)...
    assert set(stored) == set(created), set(stored) ^ set(created)
    for marker, job_id in created.items():
        assert stored[marker]["id"] == job_id
        assert stored[marker]["status"] == "completed", stored[marker]
        assert stored[marker]["worker_id"] == "w-restart"
    # ...and every create answered 503 left nothing behind.
    assert refused, "no create was refused during the outage"
    assert not set(refused) & set(stored)
    down = ", ".join(f"{o.what} {o.status} in {o.seconds:.2f}s" for o in seen[:14])
    print(
        f"\nwhile down: {down}\noutage {outage:.1f}s; "
        f"API answered 200 {api_recovery:.2f}s after the restart, "
        f"all {len(created)} jobs completed {time.monotonic() - restarted:.1f}s after it "
        f"({work_recovery:.1f}s after the API); slowest request while down "
        f"{max(o.seconds for o in seen if o.status == 503):.2f}s"
    )


# -- 3. a provider that hangs -------------------------------------------------------------


LLM_TIMEOUT = 0.5
TIMEOUT_MARGIN = 1.5


async def test_hanging_provider_times_out_each_attempt_then_fails_and_never_outlives_lease(
    database_url: str, tmp_path: Path
) -> None:
    """LLM_TIMEOUT=0.5s against a provider that holds every request for minutes."""
    await install_audit(database_url)
    markers = [f"hang-{i}" for i in range(3)]
    samples = 0
    overdue: list[dict[str, Any]] = []
    with OpenAIStub(models=[MODEL], hang_seconds=120) as stub:
        stub.fail_always("hang")
        async with ServiceGroup(
            tmp_path,
            database_url,
            LLM_BASE_URL=stub.base_url,
            LLM_MODEL=MODEL,
            LLM_TIMEOUT=f"{LLM_TIMEOUT}s",
            WORKER_LEASE_TIMEOUT="2s",
            WORKER_POLL_INTERVAL="0.2s",
            WORKER_CONCURRENCY="4",
            RESCUE_INTERVAL="0.3s",
            **FAST_RETRIES,
        ) as services:
            await services.start("worker", "worker", WORKER_ID="w-hang")
            async with connect(database_url) as conn:
                store = await Store.open(database_url, min_size=1, max_size=2, wait=True)
                try:
                    await store.create_jobs(
                        [
                            new_job(
                                owner_ref=m, input={"user": f"job:{m} Classify"}, max_attempts=2
                            )
                            for m in markers
                        ]
                    )
                finally:
                    await store.close()
                deadline = time.monotonic() + 20
                while True:
                    # No running row may outlive its lease (0.5 s of slack: the rescuer of
                    # a dead worker's leases runs every 0.3 s; this worker is alive).
                    cur = await conn.execute(
                        "SELECT owner_ref, lease_expires_at, now() AS now FROM jobs"
                        " WHERE status = 'running'"
                        "   AND lease_expires_at <= now() - interval '0.5 seconds'"
                    )
                    overdue.extend(await cur.fetchall())
                    cur = await conn.execute(
                        "SELECT count(*) FILTER (WHERE status = 'running') AS running,"
                        " count(*) FILTER (WHERE status = 'failed') AS failed FROM jobs"
                    )
                    counts = await cur.fetchone()
                    assert counts is not None
                    samples += counts["running"]
                    if counts["failed"] == len(markers):
                        break
                    assert time.monotonic() < deadline, services.logs()
                    await asyncio.sleep(0.05)
            logs = services.logs()
        sent = [r.marker for r in stub.requests]

    assert not overdue, overdue
    assert samples > 0, "never saw a running job"
    jobs = {
        row["owner_ref"]: row
        for row in await fetch(
            database_url,
            "SELECT owner_ref, status, attempt, error_category, errors, lease_expires_at FROM jobs",
        )
    }
    events = await audit_by_job(database_url)
    for marker in markers:
        job = jobs[marker]
        assert job["status"] == "failed", (job, logs)
        assert job["error_category"] == "timeout"
        assert job["attempt"] == 2
        assert job["lease_expires_at"] is None  # no lease; the last attempt's token stays
        history = job["errors"]
        assert [(e["attempt"], e["category"]) for e in history] == [(1, "timeout"), (2, "timeout")]
        assert all(e["worker"] == "w-hang" for e in history)
        assert sent.count(marker) == 2
        # Each attempt ended about LLM_TIMEOUT after its claim (database clock both ends).
        statuses = [e["new_status"] for e in events[marker]]
        assert statuses == ["running", "pending", "running", "failed"], events[marker]
        claims = [e for e in events[marker] if e["new_status"] == "running"]
        for claim, entry in zip(claims, history, strict=True):
            took = (datetime.fromisoformat(entry["at"]) - claim["at"]).total_seconds()
            assert LLM_TIMEOUT <= took <= LLM_TIMEOUT + TIMEOUT_MARGIN, (marker, took)


# -- 4. a lease lost while the same worker still runs the job -----------------------------


async def test_running_job_retried_and_reclaimed_by_the_same_worker_keeps_its_new_lease(
    database_url: str,
) -> None:
    """A manual retry of a running job (or a rescue after a pause) while its worker is
    still busy with it: the same worker claims it again at once. When the stale
    attempt ends (its result refused), the new attempt must stay in flight, so that
    heartbeats keep its lease and the concurrency limit counts it."""
    first_may_end = asyncio.Event()

    async def handle(job: Job, ctx: HandlerContext) -> dict[str, Any]:
        if job.attempt == 1:
            await first_may_end.wait()
            return {"attempt": 1}
        await asyncio.Event().wait()  # the new attempt runs until shutdown
        return {"attempt": job.attempt}

    spec = HandlerSpec(
        name="slow", task_types=frozenset({"slow"}), model_profiles=None, handle=handle
    )
    settings = make_settings(
        database_url,
        WORKER_CONCURRENCY="4",
        WORKER_POLL_INTERVAL="0.05s",
        WORKER_LEASE_TIMEOUT="30s",
        WORKER_SHUTDOWN_TIMEOUT="0.1s",
    )
    store = await Store.open(database_url, min_size=1, max_size=4, wait=True)
    try:
        [created] = await store.create_jobs([new_job(task_type="slow", owner_ref="again")])
        job_id = created.job.id
        async with httpx.AsyncClient() as http:
            # Heartbeats only when this test calls them, so that each one can be checked.
            runner = Runner(
                store, HandlerContext(settings=settings, http=http), [spec], heartbeat_interval=3600
            )
            runner.start()
            try:

                async def attempt_running(n: int) -> bool:
                    job = await store.get_job(job_id)
                    return job.status is JobStatus.RUNNING and job.attempt == n

                await wait_for(lambda: attempt_running(1), 10, "the first attempt")
                await store.retry(job_id)  # POST /jobs/{id}/retry on a running job
                await wait_for(lambda: attempt_running(2), 10, "the same worker's new claim")
                first_may_end.set()  # the stale attempt ends; its result is refused

                async def stale_discarded() -> bool:
                    return runner.counters.discarded == 1

                await wait_for(stale_discarded, 10, "the stale result to be discarded")
                before = await store.get_job(job_id)
                await asyncio.sleep(0.05)
                await runner.heartbeat()
                after = await store.get_job(job_id)
                tracked = {str(f.job.id): f.job.attempt for f in runner.in_flight.values()}
                status = runner.status()
            finally:
                await runner.shutdown()
    finally:
        await store.close()

    assert after.status is JobStatus.RUNNING
    assert after.result is None  # the stale attempt's result was not stored
    assert tracked == {str(job_id): 2}, "the new attempt fell out of the in-flight set"
    assert [f["job_id"] for f in status["in_flight"]] == [str(job_id)]
    assert before.lease_expires_at is not None
    assert after.lease_expires_at is not None
    assert after.lease_expires_at > before.lease_expires_at, "the heartbeat skipped the new lease"
