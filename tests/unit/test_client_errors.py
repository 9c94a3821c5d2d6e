"""The client's error tree: each API answer becomes the typed error carrying its envelope."""

from __future__ import annotations

import pytest

from ai_service_client import errors


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "malformed_json", errors.InvalidRequest),
        (422, "validation_error", errors.InvalidRequest),
        (401, "unauthorized", errors.Unauthorized),
        (403, "forbidden", errors.Forbidden),
        (404, "job_not_found", errors.NotFound),
        (409, "invalid_transition", errors.Conflict),
        (409, "lease_lost", errors.LeaseLost),
        (409, "idempotency_conflict", errors.IdempotencyConflict),
        (413, "payload_too_large", errors.PayloadTooLarge),
        (429, "rate_limited", errors.RateLimited),
        (500, "internal_error", errors.ServerError),
        (502, "upstream_unavailable", errors.Unavailable),
        (503, "database_unavailable", errors.Unavailable),
        (504, "gateway_timeout", errors.Unavailable),
        (418, "teapot", errors.APIError),
    ],
)
def test_each_status_maps_to_its_typed_error(
    status: int, code: str, expected: type[errors.APIError]
) -> None:
    body = {"error": code, "message": f"{code} happened", "details": {"field": "x"}}
    error = errors.from_response(status, body)
    assert type(error) is expected
    assert isinstance(error, errors.AIServiceError)
    assert (error.status_code, error.error, error.message) == (status, code, f"{code} happened")
    assert error.details == {"field": "x"}


def test_lease_lost_and_unavailable_are_kinds_of_their_family() -> None:
    assert issubclass(errors.LeaseLost, errors.Conflict)
    assert issubclass(errors.Unavailable, errors.ServerError)
    assert issubclass(errors.TransportError, errors.AIServiceError)
    assert not issubclass(errors.TransportError, errors.APIError)


def test_an_answer_without_envelope_still_gets_a_typed_error() -> None:
    error = errors.from_response(502, "<html>Bad gateway</html>")
    assert type(error) is errors.Unavailable
    assert (error.error, error.message, error.details) == ("http_error", "HTTP 502", {})


def test_str_shows_status_code_and_message() -> None:
    error = errors.from_response(404, {"error": "job_not_found", "message": "job 1 not found"})
    assert str(error) == "404 job_not_found: job 1 not found"
