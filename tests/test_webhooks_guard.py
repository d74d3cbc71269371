"""The SSRF guard: callback URLs must reach public addresses, at submit and at the connection itself."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from dns_server import DnsServer
from examples import TASK_DATA
from webhook_receiver import WebhookReceiver

from taskd.config import NetworkConfig, WebhooksConfig
from taskd.net import guard
from taskd.net.guard import ForbiddenAddress, GuardedResolver, check_literal_host, is_public

NON_PUBLIC_TARGETS = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://2130706433/hook",  # 127.0.0.1 written as one number
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.10/hook",
    "http://100.64.0.1/hook",  # CGNAT
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "http://[::1]/hook",
    "http://[fd00::1]/hook",
    "http://[fe80::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:169.254.169.254]/hook",
    "https://[::ffff:10.0.0.1]/hook",
]


async def submit(service, callback_url: str) -> tuple[int, dict]:
    body = {
        "project_id": "proj-1",
        "task_type": "test_prompt",
        "task_data": TASK_DATA["test_prompt"],
        "callback_url": callback_url,
    }
    async with service.client.post("/api/v1/tasks/submit", json=body) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("url", NON_PUBLIC_TARGETS)
async def test_non_public_callback_is_refused_at_submit(start_service, url):
    service = await start_service(workers=False)

    status, body = await submit(service, url)

    assert status == 400
    assert body["error"] == "validation_error"
    assert set(body["details"]) == {"callback_url"}
    assert "public address" in body["details"]["callback_url"]


@pytest.mark.parametrize("url", NON_PUBLIC_TARGETS)
async def test_non_public_callback_is_accepted_with_allow_private(start_service, url):
    service = await start_service(workers=False, webhooks=WebhooksConfig(allow_private=True))

    status, _ = await submit(service, url)

    assert status == 200


async def test_public_callback_address_is_accepted(start_service):
    service = await start_service(workers=False)

    status, _ = await submit(service, "https://93.184.216.34/hook")

    assert status == 200


async def test_callback_host_that_does_not_resolve_is_refused(start_service):
    service = await start_service(workers=False)

    status, body = await submit(service, "https://hooks.invalid/task-complete")

    assert status == 400
    assert body["details"]["callback_url"].startswith("Callback URL host could not be resolved")


async def test_refused_submission_stores_nothing(start_service):
    service = await start_service(workers=False)

    await submit(service, "http://169.254.169.254/")
    async with service.client.get("/api/v1/tasks/metrics") as response:
        metrics = (await response.json())["metrics"]

    assert metrics["total_tasks"] == 0


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("255.255.255.255", False),
        ("239.1.2.3", False),
        ("::1", False),
        ("::", False),
        ("fc00::1", False),
        ("fe80::1", False),
        ("ff0e::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
    ],
)
def test_address_classification(address, public):
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize("url", ["http://127.0.0.1/hook", "http://[::ffff:10.0.0.1]/", "ftp://8.8.8.8/"])
def test_send_time_check_refuses_literal_non_public_hosts(url):
    with pytest.raises(ForbiddenAddress):
        check_literal_host(url)


class ScriptedResolver(AbstractResolver):
    """Answers each lookup with the next list of addresses: a DNS server that can rebind."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        addresses = self.answers.pop(0)
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
            for a in addresses
        ]

    async def close(self) -> None:
        pass


async def test_resolver_refuses_a_name_that_resolves_to_a_private_address():
    guard = GuardedResolver(ScriptedResolver(["10.0.0.7"]))

    with pytest.raises(ForbiddenAddress, match=r"^hooks\.example resolves to an address that is not public$"):
        await guard.resolve("hooks.example", 443)


async def test_resolver_refuses_a_name_with_any_private_address_among_public_ones():
    guard = GuardedResolver(ScriptedResolver(["93.184.216.34", "169.254.169.254"]))

    with pytest.raises(ForbiddenAddress):
        await guard.resolve("hooks.example", 443)


async def test_the_address_a_refused_name_resolves_to_is_logged_at_debug_for_the_operator(caplog):
    # The caller is not told it; the operator debugging a refusal (a public A record beside a
    # private AAAA one) needs it.
    caplog.set_level(logging.DEBUG, logger="taskd.net")
    guard = GuardedResolver(ScriptedResolver(["93.184.216.34", "fd00::7"]))

    with pytest.raises(ForbiddenAddress):
        await guard.resolve("hooks.example", 443)

    assert "hooks.example resolves to fd00::7, which is not allowed; refused" in caplog.messages


async def test_connection_goes_to_the_checked_address_and_a_rebinding_is_refused():
    # Only 127.0.0.1 counts as allowed here, standing in for a public address the test can reach.
    dns = ScriptedResolver(["127.0.0.1"], ["10.255.255.1"])
    guard = GuardedResolver(dns, allowed=lambda ip: str(ip) == "127.0.0.1")
    connector = aiohttp.TCPConnector(resolver=guard, use_dns_cache=False, force_close=True)
    async with WebhookReceiver() as receiver, aiohttp.ClientSession(connector=connector) as session:
        url = f"http://hooks.example:{receiver.port}/hook"
        async with session.post(url, data=b"{}") as response:
            first = response.status
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            await session.post(url, data=b"{}")

    assert first == 200
    assert dns.lookups == ["hooks.example", "hooks.example"]  # one lookup per connection, nothing in between
    assert receiver.received[0].headers["host"] == f"hooks.example:{receiver.port}"
    assert len(receiver.received) == 1
    assert isinstance(refused.value.__cause__, ForbiddenAddress)


async def test_sender_refuses_a_private_callback_at_send_time(start_service, fake_llm, caplog):
    caplog.set_level(logging.WARNING, logger="taskd.webhooks")
    refusal = "error=refused: 127.0.0.1 is not a public address attempt=1"
    async with WebhookReceiver() as receiver:
        # Accepted by a node that allows private targets, then sent by one that does not.
        api = await start_service(workers=False, webhooks=WebhooksConfig(allow_private=True))
        status, _ = await submit(api, receiver.url())
        await api.service.stop(grace=1)
        await start_service(http=False, llm_url=fake_llm.base_url, webhooks=WebhooksConfig(timeout=1))

        async with asyncio.timeout(10):
            while not any(refusal in message for message in caplog.messages):
                await asyncio.sleep(0.02)

    assert status == 200
    assert receiver.received == []


async def test_callback_names_whose_dns_never_answers_hold_back_no_other_tenants_lookup(
    start_service, fake_llm, receiver, monkeypatch
):
    # getaddrinfo's threads (four under uvloop) were every lookup's: a caller's names whose DNS
    # server never answers held them all, and others' callback URLs failed to resolve meanwhile.
    async with DnsServer({"hooks.test": "127.0.0.1"}, silent=(".stall.test",)) as dns:
        monkeypatch.setattr(guard, "NAMESERVERS", [dns.nameserver])
        service = await start_service(
            llm_url=fake_llm.base_url, network=NetworkConfig(allow_networks=["127.0.0.0/8"])
        )
        stalled = [asyncio.create_task(submit(service, f"http://h{n}.stall.test/hook")) for n in range(16)]
        async with asyncio.timeout(20):
            while len({name for name in dns.queries if name.endswith(".stall.test")}) < 16:
                await asyncio.sleep(0.02)

        status, body = await submit(service, f"http://hooks.test:{receiver.port}/hook")
        [webhook] = await receiver.wait_for(1)
        refusals = await asyncio.gather(*stalled)

    assert status == 200
    assert webhook.json["task_id"] == body["task_id"]
    assert all(status == 400 for status, _ in refusals)


async def test_a_callback_name_that_no_longer_resolves_is_a_failed_attempt_that_says_so(
    start_service, fake_llm, monkeypatch
):
    async with DnsServer({}) as dns:  # every name is NXDOMAIN
        monkeypatch.setattr(guard, "NAMESERVERS", [dns.nameserver])
        service = await start_service(
            llm_url=fake_llm.base_url,
            webhooks=WebhooksConfig(allow_private=True),  # no lookup at submit
        )
        status, body = await submit(service, "http://gone.test/hook")
        settled = await service.wait_for(
            body["task_id"], lambda task: (task["webhook"] or {}).get("attempts")
        )

    assert status == 200
    assert settled["webhook"]["last_error"] == "OSError: Domain name not found"
