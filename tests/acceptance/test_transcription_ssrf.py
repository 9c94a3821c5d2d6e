"""`audio_url` rules with real sockets: loopback refused, redirects checked, no shared cookies.

Every server here is a real loopback stub. `127.0.0.2` plays an allowed
internal source (`AUDIO_URL_ALLOW=127.0.0.2`) and `127.0.0.1` an internal
service that must never be reached; the private, link-local and IPv6
destinations of the matrix are proven refused without any connection in
tests/unit/test_outbound.py.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from ai_service.config import Settings, load_settings
from ai_service.errors import JobFailure
from ai_service.worker import transcription
from ai_service.worker.handler import HandlerContext
from ai_service.worker.main import provider_client
from tests.factories import make_job
from tests.stubs import FileServer, sine_wav
from tests.stubs.openai_server import OpenAIStub
from tests.stubs.whisperx_server import WhisperXStub

QWEN_MODEL = "Qwen/Qwen2-Audio-7B-Instruct"
NOT_ALLOWED = "audio_url: destination not allowed"


@pytest.fixture(scope="module")
def wav() -> bytes:
    return sine_wav(2.0)


@pytest.fixture
def whisperx() -> Iterator[WhisperXStub]:
    with WhisperXStub("wx") as stub:
        yield stub


@pytest.fixture
def internal(wav: bytes) -> Iterator[FileServer]:
    """A service on 127.0.0.1 that nothing may reach unless allowed."""
    with FileServer() as server:
        server.add("/secret.wav", wav)
        yield server


@pytest.fixture
def allowed() -> Iterator[FileServer]:
    """The allowed internal source, on 127.0.0.2."""
    with FileServer(host="127.0.0.2") as server:
        yield server


def settings_for(whisperx: WhisperXStub, **env: str) -> Settings:
    values = {
        "WORKER_ID": "test-worker",
        "TRANSCRIPTION_PROVIDERS": "whisperx",
        "WHISPERX_URL": whisperx.base_url,
        "AUDIO_DOWNLOAD_TIMEOUT": "5s",
    }
    values.update(env)
    return load_settings(values)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def run(settings: Settings, http: httpx.AsyncClient, audio_url: str) -> dict[str, Any]:
    job = make_job(input={"audio_url": audio_url})
    return await transcription.handle(job, HandlerContext(settings=settings, http=http))


async def refusal(settings: Settings, http: httpx.AsyncClient, audio_url: str) -> JobFailure:
    with pytest.raises(JobFailure) as caught:
        await run(settings, http, audio_url)
    return caught.value


# -- default rules: loopback in every spelling ----------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "localhost", "[::ffff:127.0.0.1]"]
)
async def test_a_listening_loopback_server_is_refused_in_every_spelling(
    host: str, internal: FileServer, whisperx: WhisperXStub, http: httpx.AsyncClient
) -> None:
    settings = settings_for(whisperx)  # no AUDIO_URL_ALLOW

    failure = await refusal(settings, http, f"http://{host}:{internal.port}/secret.wav")

    assert failure.category == "invalid_input"
    assert failure.retryable is False
    assert failure.message == NOT_ALLOWED
    assert internal.hits["/secret.wav"] == 0
    assert whisperx.requests_received == 0


async def test_the_allow_list_opens_exactly_what_it_names(
    allowed: FileServer,
    internal: FileServer,
    whisperx: WhisperXStub,
    http: httpx.AsyncClient,
    wav: bytes,
) -> None:
    settings = settings_for(whisperx, AUDIO_URL_ALLOW="127.0.0.2/32")
    url = allowed.add("/call.wav", wav)

    result = await run(settings, http, url)
    failure = await refusal(settings, http, internal.url("/secret.wav"))

    assert result["audio_duration"] == pytest.approx(2.0)
    assert failure.message == NOT_ALLOWED
    assert internal.hits["/secret.wav"] == 0


# -- redirects ------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_a_redirect_from_an_allowed_host_to_an_internal_one_is_refused(
    target: str,
    allowed: FileServer,
    internal: FileServer,
    whisperx: WhisperXStub,
    http: httpx.AsyncClient,
) -> None:
    settings = settings_for(whisperx, AUDIO_URL_ALLOW="127.0.0.2")
    url = allowed.redirect("/moved.wav", f"http://{target}:{internal.port}/secret.wav")

    failure = await refusal(settings, http, url)

    assert failure.message == NOT_ALLOWED
    assert allowed.hits["/moved.wav"] == 1
    assert internal.hits["/secret.wav"] == 0


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.2/a.wav", "gopher://x/"])
async def test_a_redirect_to_another_scheme_is_refused(
    location: str, allowed: FileServer, whisperx: WhisperXStub, http: httpx.AsyncClient
) -> None:
    settings = settings_for(whisperx, AUDIO_URL_ALLOW="127.0.0.2")

    failure = await refusal(settings, http, allowed.redirect("/moved.wav", location))

    assert failure.message == NOT_ALLOWED


async def test_five_redirects_are_followed_and_a_sixth_is_refused(
    allowed: FileServer, whisperx: WhisperXStub, http: httpx.AsyncClient, wav: bytes
) -> None:
    settings = settings_for(whisperx, AUDIO_URL_ALLOW="127.0.0.2")
    allowed.add("/hop0.wav", wav)
    for hop in range(1, 7):  # /hop6 -> /hop5 -> ... -> /hop0 (the file)
        allowed.redirect(f"/hop{hop}.wav", f"/hop{hop - 1}.wav", status=301 if hop % 2 else 307)

    result = await run(settings, http, allowed.url("/hop5.wav"))
    failure = await refusal(settings, http, allowed.url("/hop6.wav"))

    assert result["audio_duration"] == pytest.approx(2.0)
    assert failure.category == "invalid_input"
    assert failure.message == "audio_url: more than 5 redirects"
    assert allowed.hits["/hop0.wav"] == 1  # the refused chain stopped before the file


async def test_an_error_status_is_reported_without_reason_phrase_or_body(
    allowed: FileServer, whisperx: WhisperXStub, http: httpx.AsyncClient
) -> None:
    settings = settings_for(whisperx, AUDIO_URL_ALLOW="127.0.0.2")
    allowed.add("/teapot", b"internal admin panel: version 1.2.3", status=418)

    missing = await refusal(settings, http, allowed.url("/nothing.wav?jwt=eyJsecret"))
    teapot = await refusal(settings, http, allowed.url("/teapot"))

    assert missing.message == "audio_url: HTTP 404"
    assert teapot.message == "audio_url: HTTP 418"
    assert "127.0.0.2" not in missing.message + teapot.message


# -- cookies --------------------------------------------------------------------------


async def test_a_cookie_of_one_job_reaches_neither_later_downloads_nor_providers(
    whisperx: WhisperXStub, wav: bytes
) -> None:
    # Cookies belong to a host name whatever the port: the audio host 127.0.0.1
    # is the providers' host too, as a shared cookie jar would see it.
    with OpenAIStub(models=[QWEN_MODEL]) as qwen, FileServer() as files:
        settings = settings_for(
            whisperx,
            AUDIO_URL_ALLOW="127.0.0.1",
            TRANSCRIPTION_PROVIDERS="whisperx,qwen2-audio",
            QWEN_AUDIO_BASE_URL=qwen.base_url,
        )
        first = files.add("/one.wav", wav, headers={"Set-Cookie": "session=job-one; Path=/"})
        second = files.add("/two.wav", wav)
        async with provider_client(settings) as http:  # the worker's own client
            for url in (first, second, first):
                await run(settings, http, url)

    assert [path for path, _ in files.seen] == ["/one.wav", "/two.wav", "/one.wav"]
    assert [("cookie" in headers) for _, headers in files.seen] == [False, False, False]
    assert whisperx.requests_received == 3
    assert [("cookie" in r.headers) for r in whisperx.requests] == [False] * 3
    assert len(qwen.requests) == 3
    assert [("cookie" in r.headers) for r in qwen.requests] == [False] * 3


async def test_the_provider_client_keeps_no_cookies(whisperx: WhisperXStub) -> None:
    with FileServer() as provider:
        provider.add("/v1/models", b"{}", headers={"Set-Cookie": "route=gpu-1; Path=/"})
        async with provider_client(settings_for(whisperx)) as http:
            first = await http.get(provider.url("/v1/models"))
            await http.get(provider.url("/v1/models"))

    assert first.headers["set-cookie"].startswith("route=gpu-1")
    assert [("cookie" in headers) for _, headers in provider.seen] == [False, False]


async def test_audio_url_credentials_are_sent_and_never_shown(
    allowed: FileServer, whisperx: WhisperXStub, http: httpx.AsyncClient, wav: bytes
) -> None:
    settings = settings_for(whisperx, AUDIO_URL_ALLOW="127.0.0.2")
    allowed.add("/private.wav", wav, status=403)
    url = allowed.url("/private.wav").replace("http://", "http://me:dl-pass-123@")

    failure = await refusal(settings, http, url + "?X-Amz-Credential=AKIA123%2F2024&jwt=eyJ0")

    expected = "Basic " + base64.b64encode(b"me:dl-pass-123").decode()
    assert allowed.seen[0][1]["authorization"] == expected
    assert failure.message == "audio_url: HTTP 403"
