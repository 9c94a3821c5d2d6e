"""`create_app(settings)`: the FastAPI application and the resources it owns."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ai_service import migrate, outbound
from ai_service.api import auth
from ai_service.api import docs as api_docs
from ai_service.api import errors as api_errors
from ai_service.api.access_log import AccessLogMiddleware
from ai_service.api.middleware import HeadMiddleware, JsonBodyMiddleware, UrlLimitMiddleware
from ai_service.api.routes_infra import router as infra_router
from ai_service.api.routes_jobs import router as jobs_router
from ai_service.api.routes_ops import probes, stats_router
from ai_service.config import Settings
from ai_service.maintenance import Maintenance
from ai_service.metrics import Metrics
from ai_service.notifier import JobNotifier
from ai_service.store import Store
from ai_service.worker.registry import metric_labels

log = logging.getLogger("ai_service.api")


class BodyTooLarge(HTTPException):
    """Raised while reading a streamed body past the limit (FastAPI re-raises it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


class BodyLimitMiddleware:
    """Refuse request bodies over `limit` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = api_errors.envelope(
            413,
            "payload_too_large",
            f"request body exceeds {self.limit} bytes",
            {"limit_bytes": self.limit},
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await too_large(scope, receive, send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await too_large(scope, receive, send)


class MetricsMiddleware:
    """Observe request latency by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.observe_http(scope["method"], path, status, time.perf_counter() - start)


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
        )
        notifier = JobNotifier(database_url)
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
        app.state.notifier = notifier
        app.state.maintenance = maintenance
        app.state.http = http
        try:
            yield
        finally:
            await maintenance.stop()
            await notifier.stop()
            await http.aclose()
            await store.close()

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
    api_errors.install(app)
    api_docs.install(app)
    app.include_router(probes)
    app.include_router(jobs_router)
    app.include_router(stats_router)
    app.include_router(infra_router)
    # The last added runs first: HEAD becomes GET for everything below it, metrics
    # see every answer, auth comes before the body checks so that an
    # unauthenticated caller learns nothing else, and the access log wraps auth to
    # name the caller it identified.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(
        auth.AuthMiddleware,
        authenticator=auth.Authenticator(settings),
        policy=auth.RoutePolicy.for_app(app),
    )
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(UrlLimitMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(HeadMiddleware)
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
    """App factory for uvicorn worker processes (`HTTP_WORKERS` > 1)."""
    import os

    from ai_service.config import load_settings

    return create_app(load_settings(os.environ))
