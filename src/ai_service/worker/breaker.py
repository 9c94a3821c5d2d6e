"""Circuit breakers, one per provider endpoint (the LLM, each WhisperX instance, each
audio LLM).

    closed --BREAKER_FAILURES consecutive failures--> open
    open --probe answers--> half_open --the trial request answers--> closed
      ^                        |
      +----the trial fails-----+          (any answer while open also closes it)

A failure is a connection failure or a 5xx that is an outage (`providers.gate.settle`).
While a breaker is open its endpoint gets no request: the runner claims no job of a
handler whose endpoints are all open (`Breakers.admits`), and a job that reaches an
open endpoint anyway is deferred without spending an attempt (`Gate.refusal`). The
endpoint is probed with the probe of `/providers/status` (`providers.probes`), first
after `BREAKER_PROBE_INTERVAL`, then at doubling intervals up to `BREAKER_PROBE_MAX`.
Half-open lets exactly one request through; its answer decides.

Busy is not down. A WhisperX instance that is transcribing accepts connections but
answers nothing, not even its probe (`providers.probes.probe_whisperx`: `busy`).
Such a probe counts as answering: it moves an open breaker to half-open and makes a
500 the request's fault (`settle`), and a request that waits on a busy instance until
its timeout counts as neither success nor failure. So being busy can neither open a
breaker nor keep one open; only what never connects (refused, unresolvable, connect
timeout) or a 5xx outage does.

Every state change is one log line and calls `Breakers.on_change` (the runner wakes
its claim loop and sets the `ai_provider_up` gauge).

The state machine is synchronous and takes an injectable clock; only the probes are
asynchronous. `BREAKER_FAILURES=0` keeps every breaker closed (the probes still serve
the 500 check of `settle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from ai_service.api.provider_status import ProviderTarget, provider_targets
from ai_service.config import Settings
from ai_service.errors import JobFailure
from ai_service.jobs import ErrorCategory
from ai_service.providers.gate import OPEN_GATE, Gate
from ai_service.providers.probes import describe_error, probe_openai, probe_whisperx
from ai_service.redact import redact_url, settings_secrets

log = logging.getLogger("ai_service.worker")

ProbeFn = Callable[[], Awaitable[tuple[bool, str]]]


class BreakerState(enum.StrEnum):
    """Where a breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    """The breaker of one endpoint; implements `providers.gate.Gate`.

    `key` names it (`llm`, `whisperx#2`, ...); `url` is shown, so it must be redacted
    already. `clock` (monotonic seconds) decides when probes are due; `wall` only
    stamps `since` for display.
    """

    def __init__(
        self,
        key: str,
        url: str,
        probe: ProbeFn,
        *,
        failures: int,
        probe_interval: float,
        probe_max: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.key = key
        self.url = url
        self.threshold = failures
        self.probe_interval = probe_interval
        self.probe_max = probe_max
        self.state = BreakerState.CLOSED
        self.since = wall()
        self.last_error: str | None = None
        self.consecutive = 0  # failures in a row while closed
        self.probes = 0  # probes sent, in all
        self.on_change: Callable[[Breaker], None] | None = None
        self._probe = probe
        self._clock = clock
        self._wall = wall
        self._delay = probe_interval
        self._next_probe = 0.0
        self._trial = False  # half-open: the one request let through is under way
        self._checking: asyncio.Future[tuple[bool, str]] | None = None
        self._checked_at: float | None = None
        self._checked: tuple[bool, str] = (False, "")

    # -- the gate -------------------------------------------------------------------

    def admits(self) -> bool:
        """Whether a job needing this endpoint may be claimed now."""
        return self.state is BreakerState.CLOSED or (
            self.state is BreakerState.HALF_OPEN and not self._trial
        )

    def acquire(self) -> bool:
        """Whether a request may go now; half-open lets one through (the trial)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.HALF_OPEN and not self._trial:
            self._trial = True
            return True
        return False

    def release(self) -> None:
        """A request is over; a trial that settled nothing (a timeout) frees its place."""
        if self.state is BreakerState.HALF_OPEN and self._trial:
            self._trial = False
            self._notify()  # another job may be the trial

    def succeeded(self) -> None:
        """The endpoint answered: closes the breaker, whatever its state."""
        self.consecutive = 0
        if self.state is not BreakerState.CLOSED:
            self._delay = self.probe_interval
            self._change(BreakerState.CLOSED, "the endpoint answers")

    def failed(self, detail: str) -> None:
        """An outage answer (connection failure, 5xx)."""
        self.last_error = detail
        if self.state is BreakerState.HALF_OPEN:
            self._open(min(self._delay * 2, self.probe_max), "the trial request failed")
        elif self.state is BreakerState.CLOSED:
            self.consecutive += 1
            if self.threshold and self.consecutive >= self.threshold:
                self._open(self.probe_interval, f"{self.consecutive} consecutive failures")

    def refusal(self, provider: str) -> JobFailure:
        """The failure of a job not sent: an outage, deferred until the next probe."""
        last = f" (last error: {self.last_error})" if self.last_error else ""
        return JobFailure(
            ErrorCategory.PROVIDER_UNAVAILABLE,
            f"{provider}: not sent, the circuit breaker of {self.url} is {self.state}{last}",
            details={
                "provider": self.key,
                "circuit": str(self.state),
                "retry_after": round(max(self.seconds_to_probe(), self.probe_interval), 3),
            },
        )

    # -- probes ---------------------------------------------------------------------

    def probe_due(self) -> bool:
        """Whether the open breaker's next probe is due."""
        return self.state is BreakerState.OPEN and self._clock() >= self._next_probe

    def seconds_to_probe(self) -> float:
        """Seconds until the next probe (0 when due; the interval when not open)."""
        if self.state is not BreakerState.OPEN:
            return self.probe_interval
        return max(0.0, self._next_probe - self._clock())

    def probed(self, ok: bool, detail: str) -> None:
        """Apply a probe's outcome: open -> half_open, or the next probe later."""
        if self.state is not BreakerState.OPEN:
            return
        if ok:
            self._trial = False
            self._change(BreakerState.HALF_OPEN, f"the probe answers: {detail}")
        else:
            self.last_error = detail
            self._delay = min(self._delay * 2, self.probe_max)
            self._next_probe = self._clock() + self._delay

    async def probe(self) -> None:
        """Probe the open endpoint now and apply the outcome."""
        ok, detail = await self.check(fresh=True)
        self.probed(ok, detail)

    async def healthy(self) -> bool:
        """Whether the probe answers (a result younger than the probe interval is reused)."""
        ok, _ = await self.check()
        return ok

    async def check(self, *, fresh: bool = False) -> tuple[bool, str]:
        """Run the probe, sharing one under way; `fresh=False` reuses a recent result.

        At most one probe per endpoint at a time, so callers cannot storm a server.
        """
        if self._checking is not None:
            return await asyncio.shield(self._checking)
        now = self._clock()
        if (
            not fresh
            and self._checked_at is not None
            and now - self._checked_at < self.probe_interval
        ):
            return self._checked
        self._checking = asyncio.ensure_future(self._run_probe())
        try:
            return await asyncio.shield(self._checking)
        finally:
            self._checking = None

    async def _run_probe(self) -> tuple[bool, str]:
        self.probes += 1
        result = await self._probe()
        self._checked, self._checked_at = result, self._clock()
        return result

    # -- transitions ----------------------------------------------------------------

    def _open(self, delay: float, why: str) -> None:
        self._delay = delay
        self._next_probe = self._clock() + delay
        self._trial = False
        self._change(BreakerState.OPEN, why)

    def _change(self, state: BreakerState, why: str) -> None:
        self.state = state
        self.since = self._wall()
        if state is BreakerState.OPEN:
            log.warning(
                "provider %s (%s): circuit open after %s; last error: %s",
                self.key,
                self.url,
                why,
                self.last_error,
            )
        else:
            log.info("provider %s (%s): circuit %s, %s", self.key, self.url, state, why)
        self._notify()

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    def status(self) -> dict[str, Any]:
        """This breaker in `/worker/status`."""
        return {
            "provider": self.key,
            "url": self.url,
            "state": str(self.state),
            "since": self.since.isoformat(),
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive,
            "probes": self.probes,
        }


class Breakers:
    """Every endpoint's breaker, the probe loop, and the claim check."""

    def __init__(self, breakers: Sequence[Breaker]) -> None:
        self.breakers = {b.key: b for b in breakers}
        self.on_change: Callable[[Breaker], None] | None = None
        self._opened = asyncio.Event()
        for breaker in breakers:
            breaker.on_change = self._changed

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> Breakers:
        """A breaker per configured endpoint, probing through `http`."""
        secrets = settings_secrets(settings)
        return cls(
            [
                Breaker(
                    endpoint_key(target),
                    redact_url(target.url),
                    _prober(http, target, settings.provider_probe_timeout, secrets),
                    failures=settings.breaker_failures,
                    probe_interval=settings.breaker_probe_interval,
                    probe_max=settings.breaker_probe_max,
                    clock=clock,
                )
                for target in provider_targets(settings)
                if target.url is not None
            ]
        )

    def gate(self, key: str) -> Gate:
        """The breaker of endpoint `key`, or a gate that lets everything through."""
        return self.breakers.get(key) or OPEN_GATE

    def admits(self, endpoints: Sequence[str]) -> bool:
        """Whether a handler using `endpoints` may claim: one of them takes requests."""
        known = [self.breakers[k] for k in endpoints if k in self.breakers]
        return not known or any(b.admits() for b in known)

    def _changed(self, breaker: Breaker) -> None:
        if breaker.state is BreakerState.OPEN:
            self._opened.set()
        if self.on_change is not None:
            self.on_change(breaker)

    async def run(self) -> None:
        """Probe the open breakers when due, until cancelled."""
        while True:
            self._opened.clear()
            opened = [b for b in self.breakers.values() if b.state is BreakerState.OPEN]
            due = [b for b in opened if b.probe_due()]
            if due:
                await asyncio.gather(*(b.probe() for b in due))
                continue
            wait = min((b.seconds_to_probe() for b in opened), default=None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._opened.wait(), wait)

    def status(self) -> list[dict[str, Any]]:
        """Every breaker, for `/worker/status`."""
        return [b.status() for b in self.breakers.values()]


def endpoint_key(target: ProviderTarget) -> str:
    """The breaker name of an endpoint: the provider, `#n` for WhisperX instance n."""
    return f"{target.name}#{target.instance}" if target.instance else target.name


def whisperx_keys(count: int) -> list[str]:
    """The breaker names of the `WHISPERX_URL` instances, in order."""
    return [f"whisperx#{n}" for n in range(1, count + 1)]


def _prober(
    http: httpx.AsyncClient, target: ProviderTarget, timeout: float, secrets: list[str | None]
) -> ProbeFn:
    """The `/providers/status` probe of `target`, bounded by `timeout`, never raising."""
    url = target.url
    assert url is not None

    async def probe() -> tuple[bool, str]:
        if target.kind == "whisperx":
            # Busy (connected, no answer while it transcribes) counts as up: ok is true.
            outcome = await probe_whisperx(http, url, timeout, secrets)
            return outcome.ok, outcome.detail
        try:
            async with asyncio.timeout(timeout):
                outcome = await probe_openai(
                    http, url, target.model, target.api_key, timeout, secrets
                )
                return outcome.ok, outcome.detail
        except Exception as exc:  # a probe reports any failure, never raises
            return False, describe_error(exc, secrets, timeout)

    return probe
