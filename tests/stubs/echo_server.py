"""A server that answers every request with an error quoting the request back.

    with EchoServer(status=401) as echo:
        echo.base_url                 # http://127.0.0.1:PORT
        echo.seen                     # [(method, full URL, headers), ...]

The body is the common error shape, `{"error": {"message": ...}}`, whose
message quotes the request's `Authorization` and `Cookie` headers and its
full URL (query string included): what a careless proxy or a debugging
server does, and the worst case for secrets in error texts.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.stubs import StubServer


class EchoServer(StubServer):
    """Answers `status` to any method and path, echoing credentials in the body."""

    def __init__(self, status: int = 401) -> None:
        super().__init__()
        self.status = status
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    def build_app(self) -> Starlette:
        async def echo(request: Request) -> Response:
            await request.body()
            headers = dict(request.headers)
            self.seen.append((request.method, str(request.url), headers))
            message = (
                f"rejected: authorization={headers.get('authorization', '')} "
                f"cookie={headers.get('cookie', '')} url={request.url}"
            )
            return JSONResponse({"error": {"message": message}}, status_code=self.status)

        methods = ["GET", "POST", "PUT", "DELETE", "HEAD"]
        return Starlette(routes=[Route("/{path:path}", echo, methods=methods)])
