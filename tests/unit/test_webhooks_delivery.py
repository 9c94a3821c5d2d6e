"""The deliverer's pure rules: the retry schedule and the request body."""

from __future__ import annotations

import json

from ai_service.webhooks.delivery import FIRST_DELAY, PAYLOAD_ORDER, encode_payload, retry_delay


def test_retries_back_off_exponentially_into_the_upper_half_of_the_window() -> None:
    assert retry_delay(1, 600, 0.0) == FIRST_DELAY / 2
    assert retry_delay(1, 600, 0.999) < FIRST_DELAY
    assert retry_delay(2, 600, 0.0) == FIRST_DELAY
    assert retry_delay(5, 600, 0.0) == FIRST_DELAY * 2**4 / 2


def test_retries_never_wait_longer_than_the_cap() -> None:
    assert retry_delay(30, 600, 0.999) <= 600
    assert retry_delay(30, 600, 0.0) == 300
    assert retry_delay(10_000, 5, 0.5) <= 5


def test_the_body_lists_the_payload_in_the_documented_order() -> None:
    payload = {
        "status": "completed",
        "timestamp": "2026-12-12T10:00:00.000000Z",
        "type": "job.completed",
        "owner_ref": "call-1",
        "job_id": "0192a3b4-c5d6-7e8f-9012-3456789abcde",
        "owner_service": "telephony",
    }
    body = encode_payload(payload)
    assert list(json.loads(body)) == list(PAYLOAD_ORDER)
    assert json.loads(body) == payload
    assert b" " not in body  # compact
