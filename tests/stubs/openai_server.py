"""A vLLM-like OpenAI-compatible server for tests (chat completions, audio parts).

    stub = OpenAIStub(
        models=["qwen2.5-14b"],   # None: accept any model; /v1/models lists "stub-model"
        api_key="k",              # None: no auth; else 401 {"error": "Unauthorized"} (vLLM)
        latency=0.05,             # seconds each request spends "on the GPU"
        max_concurrency=2,        # requests beyond this wait for a slot (queue)
        reply=None,               # Callable[[RecordedRequest], str] for custom content
    )
    with stub:
        stub.base_url                      # http://127.0.0.1:PORT  (add /v1 yourself or not)
        stub.fail_next("rate_limit", times=2)
        stub.fail_always("server_error")   # None to clear

Failure kinds (`FAILURES`): `rate_limit` (429 + Retry-After: 1), `server_error`
(500), `unavailable` (503, empty body), `unauthorized` (401), `bad_request`
(400, current `{"error": {...}}` shape), `flat_error` (400, older vLLM flat
`{"object": "error", "message": ...}` shape), `not_found` (404, unknown
model), `malformed` (200 with a body that is not JSON), `hang` (no answer
for `hang_seconds`, then 504; use it with a client timeout shorter than that).
Queued failures (`fail_next`) are consumed in arrival order, before
`fail_always`.

Endpoints: `POST /v1/chat/completions`, `POST /v1/audio/transcriptions`,
`GET /v1/models`, `GET /health`.

`/v1/audio/transcriptions` answers like vLLM serving Voxtral: multipart
fields `file` (required), `model`, `language`, `prompt`, `response_format`
(`json` default: `{"text": ..., "usage": {"type": "duration", "seconds":
<int>}}`; `text`: the text as `text/plain`), `temperature`. Errors in vLLM's
shape: no `file` 400, a file above `max_file_mb` (vLLM's
`VLLM_MAX_AUDIO_CLIP_FILESIZE_MB`, 25) 400 "Maximum file size exceeded",
undecodable audio 400 "Invalid or unsupported audio file.", an unknown model
404. The recorded request's `route` is `transcriptions`, its `body` the form
fields; the default text is `"transcript of 30.0 s"`. Latency, failures and
the counters are shared with chat.

Default answers: for a request with audio parts, `"chunk of 30.0 s"` (the
duration of each audio part received, joined by "; "); for text, `"echo: <last
user text>"`, or `{"echo": "<last user text>"}` when `response_format` asks
for JSON.

Counters: `requests_received` (every chat request, failed ones included),
`successes` (200 answers with a completion), `deliveries` (Counter: marker ->
200 answers, where the marker is the first `job:<id>` tag in the user text;
use it to assert each job's work was delivered exactly once), `in_flight`,
`max_in_flight`, `requests` (a `RecordedRequest` per chat request, in arrival
order). `reset()` clears them all and the failure queue.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import math
import re
import threading
import time
import wave
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.stubs import StubServer, parse_multipart

FAILURES = (
    "rate_limit",
    "server_error",
    "unavailable",
    "unauthorized",
    "bad_request",
    "flat_error",
    "not_found",
    "malformed",
    "hang",
)

_MARKER = re.compile(r"job:([\w.\-]+)")


@dataclass
class RecordedRequest:
    """What the stub saw of one chat request."""

    headers: dict[str, str]
    body: dict[str, Any]
    query: dict[str, str] = field(default_factory=dict)
    text: str = ""  # the user messages' text, joined with newlines
    audio_seconds: list[float] = field(default_factory=list)  # one per audio part
    audio_formats: list[str] = field(default_factory=list)
    marker: str | None = None
    outcome: str = "pending"  # "ok" or the failure kind
    route: str = "chat"  # or "transcriptions" (POST /v1/audio/transcriptions)
    filename: str | None = None  # the uploaded file's name (transcriptions)


def audio_seconds(data: bytes) -> float:
    """Duration of an audio file (WAV with the stdlib, anything else with PyAV)."""
    if data[:4] == b"RIFF":
        with wave.open(io.BytesIO(data)) as wav:
            return float(wav.getnframes() / wav.getframerate())
    import av  # only needed for compressed formats

    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        samples = sum(int(frame.samples) for frame in container.decode(stream))
        return float(samples / (stream.rate or 1))


class OpenAIStub(StubServer):
    """OpenAI-compatible chat server with latency, queueing and failure injection."""

    FAILURES = FAILURES

    def __init__(
        self,
        *,
        models: Sequence[str] | None = None,
        api_key: str | None = None,
        latency: float = 0.0,
        max_concurrency: int | None = None,
        reply: Callable[[RecordedRequest], str] | None = None,
        hang_seconds: float = 30.0,
        max_file_mb: float = 25.0,
        port: int = 0,
    ) -> None:
        super().__init__(port)
        self.max_file_mb = max_file_mb
        self.models = list(models) if models else None
        self.api_key = api_key
        self.latency = latency
        self.max_concurrency = max_concurrency
        self.reply = reply
        self.hang_seconds = hang_seconds
        self._ids = itertools.count(1)
        self.reset()

    # -- test API -----------------------------------------------------------

    def reset(self) -> None:
        """Clear counters, recorded requests and injected failures."""
        with self._lock:
            self.requests_received = 0
            self.model_requests = 0  # GET /v1/models: the status probes and breakers
            self.successes = 0
            self.deliveries: Counter[str] = Counter()
            self.in_flight = 0
            self.max_in_flight = 0
            self.requests: list[RecordedRequest] = []
            self._clear_failures()

    # -- server -------------------------------------------------------------

    def build_app(self) -> Starlette:
        # Created here so they belong to the server thread's event loop.
        slots = asyncio.Semaphore(self.max_concurrency) if self.max_concurrency else None

        async def models(request: Request) -> Response:
            with self._lock:
                self.model_requests += 1
            ids = self.models or ["stub-model"]
            data = [
                {
                    "id": model,
                    "object": "model",
                    "created": 0,
                    "owned_by": "vllm",
                    "root": model,
                    "max_model_len": 32768,
                }
                for model in ids
            ]
            return JSONResponse({"object": "list", "data": data})

        async def health(request: Request) -> Response:
            return Response(b"", status_code=200)

        async def stats(request: Request) -> Response:
            # For a stub running in another process (benchmarks, `make run` demo).
            with self._lock:
                deliveries = dict(self.deliveries)
                return JSONResponse(
                    {
                        "requests_received": self.requests_received,
                        "successes": self.successes,
                        "max_in_flight": self.max_in_flight,
                        "deliveries": deliveries,
                    }
                )

        async def chat(request: Request) -> Response:
            raw = await request.body()
            with self._lock:
                self.requests_received += 1
                failure = self._next_failure()
            recorded = RecordedRequest(
                headers=dict(request.headers), body={}, query=dict(request.query_params)
            )
            with self._lock:
                self.requests.append(recorded)
            expected = f"Bearer {self.api_key}"
            if self.api_key is not None and request.headers.get("authorization") != expected:
                recorded.outcome = "unauthorized"
                return JSONResponse({"error": "Unauthorized"}, status_code=401)
            try:
                body = json.loads(raw)
                if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                    raise ValueError("messages must be a list")
                recorded.body = body
                _read_messages(body["messages"], recorded)
            except (ValueError, TypeError, KeyError, AttributeError, wave.Error, EOFError) as exc:
                recorded.outcome = "bad_request"
                return _error(400, f"invalid request: {exc}", "BadRequestError")
            if self.models is not None and body.get("model") not in self.models:
                recorded.outcome = "not_found"
                return _error(
                    404, f"The model `{body.get('model')}` does not exist.", "NotFoundError"
                )
            if slots is not None:
                async with slots:
                    return await self._process(recorded, failure)
            return await self._process(recorded, failure)

        async def transcriptions(request: Request) -> Response:
            raw = await request.body()
            with self._lock:
                self.requests_received += 1
                failure = self._next_failure()
            recorded = RecordedRequest(
                headers=dict(request.headers),
                body={},
                query=dict(request.query_params),
                route="transcriptions",
            )
            with self._lock:
                self.requests.append(recorded)
            expected = f"Bearer {self.api_key}"
            if self.api_key is not None and request.headers.get("authorization") != expected:
                recorded.outcome = "unauthorized"
                return JSONResponse({"error": "Unauthorized"}, status_code=401)
            try:
                parts = parse_multipart(raw, request.headers.get("content-type", ""))
            except ValueError as exc:
                recorded.outcome = "bad_request"
                return _error(400, f"invalid request: {exc}", "BadRequestError")
            recorded.body = {
                name: part.data.decode("utf-8", "replace")
                for name, part in parts.items()
                if part.filename is None
            }
            upload = parts.get("file")
            if upload is None or upload.filename is None:
                recorded.outcome = "bad_request"
                return _error(400, "Field required: file", "BadRequestError")
            recorded.filename = upload.filename
            model = recorded.body.get("model")
            if self.models is not None and model not in self.models:
                recorded.outcome = "not_found"
                return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
            if len(upload.data) / 1024**2 > self.max_file_mb:
                recorded.outcome = "too_large"
                return _error(400, "Maximum file size exceeded", "BadRequestError")
            try:
                recorded.audio_seconds.append(audio_seconds(upload.data))
            except Exception:  # vLLM: librosa cannot read it
                recorded.outcome = "undecodable"
                return _error(400, "Invalid or unsupported audio file.", "BadRequestError")
            recorded.audio_formats.append(upload.filename.rpartition(".")[2])
            recorded.text = recorded.body.get("prompt", "")
            if slots is not None:
                async with slots:
                    return await self._process(recorded, failure)
            return await self._process(recorded, failure)

        return Starlette(
            routes=[
                Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
                Route("/v1/models", models, methods=["GET"]),
                Route("/health", health, methods=["GET"]),
                Route("/stub/stats", stats, methods=["GET"]),
            ]
        )

    async def _process(self, recorded: RecordedRequest, failure: str | None) -> Response:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                # A plain sleep: waking 64 sleepers every few ms would make the stub,
                # not the client under test, the bottleneck of a benchmark.
                await asyncio.sleep(self.latency)
            if failure is not None:
                recorded.outcome = failure
                return await self._fail(failure)
            content = self._content(recorded)
            body = recorded.body
            if recorded.route == "transcriptions":
                return self._transcription(recorded, content)
            prompt_tokens = max(1, len(recorded.text) // 4) + 50 * len(recorded.audio_seconds)
            completion_tokens = max(1, len(content) // 4)
            answer = {
                "id": f"chatcmpl-stub-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or "stub-model",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
            recorded.outcome = "ok"
            with self._lock:
                self.successes += 1
                if recorded.marker is not None:
                    self.deliveries[recorded.marker] += 1
            return JSONResponse(answer)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _transcription(self, recorded: RecordedRequest, text: str) -> Response:
        """vLLM's answer to `/v1/audio/transcriptions` (json, or text when asked)."""
        recorded.outcome = "ok"
        with self._lock:
            self.successes += 1
        if recorded.body.get("response_format") == "text":
            return Response(text, media_type="text/plain")
        seconds = math.ceil(sum(recorded.audio_seconds))
        return JSONResponse({"text": text, "usage": {"type": "duration", "seconds": seconds}})

    def _content(self, recorded: RecordedRequest) -> str:
        if self.reply is not None:
            return self.reply(recorded)
        if recorded.route == "transcriptions":
            return f"transcript of {recorded.audio_seconds[0]:.1f} s"
        if recorded.audio_seconds:
            return "; ".join(f"chunk of {seconds:.1f} s" for seconds in recorded.audio_seconds)
        last = recorded.text.rsplit("\n", 1)[-1] if recorded.text else ""
        response_format = recorded.body.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") in (
            "json_object",
            "json_schema",
        ):
            return json.dumps({"echo": last})
        return f"echo: {last}"

    async def _fail(self, kind: str) -> Response:
        if kind == "rate_limit":
            return _error(429, "Too many requests, retry later", "RateLimitError", retry_after=1)
        if kind == "server_error":
            return _error(500, "Internal server error: EngineCore died", "InternalServerError")
        if kind == "unavailable":
            return Response(b"", status_code=503)
        if kind == "unauthorized":
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        if kind == "bad_request":
            return _error(400, "max_tokens is too large for this model", "BadRequestError")
        if kind == "flat_error":
            return JSONResponse(
                {
                    "object": "error",
                    "message": "This model's maximum context length is 4096 tokens.",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                },
                status_code=400,
            )
        if kind == "not_found":
            return _error(404, "The model `missing` does not exist.", "NotFoundError")
        if kind == "malformed":
            return Response(b'{"choices": [ this is not json', media_type="application/json")
        # hang: hold the request, then give up like a proxy would.
        await self.hang(self.hang_seconds)
        return Response(b"", status_code=504)


def _error(status: int, message: str, kind: str, *, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": status}},
        status_code=status,
        headers=headers,
    )


def _read_messages(messages: list[Any], recorded: RecordedRequest) -> None:
    """Collect user text, audio durations and the `job:` marker of a request."""
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            raise ValueError("each message must be an object")
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise ValueError("content must be a string or a list of parts")
        for part in parts:
            kind = part.get("type")
            if kind == "text" and message.get("role") == "user":
                texts.append(str(part["text"]))
            elif kind == "input_audio":
                audio = part["input_audio"]
                data = base64.b64decode(audio["data"], validate=True)
                recorded.audio_formats.append(str(audio.get("format")))
                recorded.audio_seconds.append(audio_seconds(data))
            elif kind == "audio_url":
                url = str(part["audio_url"]["url"])
                header, _, encoded = url.partition(",")
                if not header.startswith("data:") or ";base64" not in header:
                    raise ValueError("the stub only reads base64 data: audio URLs")
                recorded.audio_formats.append(header[len("data:audio/") :].split(";")[0])
                recorded.audio_seconds.append(audio_seconds(base64.b64decode(encoded)))
    recorded.text = "\n".join(texts)
    match = _MARKER.search(recorded.text)
    recorded.marker = match.group(1) if match else None


def main() -> None:
    """Serve the stub on its own: `python -m tests.stubs.openai_server --port 8000`."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="A vLLM-like OpenAI-compatible stub.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", action="append", help="served model (repeatable)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--max-concurrency", type=int, default=None)
    args = parser.parse_args()
    stub = OpenAIStub(
        models=args.model or ["qwen2.5-14b"],
        latency=args.latency,
        max_concurrency=args.max_concurrency,
        port=args.port,
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    with stub:
        print(f"OpenAI-compatible stub on {stub.base_url} (models {stub.models})", flush=True)
        stopped.wait()


if __name__ == "__main__":
    main()
