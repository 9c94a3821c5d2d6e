"""The adaptive LLM limit: the controllers on recorded metric sequences, and the loop."""

from __future__ import annotations

import itertools

import httpx
import pytest

from ai_service.providers.vllm_metrics import VllmFigures
from ai_service.worker.adaptive import (
    AdaptiveLimit,
    EngineController,
    EngineReading,
    GradientLimiter,
)
from tests.helpers import make_settings
from tests.stubs import closed_port_url
from tests.stubs.vllm_engine import VllmEngineStub


def idle(running: float = 10, kv: float = 0.3) -> EngineReading:
    return EngineReading(running=running, waiting=0, kv_cache_usage=kv)


def engine_reading(in_flight: int, capacity: int) -> EngineReading:
    """A saturating engine: `capacity` run, the rest wait."""
    running = min(in_flight, capacity)
    return EngineReading(float(running), float(in_flight - running), running / capacity * 0.7)


def test_rises_while_the_queue_is_empty_doubling_until_the_first_congestion() -> None:
    controller = EngineController(1, 256, initial=8)
    limits = [controller.update(idle(), in_flight=controller.limit) for _ in range(4)]
    assert limits == [16, 32, 64, 128]


def test_after_a_cut_it_rises_slowly() -> None:
    controller = EngineController(1, 256, initial=100)
    controller.update(EngineReading(60, 40, 0.5), 100)  # one reading: maybe a burst
    assert controller.limit == 100
    controller.update(EngineReading(60, 40, 0.5), 100)
    assert controller.limit == 60  # the whole queue, this worker holding all of it
    after = [controller.update(idle(60), 60) for _ in range(4)]
    # Two readings of hold, then +256/64 per reading.
    assert after == [60, 60, 64, 68]


def test_a_one_reading_burst_of_waiting_requests_is_not_a_queue() -> None:
    controller = EngineController(1, 256, initial=64)
    controller.slow_start = False
    controller.update(EngineReading(64, 20, 0.5), 64)
    controller.update(idle(64), 64)
    controller.update(EngineReading(64, 20, 0.5), 64)
    assert controller.limit >= 64


def test_falls_when_requests_wait_in_the_engine_by_this_workers_share() -> None:
    controller = EngineController(1, 256, initial=100)
    # Two replicas of 100 each on one engine: 160 run, 40 wait; this worker's share is half.
    for _ in range(2):
        controller.update(EngineReading(160, 40, 0.6), 100)
    assert controller.limit == 80


def test_falls_on_the_engines_queue_time_and_ignores_short_waits() -> None:
    controller = EngineController(1, 256, initial=64)
    controller.slow_start = False
    # Many arrivals between two steps, but they waited only 20 ms: no queue.
    controller.update(EngineReading(64, 30, 0.5, queue_time=0.02), 64)
    assert controller.limit == 68
    # 10 waiting for 0.4 s: this worker (68 of the engine's 74) cuts its share of them.
    controller.update(EngineReading(64, 10, 0.5, queue_time=0.4), 68)
    assert controller.limit == 58
    assert controller.last_action == "cut: engine queue"


def test_falls_when_the_kv_cache_nears_full() -> None:
    controller = EngineController(1, 256, initial=100)
    controller.update(EngineReading(100, 0, 0.97), 100)
    assert controller.limit == 90
    assert controller.last_action == "cut: kv cache full"


def test_holds_steady_under_a_constant_signal_in_the_dead_band() -> None:
    controller = EngineController(1, 256, initial=50)
    limits = {controller.update(EngineReading(50, 0, 0.92), 50) for _ in range(100)}
    assert limits == {50}


def test_holds_when_the_worker_does_not_use_its_limit() -> None:
    controller = EngineController(1, 256, initial=50)
    limits = {controller.update(idle(5), in_flight=5) for _ in range(20)}
    assert limits == {50}


def test_settles_at_the_engines_capacity_without_oscillating() -> None:
    controller = EngineController(1, 512, initial=8)
    history = []
    for _ in range(200):
        history.append(controller.update(engine_reading(controller.limit, 128), controller.limit))
    tail = history[100:]
    assert min(tail) >= 120
    assert max(tail) <= 140
    # No swings: consecutive limits never differ by more than a small step.
    assert max(abs(a - b) for a, b in itertools.pairwise(tail)) <= 12


def test_replicas_sharing_one_engine_split_it_and_fill_it() -> None:
    a = EngineController(1, 512, initial=8)
    b = EngineController(1, 512, initial=40)
    for _ in range(300):
        reading = engine_reading(a.limit + b.limit, 128)
        a.update(reading, a.limit)
        b.update(reading, b.limit)
    assert 120 <= a.limit + b.limit <= 150
    assert min(a.limit, b.limit) >= 30  # neither starves


@pytest.mark.parametrize(
    "reading",
    [EngineReading(500, 500, 1.0), EngineReading(0, 0, 0.0), EngineReading(1, 1000, None)],
)
def test_bounds_are_respected_whatever_the_signal(reading: EngineReading) -> None:
    controller = EngineController(4, 32, initial=16)
    for in_flight in [0, 16, 32, 1000] * 25:
        limit = controller.update(reading, in_flight)
        assert 4 <= limit <= 32


def test_queue_time_comes_from_the_histograms_change_between_readings() -> None:
    before = VllmFigures(
        requests_running=5, requests_waiting=1, queue_time_sum_seconds=10.0, queue_time_count=100
    )
    after = VllmFigures(
        requests_running=5, requests_waiting=1, queue_time_sum_seconds=12.0, queue_time_count=110
    )
    reading = EngineReading.of(after, before)
    assert reading is not None
    assert reading.queue_time == pytest.approx(0.2)
    first = EngineReading.of(after, None)
    assert first is not None
    assert first.queue_time is None
    assert EngineReading.of(VllmFigures(requests_running=None, requests_waiting=1)) is None


def test_gradient_rises_while_latency_is_flat_and_the_limit_is_used() -> None:
    limiter = GradientLimiter(1, 200, initial=10)
    for _ in range(30):
        for _ in range(10):
            limiter.observe(0.2, limiter.limit)
        limiter.update(limiter.limit)
    assert limiter.limit > 20


def test_gradient_falls_when_latency_grows() -> None:
    limiter = GradientLimiter(1, 200, initial=100)
    limiter.observe(0.2, 100)
    limiter.update(100)
    start = limiter.limit
    for _ in range(20):
        limiter.observe(0.6, 100)  # three times the baseline: a queue somewhere
        limiter.update(100)
    assert limiter.limit < start * 0.6


def test_gradient_holds_without_observations_or_when_app_limited() -> None:
    limiter = GradientLimiter(1, 200, initial=50)
    assert limiter.update(50) == 50
    for _ in range(20):
        limiter.observe(0.2, 3)
        limiter.update(3)
    assert limiter.limit == 50
    bounded = GradientLimiter(5, 8, initial=6)
    for _ in range(50):
        bounded.observe(5.0 if _ % 2 else 0.01, 8)
        assert 5 <= bounded.update(8) <= 8


async def test_the_loop_reads_the_engine_and_falls_back_to_latency_without_metrics() -> None:
    with VllmEngineStub(max_num_seqs=8) as engine:
        settings = make_settings(LLM_BASE_URL=f"{engine.base_url}/v1", LLM_CONCURRENCY="auto")
        assert settings.effective_llm_metrics_url == f"{engine.base_url}/metrics"
        async with httpx.AsyncClient() as http:
            limit = AdaptiveLimit(settings, http, maximum=64)
            assert limit.limit == 16  # a quarter of the maximum to start
            await limit.tick(in_flight=16)
            assert limit.mode == "engine"
            assert limit.limit == 32  # an idle engine: doubled
            status = limit.status()
            assert status["engine"]["running"] == 0
            assert status["engine"]["waiting"] == 0
    down = make_settings(
        LLM_BASE_URL=f"{closed_port_url()}/v1", LLM_CONCURRENCY="auto", LLM_CONCURRENCY_MAX="64"
    )
    async with httpx.AsyncClient() as http:
        limit = AdaptiveLimit(down, http, maximum=64)
        for _ in range(3):
            await limit.tick(in_flight=0)
        assert limit.mode == "latency"
        assert limit.last_error == "ConnectError reading the metrics"
        for _ in range(5):
            for _ in range(5):
                limit.observe(0.1, limit.limit)
            await limit.tick(in_flight=limit.limit)
        assert limit.limit > 16  # the gradient limiter leads and learns from latencies


def test_gradient_doubles_per_window_of_calls_until_latency_first_rises() -> None:
    limiter = GradientLimiter(1, 512, initial=16)
    for _ in range(16):  # one window: as many calls as the limit
        limiter.observe(0.2, 16)
    assert limiter.limit == 32
    for _ in range(32):
        limiter.observe(0.2, 32)
    assert limiter.limit == 64
    for _ in range(64):
        limiter.observe(0.5, 64)  # a queue formed: slow start ends, the limit falls
    assert limiter.slow_start is False
    assert limiter.limit < 64
