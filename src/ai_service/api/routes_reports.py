"""`/api/v1/reports/transcription*`: the transcription A/B report and one job's texts.

`transcription_report` and `transcription_comparison` are the service functions
(a store in, the response model out): the routes and the dashboard call them.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from ai_service import errors
from ai_service import transcription_report as report
from ai_service.api import schemas
from ai_service.api.auth import scoped_owner
from ai_service.api.deps import PrincipalDep, StoreDep, known_query
from ai_service.api.errors import responses
from ai_service.jobs import Job, JobStatus
from ai_service.store import Store
from ai_service.worker.registry import TRANSCRIPTION_TASK_TYPES

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

DEFAULT_WINDOW = timedelta(hours=24)
MAX_WINDOW = timedelta(days=schemas.REPORT_MAX_DAYS)


def report_window(
    since: datetime | None, until: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """The window [since, until) in UTC: defaults (the 24 h before `until`, which is
    `now` unless given), until after since, at most `REPORT_MAX_DAYS` days long;
    `errors.InvalidRequest` naming the field otherwise."""
    end = (until or now).astimezone(UTC)
    start = since.astimezone(UTC) if since is not None else end - DEFAULT_WINDOW
    if end <= start:
        field = "until" if until is not None else "since"
        raise errors.InvalidRequest(field, "the window must end after it starts (until > since)")
    if end - start > MAX_WINDOW:
        field = "since" if since is not None else "until"
        raise errors.InvalidRequest(
            field, f"the window is at most {schemas.REPORT_MAX_DAYS} days (until - since)"
        )
    return start, end


async def transcription_report(
    store: Store,
    *,
    since: datetime,
    until: datetime,
    owner_service: str | None = None,
    limit: int = 20,
) -> schemas.TranscriptionReportOut:
    """The A/B report over [since, until) (UTC, as `report_window` gives it)."""
    window = report.split_window(since, until)
    bounds = await store.transcription_bounds()
    rows = await store.transcription_report_rows(window.params(), owner_service)
    figures = report.provider_figures(rows, len(bounds) + 1)
    top = report.disagreements(
        await store.transcription_disagreements(since, until, owner_service, limit)
    )
    return schemas.TranscriptionReportOut(
        since=since,
        until=until,
        owner_service=owner_service,
        reference_provider=report.reference_provider(figures),
        providers=[
            schemas.TranscriptionProviderOut(
                provider=f.provider,
                model=f.model,
                attempts=f.attempts,
                ok=f.ok,
                errors=f.attempts - f.ok,
                skipped=f.skipped,
                success_rate=f.success_rate,
                duration_p50_ms=f.duration_ms(bounds, 0.5),
                duration_p95_ms=f.duration_ms(bounds, 0.95),
                real_time_factor=f.real_time_factor,
                wer_mean=f.wer_mean,
                wer_jobs=f.wer_jobs,
                reference_jobs=f.reference_jobs,
            )
            for f in figures
        ],
        disagreements=[
            schemas.DisagreementOut(
                job_id=d.job_id,
                owner_service=d.owner_service,
                owner_ref=d.owner_ref,
                finished_at=d.finished_at,
                reference_provider=d.reference_provider,
                max_wer=d.disagreement,
                providers=[
                    schemas.DisagreementAttemptOut(
                        provider=a.provider,
                        model=a.model,
                        status=a.status,
                        reference=a.is_reference,
                        wer=a.wer,
                    )
                    for a in d.attempts
                ],
            )
            for d in top
        ],
    )


async def transcription_comparison(job: Job) -> schemas.TranscriptionComparisonOut:
    """A completed transcription job's attempts side by side, aligned against the
    reference; `errors.InvalidRequest` (`job_id`) for another task type,
    `errors.InvalidTransition` for a job that has not completed."""
    if job.task_type not in TRANSCRIPTION_TASK_TYPES:
        raise errors.InvalidRequest(
            "job_id", f"job {job.id} is a {job.task_type} job, not a transcription job"
        )
    if job.status is not JobStatus.COMPLETED or not isinstance(job.result, dict):
        raise errors.InvalidTransition(job.id, job.status.value, "compare the transcripts of")
    # Aligning long texts takes a moment: off the event loop.
    reference, attempts = await asyncio.to_thread(report.comparison, job.result)
    return schemas.TranscriptionComparisonOut(
        job_id=job.id,
        owner_service=job.owner_service,
        owner_ref=job.owner_ref,
        finished_at=job.finished_at,
        reference_provider=reference,
        attempts=[
            schemas.ComparedAttemptOut(
                provider=a.provider,
                model=a.model,
                status=a.status,
                selected=a.selected,
                duration_ms=a.duration_ms,
                text=a.text,
                wer=a.wer,
                alignment=None
                if a.alignment is None
                else [
                    schemas.AlignmentRunOut(op=r.op, ref=list(r.ref), hyp=list(r.hyp))
                    for r in a.alignment
                ],
            )
            for a in attempts
        ],
    )


@router.get(
    "/transcription",
    response_model=schemas.TranscriptionReportOut,
    responses=responses(),
    summary="Transcription A/B report: providers compared over a window",
    dependencies=[known_query(*schemas.TranscriptionReportQuery.model_fields)],
)
async def get_transcription_report(
    store: StoreDep,
    principal: PrincipalDep,
    query: Annotated[schemas.TranscriptionReportQuery, Query()],
) -> schemas.TranscriptionReportOut:
    """Per provider and model: attempts, success rate, p50/p95 duration, real-time factor
    and word error rate against the reference provider; the jobs that disagree most."""
    # A submitter sees its own owner_service only (403 for another).
    owner = scoped_owner(principal, query.owner_service, "owner_service")
    since, until = report_window(query.since, query.until, datetime.now(UTC))
    return await transcription_report(
        store, since=since, until=until, owner_service=owner, limit=query.limit
    )


@router.get(
    "/transcription/jobs/{job_id}",
    response_model=schemas.TranscriptionComparisonOut,
    responses=responses(404, 409),
    summary="One transcription job's texts side by side, aligned word by word",
    dependencies=[known_query()],
)
async def get_transcription_comparison(
    job_id: UUID, store: StoreDep, principal: PrincipalDep
) -> schemas.TranscriptionComparisonOut:
    """Each provider's text and its word alignment against the reference's (for a diff)."""
    job = await store.get_job(job_id)
    if not principal.owns(job.owner_service):
        raise errors.JobNotFound(job_id)  # the same 404 as a missing job
    return await transcription_comparison(job)
