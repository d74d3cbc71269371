"""`Expect: 100-continue` on the routes that read a body: refused at once when the headers already tell.

aiohttp's own expect handler sends `100 Continue` to every such request, so a client that asks first
(curl does, before a body over 1 MB) went on to upload a body that taskd then refused for its
declared size, its key, or the bodies its key already had arriving (`limits.open_bodies`). Where
the headers and that count decide the answer, it is sent instead of the `100` (RFC 9110, 10.1.1)
and the body never comes; an expectation taskd does not know is a 417 in the documented shape
rather than aiohttp's plain text. Runs before the middlewares (aiohttp calls it
between the headers and the handler), so it renders its answers itself.
"""

from __future__ import annotations

from aiohttp import HttpVersion11, web

from taskd import shapes
from taskd.http import auth
from taskd.http.bodies import OPEN_BODIES
from taskd.http.errors import answer_and_close, render, too_large
from taskd.http.responses import shape_response

CONTINUE = "100-continue"


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """The final answer when the headers decide it (417, 401, 413), else `100 Continue` and None."""
    if request.version != HttpVersion11:
        return None  # an HTTP/1.0 client knows no 100 Continue: it sends its body anyway
    expect = request.headers.get("Expect", "")
    answer = _answer_from_headers(request, expect)
    if answer is not None:
        # The client may send its body all the same, or wait for a 100 that never comes: the
        # connection is closed after the answer (aiohttp would wait 10 s for the unread body).
        await answer_and_close(request, answer)
        return answer
    if request.transport is not None:
        request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


def _answer_from_headers(request: web.Request, expect: str) -> web.Response | None:
    if expect.lower() != CONTINUE:
        return shape_response(
            shapes.Error("expectation_failed", f"Only 'Expect: {CONTINUE}' is understood"), 417
        )
    refused = auth.refusal(request)
    if refused is not None:
        return render(refused)
    if request.content_length is not None and request.content_length > request.client_max_size:
        return shape_response(shapes.Error("payload_too_large", too_large(request.client_max_size)), 413)
    # A key sending `limits.open_bodies` bodies already: its next one would be refused unread.
    key = auth.sent_key(request)
    if key is not None and (too_many := request.app[OPEN_BODIES].refusal(key)) is not None:
        return render(too_many)
    return None
