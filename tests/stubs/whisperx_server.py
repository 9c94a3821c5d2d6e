"""A whisper-asr-webservice (`ASR_ENGINE=whisperx`) stub for tests.

    with WhisperXStub("wx-a", segment_seconds=10.0) as wx:
        wx.base_url                       # http://127.0.0.1:PORT (the WHISPERX_URL)
        wx.fail_next("server_error")      # kinds: FAILURES
        wx.requests_received, wx.successes, wx.requests[-1].query, .headers

Like the real server: `POST /asr` takes the multipart field `audio_file` and
query parameters (`output`, `task`, `language`, `initial_prompt`, `encode`,
`diarize`, `min_speakers`, `max_speakers`); the JSON answer is served as
`text/plain` with the header `Asr-Engine: whisperx`; `GET /` redirects to
`/docs`, which answers 200; an upload that does not decode answers 500.

The transcript: one segment per `segment_seconds` of the audio received, text
`"Segment <i> from <name>."` (so a test sees which instance answered). Each
segment has words; the word holding the number has no `start`/`end`/`score`
(as when alignment fails). With `diarize=true` segments alternate
`SPEAKER_00` / `SPEAKER_01`; without it there is no `speaker` key.

`variant="asr-service"` imitates whisperx-asr-service instead: top-level
`text` is a list of strings and `GET /health` exists.

Failure kinds (`FAILURES`): `server_error` (500, text body as FastAPI
sends it), `unavailable` (503), `garbage` (200 with an HTML body), `hang`
(no answer for `hang_seconds`, then 504).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.stubs import StubServer, parse_multipart
from tests.stubs.openai_server import audio_seconds

FAILURES = ("server_error", "unavailable", "garbage", "hang")


@dataclass
class RecordedAsr:
    """What the stub saw of one `/asr` request."""

    query: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    content_type: str | None = None
    size: int = 0
    audio_seconds: float | None = None
    outcome: str = "pending"


class WhisperXStub(StubServer):
    """One WhisperX instance; `name` appears in every segment's text."""

    FAILURES = FAILURES

    def __init__(
        self,
        name: str = "whisperx",
        *,
        variant: str = "webservice",
        segment_seconds: float = 10.0,
        language: str = "en",
        latency: float = 0.0,
        hang_seconds: float = 30.0,
    ) -> None:
        super().__init__()
        if variant not in ("webservice", "asr-service"):
            raise ValueError("variant must be 'webservice' or 'asr-service'")
        self.name = name
        self.variant = variant
        self.segment_seconds = segment_seconds
        self.language = language
        self.latency = latency
        self.hang_seconds = hang_seconds
        self.reset()

    def reset(self) -> None:
        """Clear counters, recorded requests and injected failures."""
        with self._lock:
            self.requests_received = 0
            self.successes = 0
            self.requests: list[RecordedAsr] = []
            self._clear_failures()

    def build_app(self) -> Starlette:
        async def root(request: Request) -> Response:
            return RedirectResponse("/docs", status_code=307)

        async def docs(request: Request) -> Response:
            return Response(
                "<html><title>Whisper Asr Webservice</title></html>", media_type="text/html"
            )

        async def health(request: Request) -> Response:
            return JSONResponse({"status": "ok"})

        async def asr(request: Request) -> Response:
            raw = await request.body()
            recorded = RecordedAsr(query=dict(request.query_params), headers=dict(request.headers))
            with self._lock:
                self.requests_received += 1
                self.requests.append(recorded)
                failure = self._next_failure()
            if self.latency:
                await self.hang(self.latency)
            if failure is not None:
                recorded.outcome = failure
                return await self._fail(failure)
            try:
                part = parse_multipart(raw, request.headers.get("content-type", ""))["audio_file"]
            except (ValueError, KeyError):
                recorded.outcome = "unprocessable"
                detail = [{"loc": ["body", "audio_file"], "msg": "Field required"}]
                return JSONResponse({"detail": detail}, status_code=422)
            recorded.filename = part.filename
            recorded.content_type = part.content_type
            recorded.size = len(part.data)
            try:
                seconds = audio_seconds(part.data)
            except Exception:  # the real server lets ffmpeg errors become a 500
                recorded.outcome = "undecodable"
                return Response("Internal Server Error", status_code=500, media_type="text/plain")
            recorded.audio_seconds = seconds
            body = self._transcript(seconds, recorded.query)
            recorded.outcome = "ok"
            with self._lock:
                self.successes += 1
            return _text_plain_json(body)

        routes = [
            Route("/", root, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
            Route("/asr", asr, methods=["POST"]),
        ]
        if self.variant == "asr-service":
            routes.append(Route("/health", health, methods=["GET"]))
        return Starlette(routes=routes)

    def _transcript(self, seconds: float, query: dict[str, str]) -> dict[str, Any]:
        diarize = query.get("diarize") == "true"
        segments: list[dict[str, Any]] = []
        count = max(1, math.ceil(seconds / self.segment_seconds))
        for index in range(count):
            start = round(index * self.segment_seconds, 3)
            end = round(min(seconds, (index + 1) * self.segment_seconds), 3)
            third = (end - start) / 3
            words: list[dict[str, Any]] = [
                {"word": "Segment", "start": start, "end": round(start + third, 3), "score": 0.91},
                {"word": f"{index}"},  # a number: alignment could not place it
                {
                    "word": f"from {self.name}.",
                    "start": round(start + 2 * third, 3),
                    "end": end,
                    "score": 0.84,
                },
            ]
            segment: dict[str, Any] = {
                "start": start,
                "end": end,
                "text": f" Segment {index} from {self.name}.",
                "words": words,
                "avg_logprob": -0.21,
            }
            if diarize:
                segment["speaker"] = f"SPEAKER_0{index % 2}"
                for word in words:
                    if "start" in word:
                        word["speaker"] = segment["speaker"]
            segments.append(segment)
        body: dict[str, Any] = {
            "segments": segments,
            "word_segments": [w for s in segments for w in s["words"]],
            "language": query.get("language") or self.language,
        }
        if self.variant == "asr-service":
            body["text"] = [s["text"] for s in segments]
        return body

    async def _fail(self, kind: str) -> Response:
        if kind == "server_error":
            return Response("Internal Server Error", status_code=500, media_type="text/plain")
        if kind == "unavailable":
            return Response("Service Unavailable", status_code=503, media_type="text/plain")
        if kind == "garbage":
            return Response(
                "<html><body>502 Bad Gateway</body></html>",
                media_type="text/plain",
                headers={"Asr-Engine": "whisperx"},
            )
        await self.hang(self.hang_seconds)
        return Response(b"", status_code=504)


def _text_plain_json(body: dict[str, Any]) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False),
        media_type="text/plain",
        headers={"Asr-Engine": "whisperx"},
    )
