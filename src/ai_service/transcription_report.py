"""The transcription A/B report: figures per provider, and one job's texts side by side.

Pure functions (no I/O) between the store's rows and the report:

- `split_window`: a window into the whole UTC hours the hourly rollups answer and
  the partial hours at its edges, read from the attempt rows;
- `provider_figures`: the store's rows (rollups with bucket arrays, edge rows by
  duration bucket) added up per provider and model, with percentiles, success rate,
  real-time factor and mean word error rate;
- `disagreements`: the top jobs' attempt rows grouped per job;
- `comparison`: a completed job's attempts with each text aligned word by word
  against the reference's (`ai_service.wer`).

Definitions (README "Transcription A/B report"): an attempt is an ok or error entry
of a job's `result.attempts` (a skipped provider made none); success rate = ok /
attempts; durations are the ok attempts' `duration_ms`, p50 and p95 estimated from
duration buckets (bounds 100 ms x 1.25^k: within a quarter of the value); the real-time
factor is the ok attempts' total duration over the total audio they transcribed
(a duration-weighted mean: below 1 is faster than real time); WER is the mean of the
attempts' word error rates against their job's reference (the first provider that
succeeded), over the jobs where both texts were compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from ai_service import histogram, wer
from ai_service.wer import Run

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Window:
    """Where the report reads a window [since, until) from.

    The whole UTC hours [hours_from, hours_to) from the hourly rollups; the rest,
    at most two partial hours, from the attempt rows: [edge1_from, edge1_to) and
    [edge2_from, edge2_to) (empty ranges when not needed).
    """

    hours_from: datetime
    hours_to: datetime
    edge1_from: datetime
    edge1_to: datetime
    edge2_from: datetime
    edge2_to: datetime

    def params(self) -> dict[str, datetime]:
        """The window as the `transcription_report` query's parameters."""
        return {
            "hours_from": self.hours_from,
            "hours_to": self.hours_to,
            "edge1_from": self.edge1_from,
            "edge1_to": self.edge1_to,
            "edge2_from": self.edge2_from,
            "edge2_to": self.edge2_to,
        }


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def split_window(since: datetime, until: datetime) -> Window:
    """Split [since, until) (aware datetimes in UTC, since < until) into rollup hours and
    edges. A window within one hour, or one without a whole hour inside, is all edge."""
    first_hour = _floor_hour(since)
    if first_hour < since:
        first_hour += HOUR
    last_hour = _floor_hour(until)
    if first_hour >= last_hour:
        return Window(since, since, since, until, until, until)
    return Window(first_hour, last_hour, since, first_hour, last_hour, until)


@dataclass
class ProviderFigures:
    """One provider and model over the window (see the module doc for the definitions)."""

    provider: str
    model: str
    attempts: int = 0
    ok: int = 0
    skipped: int = 0
    reference_jobs: int = 0
    rtf_ms: float = 0.0
    rtf_audio: float = 0.0
    wer_sum: float = 0.0
    wer_jobs: int = 0
    buckets: list[int] = field(default_factory=list)

    @property
    def success_rate(self) -> float | None:
        """ok / attempts, or None without attempts."""
        return round(self.ok / self.attempts, 4) if self.attempts else None

    @property
    def real_time_factor(self) -> float | None:
        """Total duration of the ok attempts over the audio seconds they transcribed."""
        if self.rtf_audio <= 0:
            return None
        return round(self.rtf_ms / 1000 / self.rtf_audio, 4)

    @property
    def wer_mean(self) -> float | None:
        """The mean word error rate against the jobs' reference, or None when never compared."""
        return round(self.wer_sum / self.wer_jobs, 4) if self.wer_jobs else None

    def duration_ms(self, bounds: Sequence[float], q: float) -> float | None:
        """The q-quantile of the ok attempts' durations (ms), estimated from the buckets."""
        if not self.buckets:
            return None
        value = histogram.quantile(bounds, self.buckets, q)
        return None if value is None else round(value, 1)


def provider_figures(rows: Iterable[Mapping[str, Any]], bucket_count: int) -> list[ProviderFigures]:
    """Add the `transcription_report` rows up per (provider, model), in name order.

    A row carries either a whole bucket array (`buckets`, from the rollups) or one
    bucket's count (`bucket`, `bucket_n`: 0-based bucket number, from the edges).
    """
    found: dict[tuple[str, str], ProviderFigures] = {}
    for row in rows:
        key = (row["provider"], row["model"])
        figures = found.get(key)
        if figures is None:
            figures = found[key] = ProviderFigures(*key, buckets=[0] * bucket_count)
        figures.attempts += int(row["attempts"])
        figures.ok += int(row["ok"])
        figures.skipped += int(row["skipped"])
        figures.reference_jobs += int(row["reference"])
        figures.rtf_ms += float(row["rtf_ms"])
        figures.rtf_audio += float(row["rtf_audio"])
        figures.wer_sum += float(row["wer_sum"])
        figures.wer_jobs += int(row["wer_n"])
        if row["buckets"] is not None:
            for index, count in enumerate(row["buckets"]):
                figures.buckets[index] += int(count)
        elif row["bucket"] is not None:
            figures.buckets[int(row["bucket"])] += int(row["bucket_n"])
    return [found[key] for key in sorted(found)]


def reference_provider(figures: Sequence[ProviderFigures]) -> str | None:
    """The provider that was the jobs' reference most often in the window (None: none)."""
    best = max(figures, key=lambda f: (f.reference_jobs, -figures.index(f)), default=None)
    return best.provider if best is not None and best.reference_jobs else None


@dataclass
class AttemptWer:
    """One attempt of a disagreeing job: its provider and WER against the reference."""

    provider: str
    model: str
    status: str
    is_reference: bool
    wer: float | None


@dataclass
class Disagreement:
    """A job whose providers disagree: the largest WER of its attempts, and each attempt."""

    job_id: UUID
    owner_service: str
    owner_ref: str
    finished_at: datetime
    disagreement: float
    attempts: list[AttemptWer] = field(default_factory=list)

    @property
    def reference_provider(self) -> str | None:
        """The job's reference provider (its selected attempt)."""
        return next((a.provider for a in self.attempts if a.is_reference), None)


def disagreements(rows: Iterable[Mapping[str, Any]]) -> list[Disagreement]:
    """The `transcription_disagreements` rows (one per attempt, jobs in order) per job."""
    jobs: dict[UUID, Disagreement] = {}
    for row in rows:
        job = jobs.get(row["job_id"])
        if job is None:
            job = jobs[row["job_id"]] = Disagreement(
                job_id=row["job_id"],
                owner_service=row["owner_service"],
                owner_ref=row["owner_ref"],
                finished_at=row["finished_at"],
                disagreement=float(row["disagreement"]),
            )
        job.attempts.append(
            AttemptWer(
                provider=row["provider"],
                model=row["model"],
                status=row["status"],
                is_reference=bool(row["is_reference"]),
                wer=None if row["wer"] is None else float(row["wer"]),
            )
        )
    return list(jobs.values())


@dataclass
class ComparedAttempt:
    """One attempt of a job, its text, and its alignment against the reference's text."""

    provider: str
    model: str | None
    status: str
    selected: bool
    duration_ms: float | None
    text: str | None
    wer: float | None
    alignment: list[Run] | None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def comparison(result: Mapping[str, Any]) -> tuple[str | None, list[ComparedAttempt]]:
    """A completed transcription job's attempts side by side: (reference provider, attempts).

    The reference is the selected attempt (its text is the result's `text`); every
    other successful attempt is aligned against it over normalised words, and its WER
    computed again from the texts (exact, whatever the result says). Attempts that
    are not JSON objects are left out.
    """
    attempts = [a for a in result.get("attempts") or [] if isinstance(a, dict)]
    reference = next((a for a in attempts if a.get("selected") is True), None)
    reference_text = result.get("text") if isinstance(result.get("text"), str) else None
    reference_words = wer.normalise(reference_text or "")
    compared: list[ComparedAttempt] = []
    for attempt in attempts:
        selected = attempt is reference
        text = reference_text if selected else attempt.get("text")
        text = text if isinstance(text, str) else None
        alignment: list[Run] | None = None
        rate: float | None = None
        if reference is not None and not selected and attempt.get("status") == "ok":
            words = wer.normalise(text or "")
            rate = wer.rate(reference_words, words)
            if rate is not None:
                alignment = wer.align(reference_words, words)
        model = attempt.get("model")
        compared.append(
            ComparedAttempt(
                provider=str(attempt.get("provider")),
                model=model if isinstance(model, str) else None,
                status=str(attempt.get("status")),
                selected=selected,
                duration_ms=_number(attempt.get("duration_ms")),
                text=text,
                wer=rate,
                alignment=alignment,
            )
        )
    provider = reference.get("provider") if reference is not None else None
    return (provider if isinstance(provider, str) else None), compared
