"""Probes, Prometheus metrics and `/api/v1/stats`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from ai_service import errors, histogram
from ai_service.api import schemas
from ai_service.api.deps import MetricsDep, StoreDep, known_query
from ai_service.api.errors import responses
from ai_service.error_envelope import ErrorOut, envelope
from ai_service.jobs import JobStatus
from ai_service.metrics import profile_running

READY_TIMEOUT = 2.0

probes = APIRouter(tags=["probes"])
stats_router = APIRouter(prefix="/api/v1", tags=["stats"])


@probes.get("/healthz", response_model=schemas.HealthOut, summary="Process health")
async def healthz() -> schemas.HealthOut:
    return schemas.HealthOut(status="ok")


@probes.get(
    "/readyz",
    response_model=schemas.HealthOut,
    responses={503: {"model": ErrorOut, "description": "Database unavailable"}},
    summary="PostgreSQL answers within 2 s",
)
async def readyz(store: StoreDep) -> Any:
    try:
        await asyncio.wait_for(store.ping(), READY_TIMEOUT)
    except (errors.DatabaseUnavailable, TimeoutError):
        return envelope(503, "database_unavailable", "PostgreSQL did not answer within 2 s")
    return schemas.HealthOut(status="ready")


@probes.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    summary="Prometheus metrics",
)
async def metrics_endpoint(store: StoreDep, metrics: MetricsDep) -> Response:
    try:
        counts = await store.stats_counts()
        metrics.set_queue_gauges(counts)
        metrics.set_profile_limit_gauges(store.policy.profile_limits, counts)
        metrics.set_owner_gauges(await store.stats_owner_counts())
    except errors.DatabaseUnavailable:
        pass  # still serve the process counters
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@stats_router.get(
    "/stats",
    response_model=schemas.StatsOut,
    responses=responses(),
    summary="Queue and error counters",
    dependencies=[known_query()],
)
async def stats(store: StoreDep) -> schemas.StatsOut:
    raw = await store.stats()
    return build_stats(raw, store.policy.profile_limits)


def build_stats(raw: dict[str, Any], limits: Mapping[str, int]) -> schemas.StatsOut:
    """Shape the store's raw rows into the stats response."""
    by_status: dict[str, int] = {s.value: 0 for s in JobStatus}
    by_task: dict[str, dict[str, int]] = {}
    by_profile: dict[str, dict[str, int]] = {}
    failed_by_category: dict[str, int] = {}
    for row in raw["counts"]:
        n = int(row["n"])
        by_status[row["status"]] = by_status.get(row["status"], 0) + n
        task = by_task.setdefault(row["task_type"], {})
        task[row["status"]] = task.get(row["status"], 0) + n
        profile = by_profile.setdefault(row["model_profile"], {})
        profile[row["status"]] = profile.get(row["status"], 0) + n
        if row["status"] == JobStatus.FAILED:
            category = row["error_category"] or "unknown"
            failed_by_category[category] = failed_by_category.get(category, 0) + n
    by_owner: dict[str, dict[str, int]] = {}
    for row in raw["owners"]:
        by_owner.setdefault(row["owner_service"], {})[row["status"]] = int(row["n"])
    pending = raw["pending"]
    now = pending["now"]
    oldest = pending["oldest_runnable"]
    # From when the job became runnable (its run_after), by the database clock.
    age = max((now - oldest).total_seconds(), 0.0) if oldest is not None else None
    throughput = [
        schemas.ThroughputPoint(
            minute=row["minute"], completed=int(row["completed"]), failed=int(row["failed"])
        )
        for row in raw["throughput"]
    ]
    recent = {
        "completed_1h": sum(point.completed for point in throughput),
        "failed_1h": sum(point.failed for point in throughput),
        "completed_24h": 0,
        "failed_24h": 0,
    }
    durations: dict[str, schemas.RunDuration] = {}
    for row in raw["recent"]:
        recent["completed_24h"] += int(row["completed_24h"])
        recent["failed_24h"] += int(row["failed_24h"])
        if row["completed_24h"]:
            bounds = row["bounds"]
            buckets = [int(n or 0) for n in row["completed_buckets"]]
            durations[row["task_type"]] = schemas.RunDuration(
                completed_24h=int(row["completed_24h"]),
                p50_seconds=_round(histogram.quantile(bounds, buckets, 0.5)),
                p95_seconds=_round(histogram.quantile(bounds, buckets, 0.95)),
            )
    return schemas.StatsOut(
        total=sum(by_status.values()),
        by_status=schemas.StatusCounts(**by_status),
        by_task_type={k: schemas.StatusCounts(**v) for k, v in sorted(by_task.items())},
        by_model_profile={k: schemas.StatusCounts(**v) for k, v in sorted(by_profile.items())},
        by_owner={k: schemas.StatusCounts(**v) for k, v in sorted(by_owner.items())},
        profile_limits={
            profile: schemas.ProfileLimitOut(limit=limits[profile], running=running)
            for profile, running in sorted(profile_running(limits, raw["counts"]).items())
        },
        failed_by_category=dict(sorted(failed_by_category.items())),
        oldest_runnable_age_seconds=_round(age),
        oldest_pending_age_seconds=_round(age),
        scheduled=schemas.ScheduledJobs(
            count=int(pending["scheduled"]),
            capped=pending["scheduled_capped"],
            next_run_after=pending["next_scheduled"],
        ),
        recent=schemas.RecentCounts(**recent),
        run_duration_24h=dict(sorted(durations.items())),
        throughput_1h=throughput,
        generated_at=now,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)
