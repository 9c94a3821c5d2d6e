"""Reusable pieces for "does one worker keep a bounded LLM backend busy?".

    uv run python -m bench._saturation [--claim-limits 1 4 16 64] [--jobs 3000]

`stub_process(...)` runs the OpenAI-compatible stub (`tests.stubs.openai_server`)
in its own process, so its event loop does not share the GIL with the measuring
code; `seed_llm_jobs(url, n)` inserts `n` `llm_chat` jobs with one SQL statement;
`drain_llm(url, stub_url, env)` runs one `ai-service worker` process until every
job completed and returns its `Drain`: jobs/s from the jobs' own timestamps
(first claim to last completion) and the most leases held at once (exact, from
the same timestamps). `main` prints the figure for each `WORKER_CLAIM_LIMIT`,
with `WORKER_CONCURRENCY` equal to the backend's capacity, or with
`--llm-concurrency auto` (the stub has no `/metrics`: the latency-gradient
fallback leads).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from bench._common import fresh_database, header, running_process, service_process
from tests.helpers import PEAK_LEASES, free_port

MODEL = "qwen2.5-14b"

SEED_LLM = """
INSERT INTO jobs (id, owner_service, owner_ref, task_type, model_profile, input, priority)
SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || '7'
        || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15))::uuid,
       %(owner)s, 'r' || g, 'llm_chat', %(model)s,
       jsonb_build_object('user', 'job:' || %(owner)s || g || ' hello'), %(priority)s
  FROM generate_series(1, %(jobs)s) AS g
"""


@dataclass
class Drain:
    """One drain's figures."""

    rate: float  # jobs/s, first claim to last completion
    peak_leases: int  # most jobs running at once, from the jobs' timestamps


@contextmanager
def stub_process(module: str, *args: str) -> Iterator[str]:
    """`python -m <module> --port P <args>` in its own process; yields its base URL.

    The module must serve `GET /health` once it listens.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    with running_process(proc, f"http://127.0.0.1:{port}", "/health", module, stop_wait=10) as base:
        yield base


def seed_llm_jobs(url: str, jobs: int, *, owner: str = "bench", priority: int = 0) -> None:
    """Insert `jobs` pending `llm_chat` jobs for `MODEL` (one statement), then analyze."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SEED_LLM, {"jobs": jobs, "owner": owner, "model": MODEL, "priority": priority})
        conn.execute("VACUUM ANALYZE jobs")


async def drain_llm(url: str, stub_url: str, env: dict[str, str], timeout: float = 600) -> Drain:
    """Run one worker against `stub_url` until no job is pending or running."""
    full = {
        "WORKER_ID": "saturation",
        "LLM_BASE_URL": stub_url,
        "LLM_MODEL": MODEL,
        "RESCUE_INTERVAL": "1h",
        **env,
    }
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        with service_process("worker", url, "WORKER_HTTP_PORT", **full):
            deadline = time.monotonic() + timeout
            while True:
                cur = await conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM jobs WHERE status IN ('pending', 'running'))"
                )
                if (await cur.fetchone()) == (False,):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the drain did not finish")
                await asyncio.sleep(0.1)
        cur = await conn.execute(
            "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at)) FROM jobs"
            " WHERE status = 'completed'"
        )
        row = await cur.fetchone()
        peak = await (await conn.execute(PEAK_LEASES)).fetchone()
    assert row is not None
    assert peak is not None
    return Drain(int(row[0]) / float(row[1]), int(peak[0]))


def slot_env(capacity: int, llm_concurrency: str | None) -> dict[str, str]:
    """`WORKER_CONCURRENCY=capacity`, or `LLM_CONCURRENCY=auto` up to twice the capacity."""
    if llm_concurrency == "auto":
        return {"LLM_CONCURRENCY": "auto", "LLM_CONCURRENCY_MAX": str(2 * capacity)}
    if llm_concurrency is not None:
        return {"LLM_CONCURRENCY": llm_concurrency}
    return {"WORKER_CONCURRENCY": str(capacity)}


async def main(
    claim_limits: list[int],
    jobs: int,
    capacity: int,
    latency: float,
    llm_concurrency: str | None = None,
) -> list[float]:
    """Prints and returns each claim limit's share of the backend's maximum."""
    ideal = capacity / latency
    slots = slot_env(capacity, llm_concurrency)
    shown = ", ".join(f"{k}={v}" for k, v in slots.items())
    header(
        f"Saturation: one worker ({shown}) against a "
        f"{capacity} x {latency * 1000:.0f} ms stub in its own process ({ideal:.0f}/s)"
    )
    ratios: list[float] = []
    args = ["--latency", str(latency), "--max-concurrency", str(capacity), "--model", MODEL]
    with stub_process("tests.stubs.openai_server", *args) as stub:
        for limit in claim_limits:
            with fresh_database("saturation") as url:
                seed_llm_jobs(url, jobs)
                result = await drain_llm(url, stub, {**slots, "WORKER_CLAIM_LIMIT": str(limit)})
            ratio = result.rate / ideal
            ratios.append(ratio)
            print(
                f"WORKER_CLAIM_LIMIT={limit:3d}: {result.rate:6.0f} jobs/s = {ratio:5.1%} "
                f"of {ideal:.0f}/s, most leases at once {result.peak_leases} "
                f"(target >= 95%): {'OK' if ratio >= 0.95 else 'MISSED'}",
                flush=True,
            )
    return ratios


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--claim-limits", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument(
        "--llm-concurrency", default=None, help="a number or auto (default: WORKER_CONCURRENCY)"
    )
    args = parser.parse_args()
    asyncio.run(
        main(args.claim_limits, args.jobs, args.capacity, args.latency, args.llm_concurrency)
    )
