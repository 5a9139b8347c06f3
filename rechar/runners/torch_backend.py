"""Eager PyTorch, on the CPU (``torch``) or a CUDA device (``torch-cuda``).

Best practice for inference: ``inference_mode``, the fused ``embedding_bag`` kernel (the model's
eager form), inputs already on the device (every batch of the pool as tensors made before timing,
cycled by ``itertools.cycle``), and for CUDA a synchronisation inside the timed call.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from torch.profiler import ProfilerActivity

from rechar import hostinfo
from rechar.analysis.traces import PROFILE_WARMUP, TORCH_MODULE_PREFIX, torch_ops
from rechar.exporters import ExportResult
from rechar.models import RecModel
from rechar.runners.base import Backend, ProfileResult


class TorchBackend(Backend):
    name = "torch"
    framework = "torch"
    device = "cpu"
    uses_torch_model = True
    profiler_activities: ClassVar[list[ProfilerActivity]] = [ProfilerActivity.CPU]

    def load(self, model: RecModel, export: ExportResult) -> None:
        torch.set_num_threads(self.options.threads)
        self.model = model.to(self.device).eval()
        self.input_names = model.input_names
        # Entered once for the worker's life: a context per call would be timed with the model.
        self._mode = torch.inference_mode()
        self._mode.__enter__()

    def prepare(self, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        feeds, model = self._feeds(batches), self.model
        return lambda: model(*next(feeds))

    def _feeds(self, batches: Sequence[dict[str, np.ndarray]]):
        """The batches as tensors on the device, one tuple per batch, cycled."""
        return itertools.cycle([tuple(torch.from_numpy(inputs[n]).to(self.device) for n in self.input_names)
                                for inputs in batches])

    def outputs(self, result: Any) -> np.ndarray:
        return result.cpu().numpy()

    def settings(self) -> dict[str, Any]:
        return {"threads": torch.get_num_threads(), "inference_mode": True, "embedding": "embedding_bag"}

    def profile(self, batches: Sequence[dict[str, np.ndarray]], iterations: int, trace_dir: Path) -> ProfileResult:
        call = self.prepare(batches)
        handles = _label_modules(self.model)  # only for this pass: the labels cost as much as a small model
        try:
            for _ in range(PROFILE_WARMUP):
                call()
            with torch.profiler.profile(activities=self.profiler_activities) as prof:
                for _ in range(iterations):
                    call()
        finally:
            for handle in handles:
                handle.remove()
        path = Path(trace_dir) / "torch_trace.json"
        prof.export_chrome_trace(str(path))
        return ProfileResult(path, torch_ops(path), iterations)

    def close(self) -> None:
        self._mode.__exit__(None, None, None)
        del self.model


def _label_modules(model: torch.nn.Module) -> list:
    """Hooks that wrap each submodule's forward in a profiler range ``rechar.module::<path>``, so
    that the trace tells which layer each op ran in; returns their handles, to remove them."""
    ranges = []  # open ranges, innermost last: forwards nest, so one stack serves all modules

    def enter(label, module, args):
        ranges.append(torch.profiler.record_function(label).__enter__())

    def leave(module, args, output):
        ranges.pop().__exit__(None, None, None)

    handles = []
    for path, module in model.named_modules():
        if path:  # the model's own forward is the top level, layer ''
            handles.append(module.register_forward_pre_hook(functools.partial(enter, TORCH_MODULE_PREFIX + path)))
            handles.append(module.register_forward_hook(leave))
    return handles


class TorchCudaBackend(TorchBackend):
    name = "torch-cuda"
    device = "cuda"
    # Kernels, copies and sets on the device, each linked to the op that launched it (torch_ops).
    profiler_activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not torch.cuda.is_available():
            return f"no CUDA device visible to PyTorch {torch.__version__}"
        return None

    @classmethod
    def cache_bytes(cls) -> int | None:
        return hostinfo.gpu_l2_cache_bytes()

    def load(self, model: RecModel, export: ExportResult) -> None:
        super().load(model, export)
        torch.cuda.reset_peak_memory_stats()

    def prepare(self, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        feeds, model, sync = self._feeds(batches), self.model, torch.cuda.synchronize

        def call():
            out = model(*next(feeds))
            sync()  # kernels are asynchronous: the call ends when the GPU is done
            return out

        return call

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "gpu": torch.cuda.get_device_name(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}

    def peak_device_bytes(self) -> int | None:
        return torch.cuda.max_memory_allocated()
