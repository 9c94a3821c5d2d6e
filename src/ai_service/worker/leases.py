"""The jobs a worker holds, and the heartbeat that keeps their leases.

A job occupies one of the worker's slots from its claim until its outcome is
recorded (completed, failed, released or discarded), so a worker never holds
more leases than its concurrency: were it to crash, at most that many jobs
wait for the rescuer. The same holds per handler: each job counts in its
handler's `slots.Pool`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from ai_service import errors
from ai_service.jobs import Job
from ai_service.store import Store
from ai_service.worker.handler import HandlerSpec
from ai_service.worker.slots import Pool

log = logging.getLogger("ai_service.worker")


@dataclass
class InFlight:
    """A job being handled by this process."""

    job: Job
    spec: HandlerSpec
    started: datetime
    task: asyncio.Task[None] | None = None
    lost: bool = False  # lease gone: stop the work, discard the result
    recording: bool = False  # the handler is done; its outcome is being written
    refilled: bool = False  # its slot went to a job claimed with its outcome


class Leases:
    """The held jobs by id, and one heartbeat statement for all of them."""

    def __init__(
        self,
        store: Store,
        lease_seconds: float,
        interval: float,
        pools: Mapping[str, Pool] | None = None,
    ) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.interval = interval
        self.pools = pools or {}
        self.flights: dict[UUID, InFlight] = {}
        self.peak = 0  # most leases held at once (audited by tests)

    def __len__(self) -> int:
        return len(self.flights)

    def add(self, flight: InFlight) -> None:
        earlier = self.flights.get(flight.job.id)
        if earlier is not None:  # the same job claimed again: the older attempt is gone
            self._count(earlier, -1)
        self.flights[flight.job.id] = flight
        self._count(flight, 1)
        self.peak = max(self.peak, len(self.flights))

    def remove(self, flight: InFlight) -> None:
        # The same job may have been claimed again meanwhile: remove only this attempt.
        if self.flights.get(flight.job.id) is flight:
            del self.flights[flight.job.id]
            self._count(flight, -1)

    def _count(self, flight: InFlight, delta: int) -> None:
        pool = self.pools.get(flight.spec.name)
        if pool is not None:
            pool.held += delta
            pool.peak = max(pool.peak, pool.held)

    def tokens(self, flights: list[InFlight]) -> list[tuple[UUID, UUID]]:
        return [(f.job.id, f.job.lease_token) for f in flights if f.job.lease_token]

    async def run(self) -> None:
        """Beat every `interval` until cancelled; never dies of an error."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except Exception:
                # Keep beating: a dead heartbeat loop would let leases expire under
                # running jobs, which would then run twice.
                log.exception("heartbeat failed")

    async def beat(self) -> None:
        """Extend every held lease; stop the jobs whose lease is gone."""
        flights = [f for f in self.flights.values() if not f.lost and f.job.lease_token]
        if not flights:
            return
        try:
            held = await self.store.heartbeat_many(self.tokens(flights), self.lease_seconds)
        except errors.DatabaseUnavailable:
            return  # try again next beat; leases are long compared to the interval
        for flight in flights:
            if flight.job.id in held or flight.task is None or flight.task.done():
                continue
            flight.lost = True
            if not flight.recording:
                # Stop the work; a result already being written is fenced by its token.
                flight.task.cancel()
