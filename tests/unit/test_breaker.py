"""The circuit breaker's state machine, driven by a fake clock (no sleeping, no timing),
and its WhisperX probe against loopback stubs (busy is not down).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import httpx
import pytest

from ai_service.config import load_settings
from ai_service.errors import JobFailure
from ai_service.jobs import ErrorCategory
from ai_service.providers.gate import OPEN_GATE, settle
from ai_service.worker.breaker import Breaker, Breakers, BreakerState
from tests.stubs import closed_port_url
from tests.stubs.whisperx_server import WhisperXStub, start_transcription


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Probe:
    """A scripted probe: answers `ok` / `detail`, counts its calls."""

    def __init__(self) -> None:
        self.ok = False
        self.detail = "connection failed: refused"
        self.calls = 0

    async def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return self.ok, self.detail


def make(
    clock: Clock, probe: Probe, *, failures: int = 3, interval: float = 1.0, maximum: float = 8.0
) -> Breaker:
    return Breaker(
        "llm",
        "http://vllm:8000",
        probe,
        failures=failures,
        probe_interval=interval,
        probe_max=maximum,
        clock=clock,
        wall=lambda: datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_opens_after_the_configured_consecutive_failures_only() -> None:
    breaker = make(Clock(), Probe(), failures=3)
    breaker.failed("refused")
    breaker.failed("refused")
    breaker.succeeded()  # a success in between resets the count
    breaker.failed("refused")
    breaker.failed("refused")
    assert breaker.state is BreakerState.CLOSED
    assert breaker.acquire()
    breaker.failed("HTTP 503")
    assert breaker.state is BreakerState.OPEN
    assert breaker.last_error == "HTTP 503"
    assert not breaker.acquire()
    assert not breaker.admits()


def test_zero_failures_never_opens() -> None:
    breaker = make(Clock(), Probe(), failures=0)
    for _ in range(100):
        breaker.failed("refused")
    assert breaker.state is BreakerState.CLOSED


async def test_probes_back_off_exponentially_up_to_the_maximum() -> None:
    clock, probe = Clock(), Probe()
    breaker = make(clock, probe, failures=1, interval=1.0, maximum=8.0)
    breaker.failed("refused")
    waits = []
    for _ in range(6):
        waits.append(breaker.seconds_to_probe())
        assert not breaker.probe_due()
        clock.now += breaker.seconds_to_probe()
        assert breaker.probe_due()
        await breaker.probe()
        assert breaker.state is BreakerState.OPEN
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert probe.calls == 6
    assert breaker.probes == 6


async def test_a_successful_probe_half_opens_and_lets_exactly_one_trial_through() -> None:
    clock, probe = Clock(), Probe()
    breaker = make(clock, probe, failures=1)
    breaker.failed("refused")
    clock.now += 1.0
    probe.ok, probe.detail = True, "serves: qwen"
    await breaker.probe()
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.admits()
    assert breaker.acquire()  # the trial
    assert not breaker.admits()
    assert not breaker.acquire()  # nobody else meanwhile
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.acquire()
    assert breaker.consecutive == 0


async def test_a_failed_trial_opens_again_with_a_longer_wait() -> None:
    clock, probe = Clock(), Probe()
    breaker = make(clock, probe, failures=1, interval=1.0)
    breaker.failed("refused")
    clock.now += 1.0
    probe.ok = True
    await breaker.probe()
    assert breaker.acquire()
    breaker.failed("HTTP 502")
    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_to_probe() == 2.0


async def test_a_trial_that_settles_nothing_frees_its_place() -> None:
    clock, probe = Clock(), Probe()
    breaker = make(clock, probe, failures=1)
    breaker.failed("refused")
    clock.now += 1.0
    probe.ok = True
    await breaker.probe()
    assert breaker.acquire()
    breaker.release()  # e.g. the request timed out: neither success nor failure
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire()


async def test_an_answer_while_open_closes_the_breaker() -> None:
    breaker = make(Clock(), Probe(), failures=1)
    breaker.failed("refused")
    breaker.succeeded()  # a request sent before it opened came back fine
    assert breaker.state is BreakerState.CLOSED


async def test_recent_probe_results_are_shared_not_repeated() -> None:
    clock, probe = Clock(), Probe()
    breaker = make(clock, probe, interval=1.0)
    probe.ok = True
    assert await breaker.healthy()
    assert await breaker.healthy()
    assert probe.calls == 1
    clock.now += 1.0
    assert await breaker.healthy()
    assert probe.calls == 2


async def test_a_refusal_is_an_outage_naming_the_state_and_the_last_error() -> None:
    clock = Clock()
    breaker = make(clock, Probe(), failures=1, interval=1.0)
    breaker.failed("llm: cannot reach http://vllm:8000/v1: refused")
    refusal = breaker.refusal("llm")
    assert refusal.category == ErrorCategory.PROVIDER_UNAVAILABLE
    assert "circuit breaker of http://vllm:8000 is open" in refusal.message
    assert "refused" in refusal.message
    assert refusal.details == {"provider": "llm", "circuit": "open", "retry_after": 1.0}


def test_every_state_change_is_one_log_line_and_one_notification(
    caplog: pytest.LogCaptureFixture,
) -> None:
    changes: list[BreakerState] = []
    breaker = make(Clock(), Probe(), failures=2)
    breaker.on_change = lambda b: changes.append(b.state)
    with caplog.at_level(logging.INFO, logger="ai_service.worker"):
        breaker.failed("refused")
        breaker.failed("refused")
        breaker.failed("refused")  # already open: no change
        breaker.succeeded()
    assert changes == [BreakerState.OPEN, BreakerState.CLOSED]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "circuit open after 2 consecutive failures" in lines[0]
    assert "circuit closed" in lines[1]


async def test_settle_counts_outages_and_excuses_a_500_when_the_probe_answers() -> None:
    clock, probe = Clock(), Probe()
    breaker = make(clock, probe, failures=2)
    refused = JobFailure(ErrorCategory.PROVIDER_UNAVAILABLE, "llm: cannot connect")
    assert await settle(breaker, refused) is refused
    assert breaker.consecutive == 1

    probe.ok = True
    crash = JobFailure(
        ErrorCategory.PROVIDER_UNAVAILABLE,
        "whisperx: HTTP 500",
        details={"provider": "whisperx", "status_code": 500},
    )
    excused = await settle(breaker, crash)
    assert excused is not None
    assert excused.category == ErrorCategory.PROVIDER_ERROR
    assert excused.retryable is True  # attempts count, as for any failed request
    assert breaker.consecutive == 0

    clock.now += 10
    probe.ok = False
    assert await settle(breaker, crash) is crash  # probe down too: an outage
    bad_request = JobFailure(ErrorCategory.PROVIDER_ERROR, "HTTP 400", details={"status_code": 400})
    assert await settle(breaker, bad_request) is bad_request
    assert breaker.consecutive == 0  # it answered


async def test_without_a_breaker_a_500_keeps_its_category() -> None:
    crash = JobFailure(ErrorCategory.PROVIDER_UNAVAILABLE, "HTTP 500", details={"status_code": 500})
    assert await settle(OPEN_GATE, crash) is crash


def test_one_breaker_per_configured_endpoint_and_a_handler_blocked_only_when_all_are_open() -> None:
    settings = load_settings(
        {
            "LLM_BASE_URL": "http://127.0.0.1:9/v1",
            "WHISPERX_URL": "http://u:pw@127.0.0.1:7,http://127.0.0.1:8",
            "BREAKER_FAILURES": "1",
        }
    )
    breakers = Breakers.from_settings(settings, httpx.AsyncClient())  # never used to send
    assert sorted(breakers.breakers) == ["llm", "whisperx#1", "whisperx#2"]
    assert "pw" not in breakers.breakers["whisperx#1"].url  # shown redacted
    both = ["whisperx#1", "whisperx#2"]
    breakers.breakers["whisperx#1"].failed("refused")
    assert breakers.admits(both)
    breakers.breakers["whisperx#2"].failed("refused")
    assert not breakers.admits(both)
    assert breakers.admits(["llm"])
    assert breakers.admits([])  # a handler without providers is never blocked
    assert [s["state"] for s in breakers.status()] == ["closed", "open", "open"]


async def test_a_busy_whisperx_instance_is_not_down_for_its_breaker() -> None:
    # The instance is transcribing: its probe connects and gets no answer in time.
    with WhisperXStub("wx", latency=30.0) as busy:
        settings = load_settings(
            {
                "WHISPERX_URL": f"{busy.base_url},{closed_port_url()}",
                "BREAKER_FAILURES": "1",
                "PROVIDER_PROBE_TIMEOUT": "0.3s",
            }
        )
        async with httpx.AsyncClient() as http:
            transcribing = await start_transcription(busy)
            breakers = Breakers.from_settings(settings, http)
            working, dead = breakers.breakers["whisperx#1"], breakers.breakers["whisperx#2"]
            working.failed("connection reset")  # opened, as after a crash
            dead.failed("connection refused")
            # While busy: the probe answers for the breaker, so it is no longer kept open...
            await working.probe()
            assert working.state is BreakerState.HALF_OPEN
            # ...and a 500 meanwhile is the request's fault, not an outage.
            crash = JobFailure(
                ErrorCategory.PROVIDER_UNAVAILABLE, "HTTP 500", details={"status_code": 500}
            )
            settled = await settle(working, crash)
            # What never connects keeps its breaker open.
            await dead.probe()
            busy.stop()
            await asyncio.gather(transcribing, return_exceptions=True)
    assert working.state is BreakerState.CLOSED
    assert settled is not None
    assert settled.category == ErrorCategory.PROVIDER_ERROR
    assert dead.state is BreakerState.OPEN
    assert str(dead.last_error).startswith("connection failed")
