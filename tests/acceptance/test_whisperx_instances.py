"""Which WhisperX instance a job goes to, through the real worker against stub servers.

whisper-asr-webservice transcribes one request at a time and answers nothing
meanwhile (the stubs block their event loop the same way). The worker picks by
load: the instance with the fewest requests in flight from this worker, skipping
instances whose circuit breaker is open, ties in turn.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from ai_service.jobs import Job, JobStatus
from ai_service.store import Store
from ai_service.worker import transcription
from tests.helpers import new_job
from tests.stubs import closed_port_url, sine_wav
from tests.stubs.whisperx_server import WhisperXStub
from tests.workers import running_worker, wait_until_finished

AUDIO = base64.b64encode(sine_wav(1.0)).decode()


async def submit(store: Store, name: str) -> Any:
    [created] = await store.create_jobs(
        [
            new_job(
                owner_ref=name,
                task_type="transcription",
                model_profile="whisperx",
                input={"audio_base64": AUDIO, "audio_format": "wav"},
            )
        ]
    )
    return created.job.id


async def finished(store: Store, job_id: Any) -> Job:
    await wait_until_finished(store, [job_id], timeout=30)
    job = await store.get_job(job_id)
    assert job.status is JobStatus.COMPLETED, job.error_message
    return job


def tried(job: Job) -> list[tuple[str, str]]:
    """`(url, status)` of every instance the job's WhisperX attempt tried, in order."""
    assert job.result is not None
    return [(i["url"], i["status"]) for i in job.result["attempts"][0]["instances"]]


async def test_a_busy_instance_is_not_chosen_while_an_idle_one_exists(
    store: Store, database_url: str
) -> None:
    with WhisperXStub("slow", latency=30.0) as slow, WhisperXStub("idle") as idle:
        urls = f"{slow.base_url},{idle.base_url}"
        transcription._whisperx_pickers.pop((slow.base_url, idle.base_url), None)
        async with running_worker(database_url, WHISPERX_URL=urls, TRANSCRIPTION_CONCURRENCY="2"):
            first = await submit(store, "long-call")
            # The first job goes to the first instance (a tie, in turn) and keeps it busy.
            for _ in range(1000):
                if slow.busy:
                    break
                await asyncio.sleep(0.01)
            assert slow.busy
            # Blind round robin would send every other one of these to `slow`, to queue.
            later = [await finished(store, await submit(store, f"call-{n}")) for n in range(3)]
            assert slow.busy  # still transcribing the first job all along
            slow.stop()  # ends the long transcription: the first job fails over or fails
            await wait_until_finished(store, [first], timeout=30)

    assert slow.requests_received == 1
    assert idle.requests_received == 3
    assert [tried(job) for job in later] == [[(idle.base_url, "ok")]] * 3
    assert all(job.result is not None and job.result["provider"] == "whisperx" for job in later)


async def test_an_instance_whose_breaker_is_open_is_skipped(
    store: Store, database_url: str
) -> None:
    down = closed_port_url()
    with WhisperXStub("up") as up:
        transcription._whisperx_pickers.pop((down, up.base_url), None)
        async with running_worker(
            database_url,
            WHISPERX_URL=f"{down},{up.base_url}",
            BREAKER_FAILURES="1",
            BREAKER_PROBE_INTERVAL="30s",
            BREAKER_PROBE_MAX="30s",
        ) as runner:
            jobs = [await finished(store, await submit(store, f"call-{n}")) for n in range(4)]
            state = runner.breakers.breakers["whisperx#1"].state

    # The first job met the dead instance (its turn), opened its breaker, failed over.
    assert tried(jobs[0]) == [(down, "error"), (up.base_url, "ok")]
    # From then on it is not tried, not even in its turn (round robin would give it jobs 3).
    assert [tried(job) for job in jobs[1:]] == [[(up.base_url, "ok")]] * 3
    assert str(state) == "open"
    assert up.requests_received == 4
