"""Inline audio's stored media type: only short ASCII formats become audio/<format>."""

from __future__ import annotations

import pytest

from ai_service.audio_input import content_type


@pytest.mark.parametrize(
    ("audio_format", "expected"),
    [
        ("wav", "audio/wav"),
        (" MP3 ", "audio/mp3"),
        ("\uff4d\uff50\uff13", "application/octet-stream"),  # full-width "mp3": not latin-1
        ("x" * 17, "application/octet-stream"),
        ("mp3;charset=x", "application/octet-stream"),
        (None, "application/octet-stream"),
        (3, "application/octet-stream"),
    ],
)
def test_the_stored_type_is_a_safe_header_value(audio_format: object, expected: str) -> None:
    stored = content_type(audio_format)
    assert stored == expected
    stored.encode("latin-1")  # served back as a Content-Type header
