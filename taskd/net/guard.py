"""The SSRF guard (OWASP): outbound requests go only to allowed addresses, checked where connected.

One policy for every URL taskd fetches on a caller's behalf: task inputs, providers' download URLs
and webhooks. Public addresses are allowed; `network.allow_networks` adds trusted networks and
`network.allow_private` (alias `webhooks.allow_private`) opens every address. A name's addresses
are checked by GuardedResolver in the one DNS lookup of a connection attempt, and the client
(aiohttp's connector, or the webhook sender's own: taskd/webhooks/connections.py) connects to
exactly those, so a name that re-resolves to an internal address (DNS rebinding) gets nowhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable

import attrs
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import AsyncResolver
from yarl import URL

from taskd.config import Config
from taskd.model import ValidationError

log = logging.getLogger("taskd.net")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RESOLVE_TIMEOUT = 5.0
# The DNS servers callers' names are asked of ("host" or "host:port"); None: the system's, as
# /etc/resolv.conf names them. Tests point it at a DNS server of their own.
NAMESERVERS: list[str] | None = None
SCHEMES = ("http", "https")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class ForbiddenAddress(OSError):
    """A URL taskd must not fetch: a scheme other than http(s), or a host that is (or resolves to) a
    non-public address."""


class NotHttp(ForbiddenAddress):
    """A URL with a scheme other than http(s), or without a host."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    # IPv6 forms that carry an IPv4 address and reach it: mapped, 6to4, Teredo, NAT64, compatible.
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or int(ip) >> 32 == 0:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """True for a global unicast address; loopback, private, CGNAT, link-local, multicast... are not."""
    if ip.is_multicast or not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public(embedded)
    return True


def parse_ip(text: str) -> IPAddress | None:
    """The address in `text` (brackets, an IPv6 zone, and IPv4 as 127.1 or 0x7f000001 allowed), or None
    for a name."""
    bare = text.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    try:
        # The forms inet_aton reads (and so some resolvers and HTTP clients): 127.1, 2130706433, 0177.0.0.1.
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except OSError:
        return None


@attrs.frozen
class AddressPolicy:
    """Which addresses outbound requests may reach: public ones, `networks`, or any (`allow_private`)."""

    allow_private: bool = False
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> AddressPolicy:
        """The `[network]` rules; `webhooks.allow_private` is an alias of `network.allow_private`."""
        return cls(
            allow_private=config.network.allow_private or config.webhooks.allow_private,
            networks=tuple(ipaddress.ip_network(text) for text in config.network.allow_networks),
        )

    def allows(self, ip: IPAddress) -> bool:
        """True when `ip` may be connected to."""
        if self.allow_private or is_public(ip):
            return True
        # ::ffff:10.1.2.3 is the IPv4 address it carries, for allow_networks as for is_public.
        forms = [ip, _embedded_ipv4(ip)] if isinstance(ip, ipaddress.IPv6Address) else [ip]
        return any(form in network for form in forms if form is not None for network in self.networks)


def check_addresses(
    host: str, addresses: Iterable[str], allowed: Callable[[IPAddress], bool] = is_public
) -> None:
    """Raise ForbiddenAddress unless every one of `addresses` is public (or passes `allowed`)."""
    for address in addresses:
        ip = parse_ip(address)
        if ip is None or not allowed(ip):
            if address == host:
                raise ForbiddenAddress(f"{host} is not a public address")
            if parse_ip(host) is not None:  # the caller's own spelling of an address (0x7f000001)
                raise ForbiddenAddress(f"{host} ({address}) is not a public address")
            # The address a name resolves to is not told: the caller reads this (a 400 at submit,
            # a task's error, a webhook's last_error), and the operator's DNS would tell it the
            # inside of its network (`db.corp` is 10.20.30.40) one name at a time. The operator
            # may need it (a public A record beside a private AAAA one is refused too, and
            # `network.allow_networks` is written in addresses): at DEBUG, as a caller's mistake
            # makes no log line at INFO.
            log.debug("%s resolves to %s, which is not allowed; refused", host, address)
            raise ForbiddenAddress(f"{host} resolves to an address that is not public")


def host_and_port(url: URL) -> tuple[str, int]:
    """The host and port an http(s) `url` names; ForbiddenAddress for another scheme or no host."""
    if url.scheme not in SCHEMES or not url.raw_host:
        raise NotHttp("only http and https URLs with a host are allowed")
    # A port 0 given stays 0 (its connection fails), not the scheme's default (as yarl before 1.17.2
    # read it through `port`).
    port = url.explicit_port
    return url.raw_host, port if port is not None else (443 if url.scheme == "https" else 80)


def name_resolver() -> AbstractResolver:
    """The resolver of callers' names: c-ares (aiodns), on the event loop, never a thread.

    getaddrinfo runs in a pool of threads that every lookup of the process shares (uvloop's is four),
    and a lookup holds its thread until the name's DNS answers or the system resolver gives up (10 s
    by default). A caller naming hosts whose DNS never answers held every thread: eight such
    webhooks made every other tenant's lookups wait, and their webhooks time out. A c-ares query that
    waits costs a timer and a socket only.
    """
    if NAMESERVERS is None:
        return AsyncResolver()
    return AsyncResolver(nameservers=NAMESERVERS)


async def check_url(url: str, policy: AddressPolicy, *, timeout: float = RESOLVE_TIMEOUT) -> None:
    """Resolve the host of `url` now and raise ForbiddenAddress unless `policy` allows every address.

    A check ahead of time (for a clear 400 at submit); the connection itself is checked again.
    """
    host, port = host_and_port(URL(url))
    if policy.allow_private:
        return
    literal = parse_ip(host)
    if literal is not None:
        check_addresses(host, [str(literal)], policy.allows)
        return
    resolver = name_resolver()
    try:
        async with asyncio.timeout(timeout):
            found = await resolver.resolve(host, port, socket.AF_UNSPEC)
    finally:
        await resolver.close()
    check_addresses(host, [result["host"] for result in found], policy.allows)


async def check_callback_url(url: str, policy: AddressPolicy, *, timeout: float = RESOLVE_TIMEOUT) -> None:
    """Refuse, as a 400 on `callback_url`, a URL whose host is or resolves to a non-public address."""
    try:
        await check_url(url, policy, timeout=timeout)
    except ForbiddenAddress as exc:
        raise ValidationError(
            {"callback_url": f"Callback URL must point to a public address: {exc}"}
        ) from None
    except (OSError, TimeoutError, ValueError):
        raise ValidationError({"callback_url": f"Callback URL host could not be resolved: {url}"}) from None


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that returns a name's addresses only if every one is allowed.

    aiohttp's connector and the webhook sender's ReceiverConnections connect to exactly what a
    resolver returns, so the checked addresses are the ones used; the URL, its Host header and TLS
    server name are left as they are. Names in `exempt` (the egress proxy) are resolved unchecked.
    """

    def __init__(
        self,
        base: AbstractResolver | None = None,
        exempt: Iterable[str] = (),
        allowed: Callable[[IPAddress], bool] = is_public,
    ) -> None:
        self._base = base
        self._exempt = frozenset(exempt)
        self._allowed = allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve `host` and check every address; raise ForbiddenAddress if any is not allowed."""
        literal = parse_ip(host)
        if literal is not None:
            # 127.1, 0x7f000001: getaddrinfo reads them as addresses (inet_aton), c-ares as names.
            results = [_numeric(host, literal, port)]
        else:
            if self._base is None:
                self._base = name_resolver()
            results = await self._base.resolve(host, port, family)
        if host not in self._exempt:
            check_addresses(host, [result["host"] for result in results], self._allowed)
        return results

    async def close(self) -> None:
        """Close the resolver underneath."""
        if self._base is not None:
            await self._base.close()


def _numeric(host: str, ip: IPAddress, port: int) -> ResolveResult:
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
    return ResolveResult(hostname=host, host=str(ip), port=port, family=family, proto=0, flags=flags)


def check_literal_host(url: str | URL, allowed: Callable[[IPAddress], bool] = is_public) -> None:
    """Raise ForbiddenAddress for a non-http(s) URL or an IP-literal host that is not allowed.

    aiohttp does not ask the resolver about IP literals, so they are checked here before sending.
    """
    host, _ = host_and_port(URL(url))
    literal = parse_ip(host)
    if literal is not None:
        check_addresses(host, [str(literal)], allowed)


def refusal(exc: BaseException | None) -> ForbiddenAddress | None:
    """The guard's refusal inside an aiohttp error (which wraps what the resolver raised), if any."""
    while exc is not None:
        if isinstance(exc, ForbiddenAddress):
            return exc
        exc = exc.__cause__
    return None
