"""Probes of the AI servers: the models URL, secret-free error texts, and the WhisperX
probe against loopback servers (up, busy transcribing, refusing, never connecting).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from ai_service.providers.probes import clean_text, describe_error, models_path, probe_whisperx
from ai_service.urls import request_target
from tests.stubs import closed_port_url
from tests.stubs.whisperx_server import WhisperXStub, start_transcription


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://h:8000", "http://h:8000/v1/models"),
        ("http://h:8000/", "http://h:8000/v1/models"),
        ("http://h:8000/v1", "http://h:8000/v1/models"),
        ("http://h:8000/v1/", "http://h:8000/v1/models"),
        ("http://h/proxy/v1?api_key=x", "http://h/proxy/v1/models?api_key=x"),
    ],
)
def test_models_url_accepts_base_urls_with_or_without_v1(base: str, expected: str) -> None:
    url, _ = request_target(base, models_path(base))
    assert str(url) == expected


def test_clean_text_redacts_urls_and_masks_known_secrets() -> None:
    text = (
        "failed GET http://bob:hunter22@10.0.0.1:8000/v1/models?api_key=qs-secret "
        "with key sk-live-1234"
    )
    cleaned = clean_text(text, ["sk-live-1234"])
    for secret in ("bob", "hunter22", "qs-secret", "sk-live-1234"):
        assert secret not in cleaned
    assert "10.0.0.1:8000/v1/models" in cleaned


def test_clean_text_shortens_long_bodies() -> None:
    assert len(clean_text("x" * 5000, [])) == 300


def test_describe_error_never_quotes_a_url_with_credentials() -> None:
    exc = httpx.ConnectError("cannot connect to http://u:secret-pw@h:1/?api_key=k-99")
    described = describe_error(exc, ["secret-pw"], 3.0)
    assert described.startswith("connection failed: ")
    assert "secret-pw" not in described
    assert "k-99" not in described


def test_describe_error_names_the_timeout() -> None:
    assert describe_error(httpx.ReadTimeout("x"), [], 2.5) == "no answer within 2.5 s"
    assert describe_error(TimeoutError(), [], 1.0) == "no answer within 1 s"


# -- the WhisperX probe: busy is not down ------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


@pytest.fixture
def never_connects() -> Iterator[str]:
    """A URL whose TCP connect never completes: a listener whose backlog is full."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # never accepted: the queue fills, later SYNs are dropped
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for sock in [*fillers, listener]:
            sock.close()


async def test_an_idle_server_is_up_and_not_busy(client: httpx.AsyncClient) -> None:
    with WhisperXStub("wx") as stub:
        outcome = await probe_whisperx(client, stub.base_url, 2.0)
    assert (outcome.ok, outcome.busy) == (True, False)
    assert outcome.detail == "reachable (GET /docs answered 200)"


async def test_a_server_transcribing_is_busy_not_down(client: httpx.AsyncClient) -> None:
    with WhisperXStub("wx", latency=30.0) as stub:
        transcribing = await start_transcription(stub)
        outcome = await probe_whisperx(client, stub.base_url, 0.3)
        assert stub.busy  # the probe got no answer because the stub is still transcribing
        stub.stop()  # ends the transcription (and the stub) at once
        await asyncio.gather(transcribing, return_exceptions=True)
    assert (outcome.ok, outcome.busy) == (True, True)
    assert outcome.detail == (
        "busy: connected, but GET /docs did not answer within 0.3 s "
        "(the server answers nothing while it transcribes)"
    )


async def test_the_server_is_idle_again_once_the_transcription_ends(
    client: httpx.AsyncClient,
) -> None:
    with WhisperXStub("wx", latency=0.5) as stub:
        transcribing = await start_transcription(stub)
        busy = await probe_whisperx(client, stub.base_url, 0.1)
        answer = await transcribing
        idle = await probe_whisperx(client, stub.base_url, 2.0)
    assert busy.busy is True
    assert answer.status_code == 200
    assert (idle.ok, idle.busy) == (True, False)


async def test_connection_refused_is_down_not_busy(client: httpx.AsyncClient) -> None:
    outcome = await probe_whisperx(client, closed_port_url(), 2.0)
    assert (outcome.ok, outcome.busy) == (False, False)
    assert outcome.detail.startswith("connection failed")


async def test_a_connect_that_never_completes_is_down_not_busy(
    client: httpx.AsyncClient, never_connects: str
) -> None:
    outcome = await probe_whisperx(client, never_connects, 0.3)
    assert (outcome.ok, outcome.busy) == (False, False)
    assert outcome.detail == "no connection within 0.3 s"


async def test_an_http_error_answer_is_down_not_busy(client: httpx.AsyncClient) -> None:
    with WhisperXStub("wx", variant="webservice") as stub:
        outcome = await probe_whisperx(client, stub.base_url + "/nothing-here", 2.0)
    assert (outcome.ok, outcome.busy) == (False, False)
    assert outcome.detail == "GET /docs answered HTTP 404; GET /health answered HTTP 404"
