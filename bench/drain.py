"""Drains of no-op jobs by one built-in worker at several concurrencies, old code beside new.

    uv run python -m bench.drain [--jobs 20000] [--concurrency 16 64 256 1000] [--no-baseline]

For each `WORKER_CONCURRENCY` (claim limit 100, the documented maximum), one
`ai-service worker` process drains `--jobs` no-op jobs from a fresh database:
jobs/s from the first claim to the last completion (database timestamps), and
the most leases held at once (computed exactly from each job's claim and
completion times: a worker must never hold more leases than its concurrency).
The same drain runs on the code before this round (`bench._baseline`, its own
schema) right after, so the two are measured side by side on the same machine
state.

Targets: every concurrency within 20% of the best one (no collapse), never more
leases than the concurrency, and the new code within 5% of the old at the
built-in path's usual settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench._baseline import BASELINE, baseline_source, migrate_with
from bench._common import fresh_database, header, service_process
from tests.helpers import PEAK_LEASES

SEED = """
INSERT INTO jobs (id, owner_service, owner_ref, task_type, model_profile, input)
SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7'
        || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15))::uuid,
       'bench', 'r' || g, 'noop', 'none', '{}'::jsonb
  FROM generate_series(1, %(jobs)s) AS g
"""


UNFINISHED = (
    "SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'pending')"
    " OR EXISTS (SELECT 1 FROM jobs WHERE status = 'running')"
)


@dataclass
class Drain:
    rate: float  # jobs/s
    peak_running: int


async def drain(
    url: str, jobs: int, concurrency: int, claim_limit: int, source: Path | None
) -> Drain:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SEED, {"jobs": jobs})
        conn.execute("VACUUM ANALYZE jobs")
        conn.execute("CHECKPOINT")
    env = {
        "WORKER_ID": "drain",
        "WORKER_CLAIM_LIMIT": str(claim_limit),
        "WORKER_CONCURRENCY": str(concurrency),
        "RESCUE_INTERVAL": "1h",
    }
    if source is not None:
        env["PYTHONPATH"] = str(source)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        with service_process("worker", url, "WORKER_HTTP_PORT", **env):
            deadline = time.monotonic() + 600
            # Cheap to ask (the partial indexes of pending and running jobs): the
            # drain itself must not compete with a poller for the 2 cores.
            while (await (await conn.execute(UNFINISHED)).fetchone()) != (False,):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"drain at concurrency {concurrency} did not finish")
                await asyncio.sleep(0.05)
        cur = await conn.execute(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM jobs"
        )
        span = await cur.fetchone()
        cur = await conn.execute(PEAK_LEASES)
        peak_row = await cur.fetchone()
    assert span is not None
    assert peak_row is not None
    peak = int(peak_row[0])
    return Drain(jobs / float(span[0]), peak)


async def main(jobs: int, concurrencies: list[int], baseline: bool, claim_limit: int = 100) -> None:
    header(
        f"Drains of {jobs:,} no-op jobs, one worker, by WORKER_CONCURRENCY "
        f"(WORKER_CLAIM_LIMIT={claim_limit})"
    )
    results: dict[tuple[str, int], Drain] = {}
    with contextlib.ExitStack() as stack:
        old = stack.enter_context(baseline_source()) if baseline else None
        for concurrency in concurrencies:
            versions: list[tuple[str, Path | None]] = [("new", None)]
            if old is not None:
                versions.append((f"old {BASELINE[:7]}", old))
            # Alternating which goes first: the second of a pair inherits the
            # first's checkpoint and vacuum work.
            if concurrencies.index(concurrency) % 2:
                versions.reverse()
            for label, source in versions:
                with fresh_database("drain", migrate=source is None) as url:
                    if source is not None:
                        migrate_with(source, url)
                    result = await drain(url, jobs, concurrency, claim_limit, source)
                results[(label, concurrency)] = result
                print(
                    f"{label:>12}  concurrency {concurrency:5d}  {result.rate:8.0f} jobs/s  "
                    f"most leases at once {result.peak_running:6d}",
                    flush=True,
                )
    new = {c: results[("new", c)] for c in concurrencies}
    best = max(r.rate for r in new.values())
    worst = min(new.values(), key=lambda r: r.rate)
    print(
        f"new code: slowest concurrency at {worst.rate / best:.2f} of the best "
        f"(target >= 0.80): {'OK' if worst.rate >= 0.8 * best else 'MISSED'}"
    )
    held = all(new[c].peak_running <= c for c in concurrencies)
    print(f"new code: never more leases than the concurrency: {'OK' if held else 'MISSED'}")
    if baseline:
        for c in concurrencies:
            old_result = results[(f"old {BASELINE[:7]}", c)]
            print(
                f"concurrency {c:5d}: new / old {new[c].rate / old_result.rate:5.2f}  "
                f"(old held up to {old_result.peak_running} leases)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256, 1000])
    parser.add_argument("--claim-limit", type=int, default=100)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.concurrency, not args.no_baseline, args.claim_limit))
