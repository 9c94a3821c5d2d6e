"""Removing secrets from text that leaves the process (responses, logs)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from ai_service.config import Settings

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


def url_secrets(url: str | None) -> list[str]:
    """Secret parts of a URL: the user info and secret-looking query values."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        found = [parts.username or "", parts.password or ""]
    except ValueError:
        return []
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if is_secret_param(name):
            found.append(value)
    # Both spellings: error texts may quote the URL raw or percent-decoded.
    found.extend([unquote(s) for s in found])
    return [s for s in dict.fromkeys(found) if s]


def settings_secrets(settings: Settings) -> list[str | None]:
    """Every secret the settings hold (keys, tokens, credentials inside URLs)."""
    secrets: list[str | None] = [
        settings.ai_service_token,
        settings.llm_api_key,
        settings.qwen_audio_api_key,
        settings.voxtral_api_key,
        settings.audio_llm_api_key,
        settings.infra_status_token,
        settings.sidecar_token,
        *(scoped.token for scoped in settings.ai_service_tokens),
    ]
    urls = [
        settings.database_url,
        settings.llm_base_url,
        settings.qwen_audio_base_url,
        settings.voxtral_base_url,
        settings.infra_status_url,
        *settings.whisperx_url,
        *settings.vllm_metrics_urls,
    ]
    for url in urls:
        secrets.extend(url_secrets(url))
    return secrets
