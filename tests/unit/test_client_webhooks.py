"""`verify_webhook` against the independent `standardwebhooks` implementation of the spec."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from ai_service_client import WebhookVerificationError, verify_webhook
from ai_service_client.webhooks import sign

SECRET = "whsec_" + base64.b64encode(b"a shared secret of 32 bytes.....").decode()
OTHER = "whsec_" + base64.b64encode(b"another secret, not the sender's").decode()
BODY = json.dumps({"type": "job.completed", "job_id": "0193", "status": "completed"}).encode()


def signed_by_reference(msg_id: str, timestamp: int, body: bytes, secret: str) -> dict[str, str]:
    """Headers as the reference implementation signs them."""
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_a_delivery_signed_by_the_reference_verifies_and_returns_the_payload() -> None:
    now = int(time.time())
    headers = signed_by_reference("msg_1", now, BODY, SECRET)
    assert verify_webhook(headers, BODY, SECRET) == json.loads(BODY)


def test_our_signature_verifies_with_the_reference() -> None:
    now = int(time.time())
    headers = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(now),
        "webhook-signature": sign("msg_2", now, BODY, SECRET),
    }
    assert Webhook(SECRET).verify(BODY, headers) == json.loads(BODY)


def test_one_matching_signature_among_several_is_enough() -> None:
    now = int(time.time())
    good = signed_by_reference("msg_3", now, BODY, SECRET)["webhook-signature"]
    other = signed_by_reference("msg_3", now, BODY, OTHER)["webhook-signature"]
    headers = {
        "Webhook-Id": "msg_3",  # header names in any case
        "Webhook-Timestamp": str(now),
        "Webhook-Signature": f"v1a,abc {other} {good}",
    }
    assert verify_webhook(headers, BODY.decode(), SECRET)["job_id"] == "0193"


@pytest.mark.parametrize(
    "change",
    ["body", "secret", "id", "timestamp_old", "timestamp_future", "missing", "garbage"],
)
def test_tampered_or_stale_deliveries_are_refused(change: str) -> None:
    now = int(time.time())
    headers = signed_by_reference("msg_4", now, BODY, SECRET)
    body, secret = BODY, SECRET
    if change == "body":
        body = BODY.replace(b"completed", b"failed")
    elif change == "secret":
        secret = OTHER
    elif change == "id":
        headers["webhook-id"] = "msg_5"
    elif change == "timestamp_old":
        headers = signed_by_reference("msg_4", now - 301, BODY, SECRET)
    elif change == "timestamp_future":
        headers = signed_by_reference("msg_4", now + 301, BODY, SECRET)
    elif change == "missing":
        del headers["webhook-signature"]
    else:
        headers["webhook-signature"] = "v1,not-base64!!"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body, secret)


def test_the_tolerance_is_five_minutes_by_default() -> None:
    now = int(time.time())
    headers = signed_by_reference("msg_6", now - 290, BODY, SECRET)
    assert verify_webhook(headers, BODY, SECRET, now=now)["status"] == "completed"


def test_an_unpadded_secret_works_like_the_reference() -> None:
    raw = b"secret-of-odd-length"
    unpadded = "whsec_" + base64.b64encode(raw).decode().rstrip("=")
    now = int(time.time())
    headers = signed_by_reference("msg_7", now, BODY, unpadded)
    assert verify_webhook(headers, BODY, unpadded)["type"] == "job.completed"
    assert verify_webhook(headers, BODY, raw)["type"] == "job.completed"
