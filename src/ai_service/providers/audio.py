"""Audio clips and transcripts shared by the transcription providers.

`AudioClip.from_bytes` decodes any container/codec FFmpeg knows (through PyAV)
into 16 kHz mono 16-bit PCM, the input format of Whisper-family models, and
keeps the original bytes so providers that accept the file as is (WhisperX,
Voxtral with wav/mp3) get it unchanged. `AudioClip.chunks` splits a clip for
providers with a per-request length limit (Qwen2-Audio: 30 s).

Decoding is CPU-bound: callers in async code run it in a thread.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass, field
from typing import Any

import av

SAMPLE_RATE = 16_000
_SAMPLE_WIDTH = 2  # bytes per sample, s16le
_BYTES_PER_SECOND = SAMPLE_RATE * _SAMPLE_WIDTH

# The `input_audio.format` values OpenAI-compatible servers accept, and the
# codecs of such files their decoders (libsndfile, ffmpeg) surely read: a WAV
# holding GSM or ADPCM (telephony recorders write those) is re-encoded.
_PASSTHROUGH_CODECS = {"wav": ("pcm_",), "mp3": ("mp3",)}


class AudioDecodeError(Exception):
    """The bytes are not audio FFmpeg can decode (or contain no samples)."""


@dataclass(frozen=True)
class AudioClip:
    """Decoded audio: 16 kHz mono s16le PCM plus the original file.

    `source_format` is the demuxer name PyAV detected (`wav`, `mp3`, `ogg`,
    `mov,mp4,m4a,3gp,3g2,mj2`, ...), `source_codec` the decoder's name
    (`pcm_s16le`, `mp3float`, `opus`, ...). `offset` is where the clip starts
    in the original recording (non-zero for chunks).
    """

    pcm: bytes
    source: bytes = field(repr=False)
    source_format: str
    source_codec: str = ""
    offset: float = 0.0

    @classmethod
    def from_bytes(cls, data: bytes) -> AudioClip:
        """Decode `data` and resample it to 16 kHz mono.

        Raises `AudioDecodeError` with a readable reason when the bytes are
        empty, not a media file, have no audio stream, or decode to nothing.
        """
        if not data:
            raise AudioDecodeError("the audio is empty (0 bytes)")
        try:
            with av.open(io.BytesIO(data), mode="r") as container:
                if not container.streams.audio:
                    raise AudioDecodeError("the file has no audio stream")
                stream = container.streams.audio[0]
                resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
                parts: list[bytes] = []
                for frame in container.decode(stream):
                    parts.extend(_packed(out) for out in resampler.resample(frame))
                parts.extend(_packed(out) for out in resampler.resample(None))
                format_name = container.format.name
                codec_name = stream.codec_context.name
        except av.FFmpegError as exc:
            raise AudioDecodeError(f"the audio cannot be decoded: {_ffmpeg_reason(exc)}") from None
        pcm = b"".join(parts)
        if not pcm:
            raise AudioDecodeError("the audio contains no samples")
        return cls(pcm=pcm, source=data, source_format=format_name, source_codec=codec_name)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.pcm) / _BYTES_PER_SECOND

    @property
    def passthrough_format(self) -> str | None:
        """`wav` or `mp3` when the original file can be sent as is, else None."""
        for name in self.source_format.split(","):
            codecs = _PASSTHROUGH_CODECS.get(name)
            if codecs and self.source_codec.startswith(codecs):
                return name
        return None

    def to_wav(self) -> bytes:
        """The decoded audio as a 16 kHz mono 16-bit WAV file."""
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(_SAMPLE_WIDTH)
            out.setframerate(SAMPLE_RATE)
            out.writeframes(self.pcm)
        return buffer.getvalue()

    def chunks(self, max_seconds: float) -> list[AudioClip]:
        """Split into consecutive clips of at most `max_seconds` each.

        Offsets are absolute: a 75 s clip split at 30 s gives clips starting
        at 0, 30 and 60 (the last one 15 s long). The chunks carry no source
        file: they only exist as PCM (send them with `to_wav`).
        """
        if max_seconds <= 0:
            raise ValueError("max_seconds must be positive")
        step = int(max_seconds * SAMPLE_RATE) * _SAMPLE_WIDTH
        return [
            AudioClip(
                pcm=self.pcm[pos : pos + step],
                source=b"",
                source_format="wav",
                source_codec="pcm_s16le",
                offset=self.offset + pos / _BYTES_PER_SECOND,
            )
            for pos in range(0, len(self.pcm), step)
        ]


def _packed(frame: av.AudioFrame) -> bytes:
    # Plane buffers may be padded for alignment: keep only the real samples.
    return bytes(frame.planes[0])[: frame.samples * _SAMPLE_WIDTH]


def _ffmpeg_reason(exc: av.FFmpegError) -> str:
    # str(exc) repeats "[Errno ...]" and the '<none>' file name; the
    # strerror part is what a caller can act on.
    return exc.strerror or str(exc)


@dataclass(frozen=True)
class Transcript:
    """What a provider heard, in the job result's shape.

    `segments` are JSON-ready dicts with `start`, `end`, `text` and, when the
    provider knows them, `speaker` and `words`. `chunks` lists
    `{start, end, duration_ms}` for providers that split the audio.
    `instance` is the (redacted) server that answered, when there are several;
    `engine` the engine the server names (WhisperX's `Asr-Engine` header).
    """

    text: str
    segments: list[dict[str, Any]]
    model: str
    language: str | None = None
    chunks: list[dict[str, Any]] | None = None
    instance: str | None = None
    engine: str | None = None
