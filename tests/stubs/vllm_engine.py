"""A vLLM stub with a continuous-batching latency model, for scheduling tests and benches.

    engine = VllmEngineStub(
        max_num_seqs=128,        # B: sequences that fit in the KV cache at once
        step_base=0.02,          # seconds of one decode step with one sequence...
        step_per_seq=0.00005,    # ...plus this much per running sequence
        tokens=32,               # tokens generated per request (max_tokens overrides)
        priority_scheduling=False,  # True: admit by the request's `priority` (lower first)
    )
    with engine:
        engine.base_url          # http://127.0.0.1:PORT (chat at /v1/chat/completions)

The engine runs decode steps: each step admits waiting requests while fewer
than B run (FIFO by arrival, or by `priority` then arrival with priority
scheduling, as `vllm serve --scheduling-policy priority`), sleeps
`step_base + step_per_seq * running`, and gives every running sequence one
token; a sequence with all its tokens is answered. So throughput grows with
the batch up to B while each request's latency grows slowly, and requests
beyond B wait in the engine's own queue.

`GET /metrics` exposes vLLM's names with `model_name` and `engine` labels:
`vllm:num_requests_running`, `vllm:num_requests_waiting`,
`vllm:kv_cache_usage_perc` (`variant="legacy"`: `vllm:gpu_cache_usage_perc`;
usage = tokens held by running sequences / (B * (prompt + generated tokens))),
`vllm:request_queue_time_seconds` (histogram: `_sum`, `_count`, one bucket),
`vllm:request_success_total`. `/v1/chat/completions` answers like
`tests.stubs.openai_server` (`"echo: <last user text>"`, usage, the `job:<id>`
marker counted in `deliveries`). Also `/v1/models`, `/health`, `/stub/stats`.

Run it in its own process: `python -m tests.stubs.vllm_engine --port 8000`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.stubs import StubServer

PROMPT_TOKENS = 64  # KV tokens a request's prompt takes
_MARKER = re.compile(r"job:([\w.\-]+)")


@dataclass(order=True)
class _Sequence:
    key: tuple[int, int]  # (priority or 0, arrival number): the admission order
    tokens: int = field(compare=False)
    done: asyncio.Future[None] = field(compare=False)
    generated: int = field(default=0, compare=False)
    arrived: float = field(default=0.0, compare=False)
    admitted: float = field(default=0.0, compare=False)


class VllmEngineStub(StubServer):
    """Continuous-batching engine stub (see the module docstring)."""

    def __init__(
        self,
        *,
        max_num_seqs: int = 128,
        step_base: float = 0.02,
        step_per_seq: float = 0.00005,
        tokens: int = 32,
        priority_scheduling: bool = False,
        model: str = "qwen2.5-14b",
        variant: str = "current",
        port: int = 0,
    ) -> None:
        super().__init__(port)
        if variant not in ("current", "legacy"):
            raise ValueError("variant must be 'current' or 'legacy'")
        self.max_num_seqs = max_num_seqs
        self.step_base = step_base
        self.step_per_seq = step_per_seq
        self.tokens = tokens
        self.priority_scheduling = priority_scheduling
        self.model = model
        self.variant = variant
        self.reset()

    def reset(self) -> None:
        """Clear the counters (not the engine's queues)."""
        with self._lock:
            self.finished = 0
            self.max_running = 0
            self.max_waiting = 0
            self.deliveries: Counter[str] = Counter()
            self.priorities_seen: Counter[int] = Counter()
        self.running: list[_Sequence] = []
        self.waiting: list[_Sequence] = []
        self.queue_time_sum = 0.0
        self.queue_time_count = 0

    # -- the engine ---------------------------------------------------------------

    def step_seconds(self, running: int) -> float:
        """How long one decode step takes with `running` sequences."""
        return self.step_base + self.step_per_seq * running

    def kv_cache_usage(self) -> float:
        """Tokens held by the running sequences over the cache's size."""
        held = sum(PROMPT_TOKENS + s.generated for s in self.running)
        return held / (self.max_num_seqs * (PROMPT_TOKENS + self.tokens))

    async def _engine(self, wake: asyncio.Event) -> None:
        while not self._stopping.is_set():
            if not self.running and not self.waiting:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), 0.1)
                continue
            now = time.monotonic()
            while self.waiting and len(self.running) < self.max_num_seqs:
                admitted = heapq.heappop(self.waiting)
                admitted.admitted = now
                self.queue_time_sum += now - admitted.arrived
                self.queue_time_count += 1
                self.running.append(admitted)
            with self._lock:
                self.max_running = max(self.max_running, len(self.running))
            await asyncio.sleep(self.step_seconds(len(self.running)))
            still: list[_Sequence] = []
            for seq in self.running:
                seq.generated += 1
                if seq.generated >= seq.tokens:
                    if not seq.done.done():
                        seq.done.set_result(None)
                else:
                    still.append(seq)
            self.running = still

    # -- HTTP ---------------------------------------------------------------------

    def build_app(self) -> Starlette:
        wake = asyncio.Event()
        arrivals = itertools.count()
        ids = itertools.count(1)
        engine: list[asyncio.Task[None]] = []

        def ensure_engine() -> None:
            if not engine:
                engine.append(asyncio.get_running_loop().create_task(self._engine(wake)))

        async def chat(request: Request) -> Response:
            ensure_engine()
            try:
                body = json.loads(await request.body())
                messages = body["messages"]
                text = "\n".join(
                    str(m.get("content"))
                    for m in messages
                    if isinstance(m, dict) and m.get("role") == "user"
                )
            except (ValueError, KeyError, TypeError):
                return JSONResponse(
                    {"error": {"message": "invalid request", "type": "BadRequestError"}},
                    status_code=400,
                )
            priority = body.get("priority", 0)
            if not isinstance(priority, int) or isinstance(priority, bool):
                priority = 0
            wanted = body.get("max_tokens")
            tokens = (
                min(wanted, self.tokens) if isinstance(wanted, int) and wanted > 0 else self.tokens
            )
            with self._lock:
                self.priorities_seen[priority] += 1
            seq = _Sequence(
                key=(priority if self.priority_scheduling else 0, next(arrivals)),
                tokens=tokens,
                done=asyncio.get_running_loop().create_future(),
                arrived=time.monotonic(),
            )
            heapq.heappush(self.waiting, seq)
            with self._lock:
                self.max_waiting = max(self.max_waiting, len(self.waiting))
            wake.set()
            await seq.done
            marker = _MARKER.search(text)
            with self._lock:
                self.finished += 1
                if marker is not None:
                    self.deliveries[marker.group(1)] += 1
            last = text.rsplit("\n", 1)[-1]
            return JSONResponse(
                {
                    "id": f"chatcmpl-engine-{next(ids)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model") or self.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"echo: {last}"},
                            "finish_reason": "length",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": PROMPT_TOKENS,
                        "completion_tokens": seq.tokens,
                        "total_tokens": PROMPT_TOKENS + seq.tokens,
                    },
                }
            )

        async def metrics(request: Request) -> Response:
            return Response(self.render_metrics(), media_type="text/plain; version=0.0.4")

        async def models(request: Request) -> Response:
            data = [{"id": self.model, "object": "model", "owned_by": "vllm"}]
            return JSONResponse({"object": "list", "data": data})

        async def health(request: Request) -> Response:
            return Response(b"", status_code=200)

        async def stats(request: Request) -> Response:
            with self._lock:
                return JSONResponse(self.stats())

        return Starlette(
            routes=[
                Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/metrics", metrics, methods=["GET"]),
                Route("/v1/models", models, methods=["GET"]),
                Route("/health", health, methods=["GET"]),
                Route("/stub/stats", stats, methods=["GET"]),
            ]
        )

    def stats(self) -> dict[str, Any]:
        """Counters, for a stub running in another process (call with the lock)."""
        return {
            "finished": self.finished,
            "max_running": self.max_running,
            "max_waiting": self.max_waiting,
            "running": len(self.running),
            "waiting": len(self.waiting),
            "priorities_seen": {str(k): v for k, v in self.priorities_seen.items()},
        }

    def render_metrics(self) -> str:
        """The engine's state in vLLM's Prometheus names (one engine, `engine="0"`)."""
        labels = f'engine="0",model_name="{self.model}"'
        kv = (
            "vllm:kv_cache_usage_perc" if self.variant == "current" else "vllm:gpu_cache_usage_perc"
        )
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {float(len(self.running))}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} {float(len(self.waiting))}",
            f"# HELP {kv} KV-cache usage. 1 means 100 percent usage.",
            f"# TYPE {kv} gauge",
            f"{kv}{{{labels}}} {self.kv_cache_usage()}",
            "# HELP vllm:request_queue_time_seconds Time spent in the WAITING phase.",
            "# TYPE vllm:request_queue_time_seconds histogram",
            f'vllm:request_queue_time_seconds_bucket{{{labels},le="+Inf"}} '
            f"{float(self.queue_time_count)}",
            f"vllm:request_queue_time_seconds_count{{{labels}}} {float(self.queue_time_count)}",
            f"vllm:request_queue_time_seconds_sum{{{labels}}} {self.queue_time_sum}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{{labels},finished_reason="length"}} '
            f"{float(self.finished)}",
        ]
        return "\n".join(lines) + "\n"


def main() -> None:
    """Serve the engine stub on its own: `python -m tests.stubs.vllm_engine --port 8000`."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="A continuous-batching vLLM stub.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="qwen2.5-14b")
    parser.add_argument("--max-num-seqs", type=int, default=128)
    parser.add_argument("--step-base", type=float, default=0.02)
    parser.add_argument("--step-per-seq", type=float, default=0.00005)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--priority-scheduling", action="store_true")
    args = parser.parse_args()
    stub = VllmEngineStub(
        max_num_seqs=args.max_num_seqs,
        step_base=args.step_base,
        step_per_seq=args.step_per_seq,
        tokens=args.tokens,
        priority_scheduling=args.priority_scheduling,
        model=args.model,
        port=args.port,
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    with stub:
        print(f"vLLM engine stub on {stub.base_url} (B={stub.max_num_seqs})", flush=True)
        stopped.wait()


if __name__ == "__main__":
    main()
