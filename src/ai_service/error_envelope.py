"""The one place where errors become HTTP responses (the error envelope).

Every 4xx/5xx body is `{"error": code, "message": text, "details": {...}}`.
Both HTTP programs install it: the API (`api.app`) and the AI-server sidecar
(`sidecar.app`), which runs on its own host and must not import the API, so
this module depends on nothing of the service but the domain errors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ai_service import errors

STATUS_BY_ERROR: dict[type[errors.AIServiceError], int] = {
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.JobNotFound: 404,
    errors.AudioNotFound: 404,
    errors.InvalidTransition: 409,
    errors.LeaseLost: 409,
    errors.AttemptsExhausted: 409,
    errors.IdempotencyConflict: 409,
    errors.InvalidRequest: 422,
    errors.PayloadTooLarge: 413,
    errors.DatabaseUnavailable: 503,
    errors.StatementTimeout: 503,
    errors.UpstreamUnavailable: 502,
}

_HTTP_CODES = {
    # FastAPI's only 400: a JSON body it could not parse (too deeply nested, an
    # integer too long to convert, bytes that are not UTF-8, ...).
    400: "malformed_json",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
}
MALFORMED_JSON = "the request body is not valid JSON"


class ErrorOut(BaseModel):
    """The envelope of every 4xx/5xx answer."""

    error: str = Field(description="Stable machine-readable code, e.g. `job_not_found`.")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


def envelope(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON error response in the envelope shape."""
    body = {"error": code, "message": message, "details": details or {}}
    return JSONResponse(body, status_code=status, headers=headers)


def status_for(exc: errors.AIServiceError) -> int:
    """The HTTP status of a domain error: its own class's, or the nearest base's (else 500)."""
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def domain_response(exc: errors.AIServiceError, log: logging.Logger) -> JSONResponse:
    """The envelope answering a domain error; a 5xx is logged on `log` (the program's)."""
    status = status_for(exc)
    if status >= 500:
        log.warning("request failed: %s: %s", exc.code, exc.message)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": "1"}
    return envelope(status, exc.code, exc.message, exc.details, headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or "body"


def validation_details(raw: list[Any]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI error entries as {field, message, type}, without echoing input."""
    return [
        {
            "field": _field_name(tuple(e.get("loc", ()))),
            "message": e.get("msg", ""),
            "type": e.get("type", ""),
        }
        for e in raw
    ]


def install(app: FastAPI, log: logging.Logger) -> None:
    """Register the exception handlers on the app; failures are logged on `log`."""

    @app.exception_handler(errors.AIServiceError)
    async def domain_error(_: Request, exc: errors.AIServiceError) -> JSONResponse:
        return domain_response(exc, log)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        entries = validation_details(list(exc.errors()))
        if any(e["type"] == "json_invalid" for e in entries):
            return envelope(400, "malformed_json", MALFORMED_JSON)
        first = entries[0] if entries else {"field": "body", "message": "invalid"}
        return envelope(
            422,
            "validation_error",
            f"{first['field']}: {first['message']}",
            {"errors": entries},
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 400:
            # Never echo the parser's text: it may quote the body.
            message = MALFORMED_JSON
        return envelope(exc.status_code, code, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Never echo the exception text: it may carry data or secrets.
        log.exception("unhandled error: %s", type(exc).__name__)
        return envelope(500, "internal_error", "internal error")
