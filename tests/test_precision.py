"""Precision as a stack choice: every (backend, precision) this machine offers passes the quality
gate on every tiny model, a broken quantization is caught, unsupported combinations are skipped
with their reason, and int8 tables take about a quarter of fp32's memory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import rechar.models as models
from rechar.analysis import analyze
from rechar.stacks import BackendOptions, backend_class, backend_reason
from rechar.measure.timing import TimingOptions
from rechar.measure.quality import EVAL_SAMPLES, QualityThresholds, evaluation_batches, quality, quality_failure
from rechar.stacks.variants import split_backend
from rechar.results.store import load_points, read_manifest
from rechar.sweep import RunOptions, run_sweep
from rechar.sweep.worker import quality_gate

FAST = TimingOptions(warmup_iters=2, warmup_seconds=0.0, min_iters=5, min_seconds=0.0)
VARIANTS = ["torch@bf16", "torch@int8", "ort-cpu@int8", "openvino@bf16"]


def _load(name, variant, tiny_exports):
    reason = backend_reason(variant)
    if reason:
        pytest.skip(f"{variant} not offered here: {reason}")
    cls = backend_class(variant)
    backend = cls(BackendOptions(threads=1, precision=split_backend(variant)[1]))
    backend.load(models.get(name, scale="tiny") if cls.uses_torch_model else None, tiny_exports[name])
    return backend


def _evaluation(name, batch=256):
    """The evaluation set in whole batches of the timed size, eager fp32's outputs, the output kind."""
    model = models.get(name, scale="tiny")
    chunks = evaluation_batches(model.make_inputs(EVAL_SAMPLES, seed=11), batch)
    return chunks, np.concatenate([model.predict(c) for c in chunks]), model.output_kind


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", models.names())
def test_every_offered_precision_passes_the_quality_gate(tiny_exports, name, variant):
    backend = _load(name, variant, tiny_exports)
    try:
        figures = quality_gate(backend, *_evaluation(name))
    finally:
        backend.close()
    assert figures["quality_error"] is None, figures
    assert 0 < figures["quality_logit_max"] <= QualityThresholds().max_logit  # not fp32 in disguise
    assert figures["quality_pair_agreement"] >= QualityThresholds().pair_agreement


def test_a_wrong_quantization_scale_is_caught(tiny_exports):
    """The int8 tables with every row's scale tripled: the gate fails the point, saying why."""
    backend = _load("dlrm-rmc1", "torch@int8", tiny_exports)
    try:
        for module in backend.model.modules():
            if hasattr(module, "packed"):
                scales = module.packed[:, -8:-4].contiguous().view(torch.float32)  # [scale, bias] per row
                module.packed[:, -8:-4] = (scales * 3).view(torch.uint8)
        figures = quality_gate(backend, *_evaluation("dlrm-rmc1"))
    finally:
        backend.close()
    assert figures["quality_error"] and "threshold" in figures["quality_error"], figures


def test_quality_figures_and_thresholds():
    """Hand-made logits z with std 1 (probabilities sigmoid(z)): errors as fractions of that spread."""
    z = np.linspace(-np.sqrt(3), np.sqrt(3), 1000)  # uniform: std exactly 1 as n grows (here 1.001)
    p = 1 / (1 + np.exp(-z))
    same = quality(p, p, "sigmoid")
    assert same["quality_logit_max"] == 0 and same["quality_pair_agreement"] == 1.0
    assert same["quality_logit_spread"] == pytest.approx(1.0, abs=0.002)
    assert quality_failure(same, QualityThresholds()) is None
    shifted = quality(1 / (1 + np.exp(-(z + 0.2))), p, "sigmoid")  # every logit moved by 0.2: 0.2 of the spread
    assert shifted["quality_logit_mean"] == pytest.approx(0.2 / 1.001, rel=1e-3)
    assert shifted["quality_pair_agreement"] == 1.0  # a constant shift keeps every order
    assert "mean logit error 0.2" in quality_failure(shifted, QualityThresholds())
    reversed_order = quality(p[::-1].copy(), p, "sigmoid")  # every pair ordered the other way
    assert reversed_order["quality_pair_agreement"] == 0.0
    assert "sample pairs ordered" in quality_failure(
        {**reversed_order, "quality_logit_max": 0, "quality_logit_mean": 0}, QualityThresholds())
    spike = z.copy()
    spike[500] += 3.0  # one sample off by 3 logits: the largest error fails, the mean passes
    spiked = quality(1 / (1 + np.exp(-spike)), p, "sigmoid")
    assert spiked["quality_logit_mean"] < QualityThresholds().mean_logit
    assert "largest logit error 3" in quality_failure(spiked, QualityThresholds())
    collapsed = quality(np.full_like(p, 0.5), p, "sigmoid")  # outputs collapsed to one value (old NCF bf16)
    assert quality_failure(collapsed, QualityThresholds()) is not None
    broken = p.copy()
    broken[::100] = np.nan  # a kernel that returns NaN for some samples
    assert "not finite" in quality_failure(quality(broken, p, "sigmoid"), QualityThresholds())


def test_a_static_shape_stack_is_judged_at_each_timed_batch_size(tiny_exports):
    """OpenVINO compiles one model per batch size: the gate runs the evaluation set through the
    one compiled for the timed size (batch 1: 2048 calls of one sample; batch 64: 32 calls)."""
    backend = _load("ncf", "openvino@bf16", tiny_exports)
    try:
        for batch in (1, 64):
            chunks, want, kind = _evaluation("ncf", batch)
            seen = []
            prepare = backend.prepare
            backend.prepare = lambda batches: (seen.extend(len(next(iter(b.values()))) for b in batches), prepare(batches))[1]
            figures = quality_gate(backend, chunks, want, kind)
            backend.prepare = prepare
            assert set(seen) == {batch} and len(seen) == EVAL_SAMPLES // batch
            assert figures["quality_error"] is None, figures
    finally:
        backend.close()


def test_int8_tables_take_a_quarter_of_fp32(tiny_exports):
    """ONNX Runtime's int8 tables: one byte per value, exactly a quarter; PyTorch's row-wise tables
    add a 4-byte scale and bias per row: (D + 8) / 4D of fp32."""
    for variant, name in (("ort-cpu@int8", "dlrm-rmc1"), ("torch@int8", "dlrm-rmc1")):
        fp32 = _load(name, split_backend(variant)[0], tiny_exports)
        int8 = _load(name, variant, tiny_exports)
        try:
            ratio = int8.weight_bytes()["embedding_weight_bytes"] / fp32.weight_bytes()["embedding_weight_bytes"]
            assert int8.weight_bytes()["dense_weight_bytes"] < 0.3 * fp32.weight_bytes()["dense_weight_bytes"]
        finally:  # in reverse order of loading: each torch stack restores the grad mode it found
            int8.close()
            fp32.close()
        dim = models.get(name, scale="tiny").config.to_dict()["embedding_dim"]
        assert ratio == pytest.approx(0.25 if variant.startswith("ort") else (dim + 8) / (4 * dim), rel=1e-3)


def test_a_sweep_over_precisions(tmp_path):
    """fp32 and int8 on torch and ort-cpu, tf asked for too: tf@int8 is skipped with its reason,
    every other combination timed with its precision, weights and quality recorded, and the
    analysis pairs each int8 point with its fp32 one."""
    run_dir = run_sweep(RunOptions(models=["ncf"], backends=["torch", "ort-cpu", "tf"], batch_sizes=[1, 8],
                                   precisions=["fp32", "int8"], scale="tiny", timing=FAST, threads=1,
                                   exports_dir=str(tmp_path / "exports"), profile_iters=2), tmp_path / "run")
    skipped = read_manifest(run_dir)["skipped_backends"]
    assert skipped == {"tf@int8": "tf offers fp32, not int8"}
    points = load_points(run_dir)
    assert set(points["backend"]) == {"torch", "torch@int8", "ort-cpu", "ort-cpu@int8", "tf"}
    assert (points["status"] == "ok").all()
    assert set(points["precision"]) == {"fp32", "int8"}
    int8 = points[points["precision"] == "int8"]
    assert int8["quality_pair_agreement"].notna().all() and int8["weight_bytes"].notna().all()
    # Pools are sized by the rows the variant holds: ONNX Runtime's int8 rows are a quarter of fp32's.
    per_batch = points.assign(b=points["pool_gathered_bytes"] / points["pool_batches"]).set_index(["backend", "batch"])["b"]
    for batch in (1, 8):
        assert per_batch[("ort-cpu@int8", batch)] == pytest.approx(per_batch[("ort-cpu", batch)] / 4, rel=1e-3)
    table = analyze([run_dir])["precision"]
    assert len(table) == 4 and (table["memory_ratio"] < 0.5).all()
    p50 = points.set_index(["backend", "batch"])["p50_us"]
    for row in table.itertuples():  # each int8 point against its own stack's fp32 point, same batch
        assert row.speedup == pytest.approx(p50[(row.stack, row.batch)] / p50[(f"{row.stack}@int8", row.batch)])
    shift = analyze([run_dir])["precision_shift"]
    assert {"fc", "embedding"} <= set(shift["category"])


def test_precision_table_pairs_each_variant_with_its_own_fp32_point():
    """Known p50s and weights: speedup = fp32 p50 / variant p50 of the same host, model, stack and
    batch; a variant that was not timed has none; an fp32 point of another host is no partner."""
    from rechar.analysis.precision import precision_table

    cols = ["host", "model", "backend", "batch", "status", "p50_us", "weight_bytes", "embedding_weight_bytes",
            "quality_max_abs", "quality_mean_abs", "quality_pair_agreement", "error"]
    points = pd.DataFrame([
        ("a", "m", "torch", 1, "ok", 200.0, 4000, 3000, None, None, None, None),
        ("a", "m", "torch@int8", 1, "ok", 80.0, 1100, 800, 0.01, 0.002, 0.99, None),
        ("a", "m", "torch@bf16", 1, "ok", 250.0, 2000, 1500, 0.003, 0.001, 0.999, None),
        ("a", "m", "ort-cpu", 1, "ok", 150.0, 4000, 3000, None, None, None, None),
        ("a", "m", "ort-cpu@int8", 1, "invalid", None, 1000, 750, 0.2, 0.1, 0.6, "quality below threshold"),
        ("a", "m", "torch", 64, "ok", 1000.0, 4000, 3000, None, None, None, None),
        ("a", "m", "torch@int8", 64, "ok", 400.0, 1100, 800, 0.01, 0.002, 0.99, None),
        ("b", "m", "torch@int8", 64, "ok", 300.0, 1100, 800, 0.01, 0.002, 0.99, None),  # host b has no fp32
    ], columns=cols)
    table = precision_table(points).set_index(["host", "stack", "precision", "batch"])
    assert len(table) == 5
    assert table.loc[("a", "torch", "int8", 1), "speedup"] == pytest.approx(2.5)  # 200 / 80
    assert table.loc[("a", "torch", "bf16", 1), "speedup"] == pytest.approx(0.8)  # 200 / 250: slower
    assert table.loc[("a", "torch", "int8", 64), "speedup"] == pytest.approx(2.5)  # 1000 / 400
    assert table.loc[("a", "torch", "int8", 1), "memory_ratio"] == pytest.approx(1100 / 4000)
    untimed = table.loc[("a", "ort-cpu", "int8", 1)]
    assert untimed["status"] == "invalid" and pd.isna(untimed["speedup"]) and untimed["fp32_p50_us"] == 150.0
    assert pd.isna(table.loc[("b", "torch", "int8", 64), "speedup"])


def test_bad_precision_is_a_one_line_error(run_cli, tmp_path):
    code, _, err = run_cli("run", "-m", "ncf", "-b", "torch", "--scale", "tiny", "--precision", "fp8",
                           "--out", str(tmp_path / "r"))
    assert code == 2 and err.strip() == "error: unknown precision fp8 (choose from fp32, bf16, int8)"
    code, _, err = run_cli("run", "-m", "ncf", "-b", "tf@int8", "--scale", "tiny", "--out", str(tmp_path / "r"))
    assert code == 2 and "tf offers fp32, not int8" in err


def test_on_a_cluster_only_the_stacks_offer_decides():
    """A GPU-less driver cannot judge whether torch-cuda runs on a node: on a cluster the
    variant is kept if the stack offers the precision, and skipped only if it does not."""
    from rechar.sweep.local import in_precisions

    chosen, skipped = in_precisions(["torch-cuda", "ort-cuda"], ["fp32", "bf16"], {}, lambda msg: None,
                                     on_cluster=True)
    assert chosen == ["torch-cuda", "torch-cuda@bf16", "ort-cuda"]
    assert skipped == {"ort-cuda@bf16": "ort-cuda offers fp32, not bf16"}


def test_gemm_rewrite_keeps_the_numbers():
    """ONNX Runtime's dynamic quantization reaches FC layers only as MatMul: the rewrite of Gemm
    to MatMul (+ Add) gives the same outputs, with B shared by two Gemms (an RNN's steps), one
    transposed, and a Gemm whose optional C is an empty name."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from rechar.stacks.ort_backend import gemm_to_matmul

    rng = np.random.default_rng(0)
    w, bias = rng.standard_normal((4, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1),
         helper.make_node("Gemm", ["h", "W", "b"], ["g"], transB=1),
         helper.make_node("Gemm", ["g", "W", ""], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((3, 4)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = run(model)
    assert gemm_to_matmul(model) == 3
    assert {n.op_type for n in model.graph.node} == {"MatMul", "Add"}
    np.testing.assert_allclose(run(model), want, rtol=1e-6)


def test_int8_nodes_keep_the_layers_of_the_nodes_they_replace(tiny_exports, tmp_path):
    """Dynamic quantization rewrites the exported graph into nodes of its own naming
    (``<node>_quant``, ``<tensor>_DequantizeLinear``) that carry no module annotation: profiled
    on ONNX Runtime's int8 graph, each still counts in the layer of the node it replaced, so
    DCNv2's quantized cross layers are its cross network, not bare fc."""
    from rechar.analysis.ops import layer_classes, normalize
    from rechar.stacks.ort_trace import node_module

    modules = {"/cross/up.2/Gemm": "cross.up.2", "/emb/tables.0/Gather": "emb.tables.0", "/new": ""}
    assert node_module("/cross/up.2/Gemm/MatMul_quant", modules) == "cross.up.2"
    assert node_module("/emb/tables.0/Gather_output_0_DequantizeLinear", modules) == "emb.tables.0"
    assert node_module("/cross/up.2/Gemmx", modules) == ""  # a prefix only up to a / or _
    assert node_module("/new", modules) == ""

    backend = _load("dlrm-dcnv2", "ort-cpu@int8", tiny_exports)
    try:
        model = models.get("dlrm-dcnv2", scale="tiny")
        call = backend.prepare([model.make_inputs(4, seed=1)])
        call()
        result = backend.profile([model.make_inputs(4, seed=1)], 2, tmp_path)
    finally:
        backend.close()
    raw = result.ops
    quantized = raw[raw["native_op"].isin(["DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DequantizeLinear"])]
    assert len(quantized) > 0 and (quantized["layer"] != "").all(), quantized[quantized["layer"] == ""]
    ops = normalize(raw.reindex(columns=raw.columns), result.iterations,
                    {"run_id": "r", "model": "dlrm-dcnv2", "backend": "ort-cpu@int8", "device": "cpu", "batch": 4},
                    layer_classes("dlrm-dcnv2", model.config.to_dict()))
    cross = ops[ops["layer"].str.startswith("cross")]
    assert (cross["category"] == "cross-network").all() and (cross["native_op"] == "DynamicQuantizeMatMul").any()
