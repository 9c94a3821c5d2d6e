"""Loopback HTTP stubs of the servers the workers talk to.

Every stub is a real HTTP server: uvicorn runs a Starlette app in a background
thread, bound to 127.0.0.1 on an ephemeral port, so clients go through real
sockets, HTTP parsing, keep-alive and timeouts. Use one as a context manager
(or `start()` / `stop()`):

    with OpenAIStub(models=["m"]) as llm:        # tests.stubs.openai_server
        url = llm.base_url                       # "http://127.0.0.1:PORT"

    with WhisperXStub("wx-a") as wx:             # tests.stubs.whisperx_server
        ...

    with FileServer() as files:                  # audio for `audio_url` jobs
        url = files.add("/call.wav", wav_bytes)
        files.redirect("/old.wav", url)          # 302 to another URL

Every stub listens on 127.0.0.1 unless given another loopback `host`
(`FileServer(host="127.0.0.2")`: a second address for tests that allow one
loopback address and not another).

`closed_port_url()` gives a URL nobody listens on (connection refused);
`sine_wav(seconds)` makes real audio for them to receive (`tone_wav` with
pauses and channels), `transcode(wav,
"mp3", "libmp3lame")` the same in another container/codec.

Counters are updated by the server thread and read by the test; they are
plain ints and dicts, consistent once the client has its answer.
"""

from __future__ import annotations

import array
import asyncio
import io
import math
import re
import socket
import threading
import time
import wave
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

__all__ = [
    "FileServer",
    "MultipartPart",
    "StubServer",
    "closed_port_url",
    "parse_multipart",
    "sine_wav",
    "stereo_call_wav",
    "tone_wav",
    "transcode",
]


class StubServer:
    """Base of the stubs: runs `self.build_app()` with uvicorn in a thread.

    Subclasses implement `build_app()`. `hang()` sleeps in a way `stop()`
    interrupts, so a stub that simulates a hung server still stops at once.
    """

    # Failure kinds a subclass understands (see its `fail_next`/`fail_always`).
    FAILURES: tuple[str, ...] = ()

    def __init__(self, port: int = 0, *, host: str = "127.0.0.1") -> None:
        if not host.startswith("127."):
            raise ValueError("stubs listen on loopback (127.0.0.0/8) only")
        self.host = host
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._requested_port = port  # 0: an ephemeral port
        self.port = 0
        self._lock = threading.Lock()
        self._queued: deque[str] = deque()
        self._always: str | None = None

    def fail_next(self, kind: str, times: int = 1) -> None:
        """Make the next `times` requests fail with `kind` (one of `FAILURES`)."""
        self._check_kind(kind)
        with self._lock:
            self._queued.extend([kind] * times)

    def fail_always(self, kind: str | None) -> None:
        """Make every request fail with `kind` until cleared with None."""
        if kind is not None:
            self._check_kind(kind)
        with self._lock:
            self._always = kind

    def _check_kind(self, kind: str) -> None:
        if kind not in self.FAILURES:
            known = ", ".join(self.FAILURES)
            raise ValueError(f"unknown failure {kind!r}; known: {known}")

    def _next_failure(self) -> str | None:
        """The failure the next request gets (queued ones first); call with the lock."""
        return self._queued.popleft() if self._queued else self._always

    def _clear_failures(self) -> None:
        """Forget injected failures; call with the lock."""
        self._queued.clear()
        self._always = None

    def build_app(self) -> Starlette:
        """The ASGI app to serve (one per start)."""
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT` (no trailing slash; the stub's `host`)."""
        if not self.port:
            raise RuntimeError("the stub is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Bind an ephemeral port, start serving, return once it accepts requests."""
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto
        # says TCP; without it, small responses stall ~40 ms (Nagle + delayed ACK).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.build_app(),
            log_config=None,  # leave the process's logging configuration alone
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="httptools",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        self._stopping.clear()
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{type(self).__name__} did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving (hung requests are released) and wait for the thread."""
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def hang(self, seconds: float) -> None:
        """Sleep up to `seconds`, returning early when the stub stops."""
        deadline = time.monotonic() + seconds
        # Polling, not an asyncio.Event: stop() runs in the test's thread.
        while time.monotonic() < deadline and not self._stopping.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def sine_wav(seconds: float, *, rate: int = 8000, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV of a 440 Hz tone, made with the stdlib (no numpy)."""
    frames = int(seconds * rate)
    step = 2 * math.pi * 440 / rate
    period = [int(8000 * math.sin(i * step)) for i in range(rate)]  # one second
    samples = array.array("h")
    for i in range(frames):
        samples.extend([period[i % rate]] * channels)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def stereo_call_wav(seconds: float, *, rate: int = 8000, turn_seconds: float = 5.0) -> bytes:
    """A telephone call as recorders write it: 16-bit stereo WAV, one party per channel.

    The parties take turns of `turn_seconds`: channel 0 ("agent") speaks (a 440 Hz
    tone) in turns 0, 2, 4, ... while channel 1 is silent, channel 1 ("customer",
    660 Hz) in turns 1, 3, 5, .... Built by repeating one two-turn period, so a
    30-minute call takes well under a second.
    """
    turn = int(turn_seconds * rate)
    agent = [int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(turn)]
    customer = [int(8000 * math.sin(2 * math.pi * 660 * i / rate)) for i in range(turn)]
    period = array.array("h")
    for i in range(turn):
        period.extend((agent[i], 0))
    for i in range(turn):
        period.extend((0, customer[i]))
    frames = int(seconds * rate)
    whole, rest = divmod(frames, 2 * turn)
    samples = period * whole + period[: 2 * rest]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def tone_wav(seconds: float, *channels: list[tuple[float, float]], rate: int = 8000) -> bytes:
    """A 16-bit WAV with one channel per span list: a 440 Hz tone during each
    `(start, end)` span, silence elsewhere (speech between pauses, a call's sides).
    """
    step = 2 * math.pi * 440 / rate
    samples = array.array("h")
    for i in range(int(seconds * rate)):
        t = i / rate
        tone = int(8000 * math.sin(i * step))
        samples.extend(tone if any(a <= t < b for a, b in spans) else 0 for spans in channels)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(len(channels))
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def transcode(wav: bytes, container: str, codec: str, *, rate: int = 16000) -> bytes:
    """Re-encode a mono 16-bit WAV into `container` with `codec` (PyAV)."""
    import av  # PyAV: only the tests that transcode need it

    with wave.open(io.BytesIO(wav)) as source:
        source_rate = source.getframerate()
        pcm = source.readframes(source.getnframes())
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
    frame.planes[0].update(pcm)
    frame.sample_rate = source_rate
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(resampled):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


@dataclass(frozen=True)
class MultipartPart:
    """One part of a multipart/form-data body."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')
_DISPOSITION_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_multipart(body: bytes, content_type: str) -> dict[str, MultipartPart]:
    """Parse a multipart/form-data body (python-multipart is not installed).

    Raises `ValueError` when the content type has no boundary.
    """
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise ValueError("multipart content type without boundary")
    delimiter = b"--" + match.group(1).encode()
    parts: dict[str, MultipartPart] = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        params = dict(_DISPOSITION_PARAM.findall(headers.get("content-disposition", "")))
        name = params.get("name", "")
        parts[name] = MultipartPart(
            name=name,
            filename=params.get("filename"),
            content_type=headers.get("content-type"),
            data=data.removesuffix(b"\r\n"),
        )
    return parts


@dataclass
class _File:
    body: bytes
    status: int
    content_type: str
    chunked: bool
    delay: float
    headers: dict[str, str]


class FileServer(StubServer):
    """Serves fixed bodies at paths (audio for `audio_url` jobs).

    `add(path, body, status=..., chunked=..., delay=..., headers=...)` returns
    the full URL; `redirect(path, location)` answers a redirect. Unknown paths
    answer 404 with the body `not found`. `hits[path]` counts GET requests,
    `seen` keeps `(path, request headers)` of each one, in order.
    """

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self._files: dict[str, _File] = {}
        self.hits: Counter[str] = Counter()
        self.seen: list[tuple[str, dict[str, str]]] = []

    def add(
        self,
        path: str,
        body: bytes,
        *,
        status: int = 200,
        content_type: str = "audio/wav",
        chunked: bool = False,
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Serve `body` at `path`; `chunked` omits Content-Length; `delay` stalls first."""
        self._files[path] = _File(body, status, content_type, chunked, delay, headers or {})
        return self.url(path)

    def redirect(self, path: str, location: str, *, status: int = 302) -> str:
        """Answer `path` with a redirect to `location`; returns the URL of `path`."""
        return self.add(path, b"", status=status, headers={"Location": location})

    def url(self, path: str) -> str:
        """The full URL of `path` on this server (whether or not it is served)."""
        return self.base_url + path

    def build_app(self) -> Starlette:
        async def serve(request: Request) -> Response:
            path = request.url.path
            self.hits[path] += 1
            self.seen.append((path, dict(request.headers)))
            served = self._files.get(path)
            if served is None:
                return Response("not found", status_code=404, media_type="text/plain")
            if served.delay:
                await self.hang(served.delay)
            if served.chunked:

                async def pieces() -> AsyncIterator[bytes]:
                    for pos in range(0, len(served.body), 64 * 1024):
                        yield served.body[pos : pos + 64 * 1024]

                return StreamingResponse(
                    pieces(),
                    status_code=served.status,
                    media_type=served.content_type,
                    headers=served.headers,
                )
            return Response(
                served.body,
                status_code=served.status,
                media_type=served.content_type,
                headers=served.headers,
            )

        return Starlette(routes=[Route("/{path:path}", serve, methods=["GET"])])
