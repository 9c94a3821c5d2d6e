"""The LLM handler's HTTP clients: one connection pool per few requests in flight."""

from __future__ import annotations

import pytest

from ai_service.worker.llm import CONNECTIONS_PER_CLIENT, LLMHandler, client_shards
from tests.helpers import make_settings


@pytest.mark.parametrize(
    ("env", "shards"),
    [
        ({}, 1),  # the default 4 slots
        ({"WORKER_CONCURRENCY": "64"}, 64 // CONNECTIONS_PER_CLIENT),
        ({"WORKER_CONCURRENCY": "65"}, 9),
        ({"LLM_CONCURRENCY": "auto", "LLM_CONCURRENCY_MAX": "256"}, 32),
        ({"WORKER_CONCURRENCY": "1000"}, 32),
    ],
)
def test_one_client_per_few_requests_in_flight(env: dict[str, str], shards: int) -> None:
    assert client_shards(make_settings(**env)) == shards


async def test_each_client_has_its_own_connection_pool() -> None:
    handler = LLMHandler(
        make_settings(LLM_BASE_URL="http://127.0.0.1:9/v1", WORKER_CONCURRENCY="32")
    )
    try:
        assert len(handler.clients) == 4
        assert len({id(c) for c in handler.clients}) == 4  # separate pools
    finally:
        await handler.close()
