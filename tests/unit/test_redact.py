"""Secrets never leave the process: URL credentials, secret query values, known secrets."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import pytest

from ai_service.redact import (
    Redactor,
    redact_text,
    redact_url,
    settings_redactor,
    settings_secrets,
    url_secrets,
)
from tests.helpers import make_settings


def test_redact_url_strips_user_and_password() -> None:
    assert redact_url("http://user:pa55@10.2.3.5:8000/v1") == "http://10.2.3.5:8000/v1"


def test_redact_url_strips_a_user_without_password() -> None:
    assert redact_url("https://token@host/path") == "https://host/path"


def test_redact_url_masks_every_query_value_but_harmless_ones() -> None:
    redacted = redact_url("http://u:p@host:8000/v1?api_key=abc&x=1&model=qwen&Format=wav")
    parts = urlsplit(redacted)
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == ("http", "host", 8000, "/v1")
    assert parse_qs(parts.query) == {
        "api_key": ["***"],
        "x": ["***"],
        "model": ["qwen"],
        "Format": ["wav"],
    }
    assert "abc" not in redacted
    assert "u:p" not in redacted


@pytest.mark.parametrize(
    "param", ["jwt", "X-Amz-Credential", "X-Amz-Signature", "code", "session", "a"]
)
def test_redact_url_masks_parameters_whatever_their_name(param: str) -> None:
    redacted = redact_url(f"https://bucket.example/call.wav?{param}=hunter22&language=ru")
    assert "hunter22" not in redacted
    assert parse_qs(urlsplit(redacted).query) == {param: ["***"], "language": ["ru"]}


@pytest.mark.parametrize(
    "param",
    ["api_key", "key", "token", "access_token", "secret", "client_secret", "password", "sig"],
)
def test_redact_url_masks_every_secret_looking_parameter(param: str) -> None:
    redacted = redact_url(f"https://host/path?{param}=hunter22&model=qwen")
    assert "hunter22" not in redacted
    assert parse_qs(urlsplit(redacted).query) == {param: ["***"], "model": ["qwen"]}


def test_redact_url_matches_parameter_names_case_insensitively() -> None:
    assert "hunter22" not in redact_url("https://host/?API_KEY=hunter22&Token=hunter22")


def test_redact_url_keeps_a_url_without_secrets_unchanged() -> None:
    url = "http://10.2.3.5:8003/v1/chat/completions?model=qwen&stream=false"
    assert redact_url(url) == url


def test_redact_url_keeps_an_ipv6_host() -> None:
    assert redact_url("http://u:p@[::1]:8080/metrics") == "http://[::1]:8080/metrics"


def test_redact_url_drops_the_fragment() -> None:
    assert redact_url("http://host/a#token=abc") == "http://host/a"


def test_redact_url_of_an_unparseable_url_reveals_nothing() -> None:
    assert redact_url("http://user:secret@host:notaport/") == "<invalid url>"


def test_redact_text_replaces_every_occurrence_of_each_secret() -> None:
    text = "key sk-abcdef used; again sk-abcdef; token tok-1234"
    assert redact_text(text, ["sk-abcdef", "tok-1234"]) == "key *** used; again ***; token ***"


def test_redact_text_ignores_missing_and_empty_secrets() -> None:
    assert redact_text("nothing secret here", [None, ""]) == "nothing secret here"


def test_redact_text_leaves_very_short_values_alone() -> None:
    # Masking "a" or "ab" would shred ordinary text while protecting nothing real.
    assert redact_text("a cab", ["a", "ab"]) == "a cab"


# -- Redactor: values and their encoded forms ---------------------------------------

KEY = "sk-live/Zq+9=tok"


@pytest.mark.parametrize(
    "form",
    [
        KEY,
        quote(KEY, safe=""),
        "sk-live%2fZq%2b9%3dtok",
        quote_plus(KEY),
        base64.b64encode(KEY.encode()).decode(),
        base64.b64encode(KEY.encode()).decode().rstrip("="),
        base64.urlsafe_b64encode(KEY.encode()).decode(),
    ],
    ids=["raw", "quote", "quote-lower-hex", "quote_plus", "base64", "base64-nopad", "urlsafe"],
)
def test_redactor_masks_every_encoding_of_a_secret(form: str) -> None:
    text = Redactor([KEY]).text(f"the server said: {form} (end)")
    assert text == "the server said: *** (end)"


@pytest.mark.parametrize("prefix", [b"", b"B", b"Be", b"Bearer "])
def test_redactor_masks_a_secret_inside_a_longer_base64_text_at_any_offset(prefix: bytes) -> None:
    encoded = base64.b64encode(prefix + KEY.encode() + b" and more").decode()
    # The characters that encode the key's bits only (6 bits each).
    key_only = encoded[-(-8 * len(prefix) // 6) : 8 * (len(prefix) + len(KEY)) // 6]
    masked = Redactor([KEY]).text(encoded)
    assert "***" in masked
    assert key_only not in masked
    assert len(masked) <= len(encoded) - len(key_only) + 3


def test_redactor_masks_the_basic_header_of_user_and_password() -> None:
    secrets = url_secrets("http://wxuser:wx-pw-2001@h:9000/")
    header = "Basic " + base64.b64encode(b"wxuser:wx-pw-2001").decode()
    assert Redactor(secrets).text(f"echo: {header}") == "echo: Basic ***"


def test_redactor_masks_nested_data() -> None:
    data = {"attempts": [{"error": {"message": f"HTTP 401: {KEY}"}}], "n": 1, KEY: None}
    assert Redactor([KEY]).data(data) == {
        "attempts": [{"error": {"message": "HTTP 401: ***"}}],
        "n": 1,
        "***": None,
    }


def test_url_secrets_are_user_password_pair_and_non_harmless_query_values() -> None:
    secrets = url_secrets(
        "https://me:p%40ss@b.example/a.wav?X-Amz-Credential=AKIA%2F2024&jwt=eyJ.x.y&format=wav"
    )
    assert {"p@ss", "me:p@ss", "AKIA/2024", "AKIA%2F2024", "eyJ.x.y"} <= set(secrets)
    assert "wav" not in secrets


def test_url_secrets_finds_user_info_and_secret_query_values() -> None:
    secrets = url_secrets("http://alice:pa%40ss@h/v1?api_key=abc123&model=m&access_token=tok9")
    assert {"pa%40ss", "pa@ss", "alice:pa@ss", "abc123", "tok9"} <= set(secrets)
    assert "m" not in secrets
    assert "alice" not in secrets  # an account name, not a secret, next to a password
    assert url_secrets("https://ghp_token123@h/") == ["ghp_token123"]


def test_settings_redactor_covers_every_secret_bearing_variable() -> None:
    settings = make_settings(
        AI_SERVICE_TOKEN="v-ai-service-token",
        LLM_API_KEY="v-llm-api-key",
        QWEN_AUDIO_API_KEY="v-qwen-key",
        VOXTRAL_API_KEY="v-voxtral-key",
        AUDIO_LLM_API_KEY="v-audio-llm-key",
        INFRA_STATUS_TOKEN="v-infra-token",
        SIDECAR_TOKEN="v-sidecar-token",
        DATABASE_URL="postgresql://app:v-db-password@db/ai?sslmode=require",
        LLM_BASE_URL="http://h:1/v1?jwt=v-llm-jwt",
        WHISPERX_URL="http://wx:v-wx-password@h:2,http://h:3/?token=v-wx-token",
        QWEN_AUDIO_BASE_URL="http://h:4/v1?sig=v-qwen-sig",
        VOXTRAL_BASE_URL="http://h:5/v1?k=v-voxtral-q",
        INFRA_STATUS_URL="http://side:v-infra-password@h:6",
        VLLM_METRICS_URLS="http://h:7/metrics?auth=v-metrics-q",
    )
    values = [
        "v-ai-service-token", "v-llm-api-key", "v-qwen-key", "v-voxtral-key",
        "v-audio-llm-key", "v-infra-token", "v-sidecar-token", "v-db-password",
        "v-llm-jwt", "v-wx-password", "v-wx-token", "v-qwen-sig", "v-voxtral-q",
        "v-infra-password", "v-metrics-q",
    ]  # fmt: skip
    text = " ".join(values) + " sslmode=require"
    assert settings_redactor(settings).text(text) == " ".join(["***"] * len(values)) + (
        " sslmode=require"  # harmless libpq options stay readable
    )


def test_settings_secrets_cover_keys_tokens_and_url_credentials() -> None:
    settings = make_settings(
        AI_SERVICE_TOKEN="svc-token",
        LLM_BASE_URL="http://h:8000?api_key=llm-q",
        WHISPERX_URL="http://u:llm-pw@h:9000",
        VLLM_METRICS_URLS="http://m:metrics-pw@h:8000/metrics",
        INFRA_STATUS_TOKEN="infra-tok",
    )
    secrets = settings_secrets(settings)
    for secret in ("svc-token", "llm-pw", "llm-q", "metrics-pw", "infra-tok"):
        assert secret in secrets
