"""`api.lean`: the lean endpoints answer exactly what FastAPI's machinery answers.

The same conversation of requests (successes, domain errors, validation errors,
malformed bodies, auth refusals) runs against the real app and against the
same app built without lean endpoints; the answers must agree once the ids
and times each run creates are masked.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from ai_service.api.app import create_app
from ai_service.api.lean import LeanEndpoint
from tests.helpers import job_body, make_settings, serve

ADMIN = "adm-lean-0001"
SUBMITTER = "sub-lean-0002"
WORKER = "wrk-lean-0003"
TOKENS = f"{SUBMITTER}:submitter:telephony,{WORKER}:worker"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")

Answer = tuple[int, str | None, Any]


def masked(value: Any, run: str) -> Any:
    """`value` with every UUID, timestamp and the run's own tag replaced by a placeholder."""
    if isinstance(value, str):
        return _TIME.sub("<time>", _UUID.sub("<uuid>", value)).replace(run, "<run>")
    if isinstance(value, dict):
        return {masked(k, run): masked(v, run) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, run) for v in value]
    return value


@asynccontextmanager
async def client(
    database_url: str, monkeypatch: pytest.MonkeyPatch, *, lean: bool
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        database_url, AI_SERVICE_TOKEN=ADMIN, AI_SERVICE_TOKENS=TOKENS, RESCUE_INTERVAL="3600"
    )
    with monkeypatch.context() as patch:
        if not lean:
            patch.setattr(LeanEndpoint, "of", classmethod(lambda cls, route, app: None))
        app = create_app(settings)
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        yield http


async def conversation(http: httpx.AsyncClient, run: str) -> list[Answer]:
    """Every lean route, right and wrong; `run` keeps the two runs' jobs apart."""
    answers: list[Answer] = []
    task = f"lean-{run}"

    async def call(method: str, url: str, token: str = ADMIN, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        response = await http.request(method, url, headers=headers, **kwargs)
        body = response.json() if response.content else None
        location = response.headers.get("location")
        answers.append((response.status_code, masked(location, run), masked(body, run)))
        return body

    api = "/api/v1"
    job = job_body(task_type=task, model_profile="p", owner_ref="a", idempotency_key=f"k-{run}")
    created = await call("POST", f"{api}/jobs", json=job)
    await call("POST", f"{api}/jobs", json=job)  # the same key again: 200
    await call("POST", f"{api}/jobs", json={**job, "priority": 5})  # the key reused: 409
    await call("POST", f"{api}/jobs", SUBMITTER, json={**job, "owner_service": "crm"})  # 403
    await call("POST", f"{api}/jobs", WORKER, json=job)  # role refused: 403
    await call("POST", f"{api}/jobs", json={**job, "priority": True})  # 422
    await call("POST", f"{api}/jobs", json={**job, "extra": 1})  # 422
    await call("POST", f"{api}/jobs", content=b'{"owner_service": ', headers=_JSON)  # 400
    await call("POST", f"{api}/jobs", content=b"", headers=_JSON)  # 422: no body
    await call("POST", f"{api}/jobs", content=b"null", headers=_JSON)
    await call("POST", f"{api}/jobs", content=b"[" * 5000 + b"]" * 5000, headers=_JSON)
    await call("POST", f"{api}/jobs", content=b'{"input": "\xff"}', headers=_JSON)
    await call("POST", f"{api}/jobs?x=1", json=job)
    defaults = {"task_type": task, "model_profile": "p", "owner_service": "telephony"}
    batch = {"defaults": defaults, "jobs": [{"owner_ref": f"b{i}", "input": {}} for i in range(4)]}
    await call("POST", f"{api}/jobs/batch", json=batch)
    await call("POST", f"{api}/jobs/batch", json={"defaults": defaults, "jobs": [{}]})  # 422
    await call("GET", f"{api}/jobs/{created['id']}")
    await call("GET", f"{api}/jobs/{created['id']}", SUBMITTER)
    await call("GET", f"{api}/jobs/not-a-uuid")
    await call("GET", f"{api}/jobs/00000000-0000-7000-8000-000000000000")
    await call("GET", f"{api}/jobs/{created['id']}?include=input")
    claim = {"worker_id": f"w-{run}", "task_types": [task], "limit": 3, "lease_seconds": 60}
    claimed = (await call("POST", f"{api}/jobs/claim", WORKER, json=claim))["jobs"]
    await call("POST", f"{api}/jobs/claim", WORKER, json={**claim, "limit": 0})  # 422
    first, second, third = claimed
    await call("POST", f"{api}/jobs/{first['id']}/heartbeat", WORKER,
               json={"lease_token": first["lease_token"]})  # fmt: skip
    await call("POST", f"{api}/jobs/{first['id']}/heartbeat", WORKER,
               json={"lease_token": second["lease_token"]})  # fmt: skip
    done = {"result": {"ok": True}, "lease_token": first["lease_token"]}
    await call("POST", f"{api}/jobs/{first['id']}/complete", WORKER, json=done)
    await call("POST", f"{api}/jobs/{first['id']}/complete", WORKER, json=done)  # a repeat
    await call("POST", f"{api}/jobs/{first['id']}/complete", WORKER,
               json={**done, "result": {"ok": False}})  # fmt: skip
    await call("POST", f"{api}/jobs/{first['id']}/complete", WORKER, json={"result": "x"})
    await call("POST", f"{api}/jobs/xyz/complete", WORKER, json=done)
    await call("POST", f"{api}/jobs/00000000-0000-7000-8000-000000000000/complete", WORKER,
               json={"result": {}})  # fmt: skip
    fail = {"category": "timeout", "message": "slow", "lease_token": second["lease_token"]}
    await call("POST", f"{api}/jobs/{second['id']}/fail", WORKER, json=fail)
    await call("POST", f"{api}/jobs/{second['id']}/fail", WORKER, json={"category": "Bad Category"})
    many = {"jobs": [{"id": third["id"], "lease_token": third["lease_token"], "result": {}}]}
    await call("POST", f"{api}/jobs/complete", WORKER, json=many)
    await call("POST", f"{api}/jobs/complete", WORKER, json={"jobs": []})
    await call("POST", f"{api}/jobs/{second['id']}/retry")
    await call("POST", f"{api}/jobs/{second['id']}/cancel")
    await call("POST", f"{api}/jobs/{second['id']}/cancel")  # already cancelled: 409
    await call("POST", f"{api}/jobs/retry", json={"task_type": task, "status": ["failed"]})
    await call("POST", f"{api}/jobs/cancel", json={"task_type": task})
    await call("POST", f"{api}/jobs/cancel", json={})  # an empty filter: 422
    await call("POST", f"{api}/jobs/cancel", SUBMITTER, json={"all": True})  # 403
    await call("HEAD", f"{api}/jobs/{created['id']}")
    await call("POST", f"{api}/jobs/{created['id']}/complete", "wrong", json=done)  # 401
    return answers


_JSON = {"Content-Type": "application/json"}


async def test_lean_endpoints_answer_like_fastapi(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: dict[bool, list[Answer]] = {}
    for lean in (False, True):
        async with client(database_url, monkeypatch, lean=lean) as http:
            runs[lean] = await conversation(http, "runlean" if lean else "runfastapi")
    statuses = [status for status, _, _ in runs[True]]
    assert {200, 201, 400, 401, 403, 404, 409, 422} <= set(statuses)
    for number, (fastapi, lean) in enumerate(zip(runs[False], runs[True], strict=True)):
        assert lean == fastapi, number
