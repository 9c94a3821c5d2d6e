"""The error answers the API's routes document in the OpenAPI document.

The envelope itself, the map from domain errors to status codes and the
exception handlers are `ai_service.error_envelope` (shared with the sidecar).
"""

from __future__ import annotations

from typing import Any

from ai_service.error_envelope import ErrorOut

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": desc}
    for code, desc in {
        400: "Malformed JSON",
        401: "Missing or wrong bearer token",
        403: "The token's role or owner_service does not allow this (scoped tokens)",
        404: "Job not found",
        409: "Illegal transition, lost lease, attempts exhausted or idempotency conflict",
        413: "Request body too large",
        414: "URL too long",
        415: "A request body that is not declared as application/json",
        422: "Invalid input (the message names the field)",
        503: "Database unavailable",
    }.items()
}


def responses(*codes: int, body: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the given error codes (plus 401/413/414/422/503 everywhere,
    and 400 and 415 for routes that take a JSON body)."""
    wanted = {401, 413, 414, 422, 503, *codes} | ({400, 415} if body else set())
    return {code: ERROR_RESPONSES[code] for code in sorted(wanted)}
