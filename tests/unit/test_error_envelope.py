"""The error envelope shared by the API and the sidecar: status map, headers, logging."""

from __future__ import annotations

import json
import logging
from uuid import uuid4

import pytest

from ai_service import errors
from ai_service.error_envelope import domain_response, envelope, status_for


class TooLarge(errors.InvalidRequest):
    """A subclass without an entry of its own."""


def test_status_follows_the_error_tree_and_defaults_to_500() -> None:
    assert status_for(errors.Unauthorized("no")) == 401
    assert status_for(errors.JobNotFound(uuid4())) == 404
    assert status_for(TooLarge("body", "too big")) == 422  # the nearest mapped base decides
    assert status_for(errors.AIServiceError("?")) == 500
    assert status_for(errors.ConfigError("HTTP_PORT", "is not a number")) == 500


def test_envelope_body_is_error_message_details() -> None:
    response = envelope(418, "teapot", "short and stout")
    assert response.status_code == 418
    assert json.loads(bytes(response.body)) == {
        "error": "teapot",
        "message": "short and stout",
        "details": {},
    }


def test_a_401_asks_for_a_bearer_token_and_a_503_to_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("tests.envelope")
    with caplog.at_level(logging.WARNING, logger="tests.envelope"):
        unauthorized = domain_response(errors.Unauthorized("missing token"), log)
        unavailable = domain_response(errors.DatabaseUnavailable("down", {"retry": True}), log)
    assert (unauthorized.status_code, unauthorized.headers["www-authenticate"]) == (401, "Bearer")
    assert (unavailable.status_code, unavailable.headers["retry-after"]) == (503, "1")
    assert json.loads(bytes(unavailable.body)) == {
        "error": "database_unavailable",
        "message": "down",
        "details": {"retry": True},
    }
    # Only the 5xx is logged, on the logger of the program that answered.
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("tests.envelope", "request failed: database_unavailable: down")
    ]
