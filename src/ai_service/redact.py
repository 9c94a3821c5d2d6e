"""Removing secrets from text that leaves the process (responses, logs, job errors).

Two rules, used by every module that shows a URL or an error text:

* URLs are shown through `redact_url`: no `user:password@`, no fragment, and
  every query value masked unless its parameter name is in a small allow-list
  of harmless names (`model`, `format`, `sslmode`, ...). Names are not a
  reliable sign of a secret (`?jwt=`, `X-Amz-Credential=`), so everything
  else is masked. This holds for configured URLs on status endpoints and for
  caller-supplied URLs in logs and errors alike.
* Known secret values are masked wherever they appear by a `Redactor`: the
  value itself and the forms it takes on the wire (percent-encoded, base64
  as in a `Basic` header, `user:password` pairs). `settings_redactor` holds
  every secret of the configuration; `logs.configure` applies it to every log
  record, and the handlers apply it to job errors before storing them.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus, unquote_plus, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from ai_service.config import Settings

MASK = "***"

# Query parameters whose values are shown and never treated as secrets: model
# and format selectors of AI servers, and libpq connection options.
HARMLESS_PARAMS = frozenset(
    {
        "api-version",
        "api_version",
        "application_name",
        "connect_timeout",
        "encode",
        "format",
        "lang",
        "language",
        "model",
        "output",
        "sslmode",
        "stream",
        "target_session_attrs",
        "task",
        "version",
    }
)

# Shorter values are left alone: masking "a" or "ab" would shred ordinary text
# while protecting nothing real.
_MIN_SECRET = 4
# Shortest base64 fragment masked (a fragment is what a secret inside a longer
# base64 text always encodes to, whatever its offset).
_MIN_BASE64_FRAGMENT = 6
_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def is_harmless_param(name: str) -> bool:
    """Whether a query parameter's value may be shown (see `HARMLESS_PARAMS`)."""
    return name.lower() in HARMLESS_PARAMS


def redact_url(url: str) -> str:
    """`url` without `user:password@` and fragment, every query value not allow-listed masked.

    >>> redact_url("http://u:p@host:8000/v1?api_key=abc&model=m#x")
    'http://host:8000/v1?api_key=%2A%2A%2A&model=m'
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
        pairs = [_split_pair(item) for item in query.split("&") if item]
        query = urlencode(
            [(name, value if is_harmless_param(name) else MASK) for name, value in pairs]
        )
    return urlunsplit((parts.scheme, host + port, parts.path, query, ""))


def _split_pair(item: str) -> tuple[str, str]:
    name, _, value = item.partition("=")
    return unquote_plus(name), unquote_plus(value)


def url_secrets(url: str | None) -> list[str]:
    """Secret parts of a URL: password, `user:password`, non-harmless query values.

    The user name alone counts only without a password (a token written as
    `https://TOKEN@host`); with a password it is an account name, and masking
    it everywhere (`postgres`) would garble ordinary log text. Both spellings
    of each are returned (as written in the URL and decoded): error texts may
    quote the URL raw or percent-decoded.
    """
    if not url:
        return []
    try:
        parts = urlsplit(url)
        username, password = parts.username or "", parts.password or ""
    except ValueError:
        return []
    found = [password, f"{username}:{password}"] if password else [username]
    for item in parts.query.split("&"):
        raw_name, _, raw_value = item.partition("=")
        if raw_value and not is_harmless_param(unquote_plus(raw_name)):
            found.extend([raw_value, unquote_plus(raw_value)])
    found.extend([unquote_plus(s) for s in found])
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
    if settings.webhook_secret is not None:
        # The whole `whsec_...` text and its base64 part (the key's own text).
        secrets += [settings.webhook_secret, settings.webhook_secret.removeprefix("whsec_")]
    urls = [
        settings.database_url,
        settings.llm_base_url,
        settings.qwen_audio_base_url,
        settings.voxtral_base_url,
        settings.infra_status_url,
        *settings.whisperx_url,
        *settings.vllm_metrics_urls,
        *(url for _, url in settings.webhook_urls),
    ]
    for url in urls:
        secrets.extend(url_secrets(url))
    return secrets


class Redactor:
    """Masks known secret values, and the encoded forms they take, in text.

    For each secret of at least 4 characters it masks: the value, its
    percent-encodings (`quote`, `quote_plus`, upper- or lower-case hex), its base64
    encodings (standard and URL-safe, with and without padding) and the
    base64 fragments it turns into inside a longer base64 text at each of the
    three possible byte offsets (a `Basic` header encodes `user:password` as
    one text, so the password alone is such a fragment). Longer forms are
    matched first, so an encoding is masked whole.
    """

    def __init__(self, secrets: Iterable[str | None]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= _MIN_SECRET:
                forms.update(_forms(secret))
        ordered = sorted(forms, key=lambda form: (-len(form), form))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def text(self, text: str) -> str:
        """`text` with every form of every secret replaced by `***`."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def data(self, value: Any) -> Any:
        """A copy of a JSON-like value (dicts, lists, strings) with every string redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.data(k): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(item) for item in value]
        return value


def _forms(secret: str) -> set[str]:
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
    # Some encoders write the escapes' hex digits in lower case (%2f).
    forms |= {_PERCENT_ESCAPE.sub(lambda m: m.group(0).lower(), form) for form in forms}
    raw = secret.encode("utf-8")
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode("ascii")
        forms |= {whole, whole.rstrip("=")}
        for offset in range(3):
            # Characters 6i..6i+5 (bits) of base64(prefix + secret) that only
            # depend on the secret's bytes, for a prefix of `offset` bytes.
            encoded = encode(b"\0" * offset + raw).decode("ascii")
            first = -(-8 * offset // 6)
            last = 8 * (offset + len(raw)) // 6
            fragment = encoded[first:last]
            if len(fragment) >= _MIN_BASE64_FRAGMENT:
                forms.add(fragment)
    return {form for form in forms if len(form) >= _MIN_SECRET}


@functools.lru_cache(maxsize=64)
def _cached_redactor(secrets: tuple[str | None, ...]) -> Redactor:
    return Redactor(secrets)


def redact_text(text: str, secrets: Sequence[str | None]) -> str:
    """Replace every occurrence of each secret (and its encoded forms) in `text` by `***`."""
    return _cached_redactor(tuple(secrets)).text(text)


def redactor_for(secrets: Sequence[str | None]) -> Redactor:
    """The (cached) `Redactor` of a list of secrets."""
    return _cached_redactor(tuple(secrets))


def settings_redactor(settings: Settings) -> Redactor:
    """The `Redactor` of every secret in `settings` (cached per settings)."""
    return _cached_redactor(tuple(settings_secrets(settings)))
