"""Worker memory while transcribing a long call submitted without a URL.

    uv run python -m bench.audio_memory [--minutes 30] [--channels split]

A stereo 8 kHz call (generated: one party per channel, `stereo_call_wav`) is
uploaded with `POST /api/v1/audio` to the real API, a transcription job names
it by `audio_id`, and `ai-service worker` (its own process) transcribes it
against a WhisperX stub on 127.0.0.1. Printed: the worker's resident memory
before the job (VmRSS) and its peak over its whole life (VmHWM, from
/proc/<pid>/status), with the target (peak < 300 MB), and the size of the job
row's input and of the job list (no audio in either). `--channels` is passed
through in the job input; with `split` (the default) the job names the
channels `channel_speakers: ["agent", "customer"]` and the bench checks that
the segments come back labelled so, in time order, taking turns as the call
does (agent first).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx
import psycopg

from bench._common import fresh_database, header, running_api, service_process
from tests.stubs import stereo_call_wav
from tests.stubs.whisperx_server import WhisperXStub

TARGET_MB = 300.0
SPEAKERS = ["agent", "customer"]


def memory_mb(pid: int, field: str) -> float:
    """`VmRSS` (now) or `VmHWM` (peak) of a process, in MB (10^6 bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


async def main(minutes: float = 30.0, channels: str | None = "split") -> bool:
    """Run the scenario and print the figures; True when the peak is under the target."""
    header(f"Audio memory: a {minutes:g}-minute stereo 8 kHz call by audio_id")
    call = stereo_call_wav(minutes * 60, rate=8000)
    print(f"call: {len(call) / 1e6:.1f} MB WAV, {minutes * 60:.0f} s")
    pids: list[int] = []
    with (
        fresh_database("audio") as url,
        WhisperXStub("wx", segment_seconds=30.0) as whisperx,
        service_process(
            "worker",
            url,
            "WORKER_HTTP_PORT",
            pids=pids,
            WHISPERX_URL=whisperx.base_url,
            WORKER_POLL_INTERVAL="0.2",
        ),
    ):
        worker = pids[0]
        async with running_api(url) as base, httpx.AsyncClient(base_url=base, timeout=300) as api:
            idle = memory_mb(worker, "VmRSS")
            started = time.perf_counter()
            uploaded = await api.post(
                "/api/v1/audio",
                params={"owner_service": "telephony"},
                content=call,
                headers={"Content-Type": "audio/wav"},
            )
            uploaded.raise_for_status()
            upload_s = time.perf_counter() - started
            audio_id = uploaded.json()["audio_id"]
            job_input: dict[str, Any] = {"audio_id": audio_id}
            if channels:
                job_input["channels"] = channels
            if channels == "split":
                job_input["channel_speakers"] = SPEAKERS
            created = await api.post(
                "/api/v1/jobs",
                json={
                    "owner_service": "telephony",
                    "owner_ref": "bench/call",
                    "task_type": "transcription",
                    "model_profile": "whisperx",
                    "input": job_input,
                },
            )
            created.raise_for_status()
            job_id = created.json()["id"]
            started = time.perf_counter()
            while True:
                job = (await api.get(f"/api/v1/jobs/{job_id}")).json()
                if job["status"] in ("completed", "failed", "cancelled"):
                    break
                if time.perf_counter() - started > 600:
                    raise RuntimeError("the job did not finish within 600 s")
                await asyncio.sleep(0.2)
            job_s = time.perf_counter() - started
            peak = memory_mb(worker, "VmHWM")
            listed = await api.get("/api/v1/jobs", params={"include": "input,result"})
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT octet_length(input::text), octet_length(result::text) FROM jobs"
                " WHERE id = %s",
                (job_id,),
            ).fetchone()
    assert row is not None
    ok = job["status"] == "completed" and peak < TARGET_MB
    print(f"upload: {upload_s:.1f} s; job {job['status']} in {job_s:.1f} s", end="")
    if job["status"] == "completed":
        result = job["result"]
        print(f" ({result['audio_duration']:.0f} s of audio, {len(result['segments'])} segments)")
        if channels == "split":
            labelled = _turns_labelled(result["segments"])
            ok = ok and labelled
            print(
                f"split segments labelled {'/'.join(SPEAKERS)} in time order, taking turns: "
                f"{'yes' if labelled else 'NO'}"
            )
    else:
        print(f": {job['error_category']}: {job['error_message']}")
    print(f"worker RSS before the job: {idle:.0f} MB")
    print(
        f"worker peak RSS (VmHWM): {peak:.0f} MB (target < {TARGET_MB:.0f} MB) "
        f"{'OK' if ok else 'MISSED'}"
    )
    print(
        f"job row: input {row[0]} bytes, result {row[1] or 0} bytes; "
        f"job list with input and result: {len(listed.content)} bytes"
    )
    return ok


def _turns_labelled(segments: list[dict[str, Any]]) -> bool:
    """Whether the segments alternate agent, customer, ... with rising start times."""
    starts = [s["start"] for s in segments]
    speakers = [s.get("speaker") for s in segments]
    expected = [SPEAKERS[n % len(SPEAKERS)] for n in range(len(segments))]
    return bool(segments) and starts == sorted(starts) and speakers == expected


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the call")
    parser.add_argument(
        "--channels", default="split", help='input.channels ("split", "mix"; "" for none)'
    )
    args = parser.parse_args()
    asyncio.run(main(args.minutes, args.channels or None))
