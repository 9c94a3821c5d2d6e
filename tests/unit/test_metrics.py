"""`Metrics`: label values stay within a bounded set, whatever callers send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from ai_service.jobs import Job
from ai_service.metrics import OWNER_SERIES, Metrics
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


def owner_gauge(metrics: Metrics) -> dict[tuple[str, str], float]:
    return {
        (s.labels["owner_service"], s.labels["status"]): s.value
        for f in text_string_to_metric_families(metrics.render().decode())
        for s in f.samples
        if s.name == "ai_jobs_by_owner"
    }


def test_owner_gauge_names_the_busiest_owners_and_sums_the_rest_as_other() -> None:
    metrics = Metrics()
    # 300 owners: owner-i has i pending and 1 running job; finished jobs do not rank.
    rows = [{"owner_service": f"owner-{i}", "status": "pending", "n": i} for i in range(300)]
    rows += [{"owner_service": f"owner-{i}", "status": "running", "n": 1} for i in range(300)]
    rows += [{"owner_service": "archive", "status": "completed", "n": 10**6}]
    metrics.set_owner_gauges(rows)
    gauge = owner_gauge(metrics)
    top = {f"owner-{i}" for i in range(290, 300)}
    assert {owner for owner, _ in gauge} == top | {"other"}
    assert len(top) == OWNER_SERIES
    assert gauge[("owner-299", "pending")] == 299
    assert gauge[("owner-299", "running")] == 1
    assert gauge[("other", "pending")] == sum(range(290))
    assert gauge[("other", "running")] == 290


def test_owner_gauge_drops_owners_that_left_the_top() -> None:
    metrics = Metrics()
    metrics.set_owner_gauges([{"owner_service": "bulk", "status": "pending", "n": 5}])
    assert owner_gauge(metrics) == {("bulk", "pending"): 5, ("bulk", "running"): 0}
    # The next reading: bulk is done, twelve others wait (ties ranked by name).
    rows = [{"owner_service": f"o{i:02}", "status": "running", "n": 2} for i in range(12)]
    metrics.set_owner_gauges(rows)
    gauge = owner_gauge(metrics)
    assert {owner for owner, _ in gauge} == {f"o{i:02}" for i in range(10)} | {"other"}
    assert gauge[("other", "running")] == 4
    metrics.set_owner_gauges([])
    assert owner_gauge(metrics) == {}
