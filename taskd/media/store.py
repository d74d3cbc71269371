"""The media store: task outputs under `media.dir/<project_id>/`, served at signed, expiring URLs."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import shutil
from pathlib import Path

import attrs

from taskd import model
from taskd.config import Config, ConfigError
from taskd.files import create_once, read_kept, warn_if_readable
from taskd.shapes import PROJECT_ID as _NAME  # a file name has the shape of a project id

SECRET_FILE = "media_secret"
# What taskd writes: 64 hex digits, 32 random bytes. A shorter file is damaged, never used.
SECRET_HEX_DIGITS = 64
# Unix seconds in ASCII digits; 12 digits last until the year 33658.
_EXPIRES = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


def media_dir(config: Config) -> Path:
    """Where media files live: `media.dir`, or `<data_dir>/media`."""
    return Path(config.media.dir).expanduser().resolve() if config.media.dir else config.data_path / "media"


def scratch_root(config: Config) -> Path:
    """Where per-task scratch directories are made: `media.scratch_dir`, or `<data_dir>/scratch`."""
    if config.media.scratch_dir:
        return Path(config.media.scratch_dir).expanduser().resolve()
    return config.data_path / "scratch"


def base_url(config: Config) -> str:
    """The absolute URL media links start with: `media.base_url`, or taskd's own HTTP address."""
    if config.media.base_url:
        return config.media.base_url.rstrip("/")
    host = config.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.http.port}"


def load_secret(config: Config) -> bytes:
    """The signing key: `media.secret`, or one made once and kept (mode 0600) in `<data_dir>/media_secret`.

    Raises ConfigError, one line naming the file, when the kept file is empty or truncated:
    signing with it would let anyone forge media links.
    """
    if config.media.secret:
        return config.media.secret.encode()
    path = config.data_path / SECRET_FILE
    try:
        kept = read_kept(path).strip()
    except FileNotFoundError:
        kept = _make_secret(path)
    if len(kept) < SECRET_HEX_DIGITS:
        raise ConfigError(
            f"{path} holds {len(kept)} characters, not a media signing secret of {SECRET_HEX_DIGITS} "
            "(empty or truncated): delete it to have taskd make a new one, or set media.secret"
        )
    warn_if_readable(path)
    return kept


def _make_secret(path: Path) -> bytes:
    # Made whole or not at all (taskd.files.create_once): no process ever reads half a secret, and
    # when two start at once the first one made is the one both use.
    made = secrets.token_hex(SECRET_HEX_DIGITS // 2).encode()
    return made if create_once(path, made) else read_kept(path).strip()


def valid_name(name: str) -> bool:
    """True for a safe path segment: a project id or a file name, never `..` or a hidden file.

    The same shape as a project id at submit (shapes.PROJECT_ID): it starts with a letter or digit
    and holds no `/`, so it is never a dot segment; `..` inside (`take..2`) is an ordinary name.
    """
    return bool(_NAME.fullmatch(name))


@attrs.frozen
class StoredMedia:
    """A file in the store: its path (None in a bucket), its signed URL and its size."""

    path: Path | None
    url: str
    file_size: int


class MediaStore:
    """Stores files per project and signs and checks download URLs."""

    def __init__(self, root: Path, base: str, secret: bytes, ttl: int, previous: bytes = b"") -> None:
        self.root = root
        self.base = base
        self._secret = secret
        # media.previous_secret: checked, never used to sign.
        self._previous = previous
        self.ttl = ttl

    @classmethod
    def from_config(cls, config: Config) -> MediaStore:
        """The store `config` describes."""
        media = config.media
        return cls(
            media_dir(config),
            base_url(config),
            load_secret(config),
            media.url_ttl,
            media.previous_secret.encode(),
        )

    def path_of(self, project_id: str, filename: str) -> Path | None:
        """The file's path, or None for an unsafe name."""
        if not (valid_name(project_id) and valid_name(filename)):
            return None
        return self.root / project_id / filename

    def put(self, project_id: str, filename: str, source: Path) -> StoredMedia:
        """Copy `source` into the project's folder (whole or not at all: through a partial file) and sign its URL."""
        target = self.path_of(project_id, filename)
        if target is None:
            raise ValueError(f"unsafe media name {project_id}/{filename}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{filename}.partial")
        try:
            shutil.copyfile(source, partial)
            os.replace(partial, target)
        except BaseException:
            # A copy cut short (a full disk) would hold its space until the sweeper's retention.
            partial.unlink(missing_ok=True)
            raise
        return StoredMedia(target, self.url(project_id, filename), target.stat().st_size)

    def signature(self, project_id: str, filename: str, expires: int, secret: bytes | None = None) -> str:
        """HMAC-SHA256 of `<project_id>/<filename>:<expires>` under the server secret (or `secret`), hex."""
        message = f"{project_id}/{filename}:{expires}".encode()
        return hmac.new(self._secret if secret is None else secret, message, hashlib.sha256).hexdigest()

    def url(self, project_id: str, filename: str, now: float | None = None) -> str:
        """The absolute download URL, valid for `ttl` seconds from now."""
        expires = int(now if now is not None else model.now()) + self.ttl
        sig = self.signature(project_id, filename, expires)
        return f"{self.base}/media/{project_id}/{filename}?expires={expires}&sig={sig}"

    def locate(self, url: str) -> tuple[str, str] | None:
        """`(project_id, filename)` of a URL this store signed (`<base>/media/<project>/<file>?…`), else None."""
        start = f"{self.base}/media/"
        if not url.startswith(start):
            return None
        parts = url[len(start) :].split("?", 1)[0].split("/")
        if len(parts) != 2 or self.path_of(parts[0], parts[1]) is None:
            return None
        return parts[0], parts[1]

    def exists(self, project_id: str, filename: str) -> bool:
        """True when the file is stored."""
        path = self.path_of(project_id, filename)
        return path is not None and path.is_file()

    def remove(self, project_id: str, filename: str) -> None:
        """Delete the file if it is stored."""
        path = self.path_of(project_id, filename)
        if path is not None:
            path.unlink(missing_ok=True)

    def check(
        self, project_id: str, filename: str, expires: str, sig: str, now: float | None = None
    ) -> str | None:
        """None if the signature is good and unexpired, else why not."""
        if not _EXPIRES.fullmatch(expires):
            return "Media link is missing a valid expiry"
        if not _SIGNATURE.fullmatch(sig):
            return "Media link signature is invalid"
        signed = False
        for secret in (self._secret, self._previous):
            # Both compared (when there are two), so the time taken says nothing of which one matched.
            if secret:
                expected = self.signature(project_id, filename, int(expires), secret)
                signed |= hmac.compare_digest(expected.encode(), sig.encode())
        if not signed:
            return "Media link signature is invalid"
        if int(expires) < (now if now is not None else model.now()):
            return "Media link has expired"
        return None
