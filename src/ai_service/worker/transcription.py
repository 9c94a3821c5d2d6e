"""The `transcription` handler: audio in, segments out, providers compared.

Input (`job.input`):

    audio_url | audio_id | audio_base64 (+ audio_format)   exactly one of them
    language, prompt, diarize, min_speakers, max_speakers   optional
    providers                                   optional order override

Providers run in the order of `input.providers`, else `TRANSCRIPTION_PROVIDERS`.
`TRANSCRIPTION_MODE=compare` runs all of them (an A/B comparison);
`fallback` stops at the first success. The result's `segments`, `text`,
`language`, `provider`, `model` come from the first provider that succeeded;
`attempts` has one entry per provider (`ok`, `error` or `skipped`).

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
import itertools
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit
from uuid import UUID

import httpx

from ai_service import audio_input, errors, outbound
from ai_service.config import TRANSCRIPTION_PROVIDER_NAMES, Settings
from ai_service.errors import JobFailure
from ai_service.jobs import ErrorCategory, Job
from ai_service.providers.audio import AudioClip, AudioDecodeError, Transcript
from ai_service.providers.audio_llm import AudioChatClient
from ai_service.providers.gate import settle
from ai_service.providers.whisperx import WhisperXClient
from ai_service.redact import redact_text, redact_url, settings_secrets, url_secrets
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

_AUDIO_FORMAT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,15}$")
_SEGMENT_KEYS = ("start", "end", "text", "speaker")

# Round-robin cursor over the WhisperX instances, per URL list. In-process
# only: with several worker processes each one rotates on its own, which is
# enough to spread the load.
_whisperx_cursors: dict[tuple[str, ...], itertools.count[int]] = {}


@dataclass(frozen=True)
class TranscriptionInput:
    """A validated transcription job input."""

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


def _invalid(message: str) -> JobFailure:
    return JobFailure(ErrorCategory.INVALID_INPUT, message, retryable=False)


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f"input.{name} must be a string")
    return value.strip() or None


def _optional_speakers(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(f"input.{name} must be a positive integer")
    return value


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
    diarize = data.get("diarize")
    if diarize is not None and not isinstance(diarize, bool):
        raise _invalid("input.diarize must be true or false")
    min_speakers = _optional_speakers(data, "min_speakers")
    max_speakers = _optional_speakers(data, "max_speakers")
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise _invalid("input.min_speakers must not exceed input.max_speakers")
    return TranscriptionInput(
        audio_url=audio_url,
        audio_base64=audio_base64,
        audio_format=audio_format.lower() if audio_format else None,
        audio_id=audio_id,
        language=_optional_str(data, "language"),
        prompt=_optional_str(data, "prompt"),
        diarize=diarize,
        min_speakers=min_speakers,
        max_speakers=max_speakers,
        providers=_providers(data.get("providers"), settings),
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
    return provider


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

    clip = await _load_clip(request, ctx, job, scratch)

    attempts: list[dict[str, Any]] = []
    winner: tuple[str, Transcript] | None = None
    for provider in request.providers:
        missing = missing_configuration(provider, settings)
        if missing is not None:
            attempts.append(_skipped(provider, settings, missing))
            continue
        if winner is not None and settings.transcription_mode == "fallback":
            attempts.append(_skipped(provider, settings, FALLBACK_SKIP_REASON))
            continue
        attempt, transcript = await _attempt(provider, clip, request, ctx, secrets, job)
        attempts.append(attempt)
        if transcript is not None and winner is None:
            winner = (provider, transcript)

    if winner is None:
        first = next(a["error"] for a in attempts if a["status"] == "error")
        raise JobFailure(first["category"], first["message"], details={"attempts": attempts})

    provider, transcript = winner
    return {
        "segments": [
            {key: s[key] for key in _SEGMENT_KEYS if key in s}
            for s in _segments(transcript, clip.duration)
        ],
        "text": transcript.text,
        "language": transcript.language or request.language,
        "provider": provider,
        "model": transcript.model,
        "audio_duration": round(clip.duration, 3),
        "attempts": attempts,
    }


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


async def _load_clip(
    request: TranscriptionInput, ctx: HandlerContext, job: Job, scratch: Path
) -> AudioClip:
    """The job's audio, written to `scratch` and decoded there (within AUDIO_MAX_SECONDS)."""
    source = scratch / "source"
    with source.open("wb") as out:
        await _fetch_audio(request, ctx, job, out)
    try:
        return await asyncio.to_thread(
            AudioClip.from_file,
            source,
            workdir=scratch,
            max_seconds=ctx.settings.audio_max_seconds,
        )
    except AudioDecodeError as exc:
        declared = f" (declared format {request.audio_format})" if request.audio_format else ""
        raise _invalid(f"audio{declared}: {exc}") from None


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
                raise JobFailure(ErrorCategory.PROVIDER_UNAVAILABLE, f"audio_url: HTTP {status}")
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
        return JobFailure(ErrorCategory.PROVIDER_UNAVAILABLE, "audio_url: cannot connect")
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return JobFailure(ErrorCategory.PROVIDER_UNAVAILABLE, "audio_url: connection failed")
    return _invalid("audio_url: the URL cannot be fetched")


# -- providers ----------------------------------------------------------------


async def _attempt(
    provider: str,
    clip: AudioClip,
    request: TranscriptionInput,
    ctx: HandlerContext,
    secrets: list[str | None],
    job: Job,
) -> tuple[dict[str, Any], Transcript | None]:
    """Run one provider; never raises for a provider failure (it is recorded)."""
    settings = ctx.settings
    started = time.monotonic()
    transcript: Transcript | None = None
    error: dict[str, str] | None = None
    try:
        async with asyncio.timeout(settings.transcription_timeout):
            transcript = await _run(provider, clip, request, ctx, secrets)
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
        attempt: dict[str, Any] = {
            "provider": provider,
            "model": _model_name(provider, settings),
            "status": "error",
            "text": None,
            "segments": [],
            "duration_ms": duration_ms,
            "error": error,
        }
        return attempt, None
    assert transcript is not None
    ctx.log.info(
        "transcription job %s: %s answered in %d ms (%d segments)",
        job.id,
        provider,
        duration_ms,
        len(transcript.segments),
    )
    attempt = {
        "provider": provider,
        "model": transcript.model,
        "status": "ok",
        "text": transcript.text,
        "segments": _segments(transcript, clip.duration),
        "duration_ms": duration_ms,
        "error": None,
    }
    if transcript.chunks is not None:
        attempt["chunks"] = transcript.chunks
    if transcript.instance is not None:
        attempt["instance"] = transcript.instance
    return attempt, transcript


async def _run(
    provider: str,
    clip: AudioClip,
    request: TranscriptionInput,
    ctx: HandlerContext,
    secrets: list[str | None],
) -> Transcript:
    settings = ctx.settings
    if provider == "whisperx":
        urls = settings.whisperx_url
        cursor = _whisperx_cursors.setdefault(urls, itertools.count())
        whisperx = WhisperXClient(
            ctx.http,
            urls,
            timeout=settings.transcription_timeout,
            secrets=secrets,
            gates=[ctx.gate(key) for key in whisperx_keys(len(urls))],
        )
        return await whisperx.transcribe(
            clip,
            start=next(cursor) % len(urls),
            language=request.language,
            prompt=request.prompt,
            diarize=request.diarize,
            min_speakers=request.min_speakers,
            max_speakers=request.max_speakers,
        )
    if provider not in AUDIO_LLM_CHUNK_SECONDS:  # parse_input and config only let known names in
        raise JobFailure(ErrorCategory.INVALID_INPUT, f"unknown provider {provider}")
    endpoint = settings.audio_llm(provider)
    assert endpoint.base_url is not None
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
