"""The `noop` handler: completes at once with `{"ok": true}`.

A canary for end-to-end checks of a deployment (create a `noop` job and watch
it complete) and the workload of the queue benchmarks. It calls nothing.
"""

from __future__ import annotations

from typing import Any

from ai_service.config import Settings
from ai_service.jobs import Job
from ai_service.worker.handler import HandlerContext, HandlerSpec
from ai_service.worker.registry import NOOP_TASK_TYPES

TASK_TYPES = NOOP_TASK_TYPES


async def handle(job: Job, ctx: HandlerContext) -> dict[str, Any]:
    return {"ok": True}


def spec(settings: Settings) -> HandlerSpec:
    """Always enabled; any model profile."""
    return HandlerSpec(
        name="noop", task_types=TASK_TYPES, model_profiles=None, handle=handle, timeout=60
    )
