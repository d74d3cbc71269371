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
from taskd.files import create_once, read_kept, warn_if_readable

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


def secret_id(secret: str) -> str:
    """The identifier a task record keeps of its key's own webhook secret (a hash of 64 bits, never
    the secret): the sender finds that secret by it once the key itself is gone (a rotated key)."""
    return hashlib.sha256(b"taskd-webhook-secret:" + secret_key(secret)).hexdigest()[:16]


def own_secret_ids(config: Config) -> dict[str, str]:
    """The id of each key's own webhook secret (`auth.keys`' `webhook_secret`), by the key's id."""
    return {
        key_id(entry.key): secret_id(entry.webhook_secret)
        for entry in config.auth.keys
        if entry.webhook_secret
    }


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
    # Each key's signer under the id of each of its secrets, the previous one included (secret_id).
    by_secret: dict[str, Signer] = attrs.Factory(dict)
    # The id of every configured key (auth.api_keys and auth.keys).
    configured: frozenset[str] = frozenset()
    # The secret taskd made itself and its file, when no webhooks.secret is configured.
    generated_file: Path | None = None
    generated_secret: str | None = attrs.field(default=None, repr=False)

    def for_task(self, submitted_by: str | None, own_secret: str | None) -> Signer | None:
        """The signer of a task submitted by the key with id `submitted_by` (None: a record from
        before key ids) whose own webhook secret, then, had the id `own_secret` (None: it had none).

        None, where the key and every secret of its own are gone from the config: such a task was
        signed for its tenant's receiver alone, and the global secret would hand its tenant, whose
        key was revoked, a signature that other receivers (every key without a secret of its own)
        take as taskd's. A key still configured, whatever secrets it has now, signs as it does now;
        a key replaced by another that kept its secret (a rotated key) signs with that secret.
        """
        if submitted_by is None:
            return self.default
        if (signer := self.by_key.get(submitted_by)) is not None:
            return signer
        if own_secret is None or submitted_by in self.configured:
            return self.default
        return self.by_secret.get(own_secret)

    @classmethod
    def from_config(cls, config: Config) -> Signers:
        """Signers for `config`; makes `<data_dir>/webhook_secret` when no webhooks.secret is set."""
        generated_file = None
        current = config.webhooks.secret
        if not current:
            generated_file = config.data_path / SECRET_FILE
            current = load_or_create_secret(generated_file)
        default = Signer.from_secrets(current, config.webhooks.previous_secret)
        by_key: dict[str, Signer] = {}
        by_secret: dict[str, Signer] = {}
        for entry in config.auth.keys:
            if entry.webhook_secret:
                signer = Signer.from_secrets(entry.webhook_secret, entry.previous_webhook_secret)
                by_key[key_id(entry.key)] = signer
                for secret in (entry.previous_webhook_secret, entry.webhook_secret):
                    if secret:
                        by_secret[secret_id(secret)] = signer
        configured = frozenset(
            key_id(key) for key in [*config.auth.api_keys, *(e.key for e in config.auth.keys)]
        )
        return cls(
            default,
            by_key,
            by_secret,
            configured,
            generated_file,
            None if generated_file is None else current,
        )


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
    warn_if_readable(path)
    return secret
