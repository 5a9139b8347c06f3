"""Canonical operator categories: one table from each framework's native op names, and one from
model layers, in one place.

An op's category follows the op (a fused matmul+bias+relu is ``fc``: it counts where its main
work is), refined by the layer it runs in: everything inside an attention unit counts as
``attention``, inside a GRU/AUGRU as ``recurrent``, inside an embedding table or the embedding
stage as ``embedding``, inside the feature interaction as ``interaction`` (the unrolled AUGRU is
many small ops in ONNX and one op in nobody's profiler). Both views are kept: ``op_category``
(the op's own) and ``category`` (refined).

Compilers fuse ops of several kinds into one kernel (Inductor's ``cpp_fused_cat_embedding_mul_1``,
OpenVINO's ``Subgraph``). Such a kernel is listed with its members (the ops it fused, each with
its layer) and attributed by one rule: it counts in the highest-ranked category among its member
ops (``FUSION_RANK``: a matmul fused with anything is ``fc``, a gather fused with a concat is
``embedding``), in the layer of the first member of that category. Inductor names its kernels
after the ATen ops they fused, so those names are decoded into member ops too.

``quantize`` is the quantizing and dequantizing that reduced precision adds around its kernels
(a kernel that quantizes its own inputs, such as ONNX Runtime's DynamicQuantizeMatMul, counts
as the FC it is).

``runtime`` is framework work outside any operator: entering a compiled region, checking its
guards, launching the compiled graph.

The models after the study add layer categories of their own: ``cross-network`` (DCNv2's low-rank
cross layers), ``self-attention`` (SASRec's softmax attention, its q/k/v/output projections
included), ``pointwise-attention`` (HSTU's SiLU attention core with its relative bias and the
bucketing of action times that feeds it; its
fused u/v/q/k projection and output layer stay ``fc``), ``feed-forward`` (SASRec's position-wise
FFN), ``candidate-scoring`` (candidates scored against the user's state) and ``normalisation``
(layer norm, also an op category: each framework's layer-norm ops).
"""

from __future__ import annotations

CATEGORIES = (
    "fc", "embedding", "interaction", "attention", "recurrent", "cross-network", "self-attention",
    "pointwise-attention", "feed-forward", "candidate-scoring", "normalisation", "activation", "elementwise",
    "softmax", "data-movement", "quantize", "runtime", "other",
)
#: The categories that the models after the study added.
LATER_CATEGORIES = ("cross-network", "self-attention", "pointwise-attention", "feed-forward", "candidate-scoring",
                    "normalisation")
#: Fused kernels count in the first of these categories that one of their member ops has (the
#: layer categories never are an op's own, so their rank does not matter; normalisation is).
FUSION_RANK = ("fc", "embedding", "recurrent", "attention", "cross-network", "self-attention", "pointwise-attention",
               "feed-forward", "candidate-scoring", "normalisation", "softmax", "interaction", "activation",
               "elementwise", "data-movement", "quantize", "runtime", "other")

_FC = "fc"
_EMB = "embedding"
_INT = "interaction"
_REC = "recurrent"
_ACT = "activation"
_ELT = "elementwise"
_SMX = "softmax"
_MOV = "data-movement"
_RUN = "runtime"
_QNT = "quantize"  # quantizing activations and dequantizing results of reduced-precision kernels
_NRM = "normalisation"

#: Native op name -> category, for every framework (names do not collide across frameworks).
OP_CATEGORY: dict[str, str] = {
    # PyTorch (aten)
    "aten::addmm": _FC, "aten::mm": _FC, "aten::matmul": _FC, "aten::linear": _FC, "aten::bmm": _FC,
    "aten::baddbmm": _FC, "aten::addmv": _FC, "aten::mv": _FC, "aten::_addmm_activation": _FC,
    "aten::embedding_bag": _EMB, "aten::_embedding_bag": _EMB, "aten::_embedding_bag_forward_only": _EMB,
    "aten::embedding": _EMB, "aten::index_select": _EMB,
    "aten::cat": _INT, "aten::_cat": _INT, "aten::stack": _INT,
    "aten::gru": _REC, "aten::gru_cell": _REC, "aten::_thnn_fused_gru_cell": _REC,
    "aten::relu": _ACT, "aten::relu_": _ACT, "aten::sigmoid": _ACT, "aten::sigmoid_": _ACT, "aten::tanh": _ACT,
    "aten::tanh_": _ACT, "aten::clamp_min": _ACT, "aten::clamp_min_": _ACT, "aten::threshold": _ACT,
    "aten::softmax": _SMX, "aten::_softmax": _SMX,
    "aten::add": _ELT, "aten::add_": _ELT, "aten::mul": _ELT, "aten::mul_": _ELT, "aten::sub": _ELT,
    "aten::sub_": _ELT, "aten::rsub": _ELT, "aten::div": _ELT, "aten::div_": _ELT, "aten::sum": _ELT,
    "aten::where": _ELT, "aten::lt": _ELT, "aten::eq": _ELT, "aten::neg": _ELT, "aten::exp": _ELT,
    "aten::view": _MOV, "aten::reshape": _MOV, "aten::_reshape_alias": _MOV, "aten::_unsafe_view": _MOV,
    "aten::transpose": _MOV, "aten::t": _MOV, "aten::permute": _MOV, "aten::expand": _MOV,
    "aten::expand_as": _MOV, "aten::select": _MOV, "aten::slice": _MOV, "aten::squeeze": _MOV,
    "aten::unsqueeze": _MOV, "aten::flatten": _MOV, "aten::copy_": _MOV, "aten::to": _MOV,
    "aten::_to_copy": _MOV, "aten::contiguous": _MOV, "aten::clone": _MOV, "aten::as_strided": _MOV,
    "aten::empty": _MOV, "aten::empty_like": _MOV, "aten::empty_strided": _MOV, "aten::zeros": _MOV,
    "aten::zero_": _MOV, "aten::fill_": _MOV, "aten::new_zeros": _MOV, "aten::new_empty": _MOV,
    "aten::resize_": _MOV, "aten::detach": _MOV, "aten::detach_": _MOV, "aten::index": _MOV,
    "aten::narrow": _MOV, "aten::split": _MOV, "aten::chunk": _MOV, "aten::unbind": _MOV,
    "aten::resolve_conj": _MOV, "aten::resolve_neg": _MOV, "aten::lift_fresh": _MOV, "aten::alias": _MOV,
    "aten::item": _MOV, "aten::_local_scalar_dense": _MOV, "aten::result_type": _MOV,
    "aten::unflatten": _MOV, "aten::_nested_tensor_from_mask_left_aligned": _MOV, "aten::arange": _MOV,
    "aten::as_strided_": _MOV, "aten::transpose_": _MOV, "aten::unsafe_chunk": _MOV, "aten::unsafe_split": _MOV,
    "aten::cudnn_is_acceptable": "other",  # a GRU's backend check, no work: deliberately other
    # ONNX Runtime (ONNX op types after graph optimisation, fused ones included)
    "Gemm": _FC, "FusedGemm": _FC, "MatMul": _FC, "FusedMatMul": _FC, "MatMulNBits": _FC,
    "Gather": _EMB, "GatherElements": _EMB, "GatherND": _EMB, "GatherBlockQuantized": _EMB,
    "Concat": _INT,
    "GRU": _REC, "LSTM": _REC, "RNN": _REC,
    "Relu": _ACT, "Sigmoid": _ACT, "Tanh": _ACT, "LeakyRelu": _ACT, "PRelu": _ACT,
    "Softmax": _SMX, "LogSoftmax": _SMX,
    "Add": _ELT, "Sub": _ELT, "Mul": _ELT, "Div": _ELT, "Sum": _ELT, "Where": _ELT, "Equal": _ELT,
    "Less": _ELT, "Greater": _ELT, "Not": _ELT, "Neg": _ELT, "Exp": _ELT, "Log": _ELT, "Pow": _ELT,
    "Sqrt": _ELT, "ReduceSum": _ELT, "ReduceMean": _ELT, "ReduceMax": _ELT, "ReduceMin": _ELT,
    "Max": _ELT, "Min": _ELT,
    "Reshape": _MOV, "Transpose": _MOV, "Unsqueeze": _MOV, "Squeeze": _MOV, "Expand": _MOV,
    "Shape": _MOV, "Slice": _MOV, "Flatten": _MOV, "Cast": _MOV, "Identity": _MOV, "Constant": _MOV,
    "ConstantOfShape": _MOV, "Split": _MOV, "Tile": _MOV, "Range": _MOV, "MemcpyToHost": _MOV,
    "MemcpyFromHost": _MOV, "Dropout": _MOV,
    # TensorFlow (CPU op types, oneDNN fusions included; the lowering's ops)
    "_MklNativeFusedMatMul": _FC, "_MklFusedMatMul": _FC, "_FusedMatMul": _FC, "_MklMatMul": _FC,
    "_MklNativeMatMul": _FC, "BatchMatMulV2": _FC, "BatchMatMulV3": _FC, "_MklBatchMatMulV2": _FC,
    "_MklNativeBatchMatMulV2": _FC, "_MklNativeFusedBatchMatMulV2": _FC, "BiasAdd": _FC,
    "GatherV2": _EMB, "ResourceGather": _EMB,
    "ConcatV2": _INT, "Pack": _INT,
    "_MklNativeRelu": _ACT, "_MklRelu": _ACT,
    "_MklNativeSoftmax": _SMX, "_MklSoftmax": _SMX,
    "AddV2": _ELT, "_MklAddV2": _ELT, "_MklNativeAddV2": _ELT, "_MklMul": _ELT, "_MklNativeMul": _ELT,
    "RealDiv": _ELT, "FloorDiv": _ELT, "TruncateDiv": _ELT, "SelectV2": _ELT, "Select": _ELT,
    "LogicalNot": _ELT, "Maximum": _ELT, "Minimum": _ELT, "_MklMaximum": _ELT, "Square": _ELT,
    "_MklNativeTranspose": _MOV, "_MklTranspose": _MOV, "ExpandDims": _MOV, "BroadcastTo": _MOV,
    "StridedSlice": _MOV, "ReadVariableOp": _MOV, "Fill": _MOV, "ZerosLike": _MOV, "Const": _MOV,
    "_MklToTf": _MOV, "_MklReshape": _MOV, "ConcatOffset": _MOV, "Unpack": _MOV, "SplitV": _MOV,
    "Prod": _ELT, "Mean": _ELT, "Max": _ELT, "GreaterEqual": _ELT, "LessEqual": _ELT, "FloorMod": _ELT,
    "BroadcastArgs": _MOV, "_Arg": _MOV, "_Retval": _MOV,  # function arguments and results
    # PyTorch compiled by Inductor: ops of its post-grad graphs (decompositions) and its runtime
    # (the torch backend shortens the region names, which carry graph ids and hashes)
    "prims::iota": _MOV, "aten::iota": _MOV, "aten::amax": _ELT, "aten::full": _MOV, "aten::scalar_tensor": _MOV,
    "aten::_unsafe_index": _EMB, "aten::unsqueeze_": _MOV, "aten::bitwise_not": _ELT, "aten::gt": _ELT,
    "aten::ge": _ELT, "aten::le": _ELT, "aten::abs": _ELT, "aten::clamp": _ELT, "aten::minimum": _ELT,
    "aten::maximum": _ELT, "aten::mean": _ELT, "aten::pow": _ELT, "aten::reciprocal": _ELT, "aten::log": _ELT,
    "aten::index_put": _MOV, "aten::constant_pad_nd": _MOV, "aten::repeat": _MOV,
    "Torch-Compiled Region": _RUN, "Call CompiledFxGraph": _RUN, "TorchDynamo Cache Lookup": _RUN,
    "Pregraph bytecode": _RUN, "AOTDispatcher Runtime Wrapper Prologue": _RUN,
    # TensorFlow's runtime: the call of the lowered function (its self time)
    "tf.function call": _RUN,
    "XlaLaunch": _RUN,  # TensorFlow's launch of an XLA cluster, outside the cluster's thunks (simulation pass)
    "unattributed device time": _RUN,  # ONNX Runtime on CUDA: kernels launched outside any node
    # Reduced precision (rechar.measure.quality): PyTorch's quantized kernels, ONNX Runtime's
    # dynamic quantization (DynamicQuantizeMatMul quantizes its activations inside the FC kernel)
    "quantized::linear_dynamic": _FC, "quantized::linear": _FC, "quantized::embedding_bag_byte_rowwise_offsets": _EMB,
    "quantized::embedding_bag_4bit_rowwise_offsets": _EMB, "aten::quantize_per_tensor": _QNT,
    "aten::quantize_per_tensor_dynamic": _QNT, "aten::dequantize": _QNT,
    "DynamicQuantizeMatMul": _FC, "MatMulInteger": _FC, "MatMulIntegerToFloat": _FC,
    "DynamicQuantizeLinear": _QNT, "QuantizeLinear": _QNT, "DequantizeLinear": _QNT,
    # XLA (HLO opcodes; fusions and other instructions are attributed by the TF ops they came from)
    "xla::dot": _FC, "xla::gather": _EMB, "xla::concatenate": _INT, "xla::copy": _MOV, "xla::transpose": _MOV,
    "xla::bitcast": _MOV, "xla::broadcast": _MOV, "xla::reshape": _MOV, "xla::slice": _MOV,
    "xla::dynamic-slice": _MOV, "xla::tuple": _MOV, "xla::get-tuple-element": _MOV, "xla::parameter": _MOV,
    "xla::constant": _MOV, "xla::reduce": _ELT, "xla::reduce-window": _ELT, "xla::add": _ELT,
    "xla::multiply": _ELT, "xla::subtract": _ELT, "xla::divide": _ELT, "xla::maximum": _ELT,
    "xla::exponential": _ELT, "xla::select": _ELT, "xla::compare": _ELT, "xla::tanh": _ACT,
    "xla::logistic": _ACT, "xla::convert": _MOV, "xla::pad": _MOV, "xla::iota": _MOV,
    "xla::dynamic-update-slice": _MOV, "xla::negate": _ELT, "xla::abs": _ELT, "xla::sqrt": _ELT, "xla::rsqrt": _ELT,
    "xla::log": _ELT, "xla::power": _ELT, "xla::minimum": _ELT, "xla::and": _ELT, "xla::or": _ELT, "xla::not": _ELT,
    "xla::clamp": _ELT, "xla::floor": _ELT, "xla::remainder": _ELT, "xla::sign": _ELT,
    # OpenVINO CPU plugin (node types of its runtime graph)
    "FullyConnected": _FC, "Reduce": _ELT, "Concatenation": _INT, "Eltwise": _ELT, "Multiply": _ELT,
    "Subtract": _ELT, "Divide": _ELT, "Power": _ELT, "Select": _ELT, "GRUSequence": _REC, "RNNSeq": _REC,
    "RNNSequence": _REC, "LSTMSequence": _REC, "Convert": _MOV, "Reorder": _MOV, "Broadcast": _MOV,
    "VariadicSplit": _MOV, "StridedSlice": _MOV, "ShapeOf": _MOV, "Parameter": _MOV, "Result": _MOV,
    "Input": _MOV, "Output": _MOV,
    # Ops of the later models (layer norm, SiLU, attention kernels, time bucketing), every framework
    "aten::layer_norm": _NRM, "aten::native_layer_norm": _NRM, "aten::var_mean": _NRM, "LayerNormalization": _NRM,
    "_MklLayerNorm": _NRM, "_MklConcatV2": _INT, "Floor": _ELT, "Reciprocal": _ELT, "LogicalAnd": _ELT,
    "LogicalOr": _ELT, "Sign": _ELT,
    "SimplifiedLayerNormalization": _NRM, "SkipLayerNormalization": _NRM, "MVN": _NRM,
    "aten::silu": _ACT, "aten::silu_": _ACT, "QuickGelu": _ACT, "_MklSwish": _ACT, "Swish": _ACT,
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "aten::scaled_dot_product_attention": "attention",
    "aten::ne": _ELT, "aten::sqrt": _ELT, "aten::rsqrt": _ELT, "aten::clamp_max": _ELT, "Abs": _ELT, "Clip": _ELT,
    "Clamp": _ELT, "NotEqual": _ELT, "GreaterOrEqual": _ELT, "LessOrEqual": _ELT, "AddN": _ELT, "Rsqrt": _ELT, "SquaredDifference": _ELT,
    "aten::zeros_like": _MOV, "aten::split_with_sizes": _MOV, "prims::convert_element_type": _MOV, "Pad": _MOV,
}

#: Model layer (PyTorch module class) -> category that everything inside it counts as.
LAYER_CATEGORY: dict[str, str] = {
    "EmbeddingTable": _EMB, "PooledEmbeddings": _EMB, "SingleEmbeddings": _EMB, "MultiHotEmbeddings": _EMB,
    "Interaction": _INT, "FeatureConcat": _INT,
    "ActivationUnit": "attention", "InterestAttention": "attention",
    "GRU": _REC, "AUGRUCell": _REC,
    "LowRankCrossNet": "cross-network",
    "CausalSelfAttention": "self-attention",
    "PointwiseAttention": "pointwise-attention", "TimeBuckets": "pointwise-attention",
    "FeedForward": "feed-forward",
    "CandidateScoring": "candidate-scoring",
    "LayerNorm": _NRM,
}


#: An op whose own category is a kind of layer, profiled with no layer (a compiler put it there:
#: Inductor rewrites SASRec's written-out softmax attention into one scaled_dot_product_attention
#: call that no module encloses) counts in the model's one layer category of that kind, if the
#: model has exactly one; with none or several it keeps its own.
LAYER_KINDS: dict[str, tuple[str, ...]] = {
    "attention": ("attention", "self-attention", "pointwise-attention"),
}


def digest() -> str:
    """A short hash of every table and rule here: a table of operators categorized under
    another digest is stale (rechar.analysis.ops rebuilds it)."""
    import hashlib
    import json

    tables = [CATEGORIES, FUSION_RANK, OP_CATEGORY, LAYER_CATEGORY, LAYER_KINDS, INDUCTOR_KERNEL_PREFIXES]
    return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()[:12]


def op_category(native_op: str) -> str | None:
    """The op's own category, or None if the op is not in the table (reported, never dropped)."""
    return OP_CATEGORY.get(native_op)


def layer_category(layer: str, layer_classes: dict[str, str]) -> str | None:
    """Category of the innermost enclosing layer that has one (``attention.mlp.0`` -> the
    ``attention`` module's), else None."""
    parts = layer.split(".") if layer else []
    for i in range(len(parts), 0, -1):
        cls = layer_classes.get(".".join(parts[:i]))
        if cls in LAYER_CATEGORY:
            return LAYER_CATEGORY[cls]
    return None


INDUCTOR_KERNEL_PREFIXES = ("cpp_fused_", "triton_poi_fused_", "triton_red_fused_", "triton_per_fused_",
                            "triton_tem_fused_")


def inductor_kernel_ops(kernel: str) -> list[str]:
    """The ATen ops an Inductor kernel name lists (``cpp_fused__embedding_bag_arange_view_0`` ->
    aten::_embedding_bag, aten::arange, aten::view), decoded greedily against the ATen names of
    the table; [] for a name that is not an Inductor kernel's."""
    prefix = next((p for p in INDUCTOR_KERNEL_PREFIXES if kernel.startswith(p)), None)
    if prefix is None:
        return []
    words = kernel[len(prefix):].split("_")
    if words and words[-1].isdigit():
        words = words[:-1]
    ops, i = [], 0
    while i < len(words):
        for j in range(len(words), i, -1):  # the longest run of words that names an op
            name = "_".join(words[i:j])
            if f"aten::{name}" in OP_CATEGORY or (name == "" and j == i + 1):
                if name:
                    ops.append(f"aten::{name}")
                i = j
                break
        else:  # an op the table does not know: keep it, it will show as other
            ops.append(f"aten::{words[i]}")
            i += 1
    return ops


def fused_attribution(native_op: str, members: list[tuple[str, str]]) -> tuple[str, str] | None:
    """(category, layer) of a fused kernel by the rule in the module docstring, from its member
    ops [(native op, layer)] and, for Inductor kernels, the ops its name lists; None if it
    fused nothing known."""
    candidates = [(op, layer) for op, layer in members] + [(op, None) for op in inductor_kernel_ops(native_op)]
    if not candidates:
        return None
    rank = {c: i for i, c in enumerate(FUSION_RANK)}
    best = min((op_category(op) or "other" for op, _ in candidates), key=rank.__getitem__)
    layers = [layer for op, layer in candidates if (op_category(op) or "other") == best and layer is not None]
    if not layers:  # decided by the name alone: the layer most members ran in
        member_layers = [layer for _, layer in members]
        layers = [max(set(member_layers), key=member_layers.count)] if member_layers else [""]
    return best, layers[0]


def attribute(native_op: str, layer: str, members=()) -> tuple[str | None, str]:
    """(the op's own category or None if unknown, its layer): a fused kernel whose own name is
    not in the table (Inductor's kernels, OpenVINO's Subgraph) by ``fused_attribution``, its
    layer filled in from its members where the profiler gave none."""
    own = op_category(native_op)
    if own is None:
        fused = fused_attribution(native_op, list(members))
        if fused:
            own, layer = fused[0], layer or fused[1]
    return own, layer


def categorize(native_op: str, layer: str, layer_classes: dict[str, str], members=()) -> tuple[str, str]:
    """(op_category, category): the op's own, and the one refined by its layer. Unmapped ops are
    ``other`` in both unless their layer decides. ``members``: [(native op, layer)] of a fused
    kernel."""
    own, layer = attribute(native_op, layer, members)
    own = own or "other"
    refined = layer_category(layer, layer_classes)
    if refined is None and not layer and own in LAYER_KINDS:
        kinds = {LAYER_CATEGORY[c] for c in layer_classes.values() if c in LAYER_CATEGORY} & set(LAYER_KINDS[own])
        refined = kinds.pop() if len(kinds) == 1 else None
    return own, refined or own
