"""Standard Webhooks signatures: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC>`.

Every webhook is signed. The secrets: `webhooks.secret` (or one taskd makes once and keeps in
`<data_dir>/webhook_secret`) plus `webhooks.previous_secret` while a rotation is under way; an API key
of `auth.keys` with its own `webhook_secret` (and `previous_webhook_secret`) signs its tasks with
those instead, so one tenant's receiver can neither verify nor forge another tenant's webhooks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

import attrs

from taskd.config import Config, ConfigError
from taskd.files import create_once, read_kept

SECRET_PREFIX = "whsec_"
SECRET_FILE = "webhook_secret"
SECRET_BYTES = 32
MIN_SECRET_BYTES = 16


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def is_valid_secret(secret: str) -> bool:
    """True for `whsec_` and the base64 of at least 16 bytes."""
    if not secret.startswith(SECRET_PREFIX):
        return False
    try:
        return len(secret_key(secret)) >= MIN_SECRET_BYTES
    except ValueError:
        return False


def new_secret() -> str:
    """A fresh `whsec_` secret of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def key_id(api_key: str) -> str:
    """The identifier a task record keeps of the key that submitted it: never the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


@attrs.frozen
class Signer:
    """Makes the headers of one attempt: one signature per active secret, space-separated."""

    keys: tuple[bytes, ...] = attrs.field(repr=False)

    @classmethod
    def from_secrets(cls, *secrets_: str) -> Signer:
        """A signer for these `whsec_` secrets, the current one first ("" entries are skipped)."""
        return cls(tuple(secret_key(secret) for secret in secrets_ if secret))

    @classmethod
    def from_secret(cls, secret: str) -> Signer:
        """A signer for one secret ("" signs nothing)."""
        return cls.from_secrets(secret)

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """`webhook-id`, `webhook-timestamp` and, with a secret, `webhook-signature`."""
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
        if self.keys:
            headers["webhook-signature"] = " ".join(
                signature(key, msg_id, timestamp, body) for key in self.keys
            )
        return headers


@attrs.frozen
class Signers:
    """The signer of each task: its submitting key's own, or the global one."""

    default: Signer
    by_key: dict[str, Signer] = attrs.Factory(dict)
    # The secret taskd made itself and its file, when no webhooks.secret is configured.
    generated_file: Path | None = None
    generated_secret: str | None = attrs.field(default=None, repr=False)

    def for_key(self, submitted_by: str | None) -> Signer:
        """The signer for a task submitted by the key with this id (None: a record from before key ids)."""
        if submitted_by is None:
            return self.default
        return self.by_key.get(submitted_by, self.default)

    @classmethod
    def from_config(cls, config: Config) -> Signers:
        """Signers for `config`; makes `<data_dir>/webhook_secret` when no webhooks.secret is set."""
        generated_file = None
        current = config.webhooks.secret
        if not current:
            generated_file = config.data_path / SECRET_FILE
            current = load_or_create_secret(generated_file)
        default = Signer.from_secrets(current, config.webhooks.previous_secret)
        by_key = {
            key_id(entry.key): Signer.from_secrets(entry.webhook_secret, entry.previous_webhook_secret)
            for entry in config.auth.keys
            if entry.webhook_secret
        }
        return cls(default, by_key, generated_file, None if generated_file is None else current)


def load_or_create_secret(path: Path) -> str:
    """The secret kept in `path`, made (mode 0600) if absent; raises ConfigError for a damaged file.

    The file appears whole or not at all (taskd.files.create_once), so processes starting together
    all end up with the one that was made first.
    """
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    create_once(path, (new_secret() + "\n").encode())
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    try:
        secret = read_kept(path).decode("ascii").strip()
    except UnicodeDecodeError:
        secret = ""
    if not is_valid_secret(secret):
        raise ConfigError(
            f"{path} does not hold a webhook secret (whsec_ and the base64 of at least 16 bytes); "
            "delete it to have taskd make a new one, or set webhooks.secret"
        )
    return secret
