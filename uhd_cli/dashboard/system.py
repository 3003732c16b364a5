"""Machine load for the dashboard: CPU and RAM (psutil), GPU through NVML when training on CUDA."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psutil

GIB = 1024**3


@dataclass(frozen=True)
class SystemStats:
    cpu_percent: float
    ram_used: int  # bytes
    ram_total: int
    gpu: str  # utilisation and memory, "CPU only", "GPU stats unavailable", or "" before the run starts


def format_gpu(util_percent: float, mem_used: int, mem_total: int) -> str:
    return f"GPU {util_percent:.0f}% · {mem_used / GIB:.1f}/{mem_total / GIB:.1f} GiB"


def _nvml_index(device: str) -> int:
    """NVML counts every GPU on the machine; torch's cuda:N counts those CUDA_VISIBLE_DEVICES leaves."""
    index = int(device.split(":")[1]) if ":" in device else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible) and visible[index].isdigit():
        return int(visible[index])
    return index


class SystemMonitor:
    """``monitor(device)`` samples the machine; the GPU line follows the run's device."""

    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)  # the first call only starts the measuring window
        self._nvml: Any = None
        self._nvml_failed = False

    def _gpu_line(self, device: str) -> str:
        if not device:
            return ""  # the run has not said where it trains yet
        if not device.startswith("cuda"):
            return "CPU only"
        if self._nvml_failed:
            return "GPU stats unavailable"
        try:
            if self._nvml is None:
                import pynvml  # nvidia-ml-py: optional, only useful on CUDA machines

                pynvml.nvmlInit()
                self._nvml = pynvml
            handle = self._nvml.nvmlDeviceGetHandleByIndex(_nvml_index(device))
            util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception:  # noqa: BLE001 - no module, no driver, or an NVMLError of any kind
            self._nvml_failed = True
            return "GPU stats unavailable"
        return format_gpu(util.gpu, memory.used, memory.total)

    def __call__(self, device: str) -> SystemStats:
        memory = psutil.virtual_memory()
        return SystemStats(psutil.cpu_percent(interval=None), memory.total - memory.available, memory.total,
                           self._gpu_line(device))
