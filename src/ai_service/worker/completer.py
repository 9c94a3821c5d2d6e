"""Group commit of completions, with each job's outcome its own.

Whatever finished while the previous batch was being written goes out in the
next single `complete_many` statement, each row still fenced by its own lease
token. A batch that the database refuses as a whole (one result it cannot
store, a statement limit) is split so that the others still complete and only
the offending job is refused; an outage keeps every result and retries.

With a `Refill` (the runner), the batch's own transaction also claims the jobs
that take the slots it frees: one commit per cycle of the built-in worker, and
a freed slot is refilled at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast
from uuid import UUID

from ai_service import errors
from ai_service.db import encode_result
from ai_service.jobs import Job
from ai_service.store import ClaimRequest, Completion, Store

log = logging.getLogger("ai_service.worker")

COMPLETE_BATCH = 500
# Batches written at once: while one batch's transaction runs, the next one's
# jobs finish; a second writer overlaps their commit with the first's.
WRITERS = 2
RECORD_RETRY_DELAY = 1.0


@dataclass(frozen=True)
class Refused:
    """The database will not store this result; the job must fail instead."""

    reason: str


Outcome = bool | Refused
"""True: completed under its lease. False: the lease was gone (result discarded)."""


class Refill(Protocol):
    """Claims the slots a batch frees, in the batch's own transaction."""

    def request(self, batch: Sequence[Completion]) -> ClaimRequest | None:
        """What to claim once `batch` is recorded (its slots reserved), or None."""

    def settle(
        self, request: ClaimRequest, batch: Sequence[Completion], jobs: list[Job] | None
    ) -> None:
        """The batch is recorded and `jobs` claimed; None: nothing was claimed."""


class Completer:
    """One `complete_many` per batch of finished jobs; `submit` answers per job."""

    def __init__(
        self,
        store: Store,
        *,
        retry_delay: float = RECORD_RETRY_DELAY,
        refill: Refill | None = None,
    ) -> None:
        self.store = store
        self.retry_delay = retry_delay
        self.refill = refill
        self._queue: list[tuple[Completion, asyncio.Future[Outcome]]] = []
        self._writers: set[asyncio.Task[None]] = set()

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
        if len(self._writers) < WRITERS:
            self._writers.add(asyncio.create_task(self._flush(), name="completer"))
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            await self._write_queue()
        finally:
            # At once, not in a done-callback: a result submitted after the queue ran
            # dry must find this writer gone and start another one.
            self._writers.discard(cast(asyncio.Task[None], asyncio.current_task()))

    async def _write_queue(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:COMPLETE_BATCH], self._queue[COMPLETE_BATCH:]
            try:
                outcomes = await self._write_and_refill([c for c, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    if not future.done():
                        future.cancel()
                raise
            for completion, future in batch:
                if not future.done():
                    future.set_result(outcomes[completion.job_id])

    async def _write_and_refill(self, completions: list[Completion]) -> dict[UUID, Outcome]:
        """`_write`, claiming the freed slots in the same transaction when asked to."""
        refill = self.refill
        request = refill.request(completions) if refill is not None else None
        if refill is None or request is None:
            return await self._write(completions)
        try:
            held, jobs = await self.store.complete_and_claim(completions, request)
        except asyncio.CancelledError:
            refill.settle(request, completions, None)
            raise
        except Exception:
            # An outage or a refused result: write as without a refill (that retries
            # and splits); the claim loop refills the slots afterwards.
            refill.settle(request, completions, None)
            return await self._write(completions)
        refill.settle(request, completions, jobs)
        return {c.job_id: c.job_id in held for c in completions}

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
        while self._writers:
            await asyncio.gather(*self._writers)
