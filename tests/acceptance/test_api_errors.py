"""Acceptance tests of bad input over HTTP: the answer is a 4xx in the error envelope,
it names the offending field, and the database does not change.

Each test sends a table of bad requests to one real API and reports every case
that misbehaved at once (one API start per table keeps the file fast).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from fastapi.routing import iter_route_contexts

from ai_service.api.app import create_app
from tests.conftest import ApiFactory
from tests.helpers import job_body, make_settings
from tests.processes import ServiceGroup

API = "/api/v1"
JSON = {"content-type": "application/json"}
_UNSET: Any = object()


@dataclass(frozen=True)
class Case:
    """One bad request and what must come back.

    `path` may name the seeded jobs: {pending}, {running}, {completed}, {missing}.
    `status=None` accepts any 4xx; `field` must be named by the error.
    """

    label: str
    method: str
    path: str
    json: Any = _UNSET
    content: bytes | None = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = 422
    field: str | None = None
    error: str | None = None


@dataclass
class Seeded:
    """Jobs in known states that bad requests must leave alone."""

    pending: dict[str, Any]
    running: dict[str, Any]
    completed: dict[str, Any]

    def path(self, template: str) -> str:
        return template.format(
            pending=self.pending["id"],
            running=self.running["id"],
            completed=self.completed["id"],
            missing=uuid.uuid4(),
        )


async def seed(client: httpx.AsyncClient) -> Seeded:
    """One pending, one running and one completed job."""
    for ref, priority in (("done", 20), ("running", 10), ("pending", 0)):
        response = await client.post(f"{API}/jobs", json=job_body(owner_ref=ref, priority=priority))
        assert response.status_code == 201, response.text
    done = (await client.post(f"{API}/jobs/claim", json={"worker_id": "w"})).json()["jobs"][0]
    finished = await client.post(
        f"{API}/jobs/{done['id']}/complete",
        json={"result": {"ok": True}, "lease_token": done["lease_token"]},
    )
    assert finished.status_code == 200
    running = (await client.post(f"{API}/jobs/claim", json={"worker_id": "w"})).json()["jobs"][0]
    listed = (await client.get(f"{API}/jobs", params={"status": "pending"})).json()["jobs"]
    return Seeded(pending=listed[0], running=running, completed=finished.json())


async def snapshot(client: httpx.AsyncClient) -> tuple[Any, ...]:
    """Everything a bad request must not change: counts and every job's full state."""
    stats = await client.get(f"{API}/stats")
    listed = await client.get(
        f"{API}/jobs", params={"limit": 500, "include": "input,result,errors,error_details"}
    )
    if stats.status_code != 200 or listed.status_code != 200:
        # A stored job that cannot be read back breaks the list: that is a change too.
        return ("unreadable", stats.status_code, listed.status_code, listed.text[:200])
    body = stats.json()
    return body["total"], body["by_status"], listed.json()["jobs"]


def envelope_problems(response: httpx.Response) -> list[str]:
    """What is wrong with an error response's shape (empty when it is right)."""
    problems = []
    if not response.headers.get("content-type", "").startswith("application/json"):
        problems.append(f"content-type {response.headers.get('content-type')!r}")
        return problems
    try:
        body = response.json()
    except ValueError:
        return [f"body is not JSON: {response.text[:200]!r}"]
    if not isinstance(body, dict) or set(body) != {"error", "message", "details"}:
        return [f"not the envelope: {body!r}"[:300]]
    if not isinstance(body["error"], str) or not body["error"]:
        problems.append(f"error code {body['error']!r}")
    if not isinstance(body["message"], str) or not body["message"]:
        problems.append(f"message {body['message']!r}")
    if not isinstance(body["details"], dict):
        problems.append(f"details {body['details']!r}")
    return problems


def named_fields(body: dict[str, Any]) -> list[str]:
    """The fields an error envelope names (in `details.field` or `details.errors`)."""
    details = body.get("details") or {}
    names = [details["field"]] if isinstance(details.get("field"), str) else []
    for entry in details.get("errors") or []:
        if isinstance(entry, dict) and isinstance(entry.get("field"), str):
            names.append(entry["field"])
    return names


def names_field(body: dict[str, Any], expected: str) -> bool:
    """True when the envelope names `expected` (or an element of it, `status[0]`)."""
    return any(
        name == expected or name.startswith((f"{expected}[", f"{expected}."))
        for name in named_fields(body)
    ) and expected in str(body.get("message", ""))


async def send(client: httpx.AsyncClient, case: Case, path: str) -> httpx.Response:
    kwargs: dict[str, Any] = {"params": case.params, "headers": case.headers}
    if case.json is not _UNSET:
        kwargs["json"] = case.json
    elif case.content is not None:
        kwargs["content"] = case.content
        kwargs["headers"] = {**JSON, **case.headers}
    return await client.request(case.method, path, **kwargs)


async def run_cases(client: httpx.AsyncClient, cases: list[Case]) -> None:
    """Send every case; fail once at the end listing each case that misbehaved."""
    seeded = await seed(client)
    problems: list[str] = []
    for case in cases:
        before = await snapshot(client)
        response = await send(client, case, seeded.path(case.path))
        found: list[str] = []
        if case.status is None:
            if not 400 <= response.status_code < 500:
                found.append(f"status {response.status_code}, want 4xx")
        elif response.status_code != case.status:
            found.append(f"status {response.status_code}, want {case.status}")
        if response.status_code >= 400:
            found.extend(envelope_problems(response))
        if not found and case.field is not None and not names_field(response.json(), case.field):
            found.append(f"does not name field {case.field!r}")
        if not found and case.error is not None and response.json()["error"] != case.error:
            found.append(f"error code {response.json()['error']!r}, want {case.error!r}")
        if await snapshot(client) != before:
            found.append("the database changed")
        if found:
            problems.append(f"{case.label}: {'; '.join(found)} -- {response.text[:300]}")
    assert not problems, f"{len(problems)} of {len(cases)} cases misbehaved:\n" + "\n".join(
        problems
    )


def without(name: str) -> dict[str, Any]:
    body = job_body()
    del body[name]
    return body


STRING_FIELDS = ("owner_service", "owner_ref", "task_type", "model_profile")
MAX_LENGTHS = {
    "owner_service": 100,
    "owner_ref": 500,
    "task_type": 100,
    "model_profile": 100,
    "idempotency_key": 255,
}


def create_cases() -> list[Case]:
    post = "/api/v1/jobs"
    cases: list[Case] = []
    for name in (*STRING_FIELDS, "input"):
        cases.append(Case(f"missing {name}", "POST", post, json=without(name), field=name))
    for name in (*STRING_FIELDS, "idempotency_key"):
        for blank in ("", " ", "   ", "\t\n"):
            cases.append(
                Case(f"{name}={blank!r}", "POST", post, json=job_body(**{name: blank}), field=name)
            )
        too_long = "x" * (MAX_LENGTHS[name] + 1)
        cases.append(
            Case(f"{name} too long", "POST", post, json=job_body(**{name: too_long}), field=name)
        )
    wrong_types: list[tuple[str, Any]] = [
        ("owner_service", 123),
        ("owner_ref", None),
        ("task_type", ["llm_chat"]),
        ("model_profile", {"name": "x"}),
        ("input", "text"),
        ("input", [1, 2]),
        ("input", 5),
        ("input", None),
        ("input", True),
        ("priority", "high"),
        ("priority", 1.5),
        ("priority", None),
        ("priority", 1001),
        ("priority", -1001),
        ("priority", 10**30),
        ("max_attempts", 0),
        ("max_attempts", 101),
        ("max_attempts", "three"),
        ("max_attempts", 10**20),
        ("run_after", "tomorrow"),
        ("run_after", "2030-01-01T00:00:00"),  # no timezone: ambiguous
        ("run_after", {"at": 1}),
        ("idempotency_key", 42),
    ]
    for name, value in wrong_types:
        cases.append(
            Case(f"{name}={value!r}", "POST", post, json=job_body(**{name: value}), field=name)
        )
    for extra, value in (
        ("colour", "red"),
        ("status", "completed"),
        ("id", str(uuid.uuid4())),
        ("attempt", 2),
        ("result", {}),
        ("lease_token", str(uuid.uuid4())),
    ):
        cases.append(
            Case(
                f"unknown field {extra}", "POST", post, json=job_body(**{extra: value}), field=extra
            )
        )
    return cases


async def test_create_rejects_missing_blank_long_mistyped_and_unknown_fields(
    api: httpx.AsyncClient,
) -> None:
    await run_cases(api, create_cases())


async def test_create_rejects_bodies_that_are_not_a_json_object(api: httpx.AsyncClient) -> None:
    post = "/api/v1/jobs"
    valid = json.dumps(job_body()).encode()
    cases = [
        Case("array body", "POST", post, json=[job_body()]),
        Case("string body", "POST", post, json="job"),
        Case("number body", "POST", post, json=1),
        Case("null body", "POST", post, content=b"null"),
        Case("empty object", "POST", post, json={}, field="owner_service"),
        Case("no body", "POST", post),
        Case("malformed JSON", "POST", post, content=b"{bad", status=400, error="malformed_json"),
        Case("truncated JSON", "POST", post, content=valid[:-5], status=400),
        Case("trailing garbage", "POST", post, content=valid + b" x", status=400),
        Case("single quotes", "POST", post, content=valid.replace(b'"', b"'"), status=400),
        Case("invalid UTF-8", "POST", post, content=b'{"owner_service": "\xff\xfe"}', status=400),
        Case(
            "JSON sent as text/plain",
            "POST",
            post,
            content=valid,
            headers={"content-type": "text/plain"},
            status=415,
            error="unsupported_media_type",
        ),
    ]
    await run_cases(api, cases)


async def test_bodies_not_declared_as_json_are_415(api: httpx.AsyncClient) -> None:
    valid = json.dumps(job_body()).encode()
    cases = [
        Case(
            f"Content-Type {content_type}",
            "POST",
            path,
            content=valid,
            headers={"content-type": content_type},
            status=415,
            error="unsupported_media_type",
        )
        for content_type in (
            "text/plain",
            "application/x-www-form-urlencoded",  # what `curl -d` sends
            "multipart/form-data; boundary=x",
            "application/xml",
            "application/jsonp",
            "json",
        )
        for path in ("/api/v1/jobs", "/api/v1/jobs/batch", "/api/v1/jobs/claim")
    ]
    await run_cases(api, cases)
    # No Content-Type at all.
    before = await snapshot(api)
    response = await api.post("/api/v1/jobs", content=valid)
    assert "content-type" not in response.request.headers
    assert response.status_code == 415, response.text
    assert not envelope_problems(response)
    assert response.json()["error"] == "unsupported_media_type"
    assert "application/json" in response.json()["message"]
    assert await snapshot(api) == before
    # JSON media types with parameters or a +json suffix are JSON.
    for content_type in (
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/problem+json",
    ):
        body = json.dumps(job_body(owner_ref=content_type)).encode()
        ok = await api.post("/api/v1/jobs", content=body, headers={"content-type": content_type})
        assert ok.status_code == 201, (content_type, ok.text)
    # A POST without a body needs no Content-Type.
    assert (await api.post("/api/v1/jobs")).status_code == 422


async def test_unparseable_json_is_malformed_json_400(api: httpx.AsyncClient) -> None:
    post = "/api/v1/jobs"
    valid = json.dumps(job_body()).encode()
    cases = [
        Case("nesting too deep", "POST", post, content=b"[" * 100_000 + b"]" * 100_000),
        Case(
            "nesting too deep inside input",
            "POST",
            post,
            content=valid.replace(
                b'{"user"', b'{"deep": ' + b"[" * 50_000 + b"]" * 50_000 + b', "user"'
            ),
        ),
        Case(
            "integer too long to convert",
            "POST",
            post,
            content=b'{"owner_service": 1' + b"0" * 5000 + b"}",
        ),
        Case(
            "integer too long in input",
            "POST",
            post,
            content=valid.replace(b'{"user"', b'{"n": 1' + b"0" * 5000 + b', "user"'),
        ),
        Case("invalid UTF-8", "POST", post, content=b'{"owner_service": "\xff\xfe"}'),
        Case(
            "invalid UTF-8 in input", "POST", post, content=valid.replace(b"Classify", b"\xc3\x28")
        ),
        Case(
            "gzip Content-Encoding",
            "POST",
            post,
            content=gzip.compress(valid),
            headers={"content-encoding": "gzip"},
        ),
        Case(
            "deflate Content-Encoding on a plain body",
            "POST",
            post,
            content=valid,
            headers={"content-encoding": "deflate"},
        ),
        Case(
            "gzip Content-Encoding on a batch",
            "POST",
            "/api/v1/jobs/batch",
            content=gzip.compress(json.dumps({"jobs": [job_body()]}).encode()),
            headers={"content-encoding": "gzip"},
        ),
    ]
    cases = [
        Case(
            c.label,
            c.method,
            c.path,
            content=c.content,
            headers=c.headers,
            status=400,
            error="malformed_json",
        )
        for c in cases
    ]
    await run_cases(api, cases)
    # The parser's own words (which may quote the body) are never echoed.
    response = await api.post(post, content=b"[" * 100_000, headers=JSON)
    assert response.json()["message"] == "the request body is not valid JSON"


async def test_nul_characters_anywhere_are_4xx_never_500(api: httpx.AsyncClient) -> None:
    post = "/api/v1/jobs"
    cases = [
        Case(f"NUL in {name}", "POST", post, json=job_body(**{name: "a\x00b"}), field=name)
        for name in (*STRING_FIELDS, "idempotency_key")
    ]
    cases += [
        Case(
            "NUL in an input value",
            "POST",
            post,
            json=job_body(input={"t": "a\x00b"}),
            field="input",
        ),
        Case("NUL in an input key", "POST", post, json=job_body(input={"a\x00": 1}), field="input"),
        Case(
            "NUL deep in input",
            "POST",
            post,
            json=job_body(input={"m": [{"role": "user", "content": ["x", "\x00"]}]}),
            field="input",
        ),
        Case(
            "NUL in a batch item's input",
            "POST",
            "/api/v1/jobs/batch",
            json={"jobs": [job_body(), job_body(input={"t": "\x00"})]},
            field="jobs[1].input",
        ),
        Case(
            "NUL in a list filter",
            "GET",
            "/api/v1/jobs",
            params={"owner_service": "a\x00"},
            field="owner_service",
        ),
        Case("NUL in the cursor", "GET", "/api/v1/jobs", params={"cursor": "\x00"}, field="cursor"),
        Case(
            "NUL in worker_id",
            "POST",
            "/api/v1/jobs/claim",
            json={"worker_id": "w\x00"},
            field="worker_id",
        ),
        Case(
            "NUL in claim task_types",
            "POST",
            "/api/v1/jobs/claim",
            json={"worker_id": "w", "task_types": ["\x00"]},
            field="task_types",
        ),
        Case(
            "NUL in a result",
            "POST",
            "/api/v1/jobs/{pending}/complete",
            json={"result": {"text": "a\x00b"}},
            field="result",
        ),
        Case(
            "NUL in a fail message",
            "POST",
            "/api/v1/jobs/{pending}/fail",
            json={"category": "internal", "message": "a\x00b"},
            field="message",
        ),
        Case(
            "NUL in fail details",
            "POST",
            "/api/v1/jobs/{pending}/fail",
            json={"category": "internal", "message": "m", "details": {"x": "\x00"}},
            field="details",
        ),
        Case(
            "NUL in a bulk filter",
            "POST",
            "/api/v1/jobs/cancel",
            json={"owner_ref": "a\x00"},
            field="owner_ref",
        ),
        Case(
            "escaped NUL in raw JSON input",
            "POST",
            post,
            content=json.dumps(job_body(input={"t": "x"})).replace('"x"', '"\\u0000"').encode(),
            field="input",
        ),
    ]
    await run_cases(api, cases)


async def test_unpaired_surrogates_in_strings_are_4xx_never_500(api: httpx.AsyncClient) -> None:
    # JSON may spell a lone UTF-16 surrogate (\ud800); PostgreSQL's jsonb refuses it.
    def raw(**overrides: Any) -> bytes:
        return json.dumps(job_body(**overrides)).replace("SURROGATE", "\\ud800").encode()

    post = "/api/v1/jobs"
    cases = [
        Case("lone surrogate in owner_ref", "POST", post, content=raw(owner_ref="SURROGATE")),
        Case(
            "lone surrogate in input",
            "POST",
            post,
            content=raw(input={"t": "SURROGATE"}),
            status=None,
            field="input",
        ),
        Case(
            "lone surrogate in a result",
            "POST",
            "/api/v1/jobs/{pending}/complete",
            content=b'{"result": {"t": "\\ud800"}}',
            status=None,
            field="result",
        ),
    ]
    await run_cases(api, cases)


async def test_non_finite_numbers_in_json_are_refused(api: httpx.AsyncClient) -> None:
    # NaN and Infinity are not JSON (RFC 8259); 1e400 overflows a double. Storing them
    # as null would silently change the caller's data.
    def raw(token: str) -> bytes:
        return json.dumps(job_body(input={"x": 1.5})).replace("1.5", token).encode()

    post = "/api/v1/jobs"
    cases = [
        Case(f"{token} in input", "POST", post, content=raw(token), status=None)
        for token in ("NaN", "Infinity", "-Infinity", "1e400")
    ]
    cases.append(
        Case(
            "NaN in a result",
            "POST",
            "/api/v1/jobs/{pending}/complete",
            content=b'{"result": {"score": NaN}}',
            status=None,
        )
    )
    await run_cases(api, cases)


async def test_huge_integers_in_input_are_stored_exactly(api: httpx.AsyncClient) -> None:
    # jsonb keeps arbitrary-precision numbers; the API must not round them to doubles.
    values = {"u64_plus_one": 2**64 + 1, "minus_2_70": -(2**70), "i64_max": 2**63 - 1}
    response = await api.post(f"{API}/jobs", json=job_body(input=values))
    assert response.status_code == 201, response.text
    assert response.json()["input"] == values
    job_id = response.json()["id"]
    got = await api.get(f"{API}/jobs/{job_id}")
    assert got.json()["input"] == values
    # The exact digits are on the wire, not a float spelling.
    assert str(2**64 + 1) in got.text
    [claimed] = (await api.post(f"{API}/jobs/claim", json={"worker_id": "w"})).json()["jobs"]
    assert claimed["input"] == values
    done = await api.post(
        f"{API}/jobs/{job_id}/complete",
        json={"result": {"n": 10**30}, "lease_token": claimed["lease_token"]},
    )
    assert done.status_code == 200
    got = await api.get(f"{API}/jobs/{job_id}")
    assert got.json()["result"] == {"n": 10**30}
    assert str(10**30) in got.text


async def test_deeply_nested_input_never_breaks_create_get_list_or_claim(
    api: httpx.AsyncClient,
) -> None:
    # Either refuse the job (4xx, nothing stored) or serve it back intact everywhere.
    # A job that can be stored but not rendered would break every list and claim.
    nested: dict[str, Any] = {"leaf": True}
    for _ in range(300):
        nested = {"a": nested}
    before = await snapshot(api)
    response = await api.post(f"{API}/jobs", json=job_body(input=nested))
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert not envelope_problems(response)
        assert await snapshot(api) == before
        return
    job_id = response.json()["id"]
    assert (await api.get(f"{API}/jobs/{job_id}")).json()["input"] == nested
    listed = await api.get(f"{API}/jobs")
    assert listed.status_code == 200, listed.text
    claimed = await api.post(f"{API}/jobs/claim", json={"worker_id": "w"})
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["jobs"][0]["input"] == nested


async def test_run_after_outside_the_readable_range_is_refused(
    api: httpx.AsyncClient, database_url: str
) -> None:
    # PostgreSQL stores these instants (years 10000 and 1 BC in UTC) but the service
    # cannot read them back: storing one would break every list (and claim) after it.
    problems: list[str] = []
    for value in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
        before = await snapshot(api)
        response = await api.post(f"{API}/jobs", json=job_body(run_after=value))
        claim = await api.post(f"{API}/jobs/claim", json={"worker_id": "w", "limit": 10})
        changed = await snapshot(api) != before
        found = []
        if not 400 <= response.status_code < 500:
            found.append(f"status {response.status_code}, want 4xx")
        elif envelope_problems(response) or not names_field(response.json(), "run_after"):
            found.append(f"bad error: {response.text[:200]}")
        if changed:
            found.append("the database changed (the list no longer loads)")
        if claim.status_code != 200:
            found.append(f"claim answers {claim.status_code} afterwards")
        if found:
            problems.append(f"run_after={value}: {'; '.join(found)}")
        # Start the next value from a clean table.
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute("DELETE FROM jobs")
    assert not problems, "\n".join(problems)


async def test_batch_of_1001_or_no_items_is_refused(api: httpx.AsyncClient) -> None:
    batch = "/api/v1/jobs/batch"
    items = [job_body(owner_ref=f"r/{i}") for i in range(1001)]
    cases = [
        Case("1001 items", "POST", batch, json={"jobs": items}, field="jobs"),
        Case("0 items", "POST", batch, json={"jobs": []}, field="jobs"),
        Case("jobs missing", "POST", batch, json={"defaults": job_body()}, field="jobs"),
        Case("jobs not a list", "POST", batch, json={"jobs": job_body()}, field="jobs"),
        Case(
            "defaults not an object",
            "POST",
            batch,
            json={"defaults": "x", "jobs": [{}]},
            field="defaults",
        ),
        Case(
            "unknown top-level field",
            "POST",
            batch,
            json={"jobs": [job_body()], "colour": 1},
            field="colour",
        ),
    ]
    await run_cases(api, cases)


async def test_one_invalid_batch_item_names_it_and_inserts_nothing(
    api: httpx.AsyncClient,
) -> None:
    batch = "/api/v1/jobs/batch"
    defaults = {k: v for k, v in job_body().items() if k != "owner_ref"}

    def items(bad: Any) -> list[Any]:
        out: list[Any] = [{"owner_ref": f"r/{i}"} for i in range(6)]
        out[3] = bad
        return out

    cases = [
        Case(
            "jobs[3].owner_ref too long",
            "POST",
            batch,
            json={"defaults": defaults, "jobs": items({"owner_ref": "x" * 501})},
            field="jobs[3].owner_ref",
        ),
        Case(
            "jobs[3].owner_ref missing",
            "POST",
            batch,
            json={"defaults": defaults, "jobs": items({})},
            field="jobs[3].owner_ref",
        ),
        Case(
            "jobs[3].owner_ref blank",
            "POST",
            batch,
            json={"defaults": defaults, "jobs": items({"owner_ref": "  "})},
            field="jobs[3].owner_ref",
        ),
        Case(
            "jobs[3].owner_ref NUL",
            "POST",
            batch,
            json={"defaults": defaults, "jobs": items({"owner_ref": "a\x00"})},
            field="jobs[3].owner_ref",
        ),
        Case(
            "jobs[3].priority out of range",
            "POST",
            batch,
            json={"defaults": defaults, "jobs": items({"owner_ref": "x", "priority": 5000})},
            field="jobs[3].priority",
        ),
        Case(
            "jobs[3].input not an object",
            "POST",
            batch,
            json={"defaults": defaults, "jobs": items({"owner_ref": "x", "input": [1]})},
            field="jobs[3].input",
        ),
        Case(
            "jobs[3] unknown field",
            "POST",
            batch,
            json={"defaults": defaults, "jobs": items({"owner_ref": "x", "colour": 1})},
            field="jobs[3].colour",
        ),
        Case(
            "jobs[3] not an object",
            "POST",
            batch,
            json={"defaults": defaults, "jobs": items("x")},
            field="jobs[3]",
        ),
        Case(
            "jobs[3] input with NUL",
            "POST",
            batch,
            json={"defaults": defaults, "jobs": items({"owner_ref": "x", "input": {"t": "\x00"}})},
            status=None,
        ),
        Case(
            "defaults with an unknown field",
            "POST",
            batch,
            json={"defaults": {**defaults, "colour": 1}, "jobs": items({"owner_ref": "x"})},
            field="defaults.colour",
        ),
        Case(
            "defaults.task_type blank and not overridden",
            "POST",
            batch,
            json={"defaults": {**defaults, "task_type": " "}, "jobs": items({"owner_ref": "x"})},
            field="defaults.task_type",
        ),
    ]
    await run_cases(api, cases)


async def test_claim_rejects_bad_requests(api: httpx.AsyncClient) -> None:
    claim = "/api/v1/jobs/claim"

    def body(**fields: Any) -> dict[str, Any]:
        return {"worker_id": "w-1", **fields}

    cases = [
        Case("limit 0", "POST", claim, json=body(limit=0), field="limit"),
        Case("limit 101", "POST", claim, json=body(limit=101), field="limit"),
        Case("limit -1", "POST", claim, json=body(limit=-1), field="limit"),
        Case("limit text", "POST", claim, json=body(limit="five"), field="limit"),
        Case("limit huge", "POST", claim, json=body(limit=10**30), field="limit"),
        Case("wait_seconds 31", "POST", claim, json=body(wait_seconds=31), field="wait_seconds"),
        Case(
            "wait_seconds 30.5", "POST", claim, json=body(wait_seconds=30.5), field="wait_seconds"
        ),
        Case("wait_seconds -1", "POST", claim, json=body(wait_seconds=-1), field="wait_seconds"),
        Case(
            "wait_seconds text", "POST", claim, json=body(wait_seconds="long"), field="wait_seconds"
        ),
        Case("worker_id missing", "POST", claim, json={"limit": 1}, field="worker_id"),
        Case("worker_id empty", "POST", claim, json=body(worker_id=""), field="worker_id"),
        Case("worker_id blank", "POST", claim, json=body(worker_id="  "), field="worker_id"),
        Case(
            "worker_id too long", "POST", claim, json=body(worker_id="w" * 201), field="worker_id"
        ),
        Case("worker_id number", "POST", claim, json=body(worker_id=5), field="worker_id"),
        Case(
            "task_types a string",
            "POST",
            claim,
            json=body(task_types="llm_chat"),
            field="task_types",
        ),
        Case(
            "task_types with blank", "POST", claim, json=body(task_types=[""]), field="task_types"
        ),
        Case(
            "model_profiles with null",
            "POST",
            claim,
            json=body(model_profiles=[None]),
            field="model_profiles",
        ),
        Case(
            "task_types 101 entries",
            "POST",
            claim,
            json=body(task_types=[f"t{i}" for i in range(101)]),
            field="task_types",
        ),
        Case("lease_seconds 0", "POST", claim, json=body(lease_seconds=0), field="lease_seconds"),
        Case(
            "lease_seconds over a day",
            "POST",
            claim,
            json=body(lease_seconds=86401),
            field="lease_seconds",
        ),
        Case("unknown field", "POST", claim, json=body(colour="red"), field="colour"),
        Case("misspelt field", "POST", claim, json=body(task_type="llm_chat"), field="task_type"),
    ]
    await run_cases(api, cases)


async def test_list_rejects_bad_query_parameters(api: httpx.AsyncClient) -> None:
    jobs = "/api/v1/jobs"

    def cursor_of(raw: str) -> str:
        import base64

        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    cases = [
        Case("limit 0", "GET", jobs, params={"limit": 0}, field="limit"),
        Case("limit 501", "GET", jobs, params={"limit": 501}, field="limit"),
        Case("limit -1", "GET", jobs, params={"limit": -1}, field="limit"),
        Case("limit text", "GET", jobs, params={"limit": "ten"}, field="limit"),
        Case("limit huge", "GET", jobs, params={"limit": str(10**30)}, field="limit"),
        Case("unknown status", "GET", jobs, params={"status": "bogus"}, field="status"),
        Case(
            "unknown status among good",
            "GET",
            jobs,
            params={"status": ["pending", "done"]},
            field="status",
        ),
        Case("empty status", "GET", jobs, params={"status": ""}, field="status"),
        Case(
            "created_after not a time",
            "GET",
            jobs,
            params={"created_after": "yesterday"},
            field="created_after",
        ),
        Case(
            "created_after without timezone",
            "GET",
            jobs,
            params={"created_after": "2024-01-01T00:00:00"},
            field="created_after",
        ),
        Case(
            "created_before not a time",
            "GET",
            jobs,
            params={"created_before": "soon"},
            field="created_before",
        ),
        Case("cursor garbage", "GET", jobs, params={"cursor": "not a cursor!"}, field="cursor"),
        Case(
            "cursor base64 of junk",
            "GET",
            jobs,
            params={"cursor": cursor_of("123")},
            field="cursor",
        ),
        Case(
            "cursor with naive time",
            "GET",
            jobs,
            params={"cursor": cursor_of(f"2024-01-01T00:00:00|{uuid.uuid4()}")},
            field="cursor",
        ),
        Case(
            "cursor with bad id",
            "GET",
            jobs,
            params={"cursor": cursor_of("2024-01-01T00:00:00+00:00|nope")},
            field="cursor",
        ),
        Case("cursor too long", "GET", jobs, params={"cursor": "A" * 201}, field="cursor"),
        Case(
            "owner_service too long",
            "GET",
            jobs,
            params={"owner_service": "x" * 101},
            field="owner_service",
        ),
        Case("owner_ref too long", "GET", jobs, params={"owner_ref": "x" * 501}, field="owner_ref"),
        Case("empty task_type", "GET", jobs, params={"task_type": ""}, field="task_type"),
    ]
    await run_cases(api, cases)


async def test_list_rejects_unknown_query_parameters(api: httpx.AsyncClient) -> None:
    # A misspelt filter must not silently list every job.
    cases = [
        Case(
            "misspelt status",
            "GET",
            "/api/v1/jobs",
            params={"statuses": "failed"},
            field="statuses",
        ),
        Case("misspelt owner", "GET", "/api/v1/jobs", params={"owner": "telephony"}, field="owner"),
    ]
    await run_cases(api, cases)


async def test_transitions_reject_bad_ids_and_bodies(api: httpx.AsyncClient) -> None:
    complete = "/api/v1/jobs/{running}/complete"
    fail = "/api/v1/jobs/{running}/fail"
    beat = "/api/v1/jobs/{running}/heartbeat"

    def fail_body(**fields: Any) -> dict[str, Any]:
        return {"category": "internal", "message": "boom", **fields}

    cases = [
        Case("GET a job by a non-UUID", "GET", "/api/v1/jobs/not-a-uuid", field="job_id"),
        Case("GET a job by a number", "GET", "/api/v1/jobs/123", field="job_id"),
        Case(
            "complete a non-UUID",
            "POST",
            "/api/v1/jobs/123/complete",
            json={"result": {}},
            field="job_id",
        ),
        Case("fail a non-UUID", "POST", "/api/v1/jobs/xyz/fail", json=fail_body(), field="job_id"),
        Case(
            "heartbeat a non-UUID",
            "POST",
            "/api/v1/jobs/x/heartbeat",
            json={"lease_token": str(uuid.uuid4())},
            field="job_id",
        ),
        Case("retry a non-UUID", "POST", "/api/v1/jobs/{pending}x/retry", field="job_id"),
        Case("cancel a non-UUID", "POST", "/api/v1/jobs/zz/cancel", field="job_id"),
        Case("complete without result", "POST", complete, json={}, field="result"),
        Case("complete with a list result", "POST", complete, json={"result": [1]}, field="result"),
        Case(
            "complete with a string result", "POST", complete, json={"result": "ok"}, field="result"
        ),
        Case(
            "complete with a null result", "POST", complete, json={"result": None}, field="result"
        ),
        Case(
            "complete with a bad lease token",
            "POST",
            complete,
            json={"result": {}, "lease_token": "abc"},
            field="lease_token",
        ),
        Case(
            "complete with an unknown field",
            "POST",
            complete,
            json={"result": {}, "status": "x"},
            field="status",
        ),
        Case("fail without category", "POST", fail, json={"message": "m"}, field="category"),
        Case(
            "fail with empty category", "POST", fail, json=fail_body(category=""), field="category"
        ),
        Case(
            "fail with a spaced category",
            "POST",
            fail,
            json=fail_body(category="Bad Category"),
            field="category",
        ),
        Case(
            "fail with a long category",
            "POST",
            fail,
            json=fail_body(category="x" * 101),
            field="category",
        ),
        Case(
            "fail with a numeric category",
            "POST",
            fail,
            json=fail_body(category=5),
            field="category",
        ),
        Case("fail without message", "POST", fail, json={"category": "internal"}, field="message"),
        Case(
            "fail with a null message", "POST", fail, json=fail_body(message=None), field="message"
        ),
        Case(
            "fail with a huge message",
            "POST",
            fail,
            json=fail_body(message="m" * 10_001),
            field="message",
        ),
        Case("fail with list details", "POST", fail, json=fail_body(details=[1]), field="details"),
        Case(
            "fail with text retryable",
            "POST",
            fail,
            json=fail_body(retryable="maybe"),
            field="retryable",
        ),
        Case(
            "fail with a bad lease token",
            "POST",
            fail,
            json=fail_body(lease_token="abc"),
            field="lease_token",
        ),
        Case(
            "fail with an unknown field", "POST", fail, json=fail_body(attempt=9), field="attempt"
        ),
        Case("heartbeat without token", "POST", beat, json={}, field="lease_token"),
        Case(
            "heartbeat with a bad token",
            "POST",
            beat,
            json={"lease_token": "abc"},
            field="lease_token",
        ),
        Case(
            "heartbeat extend 0",
            "POST",
            beat,
            json={"lease_token": str(uuid.uuid4()), "extend_seconds": 0},
            field="extend_seconds",
        ),
        Case(
            "heartbeat extend over a day",
            "POST",
            beat,
            json={"lease_token": str(uuid.uuid4()), "extend_seconds": 86401},
            field="extend_seconds",
        ),
        Case(
            "heartbeat unknown field",
            "POST",
            beat,
            json={"lease_token": str(uuid.uuid4()), "x": 1},
            field="x",
        ),
    ]
    await run_cases(api, cases)


async def test_bulk_retry_and_cancel_reject_bad_filters(api: httpx.AsyncClient) -> None:
    cases: list[Case] = []
    for action in ("retry", "cancel"):
        path = f"/api/v1/jobs/{action}"
        cases += [
            Case(f"{action}: empty filter", "POST", path, json={}, field="all"),
            Case(f"{action}: all false", "POST", path, json={"all": False}, field="all"),
            Case(f"{action}: empty status list", "POST", path, json={"status": []}, field="all"),
            Case(
                f"{action}: unknown status",
                "POST",
                path,
                json={"status": ["bogus"]},
                field="status",
            ),
            Case(f"{action}: status not a list", "POST", path, json={"status": 5}, field="status"),
            Case(
                f"{action}: blank owner_service",
                "POST",
                path,
                json={"owner_service": " "},
                field="owner_service",
            ),
            Case(
                f"{action}: naive created_after",
                "POST",
                path,
                json={"created_after": "2024-01-01T00:00:00"},
                field="created_after",
            ),
            Case(
                f"{action}: unknown field", "POST", path, json={"owner": "telephony"}, field="owner"
            ),
            Case(f"{action}: all not a boolean", "POST", path, json={"all": "nope"}, field="all"),
            Case(f"{action}: body not an object", "POST", path, json=["telephony"]),
        ]
    await run_cases(api, cases)


async def test_head_answers_like_get_without_a_body_on_every_get_route(
    api: httpx.AsyncClient,
) -> None:
    # Every GET route of the app, enumerated, so that a new one cannot be forgotten.
    app = create_app(make_settings("postgresql://127.0.0.1:1/unused"))
    paths = sorted(
        str(route.path)
        # FastAPI keeps included routers nested: this walks into them.
        for route in iter_route_contexts(app.routes)
        if "GET" in (getattr(route, "methods", None) or set())
    )
    assert {"/healthz", "/readyz", "/metrics", "/api/v1/jobs", "/api/v1/jobs/{job_id}"} <= set(
        paths
    )
    job = (await api.post("/api/v1/jobs", json=job_body())).json()
    audio = await api.post(
        "/api/v1/audio?owner_service=telephony",
        content=b"RIFF-not-really-audio",
        headers={"Content-Type": "audio/wav"},
    )
    values = {"job_id": job["id"], "audio_id": audio.json()["audio_id"]}
    problems: list[str] = []
    for template in paths:
        names = re.findall(r"\{(\w+)\}", template)
        assert set(names) <= set(values), f"{template}: give the test a value for {names}"
        path = template.format(**values)
        for target in (path, f"/api/v1/jobs/{uuid.uuid4()}") if "{job_id}" in template else (path,):
            got = await api.get(target)
            head = await api.head(target)
            if head.status_code != got.status_code:
                problems.append(f"HEAD {target}: {head.status_code}, GET {got.status_code}")
            if head.content:
                problems.append(f"HEAD {target}: a body of {len(head.content)} bytes")
            if head.headers.get("content-type") != got.headers.get("content-type"):
                problems.append(f"HEAD {target}: content-type {head.headers.get('content-type')}")
    assert not problems, "\n".join(problems)
    # Exact length of a fixed answer; HEAD where only POST exists is 405 like GET.
    head = await api.head("/healthz")
    assert int(head.headers["content-length"]) == len((await api.get("/healthz")).content)
    cancel = f"/api/v1/jobs/{job['id']}/cancel"
    assert (await api.head(cancel)).status_code == (await api.get(cancel)).status_code == 405
    assert (await api.head("/api/v1/nothing")).status_code == 404


async def test_head_is_authorised_like_get(api_factory: ApiFactory) -> None:
    async with api_factory(AI_SERVICE_TOKEN="head-token") as client:
        assert (await client.head("/api/v1/jobs")).status_code == 401
        auth = {"Authorization": "Bearer head-token"}
        head = await client.head("/api/v1/jobs", headers=auth)
        assert head.status_code == 200
        assert head.content == b""


async def test_a_trailing_slash_is_a_404_not_a_redirect(api: httpx.AsyncClient) -> None:
    for path in ("/api/v1/jobs/", "/api/v1/stats/", "/healthz/", "/api/v1/jobs/claim/"):
        for method in ("GET", "POST"):
            response = await api.request(
                method, path, headers={"Host": "evil.example"}, follow_redirects=False
            )
            assert response.status_code in (404, 405), (method, path, response.status_code)
            assert "location" not in response.headers
            assert not envelope_problems(response)


async def raw_request(base_url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw HTTP/1.1 bytes (httpx refuses URLs over 64 KiB); read the whole answer."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


async def test_an_over_long_url_is_414_in_the_envelope_from_the_real_server(
    tmp_path: Path, database_url: str
) -> None:
    # The real `ai-service api` process: uvicorn's own HTTP parser would answer these
    # in plain text before the app saw them.
    async with ServiceGroup(tmp_path, database_url) as services:
        api = await services.start("api", "api")
        for method, target in (
            ("GET", "/api/v1/jobs?owner_ref=" + "x" * 200_000),
            ("GET", "/api/v1/jobs/" + "a" * 200_000),
            ("GET", "/healthz?" + "q" * 70_000),
            ("HEAD", "/healthz?" + "q" * 70_000),
            ("GET", "/api/v1/jobs?owner_ref=" + "x" * 17_000),
            ("POST", "/api/v1/jobs?x=" + "y" * 100_000),
        ):
            request = (
                f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            )
            status, headers, body = await raw_request(api.base_url, request.encode())
            assert status == 414, (method, len(target), body[:200])
            assert headers["content-type"] == "application/json"
            if method == "HEAD":
                assert body == b""
                continue
            envelope = json.loads(body)
            assert envelope["error"] == "uri_too_long"
            assert envelope["details"] == {"limit_bytes": 16384}
            assert envelope["message"].startswith("the URL is longer than 16384 bytes")
        async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
            # A long but acceptable query works.
            ok = await client.get("/api/v1/jobs", params={"owner_ref": "x" * 500})
            assert ok.status_code == 200, ok.text
            assert (await client.get("/healthz")).status_code == 200


async def test_unknown_routes_and_methods_answer_in_the_envelope(api: httpx.AsyncClient) -> None:
    cases = [
        Case("unknown route", "GET", "/api/v1/nothing-here", status=404),
        Case("unknown job action", "POST", "/api/v1/jobs/{pending}/explode", json={}, status=404),
        Case("DELETE a job", "DELETE", "/api/v1/jobs/{pending}", status=405),
        Case("PUT the job list", "PUT", "/api/v1/jobs", json=job_body(), status=405),
    ]
    await run_cases(api, cases)


# -- body size ----------------------------------------------------------------------


def padded_body(size: int) -> bytes:
    """A valid create body of exactly `size` bytes."""
    base = json.dumps(job_body(input={"pad": ""})).encode()
    body = base.replace(b'"pad": ""', b'"pad": "' + b"x" * (size - len(base)) + b'"')
    assert len(body) == size
    return body


async def chunks(body: bytes, size: int = 512) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def assert_413(client: httpx.AsyncClient, response: httpx.Response, before: Any) -> None:
    assert response.status_code == 413, response.text
    assert not envelope_problems(response)
    assert response.json()["error"] == "payload_too_large"
    assert await snapshot(client) == before


async def test_body_over_max_body_bytes_with_content_length_is_413(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(MAX_BODY_BYTES="2048") as client:
        before = await snapshot(client)
        for size in (2049, 50_000):
            response = await client.post(f"{API}/jobs", content=padded_body(size), headers=JSON)
            assert int(response.request.headers["content-length"]) == size
            await assert_413(client, response, before)
        batch = json.dumps({"jobs": [job_body(owner_ref=f"r/{i}") for i in range(30)]})
        response = await client.post(f"{API}/jobs/batch", content=batch, headers=JSON)
        await assert_413(client, response, before)
        # At the limit it is accepted.
        ok = await client.post(f"{API}/jobs", content=padded_body(2048), headers=JSON)
        assert ok.status_code == 201, ok.text


async def test_chunked_body_over_max_body_bytes_is_413(api_factory: ApiFactory) -> None:
    async with api_factory(MAX_BODY_BYTES="2048") as client:
        before = await snapshot(client)
        response = await client.post(f"{API}/jobs", content=chunks(padded_body(4096)), headers=JSON)
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        await assert_413(client, response, before)
        # A small chunked body is fine.
        ok = await client.post(f"{API}/jobs", content=chunks(padded_body(1500)), headers=JSON)
        assert ok.status_code == 201, ok.text
