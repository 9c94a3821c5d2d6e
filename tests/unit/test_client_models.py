"""The client's models and request builders against the service's OpenAPI document.

The client keeps its own dataclasses (it must not import the service); these
tests pin each one to the schema it decodes, and each request it builds to
the schema of that request, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest

from ai_service.api.app import create_app
from ai_service_client import _core, models
from tests.helpers import make_settings


@cache
def openapi() -> dict[str, Any]:
    # No database is reached: building the document needs the routes only.
    app = create_app(make_settings("postgresql://127.0.0.1:1/unused"))
    document: dict[str, Any] = app.openapi()
    return document


def properties(schema: str) -> set[str]:
    return set(openapi()["components"]["schemas"][schema]["properties"])


def field_names(cls: type[Any]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize(
    ("model", "schema"),
    [
        (models.Job, "JobOut"),
        (models.CreatedJob, "CreatedJobOut"),
        (models.ClaimedJob, "ClaimedJobOut"),
        (models.JobSummary, "JobSummaryOut"),
        (models.JobPage, "JobListOut"),
        (models.Batch, "BatchOut"),
        (models.BatchItem, "BatchItemOut"),
        (models.Completed, "CompletedOut"),
        (models.CompleteMany, "CompleteManyOut"),
        (models.Heartbeat, "HeartbeatOut"),
        (models.Stats, "StatsOut"),
    ],
)
def test_client_model_fields_are_the_schema_properties(model: type[Any], schema: str) -> None:
    assert field_names(model) == properties(schema)


@pytest.mark.parametrize(
    ("model", "schema"),
    [(models.Job, "JobOut"), (models.JobSummary, "JobSummaryOut"), (models.Stats, "StatsOut")],
)
def test_fields_the_schema_requires_are_required_in_the_model(
    model: type[Any], schema: str
) -> None:
    required = set(openapi()["components"]["schemas"][schema].get("required", []))
    without_default = {
        f.name
        for f in dataclasses.fields(model)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    assert without_default <= required


def test_new_job_keys_are_the_job_create_properties() -> None:
    keys = set(typing.get_type_hints(_core.NewJob)) - {"traceparent"}  # a header
    assert keys == properties("JobCreate")


def test_job_spec_keys_are_the_job_patch_properties() -> None:
    assert set(typing.get_type_hints(models.JobSpec)) == properties("JobPatch")


def test_job_filters_are_the_list_query_parameters() -> None:
    parameters = {p["name"] for p in openapi()["paths"]["/api/v1/jobs"]["get"]["parameters"]}
    assert set(typing.get_type_hints(_core.JobFilters)) == parameters - {"cursor"}


@pytest.mark.parametrize(
    ("call", "schema"),
    [
        (
            _core.claim(
                "w",
                task_types=["a"],
                model_profiles=["m"],
                limit=2,
                lease_seconds=5,
                wait_seconds=1,
            ),
            "ClaimRequest",
        ),
        (_core.heartbeat("j", "t", 5), "HeartbeatRequest"),
        (_core.complete("j", {"a": 1}, "t"), "CompleteRequest"),
        (
            _core.fail(
                "j",
                category="c",
                message="m",
                lease_token="t",
                details={},
                retryable=True,
                retry_after_seconds=1,
            ),
            "FailRequest",
        ),
    ],
)
def test_request_bodies_use_every_property_of_their_schema(
    call: _core.Call[Any], schema: str
) -> None:
    assert set(call.json) == properties(schema)


def test_complete_many_items_are_completion_items() -> None:
    call = _core.complete_many([("j", "t", {"a": 1})])
    assert set(call.json) == properties("CompleteManyRequest")
    assert set(call.json["jobs"][0]) == properties("CompletionItem")


def test_decoding_ignores_unknown_fields_and_parses_timestamps() -> None:
    raw = {
        "id": "0193",
        "status": "completed",
        "finished_at": "2026-01-02T03:04:05.123456Z",
        "added_by_a_newer_service": {"x": 1},
    }
    done = models.Completed.from_json(raw)
    assert done.finished_at == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert not hasattr(done, "added_by_a_newer_service")


def test_decoding_names_a_missing_required_field() -> None:
    from ai_service_client import errors

    with pytest.raises(errors.AIServiceError, match="'finished_at'"):
        models.Completed.from_json({"id": "1", "status": "completed"})


def test_to_json_round_trips_timestamps() -> None:
    done = models.Completed(
        id="1", status="completed", finished_at=datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert models.to_json(done) == {
        "id": "1",
        "status": "completed",
        "finished_at": "2026-01-01T00:00:00+00:00",
    }
