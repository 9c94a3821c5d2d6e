"""A vLLM server stub for status probes: `/metrics`, `/v1/models`, `/health`.

    with VllmStub(models=["qwen2.5-14b"], api_key="k", variant="legacy") as vllm:
        vllm.base_url                        # http://127.0.0.1:PORT
        vllm.models_requests                 # GET /v1/models received (auth failures too)
        vllm.metrics_requests

`/metrics` is produced by prometheus_client (as vLLM itself does), with
vLLM's metric names and its labels `model_name` and `engine`: two engines
(data parallel) with the figures in `ENGINES`. `variant="current"` exposes
the KV-cache gauge as `vllm:kv_cache_usage_perc`, `variant="legacy"` as the
older `vllm:gpu_cache_usage_perc`. `metrics_body` replaces the whole text
(e.g. garbage); `metrics_status` makes `/metrics` answer that status.

`/v1/models` answers like vLLM (`{"object": "list", "data": [...]}`) and,
with `api_key`, 401 `{"error": "Unauthorized"}` without the right Bearer
key. `latency` delays `/v1/models` and `/metrics` (interruptible by stop()).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.stubs import StubServer

VARIANTS = ("current", "legacy")


@dataclass(frozen=True)
class EngineFigures:
    """What one engine reports."""

    running: int
    waiting: int
    kv_cache: float
    prompt_tokens: int
    generation_tokens: int
    ttft: tuple[float, ...]  # observed time-to-first-token values
    e2e: tuple[float, ...]  # observed end-to-end latencies


ENGINES = (
    EngineFigures(2, 1, 0.25, 1000, 500, (0.1, 0.3), (1.0, 3.0)),
    EngineFigures(1, 0, 0.75, 200, 100, (0.2,), (2.0,)),
)
# What a reader should compute from ENGINES (sums; KV usage and latencies are means).
EXPECTED = {
    "requests_running": 3.0,
    "requests_waiting": 1.0,
    "kv_cache_usage": 0.5,
    "prompt_tokens_total": 1200.0,
    "generation_tokens_total": 600.0,
    "requests_finished_total": 3.0,
    "time_to_first_token_mean_seconds": 0.2,
    "e2e_request_latency_mean_seconds": 2.0,
}


def render_metrics(model: str, variant: str = "current", idle: bool = False) -> str:
    """vLLM-like Prometheus text for `model` (`idle`: no request has finished yet)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    registry = CollectorRegistry()
    labels = ["model_name", "engine"]
    running = Gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        labels,
        registry=registry,
    )
    waiting = Gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        labels,
        registry=registry,
    )
    kv_name = "vllm:kv_cache_usage_perc" if variant == "current" else "vllm:gpu_cache_usage_perc"
    kv = Gauge(kv_name, "KV-cache usage. 1 means 100 percent usage.", labels, registry=registry)
    prompt = Counter(
        "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=registry
    )
    generation = Counter(
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        labels,
        registry=registry,
    )
    success = Counter(
        "vllm:request_success",
        "Count of successfully processed requests.",
        [*labels, "finished_reason"],
        registry=registry,
    )
    ttft = Histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        labels,
        registry=registry,
        buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    )
    e2e = Histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        labels,
        registry=registry,
        buckets=(0.3, 1.0, 2.5, 5.0, 10.0),
    )
    Histogram(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        labels,
        registry=registry,
    ).labels(model, "0")
    for index, figures in enumerate(ENGINES):
        engine = str(index)
        running.labels(model, engine).set(0 if idle else figures.running)
        waiting.labels(model, engine).set(0 if idle else figures.waiting)
        kv.labels(model, engine).set(0 if idle else figures.kv_cache)
        prompt.labels(model, engine).inc(0 if idle else figures.prompt_tokens)
        generation.labels(model, engine).inc(0 if idle else figures.generation_tokens)
        ttft_child = ttft.labels(model, engine)
        e2e_child = e2e.labels(model, engine)
        if not idle:
            success.labels(model, engine, "stop").inc(len(figures.e2e))
            for value in figures.ttft:
                ttft_child.observe(value)
            for value in figures.e2e:
                e2e_child.observe(value)
    return generate_latest(registry).decode()


class VllmStub(StubServer):
    """vLLM's status surface: `/metrics`, `/v1/models`, `/health`, with counters."""

    def __init__(
        self,
        *,
        models: Sequence[str] = ("qwen2.5-14b",),
        api_key: str | None = None,
        variant: str = "current",
        latency: float = 0.0,
        metrics_status: int = 200,
        metrics_body: str | None = None,
        idle: bool = False,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}")
        self.models = list(models)
        self.api_key = api_key
        self.variant = variant
        self.latency = latency
        self.metrics_status = metrics_status
        self.metrics_body = metrics_body
        self.idle = idle
        self._lock = threading.Lock()
        self.models_requests = 0
        self.metrics_requests = 0
        self.authorization: list[str | None] = []  # Authorization header of each models request

    def build_app(self) -> Starlette:
        async def models(request: Request) -> Response:
            with self._lock:
                self.models_requests += 1
                self.authorization.append(request.headers.get("authorization"))
            if self.latency:
                await self.hang(self.latency)
            if self.api_key is not None and (
                request.headers.get("authorization") != f"Bearer {self.api_key}"
            ):
                return JSONResponse({"error": "Unauthorized"}, status_code=401)
            data = [
                {
                    "id": m,
                    "object": "model",
                    "created": 0,
                    "owned_by": "vllm",
                    "root": m,
                    "parent": None,
                    "max_model_len": 32768,
                }
                for m in self.models
            ]
            return JSONResponse({"object": "list", "data": data})

        async def metrics(request: Request) -> Response:
            with self._lock:
                self.metrics_requests += 1
            if self.latency:
                await self.hang(self.latency)
            if self.metrics_status != 200:
                return Response("Internal Server Error", status_code=self.metrics_status)
            body = self.metrics_body
            if body is None:
                body = render_metrics(self.models[0], self.variant, self.idle)
            return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

        async def health(request: Request) -> Response:
            return Response(b"", status_code=200)

        return Starlette(
            routes=[
                Route("/v1/models", models, methods=["GET"]),
                Route("/metrics", metrics, methods=["GET"]),
                Route("/health", health, methods=["GET"]),
            ]
        )
