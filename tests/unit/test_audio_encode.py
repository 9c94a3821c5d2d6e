"""Normalised audio for the providers: the WAV stream, channel splitting, sound detection."""

from __future__ import annotations

import array
import io
import wave

import httpx
import pytest

from ai_service.providers.audio import AudioClip, AudioDecodeError
from ai_service.providers.audio_encode import (
    WavStream,
    speech_seconds,
    split_channels,
    wav_header,
)
from tests.stubs import sine_wav, tone_wav


def test_wav_stream_is_a_valid_16khz_mono_wav_of_the_pcm() -> None:
    pcm = bytes(range(256)) * 100
    stream = WavStream(pcm)

    data = stream.read()

    assert len(data) == len(stream) == 44 + len(pcm)
    assert data[:44] == wav_header(len(pcm))
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        assert wav.readframes(wav.getnframes()) == pcm


def test_wav_stream_reads_in_pieces_and_seeks_back_for_a_retry() -> None:
    pcm = b"\x01\x02" * 50_000
    stream = WavStream(pcm)
    whole = stream.read()
    stream.seek(0)

    pieces = []
    while piece := stream.read(4096):
        pieces.append(piece)

    assert b"".join(pieces) == whole
    assert stream.tell() == len(whole)
    assert stream.seek(0, io.SEEK_END) == len(whole)
    stream.seek(10)
    assert stream.read(40) == whole[10:50]  # across the end of the header


def test_httpx_sends_the_whole_stream_as_a_multipart_file() -> None:
    pcm = b"\x00\x10" * 100_000
    request = httpx.Request(
        "POST",
        "http://127.0.0.1/asr",
        files={"audio_file": ("audio.wav", WavStream(pcm), "audio/wav")},
    )
    body = request.read()
    assert int(request.headers["content-length"]) == len(body)
    assert wav_header(len(pcm)) + pcm in body


def test_split_channels_decodes_each_channel_on_its_own() -> None:
    audio = tone_wav(3.0, [(0.0, 1.0)], [(1.5, 2.5)])

    left, right = split_channels(audio)

    assert left.duration == pytest.approx(3.0)
    assert right.duration == pytest.approx(3.0)
    assert speech_seconds(left.pcm) == pytest.approx(1.0, abs=0.1)
    assert speech_seconds(right.pcm) == pytest.approx(1.0, abs=0.1)
    # the halves really are apart: left has no sound where right speaks
    second = 16000 * 2
    assert speech_seconds(left.pcm[int(1.5 * second) : int(2.5 * second)]) == 0
    assert left.source == b""


def test_split_channels_of_a_mono_file_gives_one_clip() -> None:
    [clip] = split_channels(sine_wav(1.0))
    assert clip.duration == pytest.approx(1.0)


def test_split_channels_refuses_what_is_not_audio() -> None:
    with pytest.raises(AudioDecodeError, match="cannot be decoded"):
        split_channels(b"plain text, not audio" * 50)
    with pytest.raises(AudioDecodeError, match="empty"):
        split_channels(b"")


def test_speech_seconds_counts_sound_and_not_silence() -> None:
    tone = AudioClip.from_bytes(sine_wav(2.0))
    silence = bytes(16000 * 2 * 2)
    faint = array.array("h", [200, -200] * 16000).tobytes()  # line noise, about -44 dBFS

    assert speech_seconds(tone.pcm) == pytest.approx(2.0, abs=0.05)
    assert speech_seconds(silence) == 0
    assert speech_seconds(faint) == 0
    assert speech_seconds(b"") == 0
