"""An in-process worker for acceptance tests, wired as `ai-service worker` wires it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ai_service.metrics import Metrics
from ai_service.notifier import JobNotifier
from ai_service.store import Store
from ai_service.worker.handler import HandlerContext
from ai_service.worker.main import handler_specs, limiters, provider_client
from ai_service.worker.presence import Presence
from ai_service.worker.registry import metric_labels
from ai_service.worker.runner import Runner
from tests.helpers import make_settings


@asynccontextmanager
async def running_worker(database_url: str, **env: str) -> AsyncIterator[Runner]:
    """An in-process runner with every built-in handler, its own store and notifier.

    The heartbeat interval is the runner's own (a third of `WORKER_LEASE_TIMEOUT`).
    Its registry row (`worker.presence`) is written every 0.2 s unless the test
    says otherwise, and marked stopped at the end.
    """
    env.setdefault("WORKER_POLL_INTERVAL", "0.2")
    env.setdefault("RETRY_BACKOFF_BASE", "0.05s")
    env.setdefault("RETRY_BACKOFF_MAX", "0.1s")
    env.setdefault("WORKER_REGISTRY_INTERVAL", "0.2s")
    settings = make_settings(database_url, **env)
    # Like `ai_service.worker.main.serve`: the backoff of failed attempts is the store's.
    store = await Store.open(
        database_url,
        min_size=1,
        max_size=10,
        backoff_base=settings.retry_backoff_base,
        backoff_max=settings.retry_backoff_max,
        wait=True,
    )
    notifier = JobNotifier(database_url)
    notifier.start()
    try:
        async with provider_client(settings) as http:
            specs = handler_specs(settings)
            runner = Runner(
                store,
                HandlerContext(settings=settings, http=http),
                specs,
                notifier=notifier,
                metrics=Metrics(*metric_labels(settings)),
                limiters=limiters(settings, http, specs),
            )
            runner.start()
            presence = Presence(store, runner, settings)
            presence.start()
            try:
                yield runner
            finally:
                try:
                    await runner.shutdown()
                finally:
                    await presence.stop()
    finally:
        await notifier.stop()
        await store.close()


async def wait_until_finished(store: Store, job_ids: list[Any], timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        jobs = [await store.get_job(i) for i in job_ids]
        if all(j.status.is_terminal for j in jobs):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not finished: {[(j.id, j.status) for j in jobs]}")
        await asyncio.sleep(0.05)
