"""Callback URLs: their shape, and the internal destinations refused without an allow-list."""

from __future__ import annotations

import pytest

from ai_service.outbound import UrlPolicy
from ai_service.webhooks.destinations import (
    MAX_URL_LENGTH,
    REFUSED,
    config_problem,
    create_problem,
    syntax_problem,
)

OPEN = UrlPolicy()
LOOPBACK = UrlPolicy.from_setting("127.0.0.0/8")


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/ai",
        "http://hooks.example.com:8080/ai?token=abc",
        "https://[2001:db8::1]/x",
    ],
)
def test_http_urls_have_the_right_shape(url: str) -> None:
    assert syntax_problem(url) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://hooks.example.com/x", "http"),
        ("file:///etc/passwd", "http"),
        ("hooks.example.com/x", "http"),
        ("https:///path-only", "http"),
        ("https://user:secret@hooks.example.com/x", "user:password@"),
        ("https://hooks.example.com/\nx", "http"),
        ("https://hooks.example.com/" + "a" * MAX_URL_LENGTH, str(MAX_URL_LENGTH)),
    ],
)
def test_other_urls_are_refused_saying_why(url: str, problem: str) -> None:
    found = syntax_problem(url)
    assert found is not None
    assert problem in found
    assert "secret" not in found


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://localhost:8080/x",
    ],
)
def test_configured_internal_destinations_are_refused_unless_allowed(url: str) -> None:
    assert config_problem(url, OPEN) == REFUSED
    allowed = UrlPolicy.from_setting("127.0.0.0/8, 10.0.0.0/8, 169.254.0.0/16, ::/0, localhost")
    assert config_problem(url, allowed) is None


def test_configured_host_names_are_checked_at_delivery_not_at_start() -> None:
    # No DNS at start: a name (other than localhost) passes; each delivery resolves it.
    assert config_problem("https://hooks.internal.example/x", OPEN) is None


async def test_at_create_a_name_is_resolved_and_its_address_checked() -> None:
    # `localhost` resolves to loopback: refused, allowed when the network is listed.
    assert await create_problem("http://localhost:9/x", OPEN) == REFUSED
    assert await create_problem("http://localhost:9/x", LOOPBACK) is None
    assert await create_problem("http://127.0.0.1:9/x", OPEN) == REFUSED
    assert await create_problem("http://2130706433:9/x", OPEN) == REFUSED  # 127.0.0.1
