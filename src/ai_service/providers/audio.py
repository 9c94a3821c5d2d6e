"""Audio clips and transcripts shared by the transcription providers.

`AudioClip.from_file` decodes any container/codec FFmpeg knows (through PyAV)
into 16 kHz mono 16-bit PCM, the input format of Whisper-family models: WhisperX
gets that WAV (servers that pipe uploads into ffmpeg cannot seek the caller's
file), Voxtral the original when it is wav/mp3 it surely reads.
`decode_to_wav` can also write one WAV per channel (`audio_encode.split_channels`).
`AudioClip.chunks` splits a clip for providers with a per-request length limit
(Qwen2-Audio: 30 s).

Memory stays small whatever the length of the recording: the original is a
file (the worker streams downloads and stored audio to disk), decoding runs
frame by frame into a WAV file beside it, and providers send the file
(`open_wav`) or short chunks. `max_seconds` (`AUDIO_MAX_SECONDS`)
bounds the decoded length: a file whose header declares more is refused before
anything is decoded, and decoding stops as soon as the output passes it
(`AudioTooLong`).

Decoding is CPU-bound: callers in async code run it in a thread.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import threading
import wave
import weakref
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import av

SAMPLE_RATE = 16_000
_SAMPLE_WIDTH = 2  # bytes per sample, s16le
_BYTES_PER_SECOND = SAMPLE_RATE * _SAMPLE_WIDTH
# Decoded PCM is written to the WAV file in pieces of about this size (2 s).
_FLUSH_BYTES = 2 * _BYTES_PER_SECOND
# A declared length past AUDIO_MAX_SECONDS by more than this factor (plus 1 s) is
# refused from the header alone.
_DECLARED_MARGIN = 1.05

# The `input_audio.format` values OpenAI-compatible servers accept, and the
# codecs of such files their decoders (libsndfile, ffmpeg) surely read: a WAV
# holding GSM or ADPCM (telephony recorders write those) is re-encoded.
_PASSTHROUGH_CODECS = {"wav": ("pcm_",), "mp3": ("mp3",)}


class AudioDecodeError(Exception):
    """The bytes are not audio FFmpeg can decode (or contain no samples)."""


class AudioTooLong(AudioDecodeError):
    """The audio lasts longer than `AUDIO_MAX_SECONDS` (declared, or found decoding)."""

    def __init__(self, max_seconds: float, declared: float | None = None) -> None:
        lasts = f"lasts {declared:.0f} s, " if declared is not None else "is "
        super().__init__(f"the audio {lasts}longer than AUDIO_MAX_SECONDS ({max_seconds:g} s)")
        self.max_seconds = max_seconds


class DecodeStopped(AudioDecodeError):
    """The decoding was asked to stop (`decode_to_wav(stop=...)`)."""


class _Scratch:
    """A temporary directory, removed once nothing refers to this object any more.

    Clips made without a `workdir` hold one (and their chunks share it), so the
    decoded file lives exactly as long as some clip may read it.
    """

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="ai-service-audio-"))
        weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)


@dataclass(frozen=True)
class AudioClip:
    """Decoded audio: 16 kHz mono s16le PCM in a WAV file, plus the original file.

    `wav_path` holds the decoded audio; the clip is its samples `start` to
    `start + frames` (a chunk shares its parent's file). `source_path` is the
    original file (None for chunks). `source_format` is the demuxer name PyAV
    detected (`wav`, `mp3`, `ogg`, `mov,mp4,m4a,3gp,3g2,mj2`, ...),
    `source_codec` the decoder's name (`pcm_s16le`, `mp3float`, `opus`, ...).
    `offset` is where the clip starts in the original recording (non-zero for
    chunks). The files live as long as their directory: the caller's `workdir`,
    or a temporary one the clip holds (`from_bytes`).
    """

    wav_path: Path
    frames: int
    source_path: Path | None
    source_format: str
    source_codec: str = ""
    offset: float = 0.0
    start: int = 0
    _keep: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_file(
        cls,
        path: Path,
        *,
        workdir: Path | None = None,
        max_seconds: float | None = None,
        stop: threading.Event | None = None,
    ) -> AudioClip:
        """Decode the file at `path` into a 16 kHz mono WAV in `workdir`.

        Without `workdir` the WAV goes to a temporary directory that lives as
        long as the clip. Raises `AudioDecodeError` with a readable reason when
        the file is empty, not a media file, has no audio stream, or decodes to
        nothing; `AudioTooLong` past `max_seconds`.
        """
        keep = None
        if workdir is None:
            keep = _Scratch()
            workdir = keep.path
        [target], frames, format_name, codec_name = decode_to_wav(
            path, workdir, max_seconds=max_seconds, stop=stop
        )
        return cls(
            wav_path=target,
            frames=frames,
            source_path=path,
            source_format=format_name,
            source_codec=codec_name,
            _keep=keep,
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, max_seconds: float | None = None) -> AudioClip:
        """Decode `data` (written to a temporary file the clip holds); see `from_file`."""
        if not data:
            raise AudioDecodeError("the audio is empty (0 bytes)")
        keep = _Scratch()
        source = keep.path / "source"
        source.write_bytes(data)
        clip = cls.from_file(source, workdir=keep.path, max_seconds=max_seconds)
        return replace(clip, _keep=keep)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / SAMPLE_RATE

    @property
    def pcm(self) -> bytes:
        """The clip's samples (s16le), read from disk: for chunks and short clips."""
        with wave.open(str(self.wav_path), "rb") as wav:
            wav.setpos(self.start)
            return wav.readframes(self.frames)

    @property
    def source(self) -> bytes:
        """The original file's bytes (b"" for chunks), read from disk."""
        return self.source_path.read_bytes() if self.source_path is not None else b""

    def open_wav(self) -> BinaryIO:
        """The clip as a 16 kHz mono 16-bit WAV file, opened for reading.

        The whole clip is the decoded file itself (streamed from disk); a chunk
        is built in memory (chunks are short).
        """
        if self.start == 0 and self.frames == _frames_in(self.wav_path):
            return self.wav_path.open("rb")
        return io.BytesIO(self.to_wav())

    @property
    def passthrough_format(self) -> str | None:
        """`wav` or `mp3` when the original file can be sent as is, else None."""
        for name in self.source_format.split(","):
            codecs = _PASSTHROUGH_CODECS.get(name)
            if codecs and self.source_codec.startswith(codecs):
                return name
        return None

    def to_wav(self) -> bytes:
        """The decoded audio as a 16 kHz mono 16-bit WAV file, in memory."""
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
        file: they only exist as PCM (send them with `to_wav`); they read
        their samples from the parent's WAV file when asked.
        """
        if max_seconds <= 0:
            raise ValueError("max_seconds must be positive")
        step = int(max_seconds * SAMPLE_RATE)
        return [
            AudioClip(
                wav_path=self.wav_path,
                frames=min(step, self.frames - pos),
                source_path=None,
                source_format="wav",
                source_codec="pcm_s16le",
                offset=self.offset + pos / SAMPLE_RATE,
                start=self.start + pos,
                _keep=self._keep,
            )
            for pos in range(0, self.frames, step)
        ]


def _frames_in(path: Path) -> int:
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes()


def decode_to_wav(
    source: Path,
    workdir: Path,
    *,
    max_seconds: float | None = None,
    split: bool = False,
    stop: threading.Event | None = None,
) -> tuple[list[Path], int, str, str]:
    """Decode `source` frame by frame into 16 kHz mono s16le WAV files in `workdir`.

    One file with the channels mixed down (`{stem}.16k.wav`), or with `split`
    one per channel (`{stem}.ch{n}.16k.wav`, in channel order). Returns (the
    files, samples in each, demuxer name, codec name). Only one frame's samples
    and at most `_FLUSH_BYTES` of output per file are in memory at a time.
    Raises `AudioDecodeError` / `AudioTooLong` like `AudioClip.from_file`, and
    `DecodeStopped` as soon as `stop` is set (the job ended: its files are about
    to be removed).
    """
    if source.stat().st_size == 0:
        raise AudioDecodeError("the audio is empty (0 bytes)")
    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    frames = 0
    try:
        with av.open(str(source), mode="r") as container, ExitStack() as files:
            if not container.streams.audio:
                raise AudioDecodeError("the file has no audio stream")
            stream = container.streams.audio[0]
            declared = _declared_seconds(container, stream)
            # Some headers only estimate (ADTS, MP3 without a Xing header): a margin
            # keeps a file just under the limit from being refused; one just over
            # is then stopped while decoding, below.
            if (
                max_seconds is not None
                and declared is not None
                and declared > max_seconds * _DECLARED_MARGIN + 1
            ):
                raise AudioTooLong(max_seconds, declared)  # refused before decoding
            count = (stream.codec_context.channels or 1) if split else 1
            if count > 1:
                # Planar output: plane n holds channel n.
                layout = stream.codec_context.layout.name
                resampler = av.AudioResampler(format="s16p", layout=layout, rate=SAMPLE_RATE)
                targets = [workdir / f"{source.stem}.ch{n}.16k.wav" for n in range(count)]
            else:
                resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
                targets = [workdir / f"{source.stem}.16k.wav"]
            outs = [files.enter_context(wave.open(str(target), "wb")) for target in targets]
            for out in outs:
                out.setnchannels(1)
                out.setsampwidth(_SAMPLE_WIDTH)
                out.setframerate(SAMPLE_RATE)
            pending = [bytearray() for _ in targets]
            for frame in _frames(container, stream):
                if stop is not None and stop.is_set():
                    raise DecodeStopped("the decoding was stopped: the job ended")
                for resampled in resampler.resample(frame):
                    for index, plane in enumerate(_planes(resampled, count)):
                        pending[index] += plane
                    frames += resampled.samples
                if limit is not None and frames > limit:
                    raise AudioTooLong(max_seconds or 0.0)  # stops here, not at the end
                if len(pending[0]) >= _FLUSH_BYTES:
                    for out, buffered in zip(outs, pending, strict=True):
                        out.writeframesraw(buffered)
                        buffered.clear()
            for out, buffered in zip(outs, pending, strict=True):
                out.writeframesraw(buffered)
            format_name = container.format.name
            codec_name = stream.codec_context.name
    except av.FFmpegError as exc:
        raise AudioDecodeError(f"the audio cannot be decoded: {_ffmpeg_reason(exc)}") from None
    if frames == 0:
        raise AudioDecodeError("the audio contains no samples")
    return targets, frames, format_name, codec_name


def _frames(container: Any, stream: Any) -> Any:
    """The stream's decoded frames, then None (which flushes the resampler)."""
    yield from container.decode(stream)
    yield None


def _declared_seconds(container: Any, stream: Any) -> float | None:
    """The length the file's headers declare (stream's, else container's), if any."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / av.time_base
    return None


def _planes(frame: av.AudioFrame, count: int) -> list[bytes]:
    """The frame's samples, one bytes per channel (planar) or one for packed mono."""
    # Plane buffers may be padded for alignment: keep only the real samples.
    length = frame.samples * _SAMPLE_WIDTH
    return [bytes(plane)[:length] for plane in frame.planes[:count]]


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
