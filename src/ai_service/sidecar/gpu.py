"""GPU readings through NVML (`nvidia-ml-py`, imported as `pynvml`).

NVML is a blocking C library, so readings run in a worker thread. It is
initialised on first use and again after a failure (the driver may appear
after the sidecar started); each reading is taken on its own, because some
are unsupported on some boards (power on MIG slices, for example): those
become null instead of hiding the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ai_service.sidecar.schemas import GpuReading, GpuSection

T = TypeVar("T")


class GpuCollector:
    """Reads every GPU's utilisation, memory, temperature and power.

    `nvml` is the `pynvml` module, or a stand-in with the same functions
    (tests); by default it is imported at first use.
    """

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml = nvml
        self._initialised = False
        self._lock = threading.Lock()

    async def collect(self) -> GpuSection:
        """The `gpu` section; never raises."""
        return await asyncio.to_thread(self.collect_sync)

    def collect_sync(self) -> GpuSection:
        """The `gpu` section, read in the calling thread."""
        with self._lock:
            try:
                nvml = self._module()
            except ImportError:
                return GpuSection(available=False, reason="nvidia-ml-py (pynvml) is not installed")
            error: type[BaseException] = nvml.NVMLError
            if not self._initialised:
                try:
                    nvml.nvmlInit()
                except error as exc:
                    return GpuSection(available=False, reason=f"NVML is not available: {exc}")
                self._initialised = True
            try:
                count = int(nvml.nvmlDeviceGetCount())
            except error as exc:
                self._shutdown(nvml)
                return GpuSection(available=False, reason=f"NVML cannot count GPUs: {exc}")
            driver = _read(error, lambda: _text(nvml.nvmlSystemGetDriverVersion()))
            gpus = [self._read_gpu(nvml, error, index) for index in range(count)]
            return GpuSection(available=True, driver_version=driver, gpus=gpus)

    def close(self) -> None:
        """Release NVML (idempotent)."""
        with self._lock:
            if self._initialised and self._nvml is not None:
                self._shutdown(self._nvml)

    def _module(self) -> Any:
        if self._nvml is None:
            self._nvml = importlib.import_module("pynvml")
        return self._nvml

    def _shutdown(self, nvml: Any) -> None:
        self._initialised = False
        with contextlib.suppress(nvml.NVMLError):  # nothing left to release
            nvml.nvmlShutdown()

    @staticmethod
    def _read_gpu(nvml: Any, error: type[BaseException], index: int) -> GpuReading:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except error:
            return GpuReading(index=index)
        memory = _read(error, lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        power_mw = _read(error, lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        return GpuReading(
            index=index,
            name=_read(error, lambda: _text(nvml.nvmlDeviceGetName(handle))),
            utilization_percent=_read(
                error, lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            ),
            memory_used_bytes=int(memory.used) if memory is not None else None,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            temperature_c=_read(
                error,
                lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
            ),
            # NVML reports milliwatts.
            power_watts=round(power_mw / 1000.0, 3) if power_mw is not None else None,
        )


def _read(error: type[BaseException], reading: Callable[[], T]) -> T | None:
    """One NVML reading, or None when the board does not support it."""
    try:
        return reading()
    except error:
        return None


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py versions return bytes.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
