"""GETs of URLs that callers (or providers' answers) supply: the SSRF guard on every hop, redirects by hand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping

import aiohttp
import attrs
from yarl import URL

from taskd import tracing
from taskd.config import Config
from taskd.net.guard import AddressPolicy, GuardedResolver, check_literal_host, host_and_port
from taskd.validation import latin1_credentials, url_problem

MAX_REDIRECTS = 5
# What a fetch of a caller's URL says it is: aiohttp's own (`Python/3.11 aiohttp/3.14.5`) told
# whoever runs that server taskd's Python and aiohttp versions, which its answers never name
# (docs/security.md, "What taskd says, to whom"). As the webhook sender's, taskd's name alone.
USER_AGENT = "taskd-downloads/1"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class RedirectRefused(Exception):
    """A redirect taskd does not follow: past MAX_REDIRECTS, to a URL that does not parse or that no
    request can be made to, or to one the caller's `redirect_check` refuses."""


def origin(url: str | URL) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an absolute http(s) URL, or None for anything else."""
    try:
        parsed = URL(url)
        host, port = host_and_port(parsed)
    except (ValueError, OSError):
        return None
    return parsed.scheme, host.lower(), port


def _redirect_target(current: URL, location: str) -> URL:
    try:
        target = current.join(URL(location))
    except ValueError:
        raise RedirectRefused("it redirects to a URL that does not parse") from None
    # The checks a submit makes of an input URL (validation.HttpUrl): a redirect is a URL too, and
    # one that no request can be made to failed the run with a library's error (aiohttp's
    # UnicodeEncodeError for a password Basic authentication cannot send), or was retried as a
    # connection that might mend (port 0).
    problem = url_problem(str(target))
    if problem is None and not latin1_credentials(target):
        problem = "its user name and password must be Latin-1 text"
    if problem is not None:
        raise RedirectRefused(f"it redirects to a URL that cannot be requested: {problem}")
    return target


@attrs.frozen
class GuardedClient:
    """Opens caller-supplied URLs: each hop's scheme and address checked, at most MAX_REDIRECTS redirects.

    Every `get` has a connection pool of its own, so no DNS answer or open connection carries over
    from one fetch (or tenant) to the next. A hop on a `trusted` origin, a provider the operator
    configured (which may sit on a private network), goes through `trusted_session` unchecked.

    `timeout` (seconds) bounds a whole `get`, every hop and the reading of the body, in place of
    aiohttp's defaults (30 s to connect, 300 s in all), which would otherwise cut a longer
    `media.download_timeout` short.
    """

    policy: AddressPolicy
    trusted_session: aiohttp.ClientSession
    timeout: float

    @classmethod
    def from_config(cls, config: Config, trusted_session: aiohttp.ClientSession) -> GuardedClient:
        """A client with the `[network]` policy of `config`, its fetches bounded by `media.download_timeout`."""
        return cls(AddressPolicy.from_config(config), trusted_session, config.media.download_timeout)

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[aiohttp.ClientSession]:
        # The connector does not close a resolver it was given: its c-ares channel is let go here.
        resolver = GuardedResolver(allowed=self.policy.allows)
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
        try:
            async with aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT},
                trace_configs=tracing.client_trace_configs(),
            ) as session:
                yield session
        finally:
            await resolver.close()

    @contextlib.asynccontextmanager
    async def get(
        self,
        url: str,
        *,
        trusted: Iterable[str] = (),
        trusted_headers: Mapping[str, str] | None = None,
        redirect_check: Callable[[URL], None] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response that `url` finally gives; ForbiddenAddress when a hop is refused (before it is
        connected to), RedirectRefused for a redirect not followed, ValueError for a `url` that does not parse.

        `trusted_headers` (a provider's credentials) go only to hops on a `trusted` origin, never
        to a host that one of them redirects to. `redirect_check` sees each redirect's target before
        it is connected to, and raises RedirectRefused to stop there. TimeoutError once `timeout`
        seconds (None: the client's) have passed since the call, whichever hop or read is under way."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        trusted_origins = {found for found in map(origin, trusted) if found is not None}
        target = URL(url)
        async with self._session() as session:
            for _ in range(MAX_REDIRECTS + 1):
                host_and_port(target)
                on_trusted = origin(target) in trusted_origins
                if not on_trusted:
                    check_literal_host(target, self.policy.allows)
                client = self.trusted_session if on_trusted else session
                headers = trusted_headers if on_trusted else None
                # aiohttp's total covers the response's body too; each hop gets what is left.
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                hop_timeout = aiohttp.ClientTimeout(total=left)
                async with client.get(
                    target, allow_redirects=False, headers=headers, timeout=hop_timeout
                ) as response:
                    location = (
                        response.headers.get("Location") if response.status in _REDIRECT_STATUSES else None
                    )
                    if location is None:
                        yield response
                        return
                target = _redirect_target(target, location)
                if redirect_check is not None:
                    redirect_check(target)
        raise RedirectRefused(f"it redirects more than {MAX_REDIRECTS} times")
