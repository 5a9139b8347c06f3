"""Canonical operator categories: one table from each framework's native op names, and one from
model layers, in one place.

An op's category follows the op (a fused matmul+bias+relu is ``fc``: it counts where its main
work is), refined by the layer it runs in: everything inside an attention unit counts as
``attention``, inside a GRU/AUGRU as ``recurrent``, inside an embedding table or the embedding
stage as ``embedding``, inside the feature interaction as ``interaction`` (the unrolled AUGRU is
many small ops in ONNX and one op in nobody's profiler). Both views are kept: ``op_category``
(the op's own) and ``category`` (refined).
"""

from __future__ import annotations

CATEGORIES = (
    "fc", "embedding", "interaction", "attention", "recurrent", "activation", "elementwise", "softmax",
    "data-movement", "other",
)

_FC = "fc"
_EMB = "embedding"
_INT = "interaction"
_REC = "recurrent"
_ACT = "activation"
_ELT = "elementwise"
_SMX = "softmax"
_MOV = "data-movement"

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
}

#: Model layer (PyTorch module class) -> category that everything inside it counts as.
LAYER_CATEGORY: dict[str, str] = {
    "EmbeddingTable": _EMB, "PooledEmbeddings": _EMB, "SingleEmbeddings": _EMB,
    "Interaction": _INT,
    "ActivationUnit": "attention", "InterestAttention": "attention",
    "GRU": _REC, "AUGRUCell": _REC,
}


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


def categorize(native_op: str, layer: str, layer_classes: dict[str, str]) -> tuple[str, str]:
    """(op_category, category): the op's own, and the one refined by its layer. Unmapped ops are
    ``other`` in both unless their layer decides."""
    own = op_category(native_op) or "other"
    return own, layer_category(layer, layer_classes) or own
