"""The rules for caller-supplied URLs: which destinations the service may fetch.

A job's `audio_url` (and, later, a webhook callback URL) is chosen by the
caller, so fetching it must not let a caller reach what only the service can
reach (loopback, the cluster network, cloud metadata at 169.254.169.254).

The rule, `UrlPolicy`:

* only `http` and `https`;
* every address the host name resolves to must be public (`ipaddress`:
  global, and not private, loopback, link-local, multicast, reserved or
  unspecified; an IPv4 address inside IPv6 - mapped `::ffff:a.b.c.d`, 6to4,
  Teredo, NAT64 `64:ff9b::/96` - must be public too);
* an allow-list setting (`AUDIO_URL_ALLOW`, same syntax for
  `WEBHOOK_URL_ALLOW` later) names internal sources that are fine anyway:
  comma-separated host names (matching the URL's host name exactly, case
  insensitive), IP addresses or CIDR networks (matching the resolved address).

Why the check sits in the connection itself: checking a URL and then letting
the HTTP client resolve the name again leaves a gap (DNS rebinding: the name
answers a public address to the check and 127.0.0.1 to the connect).
`OutboundClient` gives httpx a network backend that resolves the name,
checks every address, and opens the TCP connection to the checked address
itself; httpx still sends the URL's host name in the `Host` header and as
TLS SNI (and verifies the certificate against it), because only the socket
layer is replaced. Names like `2130706433`, `0x7f000001` and `127.1` are
resolved by the system resolver exactly as a connect would, and the result
is what is checked. Redirects are followed by hand, at most `max_redirects`
hops, each hop checked the same way (a connect to a new host goes through the
same backend). The client has no cookie jar, no proxy (it would connect past
the check) and no `.netrc`: nothing of one download can reach another, nor the
environment's credentials.

    policy = UrlPolicy.from_setting("files.internal, 10.20.0.0/16")
    async with OutboundClient(policy) as client:
        async with client.stream("GET", url, timeout=60) as response:
            ...                 # raises DestinationNotAllowed before connecting

Refusals raise `DestinationNotAllowed`, whose message never names the
resolved address (it would turn errors into a network scanner).
"""

from __future__ import annotations

import asyncio
import functools
import http.cookiejar
import ipaddress
import re
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = ("http", "https")
DEFAULT_MAX_REDIRECTS = 5
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_HOST_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_-]+)*$")
_NUMERIC_NAME = re.compile(r"^[0-9.]+$|^0x[0-9a-f]+$")


class DestinationNotAllowed(Exception):
    """The URL's scheme, host or a resolved address is refused by the policy."""

    def __init__(self) -> None:
        super().__init__("destination not allowed")


class TooManyRedirects(Exception):
    """More redirects than the client follows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} redirects")
        self.limit = limit


def _translated_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (`::ffff:a.b.c.d`, NAT64), or None."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _tunnelled_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses a 6to4 or Teredo address carries."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [address.sixtofour] if address.sixtofour is not None else []
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def _public(address: IPAddress) -> bool:
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


def is_public_address(address: IPAddress) -> bool:
    """Whether `address` is on the public internet, judging an IPv4 inside IPv6 too.

    A v4-mapped or NAT64 address is judged by the IPv4 address it stands for;
    a 6to4 or Teredo address must be public and so must the IPv4 it carries.
    """
    translated = _translated_ipv4(address)
    if translated is not None:
        return _public(translated)
    return _public(address) and all(_public(inner) for inner in _tunnelled_ipv4(address))


def _bad_entry(entry: str) -> ValueError:
    return ValueError(
        f"{entry!r} is not a host name, an IP address or a CIDR network "
        "(write addresses in full, e.g. 127.0.0.1 or 10.0.0.0/8; no scheme, port or path)"
    )


def _parse_network(entry: str) -> IPNetwork | None:
    """An IP or CIDR allow-list entry as a network; None when `entry` is a name."""
    address, slash, prefix = entry.partition("/")
    address = address.removeprefix("[").removesuffix("]")
    if _ip_literal(address) is None:
        if slash:
            raise _bad_entry(entry)
        return None
    try:
        return ipaddress.ip_network(address + slash + prefix, strict=True)
    except ValueError as exc:
        raise ValueError(f"{entry!r} is not a CIDR network: {exc}") from None


def _ip_literal(host: str) -> IPAddress | None:
    """`host` as an IP address when it is one in canonical form, else None."""
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def _normalize_name(host: str) -> str:
    return host.strip().lower().removesuffix(".")


@dataclass(frozen=True)
class UrlPolicy:
    """Which destinations a caller-supplied URL may lead to (see the module doc).

    `hosts` are allowed host names (lower case, no trailing dot); `networks`
    allowed address ranges. The empty policy allows public addresses only.
    """

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_setting(cls, text: str) -> UrlPolicy:
        """Parse an allow-list setting: comma-separated host names, IPs and CIDRs.

        `files.internal, 10.20.0.0/16, 192.168.1.7, fd00::/8, [::1]`. Raises
        `ValueError` naming the entry that is neither (a URL, a host with a
        port, a network with host bits set, a numeric name such as `127.1`).
        """
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in text.split(","):
            entry = raw.strip()
            if not entry:
                continue
            network = _parse_network(entry)
            if network is not None:
                networks.append(network)
                continue
            name = _normalize_name(entry)
            if _NUMERIC_NAME.match(name) or not _HOST_NAME.match(name):
                raise _bad_entry(entry)
            hosts.add(name)
        return cls(frozenset(hosts), tuple(networks))

    def allows_host_name(self, host: str) -> bool:
        """Whether `host` is one of the allowed host names (exact, case-insensitive)."""
        return _normalize_name(host) in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        """Whether a connection to `address` is allowed: public, or in an allowed network."""
        if is_public_address(address):
            return True
        translated = _translated_ipv4(address)
        candidates: list[IPAddress] = [address] if translated is None else [address, translated]
        return any(candidate in network for candidate in candidates for network in self.networks)

    def check_url(self, url: str | httpx.URL) -> httpx.URL:
        """The parsed URL when its scheme is http(s) and it has a host; else refuse.

        Raises `DestinationNotAllowed` (also for a URL httpx cannot parse).
        Addresses are not checked here: that happens when connecting.
        """
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise DestinationNotAllowed() from None
        if parsed.scheme not in SCHEMES or not parsed.host:
            raise DestinationNotAllowed()
        return parsed

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`, every one of them checked.

        An allowed host name is connected to whatever it resolves to; any other
        host must resolve to allowed addresses only, else `DestinationNotAllowed`.
        Resolution failures raise `OSError` (`socket.gaierror`).
        """
        host = host.removeprefix("[").removesuffix("]")
        literal = _ip_literal(host)
        if literal is not None:
            resolved = [(literal, host)]
        else:
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
            resolved = []
            for *_, sockaddr in infos:
                text = str(sockaddr[0])
                address = _ip_literal(text.partition("%")[0])
                if address is None:  # not an IP family we know: refuse rather than guess
                    raise DestinationNotAllowed()
                resolved.append((address, text))
        if not resolved:
            raise DestinationNotAllowed()
        if not self.allows_host_name(host):
            for address, _ in resolved:
                if not self.allows_address(address):
                    raise DestinationNotAllowed()
        return list(dict.fromkeys(text for _, text in resolved))

    async def check(self, url: str | httpx.URL) -> None:
        """Refuse `url` now when its scheme, host or resolved addresses are not allowed.

        For early feedback (for example when a callback URL is registered). It
        cannot replace the check at connect time that `OutboundClient` makes:
        the name may resolve differently by then.
        """
        parsed = self.check_url(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        await self.resolve(parsed.host, port)


class PolicyBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses `policy` allows.

    `inner` opens the sockets (anyio by default); it is only ever asked to
    connect to an IP address the policy has checked.
    """

    def __init__(self, policy: UrlPolicy, inner: httpcore.AsyncNetworkBackend | None = None):
        self._policy = policy
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve `host`, check every address, connect to the first that answers."""
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._policy.resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout("name resolution timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve the host name: {exc}") from None
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # `resolve` never returns an empty list
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: a caller-supplied URL cannot lead to a local socket."""
        raise DestinationNotAllowed()

    async def sleep(self, seconds: float) -> None:
        """Delegate to the inner backend (used by httpcore's connect retries)."""
        await self._inner.sleep(seconds)


class _RefuseAllCookies(http.cookiejar.DefaultCookiePolicy):
    def set_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False


def cookieless_jar() -> http.cookiejar.CookieJar:
    """A cookie jar that never stores nor sends a cookie (pass as `cookies=` to httpx)."""
    return http.cookiejar.CookieJar(policy=_RefuseAllCookies())


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # One verified context for every client: building one loads the CA bundle (ms).
    # SSL_CERT_FILE / SSL_CERT_DIR are honoured (a private CA); proxies and .netrc are not.
    return httpx.create_ssl_context()


class _PolicyTransport(httpx.AsyncHTTPTransport):
    def __init__(
        self,
        policy: UrlPolicy,
        *,
        max_connections: int,
        network_backend: httpcore.AsyncNetworkBackend | None,
    ) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False)
        # httpx takes no network backend: replace the pool it built (no connection
        # was opened yet) by the same pool on the policy's backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=PolicyBackend(policy, network_backend),
        )


class OutboundClient:
    """An HTTP client for caller-supplied URLs that only reaches what `policy` allows.

    Every connection is checked when it is opened (see the module doc); up to
    `max_redirects` redirects are followed, each checked; no cookies are
    stored or sent. `network_backend` replaces the socket layer under the
    policy check (tests use it to prove nothing is connected).
    """

    def __init__(
        self,
        policy: UrlPolicy,
        *,
        max_redirects: int = DEFAULT_MAX_REDIRECTS,
        max_connections: int = 4,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.max_redirects = max_redirects
        transport = _PolicyTransport(
            policy, max_connections=max_connections, network_backend=network_backend
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            cookies=cookieless_jar(),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        follow_redirects: bool = True,
    ) -> AsyncIterator[httpx.Response]:
        """The final response (after redirects) to `method url`, its body not read yet.

        With `follow_redirects=False` a redirect is the response (webhooks never
        follow one). Raises `DestinationNotAllowed` (scheme, host or address
        refused, at any hop), `TooManyRedirects`, or httpx's transport errors.
        """
        request = self._client.build_request(
            method, self.policy.check_url(url), headers=headers, content=content, timeout=timeout
        )
        hops = 0
        while True:
            response = await self._client.send(request, stream=True)
            following = response.next_request
            if following is None or not follow_redirects:
                break
            await response.aclose()
            hops += 1
            if hops > self.max_redirects:
                raise TooManyRedirects(self.max_redirects)
            self.policy.check_url(following.url)
            request = following
        try:
            yield response
        finally:
            await response.aclose()
