"""How the worker's slots are split between its handlers."""

from __future__ import annotations

import pytest

from ai_service.worker.slots import LLM, TRANSCRIPTION, Pool, plan
from tests.helpers import make_settings

BOTH = {LLM, TRANSCRIPTION, "noop"}


@pytest.mark.parametrize(
    ("env", "enabled", "total", "caps"),
    [
        # Defaults: WORKER_CONCURRENCY = WORKER_CLAIM_LIMIT = 4, transcription a quarter.
        ({}, BOTH, 4, {LLM: 3, TRANSCRIPTION: 1}),
        ({}, {LLM, "noop"}, 4, {LLM: 4}),
        ({}, {"noop"}, 4, {}),
        # Transcription gets a quarter, at most 2 (WhisperX serializes).
        ({"WORKER_CONCURRENCY": "64"}, BOTH, 64, {LLM: 62, TRANSCRIPTION: 2}),
        ({"WORKER_CONCURRENCY": "1"}, BOTH, 1, {LLM: 1, TRANSCRIPTION: 1}),
        # Explicit values without a total: the total is their sum.
        (
            {"LLM_CONCURRENCY": "16", "TRANSCRIPTION_CONCURRENCY": "2"},
            BOTH,
            18,
            {LLM: 16, TRANSCRIPTION: 2},
        ),
        ({"LLM_CONCURRENCY": "16"}, {LLM, "noop"}, 16, {LLM: 16}),
        # auto reserves LLM_CONCURRENCY_MAX (default: the LLM share of the total).
        ({"LLM_CONCURRENCY": "auto", "LLM_CONCURRENCY_MAX": "256"}, {LLM}, 256, {LLM: 256}),
        (
            {"LLM_CONCURRENCY": "auto", "WORKER_CONCURRENCY": "32"},
            BOTH,
            32,
            {LLM: 30, TRANSCRIPTION: 2},
        ),
        # A total and an explicit share: the other handler gets the rest.
        (
            {"WORKER_CONCURRENCY": "20", "TRANSCRIPTION_CONCURRENCY": "4"},
            BOTH,
            20,
            {LLM: 16, TRANSCRIPTION: 4},
        ),
    ],
)
def test_plan_splits_the_total_between_the_enabled_handlers(
    env: dict[str, str], enabled: set[str], total: int, caps: dict[str, int]
) -> None:
    slots = plan(make_settings(**env), enabled)
    assert slots.total == total
    assert slots.caps == caps


def test_a_pool_counts_reservations_and_passing_slots() -> None:
    pool = Pool("llm", 8, dedicated=True)
    pool.held = 5
    pool.reserved = 3
    pool.passing = 2
    assert pool.in_use == 6
    assert pool.limit == 8
    assert pool.batch == 4


class FixedLimit:
    def __init__(self, limit: int) -> None:
        self.limit = limit

    def observe(self, seconds: float, in_flight: int) -> None:
        pass

    async def run(self, in_flight: object) -> None:
        pass


def test_an_adaptive_limit_moves_within_the_pools_slots() -> None:
    limiter = FixedLimit(3)
    pool = Pool("llm", 8, limiter, dedicated=True)
    assert pool.limit == 3
    limiter.limit = 50
    assert pool.limit == 8
    limiter.limit = 0
    assert pool.limit == 1


def test_provider_handlers_claim_in_small_groups_and_noop_in_halves() -> None:
    assert Pool("llm", 64, dedicated=True).batch == 4
    assert Pool("noop", 64).batch == 32
    assert Pool("noop", 1).batch == 1
