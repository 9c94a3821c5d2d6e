"""The transcription A/B report with 100,000 transcription jobs in its window.

    uv run python -m bench.report [--jobs 100000] [--calls 20]

Seeds `--jobs` completed transcription jobs finished over the last 24 hours, each
with three providers' attempts (whisperx the reference, qwen2-audio and voxtral-small
compared to it, about 3% of the audio-LLM attempts failed), plus as many older ones
(2 to 9 days ago) that the window must not read. The rows come from the real path:
the jobs are inserted completed, the `jobs_transcription_report` trigger writes their
attempt rows and deltas, the compaction fold makes the hourly rollups.

Then it times `GET /api/v1/reports/transcription` (the default window: the last 24 h,
and once per owner_service) over `--calls` calls each, the store's two statements on
their own, prints EXPLAIN's top node and the indexes the plans use, and the verdict
against 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg

from ai_service.api.routes_reports import report_window
from ai_service.store import Store
from ai_service.transcription_report import split_window
from bench._common import fresh_database, header, percentile, running_api, summary_ms

TARGET_MS = 200.0
CHUNK = 20_000

# Job g finished `age` seconds ago; three attempts: whisperx (selected), qwen2-audio and
# voxtral-small with a WER drawn from g (deterministic), durations proportional to the
# audio length. Ids are UUIDv7 of the finish time.
SEED_SQL = """
INSERT INTO jobs (id, owner_service, owner_ref, task_type, model_profile, status, input,
                  result, attempt, max_attempts, run_after, worker_id, created_at,
                  updated_at, started_at, finished_at)
SELECT (lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') || '7'
        || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15))::uuid,
       (ARRAY['telephony', 'monitoring-tg', 'monitoring-pf'])[1 + g %% 3], 'call/' || g,
       'transcription', 'whisperx', 'completed', '{"audio_id": "x"}',
       jsonb_build_object(
           'text', 'reference text', 'provider', 'whisperx', 'audio_duration', audio,
           'attempts', jsonb_build_array(
               jsonb_build_object('provider', 'whisperx', 'model', 'large-v3',
                                  'status', 'ok', 'selected', true,
                                  'duration_ms', round(audio * 40 + g %% 500)),
               jsonb_build_object('provider', 'qwen2-audio',
                                  'model', 'Qwen/Qwen2-Audio-7B-Instruct',
                                  'status', CASE WHEN g %% 37 = 0 THEN 'error' ELSE 'ok' END,
                                  'selected', false,
                                  'duration_ms', round(audio * 120 + g %% 900),
                                  'wer', CASE WHEN g %% 37 <> 0
                                              THEN round(((g * 7919) %% 400) / 1000.0, 4)
                                         END),
               jsonb_build_object('provider', 'voxtral-small',
                                  'model', 'mistralai/Voxtral-Small-24B-2507',
                                  'status', CASE WHEN g %% 41 = 0 THEN 'error' ELSE 'ok' END,
                                  'selected', false,
                                  'duration_ms', round(audio * 90 + g %% 700),
                                  'wer', CASE WHEN g %% 41 <> 0
                                              THEN round(((g * 104729) %% 300) / 1000.0, 4)
                                         END))),
       1, 3, t, 'w-' || (g %% 8), t, t, t - make_interval(secs => audio / 5), t
  FROM (SELECT g, now() - make_interval(secs => %(offset)s + (g %% %(spread)s)) AS t,
               (20 + (g %% 600))::float8 AS audio
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS g) AS s
"""


async def seed(url: str, jobs: int, *, offset: float, spread: int, first: int) -> float:
    """Insert `jobs` completed transcription jobs finished `offset` .. `offset + spread`
    seconds ago; returns the seconds it took."""
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for lo in range(first, first + jobs, CHUNK):
            hi = min(lo + CHUNK, first + jobs)
            await conn.execute(SEED_SQL, {"lo": lo, "hi": hi, "offset": offset, "spread": spread})
    return time.perf_counter() - started


async def explain(store: Store, name: str, params: dict[str, Any]) -> list[str]:
    """EXPLAIN (ANALYZE) of a named query with its values: the plan's lines."""
    async with store.pool.connection() as conn:
        cur = await conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + store._q[name], params)
        return [next(iter(row.values())) for row in await cur.fetchall()]


def plan_summary(lines: list[str]) -> str:
    """The plan's top node and execution time, and which tables it scans how."""
    top = lines[0].strip()
    scans = sorted(
        {
            line.strip().split("  (")[0].removeprefix("->  ")
            for line in lines
            if "Scan" in line and " on " in line and "Subquery Scan" not in line
        }
    )
    execution = next((line for line in lines if line.startswith("Execution Time")), "")
    shown = "\n      ".join(scans)
    return f"top: {top}\n    {execution}\n    scans:\n      {shown}"


async def time_calls(
    client: httpx.AsyncClient, params: dict[str, str], calls: int
) -> tuple[list[float], dict[str, Any]]:
    durations: list[float] = []
    body: dict[str, Any] = {}
    for _ in range(calls):
        started = time.perf_counter()
        response = await client.get("/api/v1/reports/transcription", params=params)
        durations.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        body = response.json()
    return durations, body


async def main(jobs: int, calls: int) -> bool:
    """Run the benchmark; returns whether the report answered within 200 ms (p95)."""
    header(f"Transcription A/B report ({jobs:,} jobs in the window)")
    with fresh_database("bench_report") as url:
        seconds = await seed(url, jobs, offset=60, spread=86_000, first=0)
        older = await seed(url, jobs, offset=2 * 86_400, spread=7 * 86_400, first=jobs)
        print(
            f"seeded {jobs:,} jobs in the last 24 h ({seconds:.1f} s) and {jobs:,} older "
            f"ones ({older:.1f} s): {6 * jobs:,} attempt rows, through the trigger"
        )
        store = await Store.open(url, min_size=1, max_size=2, wait=True)
        try:
            started = time.perf_counter()
            folded = 0
            while moved := await store.compact_transcription_rollups():
                folded += moved
            print(f"folded {folded:,} deltas into hourly rollups in "
                  f"{time.perf_counter() - started:.1f} s")  # fmt: skip
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                # What autovacuum does to these insert-only and churned tables.
                await conn.execute("VACUUM ANALYZE transcription_attempts")
                await conn.execute("VACUUM ANALYZE transcription_rollup_deltas")
                await conn.execute("VACUUM ANALYZE transcription_rollups")
                await conn.execute("VACUUM ANALYZE jobs")
                cur = await conn.execute("SELECT count(*) FROM transcription_rollups")
                row = await cur.fetchone()
                print(f"rollup rows: {row[0] if row else 0:,}")

            async with running_api(url) as base, httpx.AsyncClient(base_url=base) as client:
                await time_calls(client, {}, 3)  # warm-up
                everyone, body = await time_calls(client, {}, calls)
                one_owner, _ = await time_calls(client, {"owner_service": "telephony"}, calls)
            providers = {p["provider"]: p for p in body["providers"]}
            for name, p in providers.items():
                print(
                    f"  {name:14} attempts {p['attempts']:>7,}  ok {p['success_rate']:.3f}  "
                    f"p50 {p['duration_p50_ms']:>8.1f} ms  p95 {p['duration_p95_ms']:>8.1f} ms  "
                    f"RTF {p['real_time_factor']:.3f}  WER {p['wer_mean']}  "
                    f"({p['wer_jobs']:,} jobs)"
                )
            assert providers["whisperx"]["attempts"] == jobs, providers["whisperx"]
            assert len(body["disagreements"]) == 20
            print(f"GET /api/v1/reports/transcription (last 24 h):  {summary_ms(everyone)}")
            print(f"  ... ?owner_service=telephony:                {summary_ms(one_owner)}")

            # The statements on their own, with the plans.
            since, until = report_window(None, None, datetime.now(UTC))
            window = split_window(since, until)
            params = {**window.params(), "owner": None}
            report_plan = await explain(store, "transcription_report", params)
            top_plan = await explain(
                store,
                "transcription_disagreements",
                {"since": since, "until": until, "owner": None, "limit": 20},
            )
            print(f"transcription_report plan:\n    {plan_summary(report_plan)}")
            print(f"transcription_disagreements plan:\n    {plan_summary(top_plan)}")
        finally:
            await store.close()
    worst = max(percentile([v * 1000 for v in everyone], 95),
                percentile([v * 1000 for v in one_owner], 95))  # fmt: skip
    verdict = "PASS" if worst < TARGET_MS else "FAIL"
    print(f"verdict: p95 {worst:.1f} ms against {TARGET_MS:.0f} ms -> {verdict}")
    return worst < TARGET_MS


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.calls))
