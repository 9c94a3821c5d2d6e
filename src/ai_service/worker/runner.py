"""The generic worker runner: claim -> handle -> complete/fail, for every handler.

- Claims through `Store.claim` (the same statement as `POST /jobs/claim`), as
  soon as a NOTIFY arrives or a slot frees up, polling only as a fallback.
- Holds at most `concurrency` jobs (`leases.Leases`): a slot frees when the
  job's outcome is recorded, and is refilled at once.
- Completions go through the group-commit `completer.Completer`; a result the
  database refuses fails that job alone (`internal`), at once. The runner is
  its `Refill`: the transaction that records a batch also claims the jobs that
  take its slots, so a busy worker's cycle is one commit, not two.
- One heartbeat statement extends every held lease; a job whose lease is gone
  (cancelled, retried, rescued) has its work stopped and its result discarded.
- `shutdown()` stops claiming, lets in-flight jobs finish within the grace
  period, then returns the rest to pending without counting the attempt.
- A provider outage (`provider_unavailable`, `rate_limited`) costs the job no
  attempt: it is deferred (`Store.defer`) within `PROVIDER_OUTAGE_MAX`. Each
  provider endpoint has a circuit breaker (`breaker.py`): no job of a handler
  whose endpoints are all open is claimed, and a change of state wakes the claim
  loop at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ai_service import errors, tracing
from ai_service.jobs import ErrorCategory, Job, is_retryable
from ai_service.metrics import Metrics
from ai_service.notifier import JobNotifier
from ai_service.redact import settings_redactor
from ai_service.store import ClaimRequest, Completion, Store
from ai_service.worker import slots
from ai_service.worker.breaker import Breaker, Breakers, BreakerState
from ai_service.worker.completer import Completer, Refused
from ai_service.worker.handler import HandlerContext, HandlerSpec
from ai_service.worker.leases import InFlight, Leases
from ai_service.worker.registry import metric_labels

log = logging.getLogger("ai_service.worker")

RECORD_RETRY_DELAY = 1.0
DRAIN_TIMEOUT = 10.0
REFUSED_MESSAGE = "the failure message was refused by the database"


@dataclass
class Counters:
    completed: int = 0
    failed: int = 0
    retried: int = 0
    discarded: int = 0
    deferred: int = 0  # attempts ended by a provider outage: not counted as attempts
    failed_by_category: dict[str, int] = field(default_factory=dict)

    @property
    def processed(self) -> int:
        """Jobs this worker finished an attempt of (completed, failed or retried)."""
        return self.completed + self.failed + self.retried


class Runner:
    """Runs the enabled handlers' jobs until `shutdown()`."""

    def __init__(
        self,
        store: Store,
        ctx: HandlerContext,
        specs: list[HandlerSpec],
        *,
        notifier: JobNotifier | None = None,
        metrics: Metrics | None = None,
        heartbeat_interval: float | None = None,
        limiters: Mapping[str, slots.Limiter] | None = None,
    ) -> None:
        settings = ctx.settings
        self.store = store
        self.breakers = ctx.breakers or Breakers.from_settings(settings, ctx.http)
        self.breakers.on_change = self._breaker_changed
        self.ctx = dataclasses.replace(ctx, breakers=self.breakers, audio=ctx.audio or store)
        self.outage_max = settings.provider_outage_max
        self.specs = specs
        self.enabled = [s for s in specs if s.enabled]
        self.notifier = notifier
        self.metrics = metrics or Metrics(*metric_labels(settings))
        self.worker_id = settings.worker_id
        self.plan = slots.plan(settings, {spec.name for spec in self.enabled})
        self.concurrency = self.plan.total
        self.claim_limit = settings.worker_claim_limit
        self.lease_seconds = settings.worker_lease_timeout
        self.poll_interval = settings.worker_poll_interval
        self.shutdown_timeout = settings.worker_shutdown_timeout
        self.heartbeat_interval = heartbeat_interval or min(self.lease_seconds / 3, 10.0)
        limiters = limiters or {}
        # One pool per handler; those without dedicated slots (noop) share the total.
        self.pools = {
            spec.name: slots.Pool(
                spec.name,
                self.plan.caps.get(spec.name, self.concurrency),
                limiters.get(spec.name),
                dedicated=spec.name in self.plan.caps,
            )
            for spec in specs
        }
        self.completer = Completer(store, refill=self)
        self.leases = Leases(store, self.lease_seconds, self.heartbeat_interval, self.pools)
        self.in_flight = self.leases.flights
        self.counters = Counters()
        self.started_at = datetime.now(UTC)
        self.last_claim_at: datetime | None = None
        self.stopping = False
        self._refills: dict[int, tuple[slots.Pool, int]] = {}  # by id() of the request
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._probing: asyncio.Task[None] | None = None
        self._limit_tasks: list[asyncio.Task[None]] = []
        self._redactor = settings_redactor(settings)
        for breaker in self.breakers.breakers.values():
            self.metrics.set_provider_up(breaker.key, breaker.state is not BreakerState.OPEN)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        for spec in self.specs:
            if spec.enabled:
                log.info("handler %s enabled for task types %s", spec.name, sorted(spec.task_types))
            else:
                log.warning("handler %s disabled: %s", spec.name, spec.disabled_reason)
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="claim-loop"),
            asyncio.create_task(self.leases.run(), name="heartbeat-loop"),
        ]
        self._probing = asyncio.create_task(self.breakers.run(), name="breaker-probes")
        self._limit_tasks = [
            asyncio.create_task(pool.limiter.run(_held(pool)), name=f"limit-{name}")
            for name, pool in self.pools.items()
            if pool.limiter is not None and name in {s.name for s in self.enabled}
        ]

    async def shutdown(self) -> None:
        """Stop claiming, wait for in-flight jobs, release the rest to pending."""
        if self.stopping:
            return
        self.stopping = True
        self._wake.set()
        claim_loop, heartbeat_loop = self._tasks or (None, None)
        if claim_loop is not None:
            await claim_loop
        running = [f.task for f in self.in_flight.values() if f.task is not None]
        if running:
            log.info("waiting up to %.0fs for %d jobs", self.shutdown_timeout, len(running))
            await asyncio.wait(running, timeout=self.shutdown_timeout)
        leftovers = list(self.in_flight.values())
        for flight in leftovers:
            if flight.task is not None:
                flight.task.cancel()
        for flight in leftovers:
            if flight.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await flight.task
        try:
            # Bounded: with the database down, results cannot be written; leases cover it.
            await asyncio.wait_for(self.completer.drain(), DRAIN_TIMEOUT)
        except (TimeoutError, errors.AIServiceError):
            log.warning("could not write every finished result; their leases will expire")
        if leftovers:
            leases = self.leases.tokens(leftovers)
            try:
                released = await self.store.release_many(leases)
                log.info("returned %d unfinished jobs to pending", len(released))
            except errors.DatabaseUnavailable:
                log.warning("could not release %d jobs; the rescuer will", len(leases))
        for loop in [heartbeat_loop, self._probing, *self._limit_tasks]:
            if loop is not None:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
        for spec in self.specs:
            if spec.close is not None:
                await spec.close()

    # -- claiming -------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        if not self.enabled:
            return
        order = list(self.enabled)
        interest = set().union(*(spec.task_types for spec in self.enabled))
        while not self.stopping:
            waiter = self.notifier.waiter(interest) if self.notifier is not None else None
            self._wake.clear()
            more = False
            # Rotate which handler claims first, so one backlog cannot starve the others.
            order.append(order.pop(0))
            for spec in order:
                if self.stopping or self._handling() >= self.concurrency:
                    break
                if not self.breakers.admits(spec.endpoints):
                    continue  # every provider of the handler is down: its jobs wait
                pool = self.pools[spec.name]
                # Each handler claims only for its own free slots: one handler's long
                # jobs never hold another's. WORKER_CLAIM_LIMIT bounds one statement;
                # the loop claims again at once while slots stay free.
                free = self._free(pool)
                if free <= 0:
                    continue
                limit = min(free, pool.batch, max(self.claim_limit, pool.missed))
                pool.reserved += limit
                try:
                    jobs = await self.store.claim(
                        self.worker_id,
                        limit=limit,
                        lease_seconds=self.lease_seconds,
                        task_types=sorted(spec.task_types),
                        model_profiles=sorted(spec.model_profiles)
                        if spec.model_profiles is not None
                        else None,
                    )
                except errors.DatabaseUnavailable as exc:
                    log.warning("claim failed: %s", exc.message)
                    break
                except Exception:
                    # Never let the loop die: a worker that claims nothing looks idle.
                    log.exception("claim failed")
                    break
                finally:
                    pool.reserved -= limit
                self._started(jobs, spec)
                pool.missed = max(0, pool.missed - len(jobs))  # claimed back
                more = more or (len(jobs) == limit and self._free(pool) > 0)
            if more:
                continue
            await self._sleep(waiter)

    async def _sleep(self, waiter: asyncio.Event | None) -> None:
        """Until a notification, a freed slot, shutdown, or the poll interval."""
        waits = [asyncio.ensure_future(self._wake.wait())]
        if waiter is not None and any(self._free(self.pools[s.name]) > 0 for s in self.enabled):
            waits.append(asyncio.ensure_future(waiter.wait()))
        try:
            await asyncio.wait(waits, timeout=self.poll_interval, return_when="FIRST_COMPLETED")
        finally:
            for w in waits:
                w.cancel()

    def _handling(self) -> int:
        """Slots in use: a job holds its slot until its outcome is recorded."""
        return sum(pool.in_use for pool in self.pools.values())

    def _free(self, pool: slots.Pool) -> int:
        """Jobs `pool`'s handler may claim now: its own free slots, within the total."""
        return max(0, min(pool.limit - pool.in_use, self.concurrency - self._handling()))

    def _started(self, jobs: list[Job], spec: HandlerSpec) -> None:
        self.last_claim_at = datetime.now(UTC)
        if jobs:
            self.metrics.observe_claimed(jobs)
        for job in jobs:
            self._start_job(job, spec)

    # -- refills (completer.Refill) -------------------------------------------------

    def request(self, batch: Sequence[Completion]) -> ClaimRequest | None:
        """Claim, with `batch`'s outcomes, as many jobs as it frees slots.

        For the handler with the most jobs in the batch (per-handler slots: the
        freed slots are that handler's); the claim loop refills the others'.
        """
        if self.stopping:
            return None
        by_handler: dict[str, list[InFlight]] = {}
        for flight in map(self._holder, batch):
            if flight is not None:
                by_handler.setdefault(flight.spec.name, []).append(flight)
        if not by_handler:
            return None
        mine = max(by_handler.values(), key=len)
        spec = mine[0].spec
        if not self.breakers.admits(spec.endpoints):
            return None
        pool = self.pools[spec.name]
        # Every slot the batch frees is refilled at once, whatever WORKER_CLAIM_LIMIT
        # (a freed slot left to the claim loop waits a round trip); further free
        # slots of the handler up to half its slots.
        free = min(
            pool.limit - pool.in_use + len(mine),
            self.concurrency - self._handling() + len(mine),
        )
        limit = min(free, max(len(mine), pool.batch))
        if limit <= 0:
            return None
        # The transaction records the batch's outcomes before it claims: up to
        # `limit` of the batch's slots pass to the claimed jobs. Until it commits,
        # the pair holds the larger of the two counts, never their sum, and no more
        # (a concurrent claim sees the rest), so leases never exceed the concurrency.
        passing = min(len(mine), limit)
        pool.reserved += limit
        pool.passing += passing
        request = ClaimRequest.of(
            self.worker_id, limit, self.lease_seconds, spec.task_types, spec.model_profiles
        )
        self._refills[id(request)] = (pool, passing)
        return request

    def settle(
        self, request: ClaimRequest, batch: Sequence[Completion], jobs: list[Job] | None
    ) -> None:
        """The batch is recorded: its slots go to `jobs` (None: nothing was claimed)."""
        pool, passing = self._refills.pop(id(request))
        pool.reserved -= request.limit
        pool.passing -= passing
        pool.missed = min(pool.cap, pool.missed + max(0, passing - len(jobs or ())))
        if jobs is None:
            return
        spec = next(s for s in self.specs if s.name == pool.name)
        for flight in map(self._holder, batch):
            if flight is not None:
                self.leases.remove(flight)
                # Its slot went to a claimed job when it was this handler's; another
                # handler's slot is free now: the claim loop fills it.
                flight.refilled = flight.spec.name == pool.name
        self._started(jobs, spec)
        if any(self._free(self.pools[s.name]) > 0 for s in self.enabled):
            # Fewer jobs than asked, other handlers' slots, or free slots beyond
            # the refill: the claim loop takes over (it looks further).
            self._wake.set()

    def _holder(self, completion: Completion) -> InFlight | None:
        """The flight of this completion's attempt, if it still holds its slot."""
        flight = self.in_flight.get(completion.job_id)
        if flight is None or flight.job.lease_token != completion.lease_token:
            return None
        return flight

    def _start_job(self, job: Job, spec: HandlerSpec) -> None:
        earlier = self.in_flight.get(job.id)
        if earlier is not None and earlier.task is not None and not earlier.recording:
            # Claimed again after this worker lost the lease (manual retry, rescue):
            # the older attempt cannot record anything any more.
            earlier.lost = True
            earlier.task.cancel()
        flight = InFlight(job=job, spec=spec, started=datetime.now(UTC))
        self.leases.add(flight)
        flight.task = asyncio.create_task(self._execute(flight), name=f"job-{job.id}")

    # -- running a job --------------------------------------------------------------

    async def _execute(self, flight: InFlight) -> None:
        job = flight.job
        try:
            deadline = job.timeout_seconds or flight.spec.timeout
            try:
                began = time.monotonic()
                async with asyncio.timeout(deadline) as scope:
                    with tracing.job_span(
                        f"{job.task_type} job", job.traceparent, self._span_attributes(job)
                    ):
                        result = await flight.spec.handle(job, self.ctx)
                limiter = self.pools[flight.spec.name].limiter
                if limiter is not None:
                    # The latency-gradient fallback learns from the provider's answers.
                    limiter.observe(time.monotonic() - began, self.pools[flight.spec.name].held)
            except TimeoutError as exc:
                if not scope.expired():  # the handler's own, not the deadline
                    await self._record_failure(flight, self._crash(flight, exc))
                    return
                overdue = errors.JobFailure(
                    ErrorCategory.TIMEOUT,
                    f"{flight.spec.name}: the attempt ran past its deadline of {deadline:g}s",
                )
                await self._record_failure(flight, overdue)
                return
            except asyncio.CancelledError:
                if flight.lost:
                    self._discard(job, "its lease was lost while running")
                    return
                raise
            except errors.JobFailure as failure:
                await self._record_failure(flight, failure)
                return
            except Exception as exc:
                await self._record_failure(flight, self._crash(flight, exc))
                return
            if flight.lost:
                self._discard(job, "its lease was lost while running")
                return
            assert job.lease_token is not None
            flight.recording = True
            outcome = await self.completer.submit(Completion(job.id, job.lease_token, result))
            if isinstance(outcome, Refused):
                refused = errors.JobFailure(
                    ErrorCategory.INTERNAL,
                    f"{flight.spec.name} result refused by the database: {outcome.reason}",
                    retryable=False,
                )
                await self._record_failure(flight, refused)
            elif outcome:
                self.counters.completed += 1
                self.metrics.observe_finished(
                    job.task_type, job.model_profile, "completed", job.started_at, datetime.now(UTC)
                )
            else:
                self._discard(job, "it was cancelled, retried or rescued meanwhile")
        finally:
            self.leases.remove(flight)
            if not flight.refilled:
                self._wake.set()  # the slot is free for the next job

    def _span_attributes(self, job: Job) -> dict[str, str | int]:
        """What the job's span says about the attempt (no input, no result)."""
        return {
            "ai_service.job.id": str(job.id),
            "ai_service.job.task_type": job.task_type,
            "ai_service.job.model_profile": job.model_profile,
            "ai_service.job.owner_service": job.owner_service,
            "ai_service.job.attempt": job.attempt,
            "ai_service.worker.id": self.worker_id,
        }

    def _crash(self, flight: InFlight, exc: Exception) -> errors.JobFailure:
        """An unexpected exception of a handler, as a permanent `internal` failure."""
        detail = self._redactor.text(str(exc))[:300]
        log.exception("handler %s crashed on job %s", flight.spec.name, flight.job.id)
        return errors.JobFailure(
            ErrorCategory.INTERNAL,
            f"{flight.spec.name} handler error: {type(exc).__name__}: {detail}",
            retryable=False,
        )

    async def _record_failure(self, flight: InFlight, failure: errors.JobFailure) -> None:
        job = flight.job
        if flight.lost:
            self._discard(job, "its lease was lost while running")
            return
        flight.recording = True
        retryable = is_retryable(failure.category, failure.retryable)
        message = _storable(self._redactor.text(failure.message))
        # Details quote provider messages too (transcription attempts).
        details = self._redactor.data(failure.details) if failure.details else None
        while True:
            try:
                updated = await self.store.fail(
                    job.id,
                    category=failure.category,
                    message=message,
                    details=details,
                    lease_token=job.lease_token,
                    retryable=retryable,
                    outage_max=self.outage_max,
                    retry_after=_retry_after(failure),
                )
                break
            except (errors.LeaseLost, errors.InvalidTransition, errors.JobNotFound):
                self._discard(job, "it was cancelled, retried or rescued meanwhile")
                return
            except errors.DatabaseUnavailable:
                await asyncio.sleep(RECORD_RETRY_DELAY)
            except (errors.InvalidRequest, errors.StatementTimeout) as exc:
                if details is not None:
                    details = None  # the details held something PostgreSQL refuses
                elif message != REFUSED_MESSAGE:
                    message = REFUSED_MESSAGE
                else:  # not even the bare failure can be written: the lease will expire
                    log.error("could not record the failure of job %s: %s", job.id, exc)
                    return
        if updated.status == "pending" and updated.attempt < job.attempt:  # deferred
            self.counters.deferred += 1
            log.info(
                "job %s attempt %d deferred, not counted (%s): %s",
                job.id,
                job.attempt,
                failure.category,
                failure.message,
            )
            return
        by_category = self.counters.failed_by_category
        by_category[failure.category] = by_category.get(failure.category, 0) + 1
        if updated.status == "pending":
            self.counters.retried += 1
        else:
            self.counters.failed += 1
        self.metrics.observe_finished(
            job.task_type,
            job.model_profile,
            "failed",
            job.started_at,
            updated.updated_at,
            failure.category,
        )
        log.info(
            "job %s attempt %d failed (%s)%s: %s",
            job.id,
            job.attempt,
            failure.category,
            ", will retry" if updated.status == "pending" else "",
            failure.message,
        )

    def _breaker_changed(self, breaker: Breaker) -> None:
        self.metrics.set_provider_up(breaker.key, breaker.state is not BreakerState.OPEN)
        self._wake.set()  # claim again at once (or stop claiming that handler's jobs)

    def _discard(self, job: Job, why: str) -> None:
        self.counters.discarded += 1
        log.info("discarded the work on job %s: %s", job.id, why)

    @property
    def healthy(self) -> bool:
        """False when a background loop died (readiness reports it)."""
        loops = [*self._tasks, *([self._probing] if self._probing else [])]
        return all(not task.done() for task in loops) or self.stopping

    async def heartbeat(self) -> None:
        """Extend every held lease now (tests call it instead of waiting a beat)."""
        await self.leases.beat()

    # -- status ---------------------------------------------------------------------

    def slot_status(self) -> dict[str, dict[str, Any]]:
        """Per handler: its slots, the current limit (adaptive or fixed), slots in use."""
        out: dict[str, dict[str, Any]] = {}
        for name, pool in self.pools.items():
            entry: dict[str, Any] = {
                "slots": pool.cap,
                "limit": pool.limit,
                "in_use": max(pool.in_use, 0),
                "held": pool.held,
                "dedicated": name in self.plan.caps,
            }
            describe = getattr(pool.limiter, "status", None)
            if callable(describe):
                entry["adaptive"] = describe()
            out[name] = entry
        return out

    def refresh_gauges(self) -> None:
        """Copy the slot figures into the metrics (before `/metrics` renders them)."""
        for name, pool in self.pools.items():
            self.metrics.set_worker_slots(name, max(pool.in_use, 0), pool.limit)

    def status(self) -> dict[str, Any]:
        """The `/worker/status` document."""
        return {
            "worker_id": self.worker_id,
            "started_at": self.started_at.isoformat(),
            "shutting_down": self.stopping,
            "concurrency": self.concurrency,
            "claim_limit": self.claim_limit,
            "slots": self.slot_status(),
            "lease_seconds": self.lease_seconds,
            "handlers": [
                {
                    "name": s.name,
                    "task_types": sorted(s.task_types),
                    "model_profiles": sorted(s.model_profiles)
                    if s.model_profiles is not None
                    else None,
                    "enabled": s.enabled,
                    "disabled_reason": s.disabled_reason,
                    "providers": s.providers,
                }
                for s in self.specs
            ],
            "in_flight": [
                {
                    "job_id": str(f.job.id),
                    "task_type": f.job.task_type,
                    "handler": f.spec.name,
                    "started_at": f.started.isoformat(),
                }
                for f in self.in_flight.values()
            ],
            "counters": {
                "processed": self.counters.processed,
                "completed": self.counters.completed,
                "failed": self.counters.failed,
                "retried": self.counters.retried,
                "discarded": self.counters.discarded,
                "deferred": self.counters.deferred,
                "failed_by_category": dict(self.counters.failed_by_category),
            },
            "last_claim_at": self.last_claim_at.isoformat() if self.last_claim_at else None,
            "breakers": self.breakers.status(),
        }


def _held(pool: slots.Pool) -> Callable[[], int]:
    return lambda: pool.held


def _storable(text: str) -> str:
    """Text PostgreSQL accepts: no NUL, no lone surrogates (from provider messages)."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _retry_after(failure: errors.JobFailure) -> float | None:
    """The wait a provider asked for (Retry-After, an open circuit), if any."""
    wait = (failure.details or {}).get("retry_after")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait >= 0:
        return float(wait)
    return None
