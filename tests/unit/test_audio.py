"""AudioClip: decoding with PyAV, resampling, WAV encoding, chunking."""

from __future__ import annotations

import asyncio
import gc
import io
import threading
import uuid
import wave
from pathlib import Path

import av
import pytest

from ai_service.providers.audio import (
    SAMPLE_RATE,
    AudioClip,
    AudioDecodeError,
    AudioTooLong,
    DecodeStopped,
    decode_to_wav,
)
from ai_service.worker import transcription
from tests.helpers import make_settings
from tests.stubs import sine_wav, stereo_call_wav, transcode


def test_decodes_and_resamples_stereo_44k_to_16k_mono() -> None:
    data = sine_wav(2.0, rate=44100, channels=2)

    clip = AudioClip.from_bytes(data)

    assert clip.duration == pytest.approx(2.0, abs=0.01)
    assert len(clip.pcm) == pytest.approx(2 * SAMPLE_RATE * 2, abs=64)
    assert clip.source == data
    assert clip.source_format == "wav"
    assert clip.source_codec == "pcm_s16le"
    assert clip.passthrough_format == "wav"


def test_to_wav_is_16k_mono_16bit() -> None:
    clip = AudioClip.from_bytes(sine_wav(1.5))

    with wave.open(io.BytesIO(clip.to_wav())) as wav:
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == SAMPLE_RATE
        assert wav.getnframes() / SAMPLE_RATE == pytest.approx(1.5, abs=0.01)


def test_chunks_of_75_seconds_start_at_0_30_60() -> None:
    clip = AudioClip.from_bytes(sine_wav(75.0))

    chunks = clip.chunks(30)

    assert [round(c.offset, 3) for c in chunks] == [0.0, 30.0, 60.0]
    assert [round(c.duration, 3) for c in chunks] == [30.0, 30.0, 15.0]
    assert b"".join(c.pcm for c in chunks) == clip.pcm
    # a chunk is a standalone clip: it encodes to its own WAV
    with wave.open(io.BytesIO(chunks[2].to_wav())) as wav:
        assert wav.getnframes() == 15 * SAMPLE_RATE


def test_short_clip_is_one_chunk() -> None:
    clip = AudioClip.from_bytes(sine_wav(4.0))

    chunks = clip.chunks(30)

    assert len(chunks) == 1
    assert chunks[0].offset == 0.0
    assert chunks[0].duration == pytest.approx(4.0, abs=0.01)


def test_chunks_reject_non_positive_length() -> None:
    clip = AudioClip.from_bytes(sine_wav(1.0))

    with pytest.raises(ValueError, match="positive"):
        clip.chunks(0)


def test_mp3_is_decoded_and_passed_through_as_mp3() -> None:
    mp3 = transcode(sine_wav(3.0), "mp3", "libmp3lame")

    clip = AudioClip.from_bytes(mp3)

    assert clip.source_format == "mp3"
    assert clip.source_codec.startswith("mp3")
    assert clip.passthrough_format == "mp3"
    assert clip.duration == pytest.approx(3.0, abs=0.1)


def test_other_containers_are_not_passed_through() -> None:
    clip = AudioClip.from_bytes(transcode(sine_wav(1.0), "ogg", "libopus", rate=48000))

    assert clip.source_format == "ogg"
    assert clip.passthrough_format is None
    assert clip.duration == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is plain text, not audio at all" * 20, "cannot be decoded"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "cannot be decoded|no samples|no audio"),
    ],
)
def test_undecodable_bytes_raise_a_clear_error(data: bytes, reason: str) -> None:
    with pytest.raises(AudioDecodeError, match=reason):
        AudioClip.from_bytes(data)


def test_wav_with_a_compressed_codec_is_not_passed_through() -> None:
    # Telephony recorders write ADPCM/GSM WAVs that not every server decodes.
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="wav") as out:
        stream = out.add_stream("adpcm_ima_wav", rate=8000, layout="mono")
        frame = av.AudioFrame(format="s16p", layout="mono", samples=8000)
        frame.planes[0].update(b"\x01\x00" * 8000)
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)

    clip = AudioClip.from_bytes(buffer.getvalue())

    assert clip.source_format == "wav"
    assert clip.source_codec == "adpcm_ima_wav"
    assert clip.passthrough_format is None
    assert clip.duration == pytest.approx(1.0, abs=0.05)


# -- files on disk, bounded length (AUDIO_MAX_SECONDS) ---------------------------------


def test_from_file_decodes_into_a_wav_file_in_the_workdir(tmp_path: Path) -> None:
    source = tmp_path / "call.wav"
    source.write_bytes(stereo_call_wav(12.0))

    clip = AudioClip.from_file(source, workdir=tmp_path, max_seconds=60)

    assert clip.duration == pytest.approx(12.0, abs=0.01)
    assert clip.wav_path.parent == tmp_path
    with wave.open(str(clip.wav_path)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (1, 16000, 2)
        assert wav.getnframes() == clip.frames
    # The whole clip is sent from the file itself; the original stays as it was.
    with clip.open_wav() as whole:
        assert isinstance(whole, io.BufferedReader)
        assert whole.read() == clip.wav_path.read_bytes()
    assert clip.source == source.read_bytes()
    # Chunks read their samples from the same file.
    chunks = clip.chunks(5)
    assert [c.start for c in chunks] == [0, 80_000, 160_000]
    assert b"".join(c.pcm for c in chunks) == clip.pcm
    with wave.open(chunks[2].open_wav()) as wav:
        assert wav.getnframes() == pytest.approx(2 * SAMPLE_RATE, abs=2)


def test_audio_declared_longer_than_the_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    source = tmp_path / "long.wav"
    source.write_bytes(sine_wav(75.0))

    with pytest.raises(AudioTooLong, match=r"lasts 75 s, longer than AUDIO_MAX_SECONDS \(10 s\)"):
        AudioClip.from_file(source, workdir=tmp_path, max_seconds=10)

    # Nothing was decoded: the output file was not even created.
    assert not (tmp_path / "long.16k.wav").exists()


def test_decoding_stops_as_soon_as_the_output_passes_the_limit(tmp_path: Path) -> None:
    # Declared 10 s: within the margin for estimated headers, so decoding starts.
    source = tmp_path / "edge.wav"
    source.write_bytes(sine_wav(10.0))

    with pytest.raises(AudioTooLong, match=r"is longer than AUDIO_MAX_SECONDS \(9.5 s\)"):
        AudioClip.from_file(source, workdir=tmp_path, max_seconds=9.5)

    written = (tmp_path / "edge.16k.wav").stat().st_size
    assert written < 9.5 * SAMPLE_RATE * 2  # stopped there, not at the end


def test_a_clip_without_workdir_removes_its_files_when_dropped() -> None:
    clip = AudioClip.from_bytes(sine_wav(1.0))
    folder = clip.wav_path.parent
    chunks = clip.chunks(0.5)
    del clip
    assert folder.exists()  # the chunks still read from it
    del chunks
    gc.collect()
    assert not folder.exists()


def test_a_decode_asked_to_stop_stops_before_the_next_frame(tmp_path: Path) -> None:
    source = tmp_path / "call.wav"
    source.write_bytes(sine_wav(60.0))
    stop = threading.Event()
    stop.set()
    with pytest.raises(DecodeStopped):
        decode_to_wav(source, tmp_path, stop=stop)


async def test_a_cancelled_job_waits_for_its_decoding_thread_to_stop(tmp_path: Path) -> None:
    """The job's files are removed right after a cancellation: the thread decoding into
    them must have stopped by then (and no decoding goes on beyond the slots)."""
    source = tmp_path / "source"
    source.write_bytes(stereo_call_wav(1800.0))
    settings = make_settings(AUDIO_MAX_SECONDS="4h")
    request = transcription.parse_input({"audio_id": str(uuid.uuid4())}, settings)
    task = asyncio.ensure_future(
        transcription._decode_in_thread(source, request, tmp_path, settings)
    )
    await asyncio.sleep(0.2)  # well into the 30 minutes
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    output = tmp_path / "source.16k.wav"
    size = output.stat().st_size
    await asyncio.sleep(0.3)
    assert output.stat().st_size == size  # nothing writes any more
    assert size < 1800 * SAMPLE_RATE * 2  # it was stopped, not finished
