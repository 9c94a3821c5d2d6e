"""Settings from the environment: seed names and defaults, durations, validation."""

from __future__ import annotations

import hashlib
import math
import socket
from typing import Any

import pytest

from ai_service.config import Role, describe_defaults, load_settings, parse_duration, token_id
from ai_service.errors import ConfigError

# Every variable of seed.md "Configuration" with its documented default
# (None: no default, the variable is optional or required without one).
SEED_DEFAULTS: dict[str, Any] = {
    "HTTP_HOST": "0.0.0.0",
    "HTTP_PORT": 8080,
    "DATABASE_URL": None,
    "MIGRATE_ON_START": True,
    "AI_SERVICE_TOKEN": None,
    "LLM_BASE_URL": None,
    "LLM_API_KEY": None,
    "LLM_MODEL": "qwen2.5-14b",
    "LLM_TIMEOUT": 300.0,  # 5m
    "TRANSCRIPTION_PROVIDERS": ("whisperx",),
    "WHISPERX_URL": (),
    "QWEN_AUDIO_BASE_URL": None,
    "QWEN_AUDIO_MODEL": "Qwen/Qwen2-Audio-7B-Instruct",
    "QWEN_AUDIO_API_KEY": None,
    "VOXTRAL_BASE_URL": None,
    "VOXTRAL_MODEL": "mistralai/Voxtral-Small-24B-2507",
    "VOXTRAL_API_KEY": None,
    "AUDIO_LLM_API_KEY": None,
    "AUDIO_LLM_MAX_TOKENS": 4096,
    "WORKER_HTTP_HOST": "0.0.0.0",
    "WORKER_HTTP_PORT": 8081,
    "WORKER_POLL_INTERVAL": 2.0,
    "WORKER_CLAIM_LIMIT": 4,
    "WORKER_LEASE_TIMEOUT": 900.0,  # 15m
}

# variable -> (a valid non-default value, the setting it must produce, attribute)
SEED_OVERRIDES: list[tuple[str, str, Any, str]] = [
    ("HTTP_HOST", "127.0.0.1", "127.0.0.1", "http_host"),
    ("HTTP_PORT", "9000", 9000, "http_port"),
    ("DATABASE_URL", "postgresql://db/ai", "postgresql://db/ai", "database_url"),
    ("MIGRATE_ON_START", "false", False, "migrate_on_start"),
    ("AI_SERVICE_TOKEN", "s3cret", "s3cret", "ai_service_token"),
    ("LLM_BASE_URL", "http://10.2.3.5:8000/v1", "http://10.2.3.5:8000/v1", "llm_base_url"),
    ("LLM_API_KEY", "llm-key", "llm-key", "llm_api_key"),
    ("LLM_MODEL", "other-model", "other-model", "llm_model"),
    ("LLM_TIMEOUT", "90s", 90.0, "llm_timeout"),
    (
        "TRANSCRIPTION_PROVIDERS",
        "whisperx, qwen2-audio ,voxtral-small",
        ("whisperx", "qwen2-audio", "voxtral-small"),
        "transcription_providers",
    ),
    (
        "WHISPERX_URL",
        "http://a:9000,http://b:9000",
        ("http://a:9000", "http://b:9000"),
        "whisperx_url",
    ),
    ("WHISPERX_MODEL", "tiny.en", "tiny.en", "whisperx_model"),
    ("WHISPERX_VAD_FILTER", "false", False, "whisperx_vad_filter"),
    ("QWEN_AUDIO_BASE_URL", "http://10.2.3.5:8003", "http://10.2.3.5:8003", "qwen_audio_base_url"),
    ("QWEN_AUDIO_MODEL", "qwen-x", "qwen-x", "qwen_audio_model"),
    ("QWEN_AUDIO_API_KEY", "qk", "qk", "qwen_audio_api_key"),
    ("VOXTRAL_BASE_URL", "http://10.2.3.5:8004", "http://10.2.3.5:8004", "voxtral_base_url"),
    ("VOXTRAL_MODEL", "vox-x", "vox-x", "voxtral_model"),
    ("VOXTRAL_API_KEY", "vk", "vk", "voxtral_api_key"),
    ("VOXTRAL_API", "transcriptions", "transcriptions", "voxtral_api"),
    ("AUDIO_LLM_API_KEY", "ak", "ak", "audio_llm_api_key"),
    ("AUDIO_LLM_PROMPT", "Transcribe.", "Transcribe.", "audio_llm_prompt"),
    ("AUDIO_LLM_MAX_TOKENS", "512", 512, "audio_llm_max_tokens"),
    ("WORKER_ID", "worker-7", "worker-7", "worker_id"),
    ("WORKER_HTTP_HOST", "127.0.0.1", "127.0.0.1", "worker_http_host"),
    ("WORKER_HTTP_PORT", "9081", 9081, "worker_http_port"),
    ("WORKER_POLL_INTERVAL", "250ms", 0.25, "worker_poll_interval"),
    ("WORKER_CLAIM_LIMIT", "16", 16, "worker_claim_limit"),
    ("WORKER_LEASE_TIMEOUT", "1h30m", 5400.0, "worker_lease_timeout"),
]


@pytest.mark.parametrize(("variable", "default"), SEED_DEFAULTS.items())
def test_seed_variable_has_the_seed_default(variable: str, default: Any) -> None:
    defaults = describe_defaults()
    assert variable in defaults
    assert defaults[variable] == default


def test_worker_id_defaults_to_the_hostname() -> None:
    assert load_settings({}).worker_id == socket.gethostname()


def test_empty_environment_loads_the_seed_defaults() -> None:
    settings = load_settings({})
    assert settings.http_port == 8080
    assert settings.llm_timeout == 300.0
    assert settings.worker_poll_interval == 2.0
    assert settings.worker_lease_timeout == 900.0
    assert settings.transcription_providers == ("whisperx",)


@pytest.mark.parametrize(("variable", "raw", "expected", "attribute"), SEED_OVERRIDES)
def test_seed_variable_is_read_from_the_environment(
    variable: str, raw: str, expected: Any, attribute: str
) -> None:
    settings = load_settings({variable: raw})
    assert getattr(settings, attribute) == expected


def test_empty_value_keeps_the_default() -> None:
    settings = load_settings({"HTTP_PORT": "", "WORKER_POLL_INTERVAL": "  ", "LLM_MODEL": ""})
    assert settings.http_port == 8080
    assert settings.worker_poll_interval == 2.0
    assert settings.llm_model == "qwen2.5-14b"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2s", 2.0),
        ("5m", 300.0),
        ("15m", 900.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1m30.5s", 90.5),
        ("1h0m0s", 3600.0),
        ("30", 30.0),
        ("1.5", 1.5),
        ("0", 0.0),
        (" 10s ", 10.0),
        ("100us", 100e-6),
        ("500ns", 500e-9),
    ],
)
def test_parse_duration_accepts_go_durations_and_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["5x", "-1s", "", "  ", "1h-3m", "-1", "s", "1h 30m", "1.5.2s", "nan", "inf", "1e400"],
)
def test_parse_duration_rejects_anything_else(text: str) -> None:
    # "inf" and "1e400" (infinite) are no usable duration either: a lease or timeout of
    # infinity cannot be written to PostgreSQL and must be refused at start.
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_duration_result_is_finite_for_plain_seconds() -> None:
    assert math.isfinite(parse_duration("1e3"))


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("HTTP_PORT", "abc"),
        ("HTTP_PORT", "0"),
        ("HTTP_PORT", "70000"),
        ("WORKER_HTTP_PORT", "-1"),
        ("MIGRATE_ON_START", "maybe"),
        ("LLM_TIMEOUT", "5x"),
        ("LLM_TIMEOUT", "0s"),
        ("LLM_BASE_URL", "ftp://x"),
        ("QWEN_AUDIO_BASE_URL", "10.2.3.5:8003"),
        ("VOXTRAL_BASE_URL", "https://"),
        ("VOXTRAL_API", "completions"),
        ("WHISPERX_URL", "http://ok:9000,whisperx:9000"),
        ("WHISPERX_VAD_FILTER", "sometimes"),
        ("TRANSCRIPTION_PROVIDERS", "foo"),
        ("TRANSCRIPTION_PROVIDERS", "whisperx,foo"),
        ("AUDIO_LLM_MAX_TOKENS", "0"),
        ("AUDIO_MAX_SECONDS", "0"),
        ("AUDIO_MAX_SECONDS", "forever"),
        ("AUDIO_RETENTION", "30s"),
        ("WORKER_POLL_INTERVAL", "0"),
        ("WORKER_POLL_INTERVAL", "-2s"),
        ("WORKER_CLAIM_LIMIT", "0"),
        ("WORKER_CLAIM_LIMIT", "101"),
        ("WORKER_CLAIM_LIMIT", "four"),
        ("WORKER_LEASE_TIMEOUT", "500ms"),
        ("WORKER_REGISTRY_INTERVAL", "50ms"),
        ("WORKER_REGISTRY_INTERVAL", "10m"),
        ("DATABASE_URL", "mysql://db/ai"),
        ("LLM_CONCURRENCY", "many"),
        ("LLM_CONCURRENCY", "-2"),
        ("LLM_CONCURRENCY", "1001"),
        ("TRANSCRIPTION_CONCURRENCY", "-1"),
        ("LLM_CONCURRENCY_MIN", "0"),
        ("LLM_CONCURRENCY_MAX", "1001"),
        ("LLM_METRICS_URL", "vllm:8000/metrics"),
        ("LLM_METRICS_INTERVAL", "10ms"),
        ("LLM_FORWARD_PRIORITY", "sometimes"),
        ("UI_SESSION_TTL", "10s"),
        ("UI_SESSION_TTL", "30d"),
    ],
)
def test_invalid_value_raises_config_error_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({variable: raw})
    assert info.value.variable == variable
    assert variable in str(info.value)
    assert info.value.details == {"variable": variable}


@pytest.mark.parametrize("raw", [",", " , ,"])
def test_transcription_providers_naming_no_provider_is_rejected(raw: str) -> None:
    # Not an empty value (that keeps the default) but a list with no name in it: the
    # transcription worker would silently run with no provider at all.
    with pytest.raises(ConfigError) as info:
        load_settings({"TRANSCRIPTION_PROVIDERS": raw})
    assert info.value.variable == "TRANSCRIPTION_PROVIDERS"


def test_audio_bounds_default_to_four_hours_and_seven_days() -> None:
    assert load_settings({}).audio_max_seconds == 4 * 3600
    assert load_settings({}).audio_retention == 7 * 86400
    settings = load_settings({"AUDIO_MAX_SECONDS": "90m", "AUDIO_RETENTION": "48h"})
    assert (settings.audio_max_seconds, settings.audio_retention) == (5400, 172800)


def test_backoff_max_below_base_is_rejected_naming_retry_backoff_max() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"RETRY_BACKOFF_BASE": "1m", "RETRY_BACKOFF_MAX": "30s"})
    assert info.value.variable == "RETRY_BACKOFF_MAX"


def test_missing_database_url_is_reported_by_name() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({}).require_database_url()
    assert info.value.variable == "DATABASE_URL"
    url = "postgresql://u@127.0.0.1/db"
    assert load_settings({"DATABASE_URL": url}).require_database_url() == url


def test_audio_api_keys_fall_back_to_audio_llm_key_then_llm_key() -> None:
    only_llm = load_settings({"LLM_API_KEY": "llm"})
    assert only_llm.qwen_audio_effective_key == "llm"
    assert only_llm.voxtral_effective_key == "llm"

    audio = load_settings({"LLM_API_KEY": "llm", "AUDIO_LLM_API_KEY": "audio"})
    assert audio.qwen_audio_effective_key == "audio"
    assert audio.voxtral_effective_key == "audio"

    own = load_settings(
        {
            "LLM_API_KEY": "llm",
            "AUDIO_LLM_API_KEY": "audio",
            "QWEN_AUDIO_API_KEY": "qwen",
            "VOXTRAL_API_KEY": "vox",
        }
    )
    assert own.qwen_audio_effective_key == "qwen"
    assert own.voxtral_effective_key == "vox"


def test_audio_api_keys_are_none_when_no_key_is_set() -> None:
    settings = load_settings({})
    assert settings.qwen_audio_effective_key is None
    assert settings.voxtral_effective_key is None


def test_empty_optional_key_counts_as_unset_for_the_fallback() -> None:
    settings = load_settings({"QWEN_AUDIO_API_KEY": "", "LLM_API_KEY": "llm"})
    assert settings.qwen_audio_api_key is None
    assert settings.qwen_audio_effective_key == "llm"


def test_worker_concurrency_defaults_to_the_claim_limit() -> None:
    assert load_settings({"WORKER_CLAIM_LIMIT": "7"}).effective_worker_concurrency == 7
    settings = load_settings({"WORKER_CLAIM_LIMIT": "7", "WORKER_CONCURRENCY": "20"})
    assert settings.effective_worker_concurrency == 20


def test_the_worker_registry_interval_defaults_to_five_seconds_and_reads_a_duration() -> None:
    assert load_settings({}).worker_registry_interval == 5.0
    assert load_settings({"WORKER_REGISTRY_INTERVAL": "500ms"}).worker_registry_interval == 0.5


def test_llm_concurrency_takes_a_number_or_auto() -> None:
    assert load_settings({"LLM_CONCURRENCY": "16"}).llm_concurrency == 16
    auto = load_settings({"LLM_CONCURRENCY": " Auto "})
    assert auto.llm_concurrency_auto
    assert not load_settings({}).llm_concurrency_auto


def test_llm_metrics_url_is_derived_from_the_base_url() -> None:
    def derived(base: str) -> str | None:
        return load_settings({"LLM_BASE_URL": base}).effective_llm_metrics_url

    assert derived("http://10.2.3.5:8000/v1") == "http://10.2.3.5:8000/metrics"
    assert derived("http://10.2.3.5:8000/v1/") == "http://10.2.3.5:8000/metrics"
    assert derived("http://10.2.3.5:8000") == "http://10.2.3.5:8000/metrics"
    assert derived("http://gw/llm/v1?api_key=k") == "http://gw/llm/metrics?api_key=k"
    explicit = load_settings({"LLM_BASE_URL": "http://a/v1", "LLM_METRICS_URL": "http://b:9/m"})
    assert explicit.effective_llm_metrics_url == "http://b:9/m"
    assert load_settings({}).effective_llm_metrics_url is None


def test_explicit_handler_slots_above_the_worker_total_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            {"WORKER_CONCURRENCY": "8", "LLM_CONCURRENCY": "8", "TRANSCRIPTION_CONCURRENCY": "2"}
        )
    assert info.value.variable == "WORKER_CONCURRENCY"
    with pytest.raises(ConfigError) as auto:
        load_settings(
            {
                "WORKER_CONCURRENCY": "8",
                "LLM_CONCURRENCY": "auto",
                "LLM_CONCURRENCY_MAX": "8",
                "TRANSCRIPTION_CONCURRENCY": "1",
            }
        )
    assert auto.value.variable == "WORKER_CONCURRENCY"
    fits = {"WORKER_CONCURRENCY": "10", "LLM_CONCURRENCY": "8", "TRANSCRIPTION_CONCURRENCY": "2"}
    assert load_settings(fits).worker_concurrency == 10


def test_llm_concurrency_max_below_min_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"LLM_CONCURRENCY_MIN": "8", "LLM_CONCURRENCY_MAX": "4"})
    assert info.value.variable == "LLM_CONCURRENCY_MAX"


# -- AI_SERVICE_TOKEN and AI_SERVICE_TOKENS ------------------------------------------

SUB = "sub-4b1c0f6a"
WRK = "wrk-9d2e7a31"


@pytest.mark.parametrize("raw", [" ", "   ", "\t", "\n", " \r\n "])
def test_whitespace_only_service_token_is_a_config_error_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"AI_SERVICE_TOKEN": raw})
    assert info.value.variable == "AI_SERVICE_TOKEN"
    assert str(info.value).startswith("AI_SERVICE_TOKEN ")
    assert "whitespace" in str(info.value)


def test_unset_or_empty_service_token_means_auth_off() -> None:
    for env in ({}, {"AI_SERVICE_TOKEN": ""}, {"AI_SERVICE_TOKEN": "", "AI_SERVICE_TOKENS": ""}):
        settings = load_settings(env)
        assert settings.ai_service_token is None
        assert settings.ai_service_tokens == ()
        assert settings.auth_enabled is False


def test_service_token_is_stripped_and_turns_auth_on() -> None:
    settings = load_settings({"AI_SERVICE_TOKEN": "  s3cret-token\n"})
    assert settings.ai_service_token == "s3cret-token"
    assert settings.auth_enabled is True


def test_scoped_tokens_are_parsed_with_role_and_owner() -> None:
    raw = f" {SUB}:submitter:telephony , {WRK}:worker,rdr-1:reader,adm-1:admin,"
    settings = load_settings({"AI_SERVICE_TOKENS": raw})
    assert [(t.token, t.role, t.owner_service) for t in settings.ai_service_tokens] == [
        (SUB, Role.SUBMITTER, "telephony"),
        (WRK, Role.WORKER, None),
        ("rdr-1", Role.READER, None),
        ("adm-1", Role.ADMIN, None),
    ]
    # Scoped tokens alone turn auth on (only the listed tokens are accepted).
    assert settings.ai_service_token is None
    assert settings.auth_enabled is True


def test_scoped_token_id_is_a_sha256_prefix_and_repr_hides_the_token() -> None:
    [scoped] = load_settings({"AI_SERVICE_TOKENS": f"{SUB}:submitter:telephony"}).ai_service_tokens
    assert scoped.token_id == hashlib.sha256(SUB.encode()).hexdigest()[:8]
    assert token_id(SUB) == scoped.token_id
    assert SUB not in repr(scoped)
    assert "submitter" in repr(scoped)


def test_scoped_tokens_default_to_none() -> None:
    assert describe_defaults()["AI_SERVICE_TOKENS"] == ()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (f"{SUB}:superuser", "entry 1 has an unknown role"),
        (f"{WRK}:worker,{SUB}:Submitter:telephony", "entry 2 has an unknown role"),
        (f"{SUB}", "entry 1 must be token:role"),
        (f"{SUB}:submitter:telephony:extra", "entry 1 must be token:role"),
        (f":reader,{WRK}:worker", "entry 1 has an empty token"),
        (f"{WRK}:worker, :reader", "entry 2 has an empty token"),
        (f"{WRK}:worker,{WRK}:reader", "entry 2 repeats the token of entry 1"),
        (f"{SUB} x:reader", "entry 1 has a token containing whitespace"),
        (f"{SUB}\t:reader", "entry 1 has a token containing whitespace"),
        (f"{SUB}:submitter", "entry 1: role submitter needs an owner_service"),
        (f"{SUB}:submitter: ", "entry 1: role submitter needs an owner_service"),
        (f"{WRK}:worker:telephony", "entry 1: only role submitter takes an owner_service"),
        (f"{SUB}:submitter:{'o' * 101}", "entry 1: owner_service must be 1 to 100 characters"),
        ("  ", "has no entries"),
        (" , ,", "has no entries"),
    ],
)
def test_bad_scoped_token_entries_are_config_errors_that_never_echo_the_token(
    raw: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"AI_SERVICE_TOKENS": raw})
    message = str(info.value)
    assert info.value.variable == "AI_SERVICE_TOKENS"
    assert message.startswith("AI_SERVICE_TOKENS ")
    assert problem in message
    for secret in (SUB, WRK, "superuser", "Submitter"):
        assert secret not in message
        assert secret not in repr(info.value.details)


def test_a_scoped_token_may_not_repeat_the_admin_token() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"AI_SERVICE_TOKEN": SUB, "AI_SERVICE_TOKENS": f"{SUB}:reader"})
    assert info.value.variable == "AI_SERVICE_TOKENS"
    assert SUB not in str(info.value)


def test_profile_limits_and_owner_weights_are_name_count_pairs() -> None:
    s = load_settings(
        {
            "MODEL_PROFILE_LIMITS": "qwen2.5-14b=64, whisperx=2,Qwen/Qwen2-Audio-7B-Instruct=4,",
            "OWNER_WEIGHTS": "telephony=4,monitoring-pf=1",
        }
    )
    assert dict(s.model_profile_limits) == {
        "qwen2.5-14b": 64,
        "whisperx": 2,
        "Qwen/Qwen2-Audio-7B-Instruct": 4,
    }
    assert dict(s.owner_weights) == {"telephony": 4, "monitoring-pf": 1}
    assert load_settings({}).model_profile_limits == ()  # no limits, equal weights


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("m", "must be name=N"),
        ("=3", "must be name=N"),
        ("m=x", "is not a whole number"),
        ("m=0", "must be >= 1"),
        ("m=2,m=3", "repeats 'm'"),
    ],
)
def test_bad_profile_limits_are_refused_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"MODEL_PROFILE_LIMITS": value})
    assert "MODEL_PROFILE_LIMITS" in str(info.value)
    assert message in str(info.value)


def test_outage_and_breaker_settings_parse_as_durations_and_counts() -> None:
    defaults = load_settings({})
    assert defaults.provider_outage_max == 6 * 3600.0
    assert (defaults.breaker_failures, defaults.breaker_probe_interval) == (5, 0.5)
    assert defaults.breaker_probe_max == 1.0
    settings = load_settings(
        {
            "PROVIDER_OUTAGE_MAX": "1h30m",
            "BREAKER_FAILURES": "0",
            "BREAKER_PROBE_INTERVAL": "250ms",
            "BREAKER_PROBE_MAX": "30s",
        }
    )
    assert settings.provider_outage_max == 5400.0
    assert settings.breaker_failures == 0
    assert (settings.breaker_probe_interval, settings.breaker_probe_max) == (0.25, 30.0)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PROVIDER_OUTAGE_MAX": "-1s"}, "PROVIDER_OUTAGE_MAX"),
        ({"BREAKER_FAILURES": "-1"}, "BREAKER_FAILURES"),
        ({"BREAKER_PROBE_INTERVAL": "10ms"}, "BREAKER_PROBE_INTERVAL"),
        ({"BREAKER_PROBE_INTERVAL": "5s", "BREAKER_PROBE_MAX": "1s"}, "BREAKER_PROBE_MAX"),
    ],
)
def test_bad_outage_and_breaker_settings_name_the_variable(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert variable in str(info.value)


def test_voxtral_api_defaults_to_the_chat_contract() -> None:
    assert load_settings({}).voxtral_api == "chat"
    assert describe_defaults()["VOXTRAL_API"] == "chat"


# -- completion webhooks ---------------------------------------------------------------

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_webhooks_are_off_by_default_with_a_24_hour_retry_window() -> None:
    settings = load_settings({})
    assert settings.webhook_secret is None
    assert settings.webhook_urls == ()
    assert (settings.webhook_max_age, settings.webhook_retry_max_delay) == (86400, 600)
    assert settings.webhook_timeout == 10


def test_webhook_settings_are_read() -> None:
    settings = load_settings(
        {
            "WEBHOOK_SECRET": f" {WEBHOOK_SECRET} ",
            "WEBHOOK_URLS": "telephony=https://tel.example.com/hooks?k=a=b, crm=http://10.0.0.7/h",
            "WEBHOOK_URL_ALLOW": "10.0.0.0/8",
            "WEBHOOK_RETRY_MAX_DELAY": "30s",
            "WEBHOOK_MAX_AGE": "2h",
            "WEBHOOK_TIMEOUT": "5s",
        }
    )
    assert settings.webhook_secret == WEBHOOK_SECRET
    assert settings.default_callback_url("telephony") == "https://tel.example.com/hooks?k=a=b"
    assert settings.default_callback_url("crm") == "http://10.0.0.7/h"
    assert settings.default_callback_url("other") is None
    assert (settings.webhook_retry_max_delay, settings.webhook_max_age) == (30, 7200)
    assert settings.webhook_timeout == 5


@pytest.mark.parametrize(
    "secret",
    ["whsec_not-base64!!", "whsec_" + "QUJD", "plainpassword-but-long-enough-to-matter"],
)
def test_a_malformed_webhook_secret_stops_the_start_without_showing_it(secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"WEBHOOK_SECRET": secret})
    assert info.value.variable == "WEBHOOK_SECRET"
    assert secret.removeprefix("whsec_") not in str(info.value)


def test_the_webhook_secret_is_kept_out_of_repr_and_masked_in_logs() -> None:
    settings = load_settings({"WEBHOOK_SECRET": WEBHOOK_SECRET})
    assert "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" not in repr(settings)
    from ai_service.redact import settings_redactor

    text = f"secret={WEBHOOK_SECRET} key=MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert settings_redactor(settings).text(text) == "secret=*** key=***"


def test_default_webhook_urls_need_the_secret() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"WEBHOOK_URLS": "telephony=https://tel.example.com/hooks"})
    assert info.value.variable == "WEBHOOK_URLS"
    assert "WEBHOOK_SECRET" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("telephony", "entry 1 must be owner_service=https://..."),
        ("telephony=ftp://x/y", "entry 1 (telephony)"),
        ("a=https://x.example/1,a=https://x.example/2", "repeats owner_service 'a'"),
        ("a=https://u:pw-secret@x.example/1", "user:password@"),
        ("a=https://x.example/1,b=http://127.0.0.1:9/x", "entry 2 (b): is an internal"),
        ("a=http://169.254.169.254/latest", "entry 1 (a): is an internal"),
    ],
)
def test_bad_default_webhook_urls_name_the_entry(raw: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"WEBHOOK_SECRET": WEBHOOK_SECRET, "WEBHOOK_URLS": raw})
    assert info.value.variable == "WEBHOOK_URLS"
    assert expected in str(info.value)
    assert "pw-secret" not in str(info.value)


def test_an_allowed_internal_default_webhook_url_is_accepted() -> None:
    settings = load_settings(
        {
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WEBHOOK_URLS": "a=http://127.0.0.1:9/x",
            "WEBHOOK_URL_ALLOW": "127.0.0.1",
        }
    )
    assert settings.default_callback_url("a") == "http://127.0.0.1:9/x"


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("WEBHOOK_URL_ALLOW", "http://10.0.0.1/"),
        ("WEBHOOK_RETRY_MAX_DELAY", "0s"),
        ("WEBHOOK_TIMEOUT", "5m"),
        ("WEBHOOK_MAX_AGE", "0"),
    ],
)
def test_bad_webhook_limits_name_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({variable: raw})
    assert info.value.variable == variable
