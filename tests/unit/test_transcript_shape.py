"""Shaping transcripts into the job result: filters, channel merge, warnings, diarization."""

from __future__ import annotations

import math

import pytest

from ai_service.worker import transcript_shape as shape


def seg(start: float, text: str = "x", **extra: object) -> dict[str, object]:
    return {"start": start, "end": start + 1, "text": text, **extra}


def test_confidence_is_the_mean_token_probability() -> None:
    assert shape.confidence(seg(0, avg_logprob=math.log(0.5))) == pytest.approx(0.5)
    assert shape.confidence(seg(0)) is None
    assert shape.confidence(seg(0, avg_logprob=True)) is None


@pytest.mark.parametrize(
    ("segment", "min_confidence", "threshold", "kept"),
    [
        (seg(0, avg_logprob=math.log(0.4)), 0.5, None, False),
        (seg(0, avg_logprob=math.log(0.6)), 0.5, None, True),
        (seg(0), 0.99, None, True),  # no score: kept
        (seg(0, no_speech_prob=0.95), None, 0.9, False),
        (seg(0, no_speech_prob=0.82), None, 0.9, True),  # real speech next to a pause
        (seg(0, no_speech_prob=0.95), None, None, True),  # no filter asked
    ],
)
def test_keep_segment(
    segment: dict[str, object], min_confidence: float | None, threshold: float | None, kept: bool
) -> None:
    assert (
        shape.keep_segment(segment, min_confidence=min_confidence, no_speech_threshold=threshold)
        is kept
    )


def test_merge_channels_labels_and_orders_by_time() -> None:
    agent = [seg(0.0, "Hello."), seg(5.0, "Anything else?")]
    words = [{"word": "Hi.", "speaker": "SPEAKER_00"}]
    customer = [seg(2.0, "Hi.", speaker="SPEAKER_00", words=words), seg(5.0, "No.")]

    merged = shape.merge_channels([agent, customer], ["agent", "customer"])

    assert [(s["start"], s["speaker"], s["channel"], s["text"]) for s in merged] == [
        (0.0, "agent", 0, "Hello."),
        (2.0, "customer", 1, "Hi."),
        (5.0, "agent", 0, "Anything else?"),  # same start: channel order
        (5.0, "customer", 1, "No."),
    ]
    assert merged[1]["words"] == [{"word": "Hi."}]  # the diarization label is gone
    assert "speaker" not in agent[0]  # inputs untouched
    assert words == [{"word": "Hi.", "speaker": "SPEAKER_00"}]


def test_merge_of_one_mixed_channel_keeps_the_segments() -> None:
    segments = [seg(0.0, speaker="SPEAKER_01")]
    assert shape.merge_channels([segments], None) == segments


def test_empty_warning_only_for_an_empty_transcript_of_audio_with_sound() -> None:
    warning = shape.empty_warning("whisperx", "", 12.5)
    assert warning is not None
    assert warning["code"] == "empty_transcript"
    assert warning["provider"] == "whisperx"
    assert "12.5 s of sound" in warning["message"]
    assert shape.empty_warning("whisperx", "Hello.", 12.5) is None
    assert shape.empty_warning("whisperx", "  ", 0.2) is None  # silence: nothing to hear
    on_channel = shape.empty_warning("whisperx", "", 3.0, "customer")
    assert on_channel is not None
    assert on_channel["channel"] == "customer"


@pytest.mark.parametrize(
    ("provider", "segments", "engine", "split", "expected"),
    [
        ("whisperx", [seg(0, speaker="SPEAKER_00")], "whisperx", False, ("applied", None)),
        ("whisperx", [seg(0)], "faster_whisper", False,
         ("unavailable", "the server's engine faster_whisper does not diarize")),
        ("whisperx", [seg(0)], "whisperx", False,
         ("unavailable", "the server returned no speakers (whisperx diarizes only when the "
                         "server has HF_TOKEN set)")),
        ("whisperx", [], None, False, ("unavailable", "the server returned no speakers")),
        ("qwen2-audio", [seg(0)], None, False, ("unavailable", "qwen2-audio does not diarize")),
        ("whisperx", [seg(0, speaker="agent")], "whisperx", True,
         ("unavailable", 'channels "split": speakers are the channels, not diarized')),
    ],
)  # fmt: skip
def test_diarization_status_says_why_not(
    provider: str,
    segments: list[dict[str, object]],
    engine: str | None,
    split: bool,
    expected: tuple[str, str | None],
) -> None:
    assert shape.diarization_status(provider, segments, engine=engine, split=split) == expected
