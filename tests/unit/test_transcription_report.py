"""The report's pure parts: the window split, adding rows up, the side-by-side view,
and the query window's defaults and bounds (`routes_reports.report_window`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ai_service import errors
from ai_service import transcription_report as report
from ai_service.api.routes_reports import report_window
from ai_service.wer import Run


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- split_window ---------------------------------------------------------------------


def test_a_window_across_hours_is_edges_plus_whole_hours() -> None:
    window = report.split_window(at("2026-05-01T10:20"), at("2026-05-01T14:05"))
    assert (window.hours_from, window.hours_to) == (at("2026-05-01T11:00"), at("2026-05-01T14:00"))
    assert (window.edge1_from, window.edge1_to) == (at("2026-05-01T10:20"), at("2026-05-01T11:00"))
    assert (window.edge2_from, window.edge2_to) == (at("2026-05-01T14:00"), at("2026-05-01T14:05"))


def test_a_window_on_whole_hours_has_empty_edges() -> None:
    window = report.split_window(at("2026-05-01T10:00"), at("2026-05-02T10:00"))
    assert (window.hours_from, window.hours_to) == (at("2026-05-01T10:00"), at("2026-05-02T10:00"))
    assert window.edge1_from == window.edge1_to
    assert window.edge2_from == window.edge2_to


@pytest.mark.parametrize(
    ("since", "until"),
    [
        ("2026-05-01T10:20", "2026-05-01T10:50"),  # inside one hour
        ("2026-05-01T10:20", "2026-05-01T11:10"),  # across one boundary, no whole hour
    ],
)
def test_a_window_without_a_whole_hour_is_all_edge(since: str, until: str) -> None:
    window = report.split_window(at(since), at(until))
    assert window.hours_from == window.hours_to  # no rollup read
    assert (window.edge1_from, window.edge1_to) == (at(since), at(until))
    assert window.edge2_from == window.edge2_to


# -- provider_figures ----------------------------------------------------------------


def row(provider: str, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "provider": provider,
        "model": f"{provider}-m",
        "attempts": 0,
        "ok": 0,
        "skipped": 0,
        "reference": 0,
        "rtf_ms": 0.0,
        "rtf_audio": 0.0,
        "wer_sum": 0.0,
        "wer_n": 0,
        "buckets": None,
        "bucket": None,
        "bucket_n": 0,
    }
    return base | values


def test_rollup_and_edge_rows_add_up() -> None:
    bounds = [100.0, 1000.0, 10000.0]
    rows = [
        # a rollup: 3 attempts, 2 ok (one in bucket 1, one in bucket 2)
        row("qwen", attempts=3, ok=2, rtf_ms=3000.0, rtf_audio=30.0, wer_sum=0.5, wer_n=2,
            buckets=[0, 1, 1, 0]),
        # edge rows grouped by bucket: 1 ok in bucket 2, then 1 error without a bucket
        row("qwen", attempts=1, ok=1, rtf_ms=2000.0, rtf_audio=10.0, wer_sum=0.1, wer_n=1,
            bucket=2, bucket_n=1),
        row("qwen", attempts=1, ok=0, bucket=None),
        row("whisperx", attempts=2, ok=2, reference=2, rtf_ms=1000.0, rtf_audio=40.0,
            buckets=[0, 2, 0, 0]),
        row("voxtral", skipped=4),
    ]  # fmt: skip
    figures = report.provider_figures(rows, len(bounds) + 1)
    assert [f.provider for f in figures] == ["qwen", "voxtral", "whisperx"]
    qwen, voxtral, whisperx = figures
    assert (qwen.attempts, qwen.ok, qwen.buckets) == (5, 3, [0, 1, 2, 0])
    assert qwen.success_rate == 0.6
    assert qwen.real_time_factor == 0.125  # 5 s of work over 40 s of audio
    assert qwen.wer_mean == 0.2  # (0.5 + 0.1) / 3
    assert qwen.wer_jobs == 3
    # 3 ok: the median (rank 1.5) lies in bucket 2 ([1000, 10000)), half-way through
    # its 2 values: 1000 + 9000 * 0.5 / 2.
    assert qwen.duration_ms(bounds, 0.5) == 3250.0
    assert (voxtral.attempts, voxtral.skipped, voxtral.success_rate) == (0, 4, None)
    assert (voxtral.real_time_factor, voxtral.wer_mean, voxtral.duration_ms(bounds, 0.5)) == (
        None,
        None,
        None,
    )
    assert whisperx.real_time_factor == 0.025
    assert report.reference_provider(figures) == "whisperx"


def test_the_reference_provider_is_none_without_references() -> None:
    figures = report.provider_figures([row("qwen", attempts=1)], 4)
    assert report.reference_provider(figures) is None
    assert report.reference_provider([]) is None


# -- disagreements -----------------------------------------------------------------


def test_disagreement_rows_group_per_job_in_order() -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    finished = at("2026-05-01T10:00")

    def attempt(job: uuid.UUID, provider: str, ref: bool, wer: float | None) -> dict[str, Any]:
        return {
            "job_id": job,
            "owner_service": "telephony",
            "owner_ref": f"ref-{job}",
            "finished_at": finished,
            "disagreement": 0.9 if job == first else 0.3,
            "provider": provider,
            "model": "m",
            "status": "ok",
            "is_reference": ref,
            "wer": wer,
        }

    rows = [
        attempt(first, "whisperx", True, None),
        attempt(first, "qwen", False, 0.9),
        attempt(second, "qwen", True, None),
        attempt(second, "voxtral", False, 0.3),
    ]
    jobs = report.disagreements(rows)
    assert [(j.job_id, j.disagreement, j.reference_provider) for j in jobs] == [
        (first, 0.9, "whisperx"),
        (second, 0.3, "qwen"),
    ]
    assert [(a.provider, a.wer) for a in jobs[0].attempts] == [("whisperx", None), ("qwen", 0.9)]


# -- comparison ----------------------------------------------------------------------


def test_comparison_aligns_every_other_successful_attempt() -> None:
    result = {
        "text": "Да, конечно.",
        "attempts": [
            {"provider": "whisperx", "model": "large-v3", "status": "ok", "selected": True,
             "duration_ms": 100},
            {"provider": "qwen2-audio", "model": "q", "status": "ok", "selected": False,
             "text": "да конечно нет", "duration_ms": 200},
            {"provider": "voxtral-small", "model": "v", "status": "error", "selected": False,
             "text": None, "duration_ms": 5},
            "junk",
        ],
    }  # fmt: skip
    reference, attempts = report.comparison(result)
    assert reference == "whisperx"
    assert [(a.provider, a.selected, a.text, a.wer) for a in attempts] == [
        ("whisperx", True, "Да, конечно.", None),
        ("qwen2-audio", False, "да конечно нет", 0.5),  # 1 insertion / 2 words
        ("voxtral-small", False, None, None),
    ]
    assert attempts[0].alignment is None
    assert attempts[1].alignment == [
        Run("equal", ("да", "конечно"), ("да", "конечно")),
        Run("insert", (), ("нет",)),
    ]
    assert attempts[2].alignment is None
    assert attempts[1].duration_ms == 200.0


def test_comparison_without_a_selected_attempt_compares_nothing() -> None:
    reference, attempts = report.comparison(
        {"attempts": [{"provider": "a", "status": "ok", "text": "x"}]}
    )
    assert reference is None
    assert [(a.wer, a.alignment) for a in attempts] == [(None, None)]
    assert report.comparison({}) == (None, [])


# -- report_window ------------------------------------------------------------------

NOW = at("2026-05-10T12:00")


def test_the_window_defaults_to_the_last_day() -> None:
    assert report_window(None, None, NOW) == (NOW - timedelta(hours=24), NOW)
    until = at("2026-05-01T00:00")
    assert report_window(None, until, NOW) == (until - timedelta(hours=24), until)
    since = at("2026-05-10T00:00")
    assert report_window(since, None, NOW) == (since, NOW)


def test_the_window_is_given_back_in_utc() -> None:
    moscow = timezone(timedelta(hours=3))
    since = datetime(2026, 5, 10, 3, 0, tzinfo=moscow)
    start, end = report_window(since, None, NOW)
    assert start == at("2026-05-10T00:00")
    assert start.utcoffset() == timedelta(0)
    assert end == NOW


@pytest.mark.parametrize(
    ("since", "until", "field"),
    [
        ("2026-05-10T12:00", "2026-05-10T12:00", "until"),
        ("2026-05-10T13:00", "2026-05-10T12:00", "until"),
        ("2026-05-11T00:00", None, "since"),  # after now, until not given
        ("2026-04-01T00:00", "2026-05-02T00:01", "since"),  # 31 days and a minute
        (None, "2026-06-01T00:00", None),  # the default 24 h: fine
    ],
)
def test_the_window_must_be_forward_and_at_most_31_days(
    since: str | None, until: str | None, field: str | None
) -> None:
    start = at(since) if since else None
    end = at(until) if until else None
    if field is None:
        report_window(start, end, NOW)
        return
    with pytest.raises(errors.InvalidRequest) as caught:
        report_window(start, end, NOW)
    assert caught.value.field == field


def test_thirty_one_days_exactly_is_allowed() -> None:
    since = at("2026-04-09T12:00")
    assert report_window(since, None, NOW) == (since, NOW)
