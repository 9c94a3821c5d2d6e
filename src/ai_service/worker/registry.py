"""Task types and model profiles of the built-in handlers, known without importing them.

The handler modules take their task types from here, and the job metrics of the
API and the worker keep exactly these (plus `other`) as label values: callers
choose `task_type` and `model_profile` freely, and every distinct label value
would stay in `/metrics` for the life of the process.
"""

from __future__ import annotations

from ai_service.config import TRANSCRIPTION_PROVIDER_NAMES, Settings

LLM_TASK_TYPES = frozenset({"llm_chat", "chat_completion", "call_analysis"})
TRANSCRIPTION_TASK_TYPES = frozenset({"transcription", "transcribe"})
NOOP_TASK_TYPES = frozenset({"noop"})


def metric_labels(settings: Settings) -> tuple[frozenset[str], frozenset[str]]:
    """(task types, model profiles) kept as metric labels: the built-in handlers' task
    types; `LLM_MODEL` and the transcription provider names as profiles."""
    task_types = LLM_TASK_TYPES | TRANSCRIPTION_TASK_TYPES | NOOP_TASK_TYPES
    profiles = frozenset({settings.llm_model, *TRANSCRIPTION_PROVIDER_NAMES})
    return task_types, profiles
