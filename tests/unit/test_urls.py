"""Request URLs from configured base URLs: paths before the query, credentials in headers."""

from __future__ import annotations

import base64

import pytest

from ai_service.api.routes_infra import sidecar_status_target
from ai_service.config import load_settings
from ai_service.errors import ConfigError
from ai_service.providers.audio_llm import chat_completions_url
from ai_service.providers.probes import models_path
from ai_service.sidecar.vllm_metrics import metrics_url
from ai_service.urls import has_userinfo, join_url, request_target
from ai_service.worker.llm import openai_base_url


@pytest.mark.parametrize(
    ("base", "path", "expected"),
    [
        ("http://h:9000", "/asr", "http://h:9000/asr"),
        ("http://h:9000/", "/asr", "http://h:9000/asr"),
        ("http://h:9000?api_key=K", "/asr", "http://h:9000/asr?api_key=K"),
        ("http://h:9000/?api_key=K", "asr", "http://h:9000/asr?api_key=K"),
        ("http://h/proxy/v1/?a=1&b=2#frag", "/models", "http://h/proxy/v1/models?a=1&b=2"),
        ("http://h/v1?k=%2F", "", "http://h/v1?k=%2F"),
        ("http://[::1]:8000/v1?k=K", "/models", "http://[::1]:8000/v1/models?k=K"),
    ],
)
def test_join_url_puts_the_path_before_the_query(base: str, path: str, expected: str) -> None:
    assert join_url(base, path) == expected


def test_request_target_moves_user_info_into_a_basic_header_and_keeps_the_query() -> None:
    url, headers = request_target("http://us%40er:p%3Ass@h:9000/?token=t1", "/docs")
    assert url == "http://h:9000/docs?token=t1"
    assert headers == {"Authorization": "Basic " + base64.b64encode(b"us@er:p:ss").decode()}
    assert request_target("http://h:9000?x=1", "/docs") == ("http://h:9000/docs?x=1", {})


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://h:8003", "http://h:8003/v1/chat/completions"),
        ("http://h:8003/v1/", "http://h:8003/v1/chat/completions"),
        ("http://h:8003?api_key=K", "http://h:8003/v1/chat/completions?api_key=K"),
        ("http://h:8003/v1?api_key=K", "http://h:8003/v1/chat/completions?api_key=K"),
        ("http://h/v1/chat/completions?k=K", "http://h/v1/chat/completions?k=K"),
    ],
)
def test_audio_llm_endpoint_keeps_the_query_at_the_end(base: str, expected: str) -> None:
    assert chat_completions_url(base) == expected


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://h:8000?api_key=K", ("http://h:8000/v1", {"api_key": "K"})),
        ("http://h:8000/v1/?jwt=J&x=", ("http://h:8000/v1", {"jwt": "J", "x": ""})),
    ],
)
def test_llm_sdk_base_url_and_query(base: str, expected: tuple[str, dict[str, str]]) -> None:
    assert openai_base_url(base) == expected


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://h:8000?api_key=K", "http://h:8000/v1/models?api_key=K"),
        ("http://h:8000/v1?api_key=K", "http://h:8000/v1/models?api_key=K"),
    ],
)
def test_models_probe_keeps_the_query_at_the_end(base: str, expected: str) -> None:
    assert request_target(base, models_path(base))[0] == expected


def test_sidecar_and_metrics_urls_keep_the_query_at_the_end() -> None:
    assert sidecar_status_target("http://s:9100?k=K")[0] == "http://s:9100/status?k=K"
    assert sidecar_status_target("http://s:9100/status?k=K")[0] == "http://s:9100/status?k=K"
    assert metrics_url("http://v:8000?k=K")[0] == "http://v:8000/metrics?k=K"


@pytest.mark.parametrize(
    ("variable", "key"),
    [
        ("LLM_BASE_URL", "LLM_API_KEY"),
        ("QWEN_AUDIO_BASE_URL", "QWEN_AUDIO_API_KEY"),
        ("VOXTRAL_BASE_URL", "VOXTRAL_API_KEY"),
    ],
)
def test_user_info_in_an_openai_compatible_base_url_is_refused(variable: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: "http://user:s3cret-pw@h:8000/v1"})
    message = str(caught.value)
    assert message.startswith(f"{variable} must not contain user:password@")
    assert key in message
    assert "s3cret-pw" not in message


def test_user_info_in_whisperx_url_is_kept_for_basic_auth() -> None:
    settings = load_settings({"WHISPERX_URL": "http://wx:pw@h:9000"})
    assert settings.whisperx_url == ("http://wx:pw@h:9000",)


def test_has_userinfo() -> None:
    assert has_userinfo("http://u:p@h/")
    assert has_userinfo("http://u@h/")
    assert not has_userinfo("http://h/path@x")
    assert has_userinfo("http://u:p@[bad/")
