"""WhisperX over HTTP (whisper-asr-webservice, engine faster_whisper or whisperx).

`POST {url}/asr?output=json&task=transcribe&encode=true&...` with the file in
the multipart field `audio_file`. The JSON answer is served as `text/plain`
(chunked), so the body text is parsed, never `response.json()` on the content
type.

The file sent is never the caller's: the server pipes uploads into ffmpeg,
which cannot seek a pipe (an M4A with its index at the end yields an empty
transcript, a WAV with `data` before `fmt ` a 500). The worker has decoded the
audio, so every instance gets the same 16 kHz mono WAV (`AudioClip.open_wav`).

Reading is liberal: whisperx-asr-service answers the same endpoint but with
`text` as a list of strings; words may lack `start`/`end`/`score` when
alignment failed; `speaker` appears only with diarization. Timings are rounded
to milliseconds, word text loses Whisper's leading space, and per-segment
`avg_logprob`/`no_speech_prob` and per-word `probability`/`score` are kept.

Several instances can serve the same jobs. Which one a request goes to is
decided by load (`InstancePicker`, one per instance list and process): the
instance with the fewest requests in flight from this process, skipping
those whose circuit breaker is open (`gates`, `providers.gate`), ties in
turn (round robin). A whisper-asr-webservice instance transcribes one
request at a time and answers nothing meanwhile, so a second request to a
busy instance would only queue there while another one idles. An instance
that cannot be reached or answers 5xx hands the request to the next one in
that order before the call fails; instances whose circuit is open come last
and are skipped. A 500 while the instance's probe answers is the request's
fault (undecodable audio), not the instance's, and is not handed on. Every
instance tried is recorded in `tried` (`{url, status, error,
duration_ms}`), whatever the outcome.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx

from ai_service.errors import JobFailure
from ai_service.jobs import ErrorCategory
from ai_service.providers import http_errors
from ai_service.providers.audio import AudioClip, Transcript
from ai_service.providers.gate import OPEN_GATE, Gate, settle
from ai_service.redact import redact_url
from ai_service.urls import request_target, url_path

PROVIDER = "whisperx"
# Digits kept of the model's scores (log-probabilities, probabilities).
_SCORE_DIGITS = 4


class InstancePicker:
    """The order in which a request tries the instances of one `WHISPERX_URL` list.

    Keeps the requests in flight per instance (this process only: other
    workers' load is not seen) and a round-robin cursor for ties. Not
    thread-safe; one event loop uses it.
    """

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("at least one instance is required")
        self.in_flight = [0] * count
        self._turn = 0

    def order(self, admitting: Sequence[bool]) -> list[int]:
        """Instance indexes, best first: admitting ones (breaker not open) before the
        rest, then fewest in flight, then in turn from a cursor that moves on each call.
        """
        count = len(self.in_flight)
        if len(admitting) != count:
            raise ValueError(f"{len(admitting)} gate states for {count} instances")
        start = self._turn % count
        self._turn += 1
        return sorted(
            range(count),
            key=lambda i: (not admitting[i], self.in_flight[i], (i - start) % count),
        )

    @contextmanager
    def sending(self, index: int) -> Iterator[None]:
        """Count a request to instance `index` as in flight while the block runs."""
        self.in_flight[index] += 1
        try:
            yield
        finally:
            self.in_flight[index] -= 1


class WhisperXClient:
    """Client for one or more WhisperX `/asr` instances.

    `http` is the process-wide client; `timeout` bounds each request (the
    connect phase is capped at 10 s so a dead instance fails over quickly);
    `secrets` are masked in error messages (passwords of the URLs); `model`
    is reported as the transcript's model unless the server names its own
    (whisper-asr-webservice only names its engine, in `Asr-Engine`);
    `picker` orders the instances for each request (share one per URL list
    and process so that the in-flight counts see every job).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        urls: Sequence[str],
        *,
        timeout: float,
        secrets: Sequence[str | None] = (),
        gates: Sequence[Gate] | None = None,
        model: str = PROVIDER,
        picker: InstancePicker | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one WhisperX URL is required")
        self._http = http
        self._urls = tuple(urls)
        self._gates = tuple(gates) if gates is not None else (OPEN_GATE,) * len(self._urls)
        if len(self._gates) != len(self._urls):
            raise ValueError("one gate per WhisperX URL is required")
        self._picker = picker or InstancePicker(len(self._urls))
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._secrets = tuple(secrets)
        self._model = model

    @property
    def urls(self) -> tuple[str, ...]:
        """The configured instance URLs (not redacted)."""
        return self._urls

    async def transcribe(
        self,
        clip: AudioClip,
        *,
        language: str | None = None,
        prompt: str | None = None,
        diarize: bool | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        vad_filter: bool | None = None,
        word_timestamps: bool | None = None,
        tried: list[dict[str, Any]] | None = None,
    ) -> Transcript:
        """Transcribe `clip` (sent as 16 kHz mono WAV), trying instances in the picker's order.

        Raises `JobFailure`: the failure of the last instance tried when every
        instance was unavailable, or the first failure that is not about
        availability (4xx, timeout, malformed body) without trying further; the
        refusal of an open circuit when no instance could be tried at all.
        Each instance tried (or skipped for its open circuit) is appended to
        `tried`.
        """
        params: dict[str, str] = {"output": "json", "task": "transcribe", "encode": "true"}
        if language:
            params["language"] = language
        if prompt:
            params["initial_prompt"] = prompt
        if diarize is not None:
            params["diarize"] = "true" if diarize else "false"
        if min_speakers is not None:
            params["min_speakers"] = str(min_speakers)
        if max_speakers is not None:
            params["max_speakers"] = str(max_speakers)
        if vad_filter is not None:
            params["vad_filter"] = "true" if vad_filter else "false"
        if word_timestamps is not None:
            params["word_timestamps"] = "true" if word_timestamps else "false"
        trace = tried if tried is not None else []
        # The decoded WAV, streamed from disk: one file for every instance (httpx
        # seeks it back to the start for each).
        with clip.open_wav() as upload:
            files = {"audio_file": ("audio.wav", upload, "audio/wav")}
            return await self._post(files, params, trace)

    async def _post(
        self,
        files: dict[str, Any],
        params: dict[str, str],
        trace: list[dict[str, Any]],
    ) -> Transcript:
        """`transcribe`'s requests: the instances in the picker's order, as it documents."""
        failure: JobFailure | None = None
        refused: JobFailure | None = None
        for index in self._picker.order([gate.admits() for gate in self._gates]):
            url, gate = self._urls[index], self._gates[index]
            if not gate.acquire():
                refusal = gate.refusal(f"{PROVIDER} instance {index + 1}")
                refused = refused or refusal
                trace.append(_tried(url, "skipped", refusal, 0))
                continue
            began = time.monotonic()
            try:
                # `user:password@` of WHISPERX_URL (a basic-auth proxy) goes in a header.
                endpoint, headers = request_target(url, _asr_path(url))
                # Merged by hand: httpx's `params=` would replace the URL's own query
                # (a gateway's `?api_key=`) instead of adding to it.
                target = httpx.URL(endpoint).copy_merge_params(params)
                try:
                    with self._picker.sending(index):
                        response = await self._http.post(
                            target, files=files, headers=headers, timeout=self._timeout
                        )
                except asyncio.CancelledError:
                    # The attempt's deadline (TRANSCRIPTION_TIMEOUT) ran out here.
                    trace.append(_tried(url, "cancelled", None, _since(began)))
                    raise
                except httpx.HTTPError as exc:
                    failure = http_errors.failure_from_exception(
                        PROVIDER, exc, secrets=self._secrets
                    )
                else:
                    if response.is_success:
                        await settle(gate, None)
                        try:
                            transcript = _parse(
                                response,
                                instance=redact_url(url),
                                secrets=self._secrets,
                                model=self._model,
                            )
                        except JobFailure as malformed:
                            trace.append(_tried(url, "error", malformed, _since(began)))
                            raise
                        trace.append(_tried(url, "ok", None, _since(began)))
                        return transcript
                    failure = http_errors.failure_from_response(
                        PROVIDER, response, secrets=self._secrets
                    )
                failure = await settle(gate, failure)
            finally:
                gate.release()
            assert failure is not None
            trace.append(_tried(url, "error", failure, _since(began)))
            if failure.category != ErrorCategory.PROVIDER_UNAVAILABLE:
                break
        if failure is None:
            assert refused is not None  # every instance's circuit is open
            raise refused
        raise failure


def _since(began: float) -> int:
    return round((time.monotonic() - began) * 1000)


def _tried(url: str, status: str, failure: JobFailure | None, duration_ms: int) -> dict[str, Any]:
    """One instance tried, for the attempt's `instances` (the URL redacted)."""
    error = None
    if failure is not None:
        error = {"category": str(failure.category), "message": failure.message}
    return {"url": redact_url(url), "status": status, "error": error, "duration_ms": duration_ms}


def _asr_path(url: str) -> str:
    # WHISPERX_URL may name the endpoint itself or the server.
    return "" if url_path(url).endswith("/asr") else "/asr"


def _parse(
    response: httpx.Response, *, instance: str, secrets: Sequence[str | None], model: str
) -> Transcript:
    try:
        body: Any = json.loads(response.text)
    except (ValueError, UnicodeDecodeError):
        raise http_errors.malformed_response(
            PROVIDER, "the body is not JSON (was output=json honoured?)", response, secrets=secrets
        ) from None
    if not isinstance(body, dict):
        raise http_errors.malformed_response(
            PROVIDER, "the JSON body is not an object", response, secrets=secrets
        )
    raw_segments = body.get("segments")
    if raw_segments is None:
        raw_segments = []
    if not isinstance(raw_segments, list):
        raise http_errors.malformed_response(
            PROVIDER, "`segments` is not a list", response, secrets=secrets
        )
    segments: list[dict[str, Any]] = []
    for index, raw in enumerate(raw_segments):
        segment = _segment(raw)
        if segment is None:
            raise http_errors.malformed_response(
                PROVIDER,
                f"segment {index} lacks a numeric start/end or text",
                response,
                secrets=secrets,
            )
        segments.append(segment)
    if "text" in body:
        text = _text(body["text"])
    else:
        text = " ".join(s["text"] for s in segments if s["text"])
    if not segments and "text" not in body:
        raise http_errors.malformed_response(
            PROVIDER, "neither `segments` nor `text` in the answer", response, secrets=secrets
        )
    language = body.get("language")
    told = body.get("model")  # whisper-asr-webservice does not tell; others may
    return Transcript(
        text=text,
        segments=segments,
        model=told if isinstance(told, str) and told else model,
        language=language if isinstance(language, str) and language else None,
        instance=instance,
        engine=response.headers.get("asr-engine") or None,
    )


def _text(value: Any) -> str:
    # whisper-asr-webservice: a string; whisperx-asr-service: a list of strings.
    if isinstance(value, list):
        return " ".join(str(part).strip() for part in value if str(part).strip())
    if value is None:
        return ""
    return str(value).strip()


def _number(value: Any, digits: int = 3) -> float | None:
    # Timings to the millisecond: the server's floats carry noise (14.120000000000001).
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return round(number, digits) if math.isfinite(number) else None


def _segment(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    start, end = _number(raw.get("start")), _number(raw.get("end"))
    if start is None or end is None or "text" not in raw:
        return None
    segment: dict[str, Any] = {"start": start, "end": end, "text": _text(raw["text"])}
    speaker = raw.get("speaker")
    if isinstance(speaker, str) and speaker:
        segment["speaker"] = speaker
    for key in ("avg_logprob", "no_speech_prob"):
        number = _number(raw.get(key), _SCORE_DIGITS)
        if number is not None:
            segment[key] = number
    words = raw.get("words")
    if isinstance(words, list) and words:
        segment["words"] = [w for w in (_word(item) for item in words) if w is not None]
    return segment


def _word(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("word"), str):
        return None
    # Whisper's words start with a space (" Hello"): callers join them themselves.
    word: dict[str, Any] = {"word": raw["word"].strip()}
    # start/end/score are missing for words alignment could not place;
    # faster_whisper names the score `probability`, whisperx `score`.
    for key, digits in (
        ("start", 3),
        ("end", 3),
        ("probability", _SCORE_DIGITS),
        ("score", _SCORE_DIGITS),
    ):
        number = _number(raw.get(key), digits)
        if number is not None:
            word[key] = number
    speaker = raw.get("speaker")
    if isinstance(speaker, str) and speaker:
        word["speaker"] = speaker
    return word
