"""A loopback Payload CMS speaking its REST upload protocol: `POST /api/<collection>` (multipart `file`
and `_payload`), `GET /api/<collection>?where[filename][equals]=…` (its documents of one filename),
API-key auth (`<slug> API-Key <key>`) and `POST /api/users/login` → JWT."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
from typing import Any

import attrs
from aiohttp import web
from fake_media_apis import _Server


@attrs.define
class Upload:
    """One upload the CMS accepted."""

    doc_id: int
    filename: str
    content_type: str
    data: bytes
    fields: dict[str, Any]
    authorization: str


class FakePayload(_Server):
    """Accepts uploads to one collection for one API key or one user; `fail_next` answers 500 that many times.

            `answer` replaces the body of a successful upload (for hostile answers); `refusal` is the message
            of a 403, where `{authorization}` stands for the header it refused (a CMS or proxy that echoes it);
            with `accept_tokens` off, a login succeeds but its token is refused; an upload's body is read
            `read_delay` seconds after it arrives (a slow CMS: the client's sending waits meanwhile), and
            not before `hold` is set, when there is one (a CMS that answers when the test says); with
            `answer_hold`, an upload's document is made and its answer waits for that event (a CMS that
            has the whole file when the client goes). `searches` counts the GETs of the collection; with
        `searchable` off they answer 404 (a CMS in front of which the collection cannot be read), and
    `search_errors` are the statuses of the next ones, first to last (then they work).
    """

    def __init__(
        self,
        *,
        collection: str = "media",
        api_key: str = "payload-key-1",
        email: str = "ops@example.com",
        password: str = "hunter22",
    ) -> None:
        super().__init__()
        self.app = web.Application(client_max_size=1024**3)  # a media file may be large
        self.collection = collection
        self.api_key = api_key
        self.email = email
        self.password = password
        self.tokens: set[str] = set()
        self.fail_next = 0
        self.answer: bytes | None = None
        self.refusal = "You are not allowed to perform this action."
        self.accept_tokens = True
        self.read_delay = 0.0
        self.hold: asyncio.Event | None = None
        self.answer_hold: asyncio.Event | None = None
        self.searches = 0
        self.searchable = True
        self.search_errors: list[int] = []
        self.uploads: list[Upload] = []
        self.posts = 0
        self._ids = itertools.count(101)
        self.app.router.add_post("/api/users/login", self._login)
        self.app.router.add_post("/api/{collection}", self._upload)
        self.app.router.add_get("/api/{collection}", self._search)

    async def _login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("email") != self.email or body.get("password") != self.password:
            return web.json_response(
                {"errors": [{"message": "The email or password provided is incorrect."}]}, status=401
            )
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        return web.json_response({"message": "Auth Passed", "user": {"id": 1}, "token": token, "exp": 0})

    def _authorised(self, header: str) -> bool:
        if header == f"users API-Key {self.api_key}":
            return True
        scheme, _, token = header.partition(" ")
        return scheme == "JWT" and self.accept_tokens and token in self.tokens

    async def _upload(self, request: web.Request) -> web.Response:
        self.posts += 1
        if request.match_info["collection"] != self.collection:
            return web.json_response(
                {"errors": [{"message": "The requested resource was not found."}]}, status=404
            )
        if not self._authorised(request.headers.get("Authorization", "")):
            return web.json_response(
                {
                    "errors": [
                        {"message": self.refusal.format(authorization=request.headers.get("Authorization"))}
                    ]
                },
                status=403,
            )
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.json_response({"errors": [{"message": "Something went wrong."}]}, status=500)
        await asyncio.sleep(self.read_delay)
        if self.hold is not None:
            await self.hold.wait()
        file: tuple[str, str, bytes] | None = None
        fields: dict[str, Any] = {}
        async for part in await request.multipart():
            if part.name == "file":
                file = (part.filename or "", part.headers.get("Content-Type", ""), await part.read())
            elif part.name == "_payload":
                fields = json.loads(await part.text())
        if file is None:
            return web.json_response({"errors": [{"message": "No files were uploaded."}]}, status=400)
        if self.answer is not None:
            return web.Response(body=self.answer, content_type="application/json", status=201)
        doc_id = next(self._ids)
        self.uploads.append(Upload(doc_id, *file, fields, request.headers["Authorization"]))
        if self.answer_hold is not None:
            await self.answer_hold.wait()
        return web.json_response(
            {"doc": self._doc(self.uploads[-1]), "message": "Media successfully created."}, status=201
        )

    def _doc(self, upload: Upload) -> dict[str, Any]:
        return {
            "id": upload.doc_id,
            "filename": upload.filename,
            "filesize": len(upload.data),
            **upload.fields,
        }

    async def _search(self, request: web.Request) -> web.Response:
        self.searches += 1
        if not self.searchable:
            return web.json_response({"errors": [{"message": "Not Found"}]}, status=404)
        if self.search_errors:
            return web.json_response({"errors": [{"message": "Busy."}]}, status=self.search_errors.pop(0))
        if not self._authorised(request.headers.get("Authorization", "")):
            return web.json_response({"errors": [{"message": "You are not allowed."}]}, status=403)
        name = request.query.get("where[filename][equals]")
        docs = [self._doc(upload) for upload in self.uploads if name is None or upload.filename == name]
        limit = int(request.query.get("limit", "10"))
        return web.json_response({"docs": docs[:limit], "totalDocs": len(docs), "limit": limit, "page": 1})
