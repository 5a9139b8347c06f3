"""ONNX Runtime with the CPU (``ort-cpu``), CUDA (``ort-cuda``, ``ort-cuda-graph``) or TensorRT
(``ort-trt``) execution provider.

Best practice: full graph optimisation, explicit intra-op threads, sequential execution, the
weights file that ONNX Runtime memory-maps made resident before timing (rechar.memory); on
CUDA, inputs and outputs bound on the device (IO binding: one binding per batch of the input
pool, made before timing, cycled), since feeding numpy arrays cost up to 13x at large batches on
the GPU machine, and TF32 off so that fp32 results stay comparable. On the CPU the pool's numpy
feeds are passed to ``run`` as they are (ONNX Runtime reads them in place).

``ort-cpu@int8`` is ONNX Runtime's dynamic quantization (``onnxruntime.quantization.quantize_dynamic``)
of the exported graph: MatMul weights int8 (activations quantized per call: DynamicQuantizeLinear +
MatMulInteger, fused by the session into DynamicQuantizeMatMul) and embedding tables int8 per
tensor (a quantized Gather followed by DequantizeLinear). Its registry has no Gemm, which is how
the exporter writes FC layers, so they are rewritten as MatMul + Add first (``gemm_to_matmul``).
The quantized graph is cached beside the export (``<export>/int8``).

``ort-cuda-graph`` is the CUDA provider replaying one captured CUDA graph per batch size
(``enable_cuda_graph``: one launch per call instead of one per kernel; 30 against 72 µs per call
on a small MLP on the GPU machine). A graph reads fixed addresses, so each call copies its batch
of the pool, already on the device, into the bound input buffers on the session's stream before
the replay: the copy a server makes of a request, timed with the call. Whether ORT can capture a
graph is found at load by capturing it once (``_check_cuda_graph_capture``).

``ort-trt`` hands the graph to TensorRT (fp32, engines cached beside the export, one per batch
size), with the CUDA provider for what TensorRT does not take.

Profiles on CUDA: ONNX Runtime's profiler records host-side node events only, so the profiling
pass also runs under PyTorch's profiler, whose CUPTI collection sees every kernel of the process:
each kernel is given to the node whose host-side span its launch fell in (``ort_device_ops``).
The clock shift that aligns the two traces is checked against the clocks' reading and by the
kernels' names fitting their nodes' operators; a profile that fails a check stays host-side,
saying why (``device_view_refusal``).
"""

from __future__ import annotations

import ctypes
import itertools
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from rechar import hostinfo
from rechar.stacks.ort_trace import device_view_refusal, ort_device_ops, ort_ops, ort_start_on_wall_clock
from rechar.stacks.tracing import PROFILE_WARMUP
from rechar.exporters import ExportResult, node_modules
from rechar.memory import prefault_mappings
import rechar.models as models
from rechar.errors import one_line
from rechar.models import RecModel
from rechar.stacks.base import Backend, ProfileResult


class OrtCpuBackend(Backend):
    name = "ort-cpu"
    framework = "onnxruntime"
    device = "cpu"
    provider = "CPUExecutionProvider"
    precisions = {"fp32": "fp32 weights and arithmetic",
                  "int8": "dynamic quantization: int8 MatMul weights, int8 embedding tables (per tensor)"}

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
        self.exported_path = export.onnx_path
        self.onnx_path = int8_model(export) if self.options.precision == "int8" else export.onnx_path
        self.session = ort.InferenceSession(str(self.onnx_path), self.session_options(), providers=self.providers())
        self.output_names = [o.name for o in self.session.get_outputs()]

    def weight_bytes(self) -> dict[str, int] | None:
        return onnx_weight_bytes(self.onnx_path)

    def prepare(self, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        return self._bind(self.session, batches)

    def _bind(self, session: ort.InferenceSession, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        """The inference call of ``session`` cycling through ``batches`` (for the timed and the
        profiled session). Each batch is bound once, before timing, as OrtValues in an IO binding:
        ``session.run(names, {name: ndarray})`` would wrap every array anew inside the timed call,
        where PyTorch and TensorFlow get tensors made before (benchmarks/prepared_feeds.py: NCF at
        batch 1, 19.5 -> 16.3 us). Outputs are allocated by the run, as with ``session.run``."""
        bindings = []
        for inputs in batches:
            binding = session.io_binding()
            for name, value in inputs.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
            for name in self.output_names:
                binding.bind_output(name, "cpu")
            bindings.append(binding)
        run, feeds = session.run_with_iobinding, itertools.cycle(bindings)

        def call():
            binding = next(feeds)
            run(binding)
            return binding

        return call

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
            for _ in range(PROFILE_WARMUP):
                call()
            self._profiled_runs(call, iterations, trace_dir)
        finally:
            start_ns = session.get_profiling_start_time_ns()
            path = Path(session.end_profiling()).replace(Path(trace_dir) / "ort_trace.json")
            del session
        modules = node_modules(onnx.load(str(self.onnx_path), load_external_data=False))
        if self.onnx_path != self.exported_path:  # a rewritten graph (int8): its new nodes' origins are the export's
            exported = node_modules(onnx.load(str(self.exported_path), load_external_data=False))
            modules = {**exported, **{node: path for node, path in modules.items() if path}}
        return self._parse_profile(path, modules, iterations, start_ns, trace_dir)

    def _profiled_runs(self, call: Callable[[], Any], iterations: int, trace_dir: Path) -> None:
        for _ in range(iterations):
            call()

    def _parse_profile(self, path: Path, modules: dict[str, str], iterations: int, start_ns: int,
                       trace_dir: Path) -> ProfileResult:
        return ProfileResult(path, ort_ops(path, modules, runs=iterations), iterations)

    def outputs(self, result: Any) -> np.ndarray:
        return result.copy_outputs_to_cpu()[0]

    def settings(self) -> dict[str, Any]:
        return {"threads": self.options.threads, "graph_optimization": "ORT_ENABLE_ALL",
                "providers": self.session.get_providers()}

    def close(self) -> None:
        del self.session


class OrtCudaBackend(OrtCpuBackend):
    name = "ort-cuda"
    device = "cuda"
    provider = "CUDAExecutionProvider"
    precisions = {"fp32": "fp32 weights and arithmetic (TF32 off)"}

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

    def _profiled_runs(self, call: Callable[[], Any], iterations: int, trace_dir: Path) -> None:
        # CUPTI through PyTorch's profiler: kernels, copies and sets with the runtime calls that
        # launched them, on the wall clock (the clocks are read here, next to the runs, to place
        # ORT's start on it).
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(iterations):
                call()
        self._clocks_now = (time.time_ns(), time.monotonic_ns())
        prof.export_chrome_trace(str(Path(trace_dir) / "cupti_trace.json"))

    def _parse_profile(self, path: Path, modules: dict[str, str], iterations: int, start_ns: int,
                       trace_dir: Path) -> ProfileResult:
        device = Path(trace_dir) / "cupti_trace.json"
        try:
            ops, info = ort_device_ops(path, device, modules, iterations,
                                       ort_start_on_wall_clock(start_ns, *self._clocks_now))
        except ValueError as e:  # no CUPTI records: the host-side view, said so
            return ProfileResult(path, ort_ops(path, modules, runs=iterations), iterations,
                                 {"time_basis": "host", "device_trace_error": str(e)})
        refusal = device_view_refusal(info)
        if refusal:  # the kernels were not matched to their nodes: the host-side view, said so
            return ProfileResult(path, ort_ops(path, modules, runs=iterations), iterations,
                                 {"time_basis": "host", **info, "device_trace_error": refusal})
        return ProfileResult(path, ops, iterations, {"time_basis": "host+device", **info})

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "io_binding": True, "use_tf32": False}


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite each Gemm (A x B + C, no transposed A, alpha = beta = 1) with a constant B as
    MatMul + Add, transposing B where the Gemm did, so that ONNX Runtime's dynamic quantization
    (whose registry lists MatMul, not Gemm) reaches the FC layers; returns how many it rewrote."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    transposed: dict[str, str] = {}  # B -> its transposed copy (RNN steps share one B)
    nodes, rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        b = node.input[1]
        if attrs.get("transB", 0):
            if b not in transposed:
                transposed[b] = b + "/transposed"
                model.graph.initializer.append(
                    numpy_helper.from_array(numpy_helper.to_array(inits[b]).T.copy(), transposed[b]))
            b = transposed[b]
        bias = len(node.input) > 2 and node.input[2]  # C is optional, also as an empty name
        product = node.output[0] + "/matmul" if bias else node.output[0]
        name = node.name or node.output[0]  # node names are optional, output names unique
        nodes.append(helper.make_node("MatMul", [node.input[0], b], [product], name=name + "/MatMul"))
        if bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=name + "/Add"))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]  # B's untransposed originals go
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return rewritten


def int8_model(export: ExportResult) -> Path:
    """The export quantized dynamically to int8 (cached in ``<export>/int8``). Quantizing holds
    the model several times over (21 GB for a 4 GB paper-scale DLRM), so it runs in a process of
    its own: the worker's peak RSS stays that of the int8 session it times."""
    import multiprocessing

    target = Path(export.path) / "int8" / "model.onnx"
    if not target.exists():
        process = multiprocessing.get_context("spawn").Process(target=_quantize, args=(export.path, export.onnx_path))
        process.start()
        process.join()
        if not target.exists():
            raise RuntimeError(f"dynamic quantization of {export.onnx_path} failed (exit status {process.exitcode})")
    return target


def _quantize(export_path: Path, onnx_path: Path) -> None:
    import shutil
    import tempfile

    from rechar.lifetime import die_with_parent

    die_with_parent()  # a worker killed on timeout or Ctrl-C takes its quantizer with it

    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = Path(export_path) / "int8" / "model.onnx"
    work = Path(tempfile.mkdtemp(prefix=".int8-", dir=export_path))
    try:
        model = onnx.load(str(onnx_path))
        gemm_to_matmul(model)
        onnx.save(model, str(work / "matmul.onnx"), save_as_external_data=True, location="matmul.onnx.data")
        (work / "int8").mkdir()
        quantize_dynamic(str(work / "matmul.onnx"), str(work / "int8" / "model.onnx"), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gather"], use_external_data_format=True,
                         extra_options={"MatMulConstBOnly": True})
        try:
            (work / "int8").rename(target.parent)  # atomic: a concurrent worker's copy may have won
        except OSError:
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)


def onnx_weight_bytes(path: Path) -> dict[str, int]:
    """Bytes of an ONNX graph's initializers: the tables (a Gather's data) and the rest."""
    from rechar.stacks.variants import weight_record

    model = onnx.load(str(path), load_external_data=False)
    gathered = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    embedding = dense = 0
    for t in model.graph.initializer:
        size = int(np.prod(t.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        if t.name in gathered:
            embedding += size
        else:
            dense += size
    return weight_record(embedding, dense)


#: numpy dtypes of ONNX tensor types (the buffers that a CUDA graph's outputs are bound to)
_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                 "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def _device_buffer(shape: Sequence[int], dtype: np.dtype):
    import torch

    return torch.empty(list(shape), dtype=torch.from_numpy(np.empty(0, dtype)).dtype, device="cuda")


#: Runs of the load-time capture probe: a regular run (ONNX Runtime allocates), the capture, a replay.
CAPTURE_PROBE_RUNS = 3


def _check_cuda_graph_capture(open_session: Callable[[], Any], bind: Callable[[Any, dict], Callable[[], Any]],
                              inputs: dict[str, np.ndarray]) -> None:
    """Refuse, in one line, a graph that ONNX Runtime cannot capture as a CUDA graph, found at
    load (not at the first timed call) by trying: a throwaway session runs ``inputs`` through
    ``bind(session, inputs)`` (the fixed device buffers a captured graph needs) CAPTURE_PROBE_RUNS
    times. What ORT refuses depends on its version (1.31's CUDA Concat took at most 32 inputs under
    capture, which DLRM-RMC2's interaction (33) and MT-WnD's (44) exceed), so the capture is tried
    rather than predicted from a limit written down here."""
    session = None
    try:
        session = open_session()
        call = bind(session, inputs)
        for _ in range(CAPTURE_PROBE_RUNS):
            call()
    except Exception as e:
        raise RuntimeError(f"ONNX Runtime cannot capture this graph as a CUDA graph: {one_line(e)}") from None
    finally:
        del session  # its graph and weights leave the device before the timed session is made


def _capture_probe_call(session: ort.InferenceSession, inputs: dict[str, np.ndarray], stream) -> Callable[[], Any]:
    """One call of ``session`` on ``inputs`` bound to device buffers, on ``stream``."""
    import torch

    binding, buffers = session.io_binding(), {}
    for name, value in inputs.items():
        buffer = buffers[name] = torch.from_numpy(np.ascontiguousarray(value)).to("cuda")
        binding.bind_input(name, "cuda", 0, value.dtype, list(buffer.shape), buffer.data_ptr())
    for o in session.get_outputs():
        shape = [d if isinstance(d, int) else len(next(iter(inputs.values()))) for d in o.shape]
        buffer = buffers[o.name] = _device_buffer(shape, _NUMPY_DTYPES[o.type])
        binding.bind_output(o.name, "cuda", 0, _NUMPY_DTYPES[o.type], shape, buffer.data_ptr())
    torch.cuda.synchronize()  # the copies are done before the session's stream reads them

    def call():
        session.run_with_iobinding(binding)
        stream.synchronize()

    call.buffers = buffers
    return call


def _probe_inputs(export: ExportResult) -> dict[str, np.ndarray]:
    """Batch-1 inputs of the exported model (from its shell: no weights)."""
    name = export.manifest["model"]
    return models.shell(name, models.resolve_config(name, "paper", export.manifest["config"])).make_inputs(1, seed=0)


class OrtCudaGraphBackend(OrtCudaBackend):
    name = "ort-cuda-graph"
    static_shapes = True  # one captured graph per batch size

    def load(self, model: RecModel, export: ExportResult) -> None:
        import torch

        self.onnx_path = self.exported_path = export.onnx_path
        # The session's compute stream, shared with the copies into the bound inputs (a graph
        # cannot be captured on the legacy default stream).
        self.stream = torch.cuda.Stream()
        self.captured: dict[int, tuple] = {}  # batch size -> (session, binding, inputs, outputs)
        _check_cuda_graph_capture(self._session, lambda session, inputs: _capture_probe_call(session, inputs, self.stream),
                                  _probe_inputs(export))
        self.session = self._session()  # made here so that a graph the provider refuses fails the load
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._unused = self.session

    def providers(self) -> list:
        return [(self.provider, {"use_tf32": 0, "enable_cuda_graph": 1,
                                 "user_compute_stream": str(self.stream.cuda_stream)}), "CPUExecutionProvider"]

    def _session(self) -> ort.InferenceSession:
        return ort.InferenceSession(str(self.onnx_path), self.session_options(), providers=self.providers())

    def _captured(self, batches: Sequence[dict[str, np.ndarray]]) -> tuple:
        """The session of this batch size with its fixed input and output buffers: a session per
        batch size, since a session replays the one graph it captured."""
        first = batches[0]
        batch = len(next(iter(first.values())))
        if batch not in self.captured:
            self.captured.clear()  # one batch size at a time on the device
            session, self._unused = self._unused or self._session(), None
            self.session = session
            binding = session.io_binding()
            inputs = {name: _device_buffer(v.shape, v.dtype) for name, v in first.items()}
            for name, buffer in inputs.items():
                binding.bind_input(name, "cuda", 0, first[name].dtype, list(buffer.shape), buffer.data_ptr())
            outputs = {}
            for o in session.get_outputs():
                shape = [d if isinstance(d, int) else batch for d in o.shape]
                buffer = outputs[o.name] = _device_buffer(shape, _NUMPY_DTYPES[o.type])
                binding.bind_output(o.name, "cuda", 0, _NUMPY_DTYPES[o.type], shape, buffer.data_ptr())
            self.captured[batch] = (session, binding, inputs, outputs)
        return self.captured[batch]

    def prepare(self, batches: Sequence[dict[str, np.ndarray]]) -> Callable[[], Any]:
        import torch

        session, binding, inputs, outputs = self._captured(batches)
        placed = [{n: torch.from_numpy(v).to("cuda") for n, v in b.items()} for b in batches]
        feeds, stream, run = itertools.cycle(placed), self.stream, session.run_with_iobinding
        names = list(inputs)

        def call():
            batch = next(feeds)
            with torch.cuda.stream(stream):
                for name in names:
                    inputs[name].copy_(batch[name], non_blocking=True)
            run(binding)
            stream.synchronize()
            return outputs

        call.device_inputs = placed
        return call

    def outputs(self, result: Any) -> np.ndarray:
        return next(iter(result.values())).cpu().numpy()

    def profile(self, batches: Sequence[dict[str, np.ndarray]], iterations: int, trace_dir: Path) -> ProfileResult:
        raise NotImplementedError(f"backend {self.name} replays one CUDA graph per call: ONNX Runtime records "
                                  "no node events inside it (profile ort-cuda for the per-node view)")

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "cuda_graph": True}

    def close(self) -> None:
        self.captured.clear()
        self.session = self._unused = None


#: The TensorRT library the TensorRT provider loads (TensorRT 10).
TENSORRT_LIBRARY = "libnvinfer.so.10"


class OrtTensorrtBackend(OrtCudaBackend):
    name = "ort-trt"
    provider = "TensorrtExecutionProvider"
    static_shapes = True  # one engine per input shape (cached beside the export)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = super().unavailable_reason()
        if reason:
            return reason
        try:
            ctypes.CDLL(TENSORRT_LIBRARY)
        except OSError:
            return f"TensorRT's library {TENSORRT_LIBRARY} is not installed (pip install tensorrt-cu13, or NVIDIA's packages)"
        return None

    def load(self, model: RecModel, export: ExportResult) -> None:
        self.engine_dir = Path(export.path) / "tensorrt"
        self.engine_dir.mkdir(exist_ok=True)
        super().load(model, export)

    def providers(self) -> list:
        return [(self.provider, {"trt_fp16_enable": False, "trt_engine_cache_enable": True,
                                 "trt_engine_cache_path": str(self.engine_dir), "trt_timing_cache_enable": True}),
                ("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "tensorrt_precision": "fp32", "engine_cache": str(self.engine_dir)}
