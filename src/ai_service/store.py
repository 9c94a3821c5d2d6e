"""The only module that talks to PostgreSQL.

It runs the named queries of `sql/queries.sql` on an async connection pool and
turns "no row returned" and database exceptions into domain errors
(`errors.JobNotFound`, `errors.InvalidTransition`, `errors.LeaseLost`,
`errors.AttemptsExhausted`, `errors.IdempotencyConflict`,
`errors.DatabaseUnavailable`, `errors.InvalidRequest`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, TypeVar, cast
from uuid import UUID

import psycopg
import psycopg.errors
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ai_service import db, errors
from ai_service.claim_policy import ClaimPolicy, CursorKey
from ai_service.jobs import (
    ALLOWED_FROM,
    BULK_DEFAULT_STATUSES,
    ERRORS_KEPT,
    MAX_ATTEMPTS,
    OUTAGE_BACKOFF_CAP,
    OUTAGE_CATEGORIES,
    PAYLOAD_COLUMNS,
    Job,
    JobFilter,
    JobStatus,
    NewJob,
    new_job_ids,
    retry_allowed,
)
from ai_service.notifier import FINISHED_ANY, Announcer, finished_payloads
from ai_service.sql import queries

FILTER_BATCH = 5000
BULK_SAMPLE = 100  # ids a bulk action reports (it counts them all)
CLAIM_ROUNDS = 4
RESCUE_BATCH = 1000
SCHEDULED_COUNT_CAP = 10_000  # stats count scheduled jobs up to this many
BULK_COUNT_CAP = 100_000  # a bulk action's preview counts its jobs up to this many
RECOUNT_LOCK_TIMEOUT = 10.0  # seconds a recount waits for its locks (a TRUNCATE in flight)
# Stored audio is written and read in rows of this size: an upload, a download and a
# worker's copy hold one chunk at a time, whatever the length of the recording.
AUDIO_CHUNK_BYTES = 1024 * 1024
# An upload still without its size this long after it began was abandoned.
AUDIO_ABANDONED_AFTER = 86400.0
# Namespace of the content-derived ids of audio moved out of job inputs (`put_audio`).
_AUDIO_NAMESPACE = uuid.UUID("6f1d3c1e-5b0a-4c55-9a57-0a0d10a0d1e0")


@dataclass(frozen=True)
class Created:
    """Outcome of one create: the job, and False when an idempotency key matched."""

    job: Job
    created: bool


@dataclass(frozen=True)
class JobPage:
    """One page of a job list.

    `truncated` is True when the page stopped before `limit` rows because the
    payload columns reached the byte budget; `next_cursor` then continues after the
    last job of the page.
    """

    jobs: list[Job]
    next_cursor: str | None
    truncated: bool = False


@dataclass(frozen=True)
class BulkOutcome:
    """What a bulk retry or cancel changed: how many jobs, and the first ids (id order)."""

    count: int
    sample: list[UUID]

    @property
    def truncated(self) -> bool:
        """True when more jobs changed than `sample` lists."""
        return self.count > len(self.sample)


@dataclass(frozen=True)
class Completion:
    """One fenced completion for `Store.complete_many`.

    `result_json` is the result already encoded by `encode_result` (the worker
    encodes each result once, when it is submitted).
    """

    job_id: UUID
    lease_token: UUID
    result: dict[str, Any]
    result_json: bytes | None = None

    def encoded(self, result_json: bytes) -> Completion:
        return replace(self, result_json=result_json)


def _completions_params(completions: Sequence[Completion]) -> dict[str, Any]:
    """The parameters of `job_complete_many`."""
    # The batch is assembled from each result's own encoding, not re-encoded.
    records = b",".join(
        b'{"id":"%s","lease_token":"%s","result":%s}'
        % (
            str(c.job_id).encode(),
            str(c.lease_token).encode(),
            c.result_json if c.result_json is not None else db.encode_result(c.result),
        )
        for c in completions
    )
    return {
        "completions": Jsonb(b"[" + records + b"]", dumps=db.raw),
        "ids": [c.job_id for c in completions],
    }


@dataclass(frozen=True)
class AudioBlob:
    """A stored recording's description (`audio_blobs`); its bytes are read in chunks."""

    id: UUID
    owner_service: str
    content_type: str
    size: int
    sha256: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AudioBlob:
        return cls(
            id=row["id"],
            owner_service=row["owner_service"],
            content_type=row["content_type"],
            size=row["size"],
            sha256=row["sha256"],
            created_at=row["created_at"],
        )


@dataclass(frozen=True)
class Delivery:
    """One webhook event of the outbox (`webhook_deliveries`).

    `id` is the event's webhook-id (the same on every attempt); `payload` was fixed
    when the job changed state. `attempt_log` holds the newest attempts, oldest first.
    """

    id: UUID
    job_id: UUID
    event_type: str
    url: str
    payload: dict[str, Any]
    traceparent: str | None
    attempts: int
    created_at: datetime
    status: str = "pending"
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    last_error: str | None = None
    attempt_log: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Delivery:
        names = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in row.items() if name in names})


@dataclass(frozen=True)
class WorkerEntry:
    """What a worker writes into its row of the registry (`Store.upsert_worker`).

    `status` is the bounded snapshot of `worker.presence.snapshot`: no secret in it.
    """

    worker_id: str
    hostname: str
    pid: int
    version: str
    started_at: datetime
    status: dict[str, Any]


@dataclass(frozen=True)
class WorkerRow:
    """One row of the registry as `GET /api/v1/workers` reads it.

    `alive`: seen within the window asked for and not stopped; `seconds_since_seen`
    and `now` by the database clock.
    """

    worker_id: str
    hostname: str
    pid: int
    version: str
    started_at: datetime
    last_seen: datetime
    stopped_at: datetime | None
    status: dict[str, Any]
    seconds_since_seen: float
    alive: bool
    now: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WorkerRow:
        names = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in row.items() if name in names})


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one delivery attempt gave, for `Store.record_deliveries`.

    `ok`: the receiver answered 2xx. Otherwise `delay` is the wait before the next
    attempt, and `http_status` or `error` says what went wrong; `response` is a short,
    redacted excerpt of the receiver's answer.
    """

    delivery_id: UUID
    ok: bool
    at: datetime
    duration_ms: int
    http_status: int | None = None
    error: str | None = None
    response: str | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class ClaimRequest:
    """What one claim asks for: `job_claim`'s parameters but the candidate scan."""

    worker_id: str
    limit: int
    lease_seconds: float
    task_types: tuple[str, ...] | None = None
    model_profiles: tuple[str, ...] | None = None

    @classmethod
    def of(
        cls,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        task_types: Iterable[str] | None = None,
        model_profiles: Iterable[str] | None = None,
    ) -> ClaimRequest:
        return cls(
            worker_id,
            limit,
            lease_seconds,
            tuple(sorted(set(task_types))) if task_types is not None else None,
            tuple(sorted(set(model_profiles))) if model_profiles is not None else None,
        )

    @property
    def first_scan(self) -> int:
        """Candidates read (unlocked) by a first round: a bounded excess over the limit."""
        return 2 * self.limit + 8

    @property
    def key(self) -> CursorKey:
        """What the fair-share cursor of this kind of claim is kept under."""
        return (self.task_types, self.model_profiles)

    def params(self, wanted: int, scan: int) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "limit": wanted,
            "scan": scan,
            "lease_seconds": self.lease_seconds,
            "task_types": list(self.task_types) if self.task_types is not None else None,
            "model_profiles": list(self.model_profiles)
            if self.model_profiles is not None
            else None,
        }


def _claimed_jobs(rows: list[dict[str, Any]]) -> list[Job]:
    """The jobs of a `job_claim` answer (always one row at least, for `seen`)."""
    return [Job.from_row(row) for row in rows if row["id"] is not None]


def _claim_order(job: Job) -> tuple[int, datetime, UUID]:
    return (-job.priority, job.run_after, job.id)


def _inserted(row: dict[str, Any], new: NewJob) -> Job:
    """A job just inserted: what `job_create_many` returns, what was sent, the defaults.

    `test_created_jobs_equal_their_stored_rows_with_and_without_keys` holds this
    to the row as stored.
    """
    return Job(
        id=row["id"],
        owner_service=new.owner_service,
        owner_ref=new.owner_ref,
        task_type=new.task_type,
        model_profile=new.model_profile,
        status=JobStatus.PENDING,
        priority=new.priority,
        input=new.input,
        result=None,
        error_category=None,
        error_message=None,
        error_details=None,
        errors=[],
        error_count=0,
        attempt=0,
        max_attempts=new.max_attempts,
        run_after=row["run_after"],
        worker_id=None,
        lease_token=None,
        lease_expires_at=None,
        lease_seconds=None,
        timeout_seconds=new.timeout_seconds,
        idempotency_key=new.idempotency_key,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=None,
        finished_at=None,
        outage_since=None,
        callback_url=new.callback_url,
        traceparent=new.traceparent,
    )


def encode_cursor(job: Job) -> str:
    """Opaque keyset cursor pointing just after `job` in newest-first (id) order."""
    return base64.urlsafe_b64encode(str(job.id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> UUID:
    """Inverse of `encode_cursor`; raises `InvalidRequest` naming `cursor`.

    Cursors of the earlier `created_at|id` form are read by their id.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if "|" in raw:  # the earlier form: an aware timestamp, then the id
            created, job_id = raw.split("|")
            if datetime.fromisoformat(created).tzinfo is None:
                raise ValueError("naive timestamp")
            return UUID(job_id)
        return UUID(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise errors.InvalidRequest("cursor", "is not a cursor returned by this API") from None


CountKey = tuple[str, str, str, str]  # status, task_type, model_profile, error_category
OwnerKey = tuple[str, str]  # owner_service, status


K = TypeVar("K", bound=tuple[str, ...])


def _moved(before: dict[K, int], after: dict[K, int]) -> list[tuple[K, int, int]]:
    keys = sorted(before.keys() | after.keys())
    return [
        (k, before.get(k, 0), after.get(k, 0)) for k in keys if before.get(k, 0) != after.get(k, 0)
    ]


@dataclass(frozen=True)
class Recount:
    """A recount's figures: `before` (counters + deltas) and `after` (rows in the
    table) by counter key summed over owners, and the same by owner and status
    (`owners_before`, `owners_after`); keys at zero are left out."""

    before: dict[CountKey, int]
    after: dict[CountKey, int]
    owners_before: dict[OwnerKey, int] = field(default_factory=dict)
    owners_after: dict[OwnerKey, int] = field(default_factory=dict)

    @property
    def changes(self) -> list[tuple[CountKey, int, int]]:
        """(key, before, after) of every counter that moved, in key order."""
        return _moved(self.before, self.after)

    @property
    def owner_changes(self) -> list[tuple[OwnerKey, int, int]]:
        """((owner_service, status), before, after) of every owner figure that moved."""
        return _moved(self.owners_before, self.owners_after)


class Store:
    """Job persistence on a psycopg connection pool (autocommit, dict rows)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        backoff_base: float = 10.0,
        backoff_max: float = 600.0,
        policy: ClaimPolicy | None = None,
    ) -> None:
        self.pool = pool
        self.policy = policy or ClaimPolicy()
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._q = queries()
        self.announcer = Announcer(self._send_wakeups)
        # Jobs that became completed, failed or cancelled, for `GET /jobs/{id}?wait_seconds=`.
        self.finished = Announcer(self._send_finished)

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        timeout: float = 5.0,
        backoff_base: float = 10.0,
        backoff_max: float = 600.0,
        wait: bool = False,
        policy: ClaimPolicy | None = None,
    ) -> Store:
        """Open a pool; with `wait=False` the database may still be down (readyz says so)."""
        pool = await db.open_pool(
            database_url, min_size=min_size, max_size=max_size, timeout=timeout, wait=wait
        )
        return cls(pool, backoff_base=backoff_base, backoff_max=backoff_max, policy=policy)

    async def close(self) -> None:
        await self.announcer.close()
        await self.finished.close()
        await self.pool.close()

    async def _send_wakeups(self, task_types: list[str]) -> None:
        await self._fetch("jobs_notify", {"task_types": task_types})

    async def _send_finished(self, ids: list[str]) -> None:
        await self._fetch("jobs_notify_finished", {"payloads": finished_payloads(ids)})

    def _announce_finished(self, job_ids: Iterable[UUID | str]) -> None:
        """Announce, after their commit, jobs that reached a final status."""
        self.finished.announce(str(job_id) for job_id in job_ids)

    def _conn(self) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        return db.connection(self.pool)

    async def _fetch(
        self, name: str, params: dict[str, Any], *, prepare: bool | None = None
    ) -> list[dict[str, Any]]:
        return await db.fetch(self.pool, self._q[name], params, prepare=prepare)

    async def _one_job(self, name: str, params: dict[str, Any]) -> Job | None:
        rows = await self._fetch(name, params)
        return Job.from_row(rows[0]) if rows else None

    async def _explain_miss(
        self, job_id: UUID, action: str, lease_token: UUID | None, job: Job | None = None
    ) -> Exception:
        """Why a guarded statement changed nothing: unknown job, lost lease or bad status.

        `job` is the job as just read, when the caller has it.
        """
        job = job or await self._one_job("job_get", {"id": job_id})
        if job is None:
            return errors.JobNotFound(job_id)
        if lease_token is not None and job.status in (JobStatus.RUNNING, JobStatus.PENDING):
            return errors.LeaseLost(job_id, job.status.value, action)
        if job.status is JobStatus.RUNNING and action in (
            "complete",
            "fail",
            "heartbeat",
            "release",
        ):
            return errors.LeaseLost(job_id, job.status.value, action)
        if (
            action == "retry"
            and job.status in ALLOWED_FROM["retry"]
            and not retry_allowed(job.attempt, job.max_attempts)
        ):
            return errors.AttemptsExhausted(job_id, job.attempt, MAX_ATTEMPTS)
        return errors.InvalidTransition(job_id, job.status.value, action)

    # -- queries --------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise `DatabaseUnavailable` unless PostgreSQL answers and accepts writes."""
        rows = await self._fetch("db_ping", {})
        if not rows or not rows[0]["ok"]:
            raise errors.DatabaseUnavailable("PostgreSQL is read-only (a standby or in recovery)")

    async def create_jobs(self, new_jobs: Sequence[NewJob]) -> list[Created]:
        """Insert jobs in one statement; an existing idempotency key returns that job.

        Results are in input order. Items repeating a key within the batch resolve
        to the same job. A key that names a job created from a different request
        (another fingerprint, see `NewJob.fingerprint`) raises `IdempotencyConflict`
        naming `jobs[i].idempotency_key`, and nothing is inserted: with keys, the
        insert and that check run in one transaction.
        """
        ids = new_job_ids(len(new_jobs))
        hashes = [j.fingerprint() if j.idempotency_key is not None else None for j in new_jobs]
        records = [
            {
                "id": str(job_id),
                "owner_service": j.owner_service,
                "owner_ref": j.owner_ref,
                "task_type": j.task_type,
                "model_profile": j.model_profile,
                "priority": j.priority,
                "input": j.input,
                "max_attempts": j.max_attempts,
                "run_after": j.run_after.isoformat() if j.run_after else None,
                "idempotency_key": j.idempotency_key,
                "request_hash": request_hash,
                "timeout_seconds": j.timeout_seconds,
                "callback_url": j.callback_url,
                "traceparent": j.traceparent,
            }
            for job_id, j, request_hash in zip(ids, new_jobs, hashes, strict=True)
        ]
        params = {"jobs": db.jsonb(records)}
        if all(h is None for h in hashes):
            # Without keys nothing can conflict: every row is inserted.
            rows = await self._fetch("job_create_many", params)
            inserted = {row["id"]: row for row in rows}
            jobs = [_inserted(inserted[i], j) for i, j in zip(ids, new_jobs, strict=True)]
            self._announce_runnable(jobs)
            return [Created(job, True) for job in jobs]
        for attempt in range(db.DEADLOCK_RETRIES):
            try:
                async with self._conn() as conn, conn.transaction():
                    created = await self._create_keyed(conn, ids, new_jobs, hashes, params)
                self._announce_runnable(c.job for c in created if c.created)
                return created
            except db.Deadlock:
                if attempt == db.DEADLOCK_RETRIES - 1:
                    raise errors.DatabaseUnavailable("database busy: repeated deadlocks") from None
        raise AssertionError("unreachable")

    async def _create_keyed(
        self,
        conn: psycopg.AsyncConnection[Any],
        ids: list[UUID],
        new_jobs: Sequence[NewJob],
        hashes: list[str | None],
        params: dict[str, Any],
    ) -> list[Created]:
        """The insert and the idempotency check of `create_jobs`, inside its transaction."""
        cur = await conn.execute(self._q["job_create_many"], params)
        rows: list[dict[str, Any]] = await cur.fetchall()
        rows_by_id = {row["id"]: row for row in rows}
        inserted = {
            job_id: _inserted(rows_by_id[job_id], new)
            for job_id, new in zip(ids, new_jobs, strict=True)
            if job_id in rows_by_id
        }
        # (owner_service, key) -> the job holding it and its request fingerprint.
        by_key: dict[tuple[str, str], tuple[Job, str | None]] = {
            (new.owner_service, new.idempotency_key): (inserted[job_id], wanted)
            for job_id, new, wanted in zip(ids, new_jobs, hashes, strict=True)
            if job_id in inserted and new.idempotency_key is not None
        }
        missing = [
            (j.owner_service, j.idempotency_key)
            for job_id, j in zip(ids, new_jobs, strict=True)
            if job_id not in inserted and j.idempotency_key is not None
        ]
        if missing:
            # A statement of its own: it sees rows that concurrent creates committed
            # while the insert waited on their keys.
            cur = await conn.execute(
                self._q["job_get_by_idempotency_keys"],
                {
                    "owner_services": [m[0] for m in missing],
                    "idempotency_keys": [m[1] for m in missing],
                },
            )
            for row in await cur.fetchall():
                key = (row["owner_service"], row["idempotency_key"])
                by_key.setdefault(key, (Job.from_row(row), row["request_hash"]))
        results: list[Created] = []
        for index, (job_id, new, wanted) in enumerate(zip(ids, new_jobs, hashes, strict=True)):
            if job_id in inserted:
                results.append(Created(inserted[job_id], True))
                continue
            found = by_key.get((new.owner_service, new.idempotency_key or ""))
            if found is None:  # deleted between the two statements: very unlikely
                raise errors.DatabaseUnavailable("idempotent create raced with a delete; retry")
            job, request_hash = found
            # Jobs created before fingerprints were stored have none: they match.
            if request_hash is not None and request_hash != wanted:
                raise errors.IdempotencyConflict(f"jobs[{index}].idempotency_key", job.id)
            results.append(Created(job, False))
        return results

    def _announce_runnable(self, jobs: Iterable[Job]) -> None:
        """Wake the claimers of the new jobs that can run now (not scheduled for later)."""
        self.announcer.announce({j.task_type for j in jobs if j.run_after <= j.created_at})

    async def get_jobs(self, job_ids: Sequence[UUID]) -> list[Job]:
        """The jobs with these ids, in no particular order (unknown ids are left out)."""
        rows = await self._fetch("job_get_many", {"ids": list(job_ids)})
        return [Job.from_row(row) for row in rows]

    async def get_job(self, job_id: UUID) -> Job:
        job = await self._one_job("job_get", {"id": job_id})
        if job is None:
            raise errors.JobNotFound(job_id)
        return job

    async def list_jobs(
        self,
        job_filter: JobFilter,
        *,
        limit: int = 50,
        cursor: str | None = None,
        include: Collection[str] = PAYLOAD_COLUMNS,
        max_payload_bytes: int | None = None,
    ) -> JobPage:
        """Newest first: the page and the cursor of the next page (or None).

        Only the payload columns in `include` (of `PAYLOAD_COLUMNS`) are read; the
        others are None in the returned jobs. With `max_payload_bytes` the page stops
        before the job whose payload (as JSON) would go past the budget, keeping at
        least one job, so that neither the answer nor this process's memory grows
        with `limit` times the largest input.
        """
        params = _filter_params(job_filter) | {
            "statuses": [s.value for s in job_filter.statuses] or None,
            "cursor_id": decode_cursor(cursor) if cursor else None,
            "limit": limit + 1,
        }
        params |= {f"with_{column}": column in include for column in PAYLOAD_COLUMNS}
        wanted = [column for column in PAYLOAD_COLUMNS if column in include]
        budget = max_payload_bytes
        jobs: list[Job] = []
        more = truncated = False
        async with self._conn() as conn:
            # Row by row (not prepared: each call is planned with its own values, so
            # unused filters fold away): a page that reaches its budget stops reading
            # (psycopg cancels the rest of the query), so the rows after it are never
            # fetched.
            stream = conn.cursor().stream(self._q["job_list"], params)
            rows = cast(AsyncGenerator[dict[str, Any], None], stream)  # it is one
            async with contextlib.aclosing(rows):
                async for row in rows:
                    if len(jobs) == limit:
                        # The extra row of LIMIT limit + 1: read to the end of the
                        # result (breaking off would cancel the query).
                        more = True
                        continue
                    if budget is not None and wanted:
                        size = sum(len(db.dumps(row[c])) for c in wanted if row[c] is not None)
                        if jobs and size > budget:
                            more = truncated = True
                            break
                        budget -= size
                    jobs.append(Job.from_row(row))
        next_cursor = encode_cursor(jobs[-1]) if more else None
        return JobPage(jobs, next_cursor, truncated)

    async def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease_seconds: float,
        task_types: Iterable[str] | None = None,
        model_profiles: Iterable[str] | None = None,
    ) -> list[Job]:
        """Atomically move up to `limit` runnable jobs to running for `worker_id`.

        Jobs come in claim order: priority (highest first), then run_after, then id.
        """
        request = ClaimRequest.of(worker_id, limit, lease_seconds, task_types, model_profiles)
        jobs: list[Job] = []
        # Candidates are read without locks, a bounded excess over what is wanted; when
        # concurrent claimers took them all, look again, further down the queue.
        scan = request.first_scan
        for _ in range(CLAIM_ROUNDS):
            wanted = limit - len(jobs)
            statements = self._claim_statements(request, wanted, scan)
            [*_, rows] = await db.fetch_together(self.pool, statements)
            got = _claimed_jobs(rows)
            jobs.extend(got)
            self.policy.advance(request.key, rows[0])
            if len(got) == wanted or (rows[0]["seen"] < scan and not rows[0]["truncated"]):
                break  # satisfied, or every runnable job was among the candidates
            scan *= 4
        jobs.sort(key=_claim_order)
        return jobs

    async def complete_and_claim(
        self, completions: Sequence[Completion], request: ClaimRequest
    ) -> tuple[dict[UUID, dict[str, Any]], list[Job]]:
        """`complete_many`, then one round of `claim`, in one transaction.

        One round trip and one commit refill the slots that the completions free
        (the built-in worker's cycle). The claim may return fewer jobs than
        asked, also when more are runnable (concurrent claimers took its
        candidates): a caller that needs them claims again.
        """
        done, *_, taken = await db.fetch_together(
            self.pool,
            [
                (self._q["job_complete_many"], _completions_params(completions)),
                *self._claim_statements(request, request.limit, request.first_scan),
            ],
        )
        self._announce_finished(row["id"] for row in done)
        jobs = _claimed_jobs(taken)
        self.policy.advance(request.key, taken[0])
        jobs.sort(key=_claim_order)
        return {row["id"]: row for row in done}, jobs

    def _claim_statements(
        self, request: ClaimRequest, wanted: int, scan: int
    ) -> list[tuple[str, dict[str, Any]]]:
        """The claim, after the locks of the limited profiles it could admit to."""
        statements = []
        locked = self.policy.locked_profiles(request.model_profiles)
        if locked:
            statements.append((self._q["job_claim_lock_profiles"], {"locked_profiles": locked}))
        params = request.params(wanted, scan) | self.policy.params(request.key, scan)
        params["locked"] = bool(locked)
        statements.append((self._q["job_claim"], params))
        return statements

    async def complete(
        self, job_id: UUID, result: dict[str, Any], lease_token: UUID | None = None
    ) -> Job:
        job = await self._one_job(
            "job_complete", {"id": job_id, "result": db.jsonb(result), "lease_token": lease_token}
        )
        if job is None:
            current = await self._one_job("job_get", {"id": job_id})
            if (
                current is not None
                and lease_token is not None
                and current.status is JobStatus.COMPLETED
                and current.lease_token == lease_token
                and current.result == result
            ):
                return current  # a repeat of the completion that finished it
            raise await self._explain_miss(job_id, "complete", lease_token, current)
        self._announce_finished([job.id])
        return job

    async def complete_many(self, completions: Sequence[Completion]) -> dict[UUID, dict[str, Any]]:
        """Complete many running jobs in one statement.

        Returns the jobs whose lease held, by id: `task_type`, `model_profile`,
        `started_at`, `finished_at`. The others changed nothing.
        """
        if not completions:
            return {}
        rows = await self._fetch("job_complete_many", _completions_params(completions))
        self._announce_finished(row["id"] for row in rows)
        return {row["id"]: row for row in rows}

    async def complete_fresh(self, completions: Sequence[Completion]) -> dict[UUID, dict[str, Any]]:
        """`complete_many` answering only the jobs this call completed.

        `complete_many` also returns the jobs an earlier call completed under the
        same token (a repeat); a caller that must look at a repeat on its own (the
        API checks that it sends the same result) gets only the fresh ones here.
        One transaction: its `now()` is every fresh row's `finished_at`, and a
        repeat's is older.
        """
        if not completions:
            return {}
        [clock], rows = await db.fetch_together(
            self.pool,
            [
                (self._q["db_now"], {}),
                (self._q["job_complete_many"], _completions_params(completions)),
            ],
        )
        fresh = {row["id"]: row for row in rows if row["finished_at"] == clock["now"]}
        self._announce_finished(fresh)
        return fresh

    async def fail(
        self,
        job_id: UUID,
        *,
        category: str,
        message: str,
        details: dict[str, Any] | None = None,
        lease_token: UUID | None = None,
        retryable: bool = False,
        outage_max: float = 0.0,
        retry_after: float | None = None,
    ) -> Job:
        """Record a failed attempt; retryable failures with attempts left go back to pending.

        With an outage budget (`outage_max` > 0, `PROVIDER_OUTAGE_MAX`), a retryable
        provider outage of a running attempt is deferred instead (`defer`: no attempt
        spent), after `retry_after` seconds when the provider asked (at most the budget).
        """
        if (
            category in OUTAGE_CATEGORIES
            and retryable
            and outage_max > 0
            and lease_token is not None
        ):
            return await self.defer(
                job_id,
                category=category,
                message=message,
                details=details,
                lease_token=lease_token,
                outage_max=outage_max,
                delay=None if retry_after is None else min(retry_after, outage_max),
            )
        job = await self._one_job(
            "job_fail",
            {
                "id": job_id,
                "category": category,
                "message": message,
                "details": db.jsonb(details),
                "lease_token": lease_token,
                "retryable": retryable,
                "backoff_base": self.backoff_base,
                "backoff_max": self.backoff_max,
                "errors_kept": ERRORS_KEPT,
            },
        )
        if job is None:
            current = await self._one_job("job_get", {"id": job_id})
            if (
                current is not None
                and lease_token is not None
                and current.status in (JobStatus.FAILED, JobStatus.PENDING)
                and current.lease_token == lease_token
                and (current.error_category, current.error_message) == (category, message)
            ):
                return current  # a repeat of the failure that ended this attempt
            raise await self._explain_miss(job_id, "fail", lease_token, current)
        if job.status.is_terminal:
            self._announce_finished([job.id])
        return job

    async def defer(
        self,
        job_id: UUID,
        *,
        category: str,
        message: str,
        lease_token: UUID,
        outage_max: float,
        details: dict[str, Any] | None = None,
        delay: float | None = None,
    ) -> Job:
        """A provider outage ended the attempt: back to pending without spending it.

        After `delay` seconds (a Retry-After), else the outage backoff. Once the job's
        outage is older than `outage_max` seconds it fails with `category` instead.
        Raises like `fail` when the lease is gone.
        """
        job = await self._one_job(
            "job_defer",
            {
                "id": job_id,
                "category": category,
                "message": message,
                "details": db.jsonb(details),
                "lease_token": lease_token,
                "outage_max": outage_max,
                "delay": delay,
                "backoff_base": self.backoff_base,
                "outage_backoff_max": min(self.backoff_max, OUTAGE_BACKOFF_CAP),
                "errors_kept": ERRORS_KEPT,
            },
        )
        if job is None:
            current = await self._one_job("job_get", {"id": job_id})
            if (
                current is not None
                and current.status in (JobStatus.FAILED, JobStatus.PENDING)
                and current.lease_token == lease_token
                and (current.error_category, current.error_message) == (category, message)
            ):
                return current  # a repeat of the deferral that ended this attempt
            raise await self._explain_miss(job_id, "fail", lease_token, current)
        if job.status is JobStatus.PENDING and delay is not None and delay <= 0:
            self.announcer.announce([job.task_type])  # runnable at once: tell the others
        if job.status.is_terminal:
            self._announce_finished([job.id])  # past the outage budget
        return job

    async def heartbeat(
        self, job_id: UUID, lease_token: UUID, extend_seconds: float | None = None
    ) -> Job:
        """Extend a lease by `extend_seconds`, or by its claim's lease length."""
        job = await self._one_job(
            "job_heartbeat",
            {"id": job_id, "lease_token": lease_token, "extend_seconds": extend_seconds},
        )
        if job is None:
            raise await self._explain_miss(job_id, "heartbeat", lease_token)
        return job

    async def heartbeat_many(
        self, leases: Sequence[tuple[UUID, UUID]], extend_seconds: float | None = None
    ) -> set[UUID]:
        """Extend many leases at once; returns the ids still held (the rest were lost)."""
        if not leases:
            return set()
        rows = await self._fetch(
            "job_heartbeat_many",
            {
                "ids": [job_id for job_id, _ in leases],
                "lease_tokens": [token for _, token in leases],
                "extend_seconds": extend_seconds,
            },
        )
        return {row["id"] for row in rows}

    async def release_many(self, leases: Sequence[tuple[UUID, UUID]]) -> set[UUID]:
        """Return held jobs to pending without counting the attempt (graceful stop)."""
        if not leases:
            return set()
        rows = await self._fetch(
            "job_release_many",
            {"ids": [job_id for job_id, _ in leases], "lease_tokens": [t for _, t in leases]},
        )
        self.announcer.announce({row["task_type"] for row in rows})
        return {row["id"] for row in rows}

    async def release(self, job_id: UUID, lease_token: UUID) -> Job:
        """Give one running job back to pending without spending its attempt (a worker
        stopping before it could finish); `LeaseLost` when the token no longer holds it."""
        if not await self.release_many([(job_id, lease_token)]):
            raise await self._explain_miss(job_id, "release", lease_token)
        return await self.get_job(job_id)

    async def retry(self, job_id: UUID) -> Job:
        """Manual retry of a failed or running job (`AttemptsExhausted` past the maximum)."""
        job = await self._one_job("job_retry", {"id": job_id, "max_attempts_limit": MAX_ATTEMPTS})
        if job is None:
            raise await self._explain_miss(job_id, "retry", None)
        self.announcer.announce([job.task_type])
        return job

    async def cancel(self, job_id: UUID) -> Job:
        """Cancel a pending or running job; its category becomes `cancelled`."""
        job = await self._one_job("job_cancel", {"id": job_id})
        if job is None:
            raise await self._explain_miss(job_id, "cancel", None)
        self._announce_finished([job.id])
        return job

    async def retry_by_filter(
        self, job_filter: JobFilter, *, sample: int = BULK_SAMPLE
    ) -> BulkOutcome:
        """Retry the jobs matching the filter: failed ones, unless `statuses` names
        `running` too (a running attempt is reset only on request)."""
        return await self._by_filter("job_retry_by_filter", "retry", job_filter, sample)

    async def cancel_by_filter(
        self, job_filter: JobFilter, *, sample: int = BULK_SAMPLE
    ) -> BulkOutcome:
        """Cancel the pending and running jobs matching the filter."""
        return await self._by_filter("job_cancel_by_filter", "cancel", job_filter, sample)

    async def count_by_filter(
        self, action: str, job_filter: JobFilter, *, cap: int = BULK_COUNT_CAP
    ) -> tuple[int, bool]:
        """How many jobs a bulk `action` (retry, cancel) would change now: the matching
        jobs in the statuses it applies to (as `_by_filter` picks them), counted up to
        `cap`; the flag says there are more than `cap`."""
        allowed = ALLOWED_FROM[action]
        wanted = job_filter.statuses or BULK_DEFAULT_STATUSES[action]
        statuses = sorted({s.value for s in wanted if s in allowed})
        if not statuses:
            return 0, False
        params = _filter_params(job_filter) | {
            "statuses": statuses,
            "cap": cap,
            "retryable": action == "retry",
            "max_attempts_limit": MAX_ATTEMPTS,
        }
        [row] = await self._fetch("job_count_by_filter", params, prepare=False)
        n = int(row["n"])
        return min(n, cap), n > cap

    async def _by_filter(
        self, name: str, action: str, job_filter: JobFilter, sample: int
    ) -> BulkOutcome:
        """Walk the matching jobs in id order, one batch (one statement) at a time.

        Each statement answers one row (counts, the next start, a few ids), so the
        memory used does not grow with the number of jobs changed.
        """
        allowed = ALLOWED_FROM[action]
        wanted = job_filter.statuses or BULK_DEFAULT_STATUSES[action]
        statuses = sorted({s.value for s in wanted if s in allowed})
        if not statuses:
            return BulkOutcome(0, [])
        params = _filter_params(job_filter) | {
            "statuses": statuses,
            "batch": FILTER_BATCH,
            "max_attempts_limit": MAX_ATTEMPTS,
        }
        count = 0
        ids: list[UUID] = []
        after = UUID(int=0)
        while True:
            [row] = await self._fetch(
                name, params | {"after": after, "sample": sample - len(ids)}, prepare=False
            )
            if action == "retry":
                self.announcer.announce(row["task_types"])
            elif row["changed"]:
                # Only a sample of the ids comes back: every waiter looks again.
                self.finished.announce([FINISHED_ANY])
            count += row["changed"]
            ids.extend(row["sample"])
            if row["seen"] < FILTER_BATCH:
                return BulkOutcome(count, ids)
            after = row["last_id"]

    # -- maintenance ----------------------------------------------------------------

    async def rescue_expired(self, batch: int = RESCUE_BATCH) -> list[tuple[UUID, JobStatus]]:
        """Return expired running jobs to pending or fail them; returns (id, new status)."""
        rows = await self._fetch(
            "job_rescue_expired",
            {
                "batch": batch,
                "backoff_base": self.backoff_base,
                "backoff_max": self.backoff_max,
                "errors_kept": ERRORS_KEPT,
            },
        )
        rescued = [(row["id"], JobStatus(row["status"])) for row in rows]
        self._announce_finished(job_id for job_id, status in rescued if status.is_terminal)
        return rescued

    async def prune_finished(
        self, *, completed_seconds: float, failed_seconds: float, batch: int = 5000
    ) -> int:
        """Delete finished jobs older than their retention (seconds, by the database
        clock) in batches; returns how many were deleted."""
        total = 0
        params = {"completed_seconds": completed_seconds, "failed_seconds": failed_seconds}
        while True:
            rows = await self._fetch("job_prune_finished", params | {"batch": batch})
            total += len(rows)
            if len(rows) < batch:
                return total

    # -- webhook deliveries (the outbox the jobs_webhook_event trigger fills) -----------

    async def claim_deliveries(self, *, batch: int, lease: float) -> list[Delivery]:
        """Take up to `batch` due pending deliveries for `lease` seconds (see webhook_claim)."""
        rows = await self._fetch("webhook_claim", {"batch": batch, "lease": lease})
        return [Delivery.from_row(row) for row in rows]

    async def record_deliveries(
        self, outcomes: Sequence[DeliveryOutcome], *, max_age: float, attempts_kept: int
    ) -> dict[UUID, str]:
        """Record attempts; returns each changed delivery's new status by id.

        A failed attempt is retried after its `delay`, until `max_age` seconds after
        the event; then the delivery is `failed`.
        """
        if not outcomes:
            return {}
        records = [
            {
                "id": str(o.delivery_id),
                "ok": o.ok,
                "at": o.at.isoformat(),
                "http_status": o.http_status,
                "error": o.error,
                "response": o.response,
                "duration_ms": o.duration_ms,
                "delay": o.delay,
            }
            for o in outcomes
        ]
        rows = await self._fetch(
            "webhook_record",
            {"outcomes": db.jsonb(records), "max_age": max_age, "attempts_kept": attempts_kept},
        )
        return {row["id"]: row["status"] for row in rows}

    async def list_deliveries(self, job_id: UUID) -> list[Delivery]:
        """A job's webhook deliveries, oldest first."""
        rows = await self._fetch("webhook_list", {"job_id": job_id})
        return [Delivery.from_row(row) for row in rows]

    # -- the worker registry (each worker writes its own row) --------------------------

    async def upsert_worker(
        self, entry: WorkerEntry, *, fresh: float, stopped: bool = False
    ) -> bool:
        """Write `entry` as its worker's row, seen now (`stopped`: marked stopped).

        Returns True when the row belonged to another live process (seen within
        `fresh` seconds, not stopped, another host, pid or start): two processes
        share the worker id.
        """
        rows = await self._fetch(
            "worker_upsert",
            {
                "worker_id": entry.worker_id,
                "hostname": entry.hostname,
                "pid": entry.pid,
                "version": entry.version,
                "started_at": entry.started_at,
                "status": db.jsonb(entry.status),
                "stopped": stopped,
                "fresh": fresh,
            },
        )
        return bool(rows and rows[0]["clash"])

    async def list_workers(self, *, within: float, limit: int) -> list[WorkerRow]:
        """Up to `limit` rows of the registry: live ones (seen within `within` seconds,
        not stopped) first, then the most recently seen."""
        rows = await self._fetch("worker_list", {"within": within, "limit": limit})
        return [WorkerRow.from_row(row) for row in rows]

    async def prune_workers(self, retention: float) -> int:
        """Delete the rows of workers not seen for `retention` seconds; returns how many."""
        rows = await self._fetch("worker_prune", {"retention": retention})
        return int(rows[0]["deleted"])

    async def compact_counts(self) -> None:
        """Fold trigger-written counter deltas into `job_counts`."""
        await self._fetch("job_counts_compact", {})
        await self._fetch("job_counts_drop_zero", {})

    async def compact_rollups(self) -> None:
        """Fold trigger-written rollup deltas into the per-minute and per-hour rollups."""
        await self._fetch("job_rollups_compact", {})

    async def prune_rollups(self) -> int:
        """Delete rollups past their retention (8 days); returns how many rows went."""
        rows = await self._fetch("job_rollups_prune", {})
        return int(rows[0]["deleted"])

    # -- the transcription A/B report (rows written by the jobs_transcription_report
    # trigger when a transcription job completes) ------------------------------------

    async def compact_transcription_rollups(self) -> int:
        """Fold the trigger-written attempt deltas into the hourly transcription rollups;
        returns how many were folded (0 while another replica folds)."""
        rows = await self._fetch("transcription_rollups_compact", {})
        return int(rows[0]["folded"])

    async def prune_transcription_rollups(self) -> int:
        """Delete hourly transcription rollups past their retention (32 days)."""
        rows = await self._fetch("transcription_rollups_prune", {})
        return int(rows[0]["deleted"])

    async def transcription_report_rows(
        self, window: Mapping[str, datetime], owner_service: str | None
    ) -> list[dict[str, Any]]:
        """The report's figures as rows (see the `transcription_report` query and
        `transcription_report.provider_figures`); `window` is `Window.params()`."""
        params = {**window, "owner": owner_service}
        return await self._fetch("transcription_report", params, prepare=False)

    async def transcription_disagreements(
        self, since: datetime, until: datetime, owner_service: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """The attempt rows of the `limit` jobs finished in [since, until) whose
        providers disagree most (`transcription_disagreements`)."""
        params = {"since": since, "until": until, "owner": owner_service, "limit": limit}
        return await self._fetch("transcription_disagreements", params, prepare=False)

    async def transcription_bounds(self) -> list[float]:
        """The upper bounds (ms) of the report's duration buckets."""
        rows = await self._fetch("transcription_bounds", {})
        return [float(b) for b in rows[0]["bounds"]]

    async def recount_counts(self, lock_timeout: float = RECOUNT_LOCK_TIMEOUT) -> Recount:
        """Set `job_counts` from the jobs table, exactly, while the service runs.

        One short transaction that blocks no writer: it keeps the counter
        compaction out (its advisory lock) and sets each counter from one
        snapshot of the table and of the deltas (see `job_counts_recount`).
        Raises `DatabaseUnavailable` when a lock is not granted within
        `lock_timeout` seconds (a TRUNCATE or schema change in flight); nothing
        changed then.
        """
        try:
            async with self._conn() as conn, conn.transaction():
                try:
                    await conn.execute(
                        self._q["job_counts_recount_lock_timeout"],
                        {"lock_timeout": f"{round(lock_timeout * 1000)}ms"},
                    )
                    await conn.execute(self._q["job_counts_recount_lock"], {})
                    await conn.execute(self._q["job_counts_recount_gate"], {})
                except psycopg.errors.LockNotAvailable:
                    raise errors.DatabaseUnavailable(
                        f"recount: the counters stayed locked for {lock_timeout:g} s "
                        "(a TRUNCATE or schema change in flight?); nothing changed, try again"
                    ) from None
                cur = await conn.execute(self._q["job_counts_recount"], {})
                rows = await cur.fetchall()
                await conn.execute(self._q["job_counts_drop_zero"], {})
        except db.Deadlock:
            raise errors.DatabaseUnavailable(
                "recount: chosen as a deadlock victim; nothing changed, try again"
            ) from None
        return Recount(
            before=_sum_by(rows, _count_key, "before"),
            after=_sum_by(rows, _count_key, "after"),
            owners_before=_sum_by(rows, _owner_key, "before"),
            owners_after=_sum_by(rows, _owner_key, "after"),
        )

    async def stats_counts(self) -> list[dict[str, Any]]:
        """Exact counts by status, task type, model profile and error category."""
        return await self._fetch("stats_counts", {})

    async def stats_owner_counts(self) -> list[dict[str, Any]]:
        """Exact counts by owner_service and status (rows `owner_service`, `status`, `n`)."""
        return await self._fetch("stats_owner_counts", {})

    async def stats(self) -> dict[str, Any]:
        """Raw statistics rows; the API shapes them for the response.

        `pending`: the database clock, the oldest runnable job's `run_after`, the
        scheduled count (at most `SCHEDULED_COUNT_CAP`; `scheduled_capped` when
        there are more) and the next one; `recent`: 24 h figures by task type from
        the rollups; `throughput`: finished jobs per minute over the last hour.
        """
        # Five independent reads, on five pooled connections at once.
        counts, owners, pending_rows, recent, throughput = await asyncio.gather(
            self.stats_counts(),
            self.stats_owner_counts(),
            self._fetch("stats_pending", {"cap": SCHEDULED_COUNT_CAP}),
            self._fetch("stats_recent", {}),
            self._fetch("stats_throughput", {}),
        )
        pending = pending_rows[0]
        pending["scheduled_capped"] = pending["scheduled"] > SCHEDULED_COUNT_CAP
        pending["scheduled"] = min(pending["scheduled"], SCHEDULED_COUNT_CAP)
        return {
            "counts": counts,
            "owners": owners,
            "pending": pending,
            "recent": recent,
            "throughput": throughput,
        }

    async def stats_breakdown(self) -> list[dict[str, Any]]:
        """Per (task_type, model_profile): `scheduled` (pending jobs due later, the
        first SCHEDULED_COUNT_CAP + 1 counted) and `failed_1h` (from the rollups)."""
        return await self._fetch("stats_breakdown", {"cap": SCHEDULED_COUNT_CAP})

    async def throughput_day(self) -> list[dict[str, Any]]:
        """Jobs finished per UTC hour over the last 24 hours, oldest first (rows `hour`,
        `completed`, `failed`), from the rollups."""
        return await self._fetch("stats_throughput_day", {})

    async def latest_failures(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest failed jobs (id, task type, profile, owner, category, message)."""
        return await self._fetch("job_failed_latest", {"limit": limit})

    # -- audio (kept apart from the job rows) ------------------------------------------

    async def upload_audio(
        self,
        owner_service: str,
        content_type: str,
        body: AsyncIterable[bytes],
        *,
        max_bytes: int,
        field: str = "body",
    ) -> AudioBlob:
        """Store a streamed recording chunk by chunk; the bytes are never all in memory.

        Each chunk is its own statement on a pooled connection (none is held while the
        client sends). Over `max_bytes` raises `PayloadTooLarge` naming `field` and
        `AUDIO_MAX_BYTES`, an empty body `InvalidRequest`; on any failure the partial
        upload is deleted (retention removes it if even that fails).
        """
        audio_id = new_job_ids(1)[0]  # time-ordered like job ids
        params = {"id": audio_id, "owner_service": owner_service, "content_type": content_type}
        await self._fetch("audio_begin", params)
        digest = hashlib.sha256()
        size = count = 0
        buffer = bytearray()
        try:
            async for piece in body:
                size += len(piece)
                if size > max_bytes:
                    raise errors.PayloadTooLarge(field, max_bytes, "AUDIO_MAX_BYTES")
                digest.update(piece)
                buffer += piece
                while len(buffer) >= AUDIO_CHUNK_BYTES:
                    await self._add_audio_chunk(audio_id, count, bytes(buffer[:AUDIO_CHUNK_BYTES]))
                    del buffer[:AUDIO_CHUNK_BYTES]
                    count += 1
            if buffer:
                await self._add_audio_chunk(audio_id, count, bytes(buffer))
            if size == 0:
                raise errors.InvalidRequest(field, "the audio is empty (0 bytes)")
            rows = await self._fetch(
                "audio_finish", {"id": audio_id, "size": size, "sha256": digest.hexdigest()}
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await self._fetch("audio_delete", {"id": audio_id})
            raise
        return AudioBlob.from_row(rows[0])

    async def _add_audio_chunk(self, audio_id: UUID, n: int, data: bytes) -> None:
        await self._fetch("audio_chunk_add", {"audio_id": audio_id, "n": n, "data": data})

    async def put_audio(self, owner_service: str, content_type: str, data: bytes) -> AudioBlob:
        """Store a small recording held in memory (a job's `audio_base64`), by its content.

        The id derives from the owner_service and the SHA-256 of the bytes: the same
        audio sent again by the same owner is stored once and gets the same id.
        """
        if not data:
            raise ValueError("no audio")
        sha256 = hashlib.sha256(data).hexdigest()
        audio_id = uuid.uuid5(_AUDIO_NAMESPACE, f"{owner_service}\x00{sha256}")
        params = {
            "id": audio_id,
            "owner_service": owner_service,
            "content_type": content_type,
            "size": len(data),
            "sha256": sha256,
        }
        # Twice at most: a recording stored before may be pruned between this insert
        # (which then inserts nothing) and the read that follows; the retry stores it.
        for _ in range(2):
            async with self._conn() as conn, conn.transaction():
                cur = await conn.execute(self._q["audio_put"], params)
                row = await cur.fetchone()
                if row is not None:  # new: its chunks in the same transaction
                    for n, start in enumerate(range(0, len(data), AUDIO_CHUNK_BYTES)):
                        chunk = data[start : start + AUDIO_CHUNK_BYTES]
                        await conn.execute(
                            self._q["audio_chunk_add"],
                            {"audio_id": audio_id, "n": n, "data": chunk},
                        )
            if row is not None:
                break
            # stored before: mark it used again
            await self.use_audio([(audio_id, owner_service)])
            rows = await self._fetch("audio_get", {"id": audio_id})
            if rows:
                row = rows[0]
                break
        if row is None:
            raise errors.DatabaseUnavailable("the recording could not be stored; try again")
        return AudioBlob.from_row(row)

    async def use_audio(self, refs: Sequence[tuple[UUID, str]]) -> set[tuple[UUID, str]]:
        """Of these (audio_id, owner_service) pairs, the complete recordings (marked used now).

        A recording of another owner_service is not found, exactly like a missing one.
        """
        if not refs:
            return set()
        rows = await self._fetch(
            "audio_use",
            {"ids": [r[0] for r in refs], "owner_services": [r[1] for r in refs]},
        )
        return {(row["id"], row["owner_service"]) for row in rows}

    async def get_audio(self, audio_id: UUID) -> AudioBlob:
        """A complete recording's description; `AudioNotFound` when there is none."""
        rows = await self._fetch("audio_get", {"id": audio_id})
        if not rows:
            raise errors.AudioNotFound(audio_id)
        return AudioBlob.from_row(rows[0])

    async def audio_chunks(self, audio_id: UUID) -> AsyncIterator[bytes]:
        """A recording's bytes in order, one chunk (`AUDIO_CHUNK_BYTES`) at a time.

        Rows are streamed in binary (no hex encoding of bytea); the connection is
        held until the iteration ends or the generator is closed.
        """
        async with self._conn() as conn:
            cursor = conn.cursor(binary=True)
            stream = cursor.stream(self._q["audio_chunks"], {"id": audio_id})
            rows = cast(AsyncGenerator[dict[str, Any], None], stream)
            async with contextlib.aclosing(rows):
                async for row in rows:
                    data: bytes = row["data"]
                    yield data

    async def prune_audio(self, retention: float, batch: int = 100) -> tuple[int, int]:
        """Delete recordings unused for `retention` seconds that no pending or running job
        names, and abandoned uploads; returns how many went and their bytes."""
        count = size = 0
        params = {"retention": retention, "abandoned": AUDIO_ABANDONED_AFTER, "batch": batch}
        while True:
            rows = await self._fetch("audio_prune", params)
            count += len(rows)
            size += sum(row["size"] or 0 for row in rows)
            if len(rows) < batch:
                return count, size


def _count_key(row: dict[str, Any]) -> CountKey:
    return (row["status"], row["task_type"], row["model_profile"], row["error_category"])


def _owner_key(row: dict[str, Any]) -> OwnerKey:
    return (row["owner_service"], row["status"])


def _sum_by(
    rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], K], column: str
) -> dict[K, int]:
    """`column` of the recount's rows (one per full counter key) summed by `key`; zeros dropped."""
    sums: dict[K, int] = {}
    for row in rows:
        k = key(row)
        sums[k] = sums.get(k, 0) + int(row[column])
    return {k: n for k, n in sums.items() if n}


def _filter_params(job_filter: JobFilter) -> dict[str, Any]:
    """The parameters of the `job_filter` fragment, but `statuses` (each caller's own)."""
    return {f.name: getattr(job_filter, f.name) for f in fields(job_filter) if f.name != "statuses"}
