"""Structured JSON logging with secrets masked."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from ai_service.config import Settings
from ai_service.redact import is_secret_param, redact_text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ exception)."""

    def __init__(self, secrets: list[str | None]) -> None:
        super().__init__()
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact_text(json.dumps(entry, ensure_ascii=False), self._secrets)


def secrets_of(settings: Settings) -> list[str | None]:
    """Every configured secret value, to be masked wherever it might appear."""
    from urllib.parse import parse_qsl, urlsplit

    values: list[str | None] = [
        settings.ai_service_token,
        settings.llm_api_key,
        settings.qwen_audio_api_key,
        settings.voxtral_api_key,
        settings.audio_llm_api_key,
        settings.infra_status_token,
        settings.sidecar_token,
    ]
    urls = [
        settings.database_url,
        settings.llm_base_url,
        settings.qwen_audio_base_url,
        settings.voxtral_base_url,
        settings.infra_status_url,
        *settings.whisperx_url,
    ]
    for url in urls:
        if url:
            try:
                parts = urlsplit(url)
                values.append(parts.password)
            except ValueError:
                continue
            values.extend(v for k, v in parse_qsl(parts.query) if is_secret_param(k))
    return values


def configure(settings: Settings) -> None:
    """Send JSON logs to stderr at LOG_LEVEL, masking the configured secrets."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets_of(settings)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # httpx2/httpcore2 are the openai SDK's HTTP stack: they log full request URLs.
    for noisy in ("uvicorn.access", "httpx", "httpcore", "httpx2", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
