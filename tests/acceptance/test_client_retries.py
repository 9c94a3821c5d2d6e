"""The client's retries against the real API while its PostgreSQL restarts.

A dedicated embedded PostgreSQL is stopped under a running API (503
`database_unavailable`, `Retry-After: 1`) and started again a few seconds
later. Idempotent calls (GET, a create with an idempotency key) ride the
outage out and succeed once the database is back; a create without a key is
sent exactly once and raises `Unavailable`. Every request is counted by a
real HTTP transport that records what went on the wire.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import httpx
import pytest

import ai_service_client as sdk
from ai_service import embedded_db
from ai_service.api.app import create_app
from tests.helpers import make_settings, serve, wait_for
from tests.stubs import closed_port_url

JOB: dict[str, Any] = {
    "owner_service": "telephony",
    "owner_ref": "call-1",
    "task_type": "call_analysis",
    "model_profile": "m",
    "input": {"text": "hello"},
}
OUTAGE = 3.0  # seconds the database stays down
PATIENT = sdk.RetryPolicy(attempts=30, backoff_base=0.1, backoff_max=0.5, retry_after_max=1)


class CountingTransport(httpx.HTTPTransport):
    """A real HTTP transport that records (time, method, path, status) of each request."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[float, str, str, int | None]] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        status: int | None = None
        try:
            response = super().handle_request(request)
            status = response.status_code
            return response
        finally:
            with self._lock:
                self.sent.append((time.monotonic(), request.method, request.url.path, status))

    def count(self, method: str, path_start: str) -> list[int | None]:
        return [s for _, m, p, s in self.sent if m == method and p.startswith(path_start)]


async def test_idempotent_calls_are_retried_through_a_database_restart_and_a_bare_create_is_not(
    restartable: embedded_db.EmbeddedPostgres,
) -> None:
    app = create_app(make_settings(restartable.url, RESCUE_INTERVAL="3600"))
    async with serve(app) as base_url:
        transport = CountingTransport()
        client = sdk.Client(base_url, retry=PATIENT, transport=transport)
        existing = await asyncio.to_thread(client.create, **JOB)

        await asyncio.to_thread(restartable.stop, "immediate")
        stopped = time.monotonic()
        # Without a key a repeat could create a second job: one request, then the error.
        with pytest.raises(sdk.Unavailable) as refused:
            await asyncio.to_thread(client.create, **{**JOB, "owner_ref": "bare"})
        assert (refused.value.status_code, refused.value.error) == (503, "database_unavailable")
        assert transport.count("POST", "/api/v1/jobs") == [201, 503]

        keyed = asyncio.create_task(
            asyncio.to_thread(client.create, **{**JOB, "owner_ref": "keyed"}, idempotency_key="k")
        )
        read = asyncio.create_task(asyncio.to_thread(client.get, existing.id))

        def both_refused() -> bool:
            # Each call met a 503 at least once (an attempt may also wait out the outage
            # in the API's connection pool), and the outage lasted OUTAGE seconds.
            return (
                503 in transport.count("POST", "/api/v1/jobs")[2:]
                and 503 in transport.count("GET", f"/api/v1/jobs/{existing.id}")
                and time.monotonic() - stopped >= OUTAGE
            )

        await wait_for(both_refused, timeout=30, what="503s for the retried calls")
        assert not keyed.done()
        assert not read.done()
        await asyncio.to_thread(restartable.start)
        created, job = await asyncio.wait_for(asyncio.gather(keyed, read), 60)
        client.close()

    assert created.created
    assert created.owner_ref == "keyed"
    assert job.id == existing.id
    keyed_posts = transport.count("POST", "/api/v1/jobs")[2:]
    assert keyed_posts[-1] == 201
    assert set(keyed_posts[:-1]) == {503}
    assert len(keyed_posts) >= 2
    gets = transport.count("GET", f"/api/v1/jobs/{existing.id}")
    assert gets[-1] == 200
    assert set(gets[:-1]) == {503}
    # Retry-After: 1 is honoured: no two tries of the GET less than ~1 s apart.
    times = [t for t, m, p, _ in transport.sent if m == "GET"]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.9


async def test_a_refused_connection_is_retried_for_any_call_then_raises_transport_error() -> None:
    transport = CountingTransport()
    policy = sdk.RetryPolicy(attempts=3, backoff_base=0.01, backoff_max=0.02)
    with (
        sdk.Client(closed_port_url(), retry=policy, transport=transport) as client,
        pytest.raises(sdk.TransportError) as caught,
    ):
        await asyncio.to_thread(client.create, **JOB)
    assert caught.value.status_code is None
    assert caught.value.error == "transport_error"
    assert transport.count("POST", "/api/v1/jobs") == [None, None, None]  # never sent, so safe


async def test_worker_backs_off_through_a_database_restart_and_carries_on(
    restartable: embedded_db.EmbeddedPostgres,
) -> None:
    """The Worker's claims meet 503s while PostgreSQL is down; it neither dies nor spins,
    and completes the job created once the database is back."""
    app = create_app(make_settings(restartable.url, RESCUE_INTERVAL="3600"))
    async with serve(app) as base_url, sdk.AsyncClient(base_url) as client:
        claims: list[int] = []

        class Claims(httpx.AsyncHTTPTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                response = await super().handle_async_request(request)
                if request.url.path == "/api/v1/jobs/claim":
                    claims.append(response.status_code)
                return response

        policy = sdk.RetryPolicy(attempts=1, backoff_base=0.2, backoff_max=0.5)
        async with sdk.AsyncClient(base_url, retry=policy, transport=Claims()) as worker_client:
            worker = sdk.Worker(
                ["call_analysis"], lambda job: {"ok": True}, 1, client=worker_client, wait_seconds=1
            )
            serving = asyncio.create_task(worker.serve())
            await asyncio.sleep(0.5)
            await asyncio.to_thread(restartable.stop, "immediate")
            await asyncio.sleep(OUTAGE)
            await asyncio.to_thread(restartable.start)
            job = await client.create(**JOB, idempotency_key="after-restart")

            async def completed() -> bool:
                return (await client.get(job.id)).status == "completed"

            await wait_for(completed, timeout=30, what="the job completed after the restart")
            done = await client.get(job.id)
            worker.stop()
            await asyncio.wait_for(serving, 10)
    assert done.status == "completed"
    assert done.result == {"ok": True}
    assert 503 in claims
    assert claims[-1] == 200
