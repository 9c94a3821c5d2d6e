"""What decoded audio holds: channel splitting into WAV files, sound detection."""

from __future__ import annotations

import array
import wave
from pathlib import Path

import pytest

from ai_service.providers.audio import AudioClip, AudioDecodeError, AudioTooLong
from ai_service.providers.audio_encode import (
    clip_speech_seconds,
    speech_seconds,
    split_channels,
)
from tests.stubs import sine_wav, stereo_call_wav, tone_wav


def _file(tmp_path: Path, data: bytes, name: str = "source") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_split_channels_decodes_each_channel_on_its_own(tmp_path: Path) -> None:
    audio = _file(tmp_path, tone_wav(3.0, [(0.0, 1.0)], [(1.5, 2.5)]))

    left, right = split_channels(audio, workdir=tmp_path)

    assert left.duration == pytest.approx(3.0)
    assert right.duration == pytest.approx(3.0)
    assert speech_seconds(left.pcm) == pytest.approx(1.0, abs=0.1)
    assert speech_seconds(right.pcm) == pytest.approx(1.0, abs=0.1)
    # the halves really are apart: left has no sound where right speaks
    second = 16000 * 2
    assert speech_seconds(left.pcm[int(1.5 * second) : int(2.5 * second)]) == 0
    assert left.source_path is None
    assert left.source == b""


def test_split_channels_writes_one_16khz_mono_wav_per_channel(tmp_path: Path) -> None:
    audio = _file(tmp_path, stereo_call_wav(12.0, turn_seconds=5.0))

    clips = split_channels(audio, workdir=tmp_path)

    assert [c.wav_path for c in clips] == [
        tmp_path / "source.ch0.16k.wav",
        tmp_path / "source.ch1.16k.wav",
    ]
    for clip in clips:
        with wave.open(str(clip.wav_path)) as wav:
            assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
            assert wav.getnframes() == clip.frames == 12 * 16000
        # The whole channel is sent as the file itself, streamed from disk.
        with clip.open_wav() as upload:
            assert getattr(upload, "name", None) == str(clip.wav_path)
    # agent speaks 0-5 s and 10-12 s, customer 5-10 s
    assert clip_speech_seconds(clips[0]) == pytest.approx(7.0, abs=0.1)
    assert clip_speech_seconds(clips[1]) == pytest.approx(5.0, abs=0.1)


def test_split_channels_stops_past_max_seconds(tmp_path: Path) -> None:
    audio = _file(tmp_path, stereo_call_wav(20.0))

    with pytest.raises(AudioTooLong, match="AUDIO_MAX_SECONDS"):
        split_channels(audio, workdir=tmp_path, max_seconds=5)


def test_split_channels_of_a_mono_file_gives_one_clip(tmp_path: Path) -> None:
    [clip] = split_channels(_file(tmp_path, sine_wav(1.0)), workdir=tmp_path)
    assert clip.duration == pytest.approx(1.0)


def test_split_channels_refuses_what_is_not_audio(tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError, match="cannot be decoded"):
        split_channels(_file(tmp_path, b"plain text, not audio" * 50), workdir=tmp_path)
    with pytest.raises(AudioDecodeError, match="empty"):
        split_channels(_file(tmp_path, b"", "empty"), workdir=tmp_path)


def test_speech_seconds_counts_sound_and_not_silence() -> None:
    tone = AudioClip.from_bytes(sine_wav(2.0))
    silence = bytes(16000 * 2 * 2)
    faint = array.array("h", [200, -200] * 16000).tobytes()  # line noise, about -44 dBFS

    assert speech_seconds(tone.pcm) == pytest.approx(2.0, abs=0.05)
    assert speech_seconds(silence) == 0
    assert speech_seconds(faint) == 0
    assert speech_seconds(b"") == 0


def test_clip_speech_seconds_adds_up_over_pieces_of_a_long_clip() -> None:
    # 130 s: pieces of 60 s; the sound at 59-63 s straddles the first boundary.
    tone = tone_wav(130.0, [(0.0, 2.0), (59.0, 63.0), (125.0, 128.0)], rate=4000)
    clip = AudioClip.from_bytes(tone)

    assert clip_speech_seconds(clip) == pytest.approx(9.0, abs=0.2)
    assert clip_speech_seconds(clip) == pytest.approx(speech_seconds(clip.pcm), abs=0.001)
