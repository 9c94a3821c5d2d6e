"""The dashboard's session cookie and CSRF tokens.

A login exchanges a token (admin or reader) for a cookie that holds no token:
`role|owner|token_id|expiry` and an HMAC-SHA256 of it. The HMAC key is derived
from the configured tokens, so every API process of a deployment accepts the
cookies of the others, and changing the tokens logs everybody out. A CSRF token
is the HMAC of the cookie under a second derived key: it is bound to the session,
and forms carry it back (`check_csrf`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

from ai_service.api.auth import OPEN, Principal
from ai_service.config import Role, Settings

COOKIE = "ai_service_ui"
COOKIE_PATH = "/ui"
# Roles that may log in: both see everything; only an admin may act.
LOGIN_ROLES = frozenset({Role.ADMIN, Role.READER})
_SESSION_LABEL = b"ai-service ui session v1"
_CSRF_LABEL = b"ai-service ui csrf v1"


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in dashboard user (or everyone, with auth off)."""

    principal: Principal
    expires_at: float  # Unix time
    cookie: str  # the signed value the CSRF token is bound to

    @property
    def may_act(self) -> bool:
        """Whether this session may retry and cancel (admins only)."""
        return self.principal.role is Role.ADMIN


class SessionKeys:
    """Signs and verifies the session cookie and the CSRF tokens of one deployment."""

    def __init__(self, settings: Settings) -> None:
        tokens = sorted(
            [settings.ai_service_token or ""] + [t.token for t in settings.ai_service_tokens]
        )
        secret = hashlib.sha256("\0".join(tokens).encode()).digest()
        self._session_key = hmac.new(secret, _SESSION_LABEL, hashlib.sha256).digest()
        self._csrf_key = hmac.new(secret, _CSRF_LABEL, hashlib.sha256).digest()
        self.ttl = settings.ui_session_ttl
        self.auth_on = settings.ai_service_token is not None or bool(settings.ai_service_tokens)

    def issue(self, principal: Principal, now: float | None = None) -> str:
        """The cookie value of a new session for `principal`."""
        expires = int((time.time() if now is None else now) + self.ttl)
        fields = [
            principal.role.value,
            principal.owner_service or "",
            principal.token_id or "",
            str(expires),
        ]
        payload = base64.urlsafe_b64encode("|".join(fields).encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload)}"

    def open(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session of a cookie value; None when missing, forged, malformed or expired.

        With auth off everyone has the open session (no login).
        """
        if not self.auth_on:
            return Session(OPEN, float("inf"), "open")
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
            role, owner, tid, expires = text.split("|")
            principal = Principal(Role(role), owner or None, tid or None)
            expires_at = float(int(expires))
        except ValueError:
            return None
        if expires_at <= (time.time() if now is None else now):
            return None
        if principal.role not in LOGIN_ROLES:
            return None
        return Session(principal, expires_at, cookie)

    def csrf_token(self, session: Session) -> str:
        """The CSRF token of the forms of `session`."""
        digest = hmac.new(self._csrf_key, session.cookie.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def check_csrf(self, session: Session, given: str | None) -> bool:
        """Whether a form's CSRF token belongs to `session` (constant time)."""
        return given is not None and hmac.compare_digest(
            given.encode(), self.csrf_token(session).encode()
        )

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._session_key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")
