"""Connection and error plumbing between the store and PostgreSQL.

The pool (autocommit, dict rows, fast JSON), a checked checkout that replaces
connections a database restart killed, the one translation of database
exceptions into domain errors (`errors.DatabaseUnavailable` for outages,
`errors.StatementTimeout`, `errors.InvalidRequest` for what the database
refuses), deadlock reruns, and the JSON encoding of parameters. `store.py`
runs the named queries on top of it.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import psycopg
import psycopg.errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ai_service import errors
from ai_service.notifier import CONNECT_OPTIONS

IDLE_CHECK_AFTER = 2.0  # seconds a pooled connection may idle before it is checked
# When each pooled connection was last returned (see `checked`).
_RETURNED: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
    weakref.WeakKeyDictionary()
)
DEADLOCK_RETRIES = 3


class Deadlock(Exception):
    """PostgreSQL chose this statement as a deadlock victim (it was rolled back)."""


def dumps(value: Any) -> bytes | str:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        # orjson refuses integers beyond 64 bits; PostgreSQL's jsonb takes them.
        return json.dumps(value)


_LONG_NUMBER = re.compile(rb"\d{19}")
# An escaped NUL (an odd number of backslashes before u0000): jsonb refuses it.
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _loads(data: bytes | bytearray | memoryview | str) -> Any:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if _LONG_NUMBER.search(raw):
        # orjson reads integers beyond 64 bits as floats; the stdlib keeps them exact.
        return json.loads(raw)
    return orjson.loads(raw)


def raw(value: bytes) -> bytes:
    return value


def jsonb(value: Any) -> Jsonb | None:
    """Adapt a Python value for a jsonb parameter (None stays SQL NULL)."""
    return None if value is None else Jsonb(value, dumps=dumps)


def encode_result(result: Any) -> bytes:
    """A result as JSON that PostgreSQL's jsonb accepts, or `InvalidRequest` naming it."""
    try:
        raw = dumps(result)
    except (TypeError, ValueError) as exc:
        raise errors.InvalidRequest("result", f"is not JSON-serialisable: {exc}") from None
    data = raw.encode() if isinstance(raw, str) else raw
    if _JSON_NUL.search(data):
        raise errors.InvalidRequest("result", "contains a NUL character, which jsonb cannot store")
    return data


# SQLSTATEs (or their two-character classes) that mean "the database is not
# there right now": connection exceptions, shutdown, too many connections or
# out of resources, a read-only (demoted) server. Retrying later can succeed.
_OUTAGE_CLASSES = ("08", "53", "58")
_OUTAGE_STATES = frozenset({"57P01", "57P02", "57P03", "57P05", "25006", "40001", "55P03"})


def is_outage(exc: psycopg.Error) -> bool:
    """Whether a database error is an outage (retry) rather than this statement's fault."""
    state = exc.sqlstate
    if state is None:  # no answer from the server at all: the connection is gone
        return True
    return state in _OUTAGE_STATES or state[:2] in _OUTAGE_CLASSES


async def open_pool(
    database_url: str, *, min_size: int, max_size: int, timeout: float, wait: bool
) -> AsyncConnectionPool[Any]:
    """Open a pool; with `wait=False` the database may still be down (readyz says so)."""

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        set_json_loads(_loads, conn)
        # The service's statements are short index lookups, but PostgreSQL's cost
        # estimates for the claim's recursive skip scans are large enough to start
        # JIT compilation where it is built in (Debian's packages): 445 ms of
        # compiling for a claim that runs in 1 ms.
        await conn.execute("SET jit = off")

    async def reset(conn: psycopg.AsyncConnection[Any]) -> None:
        _RETURNED[conn] = time.monotonic()

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        kwargs={"autocommit": True, "row_factory": dict_row, **CONNECT_OPTIONS},
        configure=configure,
        reset=reset,
        # When reconnection attempts give up, the pool still grows again on
        # demand: requests answer 503 until PostgreSQL is back, then recover.
        open=False,
        name="ai-service",
    )
    await pool.open(wait=wait, timeout=timeout)
    return pool


@contextlib.asynccontextmanager
async def checked(pool: AsyncConnectionPool[Any]) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection known to be alive.

    A connection that sat idle may have died with a database restart: it
    gets one empty round trip before use, and a dead one is closed (the
    pool replaces it) and the next one tried at once, so the first requests
    after a restart do not fail. Connections in steady use skip the check.
    """
    for _ in range(pool.max_size + 1):
        async with pool.connection() as conn:
            if time.monotonic() - _RETURNED.get(conn, 0.0) > IDLE_CHECK_AFTER:
                try:
                    await conn.execute("")
                except psycopg.Error:
                    await conn.close()
                    continue
            yield conn
            return
    raise errors.DatabaseUnavailable("database unavailable: no live connection")


@contextlib.asynccontextmanager
async def connection(pool: AsyncConnectionPool[Any]) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A checked pooled connection; database exceptions leave it as domain errors."""
    try:
        async with checked(pool) as conn:
            yield conn
    except PoolTimeout:
        raise errors.DatabaseUnavailable("no database connection available") from None
    except psycopg.errors.DeadlockDetected:
        raise Deadlock() from None
    except psycopg.errors.CheckViolation as exc:
        constraint = exc.diag.constraint_name or "constraint"
        raise errors.InvalidRequest(constraint, "violates a job invariant") from None
    except psycopg.DataError as exc:
        # The API validates JSON and text before they get here; this is the backstop.
        message = getattr(getattr(exc, "diag", None), "message_primary", None) or "invalid data"
        raise errors.InvalidRequest("body", f"rejected by the database: {message}") from None
    except psycopg.errors.QueryCanceled:
        raise errors.StatementTimeout(
            "the database cancelled the statement (statement timeout)"
        ) from None
    except (psycopg.OperationalError, psycopg.InterfaceError, psycopg.InternalError) as exc:
        if is_outage(exc):
            raise errors.DatabaseUnavailable(
                f"database unavailable: {type(exc).__name__}"
            ) from None
        # A limit of this statement (e.g. 54000 program_limit_exceeded): the
        # request's own error, which retrying the same statement cannot cure.
        message = getattr(getattr(exc, "diag", None), "message_primary", None) or "refused"
        raise errors.InvalidRequest(
            "body", f"rejected by the database: {message} (SQLSTATE {exc.sqlstate})"
        ) from None


_GENERIC_PLAN = "SET LOCAL plan_cache_mode = force_generic_plan"


async def fetch(
    pool: AsyncConnectionPool[Any],
    query: str,
    params: dict[str, Any],
    *,
    prepare: bool | None = None,
) -> list[dict[str, Any]]:
    """Run one statement (autocommit); a deadlock victim is rerun."""
    for attempt in range(DEADLOCK_RETRIES):
        try:
            async with connection(pool) as conn:
                cur = await conn.execute(query, params, prepare=prepare)
                return await cur.fetchall() if cur.description else []
        except Deadlock:
            # Each statement runs alone (autocommit): the victim rolled back, rerun it.
            if attempt == DEADLOCK_RETRIES - 1:
                raise errors.DatabaseUnavailable("database busy: repeated deadlocks") from None
    raise AssertionError("unreachable")


async def fetch_together(
    pool: AsyncConnectionPool[Any], statements: Sequence[tuple[str, dict[str, Any]]]
) -> list[list[dict[str, Any]]]:
    """Run statements in one transaction, sent in one round trip: the rows of each.

    They are prepared and run with PostgreSQL's generic plan: they must be
    statements whose plan does not depend on the values (index lookups driven
    by the parameters, such as the claim's skip scans and the batch updates by
    id). PostgreSQL would otherwise keep planning such a statement afresh for
    each call when it estimates that custom plans are cheaper, and the planning
    of a large statement costs more than running it. A deadlock victim is rerun.
    """
    for attempt in range(DEADLOCK_RETRIES):
        try:
            async with connection(pool) as conn:
                async with conn.pipeline(), conn.transaction():
                    await conn.execute(_GENERIC_PLAN)
                    cursors = [await conn.execute(q, p, prepare=True) for q, p in statements]
                return [await cur.fetchall() if cur.description else [] for cur in cursors]
        except Deadlock:
            if attempt == DEADLOCK_RETRIES - 1:
                raise errors.DatabaseUnavailable("database busy: repeated deadlocks") from None
    raise AssertionError("unreachable")
