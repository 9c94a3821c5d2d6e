"""Adaptive LLM concurrency against a continuous-batching vLLM stub: reusable measurements.

    uv run python -m bench._stub_vllm [--jobs 2000] [--settings 16 64 256 auto]

The stub (`tests.stubs.vllm_engine`, its own process) fits `--max-num-seqs`
sequences in its KV cache and queues the rest in its own FIFO; a decode step
takes longer the more sequences run. For each `LLM_CONCURRENCY` setting one
worker drains `--jobs` bulk jobs (priority 0); once a third of them completed,
one high-priority job (priority 10) is inserted and its latency (created ->
finished, database times) is compared with the same job on an idle engine.

`measure(setting, jobs, engine)` returns one `Measurement`; `idle_latency(...)`
the idle figure; `main` prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

import psycopg

from bench._common import fresh_database, header, service_process
from bench._saturation import MODEL, seed_llm_jobs, stub_process

PRIORITY = 10
HIGH = """
INSERT INTO jobs (owner_service, owner_ref, task_type, model_profile, input, priority)
VALUES ('interactive', 'urgent', 'llm_chat', %(model)s, '{"user": "job:urgent now"}', %(priority)s)
RETURNING id
"""
LATENCY = "SELECT extract(epoch FROM finished_at - created_at) FROM jobs WHERE id = %(id)s"


@dataclass(frozen=True)
class Engine:
    """The stub engine's shape."""

    max_num_seqs: int = 128
    step_base: float = 0.02
    step_per_seq: float = 0.00005
    tokens: int = 32

    def args(self) -> list[str]:
        return [
            "--model",
            MODEL,
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--step-base",
            str(self.step_base),
            "--step-per-seq",
            str(self.step_per_seq),
            "--tokens",
            str(self.tokens),
        ]


@dataclass
class Measurement:
    """One bulk run under one setting."""

    setting: str
    rate: float  # bulk jobs/s, first claim to last completion
    priority_latency: float  # seconds, created -> finished
    extra: dict[str, float] = field(default_factory=dict)


def worker_env(setting: str, stub_url: str, maximum: int = 256) -> dict[str, str]:
    """The worker's variables for `LLM_CONCURRENCY=setting` (a number or `auto`)."""
    env = {
        "WORKER_ID": "adaptive",
        "LLM_BASE_URL": stub_url,
        "LLM_MODEL": MODEL,
        "LLM_CONCURRENCY": setting,
        "RESCUE_INTERVAL": "1h",
    }
    if setting == "auto":
        env["LLM_CONCURRENCY_MAX"] = str(maximum)
    return env


async def _wait(conn: psycopg.AsyncConnection, sql: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while (await (await conn.execute(sql)).fetchone()) != (True,):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for: {sql}")
        await asyncio.sleep(0.05)


async def _urgent(conn: psycopg.AsyncConnection) -> float:
    """Insert one high-priority job, wait for it, return its latency."""
    cur = await conn.execute(HIGH, {"model": MODEL, "priority": PRIORITY})
    row = await cur.fetchone()
    assert row is not None
    job_id = row[0]
    # Inserted by SQL, not through the API: wake the worker as the API would.
    await conn.execute("SELECT pg_notify('ai_service_jobs', 'llm_chat')")
    await _wait(conn, f"SELECT status = 'completed' FROM jobs WHERE id = '{job_id}'")
    latency = await (await conn.execute(LATENCY, {"id": job_id})).fetchone()
    assert latency is not None
    return float(latency[0])


async def idle_latency(stub_url: str, setting: str = "auto") -> float:
    """Latency of one high-priority job with the engine idle (median of three)."""
    with fresh_database("idle") as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            with service_process(
                "worker", url, "WORKER_HTTP_PORT", **worker_env(setting, stub_url)
            ):
                figures = [await _urgent(conn) for _ in range(3)]
    return sorted(figures)[1]


async def measure(setting: str, jobs: int, stub_url: str) -> Measurement:
    """Drain `jobs` bulk jobs under `setting`, with one urgent job a third of the way."""
    with fresh_database("adaptive") as url:
        seed_llm_jobs(url, jobs)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            with service_process(
                "worker", url, "WORKER_HTTP_PORT", **worker_env(setting, stub_url)
            ):
                await _wait(
                    conn,
                    f"SELECT count(*) >= {jobs // 3} FROM jobs WHERE status = 'completed'",
                )
                latency = await _urgent(conn)
                await _wait(
                    conn,
                    "SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE status IN ('pending', 'running'))",
                )
            cur = await conn.execute(
                "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at)) FROM jobs"
                " WHERE owner_service = 'bench' AND status = 'completed'"
            )
            row = await cur.fetchone()
    assert row is not None
    return Measurement(setting, int(row[0]) / float(row[1]), latency)


async def main(jobs: int, settings: list[str], engine: Engine) -> list[Measurement]:
    header(
        f"Adaptive LLM concurrency: engine stub B={engine.max_num_seqs}, "
        f"step {engine.step_base * 1000:.0f} ms + {engine.step_per_seq * 1000:.2f} ms/seq, "
        f"{engine.tokens} tokens/job, {jobs} bulk jobs"
    )
    results: list[Measurement] = []
    with stub_process("tests.stubs.vllm_engine", *engine.args()) as stub:
        idle = await idle_latency(stub)
        print(f"high-priority job on an idle engine: {idle:.2f} s", flush=True)
        for setting in settings:
            result = await measure(setting, jobs, stub)
            results.append(result)
            print(
                f"LLM_CONCURRENCY={setting:>4}: {result.rate:6.1f} jobs/s, high-priority job "
                f"{result.priority_latency:5.2f} s = {result.priority_latency / idle:4.2f}x idle",
                flush=True,
            )
    best = max(r.rate for r in results if r.setting != "auto") if len(results) > 1 else 0
    for r in results:
        if r.setting == "auto" and best:
            ok = r.rate >= 0.95 * best and r.priority_latency <= 1.5 * idle
            r.extra["ok"] = float(ok)
            print(
                f"auto: {r.rate / best:.1%} of the best fixed setting's throughput (target >= 95%),"
                f" high-priority latency {r.priority_latency / idle:.2f}x idle (target <= 1.5x): "
                f"{'OK' if ok else 'MISSED'}"
            )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--settings", nargs="+", default=["16", "64", "256", "auto"])
    parser.add_argument("--max-num-seqs", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    engine = Engine(max_num_seqs=args.max_num_seqs, tokens=args.tokens)
    asyncio.run(main(args.jobs, args.settings, engine))
