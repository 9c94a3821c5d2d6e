"""Scale: the queue core with 10,000,000 jobs in the table, against 10,000 rows.

    uv run python -m bench.scale [--rows 10000000]
    BENCH_DATABASE_URL=postgresql://... uv run python -m bench.scale   # another server

The big table holds what a year of a busy shared queue leaves behind, shaped to
hit every weak spot of a job table (issue "Queue core at 10 million rows"):

- history spread over 30 days, of which 1,000,000 jobs finished in the last 24 h;
- 300,000 pending jobs of other task types;
- 300,000 pending jobs of the claimed task type but another model profile;
- 300,000 jobs of the claimed type and profile scheduled in the future, at a
  higher priority than the runnable ones.

Then, on that table and on a 10,000-row one, it measures: the typed claim as
the built-in worker runs it (one job per statement), claim throughput over
HTTP, `/stats`, a filtered list, a retention pass with nothing to delete, and
the share of heartbeat updates that are HOT (`pg_stat_user_tables`).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx
import psycopg

from ai_service.store import Store
from bench._common import fresh_database, header, percentile, running_api, summary_ms

TARGET_TYPE, TARGET_PROFILE = "noop", "none"
CHUNK = 1_000_000

# One chunk of rows g in [lo, hi): which kind of row g is follows from its number,
# so the whole table is reproducible. `kind`: h (history), d (finished last 24 h),
# o (pending, other type), p (pending, other profile), s (scheduled, future).
# Ids are UUIDv7 of the creation time, as the API makes them.
SEED_SQL = """
INSERT INTO jobs (id, owner_service, owner_ref, task_type, model_profile, status, priority,
                  input, result, error_category, error_message, attempt, max_attempts,
                  run_after, worker_id, created_at, updated_at, started_at, finished_at)
SELECT (lpad(to_hex((extract(epoch FROM created) * 1000)::bigint), 12, '0') || '7'
        || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15))::uuid,
       svc, 'ref/' || g, tt, mp, st, prio,
       jsonb_build_object('user', 'text ' || g),
       CASE WHEN st = 'completed' THEN '{"content": "ok"}'::jsonb END,
       CASE WHEN st = 'failed'
            THEN (ARRAY['timeout', 'provider_error', 'invalid_input'])[1 + g %% 3] END,
       CASE WHEN st = 'failed' THEN 'boom' END,
       CASE WHEN st = 'pending' THEN 0 ELSE 1 END, 3,
       CASE WHEN kind = 's' THEN now() + interval '1 day' ELSE created END,
       CASE WHEN st IN ('completed', 'failed') THEN 'w-' || (g %% 8) END,
       created, created, CASE WHEN st IN ('completed', 'failed') THEN created END,
       CASE WHEN st IN ('completed', 'failed', 'cancelled')
            THEN created + make_interval(secs => 1 + (g %% 600)) END
  FROM (
    SELECT g, kind,
           (ARRAY['telephony', 'monitoring-tg', 'monitoring-pf'])[1 + g %% 3] AS svc,
           CASE WHEN kind IN ('p', 's') THEN %(target_type)s
                ELSE (ARRAY['llm_chat', 'call_analysis', 'transcription', 'tg_analysis',
                            'chat_completion'])[1 + g %% 5] END AS tt,
           CASE WHEN kind = 's' THEN %(target_profile)s
                WHEN kind = 'p' THEN 'other-profile'
                ELSE (ARRAY['qwen2.5-14b', 'whisperx', 'vision', 'qwen2.5-14b'])[1 + g %% 4]
           END AS mp,
           CASE WHEN kind IN ('o', 'p', 's') THEN 'pending'
                WHEN g %% 100 < 90 THEN 'completed' WHEN g %% 100 < 97 THEN 'failed'
                ELSE 'cancelled' END AS st,
           CASE WHEN kind = 's' THEN 10 ELSE 0 END AS prio,
           CASE WHEN kind = 'd'
                THEN now() - make_interval(secs => (g %% 86000) + 60)
                WHEN kind IN ('o', 'p', 's') THEN now() - make_interval(secs => g %% 3600)
                ELSE now() - interval '1 day'
                     - make_interval(secs => (g %% 2500000)) END AS created
      FROM (SELECT g,
                   CASE WHEN g %% 100 < %(pct_o)s THEN 'o'
                        WHEN g %% 100 < %(pct_p)s THEN 'p'
                        WHEN g %% 100 < %(pct_s)s THEN 's'
                        WHEN g %% 100 < %(pct_d)s THEN 'd'
                        ELSE 'h' END AS kind
              FROM generate_series(%(lo)s, %(hi)s - 1) AS g) AS k
  ) AS s
"""


async def settle(url: str) -> None:
    """Fold the triggers' counter and rollup deltas, as the compaction service would
    have long done on a live system, and drop rollups past their retention."""
    store = await Store.open(url, min_size=1, max_size=1, wait=True)
    try:
        await store.compact_counts()
        await store.compact_rollups()
        await store.prune_rollups()
    finally:
        await store.close()


async def seed(url: str, rows: int) -> float:
    """Fill the table; returns the seconds it took (deltas folded, VACUUM ANALYZE and
    CHECKPOINT included)."""
    # Percent points of g %% 100 per kind: 3% each of o/p/s (300,000 at 10M rows),
    # 10% finished in the last 24 h (1,000,000 at 10M), the rest older history.
    bounds = {"pct_o": 3, "pct_p": 6, "pct_s": 9, "pct_d": 19}
    start = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for lo in range(0, rows, CHUNK):
            conn.execute(
                SEED_SQL,
                bounds
                | {
                    "lo": lo,
                    "hi": min(lo + CHUNK, rows),
                    "target_type": TARGET_TYPE,
                    "target_profile": TARGET_PROFILE,
                },
            )
        await settle(url)
        conn.execute("VACUUM ANALYZE")
        # Measure the steady state, not the checkpoint that the seed's WAL would trigger.
        conn.execute("CHECKPOINT")
    return time.perf_counter() - start


async def timed(
    client: httpx.AsyncClient, method: str, path: str, n: int, **kw: Any
) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = await client.request(method, path, **kw)
        samples.append(time.perf_counter() - t0)
        response.raise_for_status()
    return samples


async def create_targets(client: httpx.AsyncClient, n: int) -> None:
    """`n` fresh runnable jobs of the claimed type and profile, 1,000 per batch."""
    for start in range(0, n, 1000):
        batch = {
            "defaults": {
                "owner_service": "bench",
                "task_type": TARGET_TYPE,
                "model_profile": TARGET_PROFILE,
                "input": {},
            },
            "jobs": [{"owner_ref": f"r{i}"} for i in range(start, min(start + 1000, n))],
        }
        (await client.post("/api/v1/jobs/batch", json=batch)).raise_for_status()


async def claim_rate(client: httpx.AsyncClient, jobs: int) -> float:
    """Jobs/s claimed over HTTP (limit 100 per call, 8 claimers), stopping after `jobs`."""
    claimed = 0

    async def claimer() -> None:
        nonlocal claimed
        while claimed < jobs:
            r = await client.post(
                "/api/v1/jobs/claim",
                json={
                    "worker_id": "bench",
                    "limit": 100,
                    "task_types": [TARGET_TYPE],
                    "model_profiles": [TARGET_PROFILE],
                },
            )
            got = len(r.json()["jobs"])
            if not got:
                return
            claimed += got

    start = time.perf_counter()
    await asyncio.gather(*(claimer() for _ in range(8)))
    return claimed / (time.perf_counter() - start)


async def typed_claims(store: Store, n: int) -> list[float]:
    """Latency of the worker's claim statement, one job at a time."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        jobs = await store.claim(
            "bench",
            limit=1,
            lease_seconds=600,
            task_types=[TARGET_TYPE],
            model_profiles=[TARGET_PROFILE],
        )
        samples.append(time.perf_counter() - t0)
        assert len(jobs) == 1, "ran out of runnable jobs"
    return samples


async def retention_passes(store: Store, n: int) -> list[float]:
    """A retention pass that finds nothing to delete (retention longer than the history)."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        deleted = await store.prune_finished(
            completed_seconds=40 * 86400, failed_seconds=40 * 86400
        )
        samples.append(time.perf_counter() - t0)
        assert deleted == 0
    return samples


async def hot_share(store: Store, url: str, rounds: int = 50) -> float:
    """Share of heartbeat updates that were HOT, from PostgreSQL's own counters."""
    jobs = await store.claim(
        "bench-hb",
        limit=100,
        lease_seconds=600,
        task_types=[TARGET_TYPE],
        model_profiles=[TARGET_PROFILE],
    )
    leases = [(j.id, j.lease_token) for j in jobs if j.lease_token]

    def counters() -> tuple[int, int]:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'jobs'"
            ).fetchone()
            assert row is not None
            return int(row[0]), int(row[1])

    # A backend reports its table statistics when idle, at the latest 10 s later
    # (PGSTAT_IDLE_INTERVAL): wait for the claim's to land before the first reading,
    # and for the heartbeats' before the second.
    await asyncio.sleep(11)
    before = counters()
    for _ in range(rounds):
        await store.heartbeat_many(leases, 600)
    await asyncio.sleep(11)
    after = counters()
    updates, hot = after[0] - before[0], after[1] - before[1]
    return hot / updates if updates else float("nan")


def sizes(url: str) -> str:
    """Table and index sizes: the partial indexes of the live queue stay small."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname, pg_relation_size(c.oid) AS bytes"
            "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relname LIKE 'jobs%%'"
            "   AND c.relkind IN ('r', 'i')"
            " ORDER BY pg_relation_size(c.oid) DESC"
        ).fetchall()
    return ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in rows)


async def measure(url: str, label: str) -> dict[str, float]:
    async with (
        # Retention off: the history is part of the measurement.
        running_api(url, RETENTION_COMPLETED="87600h", RETENTION_FAILED="87600h") as base,
        httpx.AsyncClient(base_url=base, timeout=120) as client,
    ):
        store = await Store.open(url, min_size=1, max_size=4, wait=True)
        try:
            await timed(client, "GET", "/api/v1/stats", 3)  # warm up pool and plans
            stats = await timed(client, "GET", "/api/v1/stats", 30)
            flt = {"status": "failed", "owner_service": "telephony", "task_type": "llm_chat"}
            listing = await timed(client, "GET", "/api/v1/jobs", 30, params=flt | {"limit": 50})
            await create_targets(client, 1000)
            await typed_claims(store, 20)  # warm-up
            claims = await typed_claims(store, 500)
            retention = await retention_passes(store, 20)
            hot = await hot_share(store, url)
            print(f"[{label}] stats            {summary_ms(stats)}")
            print(f"[{label}] filtered list    {summary_ms(listing)}")
            print(f"[{label}] typed claim (1)  {summary_ms(claims)}")
            print(f"[{label}] retention, none  {summary_ms(retention)}")
            print(f"[{label}] heartbeats HOT   {hot:.0%}")
            # Same work on both tables: 10,000 fresh runnable jobs claimed 100 at a
            # time; the median of 3 rounds (an autovacuum may fall into one).
            rates = []
            for _ in range(3):
                await create_targets(client, 10_000)
                rates.append(await claim_rate(client, 10_000))
            rate = sorted(rates)[1]
            print(
                f"[{label}] claim throughput {rate:8.0f} jobs/s "
                f"(median of {', '.join(f'{r:.0f}' for r in rates)})"
            )
        finally:
            await store.close()
    return {
        "stats_p50": percentile(stats, 50),
        "list_p50": percentile(listing, 50),
        "claim_p50": percentile(claims, 50),
        "claim_p99": percentile(claims, 99),
        "retention_p50": percentile(retention, 50),
        "hot": hot,
        "rate": rate,
    }


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


async def main(rows: int) -> None:
    header(f"Scale: {rows:,} rows vs 10,000 rows")
    results = {}
    for n in (10_000, rows):
        with fresh_database("scale") as url:
            took = await seed(url, n)
            print(f"seeded {n:,} rows in {took:.1f} s", flush=True)
            print(f"sizes: {sizes(url)}", flush=True)
            results[n] = await measure(url, f"{n:>10,} rows")
    big, small = results[rows], results[10_000]
    ms = 1000
    ratio = big["rate"] / small["rate"]
    print(f"at {rows:,} rows:")
    print(
        f"  typed claim p50 {big['claim_p50'] * ms:.2f} ms (< 2), "
        f"p99 {big['claim_p99'] * ms:.2f} ms (< 10): "
        f"{verdict(big['claim_p50'] < 0.002 and big['claim_p99'] < 0.010)}"
    )
    print(f"  /stats p50 {big['stats_p50'] * ms:.1f} ms (< 50): {verdict(big['stats_p50'] < 0.05)}")
    print(
        f"  filtered list p50 {big['list_p50'] * ms:.1f} ms (< 20): "
        f"{verdict(big['list_p50'] < 0.02)}"
    )
    print(
        f"  retention pass, nothing to delete, p50 {big['retention_p50'] * ms:.2f} ms (< 5): "
        f"{verdict(big['retention_p50'] < 0.005)}"
    )
    print(f"  heartbeats HOT {big['hot']:.0%} (>= 80%): {verdict(big['hot'] >= 0.8)}")
    print(
        f"  claim throughput {big['rate']:.0f} vs {small['rate']:.0f} jobs/s at 10,000 rows "
        f"= {ratio:.2f} (>= 0.80): {verdict(ratio >= 0.8)}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    asyncio.run(main(parser.parse_args().rows))
