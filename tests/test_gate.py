"""The parity gate refuses a stack that computes a different model, on every model and stack.

Faults are planted as a faulty converter's output would arrive (a rewritten initializer in the
exported graph, its hash re-stamped) or, for the stacks that run the PyTorch model itself, in the
model they are handed:

- an embedding table indexed off by one row (row i holds row i-1's values);
- one hidden layer's weights drawn again from the same distribution (PyTorch's Linear init);
- the output bias moved by 2e-3 in logit space.

Each faulted stack must fail the gate, and the same stack on the unfaulted model must pass it (so
that a test does not pass because the stack is broken anyway). The gate's tolerance is
rechar.measure.gate's, the comparison rechar.models.outputs.compare.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import rechar.models as models
from rechar.exporters import ExportResult, exported_model, load_manifest, recorded_calibration
from rechar.measure.gate import GATE_ATOL, GATE_RTOL, compare
from rechar.models.layers import EmbeddingTable
from rechar.models.outputs import logits
from rechar.stacks import BackendOptions, backend_class

FAULTS = ("table-off-by-one", "hidden-layer-redrawn", "output-bias-2e-3")
NAMES = models.names()


def planted(model: models.RecModel, fault: str) -> dict[str, np.ndarray]:
    """The parameters a fault changes: {parameter name: new value}."""
    params = dict(model.named_parameters())
    if fault == "table-off-by-one":
        name = next(f"{path}.weight" for path, m in model.named_modules()
                    if isinstance(m, EmbeddingTable) and m.weight.shape[1] > 1)
        return {name: np.roll(params[name].detach().numpy(), 1, axis=0)}
    layer = model.logit_layer()
    logit_params = {id(p) for p in layer.scaled}
    if fault == "hidden-layer-redrawn":
        # The largest hidden layer (a main MLP's, not an attention unit's: with random weights
        # DIEN's attention scores barely move its output, see the note in rechar.measure.gate).
        path, linear = max(((path, m) for path, m in model.named_modules()
                            if isinstance(m, torch.nn.Linear) and id(m.weight) not in logit_params
                           ), key=lambda pm: pm[1].weight.numel())
        bound = 1 / math.sqrt(linear.in_features)  # nn.Linear's own init: U(-1/sqrt(in), 1/sqrt(in))
        rng = np.random.default_rng(1234)
        return {f"{path}.weight": rng.uniform(-bound, bound, linear.weight.shape).astype(np.float32)}
    bias, index = layer.biases[0]
    name = next(n for n, p in params.items() if p is bias)
    value = bias.detach().numpy().copy()
    value[index] += 2e-3
    return {name: value}


def faulted_export(export: ExportResult, changes: dict[str, np.ndarray], folder,
                   model: models.RecModel | None = None) -> ExportResult:
    """A copy of ``export`` with ``changes`` written into its initializers and its hash re-stamped.
    A parameter the exporter renamed (a Linear exported as MatMul keeps its weight transposed, as
    ``onnx::MatMul_N``) is found by its values in ``model``."""
    shutil.copytree(export.path, folder)
    path = folder / export.onnx_path.name
    graph = onnx.load(str(path))
    tensors = {t.name: t for t in graph.graph.initializer}
    for name, value in changes.items():
        if name in tensors:
            tensors[name].CopyFrom(numpy_helper.from_array(value, name))
            continue
        old = model.get_parameter(name).detach().numpy()
        for tensor in graph.graph.initializer:
            array = numpy_helper.to_array(tensor)
            if array.shape == old.T.shape and np.array_equal(array, old.T):
                tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value.T), tensor.name))
                break
            if array.shape == old.shape and np.array_equal(array, old):
                tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
                break
        else:
            raise AssertionError(f"{name} is not in the exported graph")
    onnx.save(graph, str(path))
    manifest = load_manifest(folder)
    manifest["files"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["sizes"][path.name] = path.stat().st_size
    (folder / "export.json").write_text(json.dumps(manifest))
    return ExportResult(export.model, folder, manifest, cached=True)


def faulted_model(model: models.RecModel, changes: dict[str, np.ndarray]) -> models.RecModel:
    bad = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in changes.items():
            bad.get_parameter(name).copy_(torch.from_numpy(value))
    return bad


def gate_passes(backend_name: str, model: models.RecModel, export: ExportResult, inputs, want) -> tuple[bool, float]:
    cls = backend_class(backend_name)
    backend = cls(BackendOptions(threads=1))
    backend.load(model if cls.uses_torch_model else None, export)
    try:
        got = backend.outputs(backend.prepare([inputs])())
    finally:
        backend.close()
    ok, _, margin = compare(got, want, model.output_kind, GATE_ATOL, GATE_RTOL)
    return ok, margin


def _check(backend_name, name, fault, tiny_exports, tmp_path):
    model = models.get(name, scale="tiny")
    inputs = model.make_inputs(64, seed=3)
    want = model.predict(inputs)
    export = tiny_exports[name]
    changes = planted(model, fault)
    ok, margin = gate_passes(backend_name, model, export, inputs, want)
    assert ok and margin < 0.5, f"{backend_name} fails the gate on the correct {name} (margin {margin:.3g})"
    bad_export = faulted_export(export, changes, tmp_path / "faulted", model)
    bad_model = faulted_model(model, changes)
    ok, margin = gate_passes(backend_name, bad_model, bad_export, inputs, want)
    assert not ok and margin > 1, f"{backend_name} with {fault} on {name} passes the gate (margin {margin:.3g})"


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend_name", ["ort-cpu", "torch"])
def test_every_planted_fault_is_refused_on_every_model(backend_name, name, fault, tiny_exports, tmp_path):
    _check(backend_name, name, fault, tiny_exports, tmp_path)


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("backend_name", ["tf", "openvino", "torch-compile"])
def test_every_planted_fault_is_refused_on_the_other_cpu_stacks(backend_name, fault, tiny_exports, tmp_path):
    reason = backend_class(backend_name).unavailable_reason()
    if reason:
        pytest.skip(f"{backend_name} unavailable here: {reason}")
    for name in ("ncf", "dien") if backend_name != "torch-compile" else ("ncf",):
        _check(backend_name, name, fault, tiny_exports, tmp_path / name)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_faults_exceed_the_tolerance_at_small_scale(name):
    """At small scale (tables of 100,000 rows, where the reference initialisation's outputs barely
    depended on the ids) each fault moves the logits well past the gate's tolerance, while
    eager PyTorch in float64 stays far inside it (the fp32 rounding noise every stack shares)."""
    model = models.get(name, scale="small")
    inputs = model.make_inputs(64, seed=3)
    want = model.predict(inputs)
    for fault in FAULTS:
        bad = faulted_model(model, planted(model, fault))
        ok, _, margin = compare(bad.predict(inputs), want, model.output_kind, GATE_ATOL, GATE_RTOL)
        assert not ok and margin > 5, (fault, margin)
        del bad
    ok, err, margin = compare(_float64_outputs(model, inputs), want, model.output_kind, GATE_ATOL, GATE_RTOL)
    assert ok and margin < 0.5, (err, margin)


def _float64_outputs(model, inputs):
    """The same model computed in float64 (an independent rounding of the same math)."""
    wide = copy.deepcopy(model).double()
    feed = [torch.from_numpy(inputs[n].astype(np.float64) if inputs[n].dtype == np.float32 else inputs[n])
            for n in model.input_names]
    with torch.inference_mode():
        return wide(*feed).numpy()


@pytest.mark.parametrize("scale", ["tiny", pytest.param("small", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", NAMES)
def test_calibrated_outputs_spread_like_a_trained_model(name, scale):
    """Logit spread (std) of a fresh seeded batch, not the calibration batch: 1-2 as targeted,
    and probabilities that do not collapse to one value."""
    model = models.get(name, scale=scale)
    z = logits(model.predict(model.make_inputs(512, seed=99)), model.output_kind)
    assert 1.0 <= z.std() <= 2.0 and abs(z.mean()) < 0.5, (z.std(), z.mean())


def test_an_exports_recorded_calibration_rebuilds_the_same_weights_without_running_the_model(
        tiny_exports, monkeypatch):
    """Workers apply the calibration the export recorded instead of running the model three times
    (minutes under Valgrind): the rebuilt weights equal a measured calibration's bit for bit, on
    every model, through the manifest's JSON; a record of another seed gives other weights."""
    for name in NAMES:
        measured = models.get(name, scale="tiny")
        manifest = load_manifest(tiny_exports[name].path)
        assert manifest["calibration"] == json.loads(json.dumps(measured.calibration)), name
        with monkeypatch.context() as patch:
            patch.setattr(models.RecModel, "predict", lambda *a, **k: pytest.fail("the model ran"))
            config = models.resolve_config(name, "tiny")
            rebuilt = exported_model(name, config, 0, manifest)  # what the workers build
        want, got = measured.state_dict(), rebuilt.state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), name
    manifest = load_manifest(tiny_exports["dlrm-rmc1"].path)
    assert recorded_calibration(manifest, 0, models.resolve_config("dlrm-rmc1", "tiny")) is not None
    assert recorded_calibration(manifest, 1, models.resolve_config("dlrm-rmc1", "tiny")) is None  # another seed
    assert recorded_calibration(manifest, 0, models.resolve_config("dlrm-rmc1", "small")) is None  # another config
    other = models.get("dlrm-rmc1", scale="tiny", seed=1).calibration
    assert other != models.get("dlrm-rmc1", scale="tiny").calibration
    wrong = models.get("dlrm-rmc1", scale="tiny", calibration=other).state_dict()
    right = models.get("dlrm-rmc1", scale="tiny").state_dict()
    assert not all(torch.equal(right[k], wrong[k]) for k in right)
    short = {**other, "first": other["first"] + [0.0]}  # a record for another output layer
    with pytest.raises(ValueError, match="dlrm-rmc1: calibration has 2 shifts for 1 logits"):
        models.get("dlrm-rmc1", scale="tiny", calibration=short)


def test_compare_by_hand():
    """The comparison's arithmetic on hand-made probabilities: p = sigmoid(z)."""
    z = np.array([[-3.0], [0.0], [2.0]])
    p = (1 / (1 + np.exp(-z))).astype(np.float32)
    shifted = (1 / (1 + np.exp(-(z + 5e-5)))).astype(np.float32)  # half the tolerance: passes
    ok, err, margin = compare(shifted, p, "sigmoid", 1e-4, 0.0)
    assert ok and err == pytest.approx(5e-5, rel=0.05) and 0.3 < margin < 0.6
    moved = (1 / (1 + np.exp(-(z + 2e-3)))).astype(np.float32)  # a 2e-3 bias shift: 20x the tolerance
    ok, err, margin = compare(moved, p, "sigmoid", 1e-4, 0.0)
    assert not ok and err == pytest.approx(2e-3, rel=0.01) and 15 < margin < 21
    two = np.concatenate([1 - p, p], axis=1)  # the same as a two-class softmax: log(p1/p0) = z
    ok, err, _ = compare(np.concatenate([1 - moved, moved], axis=1), two, "softmax", 1e-4, 0.0)
    assert not ok and err == pytest.approx(2e-3, rel=0.02)
    assert compare(p[:2], p, "sigmoid", 1e-4, 0.0)[0] is False  # a wrong shape never passes
    assert compare(np.full_like(p, np.nan), p, "sigmoid", 1e-4, 0.0)[0] is False  # nor NaN


def test_a_faulted_export_is_invalid_in_a_sweep_and_a_correct_one_records_its_margin(tmp_path):
    """End to end: the tampered export of the bias fault reaches the worker (its hash re-stamped,
    as a faulty converter's would be), the point is invalid and not timed; the correct export's
    points are timed with their gate margin recorded."""
    from rechar.exporters import export
    from rechar.measure.timing import TimingOptions
    from rechar.results.store import read_point_log
    from rechar.sweep import RunOptions, run_sweep

    timing = TimingOptions(warmup_iters=1, warmup_seconds=0, min_iters=3, min_seconds=0)
    good = run_sweep(RunOptions(models=["ncf"], backends=["ort-cpu"], batch_sizes=[1, 16], scale="tiny", threads=1,
                                exports_dir=str(tmp_path / "e"), timing=timing), tmp_path / "good")
    for rec in read_point_log(good):
        assert rec["status"] == "ok" and 0 < rec["gate_margin"] < 0.5 and rec["gate_logit_error"] < GATE_ATOL
    result = export("ncf", "tiny", out=tmp_path / "e")
    model = models.get("ncf", scale="tiny")
    changes = planted(model, "output-bias-2e-3")
    shutil.rmtree(tmp_path / "bad-e", ignore_errors=True)
    faulted_export(result, changes, tmp_path / "bad")
    shutil.copytree(tmp_path / "e", tmp_path / "bad-e")
    shutil.rmtree(tmp_path / "bad-e" / result.path.relative_to(tmp_path / "e"))
    shutil.copytree(tmp_path / "bad", tmp_path / "bad-e" / result.path.relative_to(tmp_path / "e"))
    bad = run_sweep(RunOptions(models=["ncf"], backends=["ort-cpu"], batch_sizes=[1, 16], scale="tiny", threads=1,
                               exports_dir=str(tmp_path / "bad-e"), timing=timing), tmp_path / "bad-run")
    for rec in read_point_log(bad):
        assert rec["status"] == "invalid" and "in logits" in rec["error"] and rec["gate_margin"] > 10
        assert "p50_us" not in rec
