"""`examples/telephony_mirror.py` run as a program against a running API, with the
remote flag off (local result stored through the mirror path) and on (a remote
worker's result returned): the same code both times."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import ai_service_client as sdk
from tests.conftest import ApiFactory

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "telephony_mirror.py"
TOKEN = "example-token-0123456789"


@pytest.fixture
async def base_url(api_factory: ApiFactory) -> AsyncIterator[str]:
    async with api_factory(AI_SERVICE_TOKEN=TOKEN) as http:
        yield str(http.base_url)


async def run_example(base_url: str, call_id: str, **env: str) -> tuple[dict[str, Any], str]:
    """The example's stdout (JSON) and stderr."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AI_SERVICE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        call_id,
        "please cancel my contract",
        env={**clean, "AI_SERVICE_URL": base_url, "AI_SERVICE_TOKEN": TOKEN, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return json.loads(out), err.decode()


async def test_flag_off_runs_locally_and_completes_the_job_through_the_mirror_path(
    base_url: str,
) -> None:
    result, err = await run_example(base_url, "call-7")
    assert "call_analysis for call-7: local" in err
    assert result == {"label": "churn_risk", "words": 4, "analysed_by": "local"}
    async with sdk.AsyncClient(base_url, TOKEN) as client:
        [summary] = [j async for j in client.iter_jobs()]
        job = await client.get(summary.id)
    assert (job.owner_service, job.owner_ref, job.task_type) == (
        "telephony",
        "call-7",
        "call_analysis",
    )
    assert job.status == "completed"
    assert job.result == result
    assert job.worker_id is None  # completed without a claim: the mirror path
    assert job.idempotency_key == "call_analysis:call-7"


async def test_flag_on_returns_the_remote_workers_result(base_url: str) -> None:
    async def remote(job: sdk.ClaimedJob) -> dict[str, Any]:
        return {"label": "churn_risk", "analysed_by": "remote", "model": job.model_profile}

    async with sdk.AsyncClient(base_url, TOKEN) as client:
        worker = sdk.Worker(
            ["call_analysis"], remote, 1, client=client, wait_seconds=1, worker_id="gpu-1"
        )
        serving = asyncio.create_task(worker.serve())
        try:
            result, err = await run_example(
                base_url, "call-8", AI_SERVICE_REMOTE_TASK_TYPES="call_analysis"
            )
        finally:
            worker.stop()
            await asyncio.wait_for(serving, 10)
        [summary] = [j async for j in client.iter_jobs()]
    assert "call_analysis for call-8: remote" in err
    assert result == {"label": "churn_risk", "analysed_by": "remote", "model": "qwen2.5-14b"}
    assert summary.status == "completed"
    assert summary.worker_id == "gpu-1"
