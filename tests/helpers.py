"""Test helpers: settings, serving an ASGI app on loopback, job factories."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvicorn
from starlette.types import ASGIApp

from ai_service.config import Settings, load_settings
from ai_service.jobs import NewJob

# The most leases held at once, from the jobs' own timestamps: a lease starts with
# its claim's transaction (started_at) and ends with its completion's
# (finished_at). At equal times the ends count first: a completion and the claim
# that refills its slot share one transaction, hence one now().
PEAK_LEASES = """
SELECT coalesce(max(held), 0) FROM (
    SELECT sum(delta) OVER (ORDER BY at, delta ROWS UNBOUNDED PRECEDING) AS held
      FROM (SELECT started_at AS at, 1 AS delta FROM jobs
            UNION ALL
            SELECT finished_at, -1 FROM jobs) AS events
) AS running
"""


def url_for_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def make_settings(database_url: str | None = None, **env: str) -> Settings:
    """Settings as the process would read them, from env-style names."""
    values = {"MIGRATE_ON_START": "false", "WORKER_ID": "test-worker"}
    if database_url:
        values["DATABASE_URL"] = database_url
    values.update(env)
    return load_settings(values)


def new_job(**overrides: Any) -> NewJob:
    """A valid NewJob; override any field."""
    fields: dict[str, Any] = {
        "owner_service": "telephony",
        "owner_ref": "beeline/call-1",
        "task_type": "llm_chat",
        "model_profile": "qwen2.5-14b",
        "input": {"user": "Classify this text"},
    }
    fields.update(overrides)
    return NewJob(**fields)


def job_body(**overrides: Any) -> dict[str, Any]:
    """A valid JSON body for POST /api/v1/jobs."""
    body: dict[str, Any] = {
        "owner_service": "telephony",
        "owner_ref": "beeline/call-1",
        "task_type": "llm_chat",
        "model_profile": "qwen2.5-14b",
        "input": {"user": "Classify this text"},
    }
    body.update(overrides)
    return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serve(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on an ephemeral 127.0.0.1 port; yields the base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the startup error
            raise RuntimeError("server exited before starting")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def wait_for(
    condition: Callable[[], Any], timeout: float = 10, what: str = "condition"
) -> None:
    """Poll `condition` (sync or async) every 20 ms until it is truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
