"""The transcription A/B report's rows: written by the `jobs_transcription_report` trigger
when a transcription job completes, folded into hourly rollups, read back by the report
(`routes_reports.transcription_report`), deleted by retention and by TRUNCATE."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ai_service.api.routes_reports import transcription_report
from ai_service.jobs import Job
from ai_service.store import Completion, Store
from tests.helpers import new_job


async def sql(store: Store, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with store.pool.connection() as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


def attempt(provider: str, status: str = "ok", **fields: Any) -> dict[str, Any]:
    return {
        "provider": provider,
        "model": f"{provider}-model",
        "status": status,
        "selected": False,
        "duration_ms": 1000,
        **fields,
    }


def three_providers(wer_qwen: float = 0.25, wer_voxtral: float = 0.5) -> dict[str, Any]:
    """A compare-mode result: whisperx the reference, the two audio LLMs compared to it."""
    return {
        "text": "reference text",
        "provider": "whisperx",
        "audio_duration": 10.0,
        "attempts": [
            attempt("whisperx", selected=True, duration_ms=2000),
            attempt("qwen2-audio", duration_ms=5000, wer=wer_qwen, text="..."),
            attempt("voxtral-small", duration_ms=8000, wer=wer_voxtral, text="..."),
        ],
    }


async def running(store: Store, task_type: str = "transcription", **fields: Any) -> Job:
    owner_ref = f"call-{uuid.uuid4().hex[:8]}"
    [outcome] = await store.create_jobs(
        [new_job(task_type=task_type, model_profile="default", owner_ref=owner_ref, **fields)]
    )
    [claimed] = await store.claim("w1", limit=1, lease_seconds=60, task_types=[task_type])
    assert claimed.id == outcome.job.id
    return claimed


async def completed(store: Store, result: dict[str, Any], **fields: Any) -> Job:
    job = await running(store, **fields)
    assert job.lease_token is not None
    await store.complete(job.id, result, job.lease_token)
    return job


async def rows_of(store: Store, job: Job) -> list[dict[str, Any]]:
    return await sql(
        store,
        "SELECT * FROM transcription_attempts WHERE job_id = %s ORDER BY position",
        [job.id],
    )


def now() -> datetime:
    return datetime.now(UTC)


# -- rows at completion ---------------------------------------------------------------


async def test_completion_writes_one_row_per_attempt(store: Store) -> None:
    job = await completed(store, three_providers(), owner_service="telephony")

    rows = await rows_of(store, job)
    assert [
        (r["position"], r["provider"], r["model"], r["status"], r["duration_ms"], r["wer"])
        for r in rows
    ] == [
        (0, "whisperx", "whisperx-model", "ok", 2000.0, None),
        (1, "qwen2-audio", "qwen2-audio-model", "ok", 5000.0, 0.25),
        (2, "voxtral-small", "voxtral-small-model", "ok", 8000.0, 0.5),
    ]
    assert [r["is_reference"] for r in rows] == [True, False, False]
    # The reference row carries the job's largest disagreement; the others none.
    assert [r["disagreement"] for r in rows] == [0.5, None, None]
    assert {r["owner_service"] for r in rows} == {"telephony"}
    assert {r["audio_seconds"] for r in rows} == {10.0}
    [finished] = await sql(store, "SELECT finished_at FROM jobs WHERE id = %s", [job.id])
    assert {r["finished_at"] for r in rows} == {finished["finished_at"]}
    deltas = await sql(store, "SELECT count(*) AS n FROM transcription_rollup_deltas")
    assert deltas[0]["n"] == 3


async def test_batched_completions_write_rows_too(store: Store) -> None:
    job = await running(store)
    assert job.lease_token is not None
    await store.complete_many([Completion(job.id, job.lease_token, three_providers())])
    assert len(await rows_of(store, job)) == 3


async def test_other_task_types_and_failures_write_nothing(store: Store) -> None:
    # Another task type with a result that looks like a transcription: no rows.
    other = await completed(store, three_providers(), task_type="llm_chat")
    assert await rows_of(store, other) == []
    # A transcription job that fails: no rows.
    failing = await running(store)
    assert failing.lease_token is not None
    await store.fail(
        failing.id,
        category="provider_error",
        message="all providers failed",
        details={"attempts": three_providers()["attempts"]},
        lease_token=failing.lease_token,
    )
    assert await rows_of(store, failing) == []
    assert (await sql(store, "SELECT count(*) AS n FROM transcription_attempts"))[0]["n"] == 0


async def test_a_result_of_odd_shape_still_completes(store: Store) -> None:
    # An external worker's result: non-numbers, absurd numbers, a huge provider name,
    # entries that are no objects. The completion must succeed and keep what it can.
    result = {
        "audio_duration": "long",
        "attempts": [
            "not an object",
            {"provider": "x" * 5000, "status": "ok", "selected": True, "duration_ms": -5},
            {"provider": "b", "status": "weird"},
            {"provider": "c", "status": "ok", "duration_ms": 1e300, "wer": "high"},
            {"status": "ok"},
        ],
    }
    job = await completed(store, result)
    rows = await rows_of(store, job)
    assert [(r["position"], len(r["provider"]), r["duration_ms"], r["wer"]) for r in rows] == [
        (1, 100, None, None),
        (3, 1, None, None),
    ]
    assert rows[0]["audio_seconds"] is None
    # At most 32 attempts of one job are kept.
    many = await completed(store, {"attempts": [attempt(f"p{n}") for n in range(40)]})
    assert len(await rows_of(store, many)) == 32
    # A result without attempts at all.
    bare = await completed(store, {"text": "hi"})
    assert await rows_of(store, bare) == []


# -- the report --------------------------------------------------------------------


async def test_report_adds_up_rollups_and_edges_alike(store: Store) -> None:
    await completed(store, three_providers(0.2, 0.4), owner_service="telephony")
    await completed(store, three_providers(0.4, 0.6), owner_service="telephony")
    failed_qwen = three_providers()
    failed_qwen["attempts"][1] = attempt("qwen2-audio", "error", duration_ms=300)
    failed_qwen["attempts"][2]["wer"] = 0.8
    await completed(store, failed_qwen, owner_service="crm")

    moment = now()
    hour = moment.replace(minute=0, second=0, microsecond=0)
    # Only edges (a window inside the current hour), from the attempt rows...
    edges = await transcription_report(
        store, since=moment - timedelta(minutes=1), until=moment + timedelta(minutes=1)
    )
    # ...and, once folded, whole hours from the rollups (plus 30 minutes of edge before).
    assert await store.compact_transcription_rollups() == 9
    assert (await sql(store, "SELECT count(*) AS n FROM transcription_rollup_deltas"))[0]["n"] == 0
    hours = await transcription_report(
        store, since=hour - timedelta(minutes=30), until=hour + timedelta(hours=2)
    )
    for answer in (edges, hours):
        by_provider = {p.provider: p for p in answer.providers}
        assert list(by_provider) == ["qwen2-audio", "voxtral-small", "whisperx"]
        whisperx, qwen, voxtral = (
            by_provider["whisperx"],
            by_provider["qwen2-audio"],
            by_provider["voxtral-small"],
        )
        assert (whisperx.attempts, whisperx.ok, whisperx.reference_jobs) == (3, 3, 3)
        assert (qwen.attempts, qwen.ok, qwen.errors, qwen.success_rate) == (3, 2, 1, 0.6667)
        assert answer.reference_provider == "whisperx"
        assert whisperx.wer_mean is None
        assert whisperx.wer_jobs == 0
        assert (qwen.wer_mean, qwen.wer_jobs) == (0.3, 2)  # (0.2 + 0.4) / 2
        assert (voxtral.wer_mean, voxtral.wer_jobs) == (0.6, 3)  # (0.4 + 0.6 + 0.8) / 3
        # RTF: whisperx 3 x 2 s over 3 x 10 s of audio; qwen's failure does not count.
        assert whisperx.real_time_factor == 0.2
        assert qwen.real_time_factor == 0.5
        assert voxtral.real_time_factor == 0.8
        # Every whisperx attempt took 2000 ms: the estimate lies in 2000's bucket.
        assert whisperx.duration_p50_ms is not None
        assert 1600 <= whisperx.duration_p50_ms <= 2500
        assert voxtral.duration_p95_ms is not None
        assert 6400 <= voxtral.duration_p95_ms <= 10000
        # Disagreements: highest first, each with every provider's WER.
        assert [d.max_wer for d in answer.disagreements] == [0.8, 0.6, 0.4]
        top = answer.disagreements[0]
        assert top.owner_service == "crm"
        assert top.reference_provider == "whisperx"
        assert [(p.provider, p.status, p.reference, p.wer) for p in top.providers] == [
            ("whisperx", "ok", True, None),
            ("qwen2-audio", "error", False, None),
            ("voxtral-small", "ok", False, 0.8),
        ]

    # One owner only, and a limit.
    crm = await transcription_report(
        store,
        since=hour - timedelta(minutes=30),
        until=hour + timedelta(hours=2),
        owner_service="crm",
        limit=1,
    )
    assert {p.provider: p.attempts for p in crm.providers} == {
        "qwen2-audio": 1,
        "voxtral-small": 1,
        "whisperx": 1,
    }
    assert [d.max_wer for d in crm.disagreements] == [0.8]
    # A window before everything is empty.
    empty = await transcription_report(
        store, since=hour - timedelta(hours=5), until=hour - timedelta(hours=1)
    )
    assert (empty.providers, empty.disagreements, empty.reference_provider) == ([], [], None)


async def test_a_fold_adds_to_existing_rollups(store: Store) -> None:
    await completed(store, three_providers())
    assert await store.compact_transcription_rollups() == 3
    await completed(store, three_providers())
    assert await store.compact_transcription_rollups() == 3
    rows = await sql(
        store, "SELECT provider, attempts, wer_n FROM transcription_rollups ORDER BY provider"
    )
    assert [(r["provider"], r["attempts"], r["wer_n"]) for r in rows] == [
        ("qwen2-audio", 2, 2),
        ("voxtral-small", 2, 2),
        ("whisperx", 2, 0),
    ]


# -- retention and TRUNCATE ------------------------------------------------------------


async def test_retention_deletes_the_rows_with_their_job(store: Store) -> None:
    old = await completed(store, three_providers())
    kept = await completed(store, three_providers())
    await sql(
        store,
        "UPDATE jobs SET finished_at = now() - interval '30 days' WHERE id = %s",
        [old.id],
    )
    deleted = await store.prune_finished(completed_seconds=7 * 86400, failed_seconds=7 * 86400)
    assert deleted == 1
    assert await rows_of(store, old) == []
    assert len(await rows_of(store, kept)) == 3


async def test_truncate_clears_the_report(store: Store) -> None:
    await completed(store, three_providers())
    await completed(store, three_providers())
    await store.compact_transcription_rollups()
    await completed(store, three_providers())
    await sql(store, "TRUNCATE jobs")
    for table in ("transcription_attempts", "transcription_rollups", "transcription_rollup_deltas"):
        assert (await sql(store, f"SELECT count(*) AS n FROM {table}"))[0]["n"] == 0


async def test_old_rollups_are_pruned(store: Store) -> None:
    await completed(store, three_providers())
    await store.compact_transcription_rollups()
    await sql(store, "UPDATE transcription_rollups SET hour = hour - interval '33 days'")
    assert await store.prune_transcription_rollups() == 3
    assert await store.prune_transcription_rollups() == 0


@pytest.mark.parametrize("task_type", ["transcription", "transcribe"])
async def test_both_transcription_task_types_count(store: Store, task_type: str) -> None:
    job = await completed(store, three_providers(), task_type=task_type)
    assert len(await rows_of(store, job)) == 3
