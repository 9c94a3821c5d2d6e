"""JSON log lines never carry a configured secret, in any encoding."""

from __future__ import annotations

import base64
import io
import json
import logging
import sys
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from ai_service import logs, redact
from tests.helpers import make_settings


def _format(settings_env: dict[str, str], message: str, *args: object) -> str:
    settings = make_settings(**settings_env)
    record = logging.LogRecord("x", logging.INFO, "f", 1, message, args or None, None)
    logs.RedactingFilter(redact.settings_redactor(settings)).filter(record)
    return logs.JsonFormatter().format(record)


def test_log_lines_are_json_objects_with_level_logger_and_message() -> None:
    entry = json.loads(_format({}, "hello %s", "world"))
    assert entry["level"] == "info"
    assert entry["logger"] == "x"
    assert entry["message"] == "hello world"


def test_keys_tokens_and_url_credentials_are_masked() -> None:
    env = {
        "AI_SERVICE_TOKEN": "svc-token-123",
        "LLM_API_KEY": "llm-key-456",
        "LLM_BASE_URL": "http://h:8000/v1?api_key=llm-q-000",
        "VLLM_METRICS_URLS": "http://u:metrics-pw-77@h:8000",
        "DATABASE_URL": "postgresql://app:db-pw-555@db/ai",
    }
    line = _format(env, "svc-token-123 llm-key-456 llm-q-000 metrics-pw-77 %s", "db-pw-555")
    for secret in ("svc-token-123", "llm-key-456", "llm-q-000", "metrics-pw-77", "db-pw-555"):
        assert secret not in line
    assert line.count("***") == 5


def test_encoded_forms_of_a_secret_are_masked() -> None:
    key = "sk-live/Zq+9=tok"
    basic = base64.b64encode(b"wxuser:wx-pw-2001").decode()
    env = {"LLM_API_KEY": key, "WHISPERX_URL": "http://wxuser:wx-pw-2001@h:9000"}
    text = " | ".join(
        [
            f"Authorization: Basic {basic}",
            base64.b64encode(key.encode()).decode(),
            base64.urlsafe_b64encode(key.encode()).decode().rstrip("="),
            quote(key, safe=""),
            # the key inside a longer base64 text, at an odd offset
            base64.b64encode(b"Bearer " + key.encode()).decode(),
        ]
    )
    line = _format(env, text)
    assert basic not in line
    assert base64.b64encode(key.encode()).decode() not in line
    assert quote(key, safe="") not in line
    assert base64.b64encode(key.encode()).decode().rstrip("=")[:12] not in line
    assert line.count("***") >= 5


def test_exception_texts_are_masked() -> None:
    settings = make_settings(LLM_API_KEY="sk-exc-secret-1")
    try:
        raise RuntimeError("failed with sk-exc-secret-1")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "boom", None, sys.exc_info())
    logs.RedactingFilter(redact.settings_redactor(settings)).filter(record)
    line = logs.JsonFormatter().format(record)
    assert "sk-exc-secret-1" not in line
    assert "RuntimeError: failed with ***" in json.loads(line)["exception"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_masks_every_record_of_every_logger(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure(make_settings(INFRA_STATUS_TOKEN="infra-tok-42", LOG_LEVEL="debug"))

    logging.getLogger("some.library").warning("sent Bearer %s", "infra-tok-42")

    line = stream.getvalue()
    assert "infra-tok-42" not in line
    assert json.loads(line)["message"] == "sent Bearer ***"


def test_configure_skips_the_thread_and_process_names_no_line_shows(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for flag in ("logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, flag, True)  # restored after the test
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure(make_settings(LOG_LEVEL="info"))
    record = logging.makeLogRecord({"msg": "x"})
    assert (record.threadName, record.processName) == (None, None)
    logging.getLogger("ai_service.api.access").info("POST /api/v1/jobs 201 1.0ms auth=off")
    entry = json.loads(stream.getvalue())
    assert set(entry) == {"time", "level", "logger", "message"}


def test_scoped_tokens_are_masked_like_the_admin_token() -> None:
    env = {"AI_SERVICE_TOKENS": "sub-token-321:submitter:telephony,wrk-token-654:worker"}
    line = _format(env, "sub-token-321 and wrk-token-654")
    assert "sub-token-321" not in line
    assert "wrk-token-654" not in line
    assert line.count("***") == 2
