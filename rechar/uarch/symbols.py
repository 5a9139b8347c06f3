"""Which native operator, or which part of the runtime, a simulated function belongs to: rules
as data, and the resolver that applies them to callgrind's (object, function) names.

Three kinds of name reach here:

- **Operator entries** (``OPERATOR_RULES``): the function where one operator's work starts.
  PyTorch: the dispatcher's ``at::_ops::<op>::call``/``redispatch`` (every ATen op called from
  Python or from another op passes through it); Inductor's generated ``cpp_fused_*`` kernels,
  named through their source (``inductor_kernel_name``) and decoded by rechar.taxonomy;
  XLA's thunks. ONNX Runtime, whose library is stripped: the virtual functions of its kernel
  classes, named from the library's vtables (rechar.uarch.vtables), e.g.
  ``onnxruntime::Gemm<float>`` -> ``Gemm``. TensorFlow (symbols in ``libtensorflow_cc``): the
  kernel's virtual ``Compute(OpKernelContext*)``, through which its executor runs every node; the
  kernel's class, template arguments included, names the op type (``TF_KERNEL_RULES``:
  ``BinaryOp<ThreadPoolDevice, functor::add<float>>`` -> ``AddV2``). The resulting op name is
  looked up in the taxonomy's table (rechar.taxonomy.OP_CATEGORY); a class that is not
  an operator (the executor's ``ExecutionFrame``) is not an entry, except that every TensorFlow
  kernel is one (a class the rules do not name is ``tf::<class>``, category ``other``).
- **Runtime code** (``RUNTIME_OBJECTS``): code that is not an operator's but is known — the Python
  interpreter, libc, the C++ runtime, the dynamic loader, thread pools, allocators, and the
  frameworks' own libraries outside their kernels (dispatch, the executor, session bookkeeping).
- Anything else (an unknown library, JIT-generated code with no object) is **unknown**.

rechar.uarch.attribute charges every function's own cost to the operator whose entry encloses it
on the call path (a kernel's calls into libc or JIT code count as the kernel's), to ``runtime``
when no operator encloses a known function, and leaves it unattributed otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from rechar import taxonomy
from rechar.uarch import vtables

RUNTIME = "runtime"
UNATTRIBUTED = "unattributed"

#: Shared objects whose code outside any operator is the runtime (matched on the file name).
RUNTIME_OBJECTS: dict[str, str] = {
    r"^libpython3|^python3": "the Python interpreter",
    r"^libffi|^_ctypes|^_struct|^_random|^_bisect|^_heapq|^math\.|^array\.": "the Python standard library",
    r"^libc\.so|^libm\.so|^libpthread|^libdl|^librt|^libmvec": "the C library",
    r"^ld-linux": "the dynamic loader",
    r"^libstdc\+\+|^libgcc_s": "the C++ runtime",
    r"^libgomp|^libiomp|^libomp|^libtbb": "an OpenMP / TBB thread pool",
    r"^libjemalloc|^libtcmalloc": "a memory allocator",
    r"^vgpreload_": "Valgrind's malloc replacement",
    r"^_multiarray_umath|^_multiarray_tests|^libopenblas|^libscipy_openblas": "NumPy",
    r"^libtorch_python|^libtorch_cpu|^libtorch\.so|^libc10\.so|^libshm": "PyTorch outside its operators",
    r"^onnxruntime_pybind11_state|^libonnxruntime": "ONNX Runtime outside its kernels",
    r"^libtensorflow|^_pywrap_tensorflow": "TensorFlow outside its kernels",
    r"^libopenvino": "OpenVINO outside its nodes",
}

#: Symbol (demangled) -> native op, for the libraries that have symbols. ``{1}``: the first group.
OPERATOR_RULES: list[tuple[str, str]] = [
    (r"^at::_ops::(\w+)::(?:call|redispatch)\(", "aten::{1}"),  # the ATen dispatcher's entry of an op
    (r"^(cpp_fused_\w+)", "{1}"),  # Inductor's generated C++ kernels, decoded by the taxonomy
    # XLA's CPU runtime runs a compiled cluster as thunks; the code a thunk runs is JIT-compiled
    # (no symbols), so the thunk's Execute is the op's entry. A kernel thunk is one compiled HLO
    # fusion or op whose kind the symbols do not tell: xla::kernel, category other.
    (r"^xla::cpu::DotThunk::Execute\(", "xla::dot"),
    # A YNNPACK fusion is a dot XLA hands to YNNPACK, its operands' packing included (inside one,
    # only YNNPACK's dot and pack implementations run: every tiny model's dump, 2026-12-01)
    (r"^xla::cpu::YnnFusionThunk::Execute\(", "xla::dot"),
    (r"^xla::cpu::CopyThunk::Execute\(", "xla::copy"),
    (r"^xla::cpu::(?:Small)?KernelThunk(?:<[^>]*>)?::Execute\(", "xla::kernel"),
    # TensorFlow's op that launches the compiled cluster (an AsyncOpKernel, which would otherwise
    # be named by its base class): executable lookup, argument marshalling, the thunk executor
    (r"^tensorflow::XlaLocalLaunchBase::ComputeAsync\(", "XlaLaunch"),
]

#: Kernel class (demangled, from a stripped library's vtables) -> op type: ONNX Runtime's kernels
#: (ONNX op types), OpenVINO's CPU plugin nodes (its runtime graph's node types, as its profiler
#: names them). First match wins.
KERNEL_CLASS_RULES: list[tuple[str, str]] = [
    (r"^ov::intel_cpu::node::Concat\b", "Concatenation"),
    (r"^ov::intel_cpu::node::SoftMax\b", "Softmax"),
    (r"^ov::intel_cpu::node::RNN\b", "RNNSeq"),
    (r"^ov::intel_cpu::node::(\w+)", "ov::{1}"),  # the bare node type where the taxonomy has it
    (r"^onnxruntime::ElementWiseKernel<onnxruntime::functors::(\w+)", "{1}"),
    (r"^onnxruntime::functors::(\w+)", "{1}"),  # the element-wise functors the kernel runs
    (r"^onnxruntime::DeepCpuGruOp\b", "GRU"),
    (r"^onnxruntime::DeepCpuLstmOp\b", "LSTM"),
    (r"^onnxruntime::(?:contrib::)?(?:\(anonymous namespace\)::)?(\w+?)(?:_\d+)?\b", "{1}"),
]

#: Inductor's compiled C++ kernels: one shared object per kernel, ``<cache>/<xx>/<hash>.main.so``
#: beside its source ``<hash>.main.cpp``, entered through ``kernel`` (or its Python binding). The
#: kernel's name (``cpp_fused_<ops>_<n>``) is only in the compiled graph's wrapper module,
#: ``<cache>/<yy>/<hash>.py``, which binds that same source to the name: the source is the link.
INDUCTOR_OBJECT = r"\.main\.so$"
INDUCTOR_ENTRIES = ("kernel", "kernel_py(_object*, _object*)")
INDUCTOR_BINDING = r"^(cpp_fused_\w+) = async_compile\.cpp_pybinding\(\[[^\]]*\], r'''(.*?)'''\)"
INDUCTOR_SOURCE_END = "// Python bindings"

#: A TensorFlow kernel's entry: ``tensorflow::<class>::Compute[Async](tensorflow::OpKernelContext*...)``.
TF_KERNEL_ENTRY = r"^tensorflow::(.+?)::Compute(?:Async)?\(tensorflow::OpKernelContext\*(?:, [^()]*)?\)$"

#: TensorFlow's functors (element-wise kernels are one class template over a functor) -> op type.
TF_FUNCTORS: dict[str, str] = {
    "add": "AddV2", "sub": "Sub", "mul": "Mul", "div": "RealDiv", "floor_fmod": "FloorMod",
    "safe_floor_mod": "FloorMod", "floor_div": "FloorDiv", "safe_floor_div": "FloorDiv", "maximum": "Maximum",
    "minimum": "Minimum", "equal_to": "Equal", "not_equal_to": "NotEqual", "greater": "Greater",
    "greater_equal": "GreaterEqual", "less": "Less", "less_equal": "LessEqual", "squared_difference": "SquaredDifference",
    "pow": "Pow", "logical_and": "LogicalAnd", "logical_or": "LogicalOr", "logical_not": "LogicalNot",
    "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "log": "Log", "neg": "Neg", "rsqrt": "Rsqrt",
    "sqrt": "Sqrt", "square": "Square", "abs": "Abs", "inverse": "Reciprocal", "floor": "Floor", "sign": "Sign",
}

#: TensorFlow kernel class (after ``tensorflow::``) -> op type. First match wins; ``{1}``: the first
#: group, ``functor:{1}`` through TF_FUNCTORS. The oneDNN kernels are named as the profiler names
#: the op types the graph rewrite gives them (``_MklNativeFusedMatMul``).
TF_KERNEL_RULES: list[tuple[str, str]] = [
    (r"^(?:Binary|Unary)Op<[^,]+, tensorflow::functor::(\w+)<", "functor:{1}"),
    (r"^ReductionOp<.*Eigen::internal::(Sum|Mean|Max|Min|Prod)Reducer<", "{1}"),
    (r"^(?:Unary|Binary)ElementWiseOp<[^,]+, tensorflow::(\w+?)Op<", "{1}"),  # Relu and its kin
    (r"^MklFusedMatMulOp<.*, true>$", "_MklNativeFusedMatMul"),
    (r"^MklFusedMatMulOp<", "_MklFusedMatMul"),
    (r"^MklMatMulOp<", "_MklMatMul"),
    (r"^BatchMatMulMkl<", "_MklBatchMatMulV2"),
    (r"^MklFusedBatchMatMulV2Op<", "_MklNativeFusedBatchMatMulV2"),
    (r"^MklTransposeCpuOp\b", "_MklTranspose"),
    (r"^MklConcatOp<", "_MklConcatV2"),
    (r"^MklRelu\w*<.*eltwise_relu", "_MklRelu"),
    (r"^MklSwish\w*<|^Mkl\w*<.*eltwise_swish", "_MklSwish"),
    (r"^Mkl(\w+?)Op(?:Base)?\b", "_Mkl{1}"),  # _MklSoftmax, _MklLayerNorm, ...
    (r"^ConcatBaseOp<.*\(tensorflow::AxisArgumentName\)0>$", "ConcatV2"),  # NAME_IS_AXIS
    (r"^ConcatBaseOp<", "Concat"),  # NAME_IS_CONCAT_DIM
    (r"^FusedMatMulOp<", "_FusedMatMul"),  # without oneDNN's rewrite (as under Valgrind)
    (r"^ResourceGatherOp<", "ResourceGather"),
    (r"^GatherOp<", "GatherV2"),
    (r"^SplitOpCPU<", "Split"),
    (r"^SplitVOpCPU<", "SplitV"),
    (r"^TransposeCpuOp\b", "Transpose"),
    (r"^CastOpBase\b|^CpuCastOp\b", "Cast"),
    (r"^ArgOp$", "_Arg"),
    (r"^RetvalOp$", "_Retval"),
    (r"^ReadVariableOp$", "ReadVariableOp"),
    (r"^BCastArgsOp\b", "BroadcastArgs"),
    (r"^(?:\(anonymous namespace\)::)?(\w+?)Op(?:CPU)?(?:<|$)", "{1}"),  # PackOp -> Pack, StridedSliceOp<..> -> ...
]

_RUNTIME_OBJECTS = [(re.compile(p), what) for p, what in RUNTIME_OBJECTS.items()]
_TF_KERNEL_ENTRY = re.compile(TF_KERNEL_ENTRY)
_INDUCTOR_OBJECT = re.compile(INDUCTOR_OBJECT)
_INDUCTOR_BINDING = re.compile(INDUCTOR_BINDING, re.M | re.S)
_TF_KERNEL_RULES = [(re.compile(p), op) for p, op in TF_KERNEL_RULES]
_OPERATOR_RULES = [(re.compile(p), op) for p, op in OPERATOR_RULES]
_KERNEL_CLASS_RULES = [(re.compile(p), op) for p, op in KERNEL_CLASS_RULES]


def _apply(rules, text: str) -> str | None:
    for pattern, template in rules:
        m = pattern.search(text)
        if m:
            return template.format(None, *m.groups())
    return None


def inductor_bindings(cache: str | os.PathLike) -> dict[str, str]:
    """Kernel source (stripped) -> kernel name, from every compiled-graph wrapper in an Inductor
    cache folder."""
    out: dict[str, str] = {}
    for wrapper in sorted(Path(cache).glob("*/*.py")):
        for m in _INDUCTOR_BINDING.finditer(wrapper.read_text(errors="replace")):
            out.setdefault(m.group(2).strip(), m.group(1))
    return out


def inductor_kernel_name(obj: str, bindings: dict[str, str]) -> str | None:
    """The ``cpp_fused_*`` name of an Inductor kernel's shared object, through its source."""
    source = Path(_INDUCTOR_OBJECT.sub(".main.cpp", obj))
    if not source.is_file():
        return None
    return bindings.get(source.read_text(errors="replace").split(INDUCTOR_SOURCE_END)[0].strip())


def kernel_class_op(cls: str, rules=None) -> str | None:
    """The op type of a kernel class named from a stripped library's vtables (KERNEL_CLASS_RULES
    by default); an OpenVINO node type the taxonomy knows loses its ``ov::`` prefix."""
    op = _apply(_KERNEL_CLASS_RULES if rules is None else rules, cls)
    if op and op.startswith("ov::") and taxonomy.op_category(op[len("ov::"):]) is not None:
        op = op[len("ov::"):]
    return op


def tf_kernel_op(fn: str) -> str | None:
    """The op type of a TensorFlow kernel entry (``tf::<class>`` if no rule names it), or None if
    ``fn`` is not one."""
    m = _TF_KERNEL_ENTRY.search(fn)
    return tf_class_op(m.group(1)) if m else None


def tf_class_op(cls: str) -> str:
    """The op type of a TensorFlow kernel class (without ``tensorflow::``); ``tf::<class>`` if no
    rule names it."""
    op = _apply(_TF_KERNEL_RULES, cls)
    if op and op.startswith("functor:"):
        op = TF_FUNCTORS.get(op[len("functor:"):])
    if op and taxonomy.op_category(op) is not None:
        return op
    return "tf::" + re.sub(r"<.*", "", cls)


def aten_op(name: str) -> str:
    """``aten::<op>`` from a dispatcher struct name, which appends the overload
    (``mul_Tensor``, ``select_int``, ``empty_memory_format``): the longest prefix, cut at
    underscores, that the taxonomy knows; the whole name if none is known."""
    parts = name.split("_")
    for end in range(len(parts), 0, -1):
        candidate = "aten::" + "_".join(parts[:end])
        if candidate in taxonomy.OP_CATEGORY:
            return candidate
    return "aten::" + name


def op_category(op: str) -> str:
    """The taxonomy's category of a native op (fused Inductor kernels by their members);
    ``other`` for an operator the table does not know."""
    own, _ = taxonomy.attribute(op, "")
    return own or "other"


def is_operator(op: str | None) -> bool:
    return op is not None and (taxonomy.op_category(op) is not None or bool(taxonomy.inductor_kernel_ops(op))
                               or op.startswith(("aten::", "tf::", "ov::", "xla::")))


@dataclasses.dataclass(frozen=True)
class Label:
    op: str | None  # the native op whose work starts here, or None
    runtime: str | None  # what runtime code this is (RUNTIME_OBJECTS), or None if unknown


class Resolver:
    """Labels callgrind's functions; caches the vtable names of each stripped library it meets."""

    def __init__(self, operator_rules=None, kernel_class_rules=None, runtime_objects=None):
        self._operators = _OPERATOR_RULES if operator_rules is None else [(re.compile(p), o) for p, o in operator_rules]
        self._classes = (_KERNEL_CLASS_RULES if kernel_class_rules is None
                         else [(re.compile(p), o) for p, o in kernel_class_rules])
        self._objects = (_RUNTIME_OBJECTS if runtime_objects is None
                         else [(re.compile(p), w) for p, w in runtime_objects.items()])
        self._vtables: dict[str, dict[int, str]] = {}
        self._inductor: dict[str, dict[str, str]] = {}  # Inductor cache folder -> its bindings
        self.kernel_classes: dict[tuple[str, str], str] = {}  # functions named through vtables

    def runtime_of(self, obj: str) -> str | None:
        base = os.path.basename(obj)
        return next((what for pattern, what in self._objects if pattern.search(base)), None)

    def label(self, obj: str, fn: str) -> Label:
        op = None
        if fn.startswith("0x"):  # a stripped library's function: its vtable class, if any
            cls = self._class_of(obj, fn)
            if cls is not None:
                self.kernel_classes[(obj, fn)] = cls
                op = kernel_class_op(cls, self._classes)
        elif fn in INDUCTOR_ENTRIES and obj and _INDUCTOR_OBJECT.search(obj):
            cache = str(Path(obj).parent.parent)
            if cache not in self._inductor:
                self._inductor[cache] = inductor_bindings(cache)
            op = inductor_kernel_name(obj, self._inductor[cache])
        else:
            op = _apply(self._operators, fn)
            if op and op.startswith("aten::"):
                op = aten_op(op[len("aten::"):])
            elif op is None:
                op = tf_kernel_op(fn)
        if not is_operator(op):
            op = None
        return Label(op, self.runtime_of(obj) if obj else None)

    def _class_of(self, obj: str, fn: str) -> str | None:
        if not obj or not os.path.isfile(obj):
            return None
        if obj not in self._vtables:
            self._vtables[obj] = vtables.classes_for(obj)
        try:
            return self._vtables[obj].get(int(fn, 16))
        except ValueError:
            return None
