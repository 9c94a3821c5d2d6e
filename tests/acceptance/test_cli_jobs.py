"""`ai-service jobs ...` (`ai_service.cli_jobs`) against the real API: tables, `--json`,
exit codes (0 done, 1 API error with its message, 2 usage), and `--version`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from importlib.metadata import version

import pytest

import ai_service_client as sdk
from ai_service import cli
from tests.conftest import ApiFactory

TOKEN = f"tok-{uuid.uuid4().hex}"
JOB = {"owner_service": "telephony", "task_type": "call_analysis", "model_profile": "m"}


@pytest.fixture
async def client(
    api_factory: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[sdk.AsyncClient]:
    async with api_factory(AI_SERVICE_TOKEN=TOKEN) as http:
        monkeypatch.setenv("AI_SERVICE_URL", str(http.base_url))
        monkeypatch.setenv("AI_SERVICE_TOKEN", TOKEN)
        async with sdk.AsyncClient() as client:
            yield client


async def ai_service(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `ai-service ARGV` in a thread (the API serves on this loop): code, stdout, stderr."""
    capsys.readouterr()
    try:
        await asyncio.to_thread(cli.main, list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:
        code = 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_list_prints_a_table_and_json_lines(
    client: sdk.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        await client.create(**JOB, owner_ref=f"call-{i}", input={"i": i})
    code, out, _ = await ai_service(capsys, "jobs", "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["ID", "STATUS", "TASK", "TYPE"]
    assert [row.split()[5] for row in rows] == ["call-2", "call-1", "call-0"]
    assert all(row.split()[1] == "pending" for row in rows)

    code, out, _ = await ai_service(capsys, "jobs", "list", "--json", "--limit", "2")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [job["owner_ref"] for job in lines] == ["call-2", "call-1"]

    code, out, _ = await ai_service(
        capsys, "jobs", "list", "--json", "--all", "--owner-ref", "call-0"
    )
    assert [json.loads(line)["owner_ref"] for line in out.splitlines()] == ["call-0"]


async def test_get_cancel_retry_and_wait(
    client: sdk.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    job = await client.create(**JOB, owner_ref="call-9", input={"text": "hello"})
    code, out, _ = await ai_service(capsys, "jobs", "get", job.id)
    assert code == 0
    assert f"id               {job.id}" in out
    assert '"text": "hello"' in out

    code, out, _ = await ai_service(capsys, "jobs", "cancel", job.id, "--json")
    assert (code, json.loads(out)["status"]) == (0, "cancelled")

    # wait: a cancelled job is final, but not a success
    code, out, err = await ai_service(capsys, "jobs", "wait", job.id, "--timeout", "5")
    assert code == 1
    assert "cancelled" in err

    code, out, err = await ai_service(capsys, "jobs", "retry", job.id)
    assert code == 1  # a cancelled job cannot be retried: the API's 409, its message
    assert "409 invalid_transition" in err

    other = await client.create(**JOB, owner_ref="call-10", input={})
    [claimed] = await client.claim("w")
    await client.complete(claimed.id, {"label": "ok"}, claimed.lease_token)
    code, out, _ = await ai_service(capsys, "jobs", "wait", other.id, "--json")
    assert code == 0
    assert json.loads(out)["result"] == {"label": "ok"}


async def test_stats_table_and_json(
    client: sdk.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    await client.create(**JOB, owner_ref="a", input={})
    code, out, _ = await ai_service(capsys, "jobs", "stats")
    assert code == 0
    assert "total: 1" in out
    assert any(line.split()[:3] == ["call_analysis", "1", "0"] for line in out.splitlines())
    code, out, _ = await ai_service(capsys, "jobs", "stats", "--json")
    assert json.loads(out)["by_status"]["pending"] == 1


async def test_api_errors_exit_1_with_the_message(
    client: sdk.AsyncClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(uuid.uuid4())
    code, out, err = await ai_service(capsys, "jobs", "get", missing)
    assert (code, out) == (1, "")
    assert f"ai-service jobs get: 404 job_not_found: job {missing} not found" in err
    monkeypatch.setenv("AI_SERVICE_TOKEN", "wrong-token")
    code, _, err = await ai_service(capsys, "jobs", "stats")
    assert code == 1
    assert "401 unauthorized" in err
    assert "wrong-token" not in err


async def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await ai_service(capsys, "jobs", "list", "--status", "done")
    assert code == 2
    assert "invalid choice" in err
    code, _, _ = await ai_service(capsys, "jobs")
    assert code == 2


def test_version_comes_from_the_package_metadata() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AI_SERVICE_")}
    done = subprocess.run(
        [sys.executable, "-m", "ai_service", "--version"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"ai-service {version('ai-service')}"
