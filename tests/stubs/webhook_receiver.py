"""A webhook receiver that checks every request with an independent implementation.

    with WebhookReceiver(SECRET) as receiver:
        url = receiver.url("/hooks")          # http://127.0.0.1:PORT/hooks
        receiver.fail_always("error")         # 500 to every request until cleared
        receiver.received                     # every request, in order
        receiver.by_webhook_id()              # webhook-id -> its requests

Each request is verified with the `standardwebhooks` package (the specification's
reference library, test-only), not with the service's own code: `Received.verified`
says whether its signature held. Answers 204 unless a failure is injected:
`error` (500 with a body that quotes the request's headers back), `redirect` (302
to another path of this server) or `slow` (no answer within 30 s).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.stubs import StubServer


@dataclass(frozen=True)
class Received:
    """One request the receiver got, and what it answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def payload(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


class WebhookReceiver(StubServer):
    """Receives webhooks at any path, verifying each (see the module doc)."""

    FAILURES = ("error", "redirect", "slow")

    def __init__(self, secret: str, port: int = 0, *, host: str = "127.0.0.1") -> None:
        super().__init__(port, host=host)
        self.webhook = Webhook(secret)
        self.received: list[Received] = []

    def url(self, path: str = "/hooks") -> str:
        """The full URL of `path` on this receiver."""
        return self.base_url + path

    def delivered(self) -> list[Received]:
        """The requests answered 2xx."""
        return [r for r in self.received if 200 <= r.status < 300]

    def by_webhook_id(self) -> dict[str, list[Received]]:
        """Every request grouped by its `webhook-id`, in arrival order."""
        groups: dict[str, list[Received]] = {}
        for r in self.received:
            groups.setdefault(r.webhook_id, []).append(r)
        return groups

    def build_app(self) -> Starlette:
        async def receive(request: Request) -> Response:
            body = await request.body()
            headers = dict(request.headers)
            try:
                self.webhook.verify(body, headers)
                verified = True
            except (WebhookVerificationError, ValueError):
                verified = False
            with self._lock:
                failure = self._next_failure()
            if failure == "slow":
                await self.hang(30)
            status = {None: 204, "error": 500, "redirect": 302, "slow": 204}[failure]
            self.received.append(Received(request.url.path, headers, body, verified, status))
            if failure == "error":
                # An error page quoting the request back: a long answer, of which the
                # service keeps a short excerpt only.
                return Response(f"boom {headers}", status_code=500, media_type="text/plain")
            if failure == "redirect":
                return Response(status_code=302, headers={"Location": self.url("/elsewhere")})
            return Response(status_code=204)

        return Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])
