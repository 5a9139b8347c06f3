"""TensorFlow executing the exported ONNX graph through rechar's own lowering (onnx_to_tf).

Best practice: one compiled ``tf.function`` with an open batch dimension (optionally XLA,
``jit_compile``), weights as variables, inputs placed on the device before timing, intra-op
threads set before TensorFlow starts. TensorFlow runs on the GPU when it sees one.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

import numpy as np
import onnx

from rechar.exporters import ExportResult
from rechar.models import RecModel
from rechar.runners.base import Backend


class TFBackend(Backend):
    name = "tf"
    framework = "tensorflow"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("tensorflow") is None:
            return "TensorFlow is not installed (pip install 'rechar[tf]')"
        return None

    def load(self, model: RecModel, export: ExportResult) -> None:
        import tensorflow as tf

        from rechar.runners.onnx_to_tf import lower

        # Thread pools are fixed when TensorFlow's runtime starts: set them before any op runs.
        tf.config.threading.set_intra_op_parallelism_threads(self.options.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        self.tf = tf
        self.device = "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
        self.lowered = lower(onnx.load(str(export.onnx_path)), jit_compile=self.options.jit_compile)
        self.input_names = self.lowered.input_names

    def prepare(self, inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
        tf = self.tf
        with tf.device("/GPU:0" if self.device == "gpu" else "/CPU:0"):
            tensors = [tf.identity(tf.constant(inputs[n])) for n in self.input_names]
        fn = self.lowered.function
        if self.device == "gpu":
            # Kernels are asynchronous; reading one output element waits for the GPU.
            def call():
                out = fn(*tensors)
                out[0][:1].numpy()
                return out

            return call
        return lambda: fn(*tensors)

    def outputs(self, result: Any) -> np.ndarray:
        return result[0].numpy()

    def settings(self) -> dict[str, Any]:
        return {"threads": self.options.threads, "jit_compile": self.options.jit_compile, "lowering": "rechar.onnx_to_tf"}

    def peak_device_bytes(self) -> int | None:
        if self.device != "gpu":
            return None
        return self.tf.config.experimental.get_memory_info("GPU:0")["peak"]

    def close(self) -> None:
        del self.lowered
