"""What the runner needs to know of a job handler.

Each handler module (`llm.py`, `transcription.py`) exposes
`spec(settings) -> HandlerSpec`. A handler never touches SQL: it turns a job's
input into a result dict, or raises `errors.JobFailure` with a category (stored
audio comes through `HandlerContext.audio`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

import httpx

from ai_service.config import Settings
from ai_service.jobs import Job
from ai_service.providers.gate import OPEN_GATE, Gate

if TYPE_CHECKING:
    from ai_service.store import AudioBlob
    from ai_service.worker.breaker import Breakers


class StoredAudio(Protocol):
    """Read access to the recordings stored in PostgreSQL (`store.Store` is one)."""

    async def get_audio(self, audio_id: UUID) -> AudioBlob:
        """The recording's description; raises `errors.AudioNotFound`."""
        ...

    def audio_chunks(self, audio_id: UUID) -> AsyncIterator[bytes]:
        """The recording's bytes, chunk by chunk."""
        ...


@dataclass(frozen=True)
class HandlerContext:
    """Per-process resources handed to every handler call."""

    settings: Settings
    http: httpx.AsyncClient
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("ai_service.worker"))
    # The runner's circuit breakers; None (handlers called directly): no gating.
    breakers: Breakers | None = None
    # Stored recordings (`input.audio_id`); the runner sets its store. None: unavailable.
    audio: StoredAudio | None = None

    def gate(self, endpoint: str) -> Gate:
        """The circuit breaker of `endpoint` (`llm`, `whisperx#1`, ...), or an open gate."""
        return self.breakers.gate(endpoint) if self.breakers is not None else OPEN_GATE


HandleFn = Callable[[Job, HandlerContext], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class HandlerSpec:
    """A handler, the jobs it takes, and whether it is usable with this configuration.

    `model_profiles=None` means any model profile. A disabled handler claims
    nothing; `disabled_reason` says why (shown in `/worker/status`).
    """

    name: str
    task_types: frozenset[str]
    model_profiles: frozenset[str] | None
    handle: HandleFn
    enabled: bool = True
    disabled_reason: str | None = None
    # Provider base URLs with credentials removed, for /worker/status.
    providers: dict[str, Any] = field(default_factory=dict)
    # Releases the handler's own clients (called once at shutdown).
    close: Callable[[], Awaitable[None]] | None = None
    # Deadline of one attempt in seconds, unless the job sets `timeout_seconds`;
    # None: no deadline beyond the providers' own timeouts.
    timeout: float | None = None
    # The provider endpoints (breaker names) its jobs need one of: while the circuit
    # of every one is open, the runner claims none of its jobs.
    endpoints: tuple[str, ...] = ()
