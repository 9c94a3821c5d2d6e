"""From what providers heard to the job result: filters, channels, warnings, diarization.

Pure functions (no I/O) used by the `transcription` handler:

- `keep_segment`: the `min_confidence` / `drop_no_speech` filters;
- `merge_channels`: per-channel segments labelled with the channel's speaker
  and merged in time order (`channels: "split"`);
- `empty_warning`: an empty transcript of audio that carries sound is
  suspicious (the server may have failed to decode it and answered 200);
- `diarization_status`: whether speakers came back, and if not, why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# `drop_no_speech: true` drops segments whose `no_speech_prob` reaches this.
# High on purpose: faster-whisper gives every segment of a 30 s window the
# window's value, and real speech next to a pause scores 0.5-0.8; the
# hallucinated "You" of silence scores about 0.95.
DEFAULT_NO_SPEECH_THRESHOLD = 0.9
# Less sound than this is no reason to expect words.
MIN_SPEECH_SECONDS = 0.5


def confidence(segment: dict[str, Any]) -> float | None:
    """The segment's mean token probability, exp(`avg_logprob`), or None when unknown."""
    logprob = segment.get("avg_logprob")
    if not isinstance(logprob, int | float) or isinstance(logprob, bool):
        return None
    return math.exp(min(0.0, float(logprob)))


def keep_segment(
    segment: dict[str, Any], *, min_confidence: float | None, no_speech_threshold: float | None
) -> bool:
    """Whether `segment` passes the job's filters; a segment without the score passes."""
    if min_confidence is not None:
        value = confidence(segment)
        if value is not None and value < min_confidence:
            return False
    if no_speech_threshold is not None:
        no_speech = segment.get("no_speech_prob")
        if isinstance(no_speech, int | float) and no_speech >= no_speech_threshold:
            return False
    return True


def merge_channels(
    channels: Sequence[Sequence[dict[str, Any]]], speakers: Sequence[str] | None
) -> list[dict[str, Any]]:
    """One list of segments in time order from per-channel lists.

    With `speakers`, each segment of channel n gets `speaker` = speakers[n]
    (replacing any diarization label) and `channel` = n; equal start times keep
    the channel order.
    """
    merged: list[tuple[float, int, int, dict[str, Any]]] = []
    for index, segments in enumerate(channels):
        for position, segment in enumerate(segments):
            item = dict(segment)
            if speakers is not None:
                item["speaker"] = speakers[index]
                item["channel"] = index
                if item.get("words"):
                    item["words"] = [
                        {k: v for k, v in w.items() if k != "speaker"} for w in item["words"]
                    ]
            merged.append((float(item["start"]), index, position, item))
    merged.sort(key=lambda entry: entry[:3])
    return [entry[3] for entry in merged]


def joined_text(segments: Sequence[dict[str, Any]]) -> str:
    """The segments' texts joined with single spaces."""
    return " ".join(s["text"].strip() for s in segments if s.get("text", "").strip())


def empty_warning(
    provider: str, text: str, sound_seconds: float, channel: str | None = None
) -> dict[str, Any] | None:
    """A `warnings` entry when `provider` heard nothing in audio with sound, else None."""
    if text.strip() or sound_seconds < MIN_SPEECH_SECONDS:
        return None
    where = f" on {channel}" if channel else ""
    return {
        "code": "empty_transcript",
        "provider": provider,
        **({"channel": channel} if channel else {}),
        "message": f"{provider} returned no text{where} although the audio has "
        f"{sound_seconds:g} s of sound; the server may have failed to decode it",
    }


def diarization_status(
    provider: str,
    segments: Sequence[dict[str, Any]],
    *,
    engine: str | None,
    split: bool,
) -> tuple[str, str | None]:
    """`("applied", None)` when speakers came back, else `("unavailable", reason)`."""
    if split:
        return "unavailable", 'channels "split": speakers are the channels, not diarized'
    if any(s.get("speaker") for s in segments):
        return "applied", None
    if provider != "whisperx":
        return "unavailable", f"{provider} does not diarize"
    if engine == "faster_whisper":
        return "unavailable", "the server's engine faster_whisper does not diarize"
    if engine == "whisperx":
        return (
            "unavailable",
            "the server returned no speakers (whisperx diarizes only when the server "
            "has HF_TOKEN set)",
        )
    return "unavailable", "the server returned no speakers"
