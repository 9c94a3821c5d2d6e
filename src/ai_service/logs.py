"""Structured JSON logging with secrets masked."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from ai_service.config import Settings
from ai_service.redact import Redactor, settings_redactor


class RedactingFilter(logging.Filter):
    """Masks every configured secret (and its encoded forms) in each record.

    Installed on the process's log handler by `configure`, so it covers every
    logger, the libraries' included: the message is rendered and masked, and
    so are the exception and stack texts.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite `record` in place with its texts masked; never drops a record."""
        record.msg = self._redactor.text(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redactor.text(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redactor.text(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False)


def configure(settings: Settings) -> None:
    """Send JSON logs to stderr at LOG_LEVEL, masking the configured secrets."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(settings_redactor(settings)))
    handler.setFormatter(JsonFormatter())
    # The JSON lines carry no thread or process names: not looking them up saves
    # a third of each record's cost (the API writes one access line per request).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # httpx2/httpcore2 are the openai SDK's HTTP stack: they log full request URLs.
    for noisy in ("uvicorn.access", "httpx", "httpcore", "httpx2", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
