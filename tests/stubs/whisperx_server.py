"""A whisper-asr-webservice stub for tests, answering like the measured server.

    with WhisperXStub("wx-a", segment_seconds=10.0) as wx:
        wx.base_url                       # http://127.0.0.1:PORT (the WHISPERX_URL)
        wx.fail_next("server_error")      # kinds: FAILURES
        wx.requests_received, wx.successes, wx.requests[-1].query, .headers

Like the real server (`shared/AI-SERVERS.md`, "whisper-asr-webservice as
measured"): `POST /asr` takes the multipart field `audio_file` and query
parameters (`output`, `task`, `language`, `initial_prompt`, `encode`,
`vad_filter`, `word_timestamps`, `diarize`, `min_speakers`, `max_speakers`);
the JSON answer is served as `text/plain; charset=utf-8`, chunked (no
Content-Length), with the header `Asr-Engine: <engine>`; `GET /` redirects
to `/docs`, which answers 200; there is no `/health`.

The upload goes through "ffmpeg from a pipe": a WAV the strict RIFF reader
refuses (`data` before `fmt `) or anything undecodable answers 500
`text/plain` "Internal Server Error"; an MP4/M4A whose `moov` index comes
after `mdat` (ffmpeg's default) cannot be read from a pipe and answers 200
with `{"language": ..., "segments": [], "text": ""}`.

The transcript: where the audio has sound (frames of 0.1 s whose peak reaches
about -30 dBFS), one segment per `segment_seconds`, text `"Segment <i> from
<name>."` (so a test sees which instance answered). Without `vad_filter=true`
the timings are Whisper's: the first segment starts at 0.0 whatever silence
comes before the speech, and silence alone gives a hallucinated `" You"`
(`no_speech_prob` 0.95). With `vad_filter=true` segments sit where the sound
is, and silence gives no segment. Timings carry float noise
(`10.000000000000002`); `language` echoes the request unchecked (`xx` too).

`engine="faster_whisper"` (what was measured): segments have `id` (1-based),
`seek`, `tokens`, `avg_logprob`, `compression_ratio`, `no_speech_prob`,
`temperature`, and `words` null unless `word_timestamps=true` (then
`{start, end, word, probability}` with a leading space); `diarize` is ignored.
`engine="whisperx"` (default, the deployment's): words always, with `score`;
the word holding the number has no `start`/`end`/`score` (as when alignment
fails); with `diarize=true` segments alternate `SPEAKER_00` / `SPEAKER_01`,
unless `hf_token=False` (whisperx without `HF_TOKEN` ignores `diarize`).

One request at a time, like the real server: it runs the model in its event
loop's thread, so while a transcription runs (`latency` seconds, default 0)
the loop is blocked: other `/asr` requests queue and even `GET /docs` waits
(the connection is accepted, no answer comes). `busy` tells whether it is
transcribing now; `stop()` still ends the wait at once;
`start_transcription(stub)` keeps it busy from a test.

`variant="asr-service"` imitates whisperx-asr-service instead: top-level
`text` is a list of strings and `GET /health` exists.

Failure kinds (`FAILURES`): `server_error` (500, text body as FastAPI
sends it), `unavailable` (503), `garbage` (200 with an HTML body), `hang`
(no answer for `hang_seconds`, then 504), `empty` (200 with no segments and
empty text, whatever the audio: what an unseekable upload gets).
"""

from __future__ import annotations

import array
import asyncio
import io
import json
import math
import struct
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.stubs import StubServer, parse_multipart, sine_wav

FAILURES = ("server_error", "unavailable", "garbage", "hang", "empty")
ENGINES = ("whisperx", "faster_whisper")
# Sound detection: 0.1 s frames, peak of about -30 dBFS.
FRAME_SECONDS = 0.1
VOICED_PEAK = 1000
HALLUCINATION_SECONDS = 2.0


@dataclass
class RecordedAsr:
    """What the stub saw of one `/asr` request.

    `sample_rate`/`channels` describe a WAV upload (None for other formats).
    """

    query: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    content_type: str | None = None
    size: int = 0
    audio_seconds: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    outcome: str = "pending"


class Undecodable(Exception):
    """What ffmpeg reading from a pipe cannot decode (the server answers 500)."""


@dataclass
class Decoded:
    """The upload as the server's ffmpeg pipe sees it: mono s16 samples."""

    samples: array.array[int]
    rate: int
    wav_rate: int | None = None
    wav_channels: int | None = None

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate if self.rate else 0.0


class WhisperXStub(StubServer):
    """One WhisperX instance; `name` appears in every segment's text."""

    FAILURES = FAILURES

    def __init__(
        self,
        name: str = "whisperx",
        *,
        variant: str = "webservice",
        engine: str = "whisperx",
        hf_token: bool = True,
        segment_seconds: float = 10.0,
        language: str = "en",
        latency: float = 0.0,
        hang_seconds: float = 30.0,
    ) -> None:
        super().__init__()
        if variant not in ("webservice", "asr-service"):
            raise ValueError("variant must be 'webservice' or 'asr-service'")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}")
        self.name = name
        self.variant = variant
        self.engine = engine
        self.hf_token = hf_token
        self.segment_seconds = segment_seconds
        self.language = language
        self.latency = latency
        self.hang_seconds = hang_seconds
        self.busy = False  # a transcription is blocking the event loop now
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
            if failure is not None and failure != "empty":
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
            language = recorded.query.get("language") or self.language  # echoed unchecked
            filename = f"{part.filename or 'audio'}.json"
            if failure == "empty" or _moov_after_mdat(part.data):
                # ffmpeg cannot seek a pipe: "partial file", exit 0, no samples.
                recorded.outcome = "empty"
                return _text_plain_json(
                    {"language": language, "segments": [], "text": ""}, self.engine, filename
                )
            try:
                decoded = _decode(part.data)
            except Exception:  # the real server lets ffmpeg errors become a 500
                recorded.outcome = "undecodable"
                return Response("Internal Server Error", status_code=500, media_type="text/plain")
            recorded.audio_seconds = decoded.seconds
            recorded.sample_rate, recorded.channels = decoded.wav_rate, decoded.wav_channels
            self._transcribing(self.latency)
            body = self._transcript(decoded, recorded.query, language)
            recorded.outcome = "ok"
            with self._lock:
                self.successes += 1
            return _text_plain_json(body, self.engine, filename)

        routes = [
            Route("/", root, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
            Route("/asr", asr, methods=["POST"]),
        ]
        if self.variant == "asr-service":
            routes.append(Route("/health", health, methods=["GET"]))
        return Starlette(routes=routes)

    def _transcribing(self, seconds: float) -> None:
        """Block the event loop for `seconds`, as the model does in the real server.

        A blocking wait on purpose (not `await`): nothing else is served meanwhile.
        """
        if seconds <= 0:
            return
        self.busy = True
        try:
            self._stopping.wait(seconds)
        finally:
            self.busy = False

    def _spans(self, decoded: Decoded, vad: bool) -> list[tuple[float, float]]:
        """Where segments go: the sound regions (VAD), or 0.0 to the end of the sound."""
        regions = _sound_regions(decoded)
        if not regions:
            return []
        if vad:
            return regions
        return [(0.0, regions[-1][1])]  # Whisper without VAD: timings from the start

    def _transcript(self, decoded: Decoded, query: dict[str, str], language: str) -> dict[str, Any]:
        vad = query.get("vad_filter") == "true"
        spans = self._spans(decoded, vad)
        pieces: list[tuple[float, float]] = []
        for begin, end in spans:
            count = max(1, math.ceil(round((end - begin) / self.segment_seconds, 6)))
            for n in range(count):
                start = begin + n * self.segment_seconds
                pieces.append((start, min(end, start + self.segment_seconds)))
        segments: list[dict[str, Any]] = []
        if self.engine == "faster_whisper":
            if not pieces and not vad:
                segments.append(self._hallucination(decoded))
            for index, (start, end) in enumerate(pieces):
                segments.append(self._fw_segment(index, start, end, query))
        else:
            diarize = query.get("diarize") == "true" and self.hf_token
            for index, (start, end) in enumerate(pieces):
                segments.append(self._wx_segment(index, start, end, diarize))
        body: dict[str, Any] = {"language": language, "segments": segments}
        if self.engine == "whisperx":
            body["word_segments"] = [w for s in segments for w in s["words"]]
        if self.variant == "asr-service":
            body["text"] = [s["text"] for s in segments]
        else:
            body["text"] = "".join(s["text"] for s in segments)
        if self.engine == "faster_whisper":  # the measured key order
            body = {"language": body["language"], "segments": segments, "text": body["text"]}
        return body

    def _hallucination(self, decoded: Decoded) -> dict[str, Any]:
        end = min(decoded.seconds, HALLUCINATION_SECONDS)
        return {
            "id": 1,
            "seek": 0,
            "start": 0.0,
            "end": _noisy(end),
            "text": " You",
            "tokens": [50363, 921, 50413],
            "avg_logprob": -0.6931471805599453,
            "compression_ratio": 0.3333333333333333,
            "no_speech_prob": 0.9512493014335632,
            "words": None,
            "temperature": 0.0,
        }

    def _fw_segment(
        self, index: int, start: float, end: float, query: dict[str, str]
    ) -> dict[str, Any]:
        text = f" Segment {index} from {self.name}."
        words = None
        if query.get("word_timestamps") == "true":
            step = (end - start) / 4
            words = [
                {"start": _noisy(start + n * step), "end": _noisy(start + (n + 1) * step),
                 "word": f" {word}", "probability": 0.8123456789 - n / 10}
                for n, word in enumerate(text.split())
            ]  # fmt: skip
        return {
            "id": index + 1,
            "seek": int(start * 100) // 3000 * 3000,
            "start": _noisy(start),
            "end": _noisy(end),
            "text": text,
            "tokens": [50363, 1000 + index, 50413],
            "avg_logprob": -0.187746338617234,
            "compression_ratio": 1.523076923076923,
            "no_speech_prob": 0.05558623671531677,
            "words": words,
            "temperature": 0.0,
        }

    def _wx_segment(self, index: int, start: float, end: float, diarize: bool) -> dict[str, Any]:
        third = (end - start) / 3
        words: list[dict[str, Any]] = [
            {
                "word": "Segment",
                "start": _noisy(start),
                "end": _noisy(start + third),
                "score": 0.91,
            },
            {"word": f"{index}"},  # a number: alignment could not place it
            {
                "word": f"from {self.name}.",
                "start": _noisy(start + 2 * third),
                "end": _noisy(end),
                "score": 0.84,
            },
        ]
        segment: dict[str, Any] = {
            "start": _noisy(start),
            "end": _noisy(end),
            "text": f" Segment {index} from {self.name}.",
            "words": words,
            "avg_logprob": -0.21,
        }
        if diarize:
            segment["speaker"] = f"SPEAKER_0{index % 2}"
            for word in words:
                if "start" in word:
                    word["speaker"] = segment["speaker"]
        return segment

    async def _fail(self, kind: str) -> Response:
        if kind == "server_error":
            return Response("Internal Server Error", status_code=500, media_type="text/plain")
        if kind == "unavailable":
            return Response("Service Unavailable", status_code=503, media_type="text/plain")
        if kind == "garbage":
            return Response(
                "<html><body>502 Bad Gateway</body></html>",
                media_type="text/plain",
                headers={"Asr-Engine": self.engine},
            )
        await self.hang(self.hang_seconds)
        return Response(b"", status_code=504)


async def start_transcription(stub: WhisperXStub, seconds: float = 1.0) -> asyncio.Task[Any]:
    """POST `seconds` of audio to `stub`'s `/asr` in the background; returns once the
    stub is transcribing it (its event loop blocked). The task gives the response.
    """
    import httpx  # the client side: only tests that drive the stub directly need it

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(timeout=60) as http:
            files = {"audio_file": ("a.wav", sine_wav(seconds), "audio/wav")}
            return await http.post(f"{stub.base_url}/asr?output=json", files=files)

    task = asyncio.create_task(post())
    for _ in range(1000):
        if stub.busy:
            return task
        if task.done():
            raise AssertionError(f"the stub answered without blocking: {task.result()}")
        await asyncio.sleep(0.01)
    task.cancel()
    raise AssertionError("the stub never started transcribing")


def _noisy(seconds: float) -> float:
    """`seconds` with the float noise the real server's timings carry (14.120000000000001)."""
    return math.nextafter(seconds, math.inf) if seconds else 0.0


def _moov_after_mdat(data: bytes) -> bool:
    """Whether `data` is an MP4/M4A whose index (`moov`) follows the media (`mdat`)."""
    if data[4:8] != b"ftyp":
        return False
    pos, seen_mdat = 0, False
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1 and pos + 16 <= len(data):
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        if kind == b"mdat":
            seen_mdat = True
        elif kind == b"moov":
            return seen_mdat
        if size < 8:
            break
        pos += size
    return False


def _decode(data: bytes) -> Decoded:
    """Mono s16 samples of the upload; raises for what ffmpeg-from-a-pipe refuses."""
    if not data:
        raise Undecodable("empty upload")
    if data[:4] == b"RIFF":
        # ffmpeg reading a pipe is as strict as the stdlib here: `data` before `fmt ` fails.
        with wave.open(io.BytesIO(data)) as wav:
            if wav.getsampwidth() != 2:
                raise Undecodable("only 16-bit PCM in this stub")
            channels, rate = wav.getnchannels(), wav.getframerate()
            samples = array.array("h", wav.readframes(wav.getnframes()))
        if channels > 1:  # the mix: the loudest channel of each frame
            samples = array.array(
                "h",
                (max(samples[i : i + channels], key=abs) for i in range(0, len(samples), channels)),
            )
        return Decoded(samples, rate, wav_rate=rate, wav_channels=channels)
    import av  # compressed formats only

    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        pcm = bytearray()
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                pcm += bytes(out.planes[0])[: out.samples * 2]
        for out in resampler.resample(None):
            pcm += bytes(out.planes[0])[: out.samples * 2]
    if not pcm:
        raise Undecodable("no samples")
    return Decoded(array.array("h", bytes(pcm)), 16000)


def _sound_regions(decoded: Decoded) -> list[tuple[float, float]]:
    """`(start, end)` seconds of the runs of frames with sound."""
    frame = max(1, int(decoded.rate * FRAME_SECONDS))
    regions: list[tuple[float, float]] = []
    begin: int | None = None
    total = len(decoded.samples)
    for pos in range(0, total, frame):
        window = decoded.samples[pos : pos + frame]
        loud = max(window) >= VOICED_PEAK or min(window) <= -VOICED_PEAK
        if loud and begin is None:
            begin = pos
        elif not loud and begin is not None:
            regions.append((begin / decoded.rate, pos / decoded.rate))
            begin = None
    if begin is not None:
        regions.append((begin / decoded.rate, total / decoded.rate))
    return [(round(a, 3), round(b, 3)) for a, b in regions]


def _text_plain_json(body: dict[str, Any], engine: str, filename: str) -> Response:
    """The JSON as the real server sends it: text/plain, chunked, with `asr-engine`."""
    payload = json.dumps(body, ensure_ascii=False).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for pos in range(0, len(payload), 4096):
            yield payload[pos : pos + 4096]

    return StreamingResponse(
        pieces(),
        media_type="text/plain; charset=utf-8",
        headers={
            "asr-engine": engine,
            "content-disposition": f'attachment; filename="{filename}"',
        },
    )
