"""Settings read from the environment.

`load_settings(environ)` builds a frozen `Settings` from a mapping (normally
`os.environ`). Variable names are exactly the ones of the specification. Every
value is validated at start; a bad value raises `ConfigError` naming the
variable, so the process stops with a clear message instead of failing later.
"""

from __future__ import annotations

import hashlib
import math
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ai_service.errors import ConfigError
from ai_service.outbound import UrlPolicy
from ai_service.redact import redact_url
from ai_service.urls import has_userinfo
from ai_service.webhooks import destinations, sign

T = TypeVar("T")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

TRANSCRIPTION_PROVIDER_NAMES = ("whisperx", "qwen2-audio", "voxtral-small")
TRANSCRIPTION_MODES = ("compare", "fallback")
# How Voxtral is asked: chat completions with an `input_audio` part (the seed's
# contract), or vLLM's OpenAI-style `POST /v1/audio/transcriptions`.
VOXTRAL_APIS = ("chat", "transcriptions")


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (`2s`, `5m`, `1h30m`, `250ms`) or plain seconds.

    Returns seconds as a float. Raises `ValueError` for anything else,
    including negative values.
    """
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pos = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(value) or pos == 0:
            raise ValueError(
                f"invalid duration {text!r}: use seconds (30) or Go-style units (2s, 5m, 1h30m)"
            ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {text!r}: must be a finite, non-negative value")
    return seconds


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"invalid boolean {text!r}: use true or false")


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"invalid integer {text!r}") from None


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parse_weights(text: str) -> tuple[tuple[str, int], ...]:
    """`name=N,name=N` (N >= 1), e.g. `qwen2.5-14b=64,whisperx=2` or `telephony=4`.

    A name may hold `/`, `.`, `-` and `=` (split at the last `=`); a repeated name is
    refused rather than one silently winning.
    """
    pairs: dict[str, int] = {}
    for number, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        if not entry:
            continue  # a trailing comma
        name, sep, value = entry.rpartition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"entry {number} ({entry!r}) must be name=N")
        try:
            count = int(value.strip())
        except ValueError:
            raise ValueError(
                f"entry {number} ({name}): {value.strip()!r} is not a whole number"
            ) from None
        if count < 1:
            raise ValueError(f"entry {number} ({name}): must be >= 1, got {count}")
        if name in pairs:
            raise ValueError(f"entry {number} repeats {name!r}")
        pairs[name] = count
    return tuple(pairs.items())


LLM_CONCURRENCY_AUTO = -1
"""`LLM_CONCURRENCY=auto`: the in-flight limit follows the engine's load (`worker.adaptive`)."""


def _parse_llm_concurrency(text: str) -> int:
    value = text.strip().lower()
    if value == "auto":
        return LLM_CONCURRENCY_AUTO
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"invalid value {text!r}: use a number of slots or auto") from None


def _parse_optional(text: str) -> str | None:
    return text.strip() or None


def _parse_str(text: str) -> str:
    return text.strip()


def _parse_token(text: str) -> str | None:
    # Empty means "not configured" (the seed's rule: auth off). A value of only
    # blanks is a mistake (an unfilled template, a stray newline): refuse it
    # rather than silently running without auth.
    if text and not text.strip():
        raise ValueError(
            "is only whitespace: set a real token, or leave it unset (or empty) to run "
            "without auth (local development only)"
        )
    return text.strip() or None


def _parse_webhook_secret(text: str) -> str | None:
    """`WEBHOOK_SECRET`: a Standard Webhooks secret, checked now (its text is kept)."""
    if not text.strip():
        return None
    sign.parse_secret(text)  # raises ValueError without quoting the value
    return text.strip()


def _parse_webhook_urls(text: str) -> tuple[tuple[str, str], ...]:
    """`owner_service=url,owner_service=url`: each owner's default callback URL.

    Split at the first `=` (a URL's query may hold more). Messages name an entry by
    its number and owner, and show URLs redacted (a query may hold a token).
    """
    pairs: dict[str, str] = {}
    for number, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        if not entry:
            continue  # a trailing comma
        owner, sep, url = entry.partition("=")
        owner, url = owner.strip(), url.strip()
        if not sep or not owner or not url:
            raise ValueError(f"entry {number} must be owner_service=https://...")
        if len(owner) > 100 or "\x00" in owner:
            raise ValueError(f"entry {number}: owner_service must be 1 to 100 characters")
        problem = destinations.syntax_problem(url)
        if problem is not None:
            raise ValueError(f"entry {number} ({owner}): {redact_url(url)!r} {problem}")
        if owner in pairs:
            raise ValueError(f"entry {number} repeats owner_service {owner!r}")
        pairs[owner] = url
    return tuple(pairs.items())


class Role(StrEnum):
    """What a scoped token (`AI_SERVICE_TOKENS`) may do; see `ai_service.api.auth`."""

    ADMIN = "admin"
    SUBMITTER = "submitter"
    WORKER = "worker"
    READER = "reader"


@dataclass(frozen=True)
class ScopedToken:
    """One `token:role[:owner_service]` entry of `AI_SERVICE_TOKENS`.

    `token_id` (first 8 hex digits of the token's SHA-256) names the token in
    logs; the token itself is kept out of `repr`.
    """

    token: str = field(repr=False)
    role: Role
    owner_service: str | None = None

    @property
    def token_id(self) -> str:
        """Log-safe name of the token."""
        return token_id(self.token)


def token_id(token: str) -> str:
    """First 8 hex digits of the SHA-256 of `token`: names a token without revealing it."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def _parse_scoped_tokens(text: str) -> tuple[ScopedToken, ...]:
    """`token:role[:owner_service]`, comma-separated. Errors name entries by position only:
    a misplaced field could be the token, and no part of an entry is ever echoed."""
    if not text:
        return ()
    entries = [entry.strip() for entry in text.split(",")]
    if not any(entries):
        raise ValueError("has no entries: use token:role[:owner_service], comma-separated")
    known = ", ".join(r.value for r in Role)
    parsed: list[ScopedToken] = []
    first_seen: dict[str, int] = {}
    for number, entry in enumerate(entries, start=1):
        if not entry:
            continue  # a trailing comma
        where = f"entry {number}"
        parts = entry.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"{where} must be token:role or token:submitter:owner_service")
        token, role_text = parts[0], parts[1].strip()
        owner = parts[2].strip() if len(parts) == 3 else None
        if not token:
            raise ValueError(f"{where} has an empty token")
        if any(c.isspace() for c in token):
            raise ValueError(f"{where} has a token containing whitespace")
        if role_text not in {r.value for r in Role}:
            raise ValueError(f"{where} has an unknown role (known: {known})")
        role = Role(role_text)
        if role is Role.SUBMITTER and not owner:
            raise ValueError(
                f"{where}: role submitter needs an owner_service (token:submitter:owner)"
            )
        if role is not Role.SUBMITTER and owner is not None:
            raise ValueError(f"{where}: only role submitter takes an owner_service")
        if owner is not None and (len(owner) > 100 or "\x00" in owner):
            raise ValueError(f"{where}: owner_service must be 1 to 100 characters")
        if token in first_seen:
            raise ValueError(f"{where} repeats the token of entry {first_seen[token]}")
        first_seen[token] = number
        parsed.append(ScopedToken(token, role, owner))
    return tuple(parsed)


@dataclass(frozen=True)
class AudioLLM:
    """One OpenAI-compatible audio model endpoint (Qwen2-Audio or Voxtral)."""

    name: str
    variable: str  # the URL's variable, for "not configured" messages
    base_url: str | None
    model: str
    api_key: str | None


@dataclass(frozen=True)
class Settings:
    """Validated process configuration. Field names mirror the variables."""

    # HTTP API
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    http_workers: int = 1
    database_url: str | None = None
    migrate_on_start: bool = True
    ai_service_token: str | None = None
    ai_service_tokens: tuple[ScopedToken, ...] = ()
    max_body_bytes: int = 10 * 1024 * 1024
    ui_session_ttl: float = 12 * 3600.0  # lifetime of a dashboard login (`/ui`)
    db_pool_min: int = 2
    db_pool_max: int = 10
    log_level: str = "info"
    # LLM worker
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str = "qwen2.5-14b"
    llm_timeout: float = 300.0
    # 0: the LLM handler's share of WORKER_CONCURRENCY; LLM_CONCURRENCY_AUTO: adaptive.
    llm_concurrency: int = 0
    llm_concurrency_min: int = 1
    llm_concurrency_max: int = 0  # 0: the LLM handler's share of WORKER_CONCURRENCY
    llm_metrics_url: str | None = None  # None: derived from LLM_BASE_URL
    llm_metrics_interval: float = 1.0
    llm_forward_priority: bool = False
    # Transcription
    transcription_providers: tuple[str, ...] = ("whisperx",)
    transcription_mode: str = "compare"
    whisperx_url: tuple[str, ...] = ()
    # The model the WhisperX servers load (ASR_MODEL there): the server only names its engine.
    whisperx_model: str = "large-v3"
    # Default of a job's `vad_filter`: without it silence becomes a hallucinated "You".
    whisperx_vad_filter: bool = True
    qwen_audio_base_url: str | None = None
    qwen_audio_model: str = "Qwen/Qwen2-Audio-7B-Instruct"
    qwen_audio_api_key: str | None = None
    voxtral_base_url: str | None = None
    voxtral_model: str = "mistralai/Voxtral-Small-24B-2507"
    voxtral_api_key: str | None = None
    voxtral_api: str = "chat"  # VOXTRAL_APIS
    audio_llm_api_key: str | None = None
    audio_llm_prompt: str = (
        "Transcribe the audio verbatim. Return only the transcript text, without comments."
    )
    audio_llm_max_tokens: int = 4096
    audio_max_bytes: int = 200 * 1024 * 1024
    audio_max_seconds: float = 4 * 3600.0  # longest decoded audio a job may bring
    audio_retention: float = 7 * 86400.0  # stored audio unused this long is deleted
    audio_download_timeout: float = 60.0
    audio_url_allow: UrlPolicy = field(default_factory=UrlPolicy)
    # Completion webhooks (see ai_service.webhooks)
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_urls: tuple[tuple[str, str], ...] = ()  # owner_service -> default callback URL
    webhook_url_allow: UrlPolicy = field(default_factory=UrlPolicy)
    webhook_timeout: float = 10.0
    webhook_retry_max_delay: float = 600.0
    webhook_max_age: float = 86400.0
    transcription_timeout: float = 1800.0
    transcription_concurrency: int = 0  # 0: a small share of WORKER_CONCURRENCY
    # Worker
    worker_id: str = field(default_factory=socket.gethostname)
    worker_http_host: str = "0.0.0.0"
    worker_http_port: int = 8081
    worker_poll_interval: float = 2.0
    worker_claim_limit: int = 4
    worker_concurrency: int = 0  # 0 means "same as worker_claim_limit"
    worker_lease_timeout: float = 900.0
    worker_shutdown_timeout: float = 30.0
    worker_registry_interval: float = 5.0  # how often a worker writes its registry row
    # Scheduling: cluster-wide running limits per model profile, fair-share weights
    model_profile_limits: tuple[tuple[str, int], ...] = ()
    owner_weights: tuple[tuple[str, int], ...] = ()
    # Provider outages (see worker/breaker.py and job_defer)
    provider_outage_max: float = 6 * 3600.0  # 0: outages spend attempts like other failures
    breaker_failures: int = 5  # 0: no circuit breaker
    breaker_probe_interval: float = 0.5
    breaker_probe_max: float = 1.0
    # Queue maintenance
    retry_backoff_base: float = 10.0
    retry_backoff_max: float = 600.0
    rescue_interval: float = 30.0
    retention_completed: float = 7 * 86400.0
    retention_failed: float = 30 * 86400.0
    retention_interval: float = 300.0
    # Infra telemetry
    infra_status_url: str | None = None
    infra_status_token: str | None = None
    provider_probe_timeout: float = 3.0
    provider_status_cache: float = 5.0
    # Sidecar (runs on the AI server)
    sidecar_http_host: str = "0.0.0.0"
    sidecar_http_port: int = 9100
    sidecar_token: str | None = None
    vllm_metrics_urls: tuple[str, ...] = ()
    docker_socket: str = "/var/run/docker.sock"

    @property
    def auth_enabled(self) -> bool:
        """Whether `/api/v1/*` needs a token: `AI_SERVICE_TOKEN` or `AI_SERVICE_TOKENS` is set."""
        return self.ai_service_token is not None or bool(self.ai_service_tokens)

    @property
    def effective_worker_concurrency(self) -> int:
        """Jobs a worker keeps in flight: `WORKER_CONCURRENCY` or the claim limit."""
        return self.worker_concurrency or self.worker_claim_limit

    @property
    def llm_concurrency_auto(self) -> bool:
        """Whether `LLM_CONCURRENCY=auto` (the in-flight limit follows the engine)."""
        return self.llm_concurrency == LLM_CONCURRENCY_AUTO

    @property
    def effective_llm_metrics_url(self) -> str | None:
        """`LLM_METRICS_URL`, else `LLM_BASE_URL` with its `/v1` replaced by `/metrics`."""
        if self.llm_metrics_url:
            return self.llm_metrics_url
        if not self.llm_base_url:
            return None
        parts = urlsplit(self.llm_base_url)
        path = parts.path.rstrip("/")
        path = path.removesuffix("/v1") + "/metrics"
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))

    @property
    def qwen_audio_effective_key(self) -> str | None:
        """`QWEN_AUDIO_API_KEY`, else `AUDIO_LLM_API_KEY`, else `LLM_API_KEY`."""
        return self.qwen_audio_api_key or self.audio_llm_api_key or self.llm_api_key

    @property
    def voxtral_effective_key(self) -> str | None:
        """`VOXTRAL_API_KEY`, else `AUDIO_LLM_API_KEY`, else `LLM_API_KEY`."""
        return self.voxtral_api_key or self.audio_llm_api_key or self.llm_api_key

    def audio_llm(self, name: str) -> AudioLLM:
        """The endpoint of audio provider `name` (`qwen2-audio` or `voxtral-small`)."""
        if name == "qwen2-audio":
            return AudioLLM(
                name,
                "QWEN_AUDIO_BASE_URL",
                self.qwen_audio_base_url,
                self.qwen_audio_model,
                self.qwen_audio_effective_key,
            )
        if name == "voxtral-small":
            return AudioLLM(
                name,
                "VOXTRAL_BASE_URL",
                self.voxtral_base_url,
                self.voxtral_model,
                self.voxtral_effective_key,
            )
        raise KeyError(name)

    def default_callback_url(self, owner_service: str) -> str | None:
        """The callback URL of `WEBHOOK_URLS` for jobs of `owner_service` (None: none)."""
        return dict(self.webhook_urls).get(owner_service)

    def require_database_url(self) -> str:
        """Return `DATABASE_URL` or stop with a message naming it."""
        if not self.database_url:
            raise ConfigError("DATABASE_URL", "is required (for example postgresql://host/db)")
        return self.database_url


# variable name -> (field name, parser)
_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "HTTP_HOST": ("http_host", _parse_str),
    "HTTP_PORT": ("http_port", _parse_int),
    "HTTP_WORKERS": ("http_workers", _parse_int),
    "DATABASE_URL": ("database_url", _parse_optional),
    "MIGRATE_ON_START": ("migrate_on_start", _parse_bool),
    "AI_SERVICE_TOKEN": ("ai_service_token", _parse_token),
    "AI_SERVICE_TOKENS": ("ai_service_tokens", _parse_scoped_tokens),
    "MAX_BODY_BYTES": ("max_body_bytes", _parse_int),
    "DB_POOL_MIN": ("db_pool_min", _parse_int),
    "DB_POOL_MAX": ("db_pool_max", _parse_int),
    "LOG_LEVEL": ("log_level", _parse_str),
    "LLM_BASE_URL": ("llm_base_url", _parse_optional),
    "LLM_API_KEY": ("llm_api_key", _parse_optional),
    "LLM_MODEL": ("llm_model", _parse_str),
    "LLM_TIMEOUT": ("llm_timeout", parse_duration),
    "LLM_CONCURRENCY": ("llm_concurrency", _parse_llm_concurrency),
    "LLM_CONCURRENCY_MIN": ("llm_concurrency_min", _parse_int),
    "LLM_CONCURRENCY_MAX": ("llm_concurrency_max", _parse_int),
    "LLM_METRICS_URL": ("llm_metrics_url", _parse_optional),
    "LLM_METRICS_INTERVAL": ("llm_metrics_interval", parse_duration),
    "LLM_FORWARD_PRIORITY": ("llm_forward_priority", _parse_bool),
    "TRANSCRIPTION_PROVIDERS": ("transcription_providers", _parse_list),
    "TRANSCRIPTION_MODE": ("transcription_mode", _parse_str),
    "WHISPERX_URL": ("whisperx_url", _parse_list),
    "WHISPERX_MODEL": ("whisperx_model", _parse_str),
    "WHISPERX_VAD_FILTER": ("whisperx_vad_filter", _parse_bool),
    "QWEN_AUDIO_BASE_URL": ("qwen_audio_base_url", _parse_optional),
    "QWEN_AUDIO_MODEL": ("qwen_audio_model", _parse_str),
    "QWEN_AUDIO_API_KEY": ("qwen_audio_api_key", _parse_optional),
    "VOXTRAL_BASE_URL": ("voxtral_base_url", _parse_optional),
    "VOXTRAL_MODEL": ("voxtral_model", _parse_str),
    "VOXTRAL_API_KEY": ("voxtral_api_key", _parse_optional),
    "VOXTRAL_API": ("voxtral_api", _parse_str),
    "AUDIO_LLM_API_KEY": ("audio_llm_api_key", _parse_optional),
    "AUDIO_LLM_PROMPT": ("audio_llm_prompt", _parse_str),
    "AUDIO_LLM_MAX_TOKENS": ("audio_llm_max_tokens", _parse_int),
    "AUDIO_MAX_BYTES": ("audio_max_bytes", _parse_int),
    "AUDIO_MAX_SECONDS": ("audio_max_seconds", parse_duration),
    "AUDIO_RETENTION": ("audio_retention", parse_duration),
    "AUDIO_DOWNLOAD_TIMEOUT": ("audio_download_timeout", parse_duration),
    "AUDIO_URL_ALLOW": ("audio_url_allow", UrlPolicy.from_setting),
    "WEBHOOK_SECRET": ("webhook_secret", _parse_webhook_secret),
    "WEBHOOK_URLS": ("webhook_urls", _parse_webhook_urls),
    "WEBHOOK_URL_ALLOW": ("webhook_url_allow", UrlPolicy.from_setting),
    "WEBHOOK_TIMEOUT": ("webhook_timeout", parse_duration),
    "WEBHOOK_RETRY_MAX_DELAY": ("webhook_retry_max_delay", parse_duration),
    "WEBHOOK_MAX_AGE": ("webhook_max_age", parse_duration),
    "TRANSCRIPTION_TIMEOUT": ("transcription_timeout", parse_duration),
    "TRANSCRIPTION_CONCURRENCY": ("transcription_concurrency", _parse_int),
    "WORKER_ID": ("worker_id", _parse_str),
    "WORKER_HTTP_HOST": ("worker_http_host", _parse_str),
    "WORKER_HTTP_PORT": ("worker_http_port", _parse_int),
    "WORKER_POLL_INTERVAL": ("worker_poll_interval", parse_duration),
    "WORKER_CLAIM_LIMIT": ("worker_claim_limit", _parse_int),
    "WORKER_CONCURRENCY": ("worker_concurrency", _parse_int),
    "WORKER_LEASE_TIMEOUT": ("worker_lease_timeout", parse_duration),
    "WORKER_SHUTDOWN_TIMEOUT": ("worker_shutdown_timeout", parse_duration),
    "WORKER_REGISTRY_INTERVAL": ("worker_registry_interval", parse_duration),
    "MODEL_PROFILE_LIMITS": ("model_profile_limits", _parse_weights),
    "OWNER_WEIGHTS": ("owner_weights", _parse_weights),
    "PROVIDER_OUTAGE_MAX": ("provider_outage_max", parse_duration),
    "BREAKER_FAILURES": ("breaker_failures", _parse_int),
    "BREAKER_PROBE_INTERVAL": ("breaker_probe_interval", parse_duration),
    "BREAKER_PROBE_MAX": ("breaker_probe_max", parse_duration),
    "RETRY_BACKOFF_BASE": ("retry_backoff_base", parse_duration),
    "RETRY_BACKOFF_MAX": ("retry_backoff_max", parse_duration),
    "RESCUE_INTERVAL": ("rescue_interval", parse_duration),
    "RETENTION_COMPLETED": ("retention_completed", parse_duration),
    "RETENTION_FAILED": ("retention_failed", parse_duration),
    "RETENTION_INTERVAL": ("retention_interval", parse_duration),
    "INFRA_STATUS_URL": ("infra_status_url", _parse_optional),
    "INFRA_STATUS_TOKEN": ("infra_status_token", _parse_optional),
    "PROVIDER_PROBE_TIMEOUT": ("provider_probe_timeout", parse_duration),
    "PROVIDER_STATUS_CACHE": ("provider_status_cache", parse_duration),
    "UI_SESSION_TTL": ("ui_session_ttl", parse_duration),
    "SIDECAR_HTTP_HOST": ("sidecar_http_host", _parse_str),
    "SIDECAR_HTTP_PORT": ("sidecar_http_port", _parse_int),
    "SIDECAR_TOKEN": ("sidecar_token", _parse_optional),
    "VLLM_METRICS_URLS": ("vllm_metrics_urls", _parse_list),
    "DOCKER_SOCKET": ("docker_socket", _parse_str),
}

ENV_NAMES: dict[str, str] = {field_name: env for env, (field_name, _) in _VARIABLES.items()}

# Parsers that see blank values themselves (the others keep the default).
_BLANK_AWARE: frozenset[Callable[[str], Any]] = frozenset(
    {_parse_optional, _parse_token, _parse_scoped_tokens, _parse_webhook_secret}
)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build validated `Settings` from an environment mapping.

    Unset or empty variables keep their defaults (empty optional values mean
    "not configured"). Raises `ConfigError` naming the first bad variable.
    """
    values: dict[str, Any] = {}
    for env, (name, parse) in _VARIABLES.items():
        raw = environ.get(env)
        if raw is None or (raw.strip() == "" and parse not in _BLANK_AWARE):
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(env, str(exc)) from None
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    def check(ok: bool, name: str, message: str) -> None:
        if not ok:
            raise ConfigError(ENV_NAMES[name], message)

    for name in ("http_port", "worker_http_port", "sidecar_http_port"):
        port = getattr(s, name)
        check(0 < port < 65536, name, f"must be a TCP port (1-65535), got {port}")
    check(1 <= s.http_workers <= 64, "http_workers", "must be between 1 and 64")
    check(s.max_body_bytes >= 1024, "max_body_bytes", "must be at least 1024")
    check(60 <= s.ui_session_ttl <= 7 * 86400, "ui_session_ttl", "must be between 1m and 168h")
    check(1 <= s.db_pool_min <= s.db_pool_max, "db_pool_min", "must be >= 1 and <= DB_POOL_MAX")
    check(s.llm_timeout > 0, "llm_timeout", "must be positive")
    check(bool(s.llm_model), "llm_model", "must not be empty")
    check(
        bool(s.transcription_providers),
        "transcription_providers",
        "must name at least one provider",
    )
    unknown = [p for p in s.transcription_providers if p not in TRANSCRIPTION_PROVIDER_NAMES]
    check(
        not unknown,
        "transcription_providers",
        f"unknown provider(s) {', '.join(unknown)}; "
        f"known: {', '.join(TRANSCRIPTION_PROVIDER_NAMES)}",
    )
    check(
        s.transcription_mode in TRANSCRIPTION_MODES,
        "transcription_mode",
        f"must be one of {', '.join(TRANSCRIPTION_MODES)}",
    )
    check(s.voxtral_api in VOXTRAL_APIS, "voxtral_api", f"must be one of {', '.join(VOXTRAL_APIS)}")
    check(bool(s.whisperx_model), "whisperx_model", "must not be empty")
    check(s.audio_llm_max_tokens >= 1, "audio_llm_max_tokens", "must be >= 1")
    check(s.audio_max_bytes >= 1, "audio_max_bytes", "must be >= 1")
    check(s.audio_max_seconds >= 1, "audio_max_seconds", "must be at least 1s")
    check(s.audio_retention >= 60, "audio_retention", "must be at least 60s")
    check(0 < len(s.worker_id) <= 200, "worker_id", "must be 1 to 200 characters")
    check(
        not s.webhook_urls or s.webhook_secret is not None,
        "webhook_urls",
        "needs WEBHOOK_SECRET: webhooks are always signed (Standard Webhooks)",
    )
    for number, (owner, url) in enumerate(s.webhook_urls, start=1):
        problem = destinations.config_problem(url, s.webhook_url_allow)
        check(problem is None, "webhook_urls", f"entry {number} ({owner}): {problem}")
    check(0.5 <= s.webhook_timeout <= 60, "webhook_timeout", "must be between 0.5s and 60s")
    check(
        1 <= s.webhook_retry_max_delay <= 86400,
        "webhook_retry_max_delay",
        "must be between 1s and 24h",
    )
    check(s.webhook_max_age >= 1, "webhook_max_age", "must be at least 1s")
    check(
        s.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        "log_level",
        "must be one of debug, info, warning, error, critical",
    )
    check(s.worker_poll_interval > 0, "worker_poll_interval", "must be positive")
    check(1 <= s.worker_claim_limit <= 100, "worker_claim_limit", "must be between 1 and 100")
    check(0 <= s.worker_concurrency <= 1000, "worker_concurrency", "must be between 0 and 1000")
    check(
        s.llm_concurrency == LLM_CONCURRENCY_AUTO or 0 <= s.llm_concurrency <= 1000,
        "llm_concurrency",
        "must be auto or between 0 and 1000 (0: the LLM share of WORKER_CONCURRENCY)",
    )
    check(
        0 <= s.transcription_concurrency <= 1000,
        "transcription_concurrency",
        "must be between 0 and 1000 (0: a share of WORKER_CONCURRENCY)",
    )
    check(1 <= s.llm_concurrency_min <= 1000, "llm_concurrency_min", "must be between 1 and 1000")
    check(
        0 <= s.llm_concurrency_max <= 1000,
        "llm_concurrency_max",
        "must be between 0 and 1000 (0: the LLM share of WORKER_CONCURRENCY)",
    )
    check(
        s.llm_concurrency_max == 0 or s.llm_concurrency_max >= s.llm_concurrency_min,
        "llm_concurrency_max",
        "must be >= LLM_CONCURRENCY_MIN",
    )
    check(
        0.05 <= s.llm_metrics_interval <= 60,
        "llm_metrics_interval",
        "must be between 50ms and 60s",
    )
    explicit = [
        s.transcription_concurrency,
        s.llm_concurrency_max if s.llm_concurrency_auto else max(s.llm_concurrency, 0),
    ]
    check(
        not (s.worker_concurrency and all(explicit)) or sum(explicit) <= s.worker_concurrency,
        "worker_concurrency",
        "is less than LLM_CONCURRENCY (or LLM_CONCURRENCY_MAX with auto) + "
        "TRANSCRIPTION_CONCURRENCY: raise it, or leave it unset (then it is their sum)",
    )
    check(s.worker_lease_timeout >= 1, "worker_lease_timeout", "must be at least 1s")
    check(
        0.1 <= s.worker_registry_interval <= 300,
        "worker_registry_interval",
        "must be between 100ms and 5m",
    )
    check(0 <= s.breaker_failures <= 1000, "breaker_failures", "must be between 0 and 1000")
    check(s.breaker_probe_interval >= 0.05, "breaker_probe_interval", "must be at least 50ms")
    check(
        s.breaker_probe_max >= s.breaker_probe_interval,
        "breaker_probe_max",
        "must be >= BREAKER_PROBE_INTERVAL",
    )
    check(s.rescue_interval > 0, "rescue_interval", "must be positive")
    check(s.retention_interval > 0, "retention_interval", "must be positive")
    check(
        s.retry_backoff_max >= s.retry_backoff_base,
        "retry_backoff_max",
        "must be >= RETRY_BACKOFF_BASE",
    )
    for name in (
        "llm_base_url",
        "llm_metrics_url",
        "qwen_audio_base_url",
        "voxtral_base_url",
        "infra_status_url",
    ):
        url = getattr(s, name)
        check(url is None or _is_http_url(url), name, "must be an http:// or https:// URL")
    # OpenAI-compatible servers authenticate with a bearer key. Credentials in the
    # URL would be sent as HTTP Basic instead of the key (httpx turns them into
    # an Authorization header that replaces the key's), so they are refused.
    for name, key in _KEY_VARIABLES.items():
        url = getattr(s, name)
        check(
            url is None or not has_userinfo(url),
            name,
            f"must not contain user:password@ (credentials would replace the API key); "
            f"put the key in {key}",
        )
    for name in ("whisperx_url", "vllm_metrics_urls"):
        for url in getattr(s, name):
            check(
                _is_http_url(url),
                name,
                f"every entry must be an http(s) URL, got {redact_url(url)!r}",
            )
    check(
        all(t.token != s.ai_service_token for t in s.ai_service_tokens),
        "ai_service_tokens",
        "repeats the value of AI_SERVICE_TOKEN (the admin token): give every token once",
    )
    if s.database_url is not None:
        check(
            s.database_url.startswith(("postgresql://", "postgres://")),
            "database_url",
            "must start with postgresql:// or postgres://",
        )


# OpenAI-compatible base URL field -> the variable(s) that hold its key.
_KEY_VARIABLES = {
    "llm_base_url": "LLM_API_KEY",
    "qwen_audio_base_url": "QWEN_AUDIO_API_KEY (or AUDIO_LLM_API_KEY)",
    "voxtral_base_url": "VOXTRAL_API_KEY (or AUDIO_LLM_API_KEY)",
}


def _is_http_url(url: str) -> bool:
    return url.startswith(("http://", "https://")) and len(url) > len("https://")


def describe_defaults() -> dict[str, Any]:
    """Variable name -> default value, for documentation and tests."""
    defaults = Settings()
    return {ENV_NAMES[f.name]: getattr(defaults, f.name) for f in fields(Settings)}
