"""Per-job completions over HTTP, group-committed: the calls that arrive together
share one statement and one commit.

External workers complete jobs one `POST /api/v1/jobs/{id}/complete` at a time,
many in flight at once. Each call used to be its own statement and commit: the
database round trip was most of the API's work per job, and each commit waited
for its own WAL flush. `CompletionBatcher` queues the calls and writes the
queue with `Store.complete_fresh` whenever no write is in flight (so a lone
call is written at once, and calls that arrive during a write go together in
the next one).

Each call's answer is exactly the one `Store.complete` gives: a call the batch
did not complete (unknown job, stale token, not running, a repeat of an
earlier completion, a call without a token for a pending job, or any error of
the batch) is done again on its own by `Store.complete`, which says why or
recognises the repeat.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from ai_service import db, errors
from ai_service.jobs import Job
from ai_service.store import Completion, Store

# Most completions in one statement (each one's result travels in it).
MAX_BATCH = 200


@dataclass(frozen=True, slots=True)
class Completed:
    """What became of a completed job (enough for the answer and the metrics)."""

    id: UUID
    task_type: str
    model_profile: str
    started_at: datetime | None
    finished_at: datetime

    @classmethod
    def of(cls, job: Job) -> Completed:
        assert job.finished_at is not None  # a completed job has finished
        return cls(job.id, job.task_type, job.model_profile, job.started_at, job.finished_at)


class CompletionBatcher:
    """Completes jobs for concurrent callers, many per statement."""

    def __init__(self, store: Store, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: list[tuple[Completion, asyncio.Future[Completed | None]]] = []
        self._queued: set[UUID] = set()
        self._task: asyncio.Task[None] | None = None

    async def complete(
        self, job_id: UUID, result: dict[str, Any], lease_token: UUID | None
    ) -> Completed:
        """Store `result` as `Store.complete` would (same errors), sharing a statement."""
        try:
            encoded = db.encode_result(result) if lease_token is not None else None
        except errors.InvalidRequest:
            encoded = None  # `Store.complete` says what is wrong with it
        if lease_token is None or encoded is None or job_id in self._queued:
            # The mirror path (no token), or a second call for a job already queued.
            return Completed.of(await self.store.complete(job_id, result, lease_token))
        future: asyncio.Future[Completed | None] = asyncio.get_running_loop().create_future()
        self._queue.append((Completion(job_id, lease_token, result, encoded), future))
        self._queued.add(job_id)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._write(), name="api-completions")
        # Shielded: a caller that goes away does not take the others' write with it.
        done = await asyncio.shield(future)
        if done is not None:
            return done
        return Completed.of(await self.store.complete(job_id, result, lease_token))

    async def _write(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            for completion, _ in batch:
                self._queued.discard(completion.job_id)
            try:
                rows = await self.store.complete_fresh([c for c, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception:
                rows = {}  # each call is done again alone, and gets its own answer
            for completion, future in batch:
                row = rows.get(completion.job_id)
                if not future.done():
                    future.set_result(
                        None
                        if row is None
                        else Completed(
                            row["id"],
                            row["task_type"],
                            row["model_profile"],
                            row["started_at"],
                            row["finished_at"],
                        )
                    )
