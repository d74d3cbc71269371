"""Several API nodes on one Redis behind a load balancer: what a caller sees when its requests land
on different nodes, and when the node answering one of them dies (docs/production.md#many-hosts-one-service).

Two `taskd serve --no-worker` processes, the first one's embedded Valkey the shared Redis, and a
small balancer in front that sends each request to the next live node, as HAProxy or nginx would.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

import aiohttp
import attrs
import pytest
from aiohttp import web
from conftest import TaskdProcess, child_env
from fake_taskd import fake_taskd

from taskd.client import TaskClient, TaskdConnectionError
from taskd.embedded import EmbeddedValkey

API_KEY = "api-nodes-key-0123456789"
# What a balancer passes on each way; the hop-by-hop ones and the length are its own.
FORWARDED = ("X-API-Key", "Idempotency-Key", "Content-Type", "Prefer", "Last-Event-ID")


def _gateway_timeout(_: web.Request) -> web.StreamResponse:
    # nginx past its proxy_read_timeout
    return web.Response(
        status=504, text="<html><body><h1>504 Gateway Time-out</h1></body></html>", content_type="text/html"
    )


def _backend_timeout(_: web.Request) -> web.StreamResponse:
    # Google Cloud's load balancer past its backend service timeout (30 s by default)
    return web.Response(
        status=502, text="<html><body>502 Server Error</body></html>", content_type="text/html"
    )


def _idle_timeout(request: web.Request) -> web.StreamResponse:
    # A balancer that closes a connection idle past its timeout (an AWS classic ELB's 60 s)
    assert request.transport is not None
    request.transport.close()
    return web.Response()


@attrs.define
class Balancer:
    """Sends each request to the next of `nodes` that is still running. `answer_lost`, when set,
    is applied to the next answer instead of passing it on (then cleared): the node's death.
    `held_timeout`, when set, is how long it waits for the answer to a request sent with `Prefer`
    before `gives_up` answers it, as a proxy whose timeout is shorter than the wait does (only
    those: a loaded machine's slow plain answer is not given up on); `sent` is each request's
    headers as it passed them on."""

    nodes: list[TaskdProcess]
    session: aiohttp.ClientSession
    answer_lost: Callable[[web.Request, TaskdProcess], web.StreamResponse] | None = None
    held_timeout: float | None = None
    gives_up: Callable[[web.Request], web.StreamResponse] = _gateway_timeout
    sent: list[dict[str, str]] = attrs.Factory(list)
    turns: itertools.count[int] = attrs.Factory(itertools.count)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        live = [node for node in self.nodes if node.proc.poll() is None]
        node = live[next(self.turns) % len(live)]
        headers = {name: request.headers[name] for name in FORWARDED if name in request.headers}
        self.sent.append(headers)
        data = await request.read()
        try:
            async with asyncio.timeout(self.held_timeout if "Prefer" in headers else None):
                async with self.session.request(
                    request.method, f"{node.base_url}{request.rel_url}", headers=headers, data=data
                ) as upstream:
                    body = await upstream.read()
        except TimeoutError:
            return self.gives_up(request)
        if self.answer_lost is not None:
            lose, self.answer_lost = self.answer_lost, None
            return lose(request, node)
        return web.Response(status=upstream.status, body=body, content_type=upstream.content_type)


@pytest.fixture
async def balancer(spawn_taskd, tmp_path) -> AsyncIterator[tuple[str, Balancer]]:
    env = {"TASKD_AUTH__API_KEYS": API_KEY}
    first = spawn_taskd("serve", "--no-worker", env=child_env(tmp_path / "node-1", **env))
    redis_url = EmbeddedValkey.running_url(tmp_path / "node-1")
    assert redis_url is not None
    second = spawn_taskd(
        "serve", "--no-worker", env=child_env(tmp_path / "node-2", TASKD_REDIS__URL=redis_url, **env)
    )
    async with aiohttp.ClientSession() as session:
        front = Balancer([second, first], session)
        async with fake_taskd({"/{path:.*}": front.forward}) as url:
            yield url, front


def _killed_then_502(_: web.Request, node: TaskdProcess) -> web.StreamResponse:
    node.proc.kill()  # SIGKILL: the node stored the task, and died before its answer left
    node.proc.wait(10)
    return web.Response(
        status=502, text="<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html"
    )


def _killed_then_dropped(request: web.Request, node: TaskdProcess) -> web.StreamResponse:
    node.proc.kill()
    node.proc.wait(10)
    assert request.transport is not None
    request.transport.close()  # the caller's connection ends with no answer, as a direct one would
    return web.Response()


@pytest.mark.parametrize("lost", [_killed_then_502, _killed_then_dropped], ids=["502", "dropped"])
async def test_a_client_submit_whose_node_died_after_storing_it_is_resent_to_another_node_without_a_second_task(
    balancer, lost
):
    url, front = balancer
    front.answer_lost = lost
    async with TaskClient(url, API_KEY, retries=2) as client:
        submitted = await client.submit("lost-answer", "noop", {})
        page = await client.list_tasks("lost-answer")

    assert [task.task_id for task in page.tasks] == [submitted.task_id]


@pytest.mark.parametrize(
    "gives_up", [_gateway_timeout, _backend_timeout, _idle_timeout], ids=["504", "502", "closed"]
)
async def test_a_client_submit_waiting_longer_than_the_balancer_does_is_resent_without_the_wait(
    balancer, gives_up
):
    # The balancer gives up on every held answer before the wait is up: a resend that waits again
    # is given up on again, each try one more wait and one more submit of the key's quota, and then
    # raises. Sent without the wait, the resend answers at once with the task the first one stored.
    url, front = balancer
    front.held_timeout, front.gives_up = 1.0, gives_up
    async with TaskClient(url, API_KEY, retries=3) as client:
        submitted = await client.submit("waited", "noop", {}, wait=30)
        page = await client.list_tasks("waited")

    submits = [headers.get("Prefer") for headers in front.sent if "Idempotency-Key" in headers]
    assert (submits, submitted.task, [task.task_id for task in page.tasks]) == (
        ["wait=30", None],
        None,
        [submitted.task_id],
    )


async def test_a_client_submit_whose_connection_is_refused_is_raised_without_a_resend(monkeypatch):
    # Nothing reached taskd, so there is nothing to learn: a mistyped URL or a stopped server is
    # said at once, not after the retries' pauses.
    pauses: list[int] = []
    monkeypatch.setattr(TaskClient, "_backoff", staticmethod(lambda tries: pauses.append(tries) or 0.0))
    async with fake_taskd({}) as url:
        pass  # gone: its port refuses connections

    async with TaskClient(url, API_KEY, retries=2) as client:
        with pytest.raises(TaskdConnectionError) as refused:
            await client.submit("refused", "noop", {})

    assert (refused.value.dropped, pauses) == (False, [])
