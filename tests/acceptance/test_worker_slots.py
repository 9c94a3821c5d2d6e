"""Per-handler slots: long jobs of one handler never hold the slots of another.

The issue's reproduction: a worker with 4 slots and both handlers enabled,
4 slow transcriptions queued before 50 fast LLM jobs. With one shared pool the
transcriptions took every slot and the LLM jobs waited; with per-handler
slots the LLM jobs all finish while the transcriptions still run.
"""

from __future__ import annotations

import asyncio
import base64

import psycopg

from ai_service.jobs import NewJob
from ai_service.store import Store
from tests.helpers import PEAK_LEASES, new_job
from tests.stubs import sine_wav
from tests.stubs.openai_server import OpenAIStub
from tests.stubs.whisperx_server import WhisperXStub
from tests.workers import running_worker

SLOW = 30.0  # seconds a transcription takes: far longer than the test may run


def transcription_job(i: int, priority: int = 0) -> NewJob:
    audio = base64.b64encode(sine_wav(1.0)).decode()
    return new_job(
        task_type="transcription",
        model_profile="whisperx",
        owner_ref=f"call-{i}",
        priority=priority,
        input={"audio_base64": audio, "audio_format": "wav"},
    )


def peak_query(task_types: tuple[str, ...]) -> str:
    """PEAK_LEASES restricted to some task types (the exact per-handler audit)."""
    where = ", ".join(f"'{t}'" for t in task_types)
    return PEAK_LEASES.replace("FROM jobs", f"FROM jobs WHERE task_type IN ({where})")


async def test_slow_transcriptions_cannot_block_fast_llm_jobs(
    store: Store, database_url: str
) -> None:
    with WhisperXStub("wx", latency=SLOW) as whisperx, OpenAIStub(latency=0.01) as llm:
        # The transcriptions first and at a higher priority: a shared pool would
        # give them every slot.
        await store.create_jobs([transcription_job(i, priority=5) for i in range(4)])
        await asyncio.sleep(0.01)
        llm_jobs = await store.create_jobs(
            [new_job(owner_ref=f"chat-{i}", input={"user": f"job:c{i} hi"}) for i in range(50)]
        )
        async with running_worker(
            database_url,
            WORKER_CONCURRENCY="4",
            WORKER_SHUTDOWN_TIMEOUT="0.5s",
            WHISPERX_URL=whisperx.base_url,
            LLM_BASE_URL=llm.base_url,
        ) as runner:
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                done = [await store.get_job(c.job.id) for c in llm_jobs]
                if all(job.status == "completed" for job in done):
                    break
                assert asyncio.get_running_loop().time() < deadline, "LLM jobs were blocked"
                await asyncio.sleep(0.05)
            slots = runner.slot_status()
            transcriptions_running = whisperx.requests_received
            assert runner.counters.completed == 50
            async with await psycopg.AsyncConnection.connect(database_url) as conn:
                cur = await conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'running'),"
                    " count(*) FILTER (WHERE status = 'completed')"
                    " FROM jobs WHERE task_type = 'transcription'"
                )
                running, finished_transcriptions = await cur.fetchone() or (0, 0)
    # The default split of 4 slots: 1 for transcription (WhisperX serializes), 3 for LLM.
    assert slots["transcription"]["slots"] == 1
    assert slots["llm"]["slots"] == 3
    assert transcriptions_running == 1
    # The one transcription slot was busy all along; nothing had finished there.
    assert (running, finished_transcriptions) == (1, 0)
    assert runner.pools["transcription"].peak == 1
    assert runner.pools["llm"].peak <= 3
    assert llm.deliveries == {f"c{i}": 1 for i in range(50)}


async def test_each_handler_holds_at_most_its_slots_and_the_total_holds(
    store: Store, database_url: str
) -> None:
    with WhisperXStub("wx", latency=0.3) as whisperx, OpenAIStub(latency=0.05) as llm:
        await store.create_jobs([transcription_job(i) for i in range(8)])
        await store.create_jobs([new_job(owner_ref=f"chat-{i}") for i in range(200)])
        async with (
            running_worker(
                database_url,
                TRANSCRIPTION_CONCURRENCY="2",
                LLM_CONCURRENCY="8",
                WHISPERX_URL=whisperx.base_url,
                LLM_BASE_URL=llm.base_url,
            ) as runner,
            await psycopg.AsyncConnection.connect(database_url) as conn,
        ):
            while True:
                cur = await conn.execute(
                    "SELECT count(*) FROM jobs WHERE status IN ('pending', 'running')"
                )
                if (await cur.fetchone() or (1,))[0] == 0:
                    break
                await asyncio.sleep(0.05)
            exact_llm = await (await conn.execute(peak_query(("llm_chat",)))).fetchone()
            exact_tr = await (await conn.execute(peak_query(("transcription",)))).fetchone()
            exact_all = await (await conn.execute(PEAK_LEASES)).fetchone()
    # WORKER_CONCURRENCY unset with per-handler values: the total is their sum.
    assert runner.concurrency == 10
    assert exact_llm is not None
    assert exact_tr is not None
    assert exact_all is not None
    assert 1 <= exact_llm[0] <= 8
    assert 1 <= exact_tr[0] <= 2
    assert exact_all[0] <= 10
    assert runner.pools["llm"].peak <= 8
    assert runner.pools["transcription"].peak <= 2
    assert llm.max_in_flight <= 8
    assert runner.counters.completed == 208


# Jobs claimed by the transaction that recorded others (the refill of their slots).
REFILLED = """
SELECT count(*) FROM jobs j
 WHERE EXISTS (SELECT 1 FROM jobs d WHERE d.finished_at = j.started_at)
"""


async def test_a_claim_limit_of_one_still_refills_every_freed_slot_at_once(
    store: Store, database_url: str
) -> None:
    # Jobs answered together free several slots in one batch: each is refilled by
    # that batch's own transaction, not one per claim statement.
    total = 400
    with OpenAIStub(latency=0.05) as llm:
        await store.create_jobs([new_job(owner_ref=f"chat-{i}") for i in range(total)])
        async with (
            running_worker(
                database_url,
                WORKER_CONCURRENCY="16",
                WORKER_CLAIM_LIMIT="1",
                LLM_BASE_URL=llm.base_url,
            ) as runner,
            await psycopg.AsyncConnection.connect(database_url) as conn,
        ):
            while True:
                cur = await conn.execute(
                    "SELECT count(*) FROM jobs WHERE status IN ('pending', 'running')"
                )
                if (await cur.fetchone() or (1,))[0] == 0:
                    break
                await asyncio.sleep(0.05)
            refilled = (await (await conn.execute(REFILLED)).fetchone() or (0,))[0]
            exact = (await (await conn.execute(PEAK_LEASES)).fetchone() or (0,))[0]
            batches = await (
                await conn.execute(
                    "SELECT max(n) FROM (SELECT count(*) AS n FROM jobs GROUP BY started_at) s"
                )
            ).fetchone()
    assert runner.counters.completed == total
    assert exact <= 16
    assert llm.max_in_flight <= 16
    # Most jobs took the slot of a job recorded in the same transaction, and some
    # of those transactions claimed more than WORKER_CLAIM_LIMIT jobs at once.
    assert refilled >= total * 3 // 4
    assert batches is not None
    assert batches[0] > 1
