"""`Store` against a real PostgreSQL: create, idempotency, get, list, claim, bulk actions,
counters and statistics. State-machine transitions live in `test_transitions.py`."""

from __future__ import annotations

import asyncio
import base64
import itertools
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from ai_service import errors, histogram
from ai_service import store as store_module
from ai_service.jobs import JOB_COLUMNS, Job, JobFilter, JobStatus
from ai_service.store import BulkOutcome, JobPage, Store
from tests.helpers import free_port, new_job

# -- helpers ---------------------------------------------------------------------------


async def sql(store: Store, query: str, params: Any = None) -> list[dict[str, Any]]:
    """Run raw SQL on the store's pool (autocommit, dict rows)."""
    async with store.pool.connection() as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def create(store: Store, **overrides: Any) -> Job:
    [outcome] = await store.create_jobs([new_job(**overrides)])
    assert outcome.created
    return outcome.job


async def claim_one(store: Store, job: Job, worker: str = "w1") -> Job:
    """Claim exactly `job` (the caller makes sure it is the only pending job of its type)."""
    [claimed] = await store.claim(worker, limit=1, lease_seconds=60, task_types=[job.task_type])
    assert claimed.id == job.id
    return claimed


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# -- create and get --------------------------------------------------------------------


async def test_create_then_get_returns_the_same_job(store: Store) -> None:
    [created] = await store.create_jobs([new_job()])
    assert created.created
    fetched = await store.get_job(created.job.id)
    assert fetched == created.job


async def test_created_jobs_equal_their_stored_rows_with_and_without_keys(store: Store) -> None:
    # The insert does not read the payloads back: what it answers must be the row anyway.
    payload = {"z": [1, 2.5, None], "a": {"nested": "ü"}, "big": 2**70}
    later = datetime.now(UTC) + timedelta(hours=1)
    batches = [
        [new_job(owner_ref=f"plain/{i}", input=payload, priority=i) for i in range(3)],
        [new_job(owner_ref="keyed", idempotency_key="eq-1", input=payload, run_after=later)],
        [new_job(owner_ref="deadline", input=payload, timeout_seconds=90, max_attempts=5)],
    ]
    for batch in batches:
        for outcome in await store.create_jobs(batch):
            assert outcome.created
            assert await store.get_job(outcome.job.id) == outcome.job


async def test_create_fills_in_the_defaults(store: Store) -> None:
    job = await create(store)
    assert job.status is JobStatus.PENDING
    assert job.id.version == 7
    assert (job.attempt, job.max_attempts, job.priority) == (0, 3, 0)
    assert job.errors == []
    assert job.result is None
    assert (job.error_category, job.error_message, job.error_details) == (None, None, None)
    assert (job.worker_id, job.lease_token, job.lease_expires_at) == (None, None, None)
    assert job.idempotency_key is None
    assert (job.started_at, job.finished_at) == (None, None)
    assert job.run_after == job.created_at == job.updated_at


async def test_create_stores_every_given_field(store: Store) -> None:
    run_after = datetime.now(UTC) + timedelta(hours=1)
    payload = {"messages": [{"role": "user", "content": "привет"}], "max_tokens": 256, "n": None}
    job = await create(
        store,
        owner_service="monitoring-tg",
        owner_ref="channel/42",
        task_type="tg_analysis",
        model_profile="vision",
        input=payload,
        priority=-7,
        max_attempts=9,
        run_after=run_after,
        idempotency_key="k-1",
    )
    fetched = await store.get_job(job.id)
    assert fetched == job
    assert (job.owner_service, job.owner_ref) == ("monitoring-tg", "channel/42")
    assert (job.task_type, job.model_profile) == ("tg_analysis", "vision")
    assert job.input == payload
    assert (job.priority, job.max_attempts) == (-7, 9)
    assert job.run_after == run_after
    assert job.idempotency_key == "k-1"


async def test_create_many_answers_in_input_order(store: Store) -> None:
    outcomes = await store.create_jobs([new_job(owner_ref=f"ref/{i}") for i in range(50)])
    assert [o.job.owner_ref for o in outcomes] == [f"ref/{i}" for i in range(50)]
    assert all(o.created for o in outcomes)
    assert len({o.job.id for o in outcomes}) == 50


async def test_create_of_no_jobs_returns_nothing(store: Store) -> None:
    assert await store.create_jobs([]) == []


async def test_get_unknown_job_raises_job_not_found(store: Store) -> None:
    missing = uuid.uuid4()
    with pytest.raises(errors.JobNotFound) as info:
        await store.get_job(missing)
    assert info.value.job_id == missing


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"priority": 5000}, "jobs_priority_check"),
        ({"max_attempts": 0}, "jobs_max_attempts_check"),
        ({"max_attempts": 1001}, "jobs_max_attempts_check"),
        ({"owner_service": ""}, "jobs_owner_service_check"),
        ({"owner_ref": "x" * 501}, "jobs_owner_ref_check"),
        ({"input": ["not", "an", "object"]}, "jobs_input_check"),
        ({"idempotency_key": ""}, "jobs_idempotency_key_check"),
    ],
)
async def test_invalid_job_is_rejected_naming_the_constraint(
    store: Store, overrides: dict[str, Any], constraint: str
) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        await store.create_jobs([new_job(owner_ref="good"), new_job(**overrides)])
    assert info.value.field == constraint
    assert await sql(store, "SELECT id FROM jobs") == []  # the batch is all or nothing


async def test_nul_character_in_input_is_an_invalid_request_not_a_crash(store: Store) -> None:
    # The API refuses it earlier, naming the field; the store is the backstop.
    with pytest.raises(errors.InvalidRequest) as info:
        await store.create_jobs([new_job(input={"text": "a\u0000b"})])
    assert "rejected by the database" in info.value.message
    assert await store.list_jobs(JobFilter()) == JobPage([], None)


async def test_input_with_an_integer_beyond_64_bits_round_trips(store: Store) -> None:
    # store.py writes such integers with the stdlib encoder because PostgreSQL takes them;
    # reading them back must not turn them into floats.
    big = 2**70 + 1
    job = await create(store, input={"n": big})
    assert (await store.get_job(job.id)).input == {"n": big}


# -- idempotency -----------------------------------------------------------------------


async def test_same_idempotency_key_returns_the_existing_job(store: Store) -> None:
    first = await create(store, idempotency_key="call-1", input={"v": 1, "w": [1, 2]})
    # The same request (object members in another order) matches.
    [again] = await store.create_jobs(
        [new_job(idempotency_key="call-1", input={"w": [1, 2], "v": 1})]
    )
    assert again.created is False
    assert again.job == first
    assert len(await sql(store, "SELECT id FROM jobs")) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"input": {"v": 2}},
        {"owner_ref": "other-call"},
        {"task_type": "call_analysis"},
        {"model_profile": "vision"},
        {"priority": 1},
        {"max_attempts": 4},
        {"run_after": datetime(2030, 1, 1, tzinfo=UTC)},
    ],
)
async def test_same_key_with_another_request_is_a_conflict(
    store: Store, change: dict[str, Any]
) -> None:
    first = await create(store, idempotency_key="call-1", input={"v": 1})
    with pytest.raises(errors.IdempotencyConflict) as info:
        await store.create_jobs(
            [new_job(idempotency_key="call-1", **({"input": {"v": 1}} | change))]
        )
    assert info.value.field == "jobs[0].idempotency_key"
    assert info.value.job_id == first.id
    assert [r["id"] for r in await sql(store, "SELECT id FROM jobs")] == [first.id]


async def test_a_conflicting_batch_item_inserts_nothing(store: Store) -> None:
    first = await create(store, idempotency_key="old", input={"v": 1})
    with pytest.raises(errors.IdempotencyConflict) as info:
        await store.create_jobs(
            [
                new_job(idempotency_key="new-1"),
                new_job(),
                new_job(idempotency_key="old", input={"v": 2}),
                new_job(idempotency_key="new-2"),
            ]
        )
    assert info.value.field == "jobs[2].idempotency_key"
    assert [r["id"] for r in await sql(store, "SELECT id FROM jobs")] == [first.id]


async def test_a_job_stored_without_a_fingerprint_matches_any_request(store: Store) -> None:
    # Jobs created before fingerprints existed cannot be compared: they keep matching.
    first = await create(store, idempotency_key="legacy", input={"v": 1})
    await sql(store, "UPDATE jobs SET request_hash = NULL WHERE id = %s", [first.id])
    [again] = await store.create_jobs([new_job(idempotency_key="legacy", input={"v": 2})])
    assert (again.created, again.job.id) == (False, first.id)


async def test_only_jobs_with_a_key_store_a_fingerprint(store: Store) -> None:
    keyed = await create(store, idempotency_key="k")
    plain = await create(store)
    rows = await sql(store, "SELECT id, request_hash FROM jobs")
    hashes = {r["id"]: r["request_hash"] for r in rows}
    assert hashes[plain.id] is None
    assert hashes[keyed.id] == new_job(idempotency_key="k").fingerprint()


async def test_existing_key_is_returned_whatever_the_job_became(store: Store) -> None:
    first = await create(store, idempotency_key="call-1")
    completed = await store.complete(first.id, {"ok": True})
    [again] = await store.create_jobs([new_job(idempotency_key="call-1")])
    assert again.created is False
    assert again.job == completed


async def test_idempotency_key_is_unique_per_owner_service(store: Store) -> None:
    outcomes = await store.create_jobs(
        [
            new_job(owner_service="telephony", idempotency_key="same"),
            new_job(owner_service="monitoring-tg", idempotency_key="same"),
        ]
    )
    assert [o.created for o in outcomes] == [True, True]
    assert outcomes[0].job.id != outcomes[1].job.id
    assert len(await sql(store, "SELECT id FROM jobs")) == 2


async def test_jobs_without_a_key_are_never_deduplicated(store: Store) -> None:
    outcomes = await store.create_jobs([new_job(), new_job()])
    assert [o.created for o in outcomes] == [True, True]
    assert outcomes[0].job.id != outcomes[1].job.id


async def test_duplicate_keys_within_one_batch_resolve_to_one_job(store: Store) -> None:
    outcomes = await store.create_jobs(
        [
            new_job(idempotency_key="a", owner_ref="first"),
            new_job(idempotency_key="a", owner_ref="first"),
            new_job(),
            new_job(idempotency_key="b"),
            new_job(idempotency_key="a", owner_ref="first"),
        ]
    )
    assert [o.created for o in outcomes] == [True, False, True, True, False]
    assert outcomes[1].job == outcomes[4].job == outcomes[0].job
    assert outcomes[0].job.owner_ref == "first"
    assert len(await sql(store, "SELECT id FROM jobs")) == 3


async def test_one_key_for_two_different_items_of_a_batch_is_a_conflict(store: Store) -> None:
    with pytest.raises(errors.IdempotencyConflict) as info:
        await store.create_jobs(
            [
                new_job(idempotency_key="a", owner_ref="first"),
                new_job(idempotency_key="a", owner_ref="second"),
            ]
        )
    assert info.value.field == "jobs[1].idempotency_key"
    assert await sql(store, "SELECT id FROM jobs") == []


async def test_batch_mixing_new_and_existing_keys(store: Store) -> None:
    old = await create(store, idempotency_key="old")
    outcomes = await store.create_jobs(
        [new_job(idempotency_key="new"), new_job(idempotency_key="old")]
    )
    assert outcomes[0].created is True
    assert outcomes[1] == store_module.Created(old, False)


async def test_concurrent_creates_with_one_key_make_exactly_one_job(database_url: str) -> None:
    # 20 connections opened up front so that the 20 creates really run side by side.
    many = await Store.open(database_url, min_size=20, max_size=20, wait=True)
    try:
        for round_ in range(5):
            key = f"race-{round_}"
            outcomes = await asyncio.gather(
                *(many.create_jobs([new_job(idempotency_key=key)]) for _ in range(20))
            )
            results = [o for [o] in outcomes]
            assert sum(o.created for o in results) == 1
            assert len({o.job.id for o in results}) == 1
            rows = await sql(many, "SELECT id FROM jobs WHERE idempotency_key = %s", [key])
            assert [r["id"] for r in rows] == [results[0].job.id]
    finally:
        await many.close()


# -- list ------------------------------------------------------------------------------


async def _fixture_jobs(store: Store) -> dict[str, Job]:
    """Jobs spread over every status and filterable column, keyed by a label."""
    jobs: dict[str, Job] = {}
    jobs["pending"] = await create(store, owner_ref="a", task_type="llm_chat")
    running = await create(
        store, owner_service="monitoring-tg", owner_ref="b", task_type="tg_analysis"
    )
    jobs["running"] = await claim_one(store, running, worker="w1")
    failed = await create(store, owner_ref="c", task_type="transcription", model_profile="whisperx")
    await claim_one(store, failed, worker="w2")
    jobs["failed"] = await store.fail(
        failed.id,
        category="invalid_input",
        message="bad audio",
        lease_token=(await store.get_job(failed.id)).lease_token,
    )
    mirror_failed = await create(store, owner_ref="a", task_type="llm_chat")
    jobs["mirror_failed"] = await store.fail(mirror_failed.id, category="timeout", message="slow")
    cancelled = await create(store, owner_ref="d", task_type="call_analysis")
    jobs["cancelled"] = await store.cancel(cancelled.id)
    completed = await create(
        store, owner_ref="e", task_type="transcription", model_profile="whisperx"
    )
    jobs["completed"] = await store.complete(completed.id, {"text": "hi"})
    return jobs


def _unpack(page: JobPage) -> tuple[list[Job], str | None]:
    assert not page.truncated
    return page.jobs, page.next_cursor


async def _listed(store: Store, job_filter: JobFilter) -> list[uuid.UUID]:
    jobs, next_cursor = _unpack(await store.list_jobs(job_filter, limit=500))
    assert next_cursor is None
    return [j.id for j in jobs]


@pytest.mark.parametrize(
    ("job_filter", "expected"),
    [
        (
            JobFilter(),
            {"pending", "running", "failed", "mirror_failed", "cancelled", "completed"},
        ),
        (JobFilter(statuses=(JobStatus.PENDING,)), {"pending"}),
        (JobFilter(statuses=(JobStatus.FAILED,)), {"failed", "mirror_failed"}),
        (
            JobFilter(statuses=(JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.COMPLETED)),
            {"running", "cancelled", "completed"},
        ),
        (JobFilter(owner_service="monitoring-tg"), {"running"}),
        (JobFilter(owner_ref="a"), {"pending", "mirror_failed"}),
        (JobFilter(task_type="llm_chat"), {"pending", "mirror_failed"}),
        (JobFilter(model_profile="whisperx"), {"failed", "completed"}),
        (JobFilter(worker_id="w1"), {"running"}),
        (JobFilter(worker_id="w2"), {"failed"}),
        (JobFilter(error_category="timeout"), {"mirror_failed"}),
        (JobFilter(error_category="invalid_input"), {"failed"}),
        (JobFilter(owner_ref="a", statuses=(JobStatus.FAILED,)), {"mirror_failed"}),
        (JobFilter(owner_service="nobody"), set()),
    ],
)
async def test_list_filters(store: Store, job_filter: JobFilter, expected: set[str]) -> None:
    jobs = await _fixture_jobs(store)
    assert set(await _listed(store, job_filter)) == {jobs[label].id for label in expected}


async def test_list_filters_by_creation_time(store: Store) -> None:
    # Each create is its own transaction, so the three jobs have distinct created_at.
    first, second, third = [await create(store, owner_ref=f"r{i}") for i in range(3)]
    assert first.created_at < second.created_at < third.created_at
    after = JobFilter(created_after=second.created_at)  # inclusive
    before = JobFilter(created_before=second.created_at)  # exclusive
    between = JobFilter(created_after=second.created_at, created_before=third.created_at)
    assert await _listed(store, after) == [third.id, second.id]
    assert await _listed(store, before) == [first.id]
    assert await _listed(store, between) == [second.id]


async def test_list_is_newest_first(store: Store) -> None:
    for batch in range(4):
        await store.create_jobs([new_job(owner_ref=f"{batch}/{i}") for i in range(5)])
    jobs, _ = _unpack(await store.list_jobs(JobFilter(), limit=100))
    keys = [(j.created_at, j.id) for j in jobs]
    assert len(keys) == 20
    assert keys == sorted(keys, reverse=True)


async def test_keyset_pagination_has_no_duplicates_and_no_gaps(store: Store) -> None:
    # 12 batches: jobs share created_at within a batch, so the id tie-break matters.
    for batch in range(12):
        await store.create_jobs([new_job(owner_ref=f"{batch}/{i}") for i in range(10)])
    everything, _ = _unpack(await store.list_jobs(JobFilter(), limit=500))
    assert len(everything) == 120

    page1, cursor = _unpack(await store.list_jobs(JobFilter(), limit=50))
    assert cursor is not None
    # Jobs created while paging are newer than the cursor and do not shift later pages.
    await store.create_jobs([new_job(owner_ref=f"late/{i}") for i in range(5)])
    page2, cursor = _unpack(await store.list_jobs(JobFilter(), limit=50, cursor=cursor))
    assert cursor is not None
    page3, cursor = _unpack(await store.list_jobs(JobFilter(), limit=50, cursor=cursor))
    assert cursor is None
    assert [len(page1), len(page2), len(page3)] == [50, 50, 20]
    assert [j.id for j in page1 + page2 + page3] == [j.id for j in everything]


async def test_pagination_with_a_status_filter(store: Store) -> None:
    outcomes = await store.create_jobs([new_job(owner_ref=str(i)) for i in range(90)])
    cancelled = {o.job.id for o in outcomes[::3]}
    for job_id in cancelled:
        await store.cancel(job_id)
    seen: list[uuid.UUID] = []
    cursor: str | None = None
    while True:
        page, cursor = _unpack(
            await store.list_jobs(
                JobFilter(statuses=(JobStatus.CANCELLED,)), limit=7, cursor=cursor
            )
        )
        seen.extend(j.id for j in page)
        assert all(j.status is JobStatus.CANCELLED for j in page)
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 30
    assert set(seen) == cancelled


async def test_last_full_page_has_no_next_cursor(store: Store) -> None:
    await store.create_jobs([new_job(owner_ref=str(i)) for i in range(100)])
    _, cursor = _unpack(await store.list_jobs(JobFilter(), limit=50))
    assert cursor is not None
    page, cursor = _unpack(await store.list_jobs(JobFilter(), limit=50, cursor=cursor))
    assert len(page) == 50
    assert cursor is None


async def test_list_reads_only_the_payload_columns_asked_for(store: Store) -> None:
    job = await create(store, input={"text": "hello"})
    running = await claim_one(store, job)
    await store.fail(
        job.id,
        category="timeout",
        message="slow",
        details={"after": 5},
        lease_token=running.lease_token,
        retryable=True,
    )
    full = await store.get_job(job.id)
    [summary] = (await store.list_jobs(JobFilter(), include=())).jobs
    assert (summary.input, summary.result, summary.errors, summary.error_details) == (
        None, None, None, None,
    )  # fmt: skip
    payload = {"input", "result", "errors", "error_details"}
    for name in JOB_COLUMNS:
        if name not in payload:
            assert getattr(summary, name) == getattr(full, name), name
    [some] = (await store.list_jobs(JobFilter(), include={"input", "errors"})).jobs
    assert (some.input, some.errors) == (full.input, full.errors)
    assert (some.result, some.error_details) == (None, None)
    # Everything by default.
    assert (await store.list_jobs(JobFilter())).jobs == [full]


async def test_list_page_stops_at_the_payload_budget(store: Store) -> None:
    outcomes = await store.create_jobs(
        [new_job(owner_ref=str(i), input={"pad": "x" * 1000}) for i in range(7)]
    )
    newest_first = [
        j.id
        for j in sorted((o.job for o in outcomes), key=lambda j: (j.created_at, j.id), reverse=True)
    ]
    seen: list[uuid.UUID] = []
    cursor: str | None = None
    sizes: list[int] = []
    while True:
        page = await store.list_jobs(
            JobFilter(), limit=5, cursor=cursor, include={"input"}, max_payload_bytes=2500
        )
        sizes.append(len(page.jobs))
        seen.extend(j.id for j in page.jobs)
        assert page.truncated == (page.next_cursor is not None)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sizes == [2, 2, 2, 1]  # two 1 KB inputs fit in 2.5 KB, a third does not
    assert seen == newest_first
    # Without payloads the budget is not spent: the row limit decides.
    page = await store.list_jobs(JobFilter(), limit=5, include=(), max_payload_bytes=2500)
    assert (len(page.jobs), page.truncated) == (5, False)
    # A job larger than the whole budget still comes, alone.
    page = await store.list_jobs(JobFilter(), limit=5, include={"input"}, max_payload_bytes=10)
    assert (len(page.jobs), page.truncated) == (1, True)


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "%%%",
        b64("garbage"),
        b64("2026-01-01T00:00:00+00:00|not-a-uuid"),
        b64(f"2026-01-01T00:00:00|{uuid.uuid4()}"),  # naive timestamp
        b64(f"yesterday|{uuid.uuid4()}"),
        b64(f"2026-01-01T00:00:00+00:00|{uuid.uuid4()}|extra"),
        base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
    ],
)
async def test_bad_cursor_is_rejected_naming_cursor(store: Store, cursor: str) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        await store.list_jobs(JobFilter(), cursor=cursor)
    assert info.value.field == "cursor"


# -- claim -----------------------------------------------------------------------------


async def test_claim_honours_task_types(store: Store) -> None:
    outcomes = await store.create_jobs(
        [new_job(task_type=t) for t in ("llm_chat", "transcription", "call_analysis")]
    )
    claimed = await store.claim(
        "w", limit=10, lease_seconds=60, task_types=["llm_chat", "call_analysis"]
    )
    assert {j.id for j in claimed} == {outcomes[0].job.id, outcomes[2].job.id}
    assert (await store.get_job(outcomes[1].job.id)).status is JobStatus.PENDING


async def test_claim_honours_model_profiles(store: Store) -> None:
    outcomes = await store.create_jobs(
        [new_job(model_profile=p) for p in ("qwen2.5-14b", "whisperx", "vision")]
    )
    claimed = await store.claim("w", limit=10, lease_seconds=60, model_profiles=["whisperx"])
    assert [j.id for j in claimed] == [outcomes[1].job.id]


async def test_claim_with_both_filters_needs_both_to_match(store: Store) -> None:
    outcomes = await store.create_jobs(
        [
            new_job(task_type="llm_chat", model_profile="qwen2.5-14b"),
            new_job(task_type="llm_chat", model_profile="vision"),
            new_job(task_type="transcription", model_profile="qwen2.5-14b"),
        ]
    )
    claimed = await store.claim(
        "w", limit=10, lease_seconds=60, task_types=["llm_chat"], model_profiles=["qwen2.5-14b"]
    )
    assert [j.id for j in claimed] == [outcomes[0].job.id]


async def test_claim_with_empty_filter_lists_claims_nothing(store: Store) -> None:
    await store.create_jobs([new_job()])
    assert await store.claim("w", limit=10, lease_seconds=60, task_types=[]) == []
    assert await store.claim("w", limit=10, lease_seconds=60, model_profiles=[]) == []


async def test_claim_order_is_priority_then_run_after_then_created_at(store: Store) -> None:
    now = datetime.now(UTC)
    low_old = await create(store, owner_ref="low-old", run_after=now - timedelta(seconds=30))
    high_late = await create(
        store, owner_ref="high-late", priority=5, run_after=now - timedelta(seconds=1)
    )
    high_early = await create(
        store, owner_ref="high-early", priority=5, run_after=now - timedelta(seconds=5)
    )
    # Same priority and run_after as low_old, created later: after it.
    low_old_2 = await create(store, owner_ref="low-old-2", run_after=now - timedelta(seconds=30))
    negative = await create(store, owner_ref="negative", priority=-1)
    order = [high_early, high_late, low_old, low_old_2, negative]

    one_by_one = [
        (await store.claim("w", limit=1, lease_seconds=60))[0].id for _ in range(len(order))
    ]
    assert one_by_one == [j.id for j in order]


async def test_claim_returns_a_batch_in_claim_order(store: Store) -> None:
    outcomes = await store.create_jobs([new_job(priority=p) for p in (1, 9, 5, 3, 7)])
    claimed = await store.claim("w", limit=5, lease_seconds=60)
    assert [j.priority for j in claimed] == [9, 7, 5, 3, 1]
    assert {j.id for j in claimed} == {o.job.id for o in outcomes}


async def test_claim_over_several_task_types_keeps_one_priority_order(store: Store) -> None:
    await store.create_jobs(
        [
            new_job(task_type=t, priority=p, owner_ref=f"{t}/{p}")
            for t, priorities in (("a", (1, 6, 3)), ("b", (5, 2, 9)), ("c", (8, 7, 4)))
            for p in priorities
        ]
    )
    first = await store.claim("w", limit=4, lease_seconds=60, task_types=["b", "a", "a"])
    assert [(j.task_type, j.priority) for j in first] == [("b", 9), ("a", 6), ("b", 5), ("a", 3)]
    rest = await store.claim("w", limit=10, lease_seconds=60, task_types=["a", "b"])
    assert [(j.task_type, j.priority) for j in rest] == [("b", 2), ("a", 1)]
    assert {j.task_type for j in await store.claim("w", limit=10, lease_seconds=60)} == {"c"}


async def test_claim_skips_jobs_scheduled_in_the_future(store: Store) -> None:
    later = await create(store, run_after=datetime.now(UTC) + timedelta(minutes=5))
    ready = await create(store)
    claimed = await store.claim("w", limit=10, lease_seconds=60)
    assert [j.id for j in claimed] == [ready.id]
    assert (await store.get_job(later.id)).status is JobStatus.PENDING


async def test_claim_takes_at_most_limit_jobs(store: Store) -> None:
    await store.create_jobs([new_job(owner_ref=str(i)) for i in range(10)])
    assert len(await store.claim("w", limit=4, lease_seconds=60)) == 4
    assert len(await store.claim("w", limit=4, lease_seconds=60)) == 4
    assert len(await store.claim("w", limit=4, lease_seconds=60)) == 2
    assert await store.claim("w", limit=4, lease_seconds=60) == []


async def test_claim_takes_only_pending_jobs(store: Store) -> None:
    done = await store.complete((await create(store)).id, {"ok": 1})
    cancelled = await store.cancel((await create(store)).id)
    failed = await store.fail((await create(store)).id, category="internal", message="x")
    assert await store.claim("w", limit=10, lease_seconds=60) == []
    for job in (done, cancelled, failed):
        assert await store.get_job(job.id) == job


# -- bulk retry and cancel by filter ---------------------------------------------------


async def _one_of_each_status(store: Store, owner_service: str) -> dict[JobStatus, Job]:
    task_type = f"t-{owner_service}"
    pending = await create(store, owner_service=owner_service, task_type=task_type)
    running = await claim_one(store, pending)
    pending = await create(store, owner_service=owner_service, task_type=task_type)
    failed_job = await create(store, owner_service=owner_service, task_type=task_type)
    failed = await store.fail(failed_job.id, category="internal", message="boom")
    completed = await store.complete(
        (await create(store, owner_service=owner_service, task_type=task_type)).id, {"ok": 1}
    )
    cancelled = await store.cancel(
        (await create(store, owner_service=owner_service, task_type=task_type)).id
    )
    return {
        JobStatus.PENDING: pending,
        JobStatus.RUNNING: running,
        JobStatus.FAILED: failed,
        JobStatus.COMPLETED: completed,
        JobStatus.CANCELLED: cancelled,
    }


async def test_retry_by_filter_retries_failed_jobs_and_running_ones_only_on_request(
    store: Store,
) -> None:
    mine = await _one_of_each_status(store, "telephony")
    other = await _one_of_each_status(store, "monitoring-pf")
    outcome = await store.retry_by_filter(JobFilter(owner_service="telephony"))
    assert outcome == BulkOutcome(1, [mine[JobStatus.FAILED].id])
    assert (await store.get_job(mine[JobStatus.FAILED].id)).status is JobStatus.PENDING
    # A running attempt is healthy work: the default leaves it (and its lease) alone.
    for status in (JobStatus.RUNNING, JobStatus.PENDING, JobStatus.COMPLETED, JobStatus.CANCELLED):
        assert await store.get_job(mine[status].id) == mine[status]
    running = JobFilter(owner_service="telephony", statuses=(JobStatus.RUNNING,))
    assert await store.retry_by_filter(running) == BulkOutcome(1, [mine[JobStatus.RUNNING].id])
    assert (await store.get_job(mine[JobStatus.RUNNING].id)).status is JobStatus.PENDING
    for job in other.values():
        assert await store.get_job(job.id) == job


async def test_retry_by_filter_with_statuses_narrows_to_allowed_ones(store: Store) -> None:
    mine = await _one_of_each_status(store, "telephony")
    not_allowed = JobFilter(statuses=(JobStatus.COMPLETED, JobStatus.CANCELLED))
    assert await store.retry_by_filter(not_allowed) == BulkOutcome(0, [])
    both = JobFilter(statuses=(JobStatus.FAILED, JobStatus.RUNNING, JobStatus.COMPLETED))
    outcome = await store.retry_by_filter(both)
    assert outcome.sample == sorted([mine[JobStatus.FAILED].id, mine[JobStatus.RUNNING].id])
    assert (await store.get_job(mine[JobStatus.COMPLETED].id)) == mine[JobStatus.COMPLETED]


async def _failed_then_running_again(store: Store, category: str) -> Job:
    """A job that failed once with `category`, was retried, and runs its second attempt."""
    job = await create(store, task_type="flaky")
    first = await claim_one(store, job)
    await store.fail(job.id, category=category, message="502", lease_token=first.lease_token)
    await store.retry(job.id)
    second = await claim_one(store, job, worker="w2")
    assert (second.status, second.attempt, second.error_category) == (
        JobStatus.RUNNING,
        2,
        category,  # the claim keeps the previous attempt's category
    )
    return second


async def test_bulk_retry_by_category_leaves_a_running_attempt_alone(store: Store) -> None:
    # The reproduction: a job failed once (provider_error), was retried and runs again;
    # a bulk retry of provider_error failures must not reset that healthy attempt.
    running = await _failed_then_running_again(store, "provider_error")
    failed = await create(store, owner_ref="still-failed")
    await store.fail(failed.id, category="provider_error", message="x")
    by_category = JobFilter(error_category="provider_error")
    assert await store.retry_by_filter(by_category) == BulkOutcome(1, [failed.id])
    assert await store.get_job(running.id) == running
    # Naming `running` does not change what a category matches: failed jobs only.
    also_running = JobFilter(
        error_category="provider_error", statuses=(JobStatus.FAILED, JobStatus.RUNNING)
    )
    assert await store.retry_by_filter(also_running) == BulkOutcome(0, [])
    assert await store.cancel_by_filter(by_category) == BulkOutcome(0, [])
    assert await store.get_job(running.id) == running


async def test_list_by_error_category_matches_failed_jobs_only(store: Store) -> None:
    running = await _failed_then_running_again(store, "provider_error")
    failed = await create(store, owner_ref="failed")
    await store.fail(failed.id, category="provider_error", message="x")
    backing_off = await create(store, owner_ref="backing-off", task_type="other")
    first = await claim_one(store, backing_off)
    pending = await store.fail(
        backing_off.id,
        category="provider_error",
        message="x",
        lease_token=first.lease_token,
        retryable=True,
    )
    assert (pending.status, pending.error_category) == (JobStatus.PENDING, "provider_error")
    assert await _listed(store, JobFilter(error_category="provider_error")) == [failed.id]
    for status in (JobStatus.RUNNING, JobStatus.PENDING):
        only = JobFilter(error_category="provider_error", statuses=(status,))
        assert await _listed(store, only) == []
    assert await _listed(store, JobFilter(statuses=(JobStatus.RUNNING,))) == [running.id]


async def test_cancel_by_filter_cancels_only_pending_and_running(store: Store) -> None:
    mine = await _one_of_each_status(store, "telephony")
    other = await _one_of_each_status(store, "monitoring-pf")
    outcome = await store.cancel_by_filter(JobFilter(owner_service="telephony"))
    assert outcome == BulkOutcome(
        2, sorted([mine[JobStatus.PENDING].id, mine[JobStatus.RUNNING].id])
    )
    for status in (JobStatus.PENDING, JobStatus.RUNNING):
        job = await store.get_job(mine[status].id)
        assert job.status is JobStatus.CANCELLED
        assert job.lease_token is None
        assert job.finished_at is not None
    for status in (JobStatus.FAILED, JobStatus.COMPLETED, JobStatus.CANCELLED):
        assert await store.get_job(mine[status].id) == mine[status]
    for job in other.values():
        assert await store.get_job(job.id) == job


async def test_cancel_by_filter_with_statuses_narrows_to_allowed_ones(store: Store) -> None:
    mine = await _one_of_each_status(store, "telephony")
    only_running = await store.cancel_by_filter(JobFilter(statuses=(JobStatus.RUNNING,)))
    assert only_running == BulkOutcome(1, [mine[JobStatus.RUNNING].id])
    failed = JobFilter(statuses=(JobStatus.FAILED,))
    assert await store.cancel_by_filter(failed) == BulkOutcome(0, [])
    assert (await store.get_job(mine[JobStatus.PENDING].id)).status is JobStatus.PENDING


async def test_bulk_actions_work_through_many_batches(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "FILTER_BATCH", 7)
    outcomes = await store.create_jobs([new_job(owner_ref=str(i)) for i in range(30)])
    cancelled = await store.cancel_by_filter(JobFilter(owner_service="telephony"))
    assert cancelled == BulkOutcome(30, sorted(o.job.id for o in outcomes))

    outcomes = await store.create_jobs([new_job(owner_ref=str(i)) for i in range(30)])
    for o in outcomes:
        await store.fail(o.job.id, category="internal", message="x")
    retried = await store.retry_by_filter(JobFilter(statuses=(JobStatus.FAILED,)))
    assert retried == BulkOutcome(30, sorted(o.job.id for o in outcomes))


async def test_bulk_actions_count_every_job_and_list_only_the_first_ids(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each batch statement answers one row (counts and a few ids), never one row per
    # job: what the store holds does not grow with the number of jobs changed.
    monkeypatch.setattr(store_module, "FILTER_BATCH", 7)
    answers: list[int] = []
    fetch = store._fetch

    async def counting_fetch(name: str, params: dict[str, Any], **kw: Any) -> Any:
        rows = await fetch(name, params, **kw)
        if name.endswith("_by_filter"):
            answers.append(len(rows))
        return rows

    monkeypatch.setattr(store, "_fetch", counting_fetch)
    outcomes = await store.create_jobs([new_job(owner_ref=str(i)) for i in range(40)])
    ids = sorted(o.job.id for o in outcomes)
    for o in outcomes:
        await store.fail(o.job.id, category="internal", message="x")
    retried = await store.retry_by_filter(JobFilter(owner_service="telephony"), sample=10)
    assert (retried.count, retried.sample, retried.truncated) == (40, ids[:10], True)
    assert answers == [1] * 6  # 40 jobs in batches of 7: 5 full batches and a last one
    cancelled = await store.cancel_by_filter(JobFilter(owner_service="telephony"), sample=40)
    assert (cancelled.count, cancelled.sample, cancelled.truncated) == (40, ids, False)
    assert store_module.BULK_SAMPLE == 100  # what the API reports


async def test_bulk_retry_skips_jobs_at_the_attempt_limit_without_stopping_early(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "FILTER_BATCH", 7)
    outcomes = await store.create_jobs([new_job(owner_ref=str(i)) for i in range(30)])
    for o in outcomes:
        await store.fail(o.job.id, category="internal", message="x")
    ids = sorted(o.job.id for o in outcomes)
    exhausted = ids[::2]
    await sql(
        store,
        "UPDATE jobs SET attempt = 100, max_attempts = 100 WHERE id = ANY(%s)",
        [exhausted],
    )
    retried = await store.retry_by_filter(JobFilter(statuses=(JobStatus.FAILED,)))
    assert retried.sample == [i for i in ids if i not in exhausted]
    for job_id in exhausted:
        assert (await store.get_job(job_id)).status is JobStatus.FAILED


async def test_bulk_actions_filter_on_every_field(store: Store) -> None:
    jobs = await _fixture_jobs(store)

    async def ids(outcome: Awaitable[BulkOutcome]) -> list[uuid.UUID]:
        return (await outcome).sample

    # whisperx: one failed and one completed job, neither can be cancelled.
    assert await ids(store.cancel_by_filter(JobFilter(model_profile="whisperx"))) == []
    assert await ids(store.retry_by_filter(JobFilter(worker_id="w2"))) == [jobs["failed"].id]
    assert await ids(store.retry_by_filter(JobFilter(error_category="timeout"))) == [
        jobs["mirror_failed"].id
    ]
    assert await ids(store.cancel_by_filter(JobFilter(task_type="tg_analysis"))) == [
        jobs["running"].id
    ]
    # owner_ref "a": the pending job, and the mirror-failed one that was just retried.
    later = JobFilter(owner_ref="a", created_after=jobs["mirror_failed"].created_at)
    earlier = JobFilter(owner_ref="a", created_before=jobs["mirror_failed"].created_at)
    assert await ids(store.cancel_by_filter(later)) == [jobs["mirror_failed"].id]
    assert await ids(store.cancel_by_filter(earlier)) == [jobs["pending"].id]


async def _lock_waiters(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _until_lock_waiters(
    conn: psycopg.AsyncConnection[Any], count: int, *calls: asyncio.Future[Any]
) -> None:
    """Until `count` statements wait for a row lock (or one of `calls` already ended)."""
    for _ in range(500):
        if any(c.done() for c in calls) or await _lock_waiters(conn) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} statements waiting for a lock")


BatchCall = Callable[[Store, list[Job]], Awaitable[set[uuid.UUID]]]

BATCHED: dict[str, BatchCall] = {
    "complete_many": lambda s, jobs: s.complete_many(
        [store_module.Completion(j.id, j.lease_token, {"ok": 1}) for j in jobs if j.lease_token]
    ),
    "heartbeat_many": lambda s, jobs: s.heartbeat_many(
        [(j.id, j.lease_token) for j in jobs if j.lease_token], 60
    ),
    "release_many": lambda s, jobs: s.release_many(
        [(j.id, j.lease_token) for j in jobs if j.lease_token]
    ),
}


@pytest.mark.parametrize(
    ("batched", "bulk"),
    [
        ("complete_many", "cancel_by_filter"),
        ("heartbeat_many", "cancel_by_filter"),
        ("release_many", "cancel_by_filter"),
        ("complete_many", "retry_by_filter"),
    ],
)
async def test_batched_worker_calls_and_bulk_actions_do_not_deadlock(
    store: Store, database_url: str, batched: str, bulk: str
) -> None:
    # A worker's batch lists its jobs in completion order; a bulk action locks the same
    # rows. Whatever the order, both must finish: a deadlock aborts one of them (the
    # store reports it as DatabaseUnavailable) after PostgreSQL's deadlock_timeout.
    await store.create_jobs([new_job(owner_ref=str(i)) for i in range(2)])
    low, high = sorted(await store.claim("w", limit=2, lease_seconds=60), key=lambda j: j.id)
    async with (
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) as watch,
        await psycopg.AsyncConnection.connect(database_url) as holder,
    ):
        # Hold `high` so that both statements queue up in a known order behind it.
        await holder.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", [high.id])
        worker_call = asyncio.ensure_future(BATCHED[batched](store, [high, low]))
        await _until_lock_waiters(watch, 1, worker_call)
        running = JobFilter(statuses=(JobStatus.RUNNING,))  # bulk retry takes them on request
        bulk_call = asyncio.ensure_future(getattr(store, bulk)(running))
        await _until_lock_waiters(watch, 2, worker_call, bulk_call)
        await holder.commit()
        results = await asyncio.gather(worker_call, bulk_call, return_exceptions=True)
    assert not any(isinstance(r, Exception) for r in results), results


# -- counters and statistics -----------------------------------------------------------

DIRECT_COUNTS = """
SELECT status, task_type, model_profile,
       CASE WHEN status = 'failed' THEN error_category ELSE '' END AS error_category,
       count(*)::bigint AS n
  FROM jobs
 GROUP BY 1, 2, 3, 4
"""


def _as_counts(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], int]:
    return {
        (r["status"], r["task_type"], r["model_profile"], r["error_category"]): r["n"] for r in rows
    }


# The counters by their whole key (with the owner), and the same from the table.
FULL_COUNTERS = """
SELECT status, task_type, model_profile, error_category, owner_service, sum(n)::bigint AS n
  FROM (SELECT status, task_type, model_profile, error_category, owner_service, n
          FROM job_counts
        UNION ALL
        SELECT status, task_type, model_profile, error_category, owner_service, n
          FROM job_count_deltas) AS c
 GROUP BY 1, 2, 3, 4, 5
HAVING sum(n) <> 0
"""
FULL_DIRECT = """
SELECT status, task_type, model_profile,
       CASE WHEN status = 'failed' THEN error_category ELSE '' END AS error_category,
       owner_service, count(*)::bigint AS n
  FROM jobs
 GROUP BY 1, 2, 3, 4, 5
"""
OWNER_DIRECT = "SELECT owner_service, status, count(*)::bigint AS n FROM jobs GROUP BY 1, 2"


def _as_full(rows: list[dict[str, Any]]) -> dict[tuple[str, ...], int]:
    return {
        (
            r["status"],
            r["task_type"],
            r["model_profile"],
            r["error_category"],
            r["owner_service"],
        ): (r["n"])
        for r in rows
    }


def _as_owners(rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    return {(r["owner_service"], r["status"]): r["n"] for r in rows}


async def _assert_counts_match(store: Store) -> None:
    assert _as_counts(await store.stats_counts()) == _as_counts(await sql(store, DIRECT_COUNTS))
    # Every counter by its whole key, and the figures per owner, are exact too.
    assert _as_full(await sql(store, FULL_COUNTERS)) == _as_full(await sql(store, FULL_DIRECT))
    owners = _as_owners(await store.stats_owner_counts())
    assert owners == _as_owners(await sql(store, OWNER_DIRECT))


async def test_counters_equal_a_group_by_over_jobs_before_and_after_compaction(
    store: Store,
) -> None:
    kinds = [("llm_chat", "qwen2.5-14b"), ("transcription", "whisperx"), ("tg_analysis", "vision")]
    outcomes = await store.create_jobs(
        [
            new_job(task_type=t, model_profile=p, owner_ref=str(i))
            for i in range(40)
            for t, p in kinds
        ]
    )
    await _assert_counts_match(store)
    # Idempotent repeats insert nothing and must not count.
    await store.create_jobs([new_job(idempotency_key="k"), new_job(idempotency_key="k")])

    claimed = await store.claim("w", limit=60, lease_seconds=60)
    held = [(j.id, j.lease_token) for j in claimed if j.lease_token]
    await store.complete_many([store_module.Completion(i, t, {"ok": True}) for i, t in held[:20]])
    for job_id, token in held[20:30]:
        await store.fail(job_id, category="provider_error", message="x", lease_token=token)
    for job_id, token in held[30:35]:
        await store.fail(
            job_id, category="timeout", message="slow", lease_token=token, retryable=True
        )
    await store.release_many(held[35:40])
    await store.heartbeat_many(held[40:45], 60)
    await store.cancel_by_filter(JobFilter(task_type="tg_analysis"))
    await store.retry_by_filter(JobFilter(error_category="provider_error"))
    pending = [o.job.id for o in outcomes if o.job.task_type == "llm_chat"][-5:]
    for job_id in pending[:3]:
        await store.complete(job_id, {"mirror": True})
    await store.fail(pending[3], category="invalid_input", message="bad")
    await _assert_counts_match(store)

    await store.compact_counts()
    await _assert_counts_match(store)
    assert await sql(store, "SELECT * FROM job_count_deltas") == []

    # Deletes: retention and a direct DELETE both go through the triggers.
    await sql(
        store,
        "UPDATE jobs SET finished_at = now() - interval '1 day' WHERE finished_at IS NOT NULL",
    )
    await store.prune_finished(completed_seconds=3600, failed_seconds=0, batch=7)
    await sql(store, "DELETE FROM jobs WHERE task_type = 'transcription' AND status = 'pending'")
    await _assert_counts_match(store)
    await store.compact_counts()
    await _assert_counts_match(store)
    assert await sql(store, "SELECT * FROM job_counts WHERE n = 0") == []
    assert await sql(store, "SELECT * FROM job_count_deltas") == []


async def test_counters_stay_exact_while_compactions_run_concurrently(database_url: str) -> None:
    busy = await Store.open(database_url, min_size=6, max_size=6, wait=True)
    stop = asyncio.Event()

    async def compactor() -> int:
        rounds = 0
        while not stop.is_set():
            await busy.compact_counts()
            rounds += 1
        return rounds

    async def churn(n: int) -> None:
        for round_ in range(15):
            await busy.create_jobs(
                [new_job(task_type=f"t{n % 2}", owner_ref=f"{n}/{round_}/{i}") for i in range(10)]
            )
            claimed = await busy.claim(f"w{n}", limit=8, lease_seconds=60)
            half = len(claimed) // 2
            await busy.complete_many(
                [
                    store_module.Completion(j.id, j.lease_token, {"ok": 1})
                    for j in claimed[:half]
                    if j.lease_token
                ]
            )
            for j in claimed[half:]:
                await busy.fail(j.id, category="timeout", message="t", lease_token=j.lease_token)

    try:
        compactors = [asyncio.create_task(compactor()) for _ in range(2)]
        await asyncio.gather(*(churn(n) for n in range(4)))
        stop.set()
        assert all(rounds > 0 for rounds in await asyncio.gather(*compactors))
        await _assert_counts_match(busy)
        await busy.compact_counts()
        await _assert_counts_match(busy)
    finally:
        await busy.close()


async def test_compaction_twice_in_a_row_changes_nothing(store: Store) -> None:
    await store.create_jobs([new_job(owner_ref=str(i)) for i in range(10)])
    await store.compact_counts()
    first = await sql(store, "SELECT * FROM job_counts ORDER BY status")
    await store.compact_counts()
    assert await sql(store, "SELECT * FROM job_counts ORDER BY status") == first
    assert _as_counts(await store.stats_counts()) == {
        ("pending", "llm_chat", "qwen2.5-14b", ""): 10
    }


async def test_counters_of_an_empty_queue_are_empty(store: Store) -> None:
    assert await store.stats_counts() == []
    await store.compact_counts()
    assert await store.stats_counts() == []


async def test_stats_report_the_oldest_runnable_job_and_the_scheduled_ones_apart(
    store: Store,
) -> None:
    waiting = await create(store, task_type="llm_chat")
    await create(store, task_type="llm_chat")
    # Neither a job scheduled for later nor one backing off after a failure is waiting,
    # however old: they must not raise the oldest-runnable age.
    later = await create(store, run_after=datetime.now(UTC) + timedelta(hours=1))
    backing_off = await claim_one(store, await create(store, task_type="ocr"))
    await store.fail(
        backing_off.id,
        category="timeout",
        message="slow",
        lease_token=backing_off.lease_token,
        retryable=True,
    )
    await sql(
        store,
        "UPDATE jobs SET created_at = now() - interval '3 days' WHERE id = ANY(%s)",
        [[later.id, backing_off.id]],
    )
    await sql(
        store,
        "UPDATE jobs SET run_after = now() - interval '90 seconds' WHERE id = %s",
        [waiting.id],
    )

    pending = (await store.stats())["pending"]
    assert 90 <= (pending["now"] - pending["oldest_runnable"]).total_seconds() < 100
    assert (pending["scheduled"], pending["scheduled_capped"]) == (2, False)
    assert pending["now"] < pending["next_scheduled"] < later.run_after


async def test_stats_count_scheduled_jobs_up_to_a_cap(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "SCHEDULED_COUNT_CAP", 3)
    later = datetime.now(UTC) + timedelta(hours=1)
    await store.create_jobs([new_job(owner_ref=str(i), run_after=later) for i in range(3)])
    pending = (await store.stats())["pending"]
    assert (pending["scheduled"], pending["scheduled_capped"]) == (3, False)
    await store.create_jobs([new_job(owner_ref=str(i), run_after=later) for i in range(3, 5)])
    pending = (await store.stats())["pending"]
    assert (pending["scheduled"], pending["scheduled_capped"]) == (3, True)


async def test_stats_of_an_empty_queue(store: Store) -> None:
    stats = await store.stats()
    assert stats["counts"] == []
    assert stats["pending"]["oldest_runnable"] is None
    assert stats["pending"]["scheduled"] == 0
    assert stats["pending"]["scheduled_capped"] is False
    assert stats["pending"]["next_scheduled"] is None
    assert stats["recent"] == []
    assert len(stats["throughput"]) == 60
    assert {(r["completed"], r["failed"]) for r in stats["throughput"]} == {(0, 0)}


# -- rollups ---------------------------------------------------------------------------

BOUNDS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# Finish jobs with chosen times: (id, status, seconds ago, run seconds or NULL).
FINISH = """
UPDATE jobs j
   SET status = f.status,
       result = CASE WHEN f.status = 'completed' THEN '{}'::jsonb END,
       error_category = CASE WHEN f.status = 'failed' THEN 'internal' END,
       finished_at = now() - make_interval(secs => f.ago),
       started_at = CASE WHEN f.took IS NOT NULL
                         THEN now() - make_interval(secs => f.ago + f.took) END
  FROM unnest(%s::uuid[], %s::text[], %s::float8[], %s::float8[]) AS f(id, status, ago, took)
 WHERE j.id = f.id
"""

# The same figures as the rollups, straight from the jobs table (same whole-minute windows).
DIRECT_RECENT = """
WITH w AS (SELECT date_trunc('minute', now(), 'UTC') AS m)
SELECT task_type,
       count(*) FILTER (WHERE status = 'completed') AS completed_24h,
       count(*) FILTER (WHERE status = 'failed') AS failed_24h,
       count(*) FILTER (WHERE status = 'completed' AND finished_at >= w.m - interval '59 minutes')
           AS completed_1h,
       count(*) FILTER (WHERE status = 'failed' AND finished_at >= w.m - interval '59 minutes')
           AS failed_1h,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))
           FILTER (WHERE status = 'completed' AND started_at IS NOT NULL) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))
           FILTER (WHERE status = 'completed' AND started_at IS NOT NULL) AS p95
  FROM jobs, w
 WHERE finished_at >= w.m - interval '1439 minutes' AND status IN ('completed', 'failed')
 GROUP BY task_type
"""

DIRECT_PER_MINUTE = """
SELECT date_trunc('minute', finished_at, 'UTC') AS minute,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed
  FROM jobs
 WHERE finished_at >= date_trunc('minute', now(), 'UTC') - interval '59 minutes'
   AND status IN ('completed', 'failed')
 GROUP BY 1
"""


def _bucket(seconds: float) -> int:
    """The rollup bucket of a duration: [bound i-1, bound i)."""
    return sum(1 for bound in BOUNDS if bound <= seconds)


async def _finish_at_random(store: Store, jobs: list[Job], rng: Any) -> None:
    """Finish `jobs` at random times over the last 30 h, never within 2 minutes of the
    1 h or 24 h window edges (a minute ticking between two queries must not matter)."""
    statuses, agos, tooks = [], [], []
    for _ in jobs:
        ago = rng.uniform(0, 30 * 3600)
        while any(abs(ago - edge) < 120 for edge in (3600, 86400)):
            ago = rng.uniform(0, 30 * 3600)
        statuses.append("completed" if rng.random() < 0.8 else "failed")
        agos.append(ago)
        # Durations over every bucket, from 5 ms to 2 h; some jobs never started.
        tooks.append(None if rng.random() < 0.1 else 10 ** rng.uniform(-2.3, 3.9))
    await sql(store, FINISH, [[j.id for j in jobs], statuses, agos, tooks])


async def test_rollup_stats_equal_a_group_by_over_jobs(store: Store) -> None:
    import random

    rng = random.Random(12)
    kinds = [("llm_chat", "qwen2.5-14b"), ("llm_chat", "vision"), ("transcription", "whisperx")]
    created = await store.create_jobs(
        [
            new_job(task_type=t, model_profile=p, owner_ref=str(i))
            for i in range(200)
            for t, p in kinds
        ]
    )
    jobs = [c.job for c in created]
    # Finished in three statements; the first two folded into the rollups (minutes and
    # hours), the last left as deltas; cancelled and still pending jobs count nowhere.
    await _finish_at_random(store, jobs[:250], rng)
    await store.compact_rollups()
    await _finish_at_random(store, jobs[250:450], rng)
    await store.compact_rollups()
    await _finish_at_random(store, jobs[450:560], rng)
    await sql(store, "UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE id = ANY(%s)",
              [[j.id for j in jobs[560:580]]])  # fmt: skip
    assert await sql(store, "SELECT 1 FROM job_rollup_deltas LIMIT 1") != []

    stats = await store.stats()
    direct = {row["task_type"]: row for row in await sql(store, DIRECT_RECENT)}
    recent = {row["task_type"]: row for row in stats["recent"]}
    assert set(recent) == set(direct) == {"llm_chat", "transcription"}
    for task_type, exact in direct.items():
        row = recent[task_type]
        assert (row["completed_24h"], row["failed_24h"]) == (
            exact["completed_24h"],
            exact["failed_24h"],
        )
        assert exact["completed_24h"] > 50
        # Percentiles: bucket estimates, within one bucket of the exact figure.
        buckets = [int(n or 0) for n in row["completed_buckets"]]
        assert list(row["bounds"]) == list(BOUNDS)
        for q, key in ((0.5, "p50"), (0.95, "p95")):
            estimate = histogram.quantile(row["bounds"], buckets, q)
            assert estimate is not None
            assert abs(_bucket(estimate) - _bucket(exact[key])) <= 1, (task_type, key)

    # The last hour, minute by minute.
    per_minute = {r["minute"]: r for r in await sql(store, DIRECT_PER_MINUTE)}
    series = stats["throughput"]
    assert len(series) == 60
    assert [r["minute"] for r in series] == sorted(r["minute"] for r in series)
    for point in series:
        exact = per_minute.pop(point["minute"], {"completed": 0, "failed": 0})
        assert (point["completed"], point["failed"]) == (exact["completed"], exact["failed"])
    assert per_minute == {}  # no finish outside the series
    assert sum(p["completed"] for p in series) == sum(r["completed_1h"] for r in direct.values())

    # Folding the rest changes no figure.
    await store.compact_rollups()
    assert await sql(store, "SELECT 1 FROM job_rollup_deltas LIMIT 1") == []
    again = await store.stats()
    assert again["recent"] == stats["recent"]


async def test_rollups_count_the_workers_path(store: Store) -> None:
    """Claims, batched completions, failures and retries as the workers make them."""
    await store.create_jobs([new_job(owner_ref=str(i)) for i in range(30)])
    claimed = await store.claim("w", limit=30, lease_seconds=60)
    await store.complete_many(
        [
            store_module.Completion(j.id, j.lease_token, {"ok": 1})
            for j in claimed[:20]
            if j.lease_token
        ]
    )
    await store.heartbeat_many([(j.id, j.lease_token) for j in claimed[20:] if j.lease_token], 60)
    for j in claimed[20:25]:
        await store.fail(j.id, category="internal", message="x", lease_token=j.lease_token)
    for j in claimed[25:]:  # retryable: back to pending, no finish
        await store.fail(j.id, category="timeout", message="x", lease_token=j.lease_token,
                         retryable=True)  # fmt: skip
    await store.compact_rollups()
    [row] = (await store.stats())["recent"]
    assert (row["completed_24h"], row["failed_24h"]) == (20, 5)
    assert sum(row["completed_buckets"]) == 20  # every run has a duration
    # A manual retry of a failed job and its completion: a second finish, counted.
    again = await store.retry(claimed[20].id)
    [rerun] = await store.claim("w", limit=1, lease_seconds=60, task_types=[again.task_type])
    assert rerun.lease_token is not None
    await store.complete(rerun.id, {"ok": 2}, rerun.lease_token)
    [row] = (await store.stats())["recent"]
    assert (row["completed_24h"], row["failed_24h"]) == (21, 5)


async def test_compaction_folds_rollups_by_minute_and_hour_and_retention_keeps_8_days(
    store: Store,
) -> None:
    jobs = [c.job for c in await store.create_jobs([new_job(owner_ref=str(i)) for i in range(4)])]
    two_hours = datetime.now(UTC).replace(minute=10, second=0, microsecond=0) - timedelta(hours=2)
    times = [two_hours, two_hours + timedelta(minutes=5), two_hours + timedelta(minutes=5),
             datetime.now(UTC) - timedelta(days=7, hours=23, minutes=50)]  # fmt: skip
    for job, at in zip(jobs, times, strict=True):
        await sql(
            store,
            "UPDATE jobs SET status = 'completed', result = '{}', finished_at = %s,"
            " started_at = %s WHERE id = %s",
            [at, at - timedelta(seconds=3), job.id],
        )
    await store.compact_rollups()
    minutes = await sql(store, "SELECT minute, n, buckets FROM job_rollups ORDER BY minute")
    assert [(r["minute"], r["n"]) for r in minutes[1:]] == [
        (two_hours, 1),
        (two_hours + timedelta(minutes=5), 2),
    ]
    assert all(r["buckets"][_bucket(3.0)] == r["n"] for r in minutes)
    hours = await sql(store, "SELECT hour, n, duration_sum FROM job_rollups_hourly ORDER BY hour")
    assert (hours[1]["hour"], hours[1]["n"]) == (two_hours.replace(minute=0), 3)
    assert hours[1]["duration_sum"] == pytest.approx(9.0)

    # Ten minutes later the oldest one is past the 8 days: retention drops its rows.
    await sql(store, "UPDATE job_rollups SET minute = minute - interval '20 minutes'"
                     " WHERE minute < now() - interval '7 days'")  # fmt: skip
    await sql(store, "UPDATE job_rollups_hourly SET hour = hour - interval '1 hour'"
                     " WHERE hour < now() - interval '7 days'")  # fmt: skip
    assert await store.prune_rollups() == 2
    assert len(await sql(store, "SELECT 1 FROM job_rollups")) == 2
    assert len(await sql(store, "SELECT 1 FROM job_rollups_hourly")) == 1


# -- TRUNCATE and recount --------------------------------------------------------------


async def test_truncate_zeroes_the_counters_and_they_stay_exact(store: Store) -> None:
    await store.create_jobs([new_job(owner_ref=str(i)) for i in range(10)])
    claimed = await store.claim("w", limit=4, lease_seconds=60)
    await store.complete_many(
        [store_module.Completion(j.id, j.lease_token, {}) for j in claimed if j.lease_token]
    )
    await store.compact_counts()
    await store.compact_rollups()
    await store.create_jobs([new_job(owner_ref="late")])  # a delta not folded yet

    await sql(store, "TRUNCATE jobs")
    stats = await store.stats()
    assert stats["counts"] == []
    assert stats["recent"] == []

    await store.create_jobs([new_job(owner_ref=f"n{i}") for i in range(3)])
    [job] = await store.claim("w", limit=1, lease_seconds=60)
    assert job.lease_token is not None
    await store.complete(job.id, {}, job.lease_token)
    await _assert_counts_match(store)
    await store.compact_counts()
    await _assert_counts_match(store)
    assert [(r["completed_24h"], r["failed_24h"]) for r in (await store.stats())["recent"]] == [
        (1, 0)
    ]


async def test_recount_repairs_counters_corrupted_on_purpose(store: Store) -> None:
    await store.create_jobs(
        [new_job(owner_ref=str(i), task_type=t) for i in range(6) for t in ("a", "b")]
    )
    await store.fail((await create(store, task_type="a")).id, category="internal", message="x")
    await store.compact_counts()
    await store.create_jobs([new_job(owner_ref="unfolded", task_type="b")])
    # Drift of every kind: a wrong count, a counter for nothing, a missing counter,
    # a stray delta.
    await sql(store, "UPDATE job_counts SET n = n + 5 WHERE task_type = 'a' AND status = 'pending'")
    await sql(store, "INSERT INTO job_counts VALUES ('running', 'ghost', 'p', '', 3)")
    await sql(store, "DELETE FROM job_counts WHERE status = 'failed'")
    await sql(store, "INSERT INTO job_count_deltas VALUES ('pending', 'b', 'qwen2.5-14b', '', -2)")

    result = await store.recount_counts()
    await _assert_counts_match(store)
    assert result.after == _as_counts(await sql(store, DIRECT_COUNTS))
    assert result.changes == [
        (("failed", "a", "qwen2.5-14b", "internal"), 0, 1),
        (("pending", "a", "qwen2.5-14b", ""), 11, 6),
        (("pending", "b", "qwen2.5-14b", ""), 5, 7),
        (("running", "ghost", "p", ""), 3, 0),
    ]
    # The deltas stay (they are part of the count) and fold in as usual.
    await store.compact_counts()
    await _assert_counts_match(store)
    assert await sql(store, "SELECT * FROM job_count_deltas") == []
    # A second recount finds nothing to repair.
    assert (await store.recount_counts()).changes == []


async def test_recount_is_exact_while_writers_and_compactions_run(database_url: str) -> None:
    busy = await Store.open(database_url, min_size=6, max_size=6, wait=True)
    stop = asyncio.Event()

    async def compactor() -> None:
        while not stop.is_set():
            await busy.compact_counts()

    async def churn(n: int) -> None:
        for round_ in range(12):
            await busy.create_jobs([new_job(owner_ref=f"{n}/{round_}/{i}") for i in range(10)])
            claimed = await busy.claim(f"w{n}", limit=6, lease_seconds=60)
            await busy.complete_many(
                [store_module.Completion(j.id, j.lease_token, {}) for j in claimed if j.lease_token]
            )

    async def recounter() -> int:
        rounds = 0
        while not stop.is_set():
            await busy.recount_counts()
            rounds += 1
        return rounds

    try:
        # Corrupted first: the recounts must repair it, whatever runs meanwhile.
        await busy.create_jobs([new_job(owner_ref="seed")])
        await sql(busy, "INSERT INTO job_count_deltas VALUES ('pending', 'x', 'y', '', 9)")
        tasks = [asyncio.create_task(compactor()), asyncio.create_task(recounter())]
        await asyncio.gather(*(churn(n) for n in range(3)))
        stop.set()
        _, recounts = await asyncio.gather(*tasks)
        assert recounts > 0
        await _assert_counts_match(busy)
        await busy.compact_counts()
        await _assert_counts_match(busy)
    finally:
        await busy.close()


async def test_recount_neither_waits_for_nor_misses_a_writer_in_flight(
    store: Store, database_url: str
) -> None:
    await store.create_jobs([new_job(owner_ref=str(i)) for i in range(3)])
    await sql(store, "UPDATE job_counts SET n = 0")  # drift to repair
    await sql(store, "INSERT INTO job_count_deltas VALUES ('pending', 'llm_chat', 'x', '', 4)")
    async with await psycopg.AsyncConnection.connect(database_url) as writer:
        # A transaction that changed jobs (and wrote its deltas) but has not committed:
        # the recount must not wait for it, and its changes must count once it commits.
        await writer.execute(
            "INSERT INTO jobs (owner_service, owner_ref, task_type, model_profile, input)"
            " VALUES ('s', 'r', 'llm_chat', 'qwen2.5-14b', '{}')"
        )
        await writer.execute("UPDATE jobs SET status = 'cancelled', finished_at = now()"
                             " WHERE owner_ref = '0'")  # fmt: skip
        result = await asyncio.wait_for(store.recount_counts(lock_timeout=5), 5)
        assert result.after == {("pending", "llm_chat", "qwen2.5-14b", ""): 3}
        await writer.commit()
    await _assert_counts_match(store)
    assert _as_counts(await store.stats_counts()) == {
        ("pending", "llm_chat", "qwen2.5-14b", ""): 3,
        ("cancelled", "llm_chat", "qwen2.5-14b", ""): 1,
    }


async def test_recount_gives_up_while_a_truncate_holds_the_table(
    store: Store, database_url: str
) -> None:
    await store.create_jobs([new_job()])
    await sql(store, "UPDATE job_counts SET n = 7")
    before = await store.stats_counts()
    async with await psycopg.AsyncConnection.connect(database_url) as holder:
        await holder.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(errors.DatabaseUnavailable, match=r"stayed locked for 0\.2 s"):
            await store.recount_counts(lock_timeout=0.2)
        await holder.rollback()
    assert await store.stats_counts() == before  # nothing changed


# -- counts per owner_service ---------------------------------------------------------


def _tally(jobs: list[Job]) -> dict[tuple[str, str], int]:
    """(owner_service, status) -> how many of `jobs` (their status as returned)."""
    out: dict[tuple[str, str], int] = {}
    for job in jobs:
        key = (job.owner_service, str(job.status))
        out[key] = out.get(key, 0) + 1
    return out


async def test_owner_counts_are_exact_through_creates_claims_completes_failures_and_cancels(
    store: Store,
) -> None:
    owners = {"telephony": 6, "monitoring-pf": 5, "crm": 3}
    created = await store.create_jobs(
        [
            new_job(owner_service=o, owner_ref=f"{o}/{i}")
            for o, n in owners.items()
            for i in range(n)
        ]
    )
    jobs = {o.job.id: o.job for o in created}
    assert _as_owners(await store.stats_owner_counts()) == {
        ("telephony", "pending"): 6,
        ("monitoring-pf", "pending"): 5,
        ("crm", "pending"): 3,
    }

    # Which owners a claim serves is the claim's business: the expected figures
    # follow the jobs each step returns.
    claimed = await store.claim("w", limit=8, lease_seconds=60)
    assert len(claimed) == 8
    jobs |= {j.id: j for j in claimed}
    assert _as_owners(await store.stats_owner_counts()) == _tally(list(jobs.values()))
    await _assert_counts_match(store)

    done = await store.complete_many(
        [
            store_module.Completion(j.id, j.lease_token, {"ok": 1})
            for j in claimed[:3]
            if j.lease_token
        ]
    )
    assert len(done) == 3
    for j in claimed[:3]:
        jobs[j.id] = await store.get_job(j.id)
    final = await store.fail(
        claimed[3].id, category="invalid_input", message="bad", lease_token=claimed[3].lease_token
    )
    retried = await store.fail(
        claimed[4].id,
        category="timeout",
        message="slow",
        lease_token=claimed[4].lease_token,
        retryable=True,
    )
    assert (final.status, retried.status) == (JobStatus.FAILED, JobStatus.PENDING)
    pending = [j for j in jobs.values() if j.status == JobStatus.PENDING and j.id != retried.id]
    cancelled = await store.cancel(pending[0].id)
    for job in (final, retried, cancelled):
        jobs[job.id] = job
    expected = _tally(list(jobs.values()))
    assert sum(n for (_, status), n in expected.items() if status == "running") == 3
    assert _as_owners(await store.stats_owner_counts()) == expected
    await _assert_counts_match(store)

    # Folding the deltas changes no figure; a delete (retention) counts too.
    await store.compact_counts()
    assert _as_owners(await store.stats_owner_counts()) == expected
    await sql(store, "DELETE FROM jobs WHERE id = %s", (final.id,))
    expected[(final.owner_service, "failed")] -= 1
    expected = {k: n for k, n in expected.items() if n}
    assert _as_owners(await store.stats_owner_counts()) == expected
    await _assert_counts_match(store)


async def test_stats_give_pending_and_running_by_owner(store: Store) -> None:
    await store.create_jobs(
        [new_job(owner_service="telephony", owner_ref=str(i)) for i in range(3)]
        + [new_job(owner_service="monitoring-pf", owner_ref=str(i), task_type="bulk")
           for i in range(4)]
    )  # fmt: skip
    [running] = await store.claim("w", limit=1, lease_seconds=60, task_types=["bulk"])
    stats = await store.stats()
    assert _as_owners(stats["owners"]) == {
        ("telephony", "pending"): 3,
        ("monitoring-pf", "pending"): 3,
        ("monitoring-pf", "running"): 1,
    }
    assert running.owner_service == "monitoring-pf"
    # The existing figures are summed over owners, as before.
    assert _as_counts(stats["counts"]) == {
        ("pending", "llm_chat", "qwen2.5-14b", ""): 3,
        ("pending", "bulk", "qwen2.5-14b", ""): 3,
        ("running", "bulk", "qwen2.5-14b", ""): 1,
    }


async def test_owner_counts_after_truncate_and_a_recount_of_a_wrong_owner_split(
    store: Store,
) -> None:
    await store.create_jobs(
        [new_job(owner_service=o, owner_ref=f"{o}/{i}") for o in ("crm", "telephony")
         for i in range(2)]
    )  # fmt: skip
    await store.compact_counts()
    # The totals stay right, only the owner is wrong: a drift the per-key totals hide.
    await sql(store, "UPDATE job_counts SET owner_service = 'ghost' WHERE owner_service = 'crm'")
    result = await store.recount_counts()
    assert result.changes == []
    assert result.owner_changes == [
        (("crm", "pending"), 0, 2),
        (("ghost", "pending"), 2, 0),
    ]
    assert result.owners_after == {("crm", "pending"): 2, ("telephony", "pending"): 2}
    await _assert_counts_match(store)
    assert (await store.recount_counts()).owner_changes == []

    await store.create_jobs([new_job(owner_service="crm", owner_ref="late")])  # unfolded
    await sql(store, "TRUNCATE jobs")
    assert await store.stats_owner_counts() == []
    await store.create_jobs([new_job(owner_service="crm", owner_ref="after")])
    [job] = await store.claim("w", limit=1, lease_seconds=60)
    assert _as_owners(await store.stats_owner_counts()) == {("crm", "running"): 1}
    assert job.lease_token is not None
    await store.complete(job.id, {}, job.lease_token)
    assert _as_owners(await store.stats_owner_counts()) == {("crm", "completed"): 1}
    await _assert_counts_match(store)


async def test_owner_counts_stay_exact_while_writers_compactions_and_recounts_run(
    database_url: str,
) -> None:
    busy = await Store.open(database_url, min_size=6, max_size=6, wait=True)
    stop = asyncio.Event()

    async def compactor() -> None:
        while not stop.is_set():
            await busy.compact_counts()

    async def recounter() -> int:
        rounds = 0
        while not stop.is_set():
            await busy.recount_counts()
            rounds += 1
        return rounds

    async def churn(n: int) -> None:
        for round_ in range(10):
            await busy.create_jobs(
                [new_job(owner_service=f"owner-{i % 3}", owner_ref=f"{n}/{round_}/{i}")
                 for i in range(9)]
            )  # fmt: skip
            claimed = await busy.claim(f"w{n}", limit=6, lease_seconds=60)
            await busy.complete_many(
                [
                    store_module.Completion(j.id, j.lease_token, {})
                    for j in claimed[:3]
                    if j.lease_token
                ]
            )
            for j in claimed[3:]:
                await busy.fail(j.id, category="timeout", message="t", lease_token=j.lease_token)

    try:
        await busy.create_jobs([new_job(owner_service="owner-0", owner_ref="seed")])
        await sql(busy, "UPDATE job_counts SET owner_service = 'drifted'")
        tasks = [asyncio.create_task(compactor()), asyncio.create_task(recounter())]
        await asyncio.gather(*(churn(n) for n in range(3)))
        stop.set()
        _, recounts = await asyncio.gather(*tasks)
        assert recounts > 0
        await _assert_counts_match(busy)
        assert {o for o, _ in _as_owners(await busy.stats_owner_counts())} == {
            "owner-0", "owner-1", "owner-2"
        }  # fmt: skip
    finally:
        await busy.close()


# -- availability ----------------------------------------------------------------------


async def test_ping_answers_when_the_database_is_up(store: Store) -> None:
    await store.ping()


async def test_ping_raises_database_unavailable_when_nothing_listens() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=1"
    down = await Store.open(url, timeout=0.5, wait=False)
    try:
        with pytest.raises(errors.DatabaseUnavailable):
            await down.ping()
    finally:
        await down.close()


# -- dashboard reads -------------------------------------------------------------------


async def test_count_by_filter_counts_what_the_bulk_action_would_change(store: Store) -> None:
    await _one_of_each_status(store, "telephony")
    await _one_of_each_status(store, "monitoring-pf")
    mine = JobFilter(owner_service="telephony")
    assert await store.count_by_filter("retry", mine) == (1, False)
    assert await store.count_by_filter("cancel", mine) == (2, False)
    running = JobFilter(owner_service="telephony", statuses=(JobStatus.RUNNING,))
    assert await store.count_by_filter("retry", running) == (1, False)
    completed = JobFilter(statuses=(JobStatus.COMPLETED,))
    assert await store.count_by_filter("cancel", completed) == (0, False)
    # The preview and the action agree.
    assert (await store.cancel_by_filter(mine)).count == 2
    assert await store.count_by_filter("cancel", mine) == (0, False)


async def test_count_by_filter_stops_at_the_cap_and_says_more(store: Store) -> None:
    for _ in range(3):
        job = await create(store, owner_service="crm")
        await store.fail(job.id, category="internal", message="x")
    crm = JobFilter(owner_service="crm")
    assert await store.count_by_filter("retry", crm, cap=2) == (2, True)
    assert await store.count_by_filter("retry", crm, cap=3) == (3, False)


async def test_count_by_filter_for_retry_leaves_out_jobs_without_an_attempt_left(
    store: Store,
) -> None:
    job = await create(store, owner_service="crm")
    await store.fail(job.id, category="internal", message="x")
    await sql(store, "UPDATE jobs SET attempt = 100, max_attempts = 100 WHERE id = %s", [job.id])
    assert await store.count_by_filter("retry", JobFilter(owner_service="crm")) == (0, False)
    assert (await store.retry_by_filter(JobFilter(owner_service="crm"))).count == 0


async def test_latest_failures_are_the_newest_failed_jobs_with_their_messages(
    store: Store,
) -> None:
    ids = []
    for n in range(3):
        job = await create(store, owner_ref=f"r{n}")
        await store.fail(job.id, category="timeout", message=f"slow {n}")
        ids.append(job.id)
    await create(store)  # pending: not a failure
    rows = await store.latest_failures(2)
    assert [row["id"] for row in rows] == [ids[2], ids[1]]
    assert rows[0]["error_message"] == "slow 2"
    assert rows[0]["error_category"] == "timeout"


async def test_throughput_day_has_24_hours_with_this_hours_finished_jobs(store: Store) -> None:
    await store.complete((await create(store)).id, {"ok": 1})
    job = await create(store)
    await store.fail(job.id, category="internal", message="x")
    rows = await store.throughput_day()
    assert len(rows) == 24
    hours = [row["hour"] for row in rows]
    assert hours == sorted(hours)
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(hours))
    assert (rows[-1]["completed"], rows[-1]["failed"]) == (1, 1)
    assert sum(row["completed"] + row["failed"] for row in rows[:-1]) == 0
    # Folded into the rollups, the figures stay the same.
    await store.compact_rollups()
    assert (await store.throughput_day())[-1]["completed"] == 1
