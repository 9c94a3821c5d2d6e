"""`ai-service worker`: the runner, its status server and maintenance in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator

import httpx
import uvicorn
import uvloop

from ai_service import outbound, tracing
from ai_service.claim_policy import ClaimPolicy
from ai_service.config import Settings
from ai_service.maintenance import Maintenance
from ai_service.metrics import Metrics
from ai_service.notifier import JobNotifier
from ai_service.store import Store
from ai_service.worker import adaptive, llm, noop, slots, transcription
from ai_service.worker.handler import HandlerContext, HandlerSpec
from ai_service.worker.presence import Presence
from ai_service.worker.registry import metric_labels
from ai_service.worker.runner import Runner
from ai_service.worker.status import create_status_app

log = logging.getLogger("ai_service.worker")


class _StatusServer(uvicorn.Server):
    """uvicorn without its own signal handling: the worker decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def provider_client(settings: Settings) -> httpx.AsyncClient:
    """The process-wide client for the configured providers.

    No redirects and no cookies: nothing one job's answers set may travel with
    another job's requests. Caller-supplied URLs never use it (their downloads
    get their own `outbound.OutboundClient`).
    """
    concurrency = slots.plan(settings, {slots.LLM, slots.TRANSCRIPTION}).total
    limits = httpx.Limits(max_connections=concurrency + 16, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(
        # Traced: a job's provider requests continue its caller's trace.
        transport=tracing.transport(limits),
        follow_redirects=False,
        cookies=outbound.cookieless_jar(),
    )


def handler_specs(settings: Settings) -> list[HandlerSpec]:
    """Every built-in handler, enabled or not (shown in /worker/status)."""
    return [llm.spec(settings), transcription.spec(settings), noop.spec(settings)]


def limiters(
    settings: Settings, http: httpx.AsyncClient, specs: list[HandlerSpec]
) -> dict[str, slots.Limiter]:
    """The adaptive LLM limit with `LLM_CONCURRENCY=auto` (and the LLM handler enabled)."""
    enabled = {spec.name for spec in specs if spec.enabled}
    if not settings.llm_concurrency_auto or slots.LLM not in enabled:
        return {}
    cap = slots.plan(settings, enabled).caps[slots.LLM]
    return {slots.LLM: adaptive.AdaptiveLimit(settings, http, cap)}


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run until `stop` is set, then shut down gracefully."""
    if settings.migrate_on_start:
        from ai_service import migrate

        await asyncio.to_thread(migrate.upgrade, settings.require_database_url())
    database_url = settings.require_database_url()
    concurrency = slots.plan(settings, {slots.LLM, slots.TRANSCRIPTION}).total
    store = await Store.open(
        database_url,
        min_size=1,
        max_size=max(4, min(concurrency // 4 + 2, 20)),
        backoff_base=settings.retry_backoff_base,
        backoff_max=settings.retry_backoff_max,
        policy=ClaimPolicy.of(settings.model_profile_limits, settings.owner_weights),
    )
    notifier = JobNotifier(database_url)
    metrics = Metrics(*metric_labels(settings))
    maintenance = Maintenance(store, settings, metrics)
    try:
        async with provider_client(settings) as http:
            ctx = HandlerContext(settings=settings, http=http)
            specs = handler_specs(settings)
            runner = Runner(
                store,
                ctx,
                specs,
                notifier=notifier,
                metrics=metrics,
                limiters=limiters(settings, http, specs),
            )
            server = _StatusServer(
                uvicorn.Config(
                    create_status_app(runner, store),
                    host=settings.worker_http_host,
                    port=settings.worker_http_port,
                    log_config=None,
                    access_log=False,
                    lifespan="off",
                )
            )
            # The status port first: a worker that cannot serve its probes must not
            # claim jobs (it would be killed by Kubernetes mid-job).
            server_task = asyncio.create_task(server.serve(), name="status-server")
            while not server.started:
                if server_task.done():
                    raise SystemExit(
                        f"worker status server could not listen on "
                        f"{settings.worker_http_host}:{settings.worker_http_port}"
                    )
                await asyncio.sleep(0.02)
            notifier.start()
            maintenance.start()
            runner.start()
            # The registry row (`GET /api/v1/workers`): written until the end of the
            # shutdown (it shows `stopping` meanwhile), then marked stopped.
            presence = Presence(store, runner, settings)
            presence.start()
            log.info("worker %s started (concurrency %d)", settings.worker_id, concurrency)
            await stop.wait()
            log.info("worker %s stopping", settings.worker_id)
            try:
                await runner.shutdown()
            finally:
                await presence.stop()
                server.should_exit = True
                await server_task
    finally:
        await maintenance.stop()
        await notifier.stop()
        await store.close()
    log.info("worker %s stopped", settings.worker_id)


def run(settings: Settings) -> None:
    """Entry point of `ai-service worker`: SIGTERM/SIGINT start a graceful stop.

    The event loop is uvloop's, like the API's (uvicorn picks it): the claim
    loop, the completions and the provider calls all turn on it.
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Opt-in export (`OTEL_*`); the spans still buffered go out at the end.
        traces = tracing.configure(os.environ, "ai-service-worker")
        try:
            await serve(settings, stop)
        finally:
            await asyncio.to_thread(traces.shutdown)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
