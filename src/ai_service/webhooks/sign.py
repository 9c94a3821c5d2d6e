"""Standard Webhooks signatures (https://www.standardwebhooks.com).

The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the signature is
HMAC-SHA256 keyed with the secret's bytes, sent as `webhook-signature: v1,<base64>`.
A secret is written `whsec_` + base64 of 24 to 64 random bytes (the prefix is
optional on input, as in the reference libraries). The key never leaves this module
in any readable form: `SigningKey` keeps it out of `repr`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field
from uuid import UUID

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64


def parse_secret(text: str) -> bytes:
    """The key bytes of a Standard Webhooks secret (`whsec_<base64>`).

    Raises `ValueError` whose message never quotes the value.
    """
    value = text.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "is not a Standard Webhooks secret: write whsec_ followed by the base64 of "
            f"{MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes "
            "(e.g. whsec_$(openssl rand -base64 32))"
        ) from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"decodes to {len(key)} bytes: a Standard Webhooks secret holds "
            f"{MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes "
            "(e.g. whsec_$(openssl rand -base64 32))"
        )
    return key


@dataclass(frozen=True)
class SigningKey:
    """The key of `WEBHOOK_SECRET`, ready to sign (never shown by `repr`)."""

    key: bytes = field(repr=False)

    @classmethod
    def of(cls, secret: str) -> SigningKey:
        """Parse a `whsec_...` secret (`ValueError` when malformed)."""
        return cls(parse_secret(secret))

    def signature(self, webhook_id: str, timestamp: int, body: bytes) -> str:
        """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
        content = f"{webhook_id}.{timestamp}.".encode() + body
        mac = hmac.new(self.key, content, hashlib.sha256).digest()
        return "v1," + base64.b64encode(mac).decode("ascii")

    def headers(self, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """The three Standard Webhooks headers of one attempt."""
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.signature(webhook_id, timestamp, body),
        }


def webhook_id(delivery_id: UUID) -> str:
    """The `webhook-id` of an outbox row: `msg_` + its id's 32 hex digits."""
    return "msg_" + delivery_id.hex
