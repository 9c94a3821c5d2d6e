"""Which callback URLs a webhook may go to: the outbound URL rules of `outbound`.

Three moments, one rule (`outbound.UrlPolicy` with `WEBHOOK_URL_ALLOW`):

* at start, `WEBHOOK_URLS` entries are checked without the network
  (`config_problem`): the shape, and a host that is an IP address or `localhost`;
* at create, an explicit `callback_url` is checked and its host resolved
  (`create_problem`): an internal destination is a 422 naming the field;
* at every delivery the name is resolved again and the connection pinned to the
  checked address (`outbound.OutboundClient`): DNS may have changed since.
"""

from __future__ import annotations

import asyncio
import ipaddress

import httpx

from ai_service import outbound
from ai_service.urls import has_userinfo

MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT = 5.0  # seconds a create waits for the callback host's name resolution

REFUSED = (
    "is an internal destination (loopback, private, link-local or metadata address): "
    "refused unless WEBHOOK_URL_ALLOW lists it"
)


def syntax_problem(url: str) -> str | None:
    """Why `url` cannot be a callback URL by its text alone; None when it can."""
    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "must be an http:// or https:// URL"
    if parsed.scheme not in outbound.SCHEMES or not parsed.host or not url.isprintable():
        return "must be an http:// or https:// URL"
    if has_userinfo(url):
        return (
            "must not contain user:password@ (credentials in a URL end up in logs); "
            "receivers authenticate the request by its webhook signature"
        )
    return None


def config_problem(url: str, policy: outbound.UrlPolicy) -> str | None:
    """Why a configured default URL (`WEBHOOK_URLS`) is refused, without resolving names.

    A host written as an IP address must be allowed as such, and `localhost` must be
    listed; other names are resolved and checked at each delivery.
    """
    problem = syntax_problem(url)
    if problem is not None:
        return problem
    host = httpx.URL(url).host
    try:
        address: outbound.IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and not policy.allows_address(address):
        return REFUSED
    if address is None and host.rstrip(".") == "localhost" and not policy.allows_host_name(host):
        return REFUSED
    return None


async def create_problem(url: str, policy: outbound.UrlPolicy) -> str | None:
    """Why a job may not name `url` as its callback (its host resolved now); None: it may."""
    problem = syntax_problem(url)
    if problem is not None:
        return problem
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            await policy.check(url)
    except outbound.DestinationNotAllowed:
        return REFUSED
    except (OSError, TimeoutError):
        return "names a host that does not resolve"
    return None
