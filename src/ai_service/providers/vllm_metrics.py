"""vLLM's Prometheus `/metrics`, parsed: used by the sidecar and the worker's adaptive limit.

Samples carry the labels `model_name` and `engine` (one per data-parallel
engine); the figures of one server are summed over them, except the
KV-cache usage, which is averaged. vLLM renamed `vllm:gpu_cache_usage_perc`
to `vllm:kv_cache_usage_perc`; both are read. Mean latencies come from the
histograms' `_sum / _count` (None while no request has finished).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from ai_service.urls import request_target, url_path

_KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_TTFT = "vllm:time_to_first_token_seconds"
_E2E = "vllm:e2e_request_latency_seconds"
_QUEUE = "vllm:request_queue_time_seconds"
_SUMMED = {
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
    "vllm:prompt_tokens_total": "prompt_tokens_total",
    "vllm:generation_tokens_total": "generation_tokens_total",
    "vllm:request_success_total": "requests_finished_total",
    f"{_TTFT}_sum": "ttft_sum",
    f"{_TTFT}_count": "ttft_count",
    f"{_E2E}_sum": "e2e_sum",
    f"{_E2E}_count": "e2e_count",
    f"{_QUEUE}_sum": "queue_time_sum",
    f"{_QUEUE}_count": "queue_time_count",
}


class MetricsFormatError(ValueError):
    """The text is not Prometheus exposition format, or holds no vLLM metrics."""


@dataclass
class VllmFigures:
    """One vLLM server's figures (None: the server does not expose that metric)."""

    models: list[str] = field(default_factory=list)
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    requests_finished_total: float | None = None
    time_to_first_token_mean_seconds: float | None = None
    e2e_request_latency_mean_seconds: float | None = None
    # Totals of the queue-time histogram (time requests waited in the engine).
    queue_time_sum_seconds: float | None = None
    queue_time_count: float | None = None


def parse_vllm_metrics(text: str) -> VllmFigures:
    """Turn one `/metrics` text into `VllmFigures`.

    Raises `MetricsFormatError` when the text cannot be parsed or has no
    `vllm:` samples at all (a URL pointing at some other exporter).
    """
    sums: dict[str, float] = defaultdict(float)
    seen: set[str] = set()
    kv_values: dict[str, list[float]] = {name: [] for name in _KV_CACHE}
    models: dict[str, None] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.name.startswith("vllm:"):
                    continue
                model = sample.labels.get("model_name")
                if model:
                    models.setdefault(model, None)
                if sample.name in _KV_CACHE:
                    kv_values[sample.name].append(float(sample.value))
                key = _SUMMED.get(sample.name)
                if key is not None:
                    sums[key] += float(sample.value)
                    seen.add(key)
    except Exception as exc:  # the parser raises assorted errors on bad input
        raise MetricsFormatError(f"not Prometheus text format: {type(exc).__name__}") from None
    if not models and not seen and not any(kv_values.values()):
        raise MetricsFormatError("no vllm:* metrics in the answer")

    def total(key: str) -> float | None:
        return sums[key] if key in seen else None

    kv = kv_values[_KV_CACHE[0]] or kv_values[_KV_CACHE[1]]
    return VllmFigures(
        models=list(models),
        requests_running=total("requests_running"),
        requests_waiting=total("requests_waiting"),
        kv_cache_usage=sum(kv) / len(kv) if kv else None,
        prompt_tokens_total=total("prompt_tokens_total"),
        generation_tokens_total=total("generation_tokens_total"),
        requests_finished_total=total("requests_finished_total"),
        time_to_first_token_mean_seconds=_mean(total("ttft_sum"), total("ttft_count")),
        e2e_request_latency_mean_seconds=_mean(total("e2e_sum"), total("e2e_count")),
        queue_time_sum_seconds=total("queue_time_sum"),
        queue_time_count=total("queue_time_count"),
    )


def _mean(total: float | None, count: float | None) -> float | None:
    if total is None or not count:
        return None
    return total / count


def metrics_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL to fetch: `url` itself when it ends with `/metrics`, else `url` + `/metrics`."""
    return request_target(url, "" if url_path(url).endswith("/metrics") else "/metrics")
