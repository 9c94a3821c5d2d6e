"""`ai-service worker`'s entry point: the event loop it runs on."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

import ai_service.worker.main as worker_main
from ai_service.config import Settings
from tests.helpers import make_settings


def test_the_worker_runs_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    loops: list[type[asyncio.AbstractEventLoop]] = []

    async def serve(settings: Settings, stop: asyncio.Event) -> None:
        loops.append(type(asyncio.get_running_loop()))

    monkeypatch.setattr(worker_main, "serve", serve)
    worker_main.run(make_settings("postgresql://unused/db"))
    assert loops == [uvloop.Loop]
