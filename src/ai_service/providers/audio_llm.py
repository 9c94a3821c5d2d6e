"""Transcription through an OpenAI-compatible chat endpoint with `input_audio`.

Qwen2-Audio and Voxtral (served by vLLM) share this client:

    POST {base}/v1/chat/completions
    {"model": ..., "temperature": 0, "max_tokens": AUDIO_LLM_MAX_TOKENS,
     "messages": [{"role": "user", "content": [
        {"type": "text", "text": <instruction>},
        {"type": "input_audio", "input_audio": {"data": <base64>, "format": "wav"}}]}]}

`max_chunk_seconds` splits long audio into requests of at most that many
seconds (Qwen2-Audio: 30 s, longer clips have crashed vLLM); each chunk
becomes one segment with its real start and end. With `max_chunk_seconds=None`
(Voxtral) the whole file is sent, as is for wav/mp3, else re-encoded to wav.

Chunks are sent one after another: it keeps the load one job puts on a shared
GPU server predictable, and a failed chunk stops the attempt early.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import Any

import httpx

from ai_service.errors import JobFailure
from ai_service.providers import http_errors
from ai_service.providers.audio import AudioClip, Transcript
from ai_service.urls import join_url, url_path


def openai_endpoint(base_url: str, endpoint: str) -> str:
    """`{base}/v1{endpoint}`, whether or not `base_url` ends with `/v1` or already
    names the endpoint. A query string of `base_url` stays at the end (`join_url`)."""
    path = url_path(base_url)
    if path.endswith(endpoint):
        return join_url(base_url, "")
    return join_url(base_url, endpoint if path.endswith("/v1") else f"/v1{endpoint}")


def chat_completions_url(base_url: str) -> str:
    """`{base}/v1/chat/completions` (see `openai_endpoint`)."""
    return openai_endpoint(base_url, "/chat/completions")


class AudioEndpoint:
    """One model behind an OpenAI-style endpoint: the request plumbing that the chat
    and transcription clients share.

    `provider` names it in results and error messages; `api_key`, when set, goes
    only into the `Authorization` header (and is masked in messages); `timeout`
    bounds each request.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        provider: str,
        url: str,
        model: str,
        api_key: str | None,
        timeout: float,
        secrets: Sequence[str | None] = (),
    ) -> None:
        self._http = http
        self.provider = provider
        self.model = model
        self._url = url
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._secrets = (api_key, *secrets)

    async def _post(self, **content: Any) -> tuple[Any, httpx.Response]:
        """POST `content` (json=, or data= and files=): the JSON body and the answer;
        `JobFailure` for a failed request, an error answer or a body that is no JSON."""
        try:
            response = await self._http.post(
                self._url, headers=self._headers, timeout=self._timeout, **content
            )
        except httpx.HTTPError as exc:
            raise http_errors.failure_from_exception(
                self.provider, exc, secrets=self._secrets
            ) from None
        if not response.is_success:
            raise http_errors.failure_from_response(self.provider, response, secrets=self._secrets)
        try:
            return response.json(), response
        except (ValueError, UnicodeDecodeError):
            raise self._malformed("the body is not JSON", response) from None

    def _malformed(self, what: str, response: httpx.Response) -> JobFailure:
        return http_errors.malformed_response(self.provider, what, response, secrets=self._secrets)


def instruction(prompt: str, *, language: str | None, context: str | None) -> str:
    """The text part sent with the audio: the operator's prompt, language, job prompt."""
    parts = [prompt.strip()]
    if language:
        parts.append(f"The audio language is {language}.")
    if context:
        parts.append(context.strip())
    return "\n".join(part for part in parts if part)


class AudioChatClient(AudioEndpoint):
    """Transcribes audio with one OpenAI-compatible audio chat model (`AudioEndpoint`)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        provider: str,
        base_url: str,
        model: str,
        api_key: str | None,
        prompt: str,
        max_tokens: int,
        timeout: float,
        max_chunk_seconds: float | None,
        secrets: Sequence[str | None] = (),
    ) -> None:
        super().__init__(
            http,
            provider=provider,
            url=chat_completions_url(base_url),
            model=model,
            api_key=api_key,
            timeout=timeout,
            secrets=secrets,
        )
        self._prompt = prompt
        self._max_tokens = max_tokens
        self._max_chunk_seconds = max_chunk_seconds

    async def transcribe(
        self,
        clip: AudioClip,
        *,
        language: str | None = None,
        prompt: str | None = None,
    ) -> Transcript:
        """Transcribe `clip`; raises `JobFailure` on the first failed request.

        The result has one segment per request (chunk) and, when the audio
        was split, `chunks` with each chunk's `start`, `end`, `duration_ms`.
        """
        text_part = instruction(self._prompt, language=language, context=prompt)
        segments: list[dict[str, Any]] = []
        chunks: list[dict[str, Any]] | None = None
        model = self.model
        if self._max_chunk_seconds is None:
            data, audio_format = whole_file(clip)
            content, model = await self._complete(text_part, data, audio_format)
            segments.append({"start": 0.0, "end": round(clip.duration, 3), "text": content})
        else:
            chunks = []
            for piece in clip.chunks(self._max_chunk_seconds):
                started = time.monotonic()
                content, model = await self._complete(text_part, piece.to_wav(), "wav")
                start = round(piece.offset, 3)
                end = round(piece.offset + piece.duration, 3)
                chunks.append(
                    {
                        "start": start,
                        "end": end,
                        "duration_ms": round((time.monotonic() - started) * 1000),
                    }
                )
                segments.append({"start": start, "end": end, "text": content})
        text = " ".join(s["text"] for s in segments if s["text"])
        return Transcript(
            text=text, segments=segments, model=model, language=language, chunks=chunks
        )

    async def _complete(self, text: str, audio: bytes, audio_format: str) -> tuple[str, str]:
        payload = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": self._max_tokens,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": text},
                        {
                            "type": "input_audio",
                            "input_audio": {
                                "data": base64.b64encode(audio).decode("ascii"),
                                "format": audio_format,
                            },
                        },
                    ],
                }
            ],
        }
        body, response = await self._post(json=payload)
        try:
            message = body["choices"][0]["message"]
            content = message.get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise self._malformed("no choices[0].message in the answer", response) from None
        if isinstance(content, list):
            # Some servers answer content parts: keep their text.
            content = "".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise self._malformed("choices[0].message.content is not text", response)
        model = body.get("model") if isinstance(body.get("model"), str) else None
        return content.strip(), model or self.model


def whole_file(clip: AudioClip) -> tuple[bytes, str]:
    """The file for a provider that takes the whole clip: the caller's own bytes when
    they are PCM WAV or MP3 (`AudioClip.passthrough_format`), else the clip as WAV;
    and its format (`wav` or `mp3`).
    """
    passthrough = clip.passthrough_format
    if passthrough is not None and clip.source:
        return clip.source, passthrough
    return clip.to_wav(), "wav"
