"""Secrets never leave the process: URL credentials, secret query values, known secrets."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from ai_service.redact import redact_text, redact_url


def test_redact_url_strips_user_and_password() -> None:
    assert redact_url("http://user:pa55@10.2.3.5:8000/v1") == "http://10.2.3.5:8000/v1"


def test_redact_url_strips_a_user_without_password() -> None:
    assert redact_url("https://token@host/path") == "https://host/path"


def test_redact_url_masks_secret_query_values_and_keeps_the_rest() -> None:
    redacted = redact_url("http://u:p@host:8000/v1?api_key=abc&x=1")
    parts = urlsplit(redacted)
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == ("http", "host", 8000, "/v1")
    assert parse_qs(parts.query) == {"api_key": ["***"], "x": ["1"]}
    assert "abc" not in redacted
    assert "u:p" not in redacted


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
