"""Parsing vLLM's Prometheus text into the sidecar's `vllm` figures."""

from __future__ import annotations

import pytest

from ai_service.sidecar.vllm_metrics import MetricsFormatError, metrics_url, parse_vllm_metrics
from tests.stubs.vllm_metrics_server import EXPECTED, render_metrics


@pytest.mark.parametrize("variant", ["current", "legacy"])
def test_figures_are_summed_over_engines_for_both_kv_cache_names(variant: str) -> None:
    instance = parse_vllm_metrics(render_metrics("qwen2.5-14b", variant), "http://h/metrics")
    assert instance.ok
    assert instance.url == "http://h/metrics"
    assert instance.models == ["qwen2.5-14b"]
    figures = instance.model_dump()
    for key, value in EXPECTED.items():
        assert figures[key] == pytest.approx(value), key


def test_current_kv_cache_name_wins_when_both_are_exposed() -> None:
    text = (
        render_metrics("m", "current")
        + "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        + 'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.99\n'
    )
    assert parse_vllm_metrics(text, "u").kv_cache_usage == pytest.approx(0.5)


def test_means_are_null_before_any_request_finished() -> None:
    instance = parse_vllm_metrics(render_metrics("m", idle=True), "u")
    assert instance.time_to_first_token_mean_seconds is None
    assert instance.e2e_request_latency_mean_seconds is None
    assert instance.requests_running == 0
    assert instance.kv_cache_usage == 0


def test_missing_metrics_are_null_not_zero() -> None:
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="m",engine="0"} 4\n'
    )
    instance = parse_vllm_metrics(text, "u")
    assert instance.requests_running == 4
    assert instance.requests_waiting is None
    assert instance.kv_cache_usage is None
    assert instance.prompt_tokens_total is None


def test_text_that_is_not_prometheus_format_is_an_error() -> None:
    with pytest.raises(MetricsFormatError, match="not Prometheus text format"):
        parse_vllm_metrics("<html>{{{ not metrics", "u")


def test_an_exporter_without_vllm_metrics_is_an_error() -> None:
    text = "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n"
    with pytest.raises(MetricsFormatError, match="no vllm"):
        parse_vllm_metrics(text, "u")


@pytest.mark.parametrize(
    ("given", "fetched"),
    [
        ("http://h:8000", "http://h:8000/metrics"),
        ("http://h:8000/", "http://h:8000/metrics"),
        ("http://h:8000/metrics", "http://h:8000/metrics"),
        ("http://u:p@h:8000/metrics/?token=t", "http://h:8000/metrics?token=t"),
    ],
)
def test_metrics_url_accepts_the_base_or_the_full_url(given: str, fetched: str) -> None:
    assert str(metrics_url(given)[0]) == fetched
