"""The NVML collector with a fake `pynvml` module (no GPU needed)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from ai_service.sidecar.gpu import GpuCollector

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_LIBRARY_NOT_FOUND = 12


class FakeNVMLError(Exception):
    """Shaped like pynvml.NVMLError: carries the NVML return code."""

    _TEXT = {NVML_ERROR_NOT_SUPPORTED: "Not Supported", 12: "NVML Shared Library Not Found"}

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self._TEXT.get(self.value, f"NVML error {self.value}")


@dataclass
class FakeGpu:
    name: str | bytes = "NVIDIA H100 80GB HBM3"
    util: int = 42
    used: int = 30 * 2**30
    total: int = 80 * 2**30
    temperature: int = 55
    power_mw: int = 312_500
    unsupported: set[str] = field(default_factory=set)  # readings that raise NotSupported


@dataclass
class FakeNvml:
    gpus: list[FakeGpu]
    init_failures: int = 0  # nvmlInit fails this many times first
    calls: list[str] = field(default_factory=list)

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("pynvml")
        mod.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
        mod.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(mod, name, getattr(self, name))
        return mod

    def _gpu(self, handle: int, reading: str) -> FakeGpu:
        gpu = self.gpus[handle]
        if reading in gpu.unsupported:
            raise FakeNVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu

    # Method names are pynvml's.
    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_failures:
            self.init_failures -= 1
            raise FakeNVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if "handle" in self.gpus[index].unsupported:
            raise FakeNVMLError(NVML_ERROR_NOT_SUPPORTED)
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return self._gpu(handle, "name").name

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return types.SimpleNamespace(gpu=self._gpu(handle, "util").util, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        gpu = self._gpu(handle, "memory")
        return types.SimpleNamespace(used=gpu.used, total=gpu.total, free=gpu.total - gpu.used)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == 0
        return self._gpu(handle, "temperature").temperature

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._gpu(handle, "power").power_mw


def test_every_reading_of_every_gpu() -> None:
    fake = FakeNvml([FakeGpu(), FakeGpu(name=b"NVIDIA A10", util=7, temperature=40)])
    section = GpuCollector(fake.module()).collect_sync()
    assert section.available
    assert section.reason is None
    assert section.driver_version == "550.54.15"
    first, second = section.gpus
    assert first.model_dump() == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "utilization_percent": 42.0,
        "memory_used_bytes": 30 * 2**30,
        "memory_total_bytes": 80 * 2**30,
        "temperature_c": 55.0,
        "power_watts": 312.5,
    }
    assert (second.index, second.name, second.utilization_percent) == (1, "NVIDIA A10", 7.0)


def test_an_unsupported_reading_becomes_null_and_the_others_remain() -> None:
    fake = FakeNvml([FakeGpu(unsupported={"power", "temperature"})])
    [gpu] = GpuCollector(fake.module()).collect_sync().gpus
    assert gpu.power_watts is None
    assert gpu.temperature_c is None
    assert gpu.utilization_percent == 42.0
    assert gpu.memory_total_bytes == 80 * 2**30


def test_a_gpu_without_a_handle_is_listed_with_null_readings() -> None:
    fake = FakeNvml([FakeGpu(unsupported={"handle"}), FakeGpu()])
    section = GpuCollector(fake.module()).collect_sync()
    assert section.gpus[0].model_dump() == {
        "index": 0,
        "name": None,
        "utilization_percent": None,
        "memory_used_bytes": None,
        "memory_total_bytes": None,
        "temperature_c": None,
        "power_watts": None,
    }
    assert section.gpus[1].name == "NVIDIA H100 80GB HBM3"


def test_nvml_init_failure_makes_the_section_unavailable_with_the_reason() -> None:
    fake = FakeNvml([FakeGpu()], init_failures=1)
    section = GpuCollector(fake.module()).collect_sync()
    assert not section.available
    assert section.reason == "NVML is not available: NVML Shared Library Not Found"
    assert section.gpus == []


def test_nvml_is_initialised_once_and_retried_after_a_failure() -> None:
    fake = FakeNvml([FakeGpu()], init_failures=1)
    collector = GpuCollector(fake.module())
    assert not collector.collect_sync().available
    assert collector.collect_sync().available
    assert collector.collect_sync().available
    assert fake.calls == ["init", "init"]
    collector.close()
    collector.close()
    assert fake.calls == ["init", "init", "shutdown"]


def test_pynvml_is_imported_from_sys_modules_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml([FakeGpu(name="injected")])
    monkeypatch.setitem(sys.modules, "pynvml", fake.module())
    section = GpuCollector().collect_sync()
    assert [g.name for g in section.gpus] == ["injected"]


def test_missing_pynvml_makes_the_section_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    section = GpuCollector().collect_sync()
    assert not section.available
    assert section.reason == "nvidia-ml-py (pynvml) is not installed"


async def test_collect_runs_in_a_thread_and_returns_the_section() -> None:
    fake = FakeNvml([FakeGpu()])
    section = await GpuCollector(fake.module()).collect()
    assert section.available
    assert len(section.gpus) == 1
