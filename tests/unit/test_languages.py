"""Transcription languages: codes, names and aliases to Whisper's codes."""

from __future__ import annotations

import pytest

from ai_service.languages import LANGUAGES, normalise_language


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ("en", "en"),
        ("EN", "en"),
        (" Ru ", "ru"),
        ("English", "en"),
        ("russian", "ru"),
        ("haitian creole", "ht"),
        ("Haitian_Creole", "ht"),
        ("jv", "jw"),
        ("Mandarin", "zh"),
        ("yue", "yue"),
        ("haw", "haw"),
    ],
)
def test_codes_and_english_names_map_to_whisper_codes(given: str, code: str) -> None:
    assert normalise_language(given) == code


@pytest.mark.parametrize("given", ["xx", "eng", "en-US", "Klingon", "", "e n"])
def test_unknown_languages_are_refused(given: str) -> None:
    assert normalise_language(given) is None


def test_the_list_is_the_servers_language_enum() -> None:
    # whisper-asr-webservice's openapi.json lists exactly these 100 codes.
    assert len(LANGUAGES) == 100
    assert all(code == code.lower() and 2 <= len(code) <= 3 for code in LANGUAGES)
