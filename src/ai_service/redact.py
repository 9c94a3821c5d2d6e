"""Removing secrets from text that leaves the process (responses, logs)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_PARAMS = ("key", "token", "secret", "password", "passwd", "pwd", "auth", "signature", "sig")


def is_secret_param(name: str) -> bool:
    """Whether a query parameter name looks like it carries a credential."""
    lowered = name.lower()
    return any(marker in lowered for marker in _SECRET_PARAMS)


def redact_url(url: str) -> str:
    """Return `url` without `user:password@` and with secret-looking query values masked.

    >>> redact_url("http://u:p@host:8000/v1?api_key=abc&x=1")
    'http://host:8000/v1?api_key=%2A%2A%2A&x=1'
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if is_secret_param(k) else v) for k, v in pairs])
    return urlunsplit((parts.scheme, host + port, parts.path, query, ""))


def redact_text(text: str, secrets: list[str | None]) -> str:
    """Replace every occurrence of each non-empty secret in `text` by `***`."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
