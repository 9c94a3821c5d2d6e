"""How a transcription job names its audio, shared by the API and the worker.

Three sources, exactly one per job: `audio_url` (downloaded by the worker),
`audio_id` (a recording stored in PostgreSQL, `POST /api/v1/audio`) and
`audio_base64` (small clips inline). The API moves `audio_base64` out of the
input into the audio table when the job is created (`api.job_audio`), so a
stored job names `audio_id` instead and no job row or list carries audio.

Light on purpose (no PyAV): the API imports it.
"""

from __future__ import annotations

import base64
import binascii
import re
from uuid import UUID

SOURCES = ("audio_url", "audio_base64", "audio_id")


class BadAudioInput(ValueError):
    """An audio field's value cannot be used; the message says why (without the value)."""


def decode_base64(text: str, limit: int) -> bytes:
    """The bytes of an `audio_base64` value: standard or URL-safe alphabet, padding
    optional, whitespace ignored, a `data:...;base64,` prefix allowed.

    Raises `BadAudioInput` for invalid or empty base64, `AudioTooLarge` past `limit`
    bytes (checked from the length before decoding).
    """
    if text.startswith("data:"):  # a data URL: keep what follows the comma
        text = text.partition(",")[2]
    text = "".join(text.split()).replace("-", "+").replace("_", "/")
    if len(text) // 4 * 3 > limit + 3:
        raise AudioTooLarge(limit)
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadAudioInput("is not valid base64") from None
    if not data:
        raise BadAudioInput("is empty")
    if len(data) > limit:
        raise AudioTooLarge(limit)
    return data


class AudioTooLarge(BadAudioInput):
    """The audio is larger than `AUDIO_MAX_BYTES`."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the audio is larger than AUDIO_MAX_BYTES ({limit} bytes)")
        self.limit = limit


def parse_audio_id(value: object) -> UUID:
    """An `audio_id` value as a UUID; `BadAudioInput` when it is none."""
    if not isinstance(value, str):
        raise BadAudioInput("must be the audio_id (a UUID string) of an uploaded recording")
    try:
        return UUID(value)
    except ValueError:
        raise BadAudioInput(
            "must be the audio_id (a UUID string) of an uploaded recording"
        ) from None


def content_type(audio_format: object) -> str:
    """The media type to store inline audio under, from the job's `audio_format` hint."""
    # ASCII only and short: the type is served back as a header (latin-1).
    if isinstance(audio_format, str) and _FORMAT.fullmatch(audio_format.strip()):
        return f"audio/{audio_format.strip().lower()}"
    return "application/octet-stream"


_FORMAT = re.compile(r"[A-Za-z0-9]{1,16}")
