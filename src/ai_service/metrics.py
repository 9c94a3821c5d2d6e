"""Prometheus metrics of a process (API or worker), in its own registry.

Every label value comes from a bounded set: task types and model profiles outside
the configured ones (`worker.registry.metric_labels`), error categories outside
the built-in ones, unusual HTTP methods and owners outside the `OWNER_SERIES`
busiest are all counted as `other`. A label
value a caller chooses would otherwise add series that stay in `/metrics` for
the life of the process.

Several API processes (`HTTP_WORKERS` > 1) share one `/metrics`: `ai-service
api` then gives them a fresh `PROMETHEUS_MULTIPROC_DIR` (`cli.metrics_dir`),
prometheus_client keeps every value in a file there, and `render` adds up the
files of all processes (Prometheus multiprocess mode).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from ai_service.jobs import ErrorCategory, Job

# Read once, like prometheus_client reads it when it is imported: values live in
# files there (multiprocess mode) only when it was set before that import.
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROC_DIR = os.environ.get(MULTIPROC_DIR_VARIABLE) or None

OTHER = "other"
_CATEGORIES = frozenset(c.value for c in ErrorCategory)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# `ai_jobs_by_owner` names the owners with the most pending + running jobs, at
# most this many per reading; the rest are summed as `other`.
OWNER_SERIES = 10
_OWNER_STATUSES = ("pending", "running")

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Counters and histograms of job transitions seen by this process.

    `task_types` and `model_profiles` are the label values kept as they are; any
    other value is recorded as `other`.
    """

    def __init__(self, task_types: Iterable[str] = (), model_profiles: Iterable[str] = ()) -> None:
        self.task_types = frozenset(task_types)
        self.model_profiles = frozenset(model_profiles)
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        labels = ("task_type", "model_profile")
        self.created = Counter("ai_jobs_created", "Jobs created.", labels, registry=self.registry)
        self.claimed = Counter("ai_jobs_claimed", "Jobs claimed.", labels, registry=self.registry)
        self.completed = Counter(
            "ai_jobs_completed", "Jobs completed.", labels, registry=self.registry
        )
        self.failed = Counter(
            "ai_jobs_failed",
            "Failed attempts (retried or final).",
            (*labels, "category"),
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "ai_job_queue_wait_seconds",
            "From the time a job became runnable to its claim.",
            ("task_type",),
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.run_duration = Histogram(
            "ai_job_run_duration_seconds",
            "From claim to completion or failure.",
            ("task_type", "outcome"),
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.jobs_by_status = Gauge(
            "ai_jobs",
            "Jobs in the table by status and task type (pending and running).",
            ("status", "task_type"),
            registry=self.registry,
            # Read from the database by whichever process serves /metrics.
            multiprocess_mode="mostrecent",
        )
        self._queue_keys: set[tuple[str, str]] = set()
        self.jobs_by_owner = Gauge(
            "ai_jobs_by_owner",
            f"Pending and running jobs in the table by owner_service: the {OWNER_SERIES} "
            "owners with the most of them, the rest summed as `other`.",
            ("owner_service", "status"),
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self._owner_keys: set[tuple[str, str]] = set()
        # Only the profiles of MODEL_PROFILE_LIMITS: a bounded set, from configuration.
        self.profile_limit = Gauge(
            "ai_model_profile_limit",
            "MODEL_PROFILE_LIMITS: most jobs of the profile running at once, cluster-wide.",
            ("model_profile",),
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.profile_running = Gauge(
            "ai_model_profile_running",
            "Running jobs of each limited model profile, cluster-wide (from the table).",
            ("model_profile",),
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.http_latency = Histogram(
            "ai_http_request_duration_seconds",
            "HTTP request latency.",
            ("method", "route", "status"),
            buckets=_HTTP_BUCKETS,
            registry=self.registry,
        )

        self.maintenance_seconds = Histogram(
            "ai_maintenance_seconds",
            "Duration of one round of a maintenance service (rescuer, compaction, retention).",
            ("service",),
            buckets=_HTTP_BUCKETS,
            registry=self.registry,
        )
        self.maintenance_leader = Gauge(
            "ai_maintenance_leader",
            "1 while this process (with HTTP_WORKERS > 1: one of this server's "
            "processes) leads the maintenance service, else 0.",
            ("service",),
            registry=self.registry,
            multiprocess_mode="livemax",
        )

        self.webhook_deliveries = Counter(
            "ai_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered (2xx), retried (failed, "
            "tried again later), failed (failed for good: WEBHOOK_MAX_AGE reached).",
            ("outcome",),
            registry=self.registry,
        )

        self.provider_up = Gauge(
            "ai_provider_up",
            "1 while the worker's circuit breaker of a provider endpoint is closed or "
            "half-open, 0 while it is open (the worker sends that endpoint nothing).",
            ("provider",),
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )

        self.worker_slots_in_use = Gauge(
            "ai_worker_slots_in_use",
            "Jobs a worker's handler holds now (claimed, outcome not yet recorded).",
            ("handler",),
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.worker_slots_limit = Gauge(
            "ai_worker_slots_limit",
            "The most jobs a worker's handler may hold now (adaptive for LLM_CONCURRENCY=auto).",
            ("handler",),
            registry=self.registry,
            multiprocess_mode="livesum",
        )

    def set_worker_slots(self, handler: str, in_use: int, limit: int) -> None:
        """A worker handler's slots in use and current limit (`handler`: a built-in name)."""
        self._child(self.worker_slots_in_use, handler).set(in_use)
        self._child(self.worker_slots_limit, handler).set(limit)

    def _child(self, metric: Any, *labels: str) -> Any:
        # labels() costs a lock and a tuple build per call: keep the children.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _task(self, task_type: str) -> str:
        return task_type if task_type in self.task_types else OTHER

    def _profile(self, model_profile: str) -> str:
        return model_profile if model_profile in self.model_profiles else OTHER

    def _count(self, counter: Counter, jobs: Iterable[Job]) -> None:
        # One increment per label pair, not per job (a batch is mostly of one kind).
        counts: dict[tuple[str, str], int] = {}
        for job in jobs:
            key = (job.task_type, job.model_profile)
            counts[key] = counts.get(key, 0) + 1
        for (task_type, model_profile), n in counts.items():
            self._child(counter, self._task(task_type), self._profile(model_profile)).inc(n)

    def observe_created(self, jobs: Iterable[Job]) -> None:
        """Count jobs just inserted."""
        self._count(self.created, jobs)

    def observe_claimed(self, jobs: Sequence[Job]) -> None:
        """Count claimed jobs and observe how long each waited while runnable."""
        self._count(self.claimed, jobs)
        for job in jobs:
            if job.started_at is not None:
                wait = (job.started_at - max(job.run_after, job.created_at)).total_seconds()
                self._child(self.queue_wait, self._task(job.task_type)).observe(max(wait, 0.0))

    def observe_finished(
        self,
        task_type: str,
        model_profile: str,
        outcome: str,
        started_at: datetime | None,
        finished_at: datetime,
        category: str | None = None,
    ) -> None:
        """Record a completion (`outcome="completed"`) or a failed attempt (`"failed"`)."""
        task_type, model_profile = self._task(task_type), self._profile(model_profile)
        if outcome == "completed":
            self._child(self.completed, task_type, model_profile).inc()
        else:
            category = category if category in _CATEGORIES else OTHER
            self._child(self.failed, task_type, model_profile, category).inc()
        if started_at is not None:
            seconds = (finished_at - started_at).total_seconds()
            self._child(self.run_duration, task_type, outcome).observe(max(seconds, 0.0))

    def set_queue_gauges(self, counts: Iterable[dict[str, Any]]) -> None:
        """Set pending/running gauges from `stats_counts` rows."""
        totals: dict[tuple[str, str], int] = {}
        for row in counts:
            if row["status"] in ("pending", "running"):
                key = (row["status"], self._task(row["task_type"]))
                totals[key] = totals.get(key, 0) + int(row["n"])
        # Pairs that are gone read 0: with several processes a removed series
        # would keep its last value in the files of the processes.
        for key in self._queue_keys - totals.keys():
            self.jobs_by_status.labels(*key).set(0)
        for (status, task_type), n in totals.items():
            self.jobs_by_status.labels(status, task_type).set(n)
        self._queue_keys |= totals.keys()

    def set_profile_limit_gauges(
        self, limits: Mapping[str, int], counts: Iterable[dict[str, Any]]
    ) -> None:
        """Set the limited profiles' limit and running gauges from `stats_counts` rows."""
        running = profile_running(limits, counts)
        for profile, limit in limits.items():
            self.profile_limit.labels(profile).set(limit)
            self.profile_running.labels(profile).set(running[profile])

    def set_owner_gauges(self, counts: Iterable[dict[str, Any]]) -> None:
        """Set `ai_jobs_by_owner` from `stats_owner_counts` rows (owner_service, status, n).

        Owner names are chosen by callers: only the `OWNER_SERIES` owners with the
        most pending + running jobs keep their name (ties by name), the rest add up
        under `other`, so a reading has at most `OWNER_SERIES` + 1 owners.
        """
        by_owner: dict[str, dict[str, int]] = {}
        for row in counts:
            if row["status"] in _OWNER_STATUSES:
                figures = by_owner.setdefault(row["owner_service"], {})
                figures[row["status"]] = figures.get(row["status"], 0) + int(row["n"])
        ranked = sorted(by_owner, key=lambda o: (-sum(by_owner[o].values()), o))
        totals: dict[tuple[str, str], int] = {}
        for rank, owner in enumerate(ranked):
            label = owner if rank < OWNER_SERIES else OTHER
            for status in _OWNER_STATUSES:
                key = (label, status)
                totals[key] = totals.get(key, 0) + by_owner[owner].get(status, 0)
        for key in self._owner_keys - totals.keys():
            if MULTIPROC_DIR is None:
                # An owner that left the top: its series go, so that the owners
                # seen over the process's life do not pile up in /metrics.
                self.jobs_by_owner.remove(*key)
            else:
                # Files of other processes would keep a removed series' last value.
                self.jobs_by_owner.labels(*key).set(0)
        for (owner, status), n in totals.items():
            self.jobs_by_owner.labels(owner, status).set(n)
        self._owner_keys = (
            set(totals) if MULTIPROC_DIR is None else self._owner_keys | totals.keys()
        )

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """Observe one HTTP answer; `route` is the route template or `unmatched`."""
        method = method if method in _METHODS else OTHER
        self._child(self.http_latency, method, route, str(status)).observe(seconds)

    def set_provider_up(self, provider: str, up: bool) -> None:
        """The `ai_provider_up` gauge of one endpoint (`llm`, `whisperx#1`, ...)."""
        self._child(self.provider_up, provider).set(1 if up else 0)

    def render(self) -> bytes:
        """The Prometheus text of this process, or of all processes in multiprocess mode."""
        if MULTIPROC_DIR is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def close(self) -> None:
        """At process exit: in multiprocess mode, drop this process's live gauges."""
        if MULTIPROC_DIR is not None:
            multiprocess.mark_process_dead(os.getpid(), MULTIPROC_DIR)  # type: ignore[no-untyped-call]


def profile_running(limits: Mapping[str, int], counts: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Running jobs of each limited profile, from `stats_counts` rows."""
    running = dict.fromkeys(limits, 0)
    for row in counts:
        if row["status"] == "running" and row["model_profile"] in running:
            running[row["model_profile"]] += int(row["n"])
    return running
