"""Per-handler slots: how many jobs each handler may hold, within the worker's total.

Every handler claims only for its own free slots, so long jobs of one handler
(30-minute transcriptions) never take the slots of another (LLM chats). The
worker's total (`WORKER_CONCURRENCY`) still bounds the leases the process
holds; `plan` splits it:

- `TRANSCRIPTION_CONCURRENCY` (unset: a quarter of the total, at least 1 and at
  most 2: WhisperX serializes requests, so more would only wait there);
- `LLM_CONCURRENCY` (unset: the rest of the total); with `auto` the handler
  reserves `LLM_CONCURRENCY_MAX` slots and `worker.adaptive` moves its limit
  between `LLM_CONCURRENCY_MIN` and that;
- `noop` jobs finish at once and use whatever part of the total is free.

`WORKER_CONCURRENCY` unset: the total is the sum of the handlers' slots when
one of the per-handler values is set, else `WORKER_CLAIM_LIMIT` (as before).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ai_service.config import Settings

LLM = "llm"
TRANSCRIPTION = "transcription"
TRANSCRIPTION_DEFAULT_MAX = 2  # WhisperX serializes: more would only queue there
PROVIDER_GROUP = 4  # jobs per claim for handlers that wait on a provider (see Pool.batch)


class Limiter(Protocol):
    """An in-flight limit that moves at run time (`worker.adaptive`)."""

    @property
    def limit(self) -> int:
        """The current limit."""

    def observe(self, seconds: float, in_flight: int) -> None:
        """One successful provider call took `seconds` with `in_flight` jobs held."""

    async def run(self, in_flight: Callable[[], int]) -> None:
        """Adjust the limit until cancelled (`in_flight`: the jobs the handler holds)."""


@dataclass(frozen=True)
class SlotPlan:
    """The worker's total and each dedicated handler's slots (the others share the total)."""

    total: int
    caps: dict[str, int]


def plan(settings: Settings, enabled: set[str]) -> SlotPlan:
    """Split the worker's slots between the `enabled` handlers (see the module docstring)."""
    base = settings.worker_concurrency or settings.worker_claim_limit
    transcription = settings.transcription_concurrency or min(
        TRANSCRIPTION_DEFAULT_MAX, max(1, base // 4)
    )
    llm_share = max(1, base - transcription) if TRANSCRIPTION in enabled else base
    if settings.llm_concurrency_auto:
        llm = settings.llm_concurrency_max or llm_share
    else:
        llm = settings.llm_concurrency or llm_share
    caps = {
        name: cap for name, cap in ((LLM, llm), (TRANSCRIPTION, transcription)) if name in enabled
    }
    explicit = (
        settings.transcription_concurrency
        or settings.llm_concurrency > 0
        or (settings.llm_concurrency_auto and settings.llm_concurrency_max)
    )
    if settings.worker_concurrency:
        total = settings.worker_concurrency
    elif explicit and caps:
        total = sum(caps.values())
    else:
        total = base
    return SlotPlan(total, {name: min(cap, total) for name, cap in caps.items()})


class Pool:
    """One handler's slot accounting; `held` is kept by `leases.Leases`.

    A job holds its slot from its claim until its outcome is recorded. `reserved`
    counts slots promised to claims under way, `passing` the slots of recorded
    jobs that go to the jobs their batch's transaction claims (until it commits
    the pair holds the larger of the two counts, never their sum).
    """

    def __init__(
        self, name: str, cap: int, limiter: Limiter | None = None, *, dedicated: bool = False
    ) -> None:
        self.name = name
        self.cap = cap
        self.dedicated = dedicated
        self.limiter = limiter
        self.held = 0
        self.peak = 0  # most jobs held at once (audited by tests)
        self.reserved = 0
        self.passing = 0

    @property
    def limit(self) -> int:
        """The most jobs the handler may hold now: its slots, or the adaptive limit."""
        if self.limiter is None:
            return self.cap
        return max(1, min(self.cap, self.limiter.limit))

    @property
    def in_use(self) -> int:
        """Slots taken: held jobs (less those passing on) and reservations."""
        return self.held - self.passing + self.reserved

    @property
    def batch(self) -> int:
        """The most jobs one claim of the claim loop takes for this handler.

        At most half the slots, so that two groups alternate: one group's outcomes
        are written while the other's jobs run. A handler that waits on a provider
        (a dedicated pool) claims in small groups: jobs claimed together finish
        together, and a large group's answers, results and refills all land on the
        event loop at the same moment, so its last job waits for all the others
        (measured: 32 per claim halved the throughput against a 64 x 200 ms backend).
        """
        half = max(1, (self.cap + 1) // 2)
        return min(half, PROVIDER_GROUP) if self.dedicated else half
