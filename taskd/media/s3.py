"""The S3 media backend: outputs in an S3-compatible bucket, handed out as presigned GET URLs.

Every call is blocking (boto3): `put` and the sweep run in threads, and `url` only computes a
signature (no request), so it is cheap enough for the event loop on every status read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from yarl import URL

from taskd.config import Config, ConfigError, S3Config
from taskd.errors import TransientError
from taskd.logs import shorten
from taskd.media import content_types
from taskd.media.store import StoredMedia, valid_name

log = logging.getLogger("taskd.media")

# S3's own limit on the keys of one DeleteObjects request.
DELETE_BATCH = 1000
# Presigned URLs are valid for at most 7 days (SigV4).
MAX_PRESIGN_S = 7 * 24 * 3600
# Kept with each object and sent by the bucket with it, as /media sends its files (taskd.http.media):
# no shared cache keeps a tenant's file, and a browser asks again before each reuse, so a deleted
# object is not shown from a cache (without it, fresh by its Last-Modified date alone).
CACHE_CONTROL = "private, no-cache"


def _boto3() -> Any:
    try:
        import boto3  # the `s3` extra: only media.backend = "s3" needs it
        import botocore.config
    except ImportError:
        raise ConfigError("media.backend is s3 but boto3 is not installed: pip install 'taskd[s3]'") from None
    return boto3, botocore.config


class S3Store:
    """Stores files per project under `<prefix><project_id>/<filename>` in one bucket; signs GET URLs."""

    def __init__(self, settings: S3Config, ttl: int) -> None:
        boto3, botocore_config = _boto3()
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.ttl = min(ttl, MAX_PRESIGN_S)
        credentials = {}
        if settings.access_key_id or settings.secret_access_key:
            credentials = {
                "aws_access_key_id": settings.access_key_id,
                "aws_secret_access_key": settings.secret_access_key,
            }
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint or None,
            region_name=settings.region,
            config=botocore_config.Config(
                signature_version="s3v4",
                s3={"addressing_style": settings.addressing_style},
                connect_timeout=min(settings.timeout, 10.0),
                read_timeout=settings.timeout,
                # Two quick tries inside one call; the task's own retries (with backoff) do the rest.
                retries={"mode": "standard", "total_max_attempts": 2},
            ),
            **credentials,
        )
        # What every URL this store signs starts with, to recognise them when re-signing. Signing
        # needs credentials: with none configured or found by botocore, start-up stops here.
        try:
            probe = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": f"{self.prefix}_"}, ExpiresIn=60
            )
        except Exception as exc:  # botocore's NoCredentialsError and kin
            raise ConfigError(
                f"media.s3: cannot sign URLs ({describe(exc)}): set access_key_id and secret_access_key"
            ) from None
        self._url_start = probe.split("?", 1)[0][:-1]
        # The same as project_of compares a URL: its origin, and its path decoded up to the key's project.
        self._origin = _origin(URL(probe))
        self._key_start = URL(probe).path[:-1]
        # The access key id every URL this store signs names (SigV4's X-Amz-Credential, `<id>/<scope>`).
        self._access_key_id = _credential(probe)

    @classmethod
    def from_config(cls, config: Config) -> S3Store:
        """The store of `config.media.s3`."""
        return cls(config.media.s3, config.media.url_ttl)

    @property
    def where(self) -> str:
        """The bucket as people name it, for messages."""
        return f"s3://{self.bucket}/{self.prefix}"

    def key_of(self, project_id: str, filename: str) -> str | None:
        """The object key, or None for an unsafe name."""
        if not (valid_name(project_id) and valid_name(filename)):
            return None
        return f"{self.prefix}{project_id}/{filename}"

    def put(self, project_id: str, filename: str, source: Path) -> StoredMedia:
        """Upload `source` (multipart when large) and sign its URL; TransientError when the store fails."""
        key = self.key_of(project_id, filename)
        if key is None:
            raise ValueError(f"unsafe media name {project_id}/{filename}")
        content_type = content_types.content_type(filename)
        try:
            self._client.upload_file(
                str(source),
                self.bucket,
                key,
                ExtraArgs={"ContentType": content_type, "CacheControl": CACHE_CONTROL},
            )
        except Exception as exc:  # boto3 raises botocore and s3transfer errors of many kinds
            raise TransientError(
                f"Media store {self.where} refused or failed the upload: {describe(exc)}"
            ) from None
        return StoredMedia(None, self.url(project_id, filename), source.stat().st_size)

    def url(self, project_id: str, filename: str) -> str:
        """A presigned GET URL valid for `ttl` seconds (SigV4 caps it at 7 days); no request is made."""
        return str(
            self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": f"{self.prefix}{project_id}/{filename}"},
                ExpiresIn=self.ttl,
            )
        )

    def locate(self, url: str) -> tuple[str, str] | None:
        """`(project_id, filename)` of a URL this store signed, else None."""
        base = url.split("?", 1)[0]
        if not base.startswith(self._url_start):
            return None
        parts = unquote(base[len(self._url_start) :]).split("/")
        if len(parts) != 2 or self.key_of(parts[0], parts[1]) is None:
            return None
        return parts[0], parts[1]

    def project_of(self, url: str) -> str | None:
        """The project folder of this store's objects that `url` names: at the address this store
        signs for (signed or not), or signed with its credentials under any other name of the store
        (its IP address, the other addressing style, a proxy's path); else None.

        Read as the fetch sends it (yarl: dot segments removed, the scheme and host in lower case,
        an escaped letter decoded) and as the store reads its key (every escape decoded, `%2F` a
        `/`): compared as written, `<prefix>mine/../theirs/x`, `HTTP://…` or `…/x#y` named another
        project's object and passed as no link of the store. A key that is no `<project>/<file>`
        under the prefix is returned whole, which no project's name equals: nothing the task may read.
        """
        try:
            parsed = URL(url)
        except ValueError:
            return None
        path = parsed.path
        if _origin(parsed) == self._origin and path.startswith(self._key_start):
            key = path[len(self._key_start) :]
        elif self._access_key_id is not None and _credential(url) == self._access_key_id:
            # The key is `<prefix><project_id>/<filename>`, the path's end in either addressing
            # style (the prefix may end inside a name: `media-`).
            at = path.rfind(f"/{self.prefix}")
            key = path[at + 1 + len(self.prefix) :] if at >= 0 else path
        else:
            return None
        project_id, _, filename = key.rpartition("/")
        return project_id if self.key_of(project_id, filename) is not None else key

    def exists(self, project_id: str, filename: str) -> bool:
        """True when the object is there; TransientError when the store cannot be asked."""
        key = self.key_of(project_id, filename)
        if key is None:
            return False
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except self._client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise TransientError(f"Media store {self.where} failed: {describe(exc)}") from None
        except Exception as exc:
            raise TransientError(f"Media store {self.where} failed: {describe(exc)}") from None
        return True

    def remove(self, project_id: str, filename: str) -> None:
        """Delete the object (S3 answers the same whether it was there or not)."""
        key = self.key_of(project_id, filename)
        if key is not None:
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def objects(self) -> Iterator[tuple[str, datetime]]:
        """Every `(key, last_modified)` under the prefix that names a project's file."""
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for item in page.get("Contents", []):
                rest = item["Key"][len(self.prefix) :].split("/")
                if len(rest) == 2 and self.key_of(*rest):
                    yield item["Key"], item["LastModified"]

    def uploads(self) -> Iterator[tuple[str, str, datetime]]:
        """Every `(key, upload id, initiated)` of a multipart upload under the prefix, of a project's
        file, neither completed nor aborted."""
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            for item in page.get("Uploads", []):
                rest = item["Key"][len(self.prefix) :].split("/")
                if len(rest) == 2 and self.key_of(*rest):
                    yield item["Key"], item["UploadId"], item["Initiated"]

    def abort(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload: the store drops the parts it holds."""
        self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def delete(self, keys: list[str]) -> tuple[int, int]:
        """Delete `keys` (at most DELETE_BATCH); returns (deleted, errors)."""
        answer = self._client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}
        )
        errors = answer.get("Errors", [])
        for error in errors:
            log.warning("media sweep: removing s3 key %s failed: %s", error.get("Key"), error.get("Message"))
        return len(keys) - len(errors), len(errors)


def _origin(url: URL) -> tuple[str, str, int | None]:
    # A host's trailing dot names the same host (`s3.example.com.`).
    return url.scheme, (url.host or "").rstrip("."), url.port


def _credential(url: str) -> str | None:
    """The access key id a presigned URL was signed with, or None."""
    try:
        credential = parse_qs(urlsplit(url).query).get("X-Amz-Credential")
    except ValueError:
        return None
    return credential[0].split("/", 1)[0] if credential else None


def describe(exc: BaseException) -> str:
    """One line about a failed S3 call: the server's error code and message, never the credentials.

    boto3's transfer errors wrap botocore's (whose `response` has the code) with the local file's
    path in their own text: the wrapped botocore error is described instead.
    """
    cause = exc
    while not type(cause).__module__.startswith("botocore"):
        inner = cause.__cause__ or cause.__context__
        if inner is None:
            break
        cause = inner
    if not isinstance(getattr(cause, "response", None), dict):
        # Connection errors: botocore's text names the endpoint ("Could not connect to the endpoint URL").
        return str(cause) or type(cause).__name__
    error = getattr(cause, "response", {}).get("Error", {})
    # The store's own words: it may answer any length, on several lines (they reach the task's
    # error, its webhook and the logs), so they are put on one line and cut short.
    code, message = shorten(str(error.get("Code", ""))), shorten(str(error.get("Message", "")))
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
        return f"{code}: the credentials media.s3.access_key_id / secret_access_key were refused"
    return f"{code}: {message}".strip(": ") or type(cause).__name__
