"""`create_app(settings)`: the FastAPI application and the resources it owns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ai_service import error_envelope, migrate, outbound
from ai_service.api import auth
from ai_service.api import docs as api_docs
from ai_service.api.completions import CompletionBatcher
from ai_service.api.lean import LeanEndpoint
from ai_service.api.middleware import EdgeMiddleware, RawBody
from ai_service.api.routes_audio import UPLOAD_ROUTE
from ai_service.api.routes_audio import router as audio_router
from ai_service.api.routes_infra import router as infra_router
from ai_service.api.routes_jobs import router as jobs_router
from ai_service.api.routes_ops import probes, stats_router
from ai_service.api.routes_reports import router as reports_router
from ai_service.api.routes_workers import router as workers_router
from ai_service.api.waits import JobWaits
from ai_service.claim_policy import ClaimPolicy
from ai_service.config import Settings
from ai_service.maintenance import Maintenance
from ai_service.metrics import Metrics
from ai_service.notifier import JobNotifier
from ai_service.store import Store
from ai_service.ui import routes as ui_routes
from ai_service.worker.registry import metric_labels

log = logging.getLogger("ai_service.api")


def create_app(settings: Settings, *, run_maintenance: bool = True) -> FastAPI:
    """Build the API. The lifespan opens the pool (and migrates when configured)."""
    database_url = settings.require_database_url()
    metrics = Metrics(*metric_labels(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        auth.announce(settings)  # once per process, on every start
        if settings.migrate_on_start:
            await asyncio.to_thread(migrate.upgrade, database_url)
        store = await Store.open(
            database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            backoff_base=settings.retry_backoff_base,
            backoff_max=settings.retry_backoff_max,
            policy=ClaimPolicy.of(settings.model_profile_limits, settings.owner_weights),
        )
        waits = JobWaits(store)
        waits.start()
        notifier = JobNotifier(database_url, on_finished=waits.finished)
        notifier.start()
        maintenance = Maintenance(store, settings, metrics)
        if run_maintenance:
            maintenance.start()
        # No cookies: a probe's answer must not change the next probe's request.
        http = httpx.AsyncClient(
            timeout=settings.provider_probe_timeout,
            follow_redirects=False,
            cookies=outbound.cookieless_jar(),
        )
        app.state.store = store
        app.state.completions = CompletionBatcher(store)
        app.state.notifier = notifier
        app.state.waits = waits
        app.state.maintenance = maintenance
        app.state.http = http
        try:
            yield
        finally:
            await maintenance.stop()
            await notifier.stop()
            await waits.stop()
            await http.aclose()
            await store.close()
            metrics.close()

    app = FastAPI(
        title="AI Service",
        version="0.1.0",
        description="Job service for AI workloads (LLM chat, transcription) on PostgreSQL.",
        lifespan=lifespan,
        # FastAPI's pages load their assets from a CDN; `api_docs` serves its own.
        docs_url=None,
        redoc_url=None,
        # `/api/v1/jobs/` is a 404, not a redirect to a URL built from the Host header.
        redirect_slashes=False,
    )
    app.openapi = lambda: _openapi_with_bearer(app)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.notifier = None
    error_envelope.install(app, log)
    api_docs.install(app)
    # The dashboard: outside /api/v1, it checks its own session cookie (see ai_service.ui).
    ui_routes.install(app)
    app.include_router(probes)
    app.include_router(jobs_router)
    app.include_router(audio_router)
    app.include_router(stats_router)
    app.include_router(infra_router)
    app.include_router(reports_router)
    app.include_router(workers_router)
    # One pure-ASGI pass at the edge (see `api.middleware`): HEAD, metrics, URL
    # limit, access log, auth, JSON body, body limit, then the lean endpoints.
    policy = auth.RoutePolicy.for_app(app)
    lean = {
        (entry.method, entry.template): endpoint
        for entry in policy.table.entries
        if entry.route is not None and (endpoint := LeanEndpoint.of(entry.route, app)) is not None
    }
    app.add_middleware(
        EdgeMiddleware,
        metrics=metrics,
        authenticator=auth.Authenticator(settings),
        policy=policy,
        lean=lean,
        max_body_bytes=settings.max_body_bytes,
        # The audio upload streams its raw body to PostgreSQL: its own, larger limit.
        raw_bodies={UPLOAD_ROUTE: RawBody(settings.audio_max_bytes, "AUDIO_MAX_BYTES")},
    )
    return app


def _openapi_with_bearer(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the bearer scheme, roles and 403s on `/api/v1/*` operations."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        auth.document(schema)
        app.openapi_schema = schema
    return app.openapi_schema


def create_app_from_env() -> FastAPI:
    """App factory for uvicorn worker processes (`HTTP_WORKERS` > 1), one per process."""
    import os

    from ai_service import heap
    from ai_service.config import load_settings

    app = create_app(load_settings(os.environ))
    heap.freeze()
    return app
