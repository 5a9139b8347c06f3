"""ONNX Runtime with the CPU (``ort-cpu``) or CUDA (``ort-cuda``) execution provider.

Best practice: full graph optimisation, explicit intra-op threads, sequential execution, the
weights file that ONNX Runtime memory-maps made resident before timing (rechar.memory); on
CUDA, inputs and outputs bound on the device (IO binding: one binding per batch of the input
pool, made before timing, cycled), since feeding numpy arrays cost up to 13x at large batches on
the GPU machine, and TF32 off so that fp32 results stay comparable. On the CPU the pool's numpy
feeds are passed to ``run`` as they are (ONNX Runtime reads them in place).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from rechar import hostinfo
from rechar.runners.traces import PROFILE_WARMUP, ort_ops
from rechar.exporters import ExportResult, node_modules
from rechar.memory import prefault_mappings
from rechar.models import RecModel
from rechar.runners.base import Backend, ProfileResult


class OrtCpuBackend(Backend):
    name = "ort-cpu"
    framework = "onnxruntime"
    device = "cpu"
    provider = "CPUExecutionProvider"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if cls.provider not in ort.get_available_providers():
            return f"onnxruntime {ort.__version__} has no {cls.provider} (providers: {', '.join(ort.get_available_providers())})"
        return None

    def session_options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.options.threads
        so.inter_op_num_threads = 1
        return so

    def providers(self) -> list:
        return [self.provider]

    def load(self, model: RecModel, export: ExportResult) -> None:
        self.onnx_path = export.onnx_path
        self.session = ort.InferenceSession(str(export.onnx_path), self.session_options(), providers=self.providers())
        self.output_names = [o.name for o in self.session.get_outputs()]

    def prepare(self, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        return self._bind(self.session, batches)

    def _bind(self, session: ort.InferenceSession, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        """The inference call of ``session`` cycling through ``batches`` (for the timed and the
        profiled session)."""
        run, names, feeds = session.run, self.output_names, itertools.cycle(batches)
        return lambda: run(names, next(feeds))

    def profile(self, batches: Sequence[dict[str, np.ndarray]], iterations: int, trace_dir: Path) -> ProfileResult:
        # ORT profiles a whole session's life: a second session, same options plus profiling,
        # keeps the timed one unprofiled. Its warm-up runs are in the trace; ort_ops drops them.
        options = self.session_options()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(trace_dir) / "ort")
        session = ort.InferenceSession(str(self.onnx_path), options, providers=self.providers())
        prefault_mappings(self.onnx_path.parent)  # the second session maps the weights again
        try:
            call = self._bind(session, batches)
            for _ in range(PROFILE_WARMUP + iterations):
                call()
        finally:
            path = Path(session.end_profiling()).replace(Path(trace_dir) / "ort_trace.json")
            del session
        modules = node_modules(onnx.load(str(self.onnx_path), load_external_data=False))
        return ProfileResult(path, ort_ops(path, modules, runs=iterations), iterations)

    def outputs(self, result: Any) -> np.ndarray:
        return result[0]

    def settings(self) -> dict[str, Any]:
        return {"threads": self.options.threads, "graph_optimization": "ORT_ENABLE_ALL",
                "providers": self.session.get_providers()}

    def close(self) -> None:
        del self.session


class OrtCudaBackend(OrtCpuBackend):
    name = "ort-cuda"
    device = "cuda"
    provider = "CUDAExecutionProvider"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = super().unavailable_reason()
        if reason:
            return reason + "; install onnxruntime-gpu (see the README)"
        try:
            import torch

            if not torch.cuda.is_available():
                return "no CUDA device visible"
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        return None

    @classmethod
    def cache_bytes(cls) -> int | None:
        return hostinfo.gpu_l2_cache_bytes()

    def providers(self) -> list:
        return [(self.provider, {"use_tf32": 0}), "CPUExecutionProvider"]

    def _bind(self, session: ort.InferenceSession, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        bindings, device_inputs = [], []
        for inputs in batches:
            binding = session.io_binding()
            values = {n: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for n, v in inputs.items()}
            for name, value in values.items():
                binding.bind_ortvalue_input(name, value)
            for name in self.output_names:
                binding.bind_output(name, "cuda")
            bindings.append(binding)
            device_inputs.append(values)
        run, feeds = session.run_with_iobinding, itertools.cycle(bindings)

        def call():
            binding = next(feeds)
            run(binding)
            binding.synchronize_outputs()
            return binding

        call.device_inputs = device_inputs  # the device copies live as long as the call
        return call

    def outputs(self, result: Any) -> np.ndarray:
        return result.copy_outputs_to_cpu()[0]

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "io_binding": True, "use_tf32": False}
