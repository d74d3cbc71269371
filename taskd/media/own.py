"""taskd's own media links, read from the media store instead of over HTTP.

A step of a chain is handed an earlier step's `media_url` (`{"$ref": "@0#/media_url"}`): a link to
taskd itself, at `media.base_url` or, by default, taskd's own loopback address, which the SSRF guard
refuses, and which a worker on another host may not reach at all. A URL at this taskd's media
origin and path, or one this store signed under another of taskd's names, is therefore never
fetched: its signature must check out, exactly as the media route checks it, and it must name a
file of the task's own project; then the file is read from the store. A link of another project is
refused even when its signature is good, so a task can read no more media than its own project's
(a signed link is a bearer token for whoever holds it, but not a way for one project's tasks to
pull another's files into their results).

With `media.backend = "s3"` a task's links are the bucket's presigned URLs, fetched over HTTP with
their own signature; one of another project's objects is refused just the same (S3Store.project_of),
as is an unsigned URL of one, which a bucket that lets taskd's network read would answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import attrs
from yarl import URL

from taskd.config import Config
from taskd.errors import TaskError
from taskd.media.store import MediaStore
from taskd.net.guarded import RedirectRefused


class BucketLinks(Protocol):
    """What OwnMedia asks of the s3 backend's store (taskd.media.s3.S3Store)."""

    def project_of(self, url: str) -> str | None: ...


@attrs.frozen
class MediaLinks:
    """This taskd's media links that a task's input may be: the local store's and, with the s3
    backend, the bucket's presigned URLs. Whatever reads a task's media inputs takes both (of), or
    another project's objects in the bucket were fetched (the built-in renderer's images did)."""

    store: MediaStore
    bucket: BucketLinks | None = None  # the s3 backend's store

    @classmethod
    def from_config(cls, config: Config) -> MediaLinks:
        """The stores `config` describes."""
        bucket = None
        if config.media.backend == "s3":
            from taskd.media.s3 import S3Store  # boto3 is the optional `s3` extra

            bucket = S3Store.from_config(config)
        return cls(MediaStore.from_config(config), bucket)

    def of(self, project_id: str) -> OwnMedia:
        """The links a task of `project_id` may read."""
        return OwnMedia(self.store, project_id, self.bucket)


@attrs.frozen
class OwnMedia:
    """The media links of this taskd's store that one project's task may read directly."""

    store: MediaStore
    project_id: str
    bucket: BucketLinks | None = None  # the s3 backend's store

    @classmethod
    def for_task(cls, config: Config, project_id: str) -> OwnMedia:
        """The stores `config` describes, for a task of `project_id`."""
        return MediaLinks.from_config(config).of(project_id)

    def _another_projects_object(self, url: str) -> bool:
        """Whether `url` names an object of another project in the s3 backend's bucket."""
        owner = None if self.bucket is None else self.bucket.project_of(url)
        return owner is not None and owner != self.project_id

    def _media_path(self, url: URL) -> str | None:
        """What follows `/media/` in `url` when it is a link to this store, else None: at its media
        origin and path, or signed by it under another name of taskd's."""
        base = URL(self.store.base)
        prefix = base.raw_path.rstrip("/") + "/media/"
        same_origin = (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)
        if same_origin and url.raw_path.startswith(prefix):
            return url.raw_path[len(prefix) :]
        return self._signed_path(url)

    def _signed_path(self, url: URL) -> str | None:
        """What follows the last `/media/` in `url` when this store's secret signed it, else None.

        A host compared as text misses taskd's other names (a trailing-dot host, its IP address,
        another DNS name, a proxy's path): fetched over HTTP, the media route would hand another
        project's file over for its good signature. Only this store can have made that signature.
        """
        _, found, media_path = url.raw_path.rpartition("/media/")
        segments = media_path.split("/")
        expires, sig = url.query.get("expires"), url.query.get("sig")
        if not found or len(segments) != 2 or expires is None or sig is None:
            return None
        project_id, filename = segments
        return media_path if self.store.check(project_id, filename, expires, sig) is None else None

    def is_link(self, url: URL) -> bool:
        """Whether `url` is at this store's media origin and path: a media link, good or not."""
        return self._media_path(url) is not None

    def refuse_redirect(self, target: URL) -> None:
        """A fetch's redirect check: a redirect to a media link is not followed. Such a link is read
        from the store, under find's checks, only when it is given itself: fetched over HTTP it would
        bring another project's file past them."""
        if self.is_link(target):
            raise RedirectRefused("it redirects to a media link of this taskd; give the link itself")
        if self._another_projects_object(str(target)):
            raise RedirectRefused("it redirects to a media link of another project")

    def find(self, url: str, what: str) -> Path | None:
        """The stored file `url` links to, or None when it is no link to this store.

        TaskError, naming the URL, for a link to the store that this task may not read: a bad or
        expired signature, another project's file, a name that is not a stored file's.
        """
        if self._another_projects_object(url):
            raise TaskError(f"{what} {url} was refused: it is a media link of another project")
        try:
            parsed = URL(url)
        except ValueError:
            return None
        media_path = self._media_path(parsed)
        if media_path is None:
            return None
        # Raw segments: an escaped "/" or "." stays escaped, and no valid name holds a "%".
        segments = media_path.split("/")
        path = self.store.path_of(*segments) if len(segments) == 2 else None
        if path is None:
            raise TaskError(f"{what} {url} was refused: it is not a valid media link")
        project_id, filename = segments
        if project_id != self.project_id:
            raise TaskError(f"{what} {url} was refused: it is a media link of another project")
        expires, sig = parsed.query.get("expires"), parsed.query.get("sig")
        if expires is None or sig is None:
            raise TaskError(f"{what} {url} was refused: the media link has no signature")
        problem = self.store.check(project_id, filename, expires, sig)
        if problem is not None:
            raise TaskError(f"{what} {url} was refused: {problem[0].lower()}{problem[1:]}")
        # The store writes plain files; a link (or anything else) put there is not served from it.
        if path.is_symlink() or not path.is_file():
            raise TaskError(f"{what} {url} was not found in the media store")
        return path
