"""Request URLs built from configured base URLs (providers, probes, the sidecar).

A base URL may carry a query string (gateways that take `?api_key=`) and
`user:password@`. `join_url` appends a path to the base URL's *path*, keeping
the query after it (`http://h/v1?k=1` + `/models` is `http://h/v1/models?k=1`,
never `http://h/v1?k=1/models`); every outbound request to a configured server
is built with it. `request_target` also moves `user:password@` into a `Basic`
header, so that nothing that prints request URLs (httpx logs them, exceptions
quote them) can show a password.
"""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit, urlunsplit


def join_url(base: str, path: str) -> str:
    """`base` with `path` appended to its path, before the query; the fragment is dropped.

    >>> join_url("http://h:8000/v1/?api_key=K", "/models")
    'http://h:8000/v1/models?api_key=K'
    """
    parts = urlsplit(base)
    joined = parts.path.rstrip("/")
    if path.strip("/"):
        joined += "/" + path.lstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, joined, parts.query, ""))


def url_path(url: str) -> str:
    """The path of `url` without trailing slashes (`/v1` for `http://h/v1/?k=1`)."""
    return urlsplit(url).path.rstrip("/")


def request_target(url: str, path: str = "") -> tuple[str, dict[str, str]]:
    """`join_url(url, path)` without user info, and the `Basic` header for that user info.

    The headers are empty when the URL has no `user:password@`.
    """
    parts = urlsplit(join_url(url, path))
    headers: dict[str, str] = {}
    if parts.username is not None or parts.password is not None:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), headers


def has_userinfo(url: str) -> bool:
    """Whether `url` carries `user@` or `user:password@`."""
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:  # unparseable: look at the text before the path
        return "@" in url.partition("://")[2].partition("/")[0]
