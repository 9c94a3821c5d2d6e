"""`Metrics`: label values stay within a bounded set, whatever callers send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from ai_service.jobs import Job
from ai_service.metrics import Metrics
from tests.factories import make_job

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def job(task_type: str, model_profile: str) -> Job:
    return make_job(
        task_type=task_type,
        model_profile=model_profile,
        run_after=NOW,
        created_at=NOW,
        started_at=NOW + timedelta(seconds=2),
    )


def label_values(metrics: Metrics, label: str) -> set[str]:
    text = metrics.render().decode()
    return {
        sample.labels[label]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if label in sample.labels
    }


def test_unknown_task_types_profiles_and_categories_are_counted_as_other() -> None:
    metrics = Metrics({"llm_chat"}, {"qwen2.5-14b"})
    jobs = [job(f"type-{i}", f"profile-{i}") for i in range(300)] + [job("llm_chat", "qwen2.5-14b")]
    metrics.observe_created(jobs)
    metrics.observe_claimed(jobs)
    for i, j in enumerate(jobs):
        outcome = "completed" if i % 2 else "failed"
        metrics.observe_finished(
            j.task_type, j.model_profile, outcome, j.started_at, NOW + timedelta(seconds=5),
            f"made-up-{i}" if i % 4 == 0 else "timeout",
        )  # fmt: skip
    metrics.set_queue_gauges(
        [{"status": "pending", "task_type": f"type-{i}", "n": 1} for i in range(300)]
    )
    assert label_values(metrics, "task_type") == {"llm_chat", "other"}
    assert label_values(metrics, "model_profile") == {"qwen2.5-14b", "other"}
    assert label_values(metrics, "category") == {"timeout", "other"}
    gauge = [
        s for f in text_string_to_metric_families(metrics.render().decode())
        for s in f.samples if s.name == "ai_jobs"
    ]  # fmt: skip
    assert [(s.labels["task_type"], s.value) for s in gauge] == [("other", 300.0)]


def test_unknown_http_methods_are_counted_as_other() -> None:
    metrics = Metrics()
    for method in ("GET", "HEAD", "POST", "PROPFIND", "X" * 50):
        metrics.observe_http(method, "/api/v1/jobs", 405, 0.001)
    assert label_values(metrics, "method") == {"GET", "HEAD", "POST", "other"}


def test_without_known_labels_everything_is_other() -> None:
    metrics = Metrics()
    metrics.observe_created([job("llm_chat", "qwen2.5-14b")])
    assert label_values(metrics, "task_type") == {"other"}
