"""Probes of the AI servers without I/O: the models URL, secret-free error texts."""

from __future__ import annotations

import httpx
import pytest

from ai_service.providers.probes import clean_text, describe_error, models_path
from ai_service.urls import request_target


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
