"""The one interface every backend implements.

A backend loads an exported model (or, for PyTorch, the model itself), places a pool of input
batches on its device (rechar.measure.inputs), and hands back a zero-argument callable that runs
one inference on the next batch of the pool, cycling: that call is the only thing inside the
timed region. Adding a backend is one new module with a subclass
and one line in ``rechar.stacks.BACKENDS``.
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import pandas as pd

from rechar import hostinfo
from rechar.exporters import ExportResult
from rechar.models import RecModel


#: Columns of the raw per-operator table a backend's profile() returns (totals over the trace).
#: ``members``: for a kernel that fused several ops, a tuple of (native op, node, layer) per member
#: (the taxonomy attributes it from them); () otherwise.
PROFILE_COLUMNS = ["native_op", "node", "layer", "calls", "self_us", "members"]


@dataclasses.dataclass
class ProfileResult:
    trace_path: Path  # the framework's raw trace, kept in the run folder
    ops: pd.DataFrame  # PROFILE_COLUMNS: one row per (native_op, node, layer, members), totals over the trace
    iterations: int  # profiled model calls the totals cover
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # recorded with the profile (e.g. time basis)


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    threads: int  # intra-op threads (inter-op parallelism is 1: these graphs are chains)
    precision: str = "fp32"  # fp32 | bf16 | int8 (rechar.stacks.variants): what the backend's precisions say


class Backend(abc.ABC):
    name: ClassVar[str]  # e.g. "ort-cuda"
    framework: ClassVar[str]  # torch | onnxruntime | tensorflow
    device: str = "cpu"  # cpu | cuda | gpu; may be set at load time (TF picks its own device)
    #: False: load() gets model=None, so that the worker can free the PyTorch weights first
    #: (the framework holds its own copy; at paper scale that is gigabytes).
    uses_torch_model: ClassVar[bool] = False
    #: True: one compiled artefact per batch size, so a server pads batches to fixed sizes
    #: (rechar.serving pads sub-batches to buckets instead of compiling every size it meets).
    static_shapes: ClassVar[bool] = False
    #: True: the intra-op thread pool is one per process (TensorFlow), so parallel executors
    #: share one instance and its pool instead of each loading its own.
    threads_per_process: ClassVar[bool] = False
    #: Precisions this stack offers -> what each means on it (its own best practice). Asked for
    #: another, the backend is skipped with ``precision_reason``'s line, never run in fp32.
    precisions: ClassVar[dict[str, str]] = {"fp32": "fp32 weights and arithmetic"}

    def __init__(self, options: BackendOptions):
        self.options = options

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None if this backend can run here, else why not (one line)."""
        return None

    @classmethod
    def precision_reason(cls, precision: str) -> str | None:
        """None if this stack offers ``precision`` here, else why not (one line)."""
        if precision in cls.precisions:
            return None
        return f"{cls.name} offers {', '.join(cls.precisions)}, not {precision}"

    def weight_bytes(self) -> dict[str, int] | None:
        """The model's weights as this stack holds them: ``weight_bytes``, split into
        ``embedding_weight_bytes`` and ``dense_weight_bytes`` (rechar.stacks.variants); None
        where the stack does not say."""
        return None

    @abc.abstractmethod
    def load(self, model: RecModel, export: ExportResult) -> None:
        """Load the model (None unless ``uses_torch_model``); ``export`` is the verified ONNX
        export of the same weights."""

    @classmethod
    def cache_bytes(cls) -> int | None:
        """The last-level cache that embedding rows compete for on this backend's device (the
        input pool is sized against it); None where the machine does not say."""
        return hostinfo.last_level_cache_bytes()

    @abc.abstractmethod
    def prepare(self, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        """Place every batch on the device; return a call that runs one inference on the next
        batch, in order and cycling back to the first (and waits for the device to finish, so
        that timing it is honest). Only the step to the next batch may join the framework call
        in the timed region: no conversion, no copy."""

    @abc.abstractmethod
    def outputs(self, result: Any) -> np.ndarray:
        """The first model output of a call's ``result`` as a numpy array (not timed)."""

    def profile(self, batches: Sequence[dict[str, np.ndarray]], iterations: int, trace_dir: Path) -> ProfileResult:
        """Run ``iterations`` inferences, cycling through ``batches`` as the timed call does, under
        the framework's own profiler (a pass separate from timing: profilers slow runs 2-10x); keep the raw trace in ``trace_dir`` and return it
        parsed into one row per operator with the model layer (module path) it ran in."""
        raise NotImplementedError(f"backend {self.name} has no profiler support")

    def compile_info(self, batch: int) -> dict[str, Any]:
        """For stacks that compile per batch size: ``compile_seconds`` (never part of a latency)
        and ``compile_cache_hit`` of that batch size's artefact, recorded with the point."""
        return {}

    def enter_thread(self) -> None:
        """Called once in every further thread that will make prepared calls (rechar.serving's
        executors): per-thread framework state, such as PyTorch's inference mode and OpenMP
        thread count, is set up here."""

    def settings(self) -> dict[str, Any]:
        """The settings this backend runs with, recorded with every point."""
        return {"threads": self.options.threads}

    def peak_device_bytes(self) -> int | None:
        """Peak device memory since load, where the framework reports it."""
        return None

    def close(self) -> None:
        """Free what load() took. Stacks loaded together in one process close in reverse order:
        a stack restores the process state (PyTorch's grad mode) it found when it loaded."""
