"""The edge of HTTP: every check and record around a request, in one pure-ASGI pass.

`EdgeMiddleware` does, in this order (each refusal in the error envelope of
`error_envelope`, before any route runs):

1. HEAD answers exactly like GET (status and headers) without the body: every
   layer below sees a GET, so that auth and routing treat both alike;
2. the latency of every answer goes to `/metrics` (method, route template,
   status);
3. 414 `uri_too_long` for a path plus query string over `MAX_URL_BYTES`;
4. under `/api/v1`: the access log line (`api.access_log`), then auth (401
   without a known token, 403 when the token's role may not call the route;
   the caller's `Principal` is left in `scope["state"]["principal"]`), so that
   an unauthenticated caller learns nothing else;
5. a request body under `/api/` must be plain JSON, declared as such: 415
   `unsupported_media_type` when `Content-Type` is missing or not JSON, 400
   `malformed_json` for a compressed body (no `Content-Encoding` is decoded);
   the routes of `raw_bodies` (the audio upload) take a raw body instead,
   declared as `audio/*` or `application/octet-stream`;
6. 413 for a body over the limit, declared or streamed: `MAX_BODY_BYTES`, or
   the route's own limit for a raw body (`AUDIO_MAX_BYTES`);
7. the request goes to its `api.lean` endpoint when it has one, else to FastAPI.

It reads the request headers once and wraps `send` once; the one match of
the path against the routes serves both auth and the lean dispatch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from starlette._utils import get_route_path
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ai_service.api import access_log
from ai_service.api.auth import Authenticator, Principal, RoutePolicy, unauthorized
from ai_service.api.lean import LeanEndpoint
from ai_service.api.route_table import API_PREFIX, Matched
from ai_service.error_envelope import MALFORMED_JSON, envelope
from ai_service.errors import PayloadTooLarge
from ai_service.metrics import Metrics

# Longest path plus query string served; the longest legitimate list query is ~2 KiB.
MAX_URL_BYTES = 16 * 1024
# Scope extension set by `api.server.HttpProtocol` when it stopped reading a longer URL.
URI_TOO_LONG = "ai_service.uri_too_long"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BodyTooLarge(HTTPException):
    """Raised while reading a streamed body past the limit (FastAPI re-raises it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


@dataclass(frozen=True)
class RawBody:
    """A route that takes a raw (non-JSON) body, and the limit that applies to it.

    `setting` names the variable of the limit in the 413 answer.
    """

    limit: int
    setting: str


class EdgeMiddleware:
    """HEAD, metrics, URL limit, access log, auth, JSON body and body limit in one pass.

    `lean` maps each `/api/v1` route (by template) to its `LeanEndpoint`, for
    the routes that have one.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        authenticator: Authenticator,
        policy: RoutePolicy,
        lean: dict[tuple[str, str], LeanEndpoint],
        max_body_bytes: int,
        max_url_bytes: int = MAX_URL_BYTES,
        raw_bodies: Mapping[tuple[str, str], RawBody] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.authenticator = authenticator
        self.policy = policy
        self.lean = lean
        self.max_body_bytes = max_body_bytes
        self.max_url_bytes = max_url_bytes
        self.raw_bodies = dict(raw_bodies or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        if scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
            send = _without_body(send)
        status = 500
        logged = False

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self._url_too_long(scope):
                response = envelope(
                    414,
                    "uri_too_long",
                    f"the URL is longer than {self.max_url_bytes} bytes: shorten the query",
                    {"limit_bytes": self.max_url_bytes},
                )
                await response(scope, receive, tracking_send)
                return
            logged = scope["path"].startswith(API_PREFIX) and access_log.enabled()
            await self._serve(scope, receive, tracking_send)
        finally:
            seconds = time.perf_counter() - start
            route = scope.get("route")
            self.metrics.observe_http(
                scope["method"], getattr(route, "path", "unmatched"), status, seconds
            )
            if logged:
                principal = scope.get("state", {}).get("principal")
                access_log.record(
                    scope["method"],
                    scope["path"],
                    status,
                    seconds,
                    principal if isinstance(principal, Principal) else None,
                )

    def _url_too_long(self, scope: Scope) -> bool:
        extensions = scope.get("extensions") or {}
        path = scope.get("raw_path") or scope["path"].encode()
        length = len(path) + len(scope.get("query_string", b""))
        return URI_TOO_LONG in extensions or length > self.max_url_bytes

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization = content_type = content_encoding = content_length = None
        chunked = False
        declared = 0
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is None:
                    authorization = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = value
                declared = max(declared, _int(value))
            elif name == b"content-encoding":
                content_encoding = value
            elif name == b"transfer-encoding":
                chunked = True
        method = scope["method"]
        path = get_route_path(scope)
        matched: Matched | None = None
        if path.startswith(API_PREFIX):
            principal = self.authenticator.identify(authorization)
            if principal is None:
                await unauthorized()(scope, receive, send)
                return
            scope.setdefault("state", {})["principal"] = principal
            matched = self.policy.table.match(method, path)
            refusal = self.policy.refusal(principal, method, path, matched)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        raw = (
            self.raw_bodies.get((matched.entry.method, matched.entry.template))
            if matched is not None
            else None
        )
        has_body = chunked or (content_length is not None and _int(content_length, 1) > 0)
        if has_body and method in _BODY_METHODS and scope["path"].startswith("/api/"):
            encoding = (content_encoding or b"").strip().lower()
            if encoding not in (b"", b"identity"):
                response = envelope(
                    400,
                    "malformed_json",
                    f"{MALFORMED_JSON}: Content-Encoding is not supported, "
                    "send the body uncompressed",
                )
                await response(scope, receive, send)
                return
            if raw is not None:
                if not _is_raw(content_type):
                    response = envelope(
                        415,
                        "unsupported_media_type",
                        "the request body must be the audio file, sent with Content-Type: "
                        "audio/... or application/octet-stream",
                    )
                    await response(scope, receive, send)
                    return
            elif not _is_json(content_type):
                response = envelope(
                    415,
                    "unsupported_media_type",
                    "the request body must be JSON sent with Content-Type: application/json",
                )
                await response(scope, receive, send)
                return
        limit = raw.limit if raw is not None else self.max_body_bytes
        if declared > limit:
            await self._too_large(scope, receive, send, raw)
            return
        if chunked:
            await self._limited(scope, receive, send, matched, raw)
        else:
            # A declared length within the limit: the server reads no more than that.
            await self._dispatch(scope, receive, send, matched)

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send, matched: Matched | None
    ) -> None:
        if matched is not None:
            entry = matched.entry
            endpoint = self.lean.get((entry.method, entry.template))
            if endpoint is not None:
                await endpoint(scope, receive, send, matched.params, self.app)
                return
        await self.app(scope, receive, send)

    async def _limited(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        matched: Matched | None,
        raw: RawBody | None,
    ) -> None:
        """Dispatch with a streamed body counted: 413 once it passes the limit."""
        received = 0
        started = False
        limit = raw.limit if raw is not None else self.max_body_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if raw is not None:  # answered by the route's error handler, as such
                        raise PayloadTooLarge("body", raw.limit, raw.setting)
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._dispatch(scope, limited_receive, tracking_send, matched)
        except (BodyTooLarge, PayloadTooLarge):
            if not started:
                await self._too_large(scope, receive, send, raw)

    async def _too_large(
        self, scope: Scope, receive: Receive, send: Send, raw: RawBody | None = None
    ) -> None:
        if raw is not None:
            refusal = PayloadTooLarge("body", raw.limit, raw.setting)
            response = envelope(413, refusal.code, refusal.message, refusal.details)
            await response(scope, receive, send)
            return
        response = envelope(
            413,
            "payload_too_large",
            f"request body exceeds {self.max_body_bytes} bytes",
            {"limit_bytes": self.max_body_bytes},
        )
        await response(scope, receive, send)


def _without_body(send: Send) -> Send:
    async def without_body(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return without_body


def _int(value: bytes, invalid: int = 0) -> int:
    try:
        return int(value)
    except ValueError:
        return invalid


def _is_raw(content_type: bytes | None) -> bool:
    """`audio/<subtype>` or `application/octet-stream`, parameters ignored."""
    if content_type is None:
        return False
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/octet-stream" or (
        media_type.startswith(b"audio/") and len(media_type) > len(b"audio/")
    )


def _is_json(content_type: bytes | None) -> bool:
    """`application/json` or `application/<anything>+json`, parameters ignored."""
    if content_type is None:
        return False
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )
