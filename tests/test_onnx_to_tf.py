"""The ONNX -> TensorFlow lowering: parity with eager PyTorch on the eight exported models, op
semantics against onnx's reference evaluator, errors, and node names in TF op names."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import rechar.models as models  # noqa: E402
from rechar.exporters import ExportOptions, export  # noqa: E402
from rechar.stacks.onnx_to_tf import UnsupportedOpError, lower  # noqa: E402

ATOL = 1e-5
BATCHES = (1, 16, 37)
INT64_MAX, INT64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(name, exporter)`` -> the tiny model's ONNX graph, each exported once per module."""
    out = tmp_path_factory.mktemp("exports")

    @functools.cache
    def get(name: str, exporter: str = "torchscript") -> onnx.ModelProto:
        result = export(name, scale="tiny", out=out / exporter, options=ExportOptions(exporter=exporter))
        return onnx.load(str(result.onnx_path))

    return get


def assert_matches_pytorch(tf_model, name: str) -> None:
    """One traced function serves every batch size and matches eager PyTorch at each."""
    model = models.get(name, scale="tiny")
    for batch in BATCHES:
        feed = model.make_inputs(batch, seed=1)
        np.testing.assert_allclose(tf_model(feed)[0], model.predict(feed), rtol=0, atol=ATOL,
                                   err_msg=f"{name} at batch {batch}")
    assert tf_model.function.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("name", models.names())
def test_matches_pytorch(exported, name):
    assert_matches_pytorch(lower(exported(name)), name)


@pytest.mark.parametrize("name", ["dlrm-rmc1", "dien"])
def test_dynamo_export_matches_pytorch(exported, name):
    assert_matches_pytorch(lower(exported(name, "dynamo")), name)


def test_jit_compile(exported):
    try:
        tf.function(lambda x: x + 1, jit_compile=True)(tf.constant(1.0))
    except Exception as e:  # noqa: BLE001 - any failure means no usable XLA here
        pytest.skip(f"XLA not available: {e}")
    assert_matches_pytorch(lower(exported("din"), jit_compile=True), "din")


def test_unsupported_ops_are_all_named_up_front():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Loop", ["", "", "a"], ["b"]),
             helper.make_node("FooBar", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
    with pytest.raises(UnsupportedOpError) as error:
        lower(helper.make_model(graph))
    assert str(error.value) == "ONNX op(s) not supported by the TensorFlow lowering: FooBar, Loop"


def test_tf_op_names_carry_onnx_node_names(exported):
    model = exported("dlrm-rmc1")
    tf_model = lower(model)
    assert sorted(tf_model.scope_to_node.values()) == sorted(n.name for n in model.graph.node)
    op_types = {n.name: n.op_type for n in model.graph.node}
    gemm_matmuls = [op.name for op in tf_model.function.get_concrete_function().graph.get_operations()
                    if op.type == "MatMul"
                    and op_types.get(tf_model.scope_to_node.get(op.name.rpartition("/")[0])) == "Gemm"]
    assert gemm_matmuls, "no TF MatMul is named after an ONNX Gemm node"
    assert "bot_mlp/bot_mlp.0/Gemm/MatMul" in gemm_matmuls  # from ONNX node /bot_mlp/bot_mlp.0/Gemm


# --- Single ops against onnx's reference implementation --------------------------------------

@dataclasses.dataclass
class Const:
    """An argument given as an initializer rather than a graph input."""
    value: np.ndarray


_RNG = np.random.default_rng(0)


def _rand(*shape: int) -> np.ndarray:
    return _RNG.standard_normal(shape).astype(np.float32)


def _single_op_model(op: str, args: list, n_outputs: int, opset: int, open_dim: bool, attrs: dict):
    inputs, initializers, feed, names = [], [], {}, []
    for i, arg in enumerate(args):
        name = "" if arg is None else f"in{i}"
        names.append(name)
        if isinstance(arg, Const):
            initializers.append(onnx.numpy_helper.from_array(np.asarray(arg.value), name))
        elif arg is not None:
            shape = ["N", *arg.shape[1:]] if open_dim and arg.ndim else list(arg.shape)
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arg.dtype), shape))
            feed[name] = arg
    outputs = [f"out{i}" for i in range(n_outputs)]
    graph = helper.make_graph([helper.make_node(op, names, outputs, **attrs)], op, inputs,
                              [helper.make_empty_tensor_value_info(o) for o in outputs], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), feed


GRU_ARGS = dict(
    x=_rand(5, 3, 4), w=Const(_rand(2, 18, 4)), r=Const(_rand(2, 18, 6)), b=Const(_rand(2, 36)), h0=_rand(2, 3, 6))
SINGLE_OPS = [
    pytest.param("Div", [np.array([-7, 7, -8, 5, 0]), np.array([2, -2, 3, 5, 3])], {}, id="div-int-truncates"),
    pytest.param("Gather", [_rand(4, 5), np.array([[-1, 0], [2, -5]])], {"axis": 1}, id="gather-negative"),
    pytest.param("Gather", [_rand(4, 5), Const(np.array([-1, 0]))], {"axis": 1}, id="gather-negative-const"),
    pytest.param("Slice", [_rand(4, 10), Const([-3]), Const([INT64_MAX]), Const([1])], {}, id="slice-to-end"),
    pytest.param("Slice", [_rand(4, 10), Const([-2, 8]), Const([INT64_MIN, INT64_MIN]), Const([0, 1]),
                           Const([-1, -3])], {}, id="slice-negative-steps"),
    pytest.param("Reshape", [_rand(4, 3, 4), Const([0, -1])], {}, id="reshape-zero-copies"),
    pytest.param("Expand", [_rand(4, 1, 3), Const([1, 5, 1])], {}, id="expand-both-ways"),
    pytest.param("Unsqueeze", [_rand(4, 3), Const([-1, 1])], {}, id="unsqueeze"),
    pytest.param("Squeeze", [_rand(4, 1, 3, 1), Const([1, -1])], {}, id="squeeze"),
    pytest.param("ReduceSum", [_rand(4, 3, 2), Const([-1])], {"keepdims": 1}, id="reducesum-keepdims"),
    pytest.param("ReduceSum", [_rand(4, 3, 2)], {"keepdims": 0}, id="reducesum-all"),
    pytest.param("ReduceSum", [_rand(4, 3, 2)], {"noop_with_empty_axes": 1}, id="reducesum-noop"),
    pytest.param("ReduceMean", [_rand(4, 3, 2)], {"axes": [1]}, id="reducemean-axes-attribute"),
    pytest.param("Gemm", [_rand(5, 2), Const(_rand(5, 3)), Const(_rand(1, 3))],
                 {"transA": 1, "alpha": 0.5, "beta": 2.0}, id="gemm-transA-alpha-beta"),
    pytest.param("MatMul", [_rand(4), Const(_rand(4, 3))], {}, id="matmul-1d"),
    pytest.param("MatMul", [_rand(4, 2, 3), Const(_rand(3, 5))], {}, id="matmul-broadcast"),
    pytest.param("Softmax", [_rand(4, 3, 5)], {"axis": 1}, id="softmax-axis"),
    pytest.param("Flatten", [_rand(4, 2, 3, 4)], {"axis": 2}, id="flatten"),
    pytest.param("Split", [_rand(4, 3), Const([1, 2])], {"axis": 1}, id="split"),
    pytest.param("Pow", [np.abs(_rand(4, 3)), Const(np.array([2, 0, 3]))], {}, id="pow-int-exponent"),
    pytest.param("Cast", [_rand(4, 3) * 10], {"to": TensorProto.INT32}, id="cast"),
    pytest.param("Where", [_rand(4, 3) > 0, _rand(4, 3), Const(np.float32(-1))], {}, id="where"),
    pytest.param("ConstantOfShape", [np.array([2, 3])], {"value": helper.make_tensor("v", TensorProto.INT64, [1], [7])},
                 id="constantofshape"),
    pytest.param("Max", [_rand(4, 3), Const(_rand(3)), Const(_rand(4, 1))], {}, id="max-variadic"),
    pytest.param("Abs", [_rand(4, 3)], {}, id="abs"),
    pytest.param("GreaterOrEqual", [np.array([[1, 5, 7]]), Const(np.array([5]))], {}, id="greaterorequal-int"),
    pytest.param("LessOrEqual", [_rand(4, 3), Const(_rand(3))], {}, id="lessorequal"),
    pytest.param("Clip", [np.array([[-5, 0, 3, 9]]), Const(np.array(1)), Const(np.array(4))], {}, id="clip-int"),
    pytest.param("Clip", [_rand(4, 3), Const(np.float32(0.1))], {}, id="clip-min-only"),
    pytest.param("Clip", [_rand(4, 3), None, Const(np.float32(-0.2))], {}, id="clip-max-only"),
    pytest.param("LayerNormalization", [_rand(4, 3, 5) * 3 + 1, Const(_rand(5)), Const(_rand(5))],
                 {"epsilon": 1e-6}, id="layernorm-last-axis"),
    pytest.param("LayerNormalization", [_rand(4, 3, 5), Const(_rand(3, 5))], {"axis": 1}, id="layernorm-two-axes-no-bias"),
    pytest.param("GRU", [GRU_ARGS["x"], GRU_ARGS["w"], GRU_ARGS["r"], GRU_ARGS["b"], None, GRU_ARGS["h0"]],
                 {"hidden_size": 6, "direction": "bidirectional"}, id="gru-bidirectional"),
    pytest.param("GRU", [GRU_ARGS["x"], Const(GRU_ARGS["w"].value[:1]), Const(GRU_ARGS["r"].value[:1])],
                 {"hidden_size": 6, "direction": "reverse", "linear_before_reset": 1}, id="gru-reverse-no-bias"),
    pytest.param("GRU", [GRU_ARGS["x"].transpose(1, 0, 2), GRU_ARGS["w"], GRU_ARGS["r"], GRU_ARGS["b"], None,
                         GRU_ARGS["h0"].transpose(1, 0, 2)],
                 {"hidden_size": 6, "direction": "bidirectional", "layout": 1, "linear_before_reset": 1},
                 id="gru-batch-major"),
]


@pytest.mark.parametrize("op, args, attrs", SINGLE_OPS)
def test_single_op_matches_onnx_reference(op, args, attrs):
    n_outputs = {"Split": 2, "GRU": 2}.get(op, 1)
    # GRU's first dim is the (static) sequence unless batch-major; ConstantOfShape's input is a shape.
    open_dim = op not in ("ConstantOfShape", "GRU") or attrs.get("layout") == 1
    model, feed = _single_op_model(op, args, n_outputs, opset=17, open_dim=open_dim, attrs=attrs)
    expected = ReferenceEvaluator(model).run(None, feed)
    actual = lower(model)(feed)
    for got, want in zip(actual, expected):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_unsupported_op_variant_is_reported():
    x, w, r = GRU_ARGS["x"], GRU_ARGS["w"].value[:1], GRU_ARGS["r"].value[:1]
    model, _ = _single_op_model("GRU", [x, Const(w), Const(r), None, np.full(3, 5, np.int32)], 1, opset=17,
                                open_dim=False, attrs={"hidden_size": 6})
    with pytest.raises(UnsupportedOpError, match="GRU.*sequence_lens"):
        lower(model)
