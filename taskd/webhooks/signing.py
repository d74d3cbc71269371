"""Standard Webhooks signatures: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC>`."""

from __future__ import annotations

import base64
import hashlib
import hmac

import attrs

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


@attrs.frozen
class Signer:
    """Makes the headers of one attempt; without a secret there is no `webhook-signature`."""

    key: bytes | None

    @classmethod
    def from_secret(cls, secret: str) -> Signer:
        """A signer for `webhooks.secret` ("" signs nothing)."""
        return cls(secret_key(secret) if secret else None)

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """`webhook-id`, `webhook-timestamp` and, with a secret, `webhook-signature`."""
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
        if self.key is not None:
            headers["webhook-signature"] = signature(self.key, msg_id, timestamp, body)
        return headers
