"""`worker.registry`: the metric label set matches the handlers the worker runs."""

from __future__ import annotations

from ai_service.config import TRANSCRIPTION_PROVIDER_NAMES
from ai_service.worker.main import handler_specs
from ai_service.worker.registry import metric_labels
from tests.helpers import make_settings


def test_metric_task_types_are_exactly_the_built_in_handlers_task_types() -> None:
    settings = make_settings()
    task_types, _ = metric_labels(settings)
    assert task_types == frozenset().union(*(s.task_types for s in handler_specs(settings)))


def test_metric_profiles_are_llm_model_and_the_transcription_providers() -> None:
    _, profiles = metric_labels(make_settings(LLM_MODEL="my-model"))
    assert profiles == {"my-model", *TRANSCRIPTION_PROVIDER_NAMES}
