"""The `transcription` handler: audio in, segments out, providers compared.

Input (`job.input`):

    audio_url | audio_id | audio_base64 (+ audio_format)   exactly one of them
    language, prompt, diarize, min_speakers, max_speakers   optional
    vad_filter, word_timestamps                 optional (WhisperX)
    min_confidence, drop_no_speech              optional segment filters
    channels ("mix" | "split"), channel_speakers   optional
    providers                                   optional order override

Providers run in the order of `input.providers`, else `TRANSCRIPTION_PROVIDERS`.
Voxtral is asked through chat with `input_audio` (`providers.audio_llm`), or
with `VOXTRAL_API=transcriptions` through `POST /v1/audio/transcriptions`
(`providers.audio_transcriptions`); the attempt has the same shape either way.
`TRANSCRIPTION_MODE=compare` runs all of them (an A/B comparison);
`fallback` stops at the first success. The result's `segments`, `text`,
`language`, `provider`, `model`, `warnings` come from the first provider that
succeeded (its attempt is `selected` and does not repeat them); `attempts` has
one entry per provider (`ok`, `error` or `skipped`), a WhisperX attempt lists
every instance it tried in `instances`, and every other successful attempt its
`wer` against the selected one (`compare_attempts`). WhisperX instances are chosen by load
(`providers.whisperx.InstancePicker`, one per process): fewest requests in
flight from this worker, open breakers skipped, ties in turn.

`channels: "split"` decodes each channel on its own and transcribes it with
each provider; segments are labelled with the channel's speaker and merged by
time.

Failures: bad input or audio is `invalid_input` (never retried); when no
provider succeeds the job fails with the first provider error's category and
message, and every attempt in `details["attempts"]`.

`TRANSCRIPTION_TIMEOUT` bounds each provider attempt (all its requests
together); `AUDIO_DOWNLOAD_TIMEOUT` and `AUDIO_MAX_BYTES` bound the download,
`AUDIO_MAX_SECONDS` the decoded length.

Memory: the audio goes to a per-job temporary directory (downloads and stored
audio are streamed there), is decoded frame by frame into a WAV file beside
it, and providers send files; the directory is removed when the job ends.
`audio_url` may only lead to public addresses, or to what `AUDIO_URL_ALLOW`
names (`ai_service.outbound`: checked at every connect and redirect).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit
from uuid import UUID

import httpx

from ai_service import audio_input, errors, outbound, wer
from ai_service.config import TRANSCRIPTION_PROVIDER_NAMES, Settings
from ai_service.errors import JobFailure
from ai_service.jobs import ErrorCategory, Job
from ai_service.languages import normalise_language
from ai_service.providers.audio import AudioClip, AudioDecodeError, Transcript
from ai_service.providers.audio_encode import clip_speech_seconds, split_channels
from ai_service.providers.audio_llm import AudioChatClient
from ai_service.providers.audio_transcriptions import AudioTranscriptionsClient
from ai_service.providers.gate import settle
from ai_service.providers.whisperx import InstancePicker, WhisperXClient
from ai_service.redact import redact_text, redact_url, settings_secrets, url_secrets
from ai_service.worker import transcript_shape as shape
from ai_service.worker.breaker import whisperx_keys
from ai_service.worker.handler import HandlerContext, HandlerSpec
from ai_service.worker.registry import TRANSCRIPTION_TASK_TYPES

TASK_TYPES = TRANSCRIPTION_TASK_TYPES
QWEN_MAX_CHUNK_SECONDS = 30.0
# Audio LLM providers and the longest audio each takes per request (None: any).
AUDIO_LLM_CHUNK_SECONDS: dict[str, float | None] = {
    "qwen2-audio": QWEN_MAX_CHUNK_SECONDS,
    "voxtral-small": None,
}
FALLBACK_SKIP_REASON = "fallback mode: an earlier provider succeeded"
CHANNEL_MODES = ("mix", "split")
MAX_SPEAKER_NAME = 64

_AUDIO_FORMAT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,15}$")

# The WhisperX instance picker per URL list (`providers.whisperx.InstancePicker`):
# fewest requests in flight from this process, open breakers skipped, ties in turn.
# One per process: every job of this worker shares it, so a second job goes to an
# idle instance, not to the one transcribing the first (which answers nothing
# meanwhile). Other worker processes' load is not seen.
_whisperx_pickers: dict[tuple[str, ...], InstancePicker] = {}


@dataclass(frozen=True)
class TranscriptionInput:
    """A validated transcription job input.

    `language` is a Whisper language code (`languages.normalise_language`);
    `vad_filter` is resolved (`WHISPERX_VAD_FILTER` when the job does not say);
    `no_speech_threshold` is `drop_no_speech` as a number (None: keep all).
    """

    audio_url: str | None
    audio_base64: str | None
    audio_format: str | None
    audio_id: UUID | None
    language: str | None
    prompt: str | None
    diarize: bool | None
    min_speakers: int | None
    max_speakers: int | None
    providers: tuple[str, ...]
    vad_filter: bool = True
    word_timestamps: bool | None = None
    min_confidence: float | None = None
    no_speech_threshold: float | None = None
    channels: str = "mix"
    channel_speakers: tuple[str, ...] | None = None

    @property
    def split(self) -> bool:
        """Whether each channel is transcribed on its own."""
        return self.channels == "split"


@dataclass(frozen=True)
class Channel:
    """Audio to transcribe: the whole (mixed) clip, or one channel of a split one."""

    clip: AudioClip
    speaker: str | None = None  # the channel's label; None for the mixed clip


def _invalid(message: str) -> JobFailure:
    return JobFailure(ErrorCategory.INVALID_INPUT, message, retryable=False)


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f"input.{name} must be a string")
    return value.strip() or None


def _optional_bool(data: dict[str, Any], name: str) -> bool | None:
    value = data.get(name)
    if value is not None and not isinstance(value, bool):
        raise _invalid(f"input.{name} must be true or false")
    return value


def _optional_speakers(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(f"input.{name} must be a positive integer")
    return value


def _probability(value: Any, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= 1
    ):
        raise _invalid(f"input.{name} must be a number between 0 and 1")
    return float(value)


def _language(data: dict[str, Any]) -> str | None:
    value = _optional_str(data, "language")
    if value is None:
        return None
    code = normalise_language(value)
    if code is None:
        shown = value if len(value) <= 32 else value[:29] + "..."
        raise _invalid(
            f"input.language: {shown!r} is not a language Whisper knows; give an ISO 639-1 "
            "code such as en, ru or de (or the English name)"
        )
    return code


def _no_speech_threshold(data: dict[str, Any]) -> float | None:
    value = data.get("drop_no_speech")
    if value is None or value is False:
        return None
    if value is True:
        return shape.DEFAULT_NO_SPEECH_THRESHOLD
    threshold = _probability(value, "drop_no_speech")
    if threshold == 0:
        raise _invalid("input.drop_no_speech must be true, false or a number in (0, 1]")
    return threshold


def _channel_speakers(data: dict[str, Any], channels: str) -> tuple[str, ...] | None:
    value = data.get("channel_speakers")
    if value is None:
        return None
    if channels != "split":
        raise _invalid('input.channel_speakers needs input.channels "split"')
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v.strip() for v in value)
    ):
        raise _invalid("input.channel_speakers must be a non-empty list of names")
    names = tuple(v.strip() for v in value)
    if any(len(n) > MAX_SPEAKER_NAME for n in names):
        raise _invalid(f"input.channel_speakers: names are at most {MAX_SPEAKER_NAME} characters")
    if len(set(names)) != len(names):
        raise _invalid("input.channel_speakers: the names must differ")
    return names


def parse_input(data: Any, settings: Settings) -> TranscriptionInput:
    """Validate a job's input; raises `JobFailure` (`invalid_input`) naming the field."""
    if not isinstance(data, dict):
        raise _invalid("input must be a JSON object")
    audio_url = _optional_str(data, "audio_url")
    audio_base64 = _optional_str(data, "audio_base64")
    audio_id = _optional_audio_id(data)
    values = (audio_url, audio_base64, audio_id)
    given = [f"input.{n}" for n, v in zip(audio_input.SOURCES, values, strict=True) if v]
    if len(given) > 1:
        raise _invalid(f"give only one audio source, not both {given[0]} and {given[1]}")
    if not given:
        raise _invalid("input.audio_url, input.audio_id or input.audio_base64 is required")
    if audio_url is not None:
        parts = urlsplit(audio_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _invalid("input.audio_url must be an http(s) URL")
    audio_format = _optional_str(data, "audio_format")
    if audio_format is not None and not _AUDIO_FORMAT.match(audio_format):
        raise _invalid("input.audio_format must be a short format name such as wav or mp3")
    diarize = _optional_bool(data, "diarize")
    min_speakers = _optional_speakers(data, "min_speakers")
    max_speakers = _optional_speakers(data, "max_speakers")
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise _invalid("input.min_speakers must not exceed input.max_speakers")
    vad_filter = _optional_bool(data, "vad_filter")
    min_confidence = data.get("min_confidence")
    channels = data.get("channels", "mix")
    if channels not in CHANNEL_MODES:
        raise _invalid('input.channels must be "mix" or "split"')
    return TranscriptionInput(
        audio_url=audio_url,
        audio_base64=audio_base64,
        audio_format=audio_format.lower() if audio_format else None,
        audio_id=audio_id,
        language=_language(data),
        prompt=_optional_str(data, "prompt"),
        diarize=diarize,
        min_speakers=min_speakers,
        max_speakers=max_speakers,
        providers=_providers(data.get("providers"), settings),
        vad_filter=settings.whisperx_vad_filter if vad_filter is None else vad_filter,
        word_timestamps=_optional_bool(data, "word_timestamps"),
        min_confidence=(
            None if min_confidence is None else _probability(min_confidence, "min_confidence")
        ),
        no_speech_threshold=_no_speech_threshold(data),
        channels=channels,
        channel_speakers=_channel_speakers(data, channels),
    )


def _optional_audio_id(data: dict[str, Any]) -> UUID | None:
    if data.get("audio_id") is None:
        return None
    try:
        return audio_input.parse_audio_id(data["audio_id"])
    except audio_input.BadAudioInput as exc:
        raise _invalid(f"input.audio_id {exc}") from None


def _providers(value: Any, settings: Settings) -> tuple[str, ...]:
    if value is None:
        return settings.transcription_providers
    known = ", ".join(TRANSCRIPTION_PROVIDER_NAMES)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _invalid(f"input.providers must be a non-empty list of provider names ({known})")
    unknown = [v for v in value if v not in TRANSCRIPTION_PROVIDER_NAMES]
    if unknown:
        raise _invalid(f"input.providers: unknown provider(s) {', '.join(unknown)}; known: {known}")
    return tuple(dict.fromkeys(value))  # drop repeats, keep the order


def missing_configuration(provider: str, settings: Settings) -> str | None:
    """Why `provider` cannot run with `settings` (the unset variable), or None."""
    if provider == "whisperx" and not settings.whisperx_url:
        return "WHISPERX_URL is not set"
    if provider in AUDIO_LLM_CHUNK_SECONDS and not settings.audio_llm(provider).base_url:
        return f"{settings.audio_llm(provider).variable} is not set"
    return None


def _model_name(provider: str, settings: Settings) -> str:
    if provider == "qwen2-audio":
        return settings.qwen_audio_model
    if provider == "voxtral-small":
        return settings.voxtral_model
    return settings.whisperx_model


def _secrets(settings: Settings, audio_url: str | None) -> list[str | None]:
    """Every value that must never appear in a result, message or log line.

    The configuration's secrets, and those of the job's own URL (its password
    and query values: presigned URLs carry credentials there).
    """
    return [*settings_secrets(settings), *url_secrets(audio_url)]


async def handle(job: Job, ctx: HandlerContext) -> dict[str, Any]:
    """Transcribe the job's audio with the configured providers; see the module doc."""
    with tempfile.TemporaryDirectory(prefix="ai-service-audio-") as scratch:
        return await _handle(job, ctx, Path(scratch))


async def _handle(job: Job, ctx: HandlerContext, scratch: Path) -> dict[str, Any]:
    """`handle` with the job's temporary directory (audio files go there)."""
    settings = ctx.settings
    request = parse_input(job.input, settings)
    secrets = _secrets(settings, request.audio_url)

    if all(missing_configuration(p, settings) for p in request.providers):
        skipped = [
            _skipped(p, settings, missing_configuration(p, settings)) for p in request.providers
        ]
        reasons = "; ".join(str(a["reason"]) for a in skipped)
        raise JobFailure(
            ErrorCategory.PROVIDER_ERROR,
            f"no requested transcription provider is configured: {reasons}",
            retryable=False,
            details={"attempts": skipped},
        )

    if ctx.breakers is not None:
        wanted = [
            key
            for p in request.providers
            if missing_configuration(p, settings) is None
            for key in provider_endpoints(p, settings)
        ]
        if not ctx.breakers.admits(wanted):
            # Every provider it could use is down: not even the audio is fetched.
            raise ctx.gate(wanted[0]).refusal("transcription")

    source = await _load_audio(request, ctx, job, scratch)
    channels = await _decode_in_thread(source, request, scratch, settings)
    duration = max(c.clip.duration for c in channels)

    attempts: list[dict[str, Any]] = []
    winner: dict[str, Any] | None = None
    for provider in request.providers:
        missing = missing_configuration(provider, settings)
        if missing is not None:
            attempts.append(_skipped(provider, settings, missing))
            continue
        if winner is not None and settings.transcription_mode == "fallback":
            attempts.append(_skipped(provider, settings, FALLBACK_SKIP_REASON))
            continue
        attempt = await _attempt(provider, channels, request, ctx, secrets, job)
        attempts.append(attempt)
        if attempt["status"] == "ok" and winner is None:
            winner = attempt

    if winner is None:
        first = next(a["error"] for a in attempts if a["status"] == "error")
        raise JobFailure(first["category"], first["message"], details={"attempts": attempts})

    for attempt in attempts:
        attempt["selected"] = attempt is winner
    # Off the event loop: two 20,000-word texts take a few hundred milliseconds.
    await asyncio.to_thread(compare_attempts, attempts, winner)
    # The selected attempt's transcript is the result's: not stored twice.
    text, segments, warnings = (winner.pop(k) for k in ("text", "segments", "warnings"))
    detected = winner.get("language")
    result: dict[str, Any] = {
        "segments": segments,
        "text": text,
        "language": request.language or detected,
        "requested_language": request.language,
        "detected_language": None if request.language else detected,
        "provider": winner["provider"],
        "model": winner["model"],
        "audio_duration": round(duration, 3),
        "warnings": warnings,
    }
    if request.diarize:
        result["diarization"] = winner["diarization"]
        result["diarization_reason"] = winner["diarization_reason"]
    if request.split:
        result["channel_speakers"] = [c.speaker for c in channels]
    result["attempts"] = attempts
    return result


def compare_attempts(attempts: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    """Set `wer` on every other successful attempt: its word error rate against the
    `reference` attempt's text (`ai_service.wer`; None when a text is too long to compare).

    The reference is the selected attempt (the first provider that succeeded); the
    A/B report (`GET /api/v1/reports/transcription`) reads these numbers.
    """
    words = wer.normalise(reference.get("text") or "")
    for attempt in attempts:
        if attempt is not reference and attempt["status"] == "ok":
            attempt["wer"] = wer.rate(words, wer.normalise(attempt.get("text") or ""))


async def _decode_in_thread(
    source: Path, request: TranscriptionInput, scratch: Path, settings: Settings
) -> list[Channel]:
    """`_decode` in a thread that ends with the job: a job cancelled (its deadline, a
    lost lease, shutdown) stops the decoding at the next frame and waits for the
    thread, so that nothing writes into its files once they are removed and no
    decoding goes on beyond the handler's slots."""
    stop = threading.Event()
    work = asyncio.ensure_future(
        asyncio.to_thread(_decode, source, request, scratch, settings, stop)
    )
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(Exception):
            await work
        raise


def _decode(
    source: Path,
    request: TranscriptionInput,
    scratch: Path,
    settings: Settings,
    stop: threading.Event | None = None,
) -> list[Channel]:
    """The audio to transcribe: one mixed clip, or one per channel (`channels: split`).

    `source` is the file `_load_audio` wrote; the decoded WAV files go beside it
    in `scratch`, decoded frame by frame within `AUDIO_MAX_SECONDS`.
    """
    declared = f" (declared format {request.audio_format})" if request.audio_format else ""
    max_seconds = settings.audio_max_seconds
    try:
        if not request.split:
            clip = AudioClip.from_file(source, workdir=scratch, max_seconds=max_seconds, stop=stop)
            return [Channel(clip)]
        clips = split_channels(source, workdir=scratch, max_seconds=max_seconds, stop=stop)
    except AudioDecodeError as exc:
        raise _invalid(f"audio{declared}: {exc}") from None
    if len(clips) < 2:
        raise _invalid('input.channels: "split" needs audio with two or more channels; it has one')
    names = request.channel_speakers or tuple(f"channel_{n}" for n in range(len(clips)))
    if len(names) != len(clips):
        raise _invalid(
            f"input.channel_speakers: {len(names)} name(s) for audio with {len(clips)} channels"
        )
    return [Channel(clip, name) for clip, name in zip(clips, names, strict=True)]


def provider_endpoints(provider: str, settings: Settings) -> list[str]:
    """The endpoints (breaker names) of a configured provider: one per WhisperX instance."""
    if provider == "whisperx":
        return whisperx_keys(len(settings.whisperx_url))
    return [provider]


def spec(settings: Settings) -> HandlerSpec:
    """The transcription handler; disabled when no listed provider is configured."""
    missing = [missing_configuration(p, settings) for p in settings.transcription_providers]
    enabled = not all(missing)
    reason = None
    if not enabled:
        listed = ",".join(settings.transcription_providers)
        unset = "; ".join(m for m in missing if m)
        reason = f"no provider of TRANSCRIPTION_PROVIDERS ({listed}) is configured: {unset}"
    return HandlerSpec(
        name="transcription",
        task_types=TASK_TYPES,
        model_profiles=None,
        handle=handle,
        enabled=enabled,
        disabled_reason=reason,
        # The download, one attempt per listed provider (compare mode runs them all),
        # and a margin for decoding.
        timeout=settings.audio_download_timeout
        + settings.transcription_timeout * len(settings.transcription_providers)
        + 60,
        endpoints=tuple(
            key
            for p, m in zip(settings.transcription_providers, missing, strict=True)
            if m is None
            for key in provider_endpoints(p, settings)
        ),
        providers={
            "whisperx": [redact_url(url) for url in settings.whisperx_url] or None,
            "qwen2-audio": _redacted(settings.qwen_audio_base_url),
            "voxtral-small": _redacted(settings.voxtral_base_url),
        },
    )


def _redacted(url: str | None) -> str | None:
    return redact_url(url) if url else None


# -- audio input ------------------------------------------------------------


async def _load_audio(
    request: TranscriptionInput, ctx: HandlerContext, job: Job, scratch: Path
) -> Path:
    """The job's audio, written to a file in `scratch` (streamed: never whole in memory)."""
    source = scratch / "source"
    with source.open("wb") as out:
        await _fetch_audio(request, ctx, job, out)
    return source


async def _fetch_audio(
    request: TranscriptionInput, ctx: HandlerContext, job: Job, out: BinaryIO
) -> None:
    """Write the job's audio file to `out`, from whichever source the input names."""
    if request.audio_url is not None:
        await _download(request.audio_url, ctx, out)
    elif request.audio_id is not None:
        await _copy_stored(request.audio_id, ctx, job, out)
    else:
        assert request.audio_base64 is not None  # parse_input guarantees one of them
        out.write(_decode_base64(request.audio_base64, ctx.settings.audio_max_bytes))


def _decode_base64(text: str, limit: int) -> bytes:
    try:
        return audio_input.decode_base64(text, limit)
    except audio_input.AudioTooLarge:
        raise _too_large(limit, "input.audio_base64") from None
    except audio_input.BadAudioInput as exc:
        raise _invalid(f"input.audio_base64 {exc}") from None


async def _copy_stored(audio_id: UUID, ctx: HandlerContext, job: Job, out: BinaryIO) -> None:
    """Stream a recording stored in PostgreSQL (`POST /api/v1/audio`) into `out`.

    One chunk in memory at a time. A recording that is gone, or belongs to
    another owner_service, is the job's `invalid_input`; a database that cannot
    be read is a retryable failure.
    """
    gone = _invalid(
        "input.audio_id: no stored recording with this id for this owner_service "
        "(expired or deleted?)"
    )
    if ctx.audio is None:
        raise JobFailure(
            ErrorCategory.INTERNAL, "input.audio_id: stored audio is not available here"
        )
    limit = ctx.settings.audio_max_bytes
    try:
        blob = await ctx.audio.get_audio(audio_id)
        if blob.owner_service != job.owner_service:
            raise gone
        if blob.size > limit:
            raise _too_large(limit, "input.audio_id")
        written = 0
        async for chunk in ctx.audio.audio_chunks(audio_id):
            out.write(chunk)
            written += len(chunk)
    except errors.AudioNotFound:
        raise gone from None
    except (errors.DatabaseUnavailable, errors.StatementTimeout) as exc:
        raise JobFailure(
            ErrorCategory.INTERNAL,
            f"input.audio_id: cannot read the stored audio: {exc}",
            retryable=True,
        ) from None
    if written != blob.size:  # deleted while being read
        raise gone


def _too_large(limit: int, what: str) -> JobFailure:
    # `what` names the field, never the URL.
    return _invalid(f"{what}: the audio is larger than AUDIO_MAX_BYTES ({limit} bytes)")


async def _download(url: str, ctx: HandlerContext, out: BinaryIO) -> None:
    """Write the bytes at a caller-supplied `url` to `out`, within the `AUDIO_URL_ALLOW` rules.

    Streamed: one network read in memory at a time. Messages are fixed texts: no
    URL (it may hold a presigned credential), no resolved address, no reason
    phrase or body of the remote server (they would turn the error into a probe
    of the internal network).
    """
    settings = ctx.settings
    limit = settings.audio_max_bytes
    deadline = settings.audio_download_timeout
    size = 0
    try:
        # A client per download: no cookie, connection or redirect state is shared
        # between jobs (the TLS context, the costly part, is shared).
        # The total deadline also stops a server that drips bytes just fast
        # enough to never trip httpx's per-read timeout.
        async with (
            asyncio.timeout(deadline),
            outbound.OutboundClient(settings.audio_url_allow) as client,
            client.stream("GET", url, timeout=deadline) as response,
        ):
            status = response.status_code
            if status >= 500:
                raise _source_failure(f"audio_url: HTTP {status}")
            if not response.is_success:
                raise _invalid(f"audio_url: HTTP {status}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _too_large(limit, "audio_url")
            async for piece in response.aiter_bytes():
                size += len(piece)
                if size > limit:
                    raise _too_large(limit, "audio_url")
                out.write(piece)
    except outbound.DestinationNotAllowed:
        raise _invalid("audio_url: destination not allowed") from None
    except outbound.TooManyRedirects as exc:
        raise _invalid(f"audio_url: more than {exc.limit} redirects") from None
    except TimeoutError:
        raise JobFailure(
            ErrorCategory.TIMEOUT, f"audio_url: the download did not finish within {deadline:g} s"
        ) from None
    except httpx.HTTPError as exc:
        raise _download_failure(exc) from None
    if not size:
        raise _invalid("audio_url: the server answered an empty body")


def _download_failure(exc: httpx.HTTPError) -> JobFailure:
    # The exception's own text can name the resolved address: never shown.
    if isinstance(exc, httpx.TimeoutException):
        return JobFailure(ErrorCategory.TIMEOUT, "audio_url: the server did not answer in time")
    if isinstance(exc, httpx.ConnectError):
        return _source_failure("audio_url: cannot connect")
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return _source_failure("audio_url: connection failed")
    return _invalid("audio_url: the URL cannot be fetched")


def _source_failure(message: str) -> JobFailure:
    """The caller's audio server failed: retried while attempts remain, but no outage
    of ours (an outage would defer the job for free, up to PROVIDER_OUTAGE_MAX, and a
    dead URL would hold a transcription slot every minute for hours)."""
    return JobFailure(ErrorCategory.PROVIDER_ERROR, message, retryable=True)


# -- providers ----------------------------------------------------------------


@dataclass
class _Heard:
    """One channel's transcript, shaped: what the attempt reports of it."""

    transcript: Transcript
    segments: list[dict[str, Any]]
    dropped: int
    warning: dict[str, Any] | None


async def _attempt(
    provider: str,
    channels: list[Channel],
    request: TranscriptionInput,
    ctx: HandlerContext,
    secrets: list[str | None],
    job: Job,
) -> dict[str, Any]:
    """Run one provider on every channel; never raises for a provider failure (it is recorded)."""
    settings = ctx.settings
    started = time.monotonic()
    heard: list[_Heard] = []
    instances: list[dict[str, Any]] = []
    error: dict[str, str] | None = None
    try:
        async with asyncio.timeout(settings.transcription_timeout):
            for index, channel in enumerate(channels):
                tried: list[dict[str, Any]] = []
                try:
                    transcript = await _run(provider, channel.clip, request, ctx, secrets, tried)
                finally:
                    if request.split:
                        for entry in tried:
                            entry["channel"] = index
                    instances.extend(tried)
                heard.append(_shape(provider, transcript, channel, request))
    except JobFailure as failure:
        error = {"category": str(failure.category), "message": failure.message}
    except TimeoutError:
        error = {
            "category": ErrorCategory.TIMEOUT.value,
            "message": f"{provider}: no result within TRANSCRIPTION_TIMEOUT "
            f"({settings.transcription_timeout:g} s)",
        }
    except Exception as exc:
        # A bug or an unexpected library error must not hide the other
        # providers' results: record it, log the traceback.
        ctx.log.warning("transcription job %s: %s crashed", job.id, provider, exc_info=True)
        error = {
            "category": ErrorCategory.INTERNAL.value,
            "message": f"{provider}: unexpected {type(exc).__name__}: {exc}",
        }
    duration_ms = round((time.monotonic() - started) * 1000)
    _log_instances(ctx, job, instances)
    if error is not None:
        error["message"] = redact_text(error["message"], secrets)
        ctx.log.info(
            "transcription job %s: %s failed in %d ms (%s): %s",
            job.id,
            provider,
            duration_ms,
            error["category"],
            error["message"],
        )
        failed: dict[str, Any] = {
            "provider": provider,
            "model": _model_name(provider, settings),
            "status": "error",
            "text": None,
            "segments": [],
            "duration_ms": duration_ms,
            "error": error,
        }
        if instances:
            failed["instances"] = instances
        return failed

    speakers = [c.speaker for c in channels if c.speaker is not None] if request.split else None
    segments = shape.merge_channels([h.segments for h in heard], speakers)
    first = heard[0].transcript
    dropped = sum(h.dropped for h in heard)
    text = shape.joined_text(segments) if request.split or dropped else first.text
    ctx.log.info(
        "transcription job %s: %s answered in %d ms (%d segments)",
        job.id,
        provider,
        duration_ms,
        len(segments),
    )
    detected = next((h.transcript.language for h in heard if h.transcript.language), None)
    attempt: dict[str, Any] = {
        "provider": provider,
        "model": first.model,
        "status": "ok",
        "text": text,
        "segments": segments,
        "duration_ms": duration_ms,
        "error": None,
        "language": (normalise_language(detected) or detected) if detected else None,
        "warnings": [h.warning for h in heard if h.warning is not None],
    }
    if dropped:
        attempt["dropped_segments"] = dropped
    if request.diarize:
        status, reason = shape.diarization_status(
            provider, segments, engine=first.engine, split=request.split
        )
        attempt["diarization"], attempt["diarization_reason"] = status, reason
    if first.engine is not None:
        attempt["engine"] = first.engine
    chunks = [
        {**chunk, **({"channel": index} if request.split else {})}
        for index, h in enumerate(heard)
        for chunk in h.transcript.chunks or ()
    ]
    if chunks:
        attempt["chunks"] = chunks
    if heard[-1].transcript.instance is not None:
        attempt["instance"] = heard[-1].transcript.instance
    if instances:
        attempt["instances"] = instances
    return attempt


def _shape(
    provider: str, transcript: Transcript, channel: Channel, request: TranscriptionInput
) -> _Heard:
    """A channel's transcript with the job's filters applied and its warning, if any."""
    segments = _segments(transcript, channel.clip.duration)
    kept = [
        s
        for s in segments
        if shape.keep_segment(
            s,
            min_confidence=request.min_confidence,
            no_speech_threshold=request.no_speech_threshold,
        )
    ]
    heard_text = transcript.text or shape.joined_text(segments)
    warning = None
    if not heard_text.strip():
        # Only then is the audio scanned: a transcript with words needs no check.
        sound = clip_speech_seconds(channel.clip)
        warning = shape.empty_warning(provider, heard_text, sound, channel.speaker)
    return _Heard(transcript, kept, len(segments) - len(kept), warning)


def _log_instances(ctx: HandlerContext, job: Job, instances: list[dict[str, Any]]) -> None:
    """One line per WhisperX instance tried: failover leaves a trace."""
    for entry in instances:
        error = entry["error"]
        ctx.log.info(
            "transcription job %s: whisperx instance %s %s in %d ms%s",
            job.id,
            entry["url"],
            entry["status"],
            entry["duration_ms"],
            f" ({error['category']}): {error['message']}" if error else "",
        )


async def _run(
    provider: str,
    clip: AudioClip,
    request: TranscriptionInput,
    ctx: HandlerContext,
    secrets: list[str | None],
    tried: list[dict[str, Any]],
) -> Transcript:
    settings = ctx.settings
    if provider == "whisperx":
        urls = settings.whisperx_url
        picker = _whisperx_pickers.setdefault(urls, InstancePicker(len(urls)))
        whisperx = WhisperXClient(
            ctx.http,
            urls,
            timeout=settings.transcription_timeout,
            secrets=secrets,
            gates=[ctx.gate(key) for key in whisperx_keys(len(urls))],
            model=settings.whisperx_model,
            picker=picker,
        )
        return await whisperx.transcribe(
            clip,
            language=request.language,
            prompt=request.prompt,
            # A split channel holds one speaker: the channel is the label.
            diarize=None if request.split else request.diarize,
            min_speakers=None if request.split else request.min_speakers,
            max_speakers=None if request.split else request.max_speakers,
            vad_filter=request.vad_filter,
            word_timestamps=request.word_timestamps,
            tried=tried,
        )
    if provider not in AUDIO_LLM_CHUNK_SECONDS:  # parse_input and config only let known names in
        raise JobFailure(ErrorCategory.INVALID_INPUT, f"unknown provider {provider}")
    endpoint = settings.audio_llm(provider)
    assert endpoint.base_url is not None
    client: AudioChatClient | AudioTranscriptionsClient
    if provider == "voxtral-small" and settings.voxtral_api == "transcriptions":
        client = AudioTranscriptionsClient(
            ctx.http,
            provider=provider,
            base_url=endpoint.base_url,
            model=endpoint.model,
            api_key=endpoint.api_key,
            timeout=settings.transcription_timeout,
            secrets=secrets,
        )
    else:
        client = AudioChatClient(
            ctx.http,
            provider=provider,
            base_url=endpoint.base_url,
            model=endpoint.model,
            api_key=endpoint.api_key,
            prompt=settings.audio_llm_prompt,
            max_tokens=settings.audio_llm_max_tokens,
            timeout=settings.transcription_timeout,
            max_chunk_seconds=AUDIO_LLM_CHUNK_SECONDS[provider],
            secrets=secrets,
        )
    gate = ctx.gate(provider)
    if not gate.acquire():
        raise gate.refusal(provider)
    try:
        try:
            transcript = await client.transcribe(
                clip, language=request.language, prompt=request.prompt
            )
        except JobFailure as failure:
            raise (await settle(gate, failure) or failure) from None
        await settle(gate, None)
        return transcript
    finally:
        gate.release()


def _skipped(provider: str, settings: Settings, reason: str | None) -> dict[str, Any]:
    return {
        "provider": provider,
        "model": _model_name(provider, settings),
        "status": "skipped",
        "reason": reason,
        "text": None,
        "segments": [],
        "duration_ms": 0,
        "error": None,
    }


def _segments(transcript: Transcript, duration: float) -> list[dict[str, Any]]:
    # A provider that only returned text still yields one segment covering
    # the audio, so callers can always read `segments`.
    if not transcript.segments and transcript.text:
        return [{"start": 0.0, "end": round(duration, 3), "text": transcript.text}]
    return transcript.segments
