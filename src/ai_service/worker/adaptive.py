"""`LLM_CONCURRENCY=auto`: the LLM handler's in-flight limit follows the engine's load.

About once a second (`LLM_METRICS_INTERVAL`) the worker reads the LLM server's
Prometheus metrics (`LLM_METRICS_URL`, by default `LLM_BASE_URL` with `/v1`
replaced by `/metrics`) and `EngineController` moves the limit between
`LLM_CONCURRENCY_MIN` and `LLM_CONCURRENCY_MAX`:

- requests queue in the engine: the requests admitted since the previous
  reading waited more than 0.1 s on average (`vllm:request_queue_time_seconds`
  histogram) while some still wait, or, without that histogram,
  `vllm:num_requests_waiting` above a tolerance
  of 5% of the running requests, at least 1, in two readings in a row: a
  request arriving between two engine steps waits for the next one, which is
  no queue): the queue has moved into vLLM's FIFO, where our priorities no
  longer apply. The limit drops by this worker's share of the waiting requests
  (its jobs in flight over the engine's running + waiting), so replicas
  sharing one engine cut in proportion and together remove the queue, no more;
- the KV cache nears full (`vllm:kv_cache_usage_perc` >= 0.95, preemption is
  next): the limit drops by a tenth;
- after a cut the limit holds for two readings (the engine needs a moment to
  drain; reacting to the same queue twice would cut it twice);
- no queue (mean queue time at most 0.05 s, or without the histogram waiting
  within the tolerance), KV usage below 0.9, and the worker
  uses its limit (holds at least 90% of it): the
  limit rises, doubling at first (slow start, until the first congestion), then
  by `LLM_CONCURRENCY_MAX / 64` (at least 1) per reading: the same step for
  every replica, so that additive raises and proportional cuts converge to
  equal parts of the engine;
- anything else (KV usage between 0.9 and 0.95, or a limit the worker does not
  use): the limit holds. The dead band between the two KV thresholds and the
  hold after a cut keep the loop from oscillating.

Without a readable metrics endpoint (three failed readings in a row, or a
first reading that fails) the `GradientLimiter` takes over: a latency-gradient
limiter in the style of Netflix's concurrency-limits (Gradient2), fed with the
LLM calls' own durations and updated every window of about one round of calls.
It returns to the engine's signal as soon as a reading succeeds.

The controllers are pure objects (a reading in, a limit out), tested on
recorded metric sequences; `AdaptiveLimit` is the loop that feeds them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ai_service.config import Settings
from ai_service.providers.vllm_metrics import VllmFigures, parse_vllm_metrics
from ai_service.redact import redact_url
from ai_service.urls import request_target

log = logging.getLogger("ai_service.worker")

KV_HIGH = 0.95  # at or above: cut (preemption is near)
KV_LOW = 0.90  # below: room to raise; between the two: hold
HOLD_AFTER_CUT = 2  # readings
SLOW_START_FACTOR = 2.0
AVOIDANCE_DIVISOR = 64  # then raise by maximum / 64 (at least 1) per reading
BINDING = 0.9  # the worker "uses" its limit when it holds at least this share of it
FAILURES_BEFORE_FALLBACK = 3  # readings in a row (or the very first one)
WINDOW_MIN = 10  # calls per window of the latency-gradient limiter, at least
WAITING_TOLERANCE = 0.05  # of the running requests: arrivals between two engine steps
QUEUE_TIME_HIGH = 0.1  # seconds of mean engine queue time: congestion
QUEUE_TIME_LOW = 0.05  # seconds: room to raise; between the two: hold


@dataclass(frozen=True)
class EngineReading:
    """What the engine reports at one moment (None: not exposed)."""

    running: float
    waiting: float
    kv_cache_usage: float | None = None
    # Mean time the requests admitted since the previous reading waited in the
    # engine (`vllm:request_queue_time_seconds`); None: not exposed, or none admitted.
    queue_time: float | None = None

    @classmethod
    def of(cls, figures: VllmFigures, previous: VllmFigures | None = None) -> EngineReading | None:
        """From parsed metrics (and the previous reading's, for the queue time);
        None when the queue gauges are missing."""
        if figures.requests_running is None or figures.requests_waiting is None:
            return None
        queue_time = None
        if (
            previous is not None
            and figures.queue_time_count is not None
            and previous.queue_time_count is not None
            and figures.queue_time_sum_seconds is not None
            and previous.queue_time_sum_seconds is not None
            and figures.queue_time_count > previous.queue_time_count
        ):
            queue_time = (figures.queue_time_sum_seconds - previous.queue_time_sum_seconds) / (
                figures.queue_time_count - previous.queue_time_count
            )
        return cls(
            figures.requests_running,
            figures.requests_waiting,
            figures.kv_cache_usage,
            queue_time,
        )


class EngineController:
    """The control law on the engine's own signal (see the module docstring)."""

    def __init__(self, minimum: int, maximum: int, initial: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        start = initial if initial is not None else max(minimum, maximum // 4)
        self.limit = min(self.maximum, max(self.minimum, start))
        self.slow_start = True
        self.hold = 0
        self._previous_waiting = 0.0
        self.last_action = "start"

    def update(self, reading: EngineReading, in_flight: int) -> int:
        """The new limit after one reading, given the jobs this worker holds."""
        base = min(self.limit, max(in_flight, self.minimum))
        # A request arriving between two engine steps waits until the next one: a
        # few waiting requests in one reading are normal; a queue is what stays.
        tolerance = max(1.0, WAITING_TOLERANCE * reading.running)
        queue = min(reading.waiting, self._previous_waiting)
        self._previous_waiting = reading.waiting
        if reading.queue_time is not None:
            # The engine's own account of waiting: bursts that one step clears
            # barely move it, a queue that stays does.
            congested = reading.queue_time > QUEUE_TIME_HIGH and reading.waiting > 0
            clear = reading.queue_time <= QUEUE_TIME_LOW
            queue = reading.waiting
        else:
            congested = queue > tolerance
            clear = reading.waiting <= tolerance
        if congested:
            share = min(1.0, in_flight / max(reading.running + reading.waiting, 1.0))
            cut = max(1, math.ceil(queue * share))
            self._cut(base - cut, "engine queue")
        elif reading.kv_cache_usage is not None and reading.kv_cache_usage >= KV_HIGH:
            self._cut(math.floor(base * 0.9), "kv cache full")
        elif self.hold > 0:
            self.hold -= 1
            self.last_action = "hold after cut"
        elif (
            clear
            and (reading.kv_cache_usage is None or reading.kv_cache_usage < KV_LOW)
            and in_flight >= BINDING * self.limit
            and self.limit < self.maximum
        ):
            if self.slow_start:
                raised = math.ceil(self.limit * SLOW_START_FACTOR)
            else:
                # The same step for every replica (not a share of its limit): additive
                # increase with proportional cuts lets replicas converge to equal parts.
                raised = self.limit + max(1, self.maximum // AVOIDANCE_DIVISOR)
            self.limit = min(self.maximum, raised)
            self.last_action = "raise"
        else:
            self.last_action = "hold"
        return self.limit

    def _cut(self, target: int, why: str) -> None:
        self.limit = max(self.minimum, min(self.limit, target))
        self.slow_start = False
        self.hold = HOLD_AFTER_CUT
        self.last_action = f"cut: {why}"


class GradientLimiter:
    """Latency-gradient limit, for engines without metrics (Gradient2-like).

    `observe` records call durations; `update` (once per interval) compares the
    interval's mean with a slowly rising baseline (the lowest mean seen, which
    drifts up 1% per interval so that a backend that became slower for good is
    accepted): gradient = clamp(tolerance * baseline / mean, 0.5, 1), new limit =
    limit * gradient + sqrt(limit) (room for a small queue), smoothed. Until the
    latency first rises the limit doubles per window (slow start). The limit
    grows only while the worker uses at least half of it.
    """

    TOLERANCE = 1.2
    SMOOTHING = 0.2
    DRIFT = 0.01

    def __init__(self, minimum: int, maximum: int, initial: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        start = initial if initial is not None else max(minimum, maximum // 4)
        self.estimate = float(min(self.maximum, max(self.minimum, start)))
        self.baseline: float | None = None
        self.slow_start = True
        self._sum = 0.0
        self._count = 0
        self._in_flight = 0

    @property
    def limit(self) -> int:
        """The current limit."""
        return int(self.estimate)

    def observe(self, seconds: float, in_flight: int) -> None:
        """One call took `seconds` while the worker held `in_flight` jobs.

        A window of about one round of calls (as many as the limit) updates the
        limit at once: a reading a second would be far too slow to follow calls
        of a few hundred milliseconds.
        """
        self._sum += seconds
        self._count += 1
        self._in_flight = max(self._in_flight, in_flight)
        if self._count >= max(WINDOW_MIN, self.limit):
            self.update()

    def update(self, in_flight: int | None = None) -> int:
        """Fold the interval's observations into the limit (unchanged without any)."""
        if self._count == 0:
            return self.limit
        mean = self._sum / self._count
        used = max(self._in_flight, in_flight or 0)
        self._sum, self._count, self._in_flight = 0.0, 0, 0
        if self.baseline is None or mean < self.baseline:
            self.baseline = mean
        else:
            self.baseline *= 1 + self.DRIFT
        gradient = min(1.0, max(0.5, self.TOLERANCE * self.baseline / max(mean, 1e-9)))
        if gradient < 1.0:
            self.slow_start = False
        if self.slow_start and used >= self.estimate / 2:
            # Until latency first rises, double per window (TCP's slow start).
            self.estimate = min(float(self.maximum), self.estimate * 2)
            return self.limit
        target = self.estimate * gradient + math.sqrt(self.estimate)
        if target > self.estimate and used < self.estimate / 2:
            target = self.estimate  # app-limited: a limit nobody uses proves nothing
        smoothed = self.estimate * (1 - self.SMOOTHING) + target * self.SMOOTHING
        self.estimate = min(float(self.maximum), max(float(self.minimum), smoothed))
        return self.limit


class AdaptiveLimit:
    """The loop that reads the engine's metrics and keeps the LLM handler's limit.

    Implements `slots.Limiter`: the runner reads `limit` before each claim,
    calls `observe` after each LLM call and runs `run` while it claims.
    """

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        maximum: int,
        *,
        minimum: int | None = None,
    ) -> None:
        low = min(minimum or settings.llm_concurrency_min, maximum)
        self.engine = EngineController(low, maximum)
        self.gradient = GradientLimiter(low, maximum, self.engine.limit)
        self.http = http
        self.url = settings.effective_llm_metrics_url
        self.interval = settings.llm_metrics_interval
        self.timeout = min(max(self.interval, 0.5), settings.provider_probe_timeout)
        self.mode = "engine" if self.url else "latency"
        self.failures = 0
        self.last_reading: EngineReading | None = None
        self._previous_figures: VllmFigures | None = None
        self.last_error: str | None = None
        self.updated_at: float | None = None

    @property
    def limit(self) -> int:
        """The current limit of whichever controller leads."""
        return self.engine.limit if self.mode == "engine" else self.gradient.limit

    def observe(self, seconds: float, in_flight: int) -> None:
        """An LLM call's duration (feeds the latency fallback)."""
        self.gradient.observe(seconds, in_flight)

    async def run(self, in_flight: Callable[[], int]) -> None:
        """Read and adjust every interval until cancelled; never dies of an error."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick(in_flight())
            except Exception:
                log.exception("adaptive LLM limit: update failed")

    async def tick(self, in_flight: int) -> None:
        """One reading and one adjustment."""
        reading = await self._read() if self.url else None
        if reading is not None:
            if self.mode != "engine":
                log.info("adaptive LLM limit: engine metrics readable again")
                self.engine.limit = self.gradient.limit
                self.mode = "engine"
            self.failures = 0
            self.last_reading = reading
            self.engine.update(reading, in_flight)
            self.gradient.update(in_flight)  # keep its baseline learning
            self.gradient.estimate = float(self.engine.limit)
        else:
            self.failures += 1
            never_read = self.last_reading is None
            if self.mode == "engine" and (never_read or self.failures >= FAILURES_BEFORE_FALLBACK):
                log.warning(
                    "adaptive LLM limit: no engine metrics (%s); following latency",
                    self.last_error,
                )
                self.gradient.estimate = float(self.engine.limit)
                self.mode = "latency"
            if self.mode == "latency":
                self.gradient.update(in_flight)
        self.updated_at = time.time()

    async def _read(self) -> EngineReading | None:
        assert self.url is not None
        try:
            target, headers = request_target(self.url)
            response = await self.http.get(target, headers=headers, timeout=self.timeout)
            if response.status_code != 200:
                self.last_error = f"GET metrics answered HTTP {response.status_code}"
                return None
            figures = parse_vllm_metrics(response.text)
            reading = EngineReading.of(figures, self._previous_figures)
            self._previous_figures = figures
        except (httpx.HTTPError, ValueError) as exc:
            self.last_error = f"{type(exc).__name__} reading the metrics"
            return None
        if reading is None:
            self.last_error = "the metrics have no vllm:num_requests_running/waiting"
        return reading

    def status(self) -> dict[str, Any]:
        """For `/worker/status`: mode, limit, bounds, the last reading."""
        reading = self.last_reading
        return {
            "mode": self.mode,
            "limit": self.limit,
            "min": self.engine.minimum,
            "max": self.engine.maximum,
            "metrics_url": redact_url(self.url) if self.url else None,
            "last_action": self.engine.last_action if self.mode == "engine" else "gradient",
            "engine": {
                "running": reading.running,
                "waiting": reading.waiting,
                "kv_cache_usage": reading.kv_cache_usage,
                "queue_time_seconds": reading.queue_time,
            }
            if reading is not None
            else None,
            "latency_baseline_seconds": self.gradient.baseline,
            "last_error": self.last_error,
        }
