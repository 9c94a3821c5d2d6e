"""`/api/v1/jobs*`: create, list, get, claim and every job transition."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, Request, Response, status

from ai_service import errors
from ai_service.api import schemas
from ai_service.api.auth import Principal, require_all_allowed, scoped_owner
from ai_service.api.deps import (
    CompletionsDep,
    MetricsDep,
    NotifierDep,
    PrincipalDep,
    SettingsDep,
    StoreDep,
    WaitsDep,
    known_query,
)
from ai_service.api.errors import responses
from ai_service.api.job_audio import keep_audio_apart
from ai_service.api.job_callbacks import apply_callbacks
from ai_service.jobs import PAYLOAD_COLUMNS, JobFilter, NewJob, is_retryable
from ai_service.store import BulkOutcome, Completion, Store

router = APIRouter(prefix="/api/v1", tags=["jobs"])

_REQUIRED = ("owner_service", "owner_ref", "task_type", "model_profile", "input")


def _new_job(body: schemas.JobCreate) -> NewJob:
    return NewJob(**body.model_dump())


def _merge(defaults: dict[str, Any], item: schemas.JobPatch, index: int) -> NewJob:
    """One batch item over the batch's `defaults` (given once, as the fields set)."""
    merged = {**defaults, **item.model_dump(exclude_none=True)}
    if "input" in defaults and item.input is not None:
        merged["input"] = {**defaults["input"], **item.input}
    for name in _REQUIRED:
        if name not in merged:
            raise errors.InvalidRequest(
                f"jobs[{index}].{name}", "is required (in the item or in defaults)"
            )
    return NewJob(**merged)


# The W3C trace context header of the creates, read from the request (a declared
# header parameter would take the creates off the lean path) and documented here.
_TRACEPARENT_HEADER = {
    "parameters": [
        {
            "name": "traceparent",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "W3C Trace Context: stored with the job (`traceparent`) and sent "
            "with its webhook. An invalid value is ignored (a new trace), not refused.",
        }
    ]
}


@router.post(
    "/jobs",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.CreatedJobOut,
    responses={
        200: {"model": schemas.CreatedJobOut, "description": "Idempotency key matched"},
        **responses(409, body=True),
    },
    summary="Create one job",
    openapi_extra=_TRACEPARENT_HEADER,
)
async def create_job(
    request: Request,
    body: schemas.JobCreate,
    store: StoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    response: Response,
    principal: PrincipalDep,
) -> schemas.CreatedJobOut:
    scoped_owner(principal, body.owner_service, "owner_service")
    new_jobs = await apply_callbacks(
        settings, [_new_job(body)], ["callback_url"], request.headers.get("traceparent")
    )
    new_jobs = await keep_audio_apart(
        store, new_jobs, ["input"], max_bytes=settings.audio_max_bytes
    )
    try:
        [outcome] = await store.create_jobs(new_jobs)
    except errors.IdempotencyConflict as exc:
        raise errors.IdempotencyConflict("idempotency_key", exc.job_id) from None
    response.headers["Location"] = f"/api/v1/jobs/{outcome.job.id}"
    if outcome.created:
        metrics.observe_created([outcome.job])
    else:
        response.status_code = status.HTTP_200_OK
    out = schemas.JobOut.of(outcome.job).model_dump()
    return schemas.CreatedJobOut.model_construct(**out, created=outcome.created)


@router.post(
    "/jobs/batch",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.BatchOut,
    responses=responses(409, body=True),
    summary="Create up to 1000 jobs with shared defaults (all or nothing)",
    openapi_extra=_TRACEPARENT_HEADER,
)
async def create_batch(
    request: Request,
    body: schemas.JobBatchCreate,
    store: StoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    principal: PrincipalDep,
) -> Response:
    defaults = body.defaults.model_dump(exclude_none=True)
    new_jobs = [_merge(defaults, item, i) for i, item in enumerate(body.jobs)]
    if principal.owner_service is not None:
        for i, job in enumerate(new_jobs):
            # All or nothing, like validation: one foreign item refuses the batch.
            scoped_owner(principal, job.owner_service, f"jobs[{i}].owner_service")
    new_jobs = await apply_callbacks(
        settings,
        new_jobs,
        [f"jobs[{i}].callback_url" for i in range(len(new_jobs))],
        request.headers.get("traceparent"),
    )
    new_jobs = await keep_audio_apart(
        store,
        new_jobs,
        [f"jobs[{i}].input" for i in range(len(new_jobs))],
        max_bytes=settings.audio_max_bytes,
    )
    outcomes = await store.create_jobs(new_jobs)
    metrics.observe_created(o.job for o in outcomes if o.created)
    # `BatchOut`, built as plain JSON from the stored rows: nothing in it needs
    # validating again, and a model per item would cost more than the insert.
    items = [
        {
            "id": o.job.id,
            "owner_service": o.job.owner_service,
            "owner_ref": o.job.owner_ref,
            "status": o.job.status,
            "idempotency_key": o.job.idempotency_key,
            "created": o.created,
        }
        for o in outcomes
    ]
    created = sum(1 for o in outcomes if o.created)
    answer = {"created": created, "existing": len(outcomes) - created, "jobs": items}
    return Response(orjson.dumps(answer), status.HTTP_201_CREATED, media_type="application/json")


def _include(values: list[str] | None) -> frozenset[str]:
    names = [name.strip() for value in values or () for name in value.split(",")]
    for name in names:
        if name not in PAYLOAD_COLUMNS:
            raise errors.InvalidRequest(
                "include", f"{name[:50]!r} is not one of {', '.join(PAYLOAD_COLUMNS)}"
            )
    return frozenset(names)


@router.get(
    "/jobs",
    response_model=schemas.JobListOut,
    response_model_exclude_unset=True,
    responses=responses(),
    summary="List jobs, newest first, with filters and keyset pagination",
    dependencies=[known_query(*schemas.ListQuery.model_fields)],
)
async def list_jobs(
    store: StoreDep, principal: PrincipalDep, query: Annotated[schemas.ListQuery, Query()]
) -> schemas.JobListOut:
    included = _include(query.include)
    job_filter = query.to_filter()
    # A submitter lists its own owner_service only (403 for a filter naming another).
    owner = scoped_owner(principal, job_filter.owner_service, "owner_service")
    page = await store.list_jobs(
        replace(job_filter, owner_service=owner),
        limit=query.limit,
        cursor=query.cursor,
        include=included,
        max_payload_bytes=schemas.LIST_PAYLOAD_MAX_BYTES,
    )
    return schemas.JobListOut(
        jobs=[schemas.JobSummaryOut.of(j, included) for j in page.jobs],
        next_cursor=page.next_cursor,
        truncated=page.truncated,
    )


def _bulk_out(outcome: BulkOutcome) -> schemas.BulkOut:
    return schemas.BulkOut(count=outcome.count, ids=outcome.sample, ids_truncated=outcome.truncated)


def _bulk_filter(body: schemas.BulkRequest, principal: Principal) -> JobFilter:
    require_all_allowed(principal, body.all)
    job_filter = body.to_filter()
    if job_filter.is_empty and not body.all:
        if principal.owner_service is not None:
            raise errors.InvalidRequest(
                "all",
                "an empty filter selects every job of owner_service "
                f"{principal.owner_service!r}: name a filter (for example owner_service)",
            )
        raise errors.InvalidRequest(
            "all", 'an empty filter selects every job: pass "all": true to confirm'
        )
    # A submitter acts on its own owner_service only (403 for a filter naming another).
    owner = scoped_owner(principal, job_filter.owner_service, "owner_service")
    return replace(job_filter, owner_service=owner)


@router.post(
    "/jobs/retry",
    response_model=schemas.BulkOut,
    responses=responses(body=True),
    summary="Retry the failed jobs matching a filter (running ones only when `status` names them)",
)
async def retry_by_filter(
    body: schemas.BulkRequest, store: StoreDep, principal: PrincipalDep
) -> schemas.BulkOut:
    return _bulk_out(await store.retry_by_filter(_bulk_filter(body, principal)))


@router.post(
    "/jobs/cancel",
    response_model=schemas.BulkOut,
    responses=responses(body=True),
    summary="Cancel pending/running jobs matching a filter",
)
async def cancel_by_filter(
    body: schemas.BulkRequest, store: StoreDep, principal: PrincipalDep
) -> schemas.BulkOut:
    return _bulk_out(await store.cancel_by_filter(_bulk_filter(body, principal)))


@router.post(
    "/jobs/claim",
    response_model=schemas.ClaimOut,
    responses=responses(body=True),
    summary="Atomically claim pending jobs (optionally waiting for them)",
)
async def claim_jobs(
    request: Request,
    body: schemas.ClaimRequest,
    store: StoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    notifier: NotifierDep,
) -> schemas.ClaimOut:
    lease = body.lease_seconds or settings.worker_lease_timeout
    deadline = time.monotonic() + body.wait_seconds
    while True:
        waiter = notifier.waiter(body.task_types) if notifier is not None else None
        jobs = await store.claim(
            body.worker_id,
            limit=body.limit,
            lease_seconds=lease,
            task_types=body.task_types,
            model_profiles=body.model_profiles,
        )
        if jobs and body.wait_seconds and await request.is_disconnected():
            # The long-polling caller is gone: nobody would ever get these leases.
            await store.release_many([(j.id, j.lease_token) for j in jobs if j.lease_token])
            jobs = []
            break
        remaining = deadline - time.monotonic()
        if jobs or remaining <= 0 or notifier is None or await request.is_disconnected():
            break
        # Re-check at least every second: jobs whose run_after comes due send no NOTIFY.
        await notifier.wait(min(remaining, 1.0), waiter)
    metrics.observe_claimed(jobs)
    return schemas.ClaimOut(jobs=[schemas.ClaimedJobOut.of(j) for j in jobs])


@router.post(
    "/jobs/complete",
    response_model=schemas.CompleteManyOut,
    responses=responses(body=True),
    summary="Store the results of many running jobs in one statement (each fenced)",
)
async def complete_many(
    body: schemas.CompleteManyRequest, store: StoreDep, metrics: MetricsDep
) -> schemas.CompleteManyOut:
    completions = [Completion(item.id, item.lease_token, item.result) for item in body.jobs]
    done = await store.complete_many(completions)
    for row in done.values():
        metrics.observe_finished(
            row["task_type"],
            row["model_profile"],
            "completed",
            row["started_at"],
            row["finished_at"],
        )
    return schemas.CompleteManyOut(
        completed=[c.job_id for c in completions if c.job_id in done],
        rejected=[c.job_id for c in completions if c.job_id not in done],
    )


@router.get(
    "/jobs/{job_id}",
    response_model=schemas.JobOut,
    responses=responses(404),
    summary="Technical state and result of one job (optionally waiting for it to finish)",
    dependencies=[known_query("wait_seconds")],
)
async def get_job(
    job_id: UUID,
    store: StoreDep,
    principal: PrincipalDep,
    waits: WaitsDep,
    wait_seconds: Annotated[
        float,
        Query(
            ge=0,
            le=30,
            description="Wait up to this long for the job to become completed, failed or "
            "cancelled; the answer comes as soon as it is, else the state after the wait.",
        ),
    ] = 0,
) -> schemas.JobOut:
    job = await store.get_job(job_id)
    if not principal.owns(job.owner_service):
        raise errors.JobNotFound(job_id)  # the same 404 as a missing job: existence not revealed
    if wait_seconds > 0 and not job.status.is_terminal:
        job = await waits.wait(job_id, wait_seconds)
    return schemas.JobOut.of(job)


async def _require_visible(store: Store, principal: Principal, job_id: UUID) -> None:
    """404 when a submitter names a job of another owner_service (as if it did not exist).

    owner_service never changes, so checking before acting cannot race.
    """
    if principal.owner_service is not None:
        job = await store.get_job(job_id)
        if not principal.owns(job.owner_service):
            raise errors.JobNotFound(job_id)


@router.post(
    "/jobs/{job_id}/complete",
    response_model=schemas.CompletedOut,
    responses=responses(404, 409, body=True),
    summary="Store a successful result (answers id, status and finished_at)",
)
async def complete_job(
    job_id: UUID,
    body: schemas.CompleteRequest,
    completions: CompletionsDep,
    metrics: MetricsDep,
) -> schemas.CompletedOut:
    # Concurrent completes share a statement (`api.completions`); the answers do not.
    done = await completions.complete(job_id, body.result, body.lease_token)
    metrics.observe_finished(
        done.task_type, done.model_profile, "completed", done.started_at, done.finished_at
    )
    return schemas.CompletedOut.of(done.id, done.finished_at)


@router.post(
    "/jobs/{job_id}/fail",
    response_model=schemas.JobOut,
    responses=responses(404, 409, body=True),
    summary="Record a failed attempt (retried with backoff when retryable and attempts remain;"
    " a provider outage spends no attempt)",
)
async def fail_job(
    job_id: UUID,
    body: schemas.FailRequest,
    store: StoreDep,
    metrics: MetricsDep,
    settings: SettingsDep,
) -> schemas.JobOut:
    # An external worker's provider outage spends no attempt, as the built-in workers'.
    job = await store.fail(
        job_id,
        category=body.category,
        message=body.message,
        details=body.details,
        lease_token=body.lease_token,
        retryable=is_retryable(body.category, body.retryable),
        outage_max=settings.provider_outage_max,
        retry_after=body.retry_after_seconds,
    )
    metrics.observe_finished(
        job.task_type, job.model_profile, "failed", job.started_at, job.updated_at, body.category
    )
    return schemas.JobOut.of(job)


@router.post(
    "/jobs/{job_id}/heartbeat",
    response_model=schemas.HeartbeatOut,
    responses=responses(404, 409, body=True),
    summary="Extend the lease of a running job (409: stop, the job is no longer yours)",
)
async def heartbeat_job(
    job_id: UUID, body: schemas.HeartbeatRequest, store: StoreDep, settings: SettingsDep
) -> schemas.HeartbeatOut:
    # Without a length: the lease length its claim asked for.
    job = await store.heartbeat(job_id, body.lease_token, body.extend_seconds)
    assert job.lease_expires_at is not None  # a running job always has a lease
    return schemas.HeartbeatOut(id=job.id, status=job.status, lease_expires_at=job.lease_expires_at)


@router.post(
    "/jobs/{job_id}/release",
    response_model=schemas.JobOut,
    responses=responses(404, 409, body=True),
    summary="Give a running job back to pending without spending its attempt (a worker "
    "stopping before it could finish)",
)
async def release_job(
    job_id: UUID, body: schemas.ReleaseRequest, store: StoreDep
) -> schemas.JobOut:
    return schemas.JobOut.of(await store.release(job_id, body.lease_token))


@router.post(
    "/jobs/{job_id}/retry",
    response_model=schemas.JobOut,
    responses=responses(404, 409),
    summary="Reset a failed or running job to pending (one more attempt granted, up to 100 in all)",
)
async def retry_job(job_id: UUID, store: StoreDep, principal: PrincipalDep) -> schemas.JobOut:
    await _require_visible(store, principal, job_id)
    return schemas.JobOut.of(await store.retry(job_id))


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=schemas.JobOut,
    responses=responses(404, 409),
    summary="Cancel a pending or running job",
)
async def cancel_job(job_id: UUID, store: StoreDep, principal: PrincipalDep) -> schemas.JobOut:
    await _require_visible(store, principal, job_id)
    return schemas.JobOut.of(await store.cancel(job_id))


@router.get(
    "/jobs/{job_id}/deliveries",
    response_model=schemas.DeliveriesOut,
    responses=responses(404),
    summary="The job's webhook events and every delivery attempt",
    dependencies=[known_query()],
)
async def list_deliveries(
    job_id: UUID, store: StoreDep, principal: PrincipalDep
) -> schemas.DeliveriesOut:
    job = await store.get_job(job_id)
    if not principal.owns(job.owner_service):
        raise errors.JobNotFound(job_id)  # as for GET /jobs/{id}: existence not revealed
    deliveries = await store.list_deliveries(job_id)
    return schemas.DeliveriesOut(deliveries=[schemas.DeliveryOut.of(d) for d in deliveries])
