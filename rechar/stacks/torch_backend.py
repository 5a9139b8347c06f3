"""Eager PyTorch, on the CPU (``torch``) or a CUDA device (``torch-cuda``).

Best practice for inference: ``inference_mode``, the fused ``embedding_bag`` kernel (the model's
eager form), inputs already on the device (every batch of the pool as tensors made before timing,
cycled by ``itertools.cycle``), and for CUDA a synchronisation inside the timed call.

Precisions (``torch@bf16``, ``torch@int8``; rechar.stacks.variants): bf16 stores the FC
weights and embedding tables in bfloat16 and runs the matmuls and lookups in it (oneDNN's bf16
kernels, where the CPU has bf16 instructions), their results turned back to fp32, so that the
activations, the sigmoid and the predicted probabilities stay fp32 (autocast instead left the
probabilities in bf16: steps of 0.002 around 0.5, which reordered up to 42% of sample pairs of
DIEN against fp32); int8 is PyTorch's own production recipe for recommendation
models: FC layers quantized dynamically (``torch.ao.quantization.quantize_dynamic``, int8
weights, activations quantized per call, the x86/FBGEMM engine) and embedding tables stored
8-bit row-wise (a scale and a bias per row) and read by the quantized ``embedding_bag_byte``
kernel.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from torch.profiler import ProfilerActivity

from rechar import hostinfo
from rechar.stacks.torch_trace import TORCH_MODULE_PREFIX, torch_ops
from rechar.stacks.tracing import PROFILE_WARMUP
from rechar.exporters import ExportResult
from rechar.models import RecModel
from rechar.models.layers import EmbeddingTable
from rechar.stacks.base import Backend, ProfileResult
from rechar.stacks.variants import weight_record


class TorchBackend(Backend):
    name = "torch"
    framework = "torch"
    device = "cpu"
    uses_torch_model = True
    profiler_activities: ClassVar[list[ProfilerActivity]] = [ProfilerActivity.CPU]
    precisions = {
        "fp32": "fp32 weights and arithmetic",
        "bf16": "FC weights and tables in bf16, matmuls and lookups in bf16, activations and outputs in fp32",
        "int8": "FC layers quantized dynamically (int8 weights, FBGEMM/x86), embedding tables 8-bit row-wise",
    }

    @classmethod
    def precision_reason(cls, precision: str) -> str | None:
        if precision == "bf16" and cls.device == "cpu" and not hostinfo.cpu_has_bf16():
            return "this CPU has no bf16 instructions (avx512_bf16 or amx_bf16): bf16 would be emulated"
        return super().precision_reason(precision)

    def load(self, model: RecModel, export: ExportResult) -> None:
        torch.set_num_threads(self.options.threads)
        model = model.to(self.device).eval()
        self.model = {"int8": quantize_int8, "bf16": to_bf16}.get(self.options.precision, lambda m: m)(model)
        self.input_names = model.input_names
        self._thread_modes: list = []  # kept alive: a dropped guard would reset its thread's mode
        # Entered once for the worker's life: a context per call would be timed with the model.
        self._modes = self._enter_modes()

    def _enter_modes(self) -> list:
        modes = [torch.inference_mode()]
        for mode in modes:
            mode.__enter__()
        return modes

    def enter_thread(self) -> None:
        # Grad mode and the OpenMP team size are per thread in PyTorch.
        torch.set_num_threads(self.options.threads)
        self._thread_modes.extend(self._enter_modes())

    def weight_bytes(self) -> dict[str, int] | None:
        return torch_weight_bytes(self.model)

    def prepare(self, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        feeds, model = itertools.cycle(self._place(batches)), self.model
        return lambda: model(*next(feeds))

    def _place(self, batches: Sequence[dict[str, np.ndarray]]) -> list[tuple]:
        """The batches as tensors on the device, one tuple per batch."""
        return [tuple(torch.from_numpy(inputs[n]).to(self.device) for n in self.input_names) for inputs in batches]

    def outputs(self, result: Any) -> np.ndarray:
        return result.float().cpu().numpy()

    def settings(self) -> dict[str, Any]:
        settings = {"threads": torch.get_num_threads(), "inference_mode": True, "embedding": "embedding_bag",
                    "precision": self.options.precision}
        if self.options.precision == "int8":
            settings.update(quantized_engine=torch.backends.quantized.engine, embedding="embedding_bag_byte_rowwise")
        return settings

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
        for mode in reversed(self._modes):  # the loading thread's (the others' end with their threads)
            mode.__exit__(None, None, None)
        del self.model


class Int8EmbeddingTable(torch.nn.Module):
    """An embedding table stored 8-bit row-wise (each row its int8 values, a scale and a bias:
    ``embedding_bag_byte_prepack``), looked up by PyTorch's quantized ``embedding_bag`` kernel;
    unpooled lookups are bags of one row."""

    def __init__(self, table: EmbeddingTable):
        super().__init__()
        self.register_buffer("packed", torch.ops.quantized.embedding_bag_byte_prepack(table.weight.detach().float()))
        self.pooled, self.dim = table.pooled, table.weight.shape[1]
        self._offsets: dict[tuple, torch.Tensor] = {}  # bag starts per (ids, bag size): made once, not per call

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.contiguous().reshape(-1)  # a column of the model's id tensor is strided
        step = ids.shape[1] if self.pooled else 1
        key = (flat.numel(), step, flat.dtype)
        offsets = self._offsets.get(key)
        if offsets is None:
            offsets = self._offsets[key] = torch.arange(0, flat.numel(), step, dtype=flat.dtype, device=flat.device)
        out = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(self.packed, flat, offsets, False, 0, False,
                                                                      None, None, False)
        return out if self.pooled else out.reshape(*ids.shape, self.dim)


class Bf16Linear(torch.nn.Module):
    """A Linear layer with bf16 weights: its matmul in bf16, its result back in fp32."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight = torch.nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.bias = (torch.nn.Parameter(linear.bias.detach().to(torch.bfloat16), requires_grad=False)
                     if linear.bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.to(torch.bfloat16), self.weight, self.bias).float()


class Bf16EmbeddingTable(torch.nn.Module):
    """An embedding table stored in bf16, looked up by the same kernels, the rows back in fp32."""

    def __init__(self, table: EmbeddingTable):
        super().__init__()
        self.table = table
        table.weight = torch.nn.Parameter(table.weight.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids).float()


def _replace(model: torch.nn.Module, kind: type, make) -> None:
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, make(module))


def to_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """The model with bf16 FC layers and tables (in place)."""
    _replace(model, torch.nn.Linear, Bf16Linear)
    _replace(model, EmbeddingTable, Bf16EmbeddingTable)
    return model


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """The model with 8-bit row-wise tables and dynamically quantized FC layers (in place: a copy
    would hold the fp32 weights twice)."""
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    _replace(model, EmbeddingTable, Int8EmbeddingTable)
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def torch_weight_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of the model's weights as they are held: tables (fp32 or packed 8-bit rows) and the
    rest (fp32 parameters, or int8 weights and fp32 biases of quantized FC layers)."""
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

    embedding = dense = 0
    for module in model.modules():
        if isinstance(module, Int8EmbeddingTable):
            embedding += module.packed.numel() * module.packed.element_size()
        elif isinstance(module, EmbeddingTable):
            embedding += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, QuantizedLinear):
            weight, bias = module._weight_bias()
            dense += weight.numel() * weight.element_size() + (bias.numel() * bias.element_size() if bias is not None else 0)
        else:
            dense += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    return weight_record(embedding, dense)


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
    precisions = {"fp32": "fp32 weights and arithmetic (TF32 off)",
                  "bf16": "FC weights and tables in bf16, matmuls and lookups in bf16, activations and outputs in fp32"}
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
        # fp32 means fp32: TF32 off for matmuls (PyTorch's default) and for cuDNN (whose default
        # is on: DIEN's GRU would run in TF32), as ONNX Runtime's CUDA provider runs (use_tf32=0).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        super().load(model, export)
        torch.cuda.reset_peak_memory_stats()

    def prepare(self, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        feeds, model, sync = itertools.cycle(self._place(batches)), self.model, torch.cuda.synchronize

        def call():
            out = model(*next(feeds))
            sync()  # kernels are asynchronous: the call ends when the GPU is done
            return out

        return call

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "gpu": torch.cuda.get_device_name(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                "tf32_cudnn": torch.backends.cudnn.allow_tf32}

    def peak_device_bytes(self) -> int | None:
        return torch.cuda.max_memory_allocated()


class TorchCompileBackend(TorchBackend):
    """The same model compiled by ``torch.compile`` with Inductor: one static-shape artefact per
    batch size (what a server runs; a new batch size recompiles), compiled on the point's first
    call before timing, its seconds recorded apart from the latency. Inductor's caches live with
    the model's export (``<export>/inductor``), so a resumed or repeated run reuses the compiled
    kernels (``compile_cache_hit``)."""

    name = "torch-compile"
    static_shapes = True
    compile_mode: ClassVar[str | None] = None  # Inductor's default mode
    precisions = {"fp32": "fp32 weights and arithmetic"}  # quantized models through Inductor: not set up

    @classmethod
    def unavailable_reason(cls) -> str | None:
        compiler = os.environ.get("CXX", "g++")
        if shutil.which(compiler) is None and shutil.which("c++") is None:
            return f"no C++ compiler ({compiler} or c++) on PATH: Inductor generates C++ for the CPU"
        return None

    def load(self, model: RecModel, export: ExportResult) -> None:
        super().load(model, export)
        # Read by Inductor whenever it compiles: set before the first compile of this worker.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((export.path / "inductor").resolve())
        torch._dynamo.config.recompile_limit = 64  # one artefact per batch size of the sweep
        # Trace nn.GRU instead of breaking the graph there (Dynamo's documented switch): DIEN then
        # compiles to one graph, not five, and runs 1.4x faster at batch 64 (6.0 -> 4.3 ms, eager
        # 6.1 ms, measured here), for a longer first compile.
        torch._dynamo.config.allow_rnn = True
        self.compiled = torch.compile(self.model, dynamic=False, mode=self.compile_mode)
        self.compiles: dict[int, dict[str, Any]] = {}

    def prepare(self, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        placed, compiled = self._place(batches), self.compiled
        self._compile(placed[0], batches)
        feeds = itertools.cycle(placed)
        return lambda: compiled(*next(feeds))

    def _compile(self, example: tuple, batches) -> None:
        """Compile for this batch size (the first call does), once per batch size."""
        batch = _batch(batches)
        if batch in self.compiles:
            return
        from torch._dynamo.utils import counters

        hits, graphs = counters["inductor"]["fxgraph_cache_hit"], counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        self.compiled(*example)
        self.compiles[batch] = {"compile_seconds": time.perf_counter() - start,
                                "compile_cache_hit": counters["inductor"]["fxgraph_cache_hit"] > hits,
                                "compiled_graphs": counters["stats"]["unique_graphs"] - graphs}

    def compile_info(self, batch: int) -> dict[str, Any]:
        return self.compiles.get(batch, {})

    def profile(self, batches: Sequence[dict[str, np.ndarray]], iterations: int, trace_dir: Path) -> ProfileResult:
        """A profile of kernels, not of one opaque compiled region: the profiled artefact is
        compiled afresh (a cache hit records no provenance) with Inductor's kernel profiling,
        which wraps each generated kernel in a profiler range, and provenance tracking, which
        maps kernels to the FX nodes, and so modules, they fused."""
        import torch._inductor.config as inductor_config

        provenance = InductorProvenance(self.model)
        torch.compiler.reset()
        try:
            with inductor_config.patch({"cpp.enable_kernel_profile": True, "trace.provenance_tracking_level": 1,
                                        "fx_graph_cache": False,
                                        "post_grad_custom_post_pass": provenance.record_graph}), provenance.capture():
                compiled = torch.compile(self.model, dynamic=False, mode=self.compile_mode)
                feeds = itertools.cycle(self._place(batches))
                for _ in range(PROFILE_WARMUP):
                    compiled(*next(feeds))
            with torch.profiler.profile(activities=self.profiler_activities) as prof:
                for _ in range(iterations):
                    compiled(*next(feeds))
        finally:  # the timed artefacts of later batch sizes compile as before (from the cache)
            torch.compiler.reset()
            self.compiled = torch.compile(self.model, dynamic=False, mode=self.compile_mode)
            self.compiles.pop(_batch(batches), None)
        path = Path(trace_dir) / "torch_trace.json"
        prof.export_chrome_trace(str(path))
        kernels = provenance.to_dict()
        (Path(trace_dir) / "inductor_provenance.json").write_text(json.dumps(kernels))
        return ProfileResult(path, torch_ops(path, kernels), iterations)

    def settings(self) -> dict[str, Any]:
        return {"threads": torch.get_num_threads(), "inference_mode": True, "compiler": "inductor",
                "mode": self.compile_mode or "default", "dynamic": False}


def _batch(batches: Sequence[dict[str, np.ndarray]]) -> int:
    return len(next(iter(batches[0].values())))


class InductorProvenance:
    """What Inductor knows, while it compiles, of the kernels it generates: the post-grad FX nodes
    each kernel fused (its provenance tracking) and the module each node came from (the node's
    ``nn_module_stack``), per compiled graph (a model with graph breaks compiles several, e.g.
    DIEN around its ``nn.GRU``). No public API hands out the kernel -> node mapping, so this uses
    two of Inductor's hooks: a post-grad custom pass (records every node of the graph being
    compiled) and the provenance dump at the end of each graph's compile (``torch._inductor.debug``,
    wrapped to copy the mapping under the graph's id, which the profiler's kernel names carry).
    Should a torch release change them, the profile still parses: its kernels then have no
    members and no layer, which the category shares show."""

    def __init__(self, model: torch.nn.Module):
        # Dynamo keys a node's module stack by module identity; the names it gives are relative
        # to the frame it compiled, which is a submodule after a graph break.
        self.paths = {str(id(module)): path for path, module in model.named_modules()}
        self.pending: dict[str, tuple[str, str]] = {}  # post-grad node -> (ATen op, module path)
        self.graphs: dict[int, dict[str, Any]] = {}

    def record_graph(self, graph) -> None:
        self.pending = {}
        for node in graph.nodes:
            if node.op == "call_function":
                stack = node.meta.get("nn_module_stack") or {}
                key, (name, _) = list(stack.items())[-1] if stack else (None, ("", None))
                self.pending[node.name] = (_aten_name(node.target), self.paths.get(key) or self._path(name))

    def _path(self, qualified: str) -> str:
        """A module path from Dynamo's name for it, which is relative to the compiled frame: the
        model's one module path that is it or ends in it."""
        relative = _module_path(qualified)
        matches = [p for p in self.paths.values() if p == relative or p.endswith("." + relative)]
        return matches[0] if len(matches) == 1 else relative

    @contextlib.contextmanager
    def capture(self):
        import torch._inductor.debug as inductor_debug
        from torch._inductor.virtualized import V

        original = inductor_debug.dump_inductor_provenance_info

        def dump():
            kernels = dict(inductor_debug._inductor_triton_kernel_to_post_grad_node_info)
            self.graphs[V.graph.graph_id] = self._graph(kernels, self.pending)
            return original()

        inductor_debug.dump_inductor_provenance_info = dump
        try:
            yield self
        finally:
            inductor_debug.dump_inductor_provenance_info = original

    @staticmethod
    def _graph(kernel_nodes: dict[str, list[str]], nodes: dict[str, tuple[str, str]]) -> dict[str, Any]:
        """{"kernels": {kernel name: [[op, node, module], ...]}, "externs": [[ATen op, module], ...]
        in the order the graph calls them} of one graph."""
        kernels, externs = {}, []
        for key in sorted(kernel_nodes, key=lambda k: int(k.rpartition(":")[2] or 0)):
            name = key.rpartition(":")[0]
            members = [[nodes[n][0], n, nodes[n][1]] for n in kernel_nodes[key] if n in nodes]
            extern = _extern_op(name)
            if extern:
                externs.append([extern, members[0][2] if members else ""])
            else:
                kernels[name] = members
        return {"kernels": kernels, "externs": externs}

    def to_dict(self) -> dict[str, Any]:
        """{"graphs": {graph id: that graph's kernels and externs}} (JSON keys are strings)."""
        return {"graphs": {str(graph_id): graph for graph_id, graph in self.graphs.items()}}


def _module_path(qualified: str) -> str:
    """Dynamo's name of a submodule (``L['self'].attention.mlp.0``) -> its module path."""
    for root in ("L['self'].", "L['self']"):
        if qualified.startswith(root):
            return qualified[len(root):]
    return qualified


def _aten_name(target: Any) -> str:
    schema = getattr(target, "_schema", None)
    return schema.name if schema is not None else str(target)


def _extern_op(kernel: str) -> str | None:
    """The ATen op an extern kernel calls (``extern_kernels.addmm`` -> aten::addmm,
    ``torch.ops.aten._embedding_bag.default`` -> aten::_embedding_bag); None for generated code."""
    if kernel.startswith("extern_kernels."):
        return "aten::" + kernel.removeprefix("extern_kernels.")
    if kernel.startswith("torch.ops."):
        namespace, op = kernel.split(".")[2:4]
        return f"{namespace}::{op}"
    return None


class TorchCompileCudaBackend(TorchCompileBackend, TorchCudaBackend):
    """``torch.compile`` on a CUDA device in the mode that captures CUDA graphs
    (``reduce-overhead``: one graph launch per call instead of a launch per kernel)."""

    name = "torch-compile-cuda"
    device = "cuda"
    compile_mode = "reduce-overhead"
    profiler_activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return TorchCudaBackend.unavailable_reason() or TorchCompileBackend.unavailable_reason()

    def prepare(self, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        placed, compiled, sync = self._place(batches), self.compiled, torch.cuda.synchronize
        self._compile(placed[0], batches)
        feeds = itertools.cycle(placed)

        def call():
            out = compiled(*next(feeds))
            sync()
            return out

        return call

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "gpu": torch.cuda.get_device_name()}
