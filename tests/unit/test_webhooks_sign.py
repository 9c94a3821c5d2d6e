"""Standard Webhooks signatures: the specification's test vector and the reference library."""

from __future__ import annotations

import base64
import os
import uuid
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from ai_service.webhooks.sign import SigningKey, parse_secret, webhook_id

# The test vector published with the Standard Webhooks specification.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_specification_test_vector_signs_exactly() -> None:
    key = SigningKey.of(SPEC_SECRET)
    assert key.signature(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_the_secret_prefix_is_optional() -> None:
    bare = SigningKey.of(SPEC_SECRET.removeprefix("whsec_"))
    assert bare.signature(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_signatures_match_the_reference_library_for_random_secrets_and_bodies() -> None:
    for size in (24, 32, 64):
        secret = "whsec_" + base64.b64encode(os.urandom(size)).decode()
        body = os.urandom(200).hex().encode() + "ünïcode".encode()
        delivery = webhook_id(uuid.uuid4())
        headers = SigningKey.of(secret).headers(delivery, 1_900_000_000, body)
        ours = headers["webhook-signature"]
        theirs = Webhook(secret).sign(
            delivery, datetime.fromtimestamp(1_900_000_000, UTC), body.decode()
        )
        assert ours == theirs
        assert headers["webhook-id"] == delivery
        assert headers["webhook-timestamp"] == "1900000000"


def test_the_reference_library_verifies_what_we_sign_now() -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    body = b'{"type":"job.completed"}'
    headers = SigningKey.of(secret).headers("msg_1", int(datetime.now(UTC).timestamp()), body)
    assert Webhook(secret).verify(body, headers) == {"type": "job.completed"}


def test_unpadded_base64_is_accepted() -> None:
    raw = os.urandom(25)  # base64 of 25 bytes ends in one "="
    text = base64.b64encode(raw).decode()
    assert text.endswith("=")
    assert parse_secret("whsec_" + text.rstrip("=")) == raw


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_not base64!",
        "whsec_" + base64.b64encode(b"short").decode(),  # 5 bytes
        "whsec_" + base64.b64encode(os.urandom(65)).decode(),
        "whsec_",
        "correct-horse-battery-staple-but-not-base64?",
    ],
)
def test_malformed_secrets_are_refused_without_quoting_them(secret: str) -> None:
    with pytest.raises(ValueError, match="Standard Webhooks secret") as refused:
        parse_secret(secret)
    body = secret.removeprefix("whsec_")
    assert not body or body not in str(refused.value)
    assert "whsec_" in str(refused.value)  # says what to write instead


def test_the_key_never_shows_in_repr() -> None:
    key = SigningKey.of(SPEC_SECRET)
    assert "MfKQ9r8" not in repr(key)
    assert repr(key.key) not in repr(key)


def test_a_webhook_id_is_msg_and_the_uuid_hex() -> None:
    delivery = uuid.UUID("0192a3b4-c5d6-7e8f-9012-3456789abcde")
    assert webhook_id(delivery) == "msg_0192a3b4c5d67e8f90123456789abcde"
