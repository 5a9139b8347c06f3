"""The arithmetic of each analysis, on hand-made tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from rechar.analysis.breakdown import (bottleneck_shift, breakdown_wide, category_breakdown, dominant_shifts,
                                      dominant_table)
from rechar.analysis.deployment import best_deployment, crossover, gpu_speedup
from rechar.analysis.features import feature_correlation, model_features
from rechar.analysis.ops import coverage, normalize
from rechar.taxonomy import CATEGORIES, categorize, layer_category


def _ops(rows):
    cols = ["host", "run_id", "model", "backend", "device", "batch", "category", "self_us_per_iter"]
    return pd.DataFrame(rows, columns=cols)


OPS = _ops([
    ("h", "r", "dlrm", "torch", "cpu", 64, "fc", 50.0),
    ("h", "r", "dlrm", "torch", "cpu", 64, "fc", 10.0),  # two fc ops: summed
    ("h", "r", "dlrm", "torch", "cpu", 64, "embedding", 30.0),
    ("h", "r", "dlrm", "torch", "cpu", 64, "interaction", 10.0),
    ("h", "r", "dlrm", "ort-cpu", "cpu", 64, "embedding", 50.0),
    ("h", "r", "dlrm", "ort-cpu", "cpu", 64, "fc", 40.0),
    ("h", "r", "dlrm", "ort-cpu", "cpu", 64, "interaction", 10.0),
])


def test_category_breakdown_sums_and_shares():
    b = category_breakdown(OPS)
    torch_fc = b[(b.backend == "torch") & (b.category == "fc")].iloc[0]
    assert torch_fc.self_us_per_iter == 60.0 and torch_fc.share == pytest.approx(0.6)
    assert b.groupby("backend")["share"].sum().tolist() == pytest.approx([1.0, 1.0])
    wide = breakdown_wide(b)
    assert list(wide.columns[5:]) == ["fc", "embedding", "interaction"]  # canonical order
    assert wide.set_index("backend").loc["ort-cpu", "embedding"] == pytest.approx(0.5)


def test_bottleneck_shift_against_the_reference_backend():
    shift = bottleneck_shift(category_breakdown(OPS), reference="torch")
    dom = shift.drop_duplicates("backend").set_index("backend")
    assert dom.loc["torch", "dominant"] == "fc" and dom.loc["torch", "dominant_share"] == pytest.approx(0.6)
    assert dom.loc["ort-cpu", "dominant"] == "embedding"
    emb = shift[(shift.backend == "ort-cpu") & (shift.category == "embedding")].iloc[0]
    assert emb.delta == pytest.approx(0.2) and emb.reference_share == pytest.approx(0.3)
    fc = shift[(shift.backend == "ort-cpu") & (shift.category == "fc")].iloc[0]
    assert fc.delta == pytest.approx(-0.2)
    table = dominant_table(shift)
    assert table.iloc[0]["ort-cpu"] == "embedding (50%)" and table.iloc[0]["torch"] == "fc (60%)"


def test_dominant_shifts_lists_only_points_whose_backends_disagree():
    agree = _ops([  # at batch 1 both backends spend most in embedding: no shift there
        ("h", "r", "dlrm", "torch", "cpu", 1, "embedding", 80.0), ("h", "r", "dlrm", "torch", "cpu", 1, "fc", 20.0),
        ("h", "r", "dlrm", "ort-cpu", "cpu", 1, "embedding", 70.0), ("h", "r", "dlrm", "ort-cpu", "cpu", 1, "fc", 30.0),
    ])
    shifts = dominant_shifts(bottleneck_shift(category_breakdown(pd.concat([OPS, agree])), reference="torch"))
    assert shifts[["batch", "backend", "dominant"]].values.tolist() == [[64, "ort-cpu", "embedding"], [64, "torch", "fc"]]
    assert shifts["dominant_share"].tolist() == pytest.approx([0.5, 0.6])
    assert dominant_shifts(bottleneck_shift(category_breakdown(agree))).empty


def _points(rows):
    cols = ["host", "model", "framework", "backend", "device", "batch", "status", "p50_us", "p99_us", "throughput_sps"]
    return pd.DataFrame(rows, columns=cols)


def test_gpu_speedup_and_crossover():
    points = _points([
        ("cpu-box", "m", "torch", "torch", "cpu", 1, "ok", 100, 0, 0),
        ("cpu-box", "m", "torch", "torch", "cpu", 64, "ok", 1000, 0, 0),
        ("cpu-box", "m", "torch", "torch", "cpu", 1024, "ok", 10000, 0, 0),
        ("gpu-box", "m", "torch", "torch-cuda", "cuda", 1, "ok", 200, 0, 0),
        ("gpu-box", "m", "torch", "torch-cuda", "cuda", 64, "ok", 500, 0, 0),
        ("gpu-box", "m", "torch", "torch-cuda", "cuda", 1024, "ok", 1000, 0, 0),
        # onnxruntime: the GPU wins at 1, loses at 64, wins at 1024 -> crossover 1024
        ("cpu-box", "m", "onnxruntime", "ort-cpu", "cpu", 1, "ok", 100, 0, 0),
        ("cpu-box", "m", "onnxruntime", "ort-cpu", "cpu", 64, "ok", 100, 0, 0),
        ("cpu-box", "m", "onnxruntime", "ort-cpu", "cpu", 1024, "ok", 900, 0, 0),
        ("gpu-box", "m", "onnxruntime", "ort-cuda", "cuda", 1, "ok", 50, 0, 0),
        ("gpu-box", "m", "onnxruntime", "ort-cuda", "cuda", 64, "ok", 200, 0, 0),
        ("gpu-box", "m", "onnxruntime", "ort-cuda", "cuda", 1024, "ok", 300, 0, 0),
        ("gpu-box", "m", "onnxruntime", "ort-cuda", "cuda", 4096, "invalid", None, None, None),
        # CUDA graphs: ort-cpu is its counterpart too, as a pair of its own (GPU wins from batch 1)
        ("gpu-box", "m", "onnxruntime", "ort-cuda-graph", "cuda", 1, "ok", 25, 0, 0),
        ("gpu-box", "m", "onnxruntime", "ort-cuda-graph", "cuda", 64, "ok", 50, 0, 0),
        # compiled on the GPU, but no compiled CPU point to compare with: no pair (not against eager torch)
        ("gpu-box", "m", "torch", "torch-compile-cuda", "cuda", 64, "ok", 10, 0, 0),
    ])
    s = gpu_speedup(points)
    torch_s = s[s.gpu_backend == "torch-cuda"].set_index("batch")["speedup"]
    assert torch_s.tolist() == pytest.approx([0.5, 2.0, 10.0])
    assert set(s["cpu_host"]) == {"cpu-box"} and set(s["gpu_host"]) == {"gpu-box"}
    assert "torch-compile-cuda" not in set(s["gpu_backend"])
    c = crossover(s).set_index("gpu_backend")
    assert c.loc["torch-cuda", "crossover_batch"] == 64 and c.loc["torch-cuda", "max_speedup"] == pytest.approx(10.0)
    assert c.loc["torch-cuda", "at_batch"] == 1024 and c.loc["torch-cuda", "cpu_backend"] == "torch"
    assert c.loc["ort-cuda", "crossover_batch"] == 1024 and c.loc["ort-cuda", "max_speedup"] == pytest.approx(3.0)
    assert c.loc["ort-cuda-graph", "crossover_batch"] == 1 and c.loc["ort-cuda-graph", "max_speedup"] == pytest.approx(4.0)


def test_crossover_none_when_the_gpu_never_wins_at_the_top():
    s = pd.DataFrame({"model": "m", "cpu_backend": "torch", "gpu_backend": "torch-cuda", "cpu_host": "a",
                      "gpu_host": "b", "batch": [1, 64], "speedup": [2.0, 0.9]})
    assert crossover(s).iloc[0]["crossover_batch"] is None


def test_best_deployment_under_the_bound():
    points = _points([
        ("h", "a", "torch", "torch", "cpu", 64, "ok", 900, 5_000, 70_000),
        ("h", "a", "torch", "torch", "cpu", 1024, "ok", 9_000, 12_000, 130_000),  # fastest, misses the bound
        ("h", "a", "onnxruntime", "ort-cpu", "cpu", 256, "ok", 2_000, 9_900, 120_000),  # best within
        ("h", "a", "onnxruntime", "ort-cpu", "cpu", 512, "failed", None, None, None),
        ("h", "b", "torch", "torch", "cpu", 1, "ok", 20_000, 30_000, 50),  # nothing meets 10 ms
    ])
    best = best_deployment(points, p99_bound_ms=10).set_index("model")
    assert best.loc["a", "backend"] == "ort-cpu" and best.loc["a", "batch"] == 256
    assert best.loc["a", "p99_bound_ms"] == 10
    assert math.isnan(best.loc["b", "throughput_sps"]) and pd.isna(best.loc["b", "backend"])
    loose = best_deployment(points, p99_bound_ms=20).set_index("model")
    assert loose.loc["a", "batch"] == 1024


def test_feature_correlation_is_spearman_over_models():
    features = pd.DataFrame({"model": ["a", "b", "c", "d"], "embedding_bytes_read_per_sample": [1, 2, 3, 4],
                             "macs_per_sample": [4, 3, 2, 1], "lookups_per_sample": [1, 1, 2, 2], "seq_len": [0, 0, 0, 9]})
    metrics = pd.DataFrame({"model": ["a", "b", "c", "d"], "embedding_share": [0.1, 0.2, 0.5, 0.9],
                            "gpu_speedup": [None, None, 2.0, 3.0], "cpu_throughput_sps": [10, 20, 30, 40]})
    corr = feature_correlation(features, metrics).set_index(["feature", "metric"])
    assert corr.loc[("embedding_bytes_read_per_sample", "embedding_share"), "spearman"] == pytest.approx(1.0)
    assert corr.loc[("macs_per_sample", "cpu_throughput_sps"), "spearman"] == pytest.approx(-1.0)
    assert corr.loc[("macs_per_sample", "embedding_share"), "models"] == 4
    gpu = corr.loc[("macs_per_sample", "gpu_speedup")]
    assert gpu["models"] == 2 and math.isnan(gpu["spearman"])  # too few models to say


def test_model_features_come_from_the_config():
    from rechar.models import resolve_config

    f = model_features({"dlrm-rmc1": resolve_config("dlrm-rmc1", "small").to_dict(),
                        "din": resolve_config("din", "small").to_dict()}).set_index("model")
    assert f.loc["dlrm-rmc1", "embedding_bytes_read_per_sample"] == 8 * 80 * 32 * 4
    assert f.loc["din", "seq_len"] == 250 and f.loc["dlrm-rmc1", "seq_len"] == 0


def test_normalize_per_iteration_and_layer_refinement():
    classes = {"attention": "ActivationUnit", "attention.mlp": "Sequential", "attention.mlp.0": "Linear",
               "top_mlp.0": "Linear", "item_emb": "EmbeddingTable"}
    raw = pd.DataFrame([
        ("Gemm", "/attention/mlp/mlp.0/Gemm", "attention.mlp.0", 20, 400.0),
        ("Gemm", "/top_mlp/top_mlp.0/Gemm", "top_mlp.0", 10, 300.0),
        ("Gather", "/item_emb/Gather", "item_emb", 20, 200.0),
        ("Softmax", "/attention/Softmax", "attention", 10, 50.0),
        ("Mystery", "/x", "", 10, 50.0),
    ], columns=["native_op", "node", "layer", "calls", "self_us"])
    point = {"run_id": "r", "model": "din", "backend": "ort-cpu", "device": "cpu", "batch": 8}
    ops = normalize(raw, 10, point, classes).set_index("node")
    assert ops.loc["/attention/mlp/mlp.0/Gemm", "op_category"] == "fc"
    assert ops.loc["/attention/mlp/mlp.0/Gemm", "category"] == "attention"
    assert ops.loc["/top_mlp/top_mlp.0/Gemm", "category"] == "fc"
    assert ops.loc["/item_emb/Gather", "category"] == "embedding"
    assert ops.loc["/attention/Softmax", ["op_category", "category"]].tolist() == ["softmax", "attention"]
    assert ops.loc["/x", "category"] == "other"
    assert ops.loc["/top_mlp/top_mlp.0/Gemm", "self_us_per_iter"] == 30.0
    assert ops.loc["/attention/mlp/mlp.0/Gemm", "calls_per_iter"] == 2
    assert ops["share"].sum() == pytest.approx(1.0)
    assert ops.loc["/item_emb/Gather", "share"] == pytest.approx(20 / 100)


def test_coverage_is_profiled_time_over_p50():
    ops = pd.DataFrame({"run_id": "r", "model": "m", "backend": "torch", "device": "cpu", "batch": 1,
                        "self_us_per_iter": [30.0, 50.0]})
    points = pd.DataFrame({"run_id": ["r"], "model": ["m"], "backend": ["torch"], "device": ["cpu"], "batch": [1],
                           "p50_us": [100.0]})
    assert coverage(ops, points).iloc[0]["coverage"] == pytest.approx(0.8)


def test_taxonomy_tables():
    assert categorize("_MklNativeFusedMatMul", "top_mlp.0", {}) == ("fc", "fc")
    assert categorize("aten::embedding_bag", "emb.tables.0", {"emb.tables.0": "EmbeddingTable"}) == ("embedding", "embedding")
    assert categorize("MatMul", "interest_evolution.hidden_proj",
                      {"interest_evolution": "AUGRUCell", "interest_evolution.hidden_proj": "Linear"}) == ("fc", "recurrent")
    assert categorize("Transpose", "interest_extractor", {"interest_extractor": "GRU"}) == ("data-movement", "recurrent")
    assert layer_category("", {}) is None
    assert set(categorize("anything", "", {})) == {"other"}
    from rechar.taxonomy import LAYER_CATEGORY, OP_CATEGORY

    assert set(OP_CATEGORY.values()) | set(LAYER_CATEGORY.values()) <= set(CATEGORIES)


def test_layers_of_the_later_models_refine_to_their_categories():
    """The real module trees of dlrm-dcnv2, sasrec and hstu: each new layer kind counts in its
    category, layer norm included, and an FC outside those layers stays fc."""
    from rechar.analysis.ops import layer_classes
    from rechar.models import resolve_config

    def cats(name):
        classes = layer_classes(name, resolve_config(name, "tiny").to_dict())
        return lambda op, layer: categorize(op, layer, classes)

    dcn, sas, hstu = cats("dlrm-dcnv2"), cats("sasrec"), cats("hstu")
    assert dcn("aten::addmm", "cross.up.2") == ("fc", "cross-network")
    assert dcn("Mul", "cross") == ("elementwise", "cross-network")
    assert dcn("Gather", "emb.tables.20") == ("embedding", "embedding")
    assert dcn("Concat", "interaction") == ("interaction", "interaction")
    assert dcn("Gemm", "top_mlp.0") == ("fc", "fc")
    assert sas("MatMul", "blocks.1.attention.query") == ("fc", "self-attention")
    assert sas("Softmax", "blocks.0.attention") == ("softmax", "self-attention")
    assert sas("Gemm", "blocks.0.ffn.inner") == ("fc", "feed-forward")
    assert sas("aten::native_layer_norm", "blocks.0.ffn_norm") == ("normalisation", "normalisation")
    assert sas("MatMul", "scoring") == ("fc", "candidate-scoring")
    assert hstu("aten::silu", "layers.3.attention") == ("activation", "pointwise-attention")
    assert hstu("Gather", "layers.0.attention.bias") == ("embedding", "pointwise-attention")
    assert hstu("Log", "time_buckets") == ("elementwise", "pointwise-attention")
    assert hstu("MVN", "layers.2.output_norm") == ("normalisation", "normalisation")
    assert hstu("MatMul", "layers.2.uvqk") == ("fc", "fc")  # the u/v/q/k projection stays fc
    for op in ("LayerNormalization", "MVN", "aten::native_layer_norm", "aten::var_mean"):
        assert categorize(op, "", {})[0] == "normalisation"
    for op in ("aten::silu", "QuickGelu", "_MklSwish"):
        assert categorize(op, "", {})[0] == "activation"
    # Inductor turns SASRec's written-out attention into one SDPA call that no module encloses: it
    # counts in SASRec's only attention-kind layer; DIN's is the study's attention; a model with
    # no attention layer, or the op inside a known layer, keeps what it had
    sdpa = "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert sas(sdpa, "") == ("attention", "self-attention")
    assert cats("din")(sdpa, "") == ("attention", "attention")
    assert dcn(sdpa, "") == ("attention", "attention")
    assert sas(sdpa, "blocks.0.ffn.inner") == ("attention", "feed-forward")
    assert sas("aten::addmm", "") == ("fc", "fc")  # only ops of an attention kind move
    two_kinds = {"a": "CausalSelfAttention", "b": "PointwiseAttention"}
    assert categorize(sdpa, "", two_kinds) == ("attention", "attention")  # ambiguous: its own


def test_simulated_figures_enter_the_feature_correlation_as_means_over_points():
    """Without hardware counters, the simulation pass's per-point totals give the
    microarchitecture metrics: each model's mean over its simulated points, named sim_*."""
    from rechar.analysis.features import model_metrics

    empty = pd.DataFrame(columns=["model", "device", "status", "throughput_sps"])
    breakdown = pd.DataFrame(columns=["host", "model", "backend", "batch", "device", "category", "share"])
    counters = pd.DataFrame(columns=["model", "device", "status", "ipc", "llc_mpki"])
    simulated = pd.DataFrame({"model": ["a", "a", "b", "c"], "instructions_per_sample": [100.0, 300.0, 50.0, 10.0],
                              "ll_mpki": [1.0, 3.0, 5.0, 9.0], "frontend_share": [0.4, 0.2, 0.1, 0.05],
                              "backend_memory_share": [0.1, 0.3, 0.5, 0.7]})
    metrics = model_metrics(empty, breakdown, pd.DataFrame(), counters, simulated).set_index("model")
    assert metrics.loc["a", "sim_instructions_per_sample"] == pytest.approx(200.0)  # (100 + 300) / 2
    assert metrics.loc["a", "sim_ll_mpki"] == pytest.approx(2.0)
    assert metrics.loc["c", "sim_backend_memory_share"] == pytest.approx(0.7)
    features = pd.DataFrame({"model": ["a", "b", "c"], "embedding_bytes_read_per_sample": [1, 2, 3],
                             "macs_per_sample": [3, 2, 1], "lookups_per_sample": [1, 2, 3], "seq_len": [0, 0, 0]})
    corr = feature_correlation(features, metrics.reset_index()).set_index(["feature", "metric"])
    assert corr.loc[("embedding_bytes_read_per_sample", "sim_ll_mpki"), "spearman"] == pytest.approx(1.0)
    assert corr.loc[("macs_per_sample", "sim_instructions_per_sample"), "spearman"] == pytest.approx(1.0)
    assert ("macs_per_sample", "ipc") not in corr.index  # counted on no model: left out, not zero
