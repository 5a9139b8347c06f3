"""Lower an ONNX graph to one TensorFlow ``tf.function``, node by node.

Hand-written because neither converter fits: onnx2tf pins tensorflow 2.19, numpy 1.26 and
onnx 1.19 (clashing with our stack) and fails on DIN/DIEN (it guesses channels-first layouts and
transposes 3-D tensors) and on ``Loop``; onnx-tf is unmaintained since 2022. The models here use
about 25 op types, each a few lines of TF below.

Each ONNX node becomes one TF op (or a few) under a ``tf.name_scope`` named after the node, so a TF
profile can be attributed back to ONNX nodes through ``TFModel.scope_to_node``. Large weights are
``tf.Variable``s captured by the function: a constant would be embedded in the GraphDef, which
cannot exceed 2 GB.

Usage (``model`` being the matching ``rechar.models`` model)::

    tf_model = lower(onnx.load("model.onnx"))
    probabilities = tf_model(model.make_inputs(batch=16))[0]  # convenience, numpy in and out
    tf_model.function(*tensors)                                 # the compiled function, for timing
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from typing import Callable

import numpy as np
import onnx
import tensorflow as tf
from onnx import helper, numpy_helper

#: Initializers at least this big become tf.Variables; smaller ones are graph constants, which
#: lets TF fold shape arithmetic (Reshape targets, Slice bounds) at trace time.
VARIABLE_MIN_BYTES = 1 << 20
#: Softmax's axis semantics (and axes-as-inputs of Squeeze/Unsqueeze/ReduceSum) changed in opset 13.
MIN_OPSET = 13


class UnsupportedOpError(Exception):
    """The graph uses an op type, or an op variant, that this lowering does not handle."""


@dataclasses.dataclass
class TFModel:
    input_names: list[str]
    output_names: list[str]
    #: The compiled function: positional tensors in ``input_names`` order -> list of outputs.
    function: tf.types.experimental.PolymorphicFunction
    #: TF name scope (the prefix of a TF op name) -> ONNX node name.
    scope_to_node: dict[str, str]

    def __call__(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [out.numpy() for out in self.function(*(tf.convert_to_tensor(feed[n]) for n in self.input_names))]


def lower(model: onnx.ModelProto, jit_compile: bool = False) -> TFModel:
    """A TF function computing ``model``'s outputs; the batch (first) dimension stays open."""
    graph = model.graph
    unsupported = sorted({_op_key(n) for n in graph.node} - OP_LOWERINGS.keys())
    if unsupported:
        raise UnsupportedOpError(f"ONNX op(s) not supported by the TensorFlow lowering: {', '.join(unsupported)}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise UnsupportedOpError(f"ONNX opset {opset} is older than the lowering's minimum, {MIN_OPSET}")

    variables: dict[str, tf.Variable] = {}
    constants: dict[str, np.ndarray] = {}
    for init in graph.initializer:  # one array at a time, to bound peak memory
        array = numpy_helper.to_array(init)
        if array.nbytes >= VARIABLE_MIN_BYTES:  # created once, here; the function captures it
            variables[init.name] = tf.Variable(array, trainable=False, name=_sanitize(init.name))
        else:
            constants[init.name] = array
    inputs = [i for i in graph.input if i.name not in variables and i.name not in constants]
    input_names, output_names = [i.name for i in inputs], [o.name for o in graph.output]
    # Copies, so that the function does not keep the model (initializers included) alive.
    nodes = [copy.deepcopy(node) for node in graph.node]
    scopes = _unique_scopes(nodes)

    def run(*args: tf.Tensor) -> list[tf.Tensor]:
        env: dict[str, tf.Tensor | tf.Variable] = {**variables, **dict(zip(input_names, args))}
        env.update({name: tf.constant(a, name=_sanitize(name)) for name, a in constants.items()})
        for node, scope in zip(nodes, scopes):
            # The trailing '/' makes the scope absolute: TF uses it verbatim, without uniquifying.
            with tf.name_scope(scope + "/"):
                node_inputs = [env[name] if name else None for name in node.input]  # '' = absent
                outputs = OP_LOWERINGS[_op_key(node)](node, node_inputs, _attrs(node))
            env.update((name, value) for name, value in zip(node.output, outputs) if name)
        return [tf.convert_to_tensor(env[name]) for name in output_names]

    signature = [tf.TensorSpec(_shape(i), _tf_dtype(i.type.tensor_type.elem_type), name=_sanitize(i.name))
                 for i in inputs]
    # autograph=False: the Python loops below unroll at trace time by design.
    function = tf.function(run, input_signature=signature, jit_compile=jit_compile, autograph=False)
    function.get_concrete_function()  # trace now, so lowering errors surface here
    return TFModel(input_names, output_names, function, dict(zip(scopes, (n.name for n in nodes))))


def _op_key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _sanitize(name: str) -> str:
    """A valid TF scope name: no leading '/', odd characters replaced by '_'."""
    name = re.sub(r"[^A-Za-z0-9_./>-]", "_", re.sub("/+", "/", name).strip("/"))
    return name if re.match(r"[A-Za-z0-9.]", name) else f"n{name}"  # TF's rule for the first character


def _unique_scopes(nodes) -> list[str]:
    """One TF scope per node; ONNX does not require node names to be present or unique."""
    scopes: list[str] = []
    for index, node in enumerate(nodes):
        scope = _sanitize(node.name or f"{node.op_type}_{index}")
        scopes.append(f"{scope}_{index}" if scope in scopes else scope)
    return scopes


def _shape(value: onnx.ValueInfoProto) -> list[int | None]:
    # A dim without a fixed size (dim_param such as "batch") stays open.
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def _tf_dtype(elem_type: int) -> tf.DType:
    return tf.as_dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _attrs(node: onnx.NodeProto) -> dict:
    """Attribute values as plain Python: tensors as numpy arrays, strings as str."""
    attrs = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        attrs[attr.name] = value
    return attrs


def _static(node: onnx.NodeProto, value: tf.Tensor, what: str) -> np.ndarray:
    """The trace-time value of an input that sets shapes or axes (always a constant in practice)."""
    static = tf.get_static_value(value)
    if static is None:
        raise UnsupportedOpError(f"{node.op_type} node {node.name!r}: {what} must be a constant")
    return static


def _axes(node, inputs, attrs) -> list[int] | None:
    """Axes from the second input (opset >= 13) or the attribute (older ops such as ReduceMean < 18)."""
    if len(inputs) > 1 and inputs[1] is not None:
        return [int(a) for a in _static(node, inputs[1], "axes")]
    return attrs.get("axes")


# --- Lowerings: (node, inputs, attrs) -> outputs -----------------------------------------------

def _elementwise(fn: Callable) -> Callable:
    return lambda node, inputs, attrs: [fn(*inputs)]


def _variadic(fn: Callable) -> Callable:
    return lambda node, inputs, attrs: [functools.reduce(fn, inputs)]


def _div(node, inputs, attrs):
    a, b = inputs
    # ONNX integer division truncates toward zero (C semantics); tf's // floors.
    return [tf.truncatediv(a, b) if a.dtype.is_integer else tf.math.divide(a, b)]


def _pow(node, inputs, attrs):
    base, exponent = inputs
    return [tf.pow(base, tf.cast(exponent, base.dtype))]  # ONNX allows a differently typed exponent


def _constant(node, inputs, attrs):
    (key, value), = attrs.items()
    dtypes = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    if key not in dtypes and key != "value":
        raise UnsupportedOpError(f"Constant node {node.name!r}: attribute {key} is not supported")
    return [tf.constant(np.asarray(value, dtype=dtypes.get(key)))]


def _constant_of_shape(node, inputs, attrs):
    value = attrs.get("value", np.zeros(1, np.float32))
    return [tf.fill(inputs[0], tf.constant(value.reshape(())))]


def _shape_op(node, inputs, attrs):
    return [tf.shape(inputs[0], out_type=tf.int64)[attrs.get("start", 0):attrs.get("end")]]


def _gather(node, inputs, attrs):
    data, indices = inputs
    axis = attrs.get("axis", 0)
    # ONNX allows negative indices, tf.gather does not: resolve them now if constant, else at run time.
    static = tf.get_static_value(indices)
    size = data.shape[axis] if data.shape[axis] is not None else tf.shape(data, out_type=indices.dtype)[axis]
    if static is not None and isinstance(size, int):
        indices = np.where(static < 0, static + size, static)
    else:
        # One FloorMod maps [-n, n) onto [0, n): a third of the cost of compare + add + select,
        # which on embedding lookups cost as much as the gather itself.
        indices = tf.math.floormod(indices, size)
    return [tf.gather(data, indices, axis=axis)]


def _gemm(node, inputs, attrs):
    a, b, c = (inputs + [None])[:3]
    y = tf.linalg.matmul(a, b, transpose_a=bool(attrs.get("transA")), transpose_b=bool(attrs.get("transB")))
    if attrs.get("alpha", 1.0) != 1.0:
        y = y * attrs["alpha"]
    if c is None:
        return [y]
    beta = attrs.get("beta", 1.0)
    if beta == 1.0 and c.shape.rank == 1:
        return [tf.nn.bias_add(y, c)]  # BiasAdd lets oneDNN fuse MatMul+BiasAdd(+Relu)
    return [y + (c * beta if beta != 1.0 else c)]


def _matmul(node, inputs, attrs):
    a, b = inputs
    # numpy semantics for 1-D operands: promote to a matrix, then drop the added dimension.
    y = tf.linalg.matmul(a[None] if a.shape.rank == 1 else a, b[:, None] if b.shape.rank == 1 else b)
    if a.shape.rank == 1:
        y = tf.squeeze(y, -2)
    return [tf.squeeze(y, -1) if b.shape.rank == 1 else y]


def _reduce(fn: Callable) -> Callable:
    def lower_reduce(node, inputs, attrs):
        axes = _axes(node, inputs, attrs)
        if not axes and attrs.get("noop_with_empty_axes"):
            return [tf.identity(inputs[0])]
        return [fn(inputs[0], axis=axes or None, keepdims=bool(attrs.get("keepdims", 1)))]
    return lower_reduce


def _reshape(node, inputs, attrs):
    data, shape = inputs
    static = tf.get_static_value(shape)
    if static is not None and (attrs.get("allowzero") or 0 not in static):
        return [tf.reshape(data, static)]  # tf.reshape infers -1 itself
    if not attrs.get("allowzero"):  # a 0 copies the input's dimension at that position
        dims = tf.shape(data, out_type=shape.dtype)
        dims = tf.pad(dims, [[0, max(0, shape.shape[0] - data.shape.rank)]])[:shape.shape[0]]
        shape = tf.where(shape == 0, dims, shape)
    return [tf.reshape(data, shape)]


def _slice(node, inputs, attrs):
    data = inputs[0]
    starts, ends = (_static(node, t, "starts/ends").astype(np.int64) for t in inputs[1:3])
    axes, steps = (inputs[i] if len(inputs) > i and inputs[i] is not None else None for i in (3, 4))
    axes = range(len(starts)) if axes is None else [a % data.shape.rank for a in _static(node, axes, "axes")]
    steps = np.ones_like(starts) if steps is None else _static(node, steps, "steps").astype(np.int64)
    # One StridedSlice over all dims; unsliced dims are taken whole through the masks. Its
    # clamping matches ONNX's, INT64_MAX ("to the end") and negative (from the end) included.
    rank = data.shape.rank
    begin, end, stride = np.zeros(rank, np.int64), np.zeros(rank, np.int64), np.ones(rank, np.int64)
    full = sum(1 << d for d in range(rank) if d not in axes)
    for axis, start, stop, step in zip(axes, starts, ends, steps):
        begin[axis], end[axis], stride[axis] = start, stop, step
    return [tf.strided_slice(data, begin, end, stride, begin_mask=full, end_mask=full)]


def _squeeze(node, inputs, attrs):
    return [tf.squeeze(inputs[0], axis=_axes(node, inputs, attrs))]


def _unsqueeze(node, inputs, attrs):
    x = inputs[0]
    axes = _axes(node, inputs, attrs)
    rank = x.shape.rank + len(axes)
    for axis in sorted(a % rank for a in axes):  # ascending, so earlier inserts don't shift later ones
        x = tf.expand_dims(x, axis)
    return [x]


def _expand(node, inputs, attrs):
    x, shape = inputs
    # ONNX Expand broadcasts both ways (a 1 in `shape` keeps x's dim); tf.broadcast_to only widens x.
    target = tf.broadcast_dynamic_shape(tf.shape(x, out_type=shape.dtype), shape)
    return [tf.broadcast_to(x, target)]


def _flatten(node, inputs, attrs):
    x = inputs[0]
    axis = attrs.get("axis", 1) % (x.shape.rank + 1)
    outer = tf.reduce_prod(tf.shape(x)[:axis])
    return [tf.reshape(x, tf.stack([outer, -1]))]


def _split(node, inputs, attrs):
    sizes = _static(node, inputs[1], "split") if len(inputs) > 1 and inputs[1] is not None else attrs.get("split")
    return tf.split(inputs[0], len(node.output) if sizes is None else list(sizes), axis=attrs.get("axis", 0))


def _clip(node, inputs, attrs):
    x, low, high = (inputs + [None, None])[:3]  # bounds are optional inputs (opset >= 11)
    if low is not None:
        x = tf.math.maximum(x, tf.cast(low, x.dtype))
    if high is not None:
        x = tf.math.minimum(x, tf.cast(high, x.dtype))
    return [x]


def _layer_normalization(node, inputs, attrs):
    x, scale, bias = (inputs + [None])[:3]
    axis = attrs.get("axis", -1) % x.shape.rank
    axes = list(range(axis, x.shape.rank))  # ONNX normalises over every axis from `axis` on
    mean, variance = tf.nn.moments(x, axes=axes, keepdims=True)
    inv_std = tf.math.rsqrt(variance + attrs.get("epsilon", 1e-5))
    y = (x - mean) * inv_std * scale
    if bias is not None:
        y = y + bias
    return [y, mean, inv_std][:len(node.output)]


def _gru(node, inputs, attrs):
    x, w, r, b, seq_lens, h0 = (inputs + [None] * 6)[:6]
    directions = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[
        attrs.get("direction", "forward")]
    if seq_lens is not None or attrs.get("clip") or attrs.get("activations", []) not in (
            [], ["Sigmoid", "Tanh"] * len(directions)):
        raise UnsupportedOpError(
            f"GRU node {node.name!r}: sequence_lens, clip and custom activations are not supported")
    batch_major = attrs.get("layout", 0) == 1
    if batch_major:  # compute in [seq, batch, ...] order, convert back at the end
        x = tf.transpose(x, [1, 0, 2])
        h0 = None if h0 is None else tf.transpose(h0, [1, 0, 2])
    if x.shape[0] is None:
        raise UnsupportedOpError(f"GRU node {node.name!r}: the sequence length must be static")
    seq, hidden, before_reset = x.shape[0], r.shape[-1], bool(attrs.get("linear_before_reset"))
    ys, finals = [], []
    for d, reverse in enumerate(directions):
        wb, rb = tf.split(b[d] if b is not None else tf.zeros(6 * hidden, x.dtype), 2)
        # Gate order is z, r, h. Recurrent biases added outside the reset gate's product fold into
        # the input projection: z's and r's always, h's unless linear_before_reset.
        rb_h = rb[2 * hidden:]
        wb = wb + tf.concat([rb[:2 * hidden], tf.zeros_like(rb_h) if before_reset else rb_h], 0)
        # The input projection of all time steps in one matmul.
        xw = tf.linalg.matmul(tf.reshape(x, [-1, x.shape[-1]]), w[d], transpose_b=True) + wb
        xz, xr, xh = (tf.unstack(part, num=seq) for part in tf.split(tf.reshape(xw, [seq, -1, 3 * hidden]), 3, -1))
        r_d = r[d]
        h = tf.zeros_like(xz[0]) if h0 is None else h0[d]
        outputs = []
        for t in reversed(range(seq)) if reverse else range(seq):
            if before_reset:
                hz, hr, hh = tf.split(tf.linalg.matmul(h, r_d, transpose_b=True), 3, axis=-1)
                z, reset = tf.sigmoid(xz[t] + hz), tf.sigmoid(xr[t] + hr)
                candidate = tf.tanh(xh[t] + reset * (hh + rb_h))
            else:
                hz, hr = tf.split(tf.linalg.matmul(h, r_d[:2 * hidden], transpose_b=True), 2, axis=-1)
                z, reset = tf.sigmoid(xz[t] + hz), tf.sigmoid(xr[t] + hr)
                candidate = tf.tanh(xh[t] + tf.linalg.matmul(reset * h, r_d[2 * hidden:], transpose_b=True))
            h = (1 - z) * candidate + z * h
            outputs.append(h)
        ys.append(tf.stack(outputs[::-1] if reverse else outputs))
        finals.append(h)
    y, y_h = tf.stack(ys, axis=1), tf.stack(finals)  # [seq, dirs, batch, H], [dirs, batch, H]
    if batch_major:
        y, y_h = tf.transpose(y, [2, 0, 1, 3]), tf.transpose(y_h, [1, 0, 2])
    return [y, y_h]


#: ONNX op type -> lowering. The one place that decides what is supported.
OP_LOWERINGS: dict[str, Callable] = {
    **{op: _elementwise(fn) for op, fn in {
        "Add": tf.math.add, "Sub": tf.math.subtract, "Mul": tf.math.multiply,
        "Equal": tf.math.equal, "Less": tf.math.less, "Greater": tf.math.greater,
        "GreaterOrEqual": tf.math.greater_equal, "LessOrEqual": tf.math.less_equal, "Not": tf.math.logical_not,
        "Where": tf.where, "Relu": tf.nn.relu, "Sigmoid": tf.math.sigmoid, "Tanh": tf.math.tanh,
        "Neg": tf.math.negative, "Abs": tf.math.abs, "Exp": tf.math.exp, "Log": tf.math.log, "Sqrt": tf.math.sqrt,
        "Identity": tf.identity, "Tile": tf.tile, "Range": tf.range,
    }.items()},
    "Max": _variadic(tf.math.maximum),
    "Min": _variadic(tf.math.minimum),
    "Div": _div,
    "Pow": _pow,
    "Clip": _clip,
    "LayerNormalization": _layer_normalization,
    "Cast": lambda node, inputs, attrs: [tf.cast(inputs[0], _tf_dtype(attrs["to"]))],
    "Dropout": lambda node, inputs, attrs: [tf.identity(inputs[0]), tf.ones_like(inputs[0], tf.bool)],
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Shape": _shape_op,
    "Concat": lambda node, inputs, attrs: [tf.concat(inputs, axis=attrs["axis"])],
    "Transpose": lambda node, inputs, attrs: [tf.transpose(inputs[0], attrs.get("perm"))],
    "Softmax": lambda node, inputs, attrs: [tf.nn.softmax(inputs[0], axis=attrs.get("axis", -1))],
    "Gather": _gather,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "ReduceSum": _reduce(tf.math.reduce_sum),
    "ReduceMean": _reduce(tf.math.reduce_mean),
    "ReduceMax": _reduce(tf.math.reduce_max),
    "ReduceMin": _reduce(tf.math.reduce_min),
    "Reshape": _reshape,
    "Slice": _slice,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Expand": _expand,
    "Flatten": _flatten,
    "Split": _split,
    "GRU": _gru,
}
