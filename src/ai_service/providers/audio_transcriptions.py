"""Transcription through vLLM's OpenAI-style `POST /v1/audio/transcriptions`.

Voxtral served by vLLM answers this endpoint as well as chat with
`input_audio` (`audio_llm`); `VOXTRAL_API=transcriptions` selects it:

    POST {base}/v1/audio/transcriptions        (multipart/form-data)
      file             the audio (`audio.wav` or `audio.mp3`, as the chat path sends it)
      model            VOXTRAL_MODEL
      language         the job's language, when given (ISO 639-1)
      prompt           the job's prompt, when given
      response_format  json
      temperature      0
    200 {"text": "...", "usage": {"type": "duration", "seconds": 75}}

Errors come in vLLM's usual shapes (`{"error": {"message", "type", "param",
"code"}}`): 400 for an unsupported language, an unreadable file or one above
the server's `VLLM_MAX_AUDIO_CLIP_FILESIZE_MB` (25 MB by default), 404 for a
model it does not serve; they map to categories as every provider call does
(`http_errors`). The server splits long audio itself, so the whole file goes
in one request, and the transcript has the chat path's shape: one segment
from 0 to the clip's end, the configured model, the requested language (the
json answer names neither model nor language).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from ai_service.providers import http_errors
from ai_service.providers.audio import AudioClip, Transcript
from ai_service.providers.audio_llm import whole_file
from ai_service.urls import join_url, url_path

_CONTENT_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg"}


def transcriptions_url(base_url: str) -> str:
    """`{base}/v1/audio/transcriptions`, whether or not `base_url` ends with `/v1`.

    A query string of `base_url` stays at the end (`join_url`).
    """
    path = url_path(base_url)
    if path.endswith("/audio/transcriptions"):
        return join_url(base_url, "")
    return join_url(
        base_url, "/audio/transcriptions" if path.endswith("/v1") else "/v1/audio/transcriptions"
    )


class AudioTranscriptionsClient:
    """Transcribes audio with one model behind an OpenAI-style transcription endpoint.

    `provider` names it in results and error messages; `api_key`, when set,
    goes only into the `Authorization` header (and is masked in messages);
    `timeout` bounds the request.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        provider: str,
        base_url: str,
        model: str,
        api_key: str | None,
        timeout: float,
        secrets: Sequence[str | None] = (),
    ) -> None:
        self._http = http
        self.provider = provider
        self.model = model
        self._url = transcriptions_url(base_url)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._secrets = (api_key, *secrets)

    async def transcribe(
        self,
        clip: AudioClip,
        *,
        language: str | None = None,
        prompt: str | None = None,
    ) -> Transcript:
        """Transcribe `clip` in one request; raises `JobFailure` when it fails."""
        data, audio_format = whole_file(clip)
        fields = {"model": self.model, "response_format": "json", "temperature": "0"}
        if language:
            fields["language"] = language
        if prompt:
            fields["prompt"] = prompt
        files = {
            "file": (f"audio.{audio_format}", data, _CONTENT_TYPES.get(audio_format, "audio/wav"))
        }
        try:
            response = await self._http.post(
                self._url, data=fields, files=files, headers=self._headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            raise http_errors.failure_from_exception(
                self.provider, exc, secrets=self._secrets
            ) from None
        if not response.is_success:
            raise http_errors.failure_from_response(self.provider, response, secrets=self._secrets)
        text = self._text(response)
        return Transcript(
            text=text,
            segments=[{"start": 0.0, "end": round(clip.duration, 3), "text": text}],
            model=self.model,
            language=language,
        )

    def _text(self, response: httpx.Response) -> str:
        try:
            body: Any = response.json()
        except (ValueError, UnicodeDecodeError):
            raise http_errors.malformed_response(
                self.provider, "the body is not JSON", response, secrets=self._secrets
            ) from None
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise http_errors.malformed_response(
                self.provider, "no `text` string in the answer", response, secrets=self._secrets
            )
        return text.strip()
