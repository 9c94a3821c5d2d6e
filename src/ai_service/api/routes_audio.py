"""`/api/v1/audio`: recordings stored in PostgreSQL, for transcription jobs to name.

`POST /api/v1/audio` takes the raw file as the body (`Content-Type: audio/*` or
`application/octet-stream`, up to `AUDIO_MAX_BYTES`: the JSON body limit
`MAX_BODY_BYTES` does not apply, see `middleware.RawBody`) and streams it into
`audio_chunks`; the answer's `audio_id` goes into a job's `input.audio_id`.
`GET /api/v1/audio/{audio_id}` streams the bytes back (for external workers).
Neither ever holds a whole recording in memory.
"""

from __future__ import annotations

import re
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from ai_service import errors
from ai_service.api import schemas
from ai_service.api.auth import scoped_owner
from ai_service.api.deps import PrincipalDep, SettingsDep, StoreDep, known_query
from ai_service.api.errors import responses

router = APIRouter(prefix="/api/v1", tags=["audio"])

UPLOAD_ROUTE = ("POST", "/api/v1/audio")
# The media types an upload may declare (kept and served back as they are: nothing
# that could split a header or smuggle parameters).
_AUDIO_TYPE = re.compile(r"^(audio/[a-z0-9][a-z0-9.+-]{0,62}|application/octet-stream)$")

_UPLOAD_BODY = {
    "required": True,
    "content": {
        media: {"schema": {"type": "string", "format": "binary"}}
        for media in ("audio/*", "application/octet-stream")
    },
}


def media_type(content_type: str | None) -> str | None:
    """The declared media type of an audio body (parameters dropped), or None if not audio."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media if _AUDIO_TYPE.match(media) else None


@router.post(
    "/audio",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.AudioOut,
    responses=responses(400, 415),
    summary="Upload a recording (raw body, up to AUDIO_MAX_BYTES) for transcription jobs",
    description=(
        "The body is the audio file itself (any format FFmpeg decodes), sent with "
        "`Content-Type: audio/...` or `application/octet-stream`. Give `input.audio_id` "
        "of the answer to transcription jobs of the same owner_service. Kept for "
        "AUDIO_RETENTION after its last use by a job, and while a pending or running "
        "job names it."
    ),
    openapi_extra={"requestBody": _UPLOAD_BODY},
    dependencies=[known_query("owner_service")],
)
async def upload_audio(
    request: Request,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    owner_service: Annotated[
        schemas.ShortText | None,
        Query(description="Owner of the recording; a submitter token's own by default."),
    ] = None,
) -> schemas.AudioOut:
    owner = scoped_owner(principal, owner_service, "owner_service")
    if owner is None:
        raise errors.InvalidRequest(
            "owner_service", "is required (query parameter) for a token of no owner_service"
        )
    content_type = media_type(request.headers.get("content-type")) or "application/octet-stream"
    blob = await store.upload_audio(
        owner, content_type, request.stream(), max_bytes=settings.audio_max_bytes
    )
    response.headers["Location"] = f"/api/v1/audio/{blob.id}"
    return schemas.AudioOut.of(blob)


@router.get(
    "/audio/{audio_id}",
    response_class=Response,
    responses={
        200: {
            "content": {"audio/*": {}, "application/octet-stream": {}},
            "description": "The recording, with the media type it was uploaded with",
        },
        **responses(404),
    },
    summary="Download a stored recording",
)
async def download_audio(audio_id: UUID, store: StoreDep, principal: PrincipalDep) -> Response:
    blob = await store.get_audio(audio_id)
    if not principal.owns(blob.owner_service):
        raise errors.AudioNotFound(audio_id)  # another owner's: not revealed
    return StreamingResponse(
        store.audio_chunks(audio_id),
        media_type=blob.content_type,
        headers={"Content-Length": str(blob.size), "ETag": f'"{blob.sha256}"'},
    )
