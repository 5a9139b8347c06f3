"""OpenVINO runtime on the verified ONNX export, CPU plugin (``openvino``).

Best practice for latency: the ONNX model read by OpenVINO's ONNX frontend and reshaped to the
point's batch size (static shapes: one compiled model per batch size, compiled before timing,
its seconds recorded apart from the latency), the ``LATENCY`` performance hint,
``INFERENCE_NUM_THREADS`` from ``--threads``, and one infer request fed the pool's numpy arrays
with ``share_inputs`` and ``share_outputs`` (no copies in the timed call).

``INFERENCE_PRECISION_HINT`` is ``f32``: on CPUs with bf16 instructions (this one has them)
OpenVINO's default is bf16 compute, which measured errors up to 8.8e-4 against ONNX Runtime here,
i.e. a different precision rather than a different stack. Reduced precision is a dimension of
its own, compared at equal precision on every stack: ``openvino@bf16`` sets the hint to ``bf16``
(where the CPU has bf16 instructions). Its int8 needs a model quantized by NNCF, which rechar
does not set up: ``openvino@int8`` is skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from rechar import hostinfo
from rechar.exporters import ExportResult, node_modules
from rechar.models import RecModel
from rechar.stacks.base import Backend, ProfileResult
from rechar.stacks.openvino_trace import openvino_ops
from rechar.stacks.tracing import PROFILE_WARMUP


class OpenVinoBackend(Backend):
    name = "openvino"
    framework = "openvino"
    device = "cpu"
    static_shapes = True
    precisions = {"fp32": "INFERENCE_PRECISION_HINT f32", "bf16": "INFERENCE_PRECISION_HINT bf16 (its default on such CPUs)"}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return "OpenVINO is not installed (pip install 'rechar[openvino]')"
        return None

    @classmethod
    def precision_reason(cls, precision: str) -> str | None:
        if precision == "int8":
            return "OpenVINO's int8 needs a model quantized by NNCF (post-training quantization), not set up in rechar"
        if precision == "bf16" and not hostinfo.cpu_has_bf16():
            return "this CPU has no bf16 instructions (avx512_bf16 or amx_bf16)"
        return super().precision_reason(precision)

    def load(self, model: RecModel, export: ExportResult) -> None:
        import openvino as ov

        self.ov = ov
        self.core = ov.Core()
        self.onnx_path = export.onnx_path
        self.model = self.core.read_model(str(export.onnx_path))
        self.current: tuple[int, Any] | None = None  # (batch, compiled model): one held at a time
        self.compiles: dict[int, dict[str, Any]] = {}

    def properties(self, profiling: bool = False) -> dict[str, Any]:
        props = {"INFERENCE_PRECISION_HINT": self._hint(), "PERFORMANCE_HINT": "LATENCY",
                 "INFERENCE_NUM_THREADS": self.options.threads}
        if profiling:
            props["PERF_COUNT"] = True
        return props

    def _compile(self, batch: int, profiling: bool = False):
        """The model compiled for ``batch``; the timed one is kept until another batch size is
        asked for (a compiled model holds its own copy of the weights)."""
        if not profiling and self.current and self.current[0] == batch:
            return self.current[1]
        self.current = None
        ov = self.ov
        self.model.reshape({inp.get_any_name(): ov.PartialShape([batch, *list(inp.get_partial_shape())[1:]])
                            for inp in self.model.inputs})
        start = time.perf_counter()
        compiled = self.core.compile_model(self.model, "CPU", self.properties(profiling))
        if not profiling:
            self.compiles.setdefault(batch, {"compile_seconds": time.perf_counter() - start})
            self.current = (batch, compiled)
        return compiled

    def prepare(self, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        return self._bind(self._compile(_batch(batches)), batches)

    @staticmethod
    def _bind(compiled, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        # Tensors over the batches' memory made before timing (infer would wrap each array anew on
        # every call: benchmarks/prepared_feeds.py, NCF at batch 1, 1.4x the prepared call's p50).
        import openvino as ov

        request = compiled.create_infer_request()
        tensors = [{name: ov.Tensor(np.ascontiguousarray(value), shared_memory=True) for name, value in inputs.items()}
                   for inputs in batches]
        infer, feeds = request.infer, itertools.cycle(tensors)
        return lambda: infer(next(feeds), share_inputs=True, share_outputs=True)

    def outputs(self, result: Any) -> np.ndarray:
        return np.array(result[0])  # a copy: shared outputs are overwritten by the next call

    def compile_info(self, batch: int) -> dict[str, Any]:
        return self.compiles.get(batch, {})

    def profile(self, batches: Sequence[dict[str, np.ndarray]], iterations: int, trace_dir: Path) -> ProfileResult:
        # PERF_COUNT is a compile-time property: a second compiled model, as ORT's second session.
        compiled = self._compile(_batch(batches), profiling=True)
        request = compiled.create_infer_request()
        feeds = itertools.cycle(batches)
        for _ in range(PROFILE_WARMUP):
            request.infer(next(feeds), share_inputs=True)
        records = []
        for i in range(iterations):
            request.infer(next(feeds), share_inputs=True)
            records += [{"iteration": i, "node_name": p.node_name, "node_type": p.node_type, "exec_type": p.exec_type,
                         "status": str(p.status).rpartition(".")[2], "real_us": p.real_time.total_seconds() * 1e6,
                         "cpu_us": p.cpu_time.total_seconds() * 1e6} for p in request.get_profiling_info()]
        fused = {op.get_friendly_name(): op.get_rt_info()["originalLayersNames"].astype(str)
                 for op in compiled.get_runtime_model().get_ops() if "originalLayersNames" in op.get_rt_info()}
        path = Path(trace_dir) / "openvino_profile.json"
        path.write_text(json.dumps({"nodes": records, "original_layers": fused}))
        graph = onnx.load(str(self.onnx_path), load_external_data=False)
        types = {node.name: node.op_type for node in graph.graph.node}
        return ProfileResult(path, openvino_ops(path, node_modules(graph), types), iterations)

    def _hint(self) -> str:
        return {"fp32": "f32", "bf16": "bf16"}[self.options.precision]

    def settings(self) -> dict[str, Any]:
        return {"threads": self.options.threads, "precision": self._hint(), "performance_hint": "LATENCY",
                "shapes": "static per batch size", "openvino": self.ov.get_version()}

    def close(self) -> None:
        self.current = None
        del self.model


def _batch(batches: Sequence[dict[str, np.ndarray]]) -> int:
    return len(next(iter(batches[0].values())))
