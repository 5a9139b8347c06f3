"""What machine and software a run used: recorded in every run's manifest."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil

import rechar

PACKAGES = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorflow", "tensorflow-cpu", "numpy", "pandas")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def last_level_cache_bytes() -> int | None:
    """Size of one instance of the CPU's last-level data (or unified) cache, from sysfs."""
    caches = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level = int((index / "level").read_text())
            caches.append((level, parse_size((index / "size").read_text().strip())))
        except (OSError, ValueError):
            continue
    return max(caches)[1] if caches else None


def gpu_l2_cache_bytes() -> int | None:
    """L2 cache of the first CUDA device, from PyTorch (which opens a CUDA context: only for
    processes that use the GPU anyway)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).L2_cache_size


def parse_size(text: str) -> int:
    """sysfs cache sizes: '32768K', '2M', or bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)


def gpus() -> list[dict[str, str]]:
    """GPUs and driver from nvidia-smi, if present (no CUDA context is created)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [dict(zip(("name", "driver", "memory"), (p.strip() for p in line.split(",")))) for line in out.splitlines() if line.strip()]


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def git_commit() -> str | None:
    root = Path(rechar.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def host() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu": cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": psutil.virtual_memory().total,
        "llc_bytes": last_level_cache_bytes(),
        "gpus": gpus(),
    }


def software() -> dict[str, Any]:
    return {"python": platform.python_version(), "rechar": rechar.__version__, "rechar_commit": git_commit(),
            **package_versions()}
