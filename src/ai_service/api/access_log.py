"""One compact INFO line per `/api/v1` request, naming the caller by role (never its token).

    POST /api/v1/jobs 201 4.2ms role=submitter owner=telephony token_id=1f3a9c2e

Written by `middleware.EdgeMiddleware` once the answer is sent, with the
caller auth identified: `auth=off` when no token is configured,
`auth=rejected` for a 401. Query strings are not logged.
"""

from __future__ import annotations

import logging

from ai_service.api.auth import Principal

log = logging.getLogger("ai_service.api.access")

_LOGGED_PATH = 200  # longer paths are cut (a caller may send a huge URL)


def enabled() -> bool:
    """Whether access lines are logged at all (LOG_LEVEL info or lower)."""
    return log.isEnabledFor(logging.INFO)


def record(
    method: str, path: str, status: int, seconds: float, principal: Principal | None
) -> None:
    """Log one answered request; `principal` None means auth refused the caller."""
    caller = principal.describe() if principal is not None else "auth=rejected"
    log.info("%s %s %d %.1fms %s", method, path[:_LOGGED_PATH], status, seconds * 1000, caller)
