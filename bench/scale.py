"""Scale: 1,000,000 jobs in the table; latency of stats, filtered list, get and claim.

    uv run python -m bench.scale [--rows 1000000]

Seeds rows with one INSERT ... SELECT (a realistic mix: 30 days of history,
mostly completed, some failed/cancelled, a pending backlog), then measures
through the real HTTP API. Also compares claim throughput at 10,000 vs
1,000,000 rows.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
import psycopg

from bench._common import fresh_database, header, running_api, summary_ms

SEED_SQL = """
INSERT INTO jobs (owner_service, owner_ref, task_type, model_profile, status, priority, input,
                  result, error_category, error_message, attempt, max_attempts, run_after,
                  worker_id, created_at, updated_at, started_at, finished_at)
SELECT svc, 'ref/' || g, tt, mp, st, 0, jsonb_build_object('user', 'text ' || g),
       CASE WHEN st = 'completed' THEN '{"content": "ok"}'::jsonb END,
       CASE WHEN st = 'failed'
            THEN (ARRAY['timeout', 'provider_error', 'invalid_input'])[1 + g %% 3] END,
       CASE WHEN st = 'failed' THEN 'boom' END,
       CASE WHEN st = 'pending' THEN 0 ELSE 1 END, 3, created,
       CASE WHEN st IN ('completed', 'failed') THEN 'w-' || (g %% 8) END,
       created, created, CASE WHEN st IN ('completed', 'failed') THEN created END,
       CASE WHEN st IN ('completed', 'failed', 'cancelled')
            THEN created + make_interval(secs => 1 + (g %% 600)) END
  FROM (
    SELECT g,
           (ARRAY['telephony','monitoring-tg','monitoring-pf'])[1 + g %% 3] AS svc,
           (ARRAY['llm_chat', 'call_analysis', 'transcription', 'tg_analysis',
                  'chat_completion'])[1 + g %% 5] AS tt,
           (ARRAY['qwen2.5-14b','whisperx','vision','qwen2.5-14b'])[1 + g %% 4] AS mp,
           CASE WHEN g %% 100 < 85 THEN 'completed' WHEN g %% 100 < 92 THEN 'failed'
                WHEN g %% 100 < 95 THEN 'cancelled' ELSE 'pending' END AS st,
           now() - make_interval(secs => (%(rows)s - g) * (30 * 86400.0 / %(rows)s)) AS created
      FROM generate_series(1, %(rows)s) AS g
  ) AS s
"""


def seed(url: str, rows: int) -> float:
    start = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SEED_SQL, {"rows": rows})
        conn.execute("VACUUM ANALYZE jobs")
        conn.execute("VACUUM ANALYZE job_count_deltas")
        # Measure the steady state, not the checkpoint that the seed's WAL would trigger.
        conn.execute("CHECKPOINT")
    return time.perf_counter() - start


async def timed(
    client: httpx.AsyncClient, method: str, path: str, n: int, **kw: object
) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = await client.request(method, path, **kw)  # type: ignore[arg-type]
        samples.append(time.perf_counter() - t0)
        response.raise_for_status()
    return samples


async def claim_rate(client: httpx.AsyncClient, jobs: int) -> float:
    """Jobs/s claimed over HTTP (limit 100 per call, 8 claimers), stopping after `jobs`."""
    claimed = 0

    async def claimer() -> None:
        nonlocal claimed
        while claimed < jobs:
            r = await client.post(
                "/api/v1/jobs/claim",
                json={"worker_id": "bench", "limit": 100, "task_types": ["noop"]},
            )
            got = len(r.json()["jobs"])
            if not got:
                return
            claimed += got

    start = time.perf_counter()
    await asyncio.gather(*(claimer() for _ in range(8)))
    return claimed / (time.perf_counter() - start)


async def measure(url: str, label: str) -> dict[str, float]:
    async with running_api(url) as base, httpx.AsyncClient(base_url=base, timeout=60) as client:
        await timed(client, "GET", "/api/v1/stats", 3)  # warm up pool and plans
        stats = await timed(client, "GET", "/api/v1/stats", 30)
        flt = {"status": "failed", "owner_service": "telephony", "task_type": "llm_chat"}
        listing = await timed(client, "GET", "/api/v1/jobs", 30, params=flt | {"limit": 50})
        page = (await client.get("/api/v1/jobs", params={"limit": 1})).json()["jobs"][0]["id"]
        gets = await timed(client, "GET", f"/api/v1/jobs/{page}", 30)
        claims = await timed(
            client, "POST", "/api/v1/jobs/claim", 30, json={"worker_id": "b", "limit": 10}
        )
        print(f"[{label}] stats           {summary_ms(stats)}")
        print(f"[{label}] filtered list   {summary_ms(listing)}")
        print(f"[{label}] get             {summary_ms(gets)}")
        print(f"[{label}] claim (10)      {summary_ms(claims)}")
        # Same work on both tables: 10,000 fresh pending jobs, claimed 100 at a time;
        # the median of 3 rounds (an autovacuum of the big table may fall in one).
        rates = []
        for _ in range(3):
            for _ in range(10):
                batch = {
                    "defaults": {
                        "owner_service": "bench",
                        "task_type": "noop",
                        "model_profile": "none",
                        "input": {},
                    },
                    "jobs": [{"owner_ref": f"r{i}"} for i in range(1000)],
                }
                (await client.post("/api/v1/jobs/batch", json=batch)).raise_for_status()
            rates.append(await claim_rate(client, 10_000))
        rate = sorted(rates)[1]
        print(
            f"[{label}] claim throughput {rate:8.0f} jobs/s "
            f"(median of {', '.join(f'{r:.0f}' for r in rates)})"
        )
        from bench._common import percentile

        return {
            "stats_p50": percentile(stats, 50),
            "list_p50": percentile(listing, 50),
            "rate": rate,
        }


async def main(rows: int) -> None:
    header(f"Scale: {rows:,} rows vs 10,000 rows")
    results = {}
    for n in (10_000, rows):
        with fresh_database("scale") as url:
            took = seed(url, n)
            print(f"seeded {n:,} rows in {took:.1f} s")
            results[n] = await measure(url, f"{n:>9,} rows")
    big, small = results[rows], results[10_000]
    print(
        f"stats p50 {big['stats_p50'] * 1000:.1f} ms, filtered list p50 "
        f"{big['list_p50'] * 1000:.1f} ms at {rows:,} rows (target < 100 ms)"
    )
    print(
        f"claim throughput at {rows:,} / at 10,000 rows: {big['rate'] / small['rate']:.2f} "
        "(target >= 0.80)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    asyncio.run(main(parser.parse_args().rows))
