"""Audio the providers receive, made from the decoded PCM, and what the PCM holds.

Servers that pipe the caller's file into ffmpeg cannot seek it: an M4A whose
index sits at the end yields an empty transcript, a WAV with its `data` chunk
before `fmt ` a 500 (see `shared/AI-SERVERS.md`). The worker has decoded the
audio already, so it sends a normalised file instead: `WavStream` serves the
16 kHz mono 16-bit PCM of an `AudioClip` as a WAV file without copying it.

`split_channels` decodes each channel of a recording on its own (call
recordings keep agent and customer on separate channels); `speech_seconds`
tells whether a clip carries sound at all, so an empty transcript of a clip
that does can be flagged.
"""

from __future__ import annotations

import io
import struct

import av

from ai_service.providers.audio import SAMPLE_RATE, AudioClip, AudioDecodeError

_SAMPLE_WIDTH = 2  # s16le
BytesLike = bytes | bytearray | memoryview
# Frames of 50 ms; a frame whose peak reaches _VOICED_PEAK (about -30 dBFS)
# counts as sound. Every _STRIDE-th sample is looked at (2 kHz at 16 kHz):
# enough to see speech energy, cheap enough for hours of audio in pure Python.
_FRAME_SECONDS = 0.05
_VOICED_PEAK = 1000
_STRIDE = 8


def wav_header(data_bytes: int, *, rate: int = SAMPLE_RATE, channels: int = 1) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV file holding `data_bytes` of samples."""
    block = channels * _SAMPLE_WIDTH
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        channels,
        rate,
        rate * block,
        block,
        8 * _SAMPLE_WIDTH,
        b"data",
        data_bytes,
    )


class WavStream(io.RawIOBase):
    """A read-only, seekable WAV file over 16 kHz mono s16le PCM, without a copy.

    httpx sends it in 64 KiB reads and seeks back to the start for a retry on
    the next instance; the PCM is only referenced.
    """

    def __init__(self, pcm: BytesLike, *, rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        self._pcm = memoryview(pcm).cast("B")
        self._header = wav_header(len(self._pcm), rate=rate)
        self._size = len(self._header) + len(self._pcm)
        self._pos = 0

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Always seekable (httpx measures the length by seeking to the end)."""
        return True

    def tell(self) -> int:
        """The current position."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to `offset` from the start, the current position or the end."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all the rest when negative) from the current position."""
        if size is None or size < 0:
            size = self._size - self._pos
        end = min(self._size, self._pos + size)
        header_len = len(self._header)
        parts: list[bytes] = []
        if self._pos < header_len:
            parts.append(self._header[self._pos : min(end, header_len)])
        if end > header_len:
            start = max(self._pos, header_len) - header_len
            parts.append(bytes(self._pcm[start : end - header_len]))
        self._pos = max(self._pos, end)
        return b"".join(parts)

    def __len__(self) -> int:
        return self._size


def split_channels(data: bytes) -> list[AudioClip]:
    """Decode every channel of `data` on its own, each to 16 kHz mono s16le.

    Raises `AudioDecodeError` like `AudioClip.from_bytes`. A mono file gives
    one clip. The clips carry no source file (send them with `WavStream`).
    """
    if not data:
        raise AudioDecodeError("the audio is empty (0 bytes)")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file has no audio stream")
            stream = container.streams.audio[0]
            count = stream.codec_context.channels or 1
            layout = stream.codec_context.layout.name if count > 1 else "mono"
            # Planar output: plane n holds channel n.
            resampler = av.AudioResampler(format="s16p", layout=layout, rate=SAMPLE_RATE)
            channels: list[bytearray] = [bytearray() for _ in range(count)]
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    _append_planes(out, channels)
            for out in resampler.resample(None):
                _append_planes(out, channels)
    except av.FFmpegError as exc:
        reason = exc.strerror or str(exc)
        raise AudioDecodeError(f"the audio cannot be decoded: {reason}") from None
    if not channels[0]:
        raise AudioDecodeError("the audio contains no samples")
    return [
        AudioClip(pcm=bytes(pcm), source=b"", source_format="wav", source_codec="pcm_s16le")
        for pcm in channels
    ]


def _append_planes(frame: av.AudioFrame, channels: list[bytearray]) -> None:
    # Plane buffers may be padded for alignment: keep only the real samples.
    length = frame.samples * _SAMPLE_WIDTH
    for index, plane in enumerate(frame.planes[: len(channels)]):
        channels[index] += bytes(plane)[:length]


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
