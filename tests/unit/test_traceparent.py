"""The W3C traceparent header: what is kept, what is ignored."""

from __future__ import annotations

import pytest

from ai_service.traceparent import parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_a_valid_traceparent_is_kept_as_it_is() -> None:
    value = f"00-{TRACE}-{PARENT}-01"
    assert parse_traceparent(value) == value
    assert parse_traceparent(f"  {value} ") == value


def test_a_later_version_is_read_as_version_00() -> None:
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-01-what-comes-later") == (
        f"00-{TRACE}-{PARENT}-01"
    )


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE.upper()}-{PARENT}-01",  # lower-case hex only
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-1",
    ],
)
def test_an_invalid_traceparent_is_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None
