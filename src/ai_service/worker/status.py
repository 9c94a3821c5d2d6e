"""The worker's small HTTP server: `/healthz`, `/readyz`, `/worker/status`, `/metrics`.

Open (no token), for Kubernetes probes and operators.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from ai_service import errors
from ai_service.store import Store
from ai_service.worker.runner import Runner

READY_TIMEOUT = 2.0


def create_status_app(runner: Runner, store: Store) -> FastAPI:
    """The status app for one runner (no lifespan: the worker owns the resources)."""
    app = FastAPI(title="AI Service worker", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Any:
        if runner.stopping:
            return _unready("shutting_down", "the worker is shutting down")
        if not runner.healthy:
            return _unready("worker_stalled", "a claim or heartbeat loop stopped; see the log")
        try:
            await asyncio.wait_for(store.ping(), READY_TIMEOUT)
        except (errors.DatabaseUnavailable, TimeoutError):
            return _unready("database_unavailable", "PostgreSQL did not answer within 2 s")
        return {"status": "ready"}

    @app.get("/worker/status")
    async def worker_status() -> dict[str, Any]:
        return runner.status()

    @app.get("/metrics")
    async def metrics() -> Response:
        runner.refresh_gauges()
        return Response(
            runner.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return app


def _unready(code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, "details": {}}, status_code=503)
