"""Group commit of completions, with each job's outcome its own.

Whatever finished while the previous batch was being written goes out in the
next single `complete_many` statement, each row still fenced by its own lease
token. A batch that the database refuses as a whole (one result it cannot
store, a statement limit) is split so that the others still complete and only
the offending job is refused; an outage keeps every result and retries.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from uuid import UUID

from ai_service import errors
from ai_service.db import encode_result
from ai_service.store import Completion, Store

log = logging.getLogger("ai_service.worker")

COMPLETE_BATCH = 500
RECORD_RETRY_DELAY = 1.0


@dataclass(frozen=True)
class Refused:
    """The database will not store this result; the job must fail instead."""

    reason: str


Outcome = bool | Refused
"""True: completed under its lease. False: the lease was gone (result discarded)."""


class Completer:
    """One `complete_many` per batch of finished jobs; `submit` answers per job."""

    def __init__(self, store: Store, *, retry_delay: float = RECORD_RETRY_DELAY) -> None:
        self.store = store
        self.retry_delay = retry_delay
        self._queue: list[tuple[Completion, asyncio.Future[Outcome]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, completion: Completion) -> Outcome:
        """Store a result under its lease and say what became of it."""
        try:
            # Serialised once, here: a result that cannot be JSON is this job's
            # problem alone and never reaches a batch.
            completion = completion.encoded(encode_result(completion.result))
        except errors.InvalidRequest as exc:
            return Refused(exc.message)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((completion, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="completer")
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:COMPLETE_BATCH], self._queue[COMPLETE_BATCH:]
            try:
                outcomes = await self._write([c for c, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    if not future.done():
                        future.cancel()
                raise
            for completion, future in batch:
                if not future.done():
                    future.set_result(outcomes[completion.job_id])

    async def _write(self, completions: list[Completion]) -> dict[UUID, Outcome]:
        """Outcome per job; never raises except on cancellation."""
        while True:
            try:
                held = await self.store.complete_many(completions)
                return {c.job_id: c.job_id in held for c in completions}
            except errors.DatabaseUnavailable:
                # An outage: keep the results, the database may be back before the leases end.
                await asyncio.sleep(self.retry_delay)
            except Exception as exc:
                if len(completions) == 1:
                    reason = exc.message if isinstance(exc, errors.AIServiceError) else repr(exc)
                    log.warning("result of job %s refused: %s", completions[0].job_id, reason)
                    return {completions[0].job_id: Refused(reason)}
                # Split: the refused result must not sink the others.
                half = len(completions) // 2
                first = await self._write(completions[:half])
                return first | await self._write(completions[half:])

    async def drain(self) -> None:
        """Wait until every submitted result has been written."""
        if self._task is not None:
            await self._task
