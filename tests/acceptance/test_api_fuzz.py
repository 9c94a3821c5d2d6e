"""Property-based fuzzing of the HTTP API with Schemathesis, bearer auth on.

Schemathesis reads the OpenAPI document the app serves at `/openapi.json` and,
for every operation it declares, sends generated requests (valid ones and
schema-violating ones, plus its boundary-value "coverage" cases) to a real API
served by uvicorn on 127.0.0.1 over a fresh PostgreSQL database. Properties
checked on every response:

- never a 5xx (`not_a_server_error`);
- the status code is one the operation documents (`status_code_conformance`);
- the content type and headers are the documented ones;
- the body validates against the documented schema for that status
  (`response_schema_conformance`), which for 4xx answers is the error envelope.

A second test sends generated requests to every `/api/v1` operation without
the token and expects 401 with the envelope.

How it is wired, and why:

- `@schema.parametrize()` needs the schema at import time, and the lazy
  `schemathesis.pytest.from_fixture` does not run under pytest 9 (it writes
  `Node._nodeid`, which pytest 9 removed). The document is therefore built from
  `create_app(...)` at import (no database needed for that), and
  `test_fuzzed_document_is_the_served_one` proves it is exactly what the live
  server answers at `/openapi.json`. Routes added later are fuzzed without
  touching this file.
- Schemathesis tests are synchronous, so the API (and the sidecar behind
  `/api/v1/infra/status`) run in their own event loop in a background thread.
- One API (with its sidecar and an LLM stub) serves the whole module, over a
  database of its own; starting them per operation cost more than fuzzing.
  Each test first seeds, through the API, jobs in every state, a running
  job's lease token and a real list cursor. Generated job ids and lease
  tokens are mapped onto those some of the time (decided by the generated
  value itself, so Hypothesis replays and shrinks it); otherwise almost every
  request would end in 404 and the job schemas would go unchecked.
- Valid (positive) batch cases get the five required job fields in their
  `defaults`, a rule JSON Schema cannot express.
- Long polls and waits (`wait_seconds`, in a body or a query) are capped at 0.1 s
  so that the claim and get operations run in milliseconds; `test_api_longpoll.py`
  and `test_api_wait.py` cover waiting itself.
- Fuzz dictionaries mix edge values (times near year 1 and 9999, offsets past
  PostgreSQL's range, NUL and other awkward text) into the generated data.
- Hypothesis runs derandomized without an example database: the same cases on
  every run and in CI. Schemathesis itself also sends negative cases without
  the `Authorization` header (the security scheme makes it "required"); those
  must answer the documented 401.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import httpx
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ai_service.api.app import create_app
from ai_service.sidecar.app import create_app as create_sidecar
from tests.helpers import make_settings, serve, url_for_database
from tests.stubs import closed_port_url
from tests.stubs.openai_server import OpenAIStub
from tests.unit.test_sidecar_gpu import FakeGpu, FakeNvml

# The generated request of one operation (the operation type is irrelevant here).
Case: TypeAlias = schemathesis.Case[Any]

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SIDECAR_TOKEN = "fuzz-sidecar-token"
LLM_MODEL = "fuzz-model"
# Longest long poll a fuzzed claim may ask for (the schema allows 30 s).
MAX_WAIT_SECONDS = 0.1
# Required job fields filled into generated batch defaults (see `_steer`).
BATCH_DEFAULTS: dict[str, Any] = {
    "owner_service": "fuzz",
    "owner_ref": "batch",
    "task_type": "fuzz_batch",
    "model_profile": "fuzz-profile",
    "input": {},
}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

FUZZ_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    # function_scoped_fixture: all examples of an operation share one seeded API on
    # purpose (state left by earlier requests is part of what gets fuzzed).
    # too_slow: generating large bodies (batches of up to 1000 jobs) can exceed
    # Hypothesis' generation budget on a slow CI machine; this test is about the
    # server's answers, not the generator's speed.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def api_env(**extra: str) -> dict[str, str]:
    """Environment of the fuzzed API: auth on, providers and sidecar configured."""
    return {
        "AI_SERVICE_TOKEN": TOKEN,
        "RESCUE_INTERVAL": "3600",
        "LLM_MODEL": LLM_MODEL,
        "WHISPERX_URL": closed_port_url(),  # one provider down: reported, not an error
        "PROVIDER_PROBE_TIMEOUT": "2s",
        "INFRA_STATUS_TOKEN": SIDECAR_TOKEN,
        **extra,
    }


def openapi_document() -> dict[str, Any]:
    """The document the API serves at /openapi.json (building it needs no database)."""
    app = create_app(make_settings("postgresql://127.0.0.1/unused", **api_env()))
    return app.openapi()


DOCUMENT = openapi_document()
# Values at the edges of what PostgreSQL and Python can hold. Random generation
# rarely lands on them (a date within a day of year 1 or 9999, an offset past
# PostgreSQL's +-15:59); Schemathesis "fuzz dictionaries" mix them in.
EDGE_TIMES = [
    "9999-12-31T23:59:59-01:00",  # after year 9999 once in UTC
    "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
    "9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "2000-02-29T12:00:00+16:00",  # offsets PostgreSQL does not accept
    "2000-02-29T12:00:00-23:59",
    "2038-01-19T03:14:08+00:00",
]
# (No lone surrogates: Schemathesis keeps dictionaries as UTF-8.)
EDGE_TEXT = ["\x00", "a\x00b", " ", "\t\n", "\u2028", "\U0010ffff", "' OR 1=1 --", "%00"]
TIME_FIELDS = [
    "body.run_after",
    "body.defaults.run_after",
    "body.jobs[*].run_after",
    "body.created_after",
    "body.created_before",
    "query.created_after",
    "query.created_before",
]

# Explicit config: a schemathesis.toml somewhere up the tree must not change this test.
CONFIG = schemathesis.Config.from_dict(
    {
        "dictionaries": {"edge-times": {"values": EDGE_TIMES}, "edge-text": {"values": EDGE_TEXT}},
        "generation": {"dictionaries": {"string": {"dictionary": "edge-text", "probability": 0.1}}},
        "parameters": {
            name: {"dictionary": "edge-times", "probability": 0.25} for name in TIME_FIELDS
        },
    }
)
# The audio upload takes the raw file (`audio/*`): generated as bytes, like octet-stream.
schemathesis.serializer.alias("audio/*", "application/octet-stream")
schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=CONFIG)


# -- the live API ---------------------------------------------------------------------


@dataclass
class SeededJob:
    """A job created before fuzzing; `lease_token` only for the running one."""

    id: str
    status: str
    lease_token: str | None = None


@dataclass
class LiveApi:
    """A running API with seeded jobs."""

    base_url: str
    jobs: list[SeededJob] = field(default_factory=list)
    cursor: str | None = None

    def pick(self, value: object) -> SeededJob | None:
        """A seeded job chosen by a generated UUID string, or None (keep it: a 404).

        The choice is a function of the generated value, so Hypothesis replays
        and shrinks it like any other part of the case.
        """
        if not isinstance(value, str):
            return None
        try:
            index = uuid.UUID(value).int % (len(self.jobs) + 1)
        except ValueError:
            return None  # not a UUID: a negative case, leave it alone
        return self.jobs[index] if index < len(self.jobs) else None


@asynccontextmanager
async def _servers(database_url: str, llm_url: str) -> AsyncIterator[str]:
    """The sidecar (fake NVML, no Docker) and the API behind it; yields the API URL."""
    sidecar = create_sidecar(
        make_settings(
            SIDECAR_TOKEN=SIDECAR_TOKEN,
            DOCKER_SOCKET="/nonexistent/docker.sock",
            PROVIDER_PROBE_TIMEOUT="2s",
        ),
        nvml=FakeNvml([FakeGpu()]).module(),
    )
    async with serve(sidecar) as sidecar_url:
        env = api_env(LLM_BASE_URL=f"{llm_url}/v1", INFRA_STATUS_URL=sidecar_url)
        async with serve(create_app(make_settings(database_url, **env))) as api_url:
            yield api_url


@dataclass
class _ServerThread:
    """Runs `_servers` in an event loop of its own, in a daemon thread."""

    database_url: str
    llm_url: str
    base_url: str = ""
    error: BaseException | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with _servers(self.database_url, self.llm_url) as base_url:
            self.base_url = base_url
            self._ready.set()
            await self._stop.wait()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def __enter__(self) -> str:
        self._thread = threading.Thread(target=self._run, name="fuzz-api", daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the API did not start within 60 s")
        if self.error is not None:
            raise self.error
        return self.base_url

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        assert self._thread is not None
        self._thread.join(30)
        if self.error is not None:
            raise self.error


def _seed(client: httpx.Client) -> tuple[list[SeededJob], str | None]:
    """Jobs in every state (through the API itself) and a real list cursor.

    Task types are unique to this call: claims must take these jobs, not ones
    that earlier tests left (or that their fuzzing put back to pending).
    """
    tag = uuid.uuid4().hex[:8]

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = client.request(method, path, json=body)
        assert response.is_success, (method, path, response.status_code, response.text)
        return response.json()

    def create(task_type: str, **fields: Any) -> str:
        body = {
            "owner_service": "fuzz",
            "owner_ref": f"seed/{task_type}",
            "task_type": f"{task_type}_{tag}",
            "model_profile": "fuzz-profile",
            "input": {"text": "Привет, мир", "n": 1, "nested": {"list": [1, None, True]}},
            **fields,
        }
        return str(call("POST", "/api/v1/jobs", body)["id"])

    def claim(task_type: str) -> str:
        [job] = call(
            "POST",
            "/api/v1/jobs/claim",
            {"worker_id": "seed", "task_types": [f"{task_type}_{tag}"]},
        )["jobs"]
        return str(job["lease_token"])

    jobs = [SeededJob(create("seed_pending", idempotency_key=f"seed-{tag}", priority=5), "pending")]
    scheduled = create("seed_scheduled", run_after="2999-01-01T00:00:00Z")
    jobs.append(SeededJob(scheduled, "pending"))

    running = create("seed_running")
    jobs.append(SeededJob(running, "running", claim("seed_running")))

    done = create("seed_done")
    token = claim("seed_done")
    call("POST", f"/api/v1/jobs/{done}/complete", {"result": {"label": "ok"}, "lease_token": token})
    jobs.append(SeededJob(done, "completed"))

    failed = create("seed_failed", max_attempts=1)
    token = claim("seed_failed")
    call(
        "POST",
        f"/api/v1/jobs/{failed}/fail",
        {"category": "invalid_input", "message": "bad", "details": {"k": 1}, "lease_token": token},
    )
    jobs.append(SeededJob(failed, "failed"))

    retrying = create("seed_retrying")
    token = claim("seed_retrying")
    call(
        "POST",
        f"/api/v1/jobs/{retrying}/fail",
        {"category": "timeout", "message": "slow", "lease_token": token},
    )
    jobs.append(SeededJob(retrying, "pending"))

    cancelled = create("seed_cancelled")
    call("POST", f"/api/v1/jobs/{cancelled}/cancel")
    jobs.append(SeededJob(cancelled, "cancelled"))

    cursor = call("GET", "/api/v1/jobs?limit=2")["next_cursor"]
    return jobs, cursor


@pytest.fixture(scope="module")
def fuzz_database_url(pg_admin_url: str, template_database: str) -> Iterator[str]:
    """One migrated database for the whole module (as `database_url`, module-scoped).

    Starting the API, its sidecar and the LLM stub for every operation would
    cost more than fuzzing it; each test seeds its own jobs instead.
    """
    name = f"fuzz_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_database}")
    yield url_for_database(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def fuzz_base_url(fuzz_database_url: str) -> Iterator[str]:
    """A real API (auth on) on loopback, with its sidecar and an LLM stub."""
    with (
        OpenAIStub(models=[LLM_MODEL]) as llm,
        _ServerThread(fuzz_database_url, llm.base_url) as base_url,
    ):
        yield base_url


@pytest.fixture
def live_api(fuzz_base_url: str) -> LiveApi:
    """The API with jobs in every state seeded for this test."""
    with httpx.Client(base_url=fuzz_base_url, headers=AUTH, timeout=30) as client:
        jobs, cursor = _seed(client)
    return LiveApi(fuzz_base_url, jobs, cursor)


# -- steering generated cases ---------------------------------------------------------


def _is_even_uuid(value: object) -> bool:
    """True for half of all UUID strings (a coin Hypothesis can replay)."""
    try:
        return isinstance(value, str) and uuid.UUID(value).int % 2 == 0
    except ValueError:
        return False


def _steer(case: Case, api: LiveApi) -> None:
    """Aim some generated ids, tokens and cursors at real data; keep long polls short."""
    body = case.body if isinstance(case.body, dict) else None
    positive = case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE
    defaults = body.get("defaults") if body is not None else None
    if positive and isinstance(defaults, dict) and body is not None and "jobs" in body:
        # A batch item needs the job's required fields in itself or in `defaults`,
        # a rule JSON Schema cannot state; without them nearly every batch is a 422.
        for name, value in BATCH_DEFAULTS.items():
            if defaults.get(name) is None:
                defaults[name] = value
    for name, value in list((case.path_parameters or {}).items()):
        job = api.pick(value)
        if job is None:
            continue
        case.path_parameters[name] = job.id
        token = body.get("lease_token") if body is not None else None
        # Half of the generated tokens become the real one: fenced success paths too.
        if body is not None and job.lease_token and _is_even_uuid(token):
            body["lease_token"] = job.lease_token
    query = case.query if isinstance(case.query, dict) else None
    cursor = query.get("cursor") if query is not None else None
    # Half of the generated cursors become a real one: the next-page path too.
    if query is not None and api.cursor and isinstance(cursor, str) and len(cursor) % 2 == 0:
        query["cursor"] = api.cursor
    for waits in (body, query):  # the claim's long poll and GET /jobs/{id}?wait_seconds=
        if waits is None:
            continue
        wait = waits.get("wait_seconds")
        # Values over 30 are invalid and must still reach the API as they are.
        if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 < wait <= 30:
            waits["wait_seconds"] = min(wait, MAX_WAIT_SECONDS)
        elif isinstance(wait, str) and _short_enough(wait):
            waits["wait_seconds"] = str(MAX_WAIT_SECONDS)


def _short_enough(text: str) -> bool:
    """A query value the API would read as a valid wait (0 < N <= 30)."""
    try:
        value = float(text)
    except ValueError:
        return False
    return 0 < value <= 30


# -- tests ----------------------------------------------------------------------------


def test_fuzzed_document_is_the_served_one(live_api: LiveApi) -> None:
    response = httpx.get(f"{live_api.base_url}/openapi.json", timeout=30)
    assert response.status_code == 200
    assert response.json() == DOCUMENT
    operations = {
        f"{method.upper()} {path}" for path, item in DOCUMENT["paths"].items() for method in item
    }
    # The operations the issue names must be among those fuzzed.
    assert {"GET /healthz", "GET /readyz", "GET /metrics", "POST /api/v1/jobs"} <= operations


@schema.parametrize()
@FUZZ_SETTINGS
def test_every_operation_conforms_and_never_answers_5xx(case: Case, live_api: LiveApi) -> None:
    _steer(case, live_api)
    response = case.call(base_url=live_api.base_url, headers=AUTH)
    case.validate_response(
        response,
        checks=CHECKS,
        headers=AUTH,
        transport_kwargs={"base_url": live_api.base_url, "headers": AUTH},
    )


@schema.include(path_regex=r"^/api/v1/").parametrize()
@settings(FUZZ_SETTINGS, max_examples=5)
def test_every_api_operation_answers_401_without_the_token(case: Case, live_api: LiveApi) -> None:
    if case.headers:
        case.headers.pop("Authorization", None)
    response = case.call(base_url=live_api.base_url)
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error"] == "unauthorized"
    assert isinstance(body["message"], str)
    assert body["details"] == {}
    assert response.headers.get("www-authenticate") == ["Bearer"]
    assert TOKEN not in response.text
    case.validate_response(
        response, checks=CHECKS, transport_kwargs={"base_url": live_api.base_url}
    )
