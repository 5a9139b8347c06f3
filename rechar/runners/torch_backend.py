"""Eager PyTorch, on the CPU (``torch``) or a CUDA device (``torch-cuda``).

Best practice for inference: ``inference_mode``, the fused ``embedding_bag`` kernel (the model's
eager form), inputs already on the device, and for CUDA a synchronisation inside the timed call.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from rechar.exporters import ExportResult
from rechar.models import RecModel
from rechar.runners.base import Backend


class TorchBackend(Backend):
    name = "torch"
    framework = "torch"
    device = "cpu"

    def load(self, model: RecModel, export: ExportResult) -> None:
        torch.set_num_threads(self.options.threads)
        self.model = model.to(self.device).eval()
        self.input_names = model.input_names
        # Entered once for the worker's life: a context per call would be timed with the model.
        self._mode = torch.inference_mode()
        self._mode.__enter__()

    def prepare(self, inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
        tensors = [torch.from_numpy(inputs[n]).to(self.device) for n in self.input_names]
        model = self.model
        return lambda: model(*tensors)

    def outputs(self, result: Any) -> np.ndarray:
        return result.cpu().numpy()

    def settings(self) -> dict[str, Any]:
        return {"threads": torch.get_num_threads(), "inference_mode": True, "embedding": "embedding_bag"}

    def close(self) -> None:
        self._mode.__exit__(None, None, None)
        del self.model


class TorchCudaBackend(TorchBackend):
    name = "torch-cuda"
    device = "cuda"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not torch.cuda.is_available():
            return f"no CUDA device visible to PyTorch {torch.__version__}"
        return None

    def load(self, model: RecModel, export: ExportResult) -> None:
        super().load(model, export)
        torch.cuda.reset_peak_memory_stats()

    def prepare(self, inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
        tensors = [torch.from_numpy(inputs[n]).to(self.device) for n in self.input_names]
        model, sync = self.model, torch.cuda.synchronize

        def call():
            out = model(*tensors)
            sync()  # kernels are asynchronous: the call ends when the GPU is done
            return out

        return call

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "gpu": torch.cuda.get_device_name(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}

    def peak_device_bytes(self) -> int | None:
        return torch.cuda.max_memory_allocated()
