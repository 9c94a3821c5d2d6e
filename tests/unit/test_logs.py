"""JSON log lines never carry a configured secret."""

from __future__ import annotations

import json
import logging

from ai_service import logs, redact
from tests.helpers import make_settings


def _format(settings_env: dict[str, str], message: str) -> str:
    settings = make_settings(**settings_env)
    formatter = logs.JsonFormatter(redact.settings_secrets(settings))
    record = logging.LogRecord("x", logging.INFO, "f", 1, message, None, None)
    return formatter.format(record)


def test_log_lines_are_json_objects_with_level_logger_and_message() -> None:
    entry = json.loads(_format({}, "hello"))
    assert entry["level"] == "info"
    assert entry["logger"] == "x"
    assert entry["message"] == "hello"


def test_keys_tokens_and_url_credentials_are_masked() -> None:
    env = {
        "AI_SERVICE_TOKEN": "svc-token-123",
        "LLM_API_KEY": "llm-key-456",
        "LLM_BASE_URL": "http://u:llm-pw-789@h:8000/v1?api_key=llm-q-000",
        "VLLM_METRICS_URLS": "http://u:metrics-pw-77@h:8000",
        "DATABASE_URL": "postgresql://app:db-pw-555@db/ai",
    }
    line = _format(env, "svc-token-123 llm-key-456 llm-pw-789 llm-q-000 metrics-pw-77 db-pw-555")
    for secret in (
        "svc-token-123",
        "llm-key-456",
        "llm-pw-789",
        "llm-q-000",
        "metrics-pw-77",
        "db-pw-555",
    ):
        assert secret not in line
    assert line.count("***") == 6


def test_scoped_tokens_are_masked_like_the_admin_token() -> None:
    env = {"AI_SERVICE_TOKENS": "sub-token-321:submitter:telephony,wrk-token-654:worker"}
    line = _format(env, "sub-token-321 and wrk-token-654")
    assert "sub-token-321" not in line
    assert "wrk-token-654" not in line
    assert line.count("***") == 2
