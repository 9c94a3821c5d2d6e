"""One compact INFO line per `/api/v1` request, naming the caller by role (never its token).

    POST /api/v1/jobs 201 4.2ms role=submitter owner=telephony token_id=1f3a9c2e

The caller comes from `scope["state"]["principal"]`, left there by
`auth.AuthMiddleware` (which this middleware wraps): `auth=off` when no token
is configured, `auth=rejected` for a 401. Query strings are not logged.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ai_service.api.auth import API_PREFIX, Principal

log = logging.getLogger("ai_service.api.access")

_LOGGED_PATH = 200  # longer paths are cut (a caller may send a huge URL)


class AccessLogMiddleware:
    """Log method, path, status, duration and caller of each `/api/v1` request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(API_PREFIX)
            or not log.isEnabledFor(logging.INFO)
        ):
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
            principal = scope.get("state", {}).get("principal")
            caller = principal.describe() if isinstance(principal, Principal) else "auth=rejected"
            log.info(
                "%s %s %d %.1fms %s",
                scope["method"],
                scope["path"][:_LOGGED_PATH],
                status,
                (time.perf_counter() - start) * 1000,
                caller,
            )
