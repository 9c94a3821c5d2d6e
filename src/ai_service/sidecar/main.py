"""`ai-service sidecar`: serve the telemetry app on `SIDECAR_HTTP_HOST:SIDECAR_HTTP_PORT`."""

from __future__ import annotations

import uvicorn

from ai_service.config import Settings
from ai_service.sidecar.app import create_app


def run(settings: Settings) -> None:
    """Serve the sidecar until SIGTERM/SIGINT (uvicorn handles the signals)."""
    uvicorn.run(
        create_app(settings),
        host=settings.sidecar_http_host,
        port=settings.sidecar_http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
