"""Who calls `/api/v1/*` and what they may do.

Tokens: `AI_SERVICE_TOKEN` is the admin token of the seed; `AI_SERVICE_TOKENS`
adds scoped tokens (`token:role[:owner_service]`). With neither configured,
auth is off and every caller acts as an admin (local development; a warning
is logged at start).

Two layers:

- `edge.EdgeMiddleware` (pure ASGI, before the body is read or a route runs)
  asks `Authenticator.identify` and `RoutePolicy.refusal`: 401 without a
  known token, 403 when the token's role may not call the route
  (`ROUTE_RULES`, decided from method and path). It leaves the caller's
  `Principal` in `scope["state"]["principal"]`.
- The routes confine a submitter to its `owner_service` where that needs the
  body or the job row (`scoped_owner`, `Principal.owns`): another
  owner's job answers 404 (its existence is not revealed), a request naming
  another owner answers 403.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ai_service import error_envelope, errors
from ai_service.api import errors as api_errors
from ai_service.api.route_table import API_PREFIX, Matched, RouteTable
from ai_service.config import Role, Settings, token_id

log = logging.getLogger("ai_service.api.auth")

ALL_ROLES = frozenset(Role)
_SHOWN_PATH = 200  # longest request path quoted in a 403 message


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: its role, the owner it is confined to, its token's name."""

    role: Role
    owner_service: str | None = None  # submitters: the only owner_service they may touch
    token_id: str | None = None  # None when auth is off

    def describe(self) -> str:
        """`role=... owner=... token_id=...` for logs (never the token)."""
        if self.token_id is None:
            return "auth=off"
        owner = f" owner={self.owner_service}" if self.owner_service is not None else ""
        return f"role={self.role.value}{owner} token_id={self.token_id}"

    def owns(self, owner_service: str) -> bool:
        """Whether this caller may touch jobs of `owner_service`."""
        return self.owner_service is None or owner_service == self.owner_service


# Auth off: everyone may do everything (the seed's rule for local development).
OPEN = Principal(Role.ADMIN)


def bearer_token(authorization: bytes | None) -> bytes:
    """The token of an `Authorization: Bearer <token>` value (scheme case-insensitive), or b""."""
    scheme, _, given = (authorization or b"").partition(b" ")
    return given.strip() if scheme.lower() == b"bearer" else b""


class Authenticator:
    """Maps a bearer token to its `Principal`, comparing against every token in constant time."""

    def __init__(self, settings: Settings) -> None:
        # SHA-256 digests: equal lengths, so compare_digest reveals nothing about
        # a configured token's length either.
        self._entries: list[tuple[bytes, Principal]] = []
        if settings.ai_service_token is not None:
            self._add(settings.ai_service_token, Principal(Role.ADMIN))
        for scoped in settings.ai_service_tokens:
            self._add(scoped.token, Principal(scoped.role, scoped.owner_service))

    def _add(self, token: str, principal: Principal) -> None:
        named = Principal(principal.role, principal.owner_service, token_id(token))
        self._entries.append((hashlib.sha256(token.encode()).digest(), named))

    @property
    def enabled(self) -> bool:
        """Whether any token is configured (otherwise auth is off)."""
        return bool(self._entries)

    def identify(self, authorization: bytes | None) -> Principal | None:
        """The caller behind an `Authorization` header value; None for a missing or wrong token."""
        if not self._entries:
            return OPEN
        given = hashlib.sha256(bearer_token(authorization)).digest()
        found: Principal | None = None
        # No early exit: every configured token is compared, whichever matches.
        for expected, principal in self._entries:
            if hmac.compare_digest(given, expected):
                found = principal
        return found


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may call one route.

    `other_owner`: what a submitter gets when the request concerns another
    owner_service (403 when the request names it, 404 when a job id points at
    it); None where submitters may not call the route at all.
    """

    roles: frozenset[Role]
    other_owner: int | None = None

    @property
    def may_forbid(self) -> bool:
        """Whether the route can answer 403 (some role refused, or the owner named)."""
        return self.roles != ALL_ROLES or self.other_owner == 403

    def describe(self) -> str:
        """The rule in words, for the OpenAPI document."""
        names = [r.value for r in Role if r in self.roles]
        text = "Roles: " + ", ".join(names) + "."
        if self.other_owner == 403:
            text += " A submitter acts only for its own owner_service (another one: 403)."
        elif self.other_owner == 404:
            text += " A submitter sees only jobs of its own owner_service (another one's: 404)."
        return text


_A, _S, _W, _R = Role.ADMIN, Role.SUBMITTER, Role.WORKER, Role.READER
_SUBMIT = frozenset({_A, _S})
_WORK = frozenset({_A, _W})
_OPS_READ = frozenset({_A, _W, _R})
_REPORT_READ = frozenset({_A, _S, _R})

# Every /api/v1 route, keyed by method and path template as the routes declare
# them. `RoutePolicy.for_app` refuses to build an app with a route missing here.
ROUTE_RULES: dict[tuple[str, str], Rule] = {
    ("POST", "/api/v1/jobs"): Rule(_SUBMIT, 403),
    ("POST", "/api/v1/jobs/batch"): Rule(_SUBMIT, 403),
    ("GET", "/api/v1/jobs"): Rule(ALL_ROLES, 403),
    ("GET", "/api/v1/jobs/{job_id}"): Rule(ALL_ROLES, 404),
    ("GET", "/api/v1/jobs/{job_id}/deliveries"): Rule(ALL_ROLES, 404),
    ("POST", "/api/v1/jobs/retry"): Rule(_SUBMIT, 403),
    ("POST", "/api/v1/jobs/cancel"): Rule(_SUBMIT, 403),
    ("POST", "/api/v1/jobs/{job_id}/retry"): Rule(_SUBMIT, 404),
    ("POST", "/api/v1/jobs/{job_id}/cancel"): Rule(_SUBMIT, 404),
    ("POST", "/api/v1/jobs/claim"): Rule(_WORK),
    ("POST", "/api/v1/jobs/complete"): Rule(_WORK),
    ("POST", "/api/v1/jobs/{job_id}/complete"): Rule(_WORK),
    ("POST", "/api/v1/jobs/{job_id}/fail"): Rule(_WORK),
    ("POST", "/api/v1/jobs/{job_id}/heartbeat"): Rule(_WORK),
    ("POST", "/api/v1/jobs/{job_id}/release"): Rule(_WORK),
    # Recordings for transcription jobs: uploaded by whoever may create the jobs (for
    # its own owner_service), read back by anyone who may read those jobs' inputs.
    ("POST", "/api/v1/audio"): Rule(_SUBMIT, 403),
    ("GET", "/api/v1/audio/{audio_id}"): Rule(ALL_ROLES, 404),
    # Queue-wide figures and infrastructure: not for submitters (they would
    # see other owners' load); their own jobs are in the list.
    ("GET", "/api/v1/stats"): Rule(_OPS_READ),
    ("GET", "/api/v1/workers"): Rule(_OPS_READ),
    ("GET", "/api/v1/providers/status"): Rule(_OPS_READ),
    ("GET", "/api/v1/infra/status"): Rule(_OPS_READ),
    # The transcription A/B report: readers and admins see every owner; a submitter
    # its own owner_service only, like the job list. Workers have no use for it.
    ("GET", "/api/v1/reports/transcription"): Rule(_REPORT_READ, 403),
    ("GET", "/api/v1/reports/transcription/jobs/{job_id}"): Rule(_REPORT_READ, 404),
}


class RoutePolicy:
    """`ROUTE_RULES` over the app's `/api/v1` routes, matched as the router matches."""

    def __init__(self, table: RouteTable, rules: Mapping[tuple[str, str], Rule]) -> None:
        self.table = table
        self._rules = rules

    @classmethod
    def for_app(
        cls, app: FastAPI, rules: Mapping[tuple[str, str], Rule] = ROUTE_RULES
    ) -> RoutePolicy:
        """Compile the rules; a route without a rule (or a rule without a route) is a bug."""
        table = RouteTable.for_app(app)
        routes = [(e.method, e.template) for e in table.entries]
        missing = sorted(set(routes) - set(rules))
        stale = sorted(set(rules) - set(routes))
        if missing or stale:
            raise RuntimeError(
                f"auth.ROUTE_RULES does not match the routes: no rule for {missing}, "
                f"no route for {stale}"
            )
        return cls(table, dict(rules))

    def match(self, method: str, path: str) -> tuple[str, Rule] | None:
        """The route template and rule that will handle a request, or None."""
        matched = self.table.match(method, path)
        if matched is None:
            return None
        template = matched.entry.template
        return template, self._rules[(matched.entry.method, template)]

    def refusal(
        self, principal: Principal, method: str, path: str, matched: Matched | None
    ) -> JSONResponse | None:
        """The 403 answer when `principal` may not call the route `matched` (None: it may).

        Unknown paths under /api/v1 are for admins only (fail closed).
        """
        if principal.role is Role.ADMIN:
            return None
        if matched is not None:
            entry = matched.entry
            if principal.role in self._rules[(entry.method, entry.template)].roles:
                return None
        shown = matched.entry.template if matched is not None else path[:_SHOWN_PATH]
        refusal = forbidden(principal, method, shown)
        return error_envelope.envelope(403, refusal.code, refusal.message, refusal.details)


def forbidden(principal: Principal, method: str, route: str) -> errors.Forbidden:
    """The 403 for a role that may not call a route."""
    return errors.Forbidden(
        f"role {principal.role.value} may not {method} {route}",
        {"role": principal.role.value, "method": method, "route": route},
    )


def unauthorized() -> JSONResponse:
    """The 401 answer for a missing or unknown bearer token."""
    return error_envelope.envelope(
        401,
        "unauthorized",
        "missing or wrong bearer token",
        headers={"WWW-Authenticate": "Bearer"},
    )


# -- owner_service confinement (in the routes) -------------------------------------


def scoped_owner(principal: Principal, requested: str | None, field: str) -> str | None:
    """The owner_service to apply: a submitter's own when it names none, 403 for another.

    `field` names the offending value in the message (`owner_service`,
    `jobs[3].owner_service`).
    """
    own = principal.owner_service
    if own is None or requested is None:
        return own if own is not None else requested
    if requested != own:
        raise errors.Forbidden(
            f"{field}: a submitter token of owner_service {own!r} may not act for "
            f"owner_service {requested!r}",
            {"field": field, "owner_service": own},
        )
    return requested


def require_all_allowed(principal: Principal, all_jobs: bool) -> None:
    """`"all": true` (every job, of every owner) is for admins only."""
    if all_jobs and principal.role is not Role.ADMIN:
        raise errors.Forbidden(
            f'all: role {principal.role.value} may not act on every job ("all": true is '
            "admin-only); name a filter instead",
            {"field": "all", "role": principal.role.value},
        )


# -- start-up and documentation ---------------------------------------------------


def announce(settings: Settings) -> None:
    """Log how `/api/v1` is protected; a prominent warning when it is not."""
    if not settings.auth_enabled:
        log.warning(
            "AUTH IS OFF: neither AI_SERVICE_TOKEN nor AI_SERVICE_TOKENS is set, so every "
            "/api/v1 request is accepted without a token. Fine for local development only: "
            "set AI_SERVICE_TOKEN before anyone else can reach this port."
        )
        return
    roles = [t.role.value for t in settings.ai_service_tokens]
    counts = ", ".join(f"{r.value}={roles.count(r.value)}" for r in Role if r.value in roles)
    log.info(
        "auth on: admin token %s, %d scoped token(s)%s",
        "set" if settings.ai_service_token is not None else "unset",
        len(roles),
        f" ({counts})" if counts else "",
    )


def document(schema: dict[str, Any], rules: Mapping[tuple[str, str], Rule] = ROUTE_RULES) -> None:
    """Add the bearer scheme, each operation's roles and its 403 answer to an OpenAPI document."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "AI_SERVICE_TOKEN (admin) or a scoped token of AI_SERVICE_TOKENS, when configured"
        ),
    }
    for path, operations in schema["paths"].items():
        if not path.startswith(API_PREFIX):
            continue
        for method, operation in operations.items():
            operation["security"] = [{"bearer": []}]
            rule = rules.get((method.upper(), path))
            if rule is None:
                continue
            described = operation.get("description", "")
            operation["description"] = f"{described}\n\n{rule.describe()}".strip()
            if rule.may_forbid:
                operation.setdefault("responses", {})["403"] = {
                    "description": api_errors.ERROR_RESPONSES[403]["description"],
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}
                    },
                }
