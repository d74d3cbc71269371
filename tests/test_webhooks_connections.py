"""The webhook sender's HTTP client (taskd/webhooks/connections.py): keep-alive pools per receiver,
answers parsed and bounded, connections only where the resolver allows, TLS checked."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import select
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.resolver import ThreadedResolver
from test_webhooks_guard import ScriptedResolver
from webhook_receiver import WebhookReceiver
from yarl import URL

from taskd.net.guard import ForbiddenAddress, GuardedResolver
from taskd.webhooks.connections import MAX_BODY, MAX_HEAD, BadResponse, ReceiverConnections

TLS = Path(__file__).parent / "tls"  # a test authority and certificates it signed (tests/tls/make.sh)
JSON = {"Content-Type": "application/json"}
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class ScriptedServer:
    """A TCP server whose connections each run `handler(reader, writer, n)`, n counting from 0."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed_by_peer = 0  # connections the client closed
        self.port = 0
        self._handlers: set[asyncio.Task[None]] = set()

    def url(self, path: str = "/hook") -> URL:
        return URL(f"http://127.0.0.1:{self.port}{path}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = self.connections
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self.handler(reader, writer, n)
            await reader.read()  # until the client closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed while the handler read
        finally:
            self._handlers.discard(task)
            writer.transport.abort()
        self.closed_by_peer += 1

    async def stop(self) -> None:
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)


@contextlib.asynccontextmanager
async def scripted(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(handler)
    listening = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=tls)
    server.port = listening.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listening.close()
        await server.stop()
        await listening.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and body (sent with Content-Length; none, as a proxy's CONNECT, is empty)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    return head + await reader.readexactly(length)


def answering(*answers: bytes, then_close: bool = False) -> Handler:
    """Each request on a connection gets the next of `answers` (the last one repeats)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        for n in range(1000):
            await read_request(reader)
            writer.write(answers[min(n, len(answers) - 1)])
            await writer.drain()
            if then_close:
                writer.close()
                return

    return handler


@pytest.fixture
async def pool() -> AsyncIterator[ReceiverConnections]:
    connections = ReceiverConnections(ThreadedResolver())
    yield connections
    connections.close()


async def test_a_post_reaches_the_receiver_with_its_headers_and_body_and_gives_its_status(pool):
    async with WebhookReceiver() as receiver:
        receiver.respond(503)
        first = await pool.post(URL(receiver.url("/in?x=1")), {**JSON, "webhook-id": "msg_1"}, b'{"a":1}')
        second = await pool.post(URL(receiver.url()), JSON, b"{}")

    request = receiver.received[0]
    assert (first, second) == (503, 200)
    assert (request.path, request.body) == ("/in", b'{"a":1}')
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert (request.headers["content-type"], request.headers["webhook-id"]) == ("application/json", "msg_1")
    assert request.headers["content-length"] == "7"


async def test_posts_to_one_receiver_share_one_connection(pool):
    async with scripted(answering(OK)) as server:
        statuses = [await pool.post(server.url(), JSON, b"{}") for _ in range(3)]

    assert statuses == [200, 200, 200]
    assert server.connections == 1


async def test_a_post_on_a_kept_connection_is_written_before_post_returns(pool):
    # So a caller in the middle of other work (the worker, after a finish) sends without waiting
    # for a turn of the loop. The receiver's socket is watched without giving the loop a turn.
    sockets = []

    async def keeps_its_socket(reader, writer, n):
        sockets.append(writer.get_extra_info("socket").fileno())
        await answering(OK)(reader, writer, n)

    async with scripted(keeps_its_socket) as server:
        await pool.post(server.url(), JSON, b"{}")
        answer = pool.post(server.url(), JSON, b'{"second":1}')
        readable, _, _ = select.select(sockets, [], [], 5)
        status = await answer

    assert (readable, status) == (sockets, 200)


async def test_each_receiver_has_connections_of_its_own(pool):
    async with scripted(answering(OK)) as one, scripted(answering(OK)) as other:
        for _ in range(2):
            await pool.post(one.url(), JSON, b"{}")
            await pool.post(other.url(), JSON, b"{}")

    assert (one.connections, other.connections) == (1, 1)


async def test_an_answer_that_says_connection_close_is_not_reused(pool):
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    async with scripted(answering(closing)) as server:
        await pool.post(server.url(), JSON, b"{}")
        await pool.post(server.url(), JSON, b"{}")

    assert server.connections == 2


async def test_a_connection_the_receiver_closed_after_answering_is_replaced(pool):
    async with scripted(answering(OK, then_close=True)) as server:
        first = await pool.post(server.url(), JSON, b"{}")
        await asyncio.sleep(0.05)
        second = await pool.post(server.url(), JSON, b"{}")

    assert (first, second) == (200, 200)
    assert server.connections == 2


async def test_a_post_that_a_reused_connection_drops_unanswered_is_sent_once_more_on_a_new_one(pool):
    requests = []

    async def drops_its_second_request(reader, writer, n):
        for count in range(2):
            requests.append((n, await read_request(reader)))
            if n == 0 and count == 1:
                writer.transport.abort()  # as a receiver whose idle timeout fired at the same moment
                return
            writer.write(OK)

    async with scripted(drops_its_second_request) as server:
        first = await pool.post(server.url(), JSON, b'{"n":1}')
        second = await pool.post(server.url(), JSON, b'{"n":2}')

    assert (first, second) == (200, 200)
    assert [(n, body.endswith(b'{"n":2}')) for n, body in requests] == [(0, False), (0, True), (1, True)]


async def test_a_new_connection_dropped_unanswered_fails_without_a_second_try(pool):
    requests = []

    async def drops(reader, writer, n):
        requests.append(await read_request(reader))
        writer.transport.abort()

    async with scripted(drops) as server:
        with pytest.raises(ConnectionError):
            await pool.post(server.url(), JSON, b"{}")

    assert len(requests) == 1


async def test_an_answer_that_is_not_http_fails(pool):
    async with scripted(answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as server:
        with pytest.raises(BadResponse, match="not HTTP"):
            await pool.post(server.url(), JSON, b"{}")


async def test_an_endless_answer_head_fails_once_it_passes_the_cap(pool):
    async def endless_header(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Padding: ")
        while True:  # until the client hangs up
            writer.write(b"a" * 8192)
            await writer.drain()

    async with scripted(endless_header) as server:
        with pytest.raises(BadResponse, match=f"head over {MAX_HEAD}"):
            async with asyncio.timeout(5):
                await pool.post(server.url(), JSON, b"{}")


async def test_informational_answers_before_the_final_one_are_passed_over(pool):
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    async with scripted(answering(early_hints + b"HTTP/1.1 204 No Content\r\n\r\n")) as server:
        assert await pool.post(server.url(), JSON, b"{}") == 204


async def test_the_status_comes_with_the_head_and_the_connection_is_reused_once_its_body_has_come(pool):
    async def slow_body(reader, writer, _):
        for _ in range(2):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            await asyncio.sleep(0.1)
            writer.write(b"hello")

    async with scripted(slow_body) as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        status = await pool.post(server.url(), JSON, b"{}")
        answered_in = loop.time() - started
        await asyncio.sleep(0.2)
        await pool.post(server.url(), JSON, b"{}")

    assert (status, server.connections) == (200, 1)
    assert answered_in < 0.1


async def test_connections_past_the_cap_whose_answer_body_has_not_come_are_closed_at_once():
    # A receiver that answers 200 and never sends the body it announced: each POST opens a
    # connection, and only the first two are kept to wait for their body.
    pool = ReceiverConnections(ThreadedResolver(), max_draining=2)
    async with scripted(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")) as server:
        statuses = [await pool.post(server.url(), JSON, b"{}") for _ in range(5)]
        async with asyncio.timeout(5):
            while server.closed_by_peer < 3:
                await asyncio.sleep(0.01)
        kept = server.connections - server.closed_by_peer
    pool.close()

    assert statuses == [200] * 5
    assert (server.connections, kept) == (5, 2)


async def test_an_answer_body_over_the_cap_closes_its_connection(pool):
    big = f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode() + b"x" * (MAX_BODY + 1)
    async with scripted(answering(big)) as server:
        assert await pool.post(server.url(), JSON, b"{}") == 200
        await asyncio.sleep(0.05)
        await pool.post(server.url(), JSON, b"{}")

    assert server.connections == 2


async def test_a_post_given_up_by_its_caller_closes_its_connection(pool):
    async def never_answers(reader, writer, _):
        await read_request(reader)

    async with scripted(never_answers) as server:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pool.post(server.url(), JSON, b"{}")
        await asyncio.sleep(0.05)

    assert server.closed_by_peer == 1


async def test_an_idle_connection_is_closed_after_the_keepalive_time():
    pool = ReceiverConnections(ThreadedResolver(), keepalive=0.1)
    async with scripted(answering(OK)) as server:
        await pool.post(server.url(), JSON, b"{}")
        await asyncio.sleep(0.3)
        closed = server.closed_by_peer
        await pool.post(server.url(), JSON, b"{}")
    pool.close()

    assert (closed, server.connections) == (1, 2)


async def test_a_receiver_left_without_an_idle_connection_keeps_no_pool(pool):
    # Callback hosts come and go over a process's life: an emptied pool must not stay behind.
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    async with scripted(answering(OK, closing)) as server:
        await pool.post(server.url(), JSON, b"{}")
        kept = dict(pool._idle)
        await pool.post(server.url(), JSON, b"{}")

    assert list(kept) == [("http", "127.0.0.1", server.port)]
    assert pool._idle == {}


async def test_close_closes_every_connection():
    pool = ReceiverConnections(ThreadedResolver())
    async with scripted(answering(OK)) as server:
        await pool.post(server.url(), JSON, b"{}")
        pool.close()
        await asyncio.sleep(0.05)

    assert server.closed_by_peer == 1


async def test_a_name_is_connected_at_the_address_its_resolver_checked_and_a_rebinding_is_refused(caplog):
    caplog.set_level(logging.DEBUG, logger="taskd.net")
    # Only 127.0.0.1 counts as allowed here, standing in for a public address the test can reach.
    dns = ScriptedResolver(["127.0.0.1"], ["10.255.255.1"])
    pool = ReceiverConnections(GuardedResolver(dns, allowed=lambda ip: str(ip) == "127.0.0.1"))
    async with WebhookReceiver() as receiver:
        url = URL(f"http://hooks.example:{receiver.port}/hook")
        first = await pool.post(url, JSON, b"{}")
        pool.close()  # the next POST needs a new connection, and so a new lookup
        with pytest.raises(
            ForbiddenAddress, match=r"hooks\.example resolves to an address that is not public"
        ):
            await pool.post(url, JSON, b"{}")

    assert first == 200
    # The second lookup's answer is what was refused (told to the operator's log, not the tenant).
    assert "hooks.example resolves to 10.255.255.1" in caplog.text
    assert dns.lookups == ["hooks.example", "hooks.example"]
    assert receiver.received[0].headers["host"] == f"hooks.example:{receiver.port}"
    assert len(receiver.received) == 1


async def test_credentials_in_the_url_are_sent_as_basic_auth(pool):
    async with WebhookReceiver() as receiver:
        await pool.post(URL(f"http://hook%20user:s3cret@127.0.0.1:{receiver.port}/hook"), JSON, b"{}")

    [request] = receiver.received
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"hook user:s3cret").decode()


async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(pool):
    async with scripted(answering(OK)) as server:
        with pytest.raises(ValueError, match="line break"):
            await pool.post(server.url(), {"X-Note": "a\r\nX-Injected: 1"}, b"{}")

    assert server.connections == 0


@contextlib.asynccontextmanager
async def tls_receiver(name: str) -> AsyncIterator[int]:
    """An HTTPS server with the test authority's certificate for `name` (tests/tls/), answering 200; its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(TLS / f"{name}.pem")
    async with scripted(answering(OK), tls=context) as server:
        yield server.port


def trusting_the_test_authority() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.load_verify_locations(TLS / "ca.pem")
    return context


async def test_https_goes_to_a_receiver_whose_certificate_is_trusted_for_its_name():
    pool = ReceiverConnections(ThreadedResolver(), tls=trusting_the_test_authority())
    async with tls_receiver("localhost") as port:
        statuses = [await pool.post(URL(f"https://localhost:{port}/hook"), JSON, b"{}") for _ in range(2)]
    pool.close()

    assert statuses == [200, 200]


async def test_https_refuses_a_certificate_issued_for_another_name():
    pool = ReceiverConnections(ThreadedResolver(), tls=trusting_the_test_authority())
    async with tls_receiver("hooks.example") as port:
        with pytest.raises(ssl.SSLCertVerificationError, match="match"):
            await pool.post(URL(f"https://localhost:{port}/hook"), JSON, b"{}")
    pool.close()


async def test_https_checks_certificates_against_the_systems_authorities_by_default(pool):
    async with tls_receiver("localhost") as port:
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await pool.post(URL(f"https://localhost:{port}/hook"), JSON, b"{}")
