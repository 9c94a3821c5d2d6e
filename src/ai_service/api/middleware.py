"""ASGI middleware for the edges of HTTP: HEAD, over-long URLs and how a body is sent.

Each answers in the error envelope of `api.errors`, before any route runs.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ai_service.api.errors import MALFORMED_JSON, envelope

# Longest path plus query string served; the longest legitimate list query is ~2 KiB.
MAX_URL_BYTES = 16 * 1024
# Scope extension set by `api.server.HttpProtocol` when it stopped reading a longer URL.
URI_TOO_LONG = "ai_service.uri_too_long"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class HeadMiddleware:
    """HEAD answers exactly like GET (status and headers) without the body.

    FastAPI routes declare GET only (a HEAD would be 405): every layer below this
    one sees a GET, so that auth and routing treat both alike.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


class UrlLimitMiddleware:
    """414 `uri_too_long` for a path plus query string over `limit` bytes."""

    def __init__(self, app: ASGIApp, limit: int = MAX_URL_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            extensions = scope.get("extensions") or {}
            path = scope.get("raw_path") or scope["path"].encode()
            length = len(path) + len(scope.get("query_string", b""))
            if URI_TOO_LONG in extensions or length > self.limit:
                response = envelope(
                    414,
                    "uri_too_long",
                    f"the URL is longer than {self.limit} bytes: shorten the query",
                    {"limit_bytes": self.limit},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class JsonBodyMiddleware:
    """A request body under `/api/` must be plain JSON, declared as such.

    415 `unsupported_media_type` when `Content-Type` is missing or not JSON (instead
    of a validation error about a body that was never read as JSON); 400
    `malformed_json` for a compressed body (no `Content-Encoding` is decoded).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in _BODY_METHODS
            and scope["path"].startswith("/api/")
        ):
            headers = dict(scope["headers"])
            if _has_body(headers):
                encoding = headers.get(b"content-encoding", b"").strip().lower()
                if encoding not in (b"", b"identity"):
                    response = envelope(
                        400,
                        "malformed_json",
                        f"{MALFORMED_JSON}: Content-Encoding is not supported, "
                        "send the body uncompressed",
                    )
                    await response(scope, receive, send)
                    return
                if not _is_json(headers.get(b"content-type")):
                    response = envelope(
                        415,
                        "unsupported_media_type",
                        "the request body must be JSON sent with Content-Type: application/json",
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _has_body(headers: dict[bytes, bytes]) -> bool:
    if b"transfer-encoding" in headers:
        return True
    try:
        return int(headers.get(b"content-length", b"0")) > 0
    except ValueError:
        return True


def _is_json(content_type: bytes | None) -> bool:
    """`application/json` or `application/<anything>+json`, parameters ignored."""
    if content_type is None:
        return False
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )
