"""Structured JSON logging with secrets masked."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from ai_service.config import Settings
from ai_service.redact import redact_text, settings_secrets


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


def configure(settings: Settings) -> None:
    """Send JSON logs to stderr at LOG_LEVEL, masking the configured secrets."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(settings_secrets(settings)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # httpx2/httpcore2 are the openai SDK's HTTP stack: they log full request URLs.
    for noisy in ("uvicorn.access", "httpx", "httpcore", "httpx2", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
