"""`make bench`: every benchmark in one run, figures and ratios printed.

    uv run python -m bench.run_all [--quick]

Everything runs on this machine against loopback only: an embedded
PostgreSQL (fsync on) from `.data/bench-pg` unless BENCH_DATABASE_URL is set,
the API and workers as their own processes, stub AI servers on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform

from bench import (
    api_latency,
    audio_memory,
    drain,
    http_path,
    llm_saturation,
    pickup,
    report,
    scale,
    scheduling,
    throughput,
    wait,
)
from bench._common import header


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    database = os.environ.get("BENCH_DATABASE_URL") and "BENCH_DATABASE_URL server"
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, PostgreSQL: "
        f"{database or 'embedded PostgreSQL 18 (fsync on)'}"
    )


async def main(quick: bool) -> None:
    header("Machine")
    print(machine())
    jobs = 5_000 if quick else 20_000
    await throughput.main(jobs, workers=2)
    await drain.main(jobs, [16, 64, 256, 1000], baseline=not quick)
    await http_path.main(http_path.OLD_COMMIT, 1 if quick else 3, 2 * jobs, jobs // 2)
    await pickup.main(100 if quick else 300)
    await wait.main(200 if quick else 1000, 20, 0.02)
    await api_latency.main(3 if quick else 10, 32)
    await scale.main(100_000 if quick else 10_000_000)
    await llm_saturation.main(1000 if quick else 3000, 64, 0.2)
    await scheduling.main(quick=quick)
    await audio_memory.main(10.0 if quick else 30.0)
    await report.main(10_000 if quick else 100_000, 20)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    asyncio.run(main(parser.parse_args().quick))
