"""TensorFlow executing the exported ONNX graph through rechar's own lowering (onnx_to_tf):
``tf`` on TensorFlow's executor, ``tf-xla`` compiled with XLA (``jit_compile``).

Best practice: one ``tf.function`` with an open batch dimension, weights as variables, inputs
placed on the device before timing (every batch of the pool as tensors, cycled), intra-op threads
set before TensorFlow starts, and the timed call is the function's *concrete* function: calling
the ``tf.function`` itself adds its polymorphic dispatch (argument canonicalisation and trace
lookup, 80-110 µs per call measured here), which a server does not pay (TF Serving runs the
signature's graph directly). TensorFlow runs on the GPU when it sees one.
"""

from __future__ import annotations

import importlib.util
import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import onnx

from rechar.stacks.tf_trace import tf_ops, xla_instructions
from rechar.stacks.tracing import PROFILE_WARMUP
from rechar.exporters import ExportResult, node_modules
from rechar.models import RecModel
from rechar.stacks.base import Backend, ProfileResult


class TFBackend(Backend):
    name = "tf"
    framework = "tensorflow"
    jit_compile: ClassVar[bool] = False
    threads_per_process = True

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("tensorflow") is None:
            return "TensorFlow is not installed (pip install 'rechar[tf]')"
        return None

    def load(self, model: RecModel, export: ExportResult) -> None:
        import tensorflow as tf

        from rechar.stacks.onnx_to_tf import lower

        # Thread pools are fixed when TensorFlow's runtime starts: set them before any op runs.
        try:
            tf.config.threading.set_intra_op_parallelism_threads(self.options.threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # TensorFlow already ran in this process (not in a sweep worker): settings() says what it uses
        self.tf = tf
        self.device = "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
        self.onnx_path = export.onnx_path
        self.lowered = lower(onnx.load(str(export.onnx_path)), jit_compile=self.jit_compile)
        self.input_names = self.lowered.input_names

    def prepare(self, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        tf = self.tf
        with tf.device("/GPU:0" if self.device == "gpu" else "/CPU:0"):
            placed = [tuple(tf.identity(tf.constant(inputs[n])) for n in self.input_names) for inputs in batches]
        fn = self.lowered.function.get_concrete_function(*placed[0])
        feeds = itertools.cycle(placed)
        if self.device == "gpu":
            # Kernels are asynchronous; reading one output element waits for the GPU.
            def call():
                out = fn(*next(feeds))
                out[0][:1].numpy()
                return out

            return call
        return lambda: fn(*next(feeds))

    def outputs(self, result: Any) -> np.ndarray:
        return result[0].numpy()

    def settings(self) -> dict[str, Any]:
        threading = self.tf.config.threading
        intra = threading.get_intra_op_parallelism_threads()  # 0: TensorFlow's default, all cores
        return {"threads": intra or "TensorFlow default",
                "inter_op_threads": threading.get_inter_op_parallelism_threads(),
                "jit_compile": self.jit_compile, "call": "concrete function", "lowering": "rechar.onnx_to_tf"}

    def profile(self, batches: Sequence[dict[str, np.ndarray]], iterations: int, trace_dir: Path) -> ProfileResult:
        call = self.prepare(batches)
        for _ in range(PROFILE_WARMUP):
            call()
        profiler = self.tf.profiler.experimental
        with tempfile.TemporaryDirectory() as logdir:
            profiler.start(logdir, profiler.ProfilerOptions(
                host_tracer_level=_Int(3), python_tracer_level=_Int(0), device_tracer_level=_Int(1), delay_ms=_Int(0)))
            try:
                for _ in range(iterations):
                    call()
            finally:
                profiler.stop()
            # The profiler writes logdir/plugins/profile/<timestamp>/<host>.xplane.pb.
            [xplane] = Path(logdir).glob("plugins/profile/*/*.xplane.pb")
            path = Path(trace_dir) / "tf.xplane.pb"
            shutil.copyfile(xplane, path)
        hlo = None
        if self.jit_compile:  # the HLO module that ran, to map XLA's instructions back to TF ops
            example = [self.tf.constant(batches[0][n]) for n in self.input_names]
            text = self.lowered.function.experimental_get_compiler_ir(*example)(stage="optimized_hlo")
            (Path(trace_dir) / "xla_hlo.txt").write_text(text)
            hlo = xla_instructions(text)
        modules = node_modules(onnx.load(str(self.onnx_path), load_external_data=False))
        return ProfileResult(path, tf_ops(path, self.lowered.scope_to_node, modules, hlo), iterations)

    def peak_device_bytes(self) -> int | None:
        if self.device != "gpu":
            return None
        return self.tf.config.experimental.get_memory_info("GPU:0")["peak"]

    def close(self) -> None:
        del self.lowered


class TFXlaBackend(TFBackend):
    """The same lowered function compiled by XLA (per input shape, on first call)."""

    name = "tf-xla"
    jit_compile = True
    static_shapes = True


class _Int:
    """An int option for TensorFlow's profiler. Host tracer level 3 is needed: after ~70 calls
    TF's executor deems ops under a few µs cheap and traces them only at level 3, so at the
    default level 2 they drop out of the profile. TF 2.21's binding casts each option value to
    bool first, which turns any Python int into True (the option is then ignored, with a
    warning); an object with ``__index__`` but no ``__bool__`` fails that cast and passes the
    int one."""

    def __init__(self, value: int):
        self.value = value

    def __index__(self) -> int:
        return self.value
