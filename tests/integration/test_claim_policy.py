"""Fair share between owners and cluster-wide model-profile limits, in the claim itself."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ai_service.claim_policy import ClaimPolicy
from ai_service.jobs import Job
from ai_service.store import ClaimRequest, Completion, Store
from tests.helpers import PEAK_LEASES, new_job

CLAIMERS = 8


async def sql(store: Store, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with store.pool.connection() as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def _backlog(store: Store, owner: str, count: int, **fields: Any) -> None:
    for start in range(0, count, 1000):
        batch = range(start, min(count, start + 1000))
        await store.create_jobs(
            [new_job(owner_service=owner, owner_ref=f"{owner}/{i}", **fields) for i in batch]
        )


async def _claim(store: Store, limit: int, **filters: Any) -> list[Job]:
    return await store.claim("w", limit=limit, lease_seconds=60, **filters)


async def _open(database_url: str, policy: ClaimPolicy, count: int = 1) -> list[Store]:
    return [
        await Store.open(database_url, min_size=1, max_size=1, wait=True, policy=policy)
        for _ in range(count)
    ]


@pytest.fixture
async def weighted(database_url: str) -> AsyncIterator[Store]:
    [s] = await _open(database_url, ClaimPolicy.of(owner_weights=[("telephony", 4)]))
    yield s
    await s.close()


# -- fair share -------------------------------------------------------------------------


async def test_a_late_caller_is_served_beside_a_bulk_backlog_not_after_it(store: Store) -> None:
    await _backlog(store, "monitoring-pf", 2000)
    await _backlog(store, "telephony", 50)
    claimed: list[Job] = []
    while sum(j.owner_service == "telephony" for j in claimed) < 50:
        claimed.extend(await _claim(store, 4))
    # Equal weights: the two callers alternate, so the 50 telephony jobs are done
    # after about 100 claims, not after the 2,000 of the bulk import.
    assert len(claimed) <= 2 * 50 + 4
    assert Counter(j.owner_service for j in claimed)["monitoring-pf"] >= 46


async def test_single_job_claims_alternate_between_owners(store: Store) -> None:
    await _backlog(store, "a-service", 10)
    await _backlog(store, "b-service", 10)
    await _backlog(store, "c-service", 10)
    owners = [(await _claim(store, 1))[0].owner_service for _ in range(9)]
    assert owners == ["a-service", "b-service", "c-service"] * 3


async def test_weights_share_each_round_in_proportion(weighted: Store) -> None:
    await _backlog(weighted, "monitoring-pf", 500)
    await _backlog(weighted, "telephony", 500)
    for limit in (1, 3, 10):
        claimed = [j for _ in range(20) for j in await _claim(weighted, limit)]
        share = Counter(j.owner_service for j in claimed)
        # telephony=4, monitoring-pf=1: four of every five jobs, whatever the claim size
        assert share["telephony"] == 4 * share["monitoring-pf"], (limit, share)


async def test_an_owner_alone_gets_every_slot(weighted: Store) -> None:
    await _backlog(weighted, "monitoring-pf", 30)
    claimed = await _claim(weighted, 25)
    assert len(claimed) == 25  # fair share never leaves capacity idle


async def test_priority_wins_over_fair_share(store: Store) -> None:
    await _backlog(store, "monitoring-pf", 20, priority=5)
    await _backlog(store, "telephony", 20, priority=0)
    claimed = await _claim(store, 25)
    assert [j.owner_service for j in claimed[:20]] == ["monitoring-pf"] * 20
    assert {j.owner_service for j in claimed[20:]} == {"telephony"}


async def test_each_owner_keeps_its_own_order(store: Store) -> None:
    await _backlog(store, "a-service", 20)
    await _backlog(store, "b-service", 20)
    claimed = [j for _ in range(10) for j in await _claim(store, 4)]
    for owner in ("a-service", "b-service"):
        refs = [j.owner_ref for j in claimed if j.owner_service == owner]
        assert refs == [f"{owner}/{i}" for i in range(20)]


async def test_many_owners_are_served_round_robin_in_bounded_claims(store: Store) -> None:
    # 150 callers, more than one claim reads (OWNERS_PER_CLAIM): the cursor carries on.
    await store.create_jobs(
        [
            new_job(owner_service=f"svc-{i:03d}", owner_ref=f"{r}")
            for r in range(2)
            for i in range(150)
        ]
    )
    first = [j for _ in range(15) for j in await _claim(store, 10)]
    assert Counter(j.owner_service for j in first) == Counter(f"svc-{i:03d}" for i in range(150))
    second = [j for _ in range(15) for j in await _claim(store, 10)]
    assert Counter(j.owner_service for j in second) == Counter(f"svc-{i:03d}" for i in range(150))


async def test_jobs_scheduled_later_are_not_claimed_by_fair_share(store: Store) -> None:
    await _backlog(store, "a-service", 3)
    await store.create_jobs([new_job(owner_service="b-service", run_after=_later())])
    claimed = await _claim(store, 10)
    assert {j.owner_service for j in claimed} == {"a-service"}


async def test_owners_with_only_later_jobs_do_not_hide_a_runnable_one(store: Store) -> None:
    # More owners than one claim reads, all with jobs scheduled for later, ahead of
    # the one owner with a runnable job: the cursor moves on until it is found.
    await store.create_jobs(
        [
            new_job(owner_service=f"a{i:03d}", owner_ref="later", run_after=_later())
            for i in range(150)
        ]
    )
    await _backlog(store, "zzz", 1)
    claimed = [j for _ in range(10) for j in await _claim(store, 1)]
    assert [j.owner_service for j in claimed] == ["zzz"]


async def test_claim_cost_does_not_grow_with_the_owners_or_the_backlog(store: Store) -> None:
    """Buffers the claim touches (EXPLAIN ANALYZE): a claim of 8 reads about as much
    with 2 owners as with 400, and with 200 pending jobs as with 20,000."""

    async def buffers() -> int:
        request = ClaimRequest.of("w", 8, 60)
        [statement] = store._claim_statements(request, 8, request.first_scan)
        query, params = statement
        # force_rollback: the claim is undone
        async with store.pool.connection() as conn, conn.transaction(force_rollback=True):
            cur = await conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query}", params)
            [row] = await cur.fetchall()
        plan = next(iter(row.values()))
        top = (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]
        return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])

    await store.create_jobs(
        [new_job(owner_service=f"o{i % 2}", owner_ref=str(i)) for i in range(200)]
    )
    few = await buffers()
    await store.create_jobs(
        [new_job(owner_service=f"x{i % 400:03d}", owner_ref=str(i)) for i in range(20_000)]
    )
    await sql(store, "ANALYZE jobs")
    many = await buffers()
    assert many <= 3 * few + 200, (few, many)


# -- model profile limits ---------------------------------------------------------------


async def test_a_limited_profile_admits_only_its_free_capacity(database_url: str) -> None:
    [s] = await _open(database_url, ClaimPolicy.of(profile_limits=[("m", 3)]))
    try:
        await _backlog(s, "a", 10, model_profile="m")
        await _backlog(s, "a", 10, model_profile="other")
        first = await _claim(s, 20)
        assert Counter(j.model_profile for j in first) == {"m": 3, "other": 10}
        assert await _claim(s, 20, model_profiles=["m"]) == []
        done = (
            first[0]
            if first[0].model_profile == "m"
            else next(j for j in first if j.model_profile == "m")
        )
        assert done.lease_token is not None
        await s.complete_many([Completion(done.id, done.lease_token, {"ok": True})])
        again = await _claim(s, 20)
        assert [j.model_profile for j in again] == ["m"]
    finally:
        await s.close()


async def _race(database_url: str, limit: int, rounds: int = 10) -> list[int]:
    """Eight connections claim the same limited profile at the same moment, `rounds`
    times, each from another caller's jobs (their fair-share cursors differ, so their
    candidates differ); after each round the admitted jobs complete. The jobs running
    after each round."""
    claimers = [
        (await _open(database_url, ClaimPolicy.of(profile_limits=[("m", limit)])))[0]
        for _ in range(CLAIMERS)
    ]
    admitted = []
    try:
        for owner in range(CLAIMERS):
            await _backlog(claimers[0], f"o{owner}", 100, model_profile="m")
        for _ in range(rounds):
            start = asyncio.Event()
            for i, s in enumerate(claimers):
                key = ClaimRequest.of("w", 3, 60).key
                s.policy.advance(key, {"fair_owner": f"o{i}", "fair_used": 0})

            async def claim(s: Store, start: asyncio.Event = start) -> list[Job]:
                await start.wait()
                return await _claim(s, 3)

            tasks = [asyncio.create_task(claim(s)) for s in claimers]
            await asyncio.sleep(0.05)
            start.set()
            claimed = [j for batch in await asyncio.gather(*tasks) for j in batch]
            [running] = await sql(
                claimers[0], "SELECT count(*) AS n FROM jobs WHERE status = 'running'"
            )
            assert running["n"] == len(claimed)
            admitted.append(len(claimed))
            await claimers[0].complete_many(
                [Completion(j.id, j.lease_token, {}) for j in claimed if j.lease_token]
            )
    finally:
        for s in claimers:
            await s.close()
    return admitted


async def test_profile_limits_hold_when_many_claimers_race(database_url: str) -> None:
    assert await _race(database_url, limit=5) == [5] * 10


async def test_without_the_profile_locks_the_same_race_over_admits(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counter-proof: the race above is one that happens; the claim's count alone,
    without job_claim_lock_profiles, lets concurrent claimers admit too many."""
    monkeypatch.setattr(ClaimPolicy, "locked_profiles", lambda self, profiles: [])
    assert max(await _race(database_url, limit=5)) > 5


async def test_refills_respect_profile_limits(database_url: str) -> None:
    """complete_and_claim (the worker's cycle) under the same limit, with a sampler."""
    limit = 4
    claimers = await _open(database_url, ClaimPolicy.of(profile_limits=[("m", limit)]), 4)
    [sampler] = await _open(database_url, ClaimPolicy())
    try:
        await _backlog(claimers[0], "a", 600, model_profile="m")
        peak = 0
        stop = False

        async def sample() -> None:
            nonlocal peak
            while not stop:
                [row] = await sql(
                    sampler, "SELECT count(*) AS n FROM jobs WHERE status = 'running'"
                )
                peak = max(peak, row["n"])
                await asyncio.sleep(0.002)

        async def work(s: Store) -> int:
            held = await _claim(s, 2)
            done = 0
            while held:
                request = ClaimRequest.of("w", 2, 60, model_profiles=["m"])
                completions = [Completion(j.id, j.lease_token, {}) for j in held if j.lease_token]
                _, held = await s.complete_and_claim(completions, request)
                done += len(completions)
                if not held:
                    held = await _claim(s, 2)
            return done

        sampling = asyncio.create_task(sample())
        done = await asyncio.gather(*(work(s) for s in claimers))
        stop = True
        await sampling
        assert sum(done) == 600
        assert 0 < peak <= limit
        # and exactly, from each job's admission and completion times
        [audit] = await sql(sampler, PEAK_LEASES)
        assert 0 < audit["coalesce"] <= limit
    finally:
        for s in [*claimers, sampler]:
            await s.close()


def _later() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(hours=1)
