"""An attacker's URLs: every fetch taskd makes for a caller goes through one SSRF guard.

Loopback stands in for the internal network: `127.0.0.1` (and `::1`) is an "internal" server that
records every request, so "refused before connecting" is a count of zero, and `127.0.0.2` plays a
public server (taskd is told to trust that one address with `network.allow_networks`). Internal
addresses that are not loopback (169.254.169.254, 10.x, ...) are checked at the guard itself with
connecting made impossible, so a broken guard can never send traffic to them.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from examples import TASK_DATA
from fake_media_apis import FakeImagesAPI, make_ctx, png, sine_wav

from taskd.config import (
    Config,
    ConfigError,
    ImageProvider,
    MediaConfig,
    NetworkConfig,
    ProvidersConfig,
    WebhooksConfig,
    load_config,
)
from taskd.net.guard import AddressPolicy, ForbiddenAddress, GuardedResolver
from taskd.net.guarded import GuardedClient
from taskd.tasks.builtin import generate_image
from taskd.tasks.builtin.generate_image import GenerateImageInput
from taskd.tasks.spec import TaskError

PUBLIC_HOST = "127.0.0.2"
INTERNAL_SECRET = b'{"token": "INTERNAL-ONLY-7c1e"}'
INTERNAL_TYPE = "application/x-internal-secret"
TRUST_PUBLIC = NetworkConfig(allow_networks=[f"{PUBLIC_HOST}/32"])


class Peer:
    """A loopback HTTP server that records every request: files, redirects, and an images API."""

    def __init__(self, host: str, *, ipv6: bool = False) -> None:
        self.host = host
        self.ipv6 = ipv6
        self.port = 0
        self.hits: list[str] = []
        self.user_agents: list[str] = []
        self.files: dict[str, bytes] = {}
        self.image_url = ""  # what the images API answers with
        app = web.Application()
        app.router.add_post("/v1/images/generations", self._generate)
        app.router.add_get("/{tail:.*}", self._get)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)

    async def __aenter__(self) -> Peer:
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, 0).start()
        self.port = self._runner.addresses[0][1]
        if self.ipv6:  # the same server at [::1], so IPv6 forms of loopback would reach it too
            await web.TCPSite(self._runner, "::1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._runner.cleanup()

    def url(self, path: str, host: str | None = None) -> str:
        """`http://<host>:<port><path>`, the peer's own host unless another form of it is given."""
        return f"http://{host or self.host}:{self.port}{path}"

    def add(self, name: str, body: bytes) -> str:
        """Serve `body` at `/files/<name>`; its URL."""
        self.files[name] = body
        return self.url(f"/files/{name}")

    async def _get(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path_qs)
        self.user_agents.append(request.headers.get("User-Agent", ""))
        if request.path == "/redirect":
            return web.Response(status=302, headers={"Location": request.query["to"]})
        if request.path.startswith("/hops/"):
            hop = int(request.path.removeprefix("/hops/"))
            return web.Response(status=302, headers={"Location": f"/hops/{hop + 1}"})
        body = self.files.get(request.path.removeprefix("/files/"))
        if body is None:  # what an internal service might say: no attacker may read it
            return web.Response(body=INTERNAL_SECRET, content_type=INTERNAL_TYPE)
        return web.Response(body=body, content_type="application/octet-stream")

    async def _generate(self, request: web.Request) -> web.Response:
        self.hits.append(request.path_qs)
        return web.json_response({"data": [{"url": self.image_url}]})


@pytest.fixture
async def internal() -> AsyncIterator[Peer]:
    async with Peer("127.0.0.1", ipv6=True) as peer:
        yield peer


@pytest.fixture
async def public() -> AsyncIterator[Peer]:
    async with Peer(PUBLIC_HOST) as peer:
        yield peer


async def fetch_track(service: Any, url: str) -> dict[str, Any]:
    """Run a process_audio task whose one track is `url`; its final status body."""
    task = await service.submit(
        "process_audio", {"tracks": [{"url": url}], "output_format": "wav", "normalize": False}
    )
    return await service.wait_terminal(task["task_id"], timeout=60)


def assert_refused(final: dict[str, Any], url: str) -> None:
    """The task failed with an error naming `url`, saying it was refused, echoing nothing internal."""
    assert final["status"] == "failed", final
    assert f"Track {url} was refused: " in final["error"], final["error"]
    assert "INTERNAL-ONLY" not in final["error"] and INTERNAL_TYPE not in final["error"]


TRACK = sine_wav(0.3, rate=8000)

# Spellings of 127.0.0.1 and ::1 that a naive check would miss.
LOOPBACK_FORMS = ["127.0.0.1", "0x7f000001", "[::1]", "[::ffff:127.0.0.1]", "localhost"]
# Old IPv4 spellings aiohttp itself will not request, refused by the guard before aiohttp sees them.
OLD_IPV4_FORMS = ["127.1", "2130706433", "0177.0.0.1"]


@pytest.mark.parametrize("host", LOOPBACK_FORMS + OLD_IPV4_FORMS)
async def test_a_task_input_aimed_at_loopback_is_refused_before_connecting(start_service, internal, host):
    service = await start_service(network=TRUST_PUBLIC)
    internal.add("track.wav", TRACK)
    url = internal.url("/files/track.wav", host)

    final = await fetch_track(service, url)

    assert_refused(final, url)
    # An address is named as written; a name (localhost) without the address it resolves to.
    assert re.search(
        r"(is not a public address|resolves to an address that is not public) \(network\.allow_private is off\)$",
        final["error"],
    ), final["error"]
    assert internal.hits == []


@pytest.mark.parametrize("host", LOOPBACK_FORMS)
async def test_network_allow_private_opens_loopback_inputs(start_service, internal, host):
    service = await start_service(network=NetworkConfig(allow_private=True))
    internal.add("track.wav", TRACK)

    final = await fetch_track(service, internal.url("/files/track.wav", host))

    assert final["status"] == "completed", final
    assert internal.hits == ["/files/track.wav"]


async def test_webhooks_allow_private_is_an_alias_that_opens_inputs_too(start_service, internal):
    service = await start_service(webhooks=WebhooksConfig(allow_private=True))

    final = await fetch_track(service, internal.add("track.wav", TRACK))

    assert final["status"] == "completed", final


async def test_an_input_on_an_allowed_network_is_fetched(start_service, public):
    service = await start_service(network=TRUST_PUBLIC)

    final = await fetch_track(service, public.add("track.wav", TRACK))

    assert final["status"] == "completed", final
    assert public.hits == ["/files/track.wav"]


async def test_a_fetch_of_a_callers_url_names_no_software_or_version_of_taskds(start_service, public):
    service = await start_service(network=TRUST_PUBLIC)

    final = await fetch_track(service, public.add("track.wav", TRACK))

    assert final["status"] == "completed", final
    assert public.user_agents == ["taskd-downloads/1"]


async def test_a_providers_call_names_no_software_or_version_of_taskds(start_service, fake_llm):
    service = await start_service(llm_url=fake_llm.base_url)

    task = await service.submit("test_prompt", TASK_DATA["test_prompt"])
    final = await service.wait_terminal(task["task_id"])

    assert final["status"] == "completed", final
    assert [request.headers["User-Agent"] for request in fake_llm.requests] == ["taskd-providers/1"]


async def test_a_redirect_from_an_allowed_server_to_loopback_is_refused_unfetched(
    start_service, public, internal
):
    service = await start_service(network=TRUST_PUBLIC)
    target = internal.add("track.wav", TRACK)
    url = public.url(f"/redirect?to={target}")

    final = await fetch_track(service, url)

    assert_refused(final, url)
    assert "127.0.0.1 is not a public address" in final["error"]
    assert len(public.hits) == 1
    assert internal.hits == []


@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://127.0.0.1:70/_x", "ftp://127.0.0.1/x"])
async def test_a_redirect_to_another_scheme_is_refused(start_service, public, target):
    service = await start_service(network=TRUST_PUBLIC)
    url = public.url(f"/redirect?to={target}")

    final = await fetch_track(service, url)

    assert_refused(final, url)
    assert "only http and https" in final["error"]


@pytest.mark.parametrize(
    ("target", "why"),
    [
        # Basic authentication sends these as Latin-1: aiohttp raised UnicodeEncodeError, and the
        # run failed with it and a traceback.
        (f"http://u:%E5%AF%86@{PUBLIC_HOST}:{{port}}/files/track.wav", "user name and password"),
        # A connection that fails, so retried as one that might mend: a port 0 cannot.
        (f"http://{PUBLIC_HOST}:0/files/track.wav", "port 0 cannot be connected to"),
    ],
    ids=["credentials-not-latin1", "port-0"],
)
async def test_a_redirect_to_a_url_no_request_can_be_made_to_is_refused_as_a_submit_refuses_it(
    start_service, public, target, why
):
    service = await start_service(network=TRUST_PUBLIC)
    public.add("track.wav", TRACK)
    url = public.url("/redirect?" + urlencode({"to": target.format(port=public.port)}))

    final = await fetch_track(service, url)

    assert_refused(final, url)
    assert "it redirects to a URL that cannot be requested: " in final["error"], final["error"]
    assert why in final["error"]
    assert len(public.hits) == 1  # the redirect only: the file it points to was never asked for


async def test_more_than_five_redirects_are_refused(start_service, public):
    service = await start_service(network=TRUST_PUBLIC)
    url = public.url("/hops/0")

    final = await fetch_track(service, url)

    assert_refused(final, url)
    assert "redirects more than 5 times" in final["error"]
    assert len(public.hits) == 6


async def test_a_fetch_error_names_no_content_type_of_what_answered(start_service, public):
    service = await start_service(network=TRUST_PUBLIC)
    url = public.url("/not-a-track")

    final = await fetch_track(service, url)

    assert final["status"] == "failed"
    assert final["error"] == f"Track {url} is not a supported audio file"


async def test_a_callback_url_on_an_allowed_network_is_accepted_and_loopback_is_not(start_service, public):
    service = await start_service(workers=False, network=TRUST_PUBLIC)
    body = {"project_id": "p", "task_type": "noop", "task_data": {}}

    async with service.client.post(
        "/api/v1/tasks/submit", json={**body, "callback_url": public.url("/hook")}
    ) as allowed:
        allowed_status = allowed.status
    async with service.client.post(
        "/api/v1/tasks/submit", json={**body, "callback_url": "http://127.0.0.1:9/hook"}
    ) as refused:
        refused_body = await refused.json()

    assert allowed_status == 200
    assert refused.status == 400
    assert "127.0.0.1 is not a public address" in refused_body["details"]["callback_url"]


async def test_a_refused_callback_name_does_not_tell_the_address_it_resolves_to(start_service):
    # What the operator's DNS answers is the inside of its network: a caller learns that the name
    # is refused, not where it points.
    service = await start_service(workers=False)
    body = {
        "project_id": "p",
        "task_type": "noop",
        "task_data": {},
        "callback_url": "http://localhost:9/hook",
    }

    async with service.client.post("/api/v1/tasks/submit", json=body) as refused:
        refused_body = await refused.json()

    assert refused.status == 400
    assert refused_body["details"] == {
        "callback_url": "Callback URL must point to a public address: localhost resolves to an address that is not public"
    }


async def test_network_allow_private_opens_callback_urls(start_service):
    service = await start_service(workers=False, network=NetworkConfig(allow_private=True))
    body = {
        "project_id": "p",
        "task_type": "noop",
        "task_data": {},
        "callback_url": "http://127.0.0.1:9/hook",
    }

    async with service.client.post("/api/v1/tasks/submit", json=body) as response:
        status = response.status

    assert status == 200


# ---- the guard itself, for internal addresses that are not loopback -----------------------------------


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Make every aiohttp connection attempt fail before a socket is opened; the attempts."""
    attempts: list[Any] = []

    async def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(kwargs.get("addr_infos") or args)
        raise OSError("this test never connects")

    monkeypatch.setattr(aiohttp.TCPConnector, "_wrap_create_connection", refuse)
    return attempts


INTERNAL_LITERALS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/x.png",
    "http://100.64.0.1/x.png",
    "http://[fd00::1]/x.png",
    "http://[fe80::1]/x.png",
    "http://[::ffff:169.254.169.254]/x.png",
    "http://[64:ff9b::a9fe:a9fe]/x.png",  # NAT64 form of 169.254.169.254
    "http://0.0.0.0/x.png",
]


@pytest.mark.parametrize("url", INTERNAL_LITERALS)
async def test_an_internal_address_is_refused_without_a_connection_attempt(no_connections, url):
    async with aiohttp.ClientSession() as trusted:
        client = GuardedClient(
            AddressPolicy(networks=(ipaddress.ip_network("127.0.0.2/32"),)), trusted, timeout=5
        )

        with pytest.raises(ForbiddenAddress, match="is not a public address"):
            async with client.get(url):
                pass

    assert no_connections == []


class ScriptedResolver(AbstractResolver):
    """Answers every lookup with the given addresses: a DNS name the attacker controls."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "10.1.2.3", "192.168.0.1", "fd00::1", "::ffff:10.1.2.3"]
)
async def test_a_name_resolving_to_an_internal_address_is_refused(address):
    resolver = GuardedResolver(ScriptedResolver(address), allowed=AddressPolicy().allows)

    with pytest.raises(ForbiddenAddress, match=r"evil\.example resolves to an address that is not public$"):
        await resolver.resolve("evil.example", 80)


@pytest.mark.parametrize("address", ["10.20.1.2", "::ffff:10.20.1.2"])
async def test_allow_networks_opens_only_the_networks_it_names(address):
    policy = AddressPolicy.from_config(Config(network=NetworkConfig(allow_networks=["10.20.0.0/16"])))
    resolver = GuardedResolver(ScriptedResolver(address), allowed=policy.allows)

    allowed = await resolver.resolve("cdn.internal", 80)

    assert [result["host"] for result in allowed] == [address]
    with pytest.raises(ForbiddenAddress):
        await GuardedResolver(ScriptedResolver("10.21.0.1"), allowed=policy.allows).resolve("other", 80)


@pytest.mark.parametrize("value", ["10.0.0.1/8", "not-a-network", "10.0.0.0/33"])
def test_allow_networks_that_are_not_networks_stop_start_up_with_one_line(value):
    with pytest.raises(ConfigError, match="allow_networks") as refused:
        load_config(None, environ={"TASKD_NETWORK__ALLOW_NETWORKS": value})

    assert "\n" not in str(refused.value)


# ---- a provider's download URL ----------------------------------------------------------------------


def image_config(tmp_path: Path, base_url: str) -> Config:
    """The images provider at `base_url` (on loopback, so private), and the guard closed."""
    return Config(
        data_dir=str(tmp_path / "data"),
        media=MediaConfig(base_url="http://media.test", scratch_dir=str(tmp_path / "scratch")),
        providers=ProvidersConfig(image=ImageProvider(base_url=base_url, api_key="sk-img")),
    )


async def test_a_download_url_on_the_providers_own_origin_is_trusted(tmp_path, http):
    async with FakeImagesAPI(as_url=True) as api:
        ctx, _ = make_ctx(http, image_config(tmp_path, api.base_url))

        result = await generate_image.run(ctx, GenerateImageInput(prompt="a lamp"))

    assert result["metadata"]["resolution"] == "32x32"


async def test_a_download_url_elsewhere_goes_through_the_guard(tmp_path, http, internal):
    async with Peer("127.0.0.1") as provider:
        provider.image_url = internal.add("out.png", png())
        ctx, _ = make_ctx(http, image_config(tmp_path, provider.url("/v1")))

        with pytest.raises(TaskError, match=r"was refused: 127\.0\.0\.1 is not a public address"):
            await generate_image.run(ctx, GenerateImageInput(prompt="a lamp"))

    assert internal.hits == []


async def test_a_redirect_from_the_providers_origin_to_elsewhere_goes_through_the_guard(
    tmp_path, http, internal
):
    async with Peer("127.0.0.1") as provider:
        provider.image_url = provider.url(f"/redirect?to={internal.add('out.png', png())}")
        ctx, _ = make_ctx(http, image_config(tmp_path, provider.url("/v1")))

        with pytest.raises(TaskError, match=r"was refused: 127\.0\.0\.1 is not a public address"):
            await generate_image.run(ctx, GenerateImageInput(prompt="a lamp"))

    assert provider.hits == ["/v1/images/generations", provider.image_url.removeprefix(provider.url(""))]
    assert internal.hits == []
