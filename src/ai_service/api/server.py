"""The HTTP protocol the API is served with: uvicorn's httptools one, with a URL limit.

httptools cannot parse a URL longer than 64 KiB (its offsets are 16-bit), and
uvicorn then answers a bare `400 Invalid HTTP request received.` in plain text.
This protocol stops collecting the URL past `MAX_URL_BYTES` and marks the request
instead, so that the app answers 414 `uri_too_long` in the error envelope
(`middleware.EdgeMiddleware`). It also bounds the memory one URL can take.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ai_service.api.middleware import MAX_URL_BYTES, URI_TOO_LONG


class HttpProtocol(HttpToolsProtocol):
    """`uvicorn.Config(http=HttpProtocol)`: httptools that hands over-long URLs to the app."""

    def on_url(self, url: bytes) -> None:
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        extensions = scope.setdefault("extensions", {})
        if URI_TOO_LONG in extensions:
            return  # the rest of a URL already refused
        if len(self.url) + len(url) > MAX_URL_BYTES:
            extensions[URI_TOO_LONG] = {}
            self.url = b"/"  # something httptools can parse; the app answers 414
            return
        super().on_url(url)
