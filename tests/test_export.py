"""ONNX export: checker, parity with PyTorch at three batch sizes, no Loop, traceability, cache."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from torch import nn

import rechar.models as models
from rechar.exporters import ExportCheckError, ExportOptions, export, load_manifest, node_modules
from rechar.exporters import onnx_export
from rechar.models.layers import EmbeddingTable

NAMES = models.names()


@pytest.mark.parametrize("name", NAMES)
def test_export_passes_checker_and_matches_pytorch(tiny_exports, name):
    result = tiny_exports[name]
    onnx.checker.check_model(str(result.onnx_path), full_check=True)
    parity = result.manifest["parity"]
    assert parity["batches"] == [1, 16, 37]
    assert parity["max_logit_error"] <= parity["atol"] == 1e-4 and parity["margin"] <= 1
    # independent re-check at a batch size the export did not use, with fresh inputs
    model = models.get(name, scale="tiny")
    feed = model.make_inputs(batch=5, seed=11)
    got = ort.InferenceSession(str(result.onnx_path)).run(None, feed)[0]
    np.testing.assert_allclose(got, model.predict(feed), atol=1e-5)  # probabilities (spread ~0.3): 1e-5 is tight


@pytest.mark.parametrize("name", NAMES)
def test_graph_has_no_loop_and_a_dynamic_batch(tiny_exports, name):
    graph = onnx.load(str(tiny_exports[name].onnx_path))
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & {"Loop", "Scan", "SequenceConstruct"}
    assert "Gather" in ops
    for value in list(graph.graph.input) + list(graph.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("name", NAMES)
def test_nodes_trace_back_to_pytorch_modules(tiny_exports, name):
    graph = onnx.load(str(tiny_exports[name].onnx_path))
    paths = node_modules(graph)
    modules = dict(models.get(name, scale="tiny").named_modules())
    for node in graph.graph.node:
        path = paths[node.name]
        assert path in modules, f"{node.name} -> {path!r} is not a module"
        if node.op_type == "Gemm":
            assert isinstance(modules[path], nn.Linear), (node.name, path)
    gathered = {paths[n.name] for n in graph.graph.node if n.op_type == "Gather"}
    tables = {n for n, m in modules.items() if isinstance(m, EmbeddingTable)}
    assert tables <= gathered, f"embedding tables without a traced Gather: {tables - gathered}"


def test_attribution_reaches_layers_of_dlrm_and_din(tiny_exports):
    dlrm = set(node_modules(onnx.load(str(tiny_exports["dlrm-rmc1"].onnx_path))).values())
    assert {"bot_mlp.0", "emb.tables.0", "interaction", "top_mlp.4"} <= dlrm
    din = set(node_modules(onnx.load(str(tiny_exports["din"].onnx_path))).values())
    assert {"attention", "attention.mlp.0", "item_emb", "top_mlp.0"} <= din
    dien = set(node_modules(onnx.load(str(tiny_exports["dien"].onnx_path))).values())
    assert {"interest_extractor", "interest_evolution.hidden_proj", "attention.mlp.0"} <= dien


def test_manifest_records_what_was_exported(tiny_exports):
    result = tiny_exports["din"]
    m = load_manifest(result.path)
    assert m["model"] == "din" and m["scale"] == "tiny" and m["exporter"] == "torchscript" and m["opset"] == 17
    assert m["config"]["seq_len"] == 8 and m["fixed_dims"] == {"seq_len": 8}
    assert [i["name"] for i in m["inputs"]] == list(models.get("din", scale="tiny").input_names)
    history = next(i for i in m["inputs"] if i["name"] == "history")
    assert history == {"name": "history", "dtype": "int64", "shape": ["batch", 8]}
    assert m["outputs"][0]["shape"] == ["batch", 2]
    assert set(m["versions"]) >= {"torch", "onnx", "onnxruntime", "python", "rechar"}
    assert m["export_seconds"] > 0 and m["peak_rss_bytes"] > 10_000_000
    for fname, digest in m["files"].items():
        assert hashlib.sha256((result.path / fname).read_bytes()).hexdigest() == digest
    assert "model.onnx" in m["files"]


def test_exported_sequence_length_is_fixed(tiny_exports):
    """The exporters fix the sequence length; a different one is refused, not silently wrong."""
    session = ort.InferenceSession(str(tiny_exports["dien"].onnx_path))
    feed = models.get("dien", scale="tiny", overrides={"seq_len": 6}).make_inputs(2)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, feed)


def test_second_export_is_a_cached_no_op(tmp_path):
    first = export("ncf", "tiny", out=tmp_path)
    mtime = first.onnx_path.stat().st_mtime_ns
    messages = []
    again = export("ncf", "tiny", out=tmp_path, log=messages.append)
    assert again.cached and not first.cached
    assert again.onnx_path.stat().st_mtime_ns == mtime
    assert "cached" in messages[0]
    # a different config is a different export folder; --force re-exports in place
    other = export("ncf", "tiny", overrides={"mlp": [32, 16]}, out=tmp_path)
    assert not other.cached and other.path != first.path
    forced = export("ncf", "tiny", out=tmp_path, options=ExportOptions(force=True))
    assert not forced.cached and forced.path == first.path
    # a damaged export is not trusted
    first.onnx_path.write_bytes(b"garbage")
    assert not export("ncf", "tiny", out=tmp_path).cached
    assert [p.name for p in (tmp_path / "ncf").iterdir() if p.name.startswith(".")] == []


def test_exports_abandoned_by_killed_processes_are_removed(tmp_path):
    folder = tmp_path / "ncf"
    folder.mkdir()
    dead = folder / ".tiny.tmp-999999999-abc"  # no such pid
    dead.mkdir()
    (dead / "model.onnx").write_bytes(b"half")
    alive = folder / f".tiny.tmp-{os.getpid()}-xyz"  # a live writer's folder is left alone
    alive.mkdir()
    export("ncf", "tiny", out=tmp_path)
    assert not dead.exists() and alive.exists()


def test_parity_failure_fails_loudly_and_leaves_nothing(tmp_path, monkeypatch):
    real_predict = models.RecModel.predict

    def perturbed(self, inputs):
        return real_predict(self, inputs) + 1e-3

    monkeypatch.setattr(models.RecModel, "predict", perturbed)
    with pytest.raises(ExportCheckError, match="differs from PyTorch by"):
        export("ncf", "tiny", out=tmp_path)
    assert list((tmp_path / "ncf").iterdir()) == []


def test_large_models_use_one_external_data_file(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1000)
    result = export("dlrm-rmc3", "tiny", out=tmp_path)
    assert result.manifest["external_data"]
    assert sorted(result.manifest["files"]) == ["model.onnx", "model.onnx.data"]
    assert sorted(p.name for p in result.path.iterdir()) == ["export.json", "model.onnx", "model.onnx.data"]
    assert result.onnx_path.stat().st_size < 100_000  # weights are in the data file
    model = models.get("dlrm-rmc3", scale="tiny")
    feed = model.make_inputs(3)
    np.testing.assert_allclose(ort.InferenceSession(str(result.onnx_path)).run(None, feed)[0], model.predict(feed), atol=1e-5)


def test_dynamo_exporter(tmp_path):
    pytest.importorskip("onnxscript")
    result = export("dlrm-rmc1", "tiny", out=tmp_path, options=ExportOptions(exporter="dynamo"))
    assert result.manifest["opset"] == 20 and result.manifest["parity"]["max_logit_error"] < 1e-4
    paths = set(node_modules(onnx.load(str(result.onnx_path))).values())
    assert {"bot_mlp.0", "emb.tables.3", "top_mlp.0"} <= paths


@pytest.mark.slow
def test_small_scale_export(tmp_path):
    result = export("mt-wnd", "small", out=tmp_path)
    m = result.manifest
    # 43 deep tables of 32 floats plus 43 wide tables of one weight per task (8), 100,000 rows each
    assert m["describe"]["embedding_bytes"] == 43 * 100_000 * (32 + 8) * 4
    assert m["parity"]["max_logit_error"] < 1e-4
    assert json.loads((result.path / "export.json").read_text())["cache_key"] == m["cache_key"]
