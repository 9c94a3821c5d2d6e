"""`ai-service` command line: the metrics directory of several API processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ai_service import cli


def test_several_api_processes_get_a_fresh_metrics_directory_removed_after_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / "counter_1.db").write_bytes(b"stale")  # an earlier run's file
    with cli.metrics_dir(2):
        run_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        assert run_dir.parent == tmp_path
        assert list(run_dir.iterdir()) == []  # nothing of the earlier run is added in
    assert not run_dir.exists()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)


def test_one_api_process_keeps_its_metrics_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent")
    with cli.metrics_dir(1):
        assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
