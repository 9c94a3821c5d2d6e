"""What a decoded recording holds: its channels apart, and whether it has sound.

Servers that pipe the caller's file into ffmpeg cannot seek it: an M4A whose
index sits at the end yields an empty transcript, a WAV with its `data` chunk
before `fmt ` a 500 (see `shared/AI-SERVERS.md`). The worker has decoded the
audio already, so providers send the normalised 16 kHz mono WAV on disk
(`AudioClip.open_wav`) instead.

`split_channels` decodes each channel of a recording on its own (call
recordings keep agent and customer on separate channels), frame by frame into
one WAV file per channel; `speech_seconds` / `clip_speech_seconds` tell
whether audio carries sound at all, so an empty transcript of a clip that does
can be flagged.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ai_service.providers.audio import SAMPLE_RATE, AudioClip, decode_to_wav

_SAMPLE_WIDTH = 2  # s16le
BytesLike = bytes | bytearray | memoryview
# Frames of 50 ms; a frame whose peak reaches _VOICED_PEAK (about -30 dBFS)
# counts as sound. Every _STRIDE-th sample is looked at (2 kHz at 16 kHz):
# enough to see speech energy, cheap enough for hours of audio in pure Python.
_FRAME_SECONDS = 0.05
_VOICED_PEAK = 1000
_STRIDE = 8
# `clip_speech_seconds` reads a clip in pieces of this length (a multiple of
# the 50 ms frame, so the pieces' counts add up exactly): 1.9 MB at a time.
_SCAN_SECONDS = 60.0


def split_channels(
    source: Path,
    *,
    workdir: Path,
    max_seconds: float | None = None,
    stop: threading.Event | None = None,
) -> list[AudioClip]:
    """Decode every channel of the file `source` on its own, each to 16 kHz mono s16le.

    Each channel becomes a WAV file in `workdir` (decoded frame by frame, like
    `AudioClip.from_file`, within `max_seconds`); a mono file gives one clip.
    Raises `AudioDecodeError` / `AudioTooLong` like `AudioClip.from_file`. The
    clips carry no source file: providers send their WAV (`open_wav`).
    """
    paths, frames, _, _ = decode_to_wav(
        source, workdir, max_seconds=max_seconds, split=True, stop=stop
    )
    return [
        AudioClip(
            wav_path=path,
            frames=frames,
            source_path=None,
            source_format="wav",
            source_codec="pcm_s16le",
        )
        for path in paths
    ]


def clip_speech_seconds(clip: AudioClip) -> float:
    """`speech_seconds` of a clip, read from disk a minute at a time (never all of it)."""
    return round(sum(speech_seconds(piece.pcm) for piece in clip.chunks(_SCAN_SECONDS)), 3)


def speech_seconds(pcm: BytesLike, *, rate: int = SAMPLE_RATE) -> float:
    """Seconds of s16le mono `pcm` loud enough to be speech (or any sound).

    Not a voice detector: a 50 ms frame counts when its peak reaches about
    -30 dBFS. Silence and faint line noise give 0; speech, music and tones
    count. Used to tell a suspicious empty transcript from a silent clip.
    """
    samples = memoryview(pcm).cast("B")
    samples = samples[: len(samples) - len(samples) % _SAMPLE_WIDTH].cast("h")
    frame = max(1, int(rate * _FRAME_SECONDS))
    voiced = 0
    for start in range(0, len(samples), frame):
        window = samples[start : start + frame : _STRIDE]
        if len(window) and (max(window) >= _VOICED_PEAK or min(window) <= -_VOICED_PEAK):
            voiced += 1
    return round(voiced * frame / rate, 3)
