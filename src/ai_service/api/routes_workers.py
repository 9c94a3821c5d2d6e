"""`GET /api/v1/workers`: the worker registry (the `workers` table).

Each worker writes its own row every `WORKER_REGISTRY_INTERVAL` (see
`worker.presence`); this route only reads them. A worker is alive when its row
was written within `within` seconds and it has not stopped; the others stay
listed, `alive: false`, until retention deletes them an hour after they were
last seen. Nothing in a row is a secret: its URLs and error texts are the ones
`/worker/status` shows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from ai_service.api import schemas
from ai_service.api.deps import StoreDep, known_query
from ai_service.api.errors import responses

# Rows listed at most (live ones first); a fleet has tens of workers.
LIST_LIMIT = 1000
DEFAULT_WITHIN = 60.0

router = APIRouter(prefix="/api/v1", tags=["workers"])


@router.get(
    "/workers",
    response_model=schemas.WorkersOut,
    responses=responses(),
    summary="Live workers: handlers, slots, circuit breakers, last seen",
    dependencies=[known_query("within")],
)
async def list_workers(
    store: StoreDep,
    within: Annotated[
        float,
        Query(
            ge=1,
            le=3600,
            description="A worker seen within this many seconds (and not stopped) is alive.",
        ),
    ] = DEFAULT_WITHIN,
) -> schemas.WorkersOut:
    rows = await store.list_workers(within=within, limit=LIST_LIMIT + 1)
    workers = [schemas.WorkerOut.of(row) for row in rows[:LIST_LIMIT]]
    # The database clock, as for `last_seen`; with no row to carry it, this process's.
    generated_at = rows[0].now if rows else datetime.now(UTC)
    return schemas.WorkersOut(
        within_seconds=within,
        alive=sum(1 for w in workers if w.alive),
        truncated=len(rows) > LIST_LIMIT,
        generated_at=generated_at,
        workers=workers,
    )
