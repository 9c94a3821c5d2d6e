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

import httpx

from ai_service.providers.audio import AudioClip, Transcript
from ai_service.providers.audio_llm import AudioEndpoint, openai_endpoint, whole_file

_CONTENT_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg"}


def transcriptions_url(base_url: str) -> str:
    """`{base}/v1/audio/transcriptions` (see `audio_llm.openai_endpoint`)."""
    return openai_endpoint(base_url, "/audio/transcriptions")


class AudioTranscriptionsClient(AudioEndpoint):
    """Transcribes audio with one model behind an OpenAI-style transcription endpoint
    (`AudioEndpoint`)."""

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
        super().__init__(
            http,
            provider=provider,
            url=transcriptions_url(base_url),
            model=model,
            api_key=api_key,
            timeout=timeout,
            secrets=secrets,
        )

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
        body, response = await self._post(data=fields, files=files)
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise self._malformed("no `text` string in the answer", response)
        text = text.strip()
        return Transcript(
            text=text,
            segments=[{"start": 0.0, "end": round(clip.duration, 3), "text": text}],
            model=self.model,
            language=language,
        )
