"""Export a model to ONNX, verify it, and cache the result.

An export folder holds ``model.onnx`` (plus ``model.onnx.data`` when the weights exceed
protobuf's 2 GB limit) and ``export.json``, the manifest: resolved config, exporter and opset,
versions, input/output specs, fixed dimensions, sha256 of every file, export time and peak RSS.
The folder is written under a temporary name and renamed into place, so a crash never leaves a
half-written export that looks complete.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import psutil
import torch

import rechar
from rechar.models.outputs import compare
import rechar.models as models
from rechar.errors import UserError
from rechar.jsonfile import read_manifest_file
from rechar.exporters.graph import (
    ExportCheckError,
    annotate_modules,
    check_no_forbidden_ops,
    value_specs,
)
from rechar.memory import PeakRSS

MANIFEST = "export.json"
ONNX_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
#: Default opset per exporter: the newest each handled for all eight models when measured.
EXPORTERS = {"torchscript": 17, "dynamo": 20}
DEFAULT_EXPORTER = "torchscript"
#: Weights above this go to an external data file (protobuf cannot hold a message over 2 GiB).
EXTERNAL_DATA_BYTES = 1 << 30
#: Batch sizes of the parity check: 1, a power of two, and an odd size.
PARITY_BATCHES = (1, 16, 37)
#: Parity tolerance between ONNX Runtime and eager PyTorch, in logits (rechar.models.outputs): the
#: two differ only by float summation order (seen: <= 9e-6 on the eight models, tiny and small).
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-5


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    exporter: str = DEFAULT_EXPORTER
    opset: int | None = None  # None: the exporter's default (EXPORTERS)
    seed: int = 0
    force: bool = False  # re-export even if the cache is valid

    def resolved_opset(self) -> int:
        return self.opset or EXPORTERS[self.exporter]


@dataclasses.dataclass
class ExportResult:
    model: str
    path: Path  # the export folder
    manifest: dict[str, Any]
    cached: bool

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE


def export_dir(out: Path, name: str, scale: str, overrides: dict[str, Any] | None) -> Path:
    """``OUT/<model>/<scale>``, or ``<scale>-<hash>`` when a config file changed fields."""
    if not overrides:
        return out / name / scale
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
    return out / name / f"{scale}-{digest}"


def export(
    name: str,
    scale: str = models.DEFAULT_SCALE,
    overrides: dict[str, Any] | None = None,
    out: str | Path = "exports",
    options: ExportOptions = ExportOptions(),
    log: Callable[[str], None] = lambda msg: None,
    verify_files: bool = False,
) -> ExportResult:
    """Export ``name`` at ``scale`` (with config ``overrides``) to ONNX under ``out``, verified.

    A valid cached export with the same cache key (config, options, rechar source, versions) is
    returned as is; ``verify_files`` also checks its files' sha256 (a run does, once per model),
    and a corrupt export is made again.
    """
    if options.exporter not in EXPORTERS:
        raise UserError(f"unknown exporter {options.exporter!r} (choose from {', '.join(EXPORTERS)})")
    config = models.resolve_config(name, scale, overrides)
    models.check_fits_in_memory(name, config, scale)  # before any folder or log line
    target = export_dir(Path(out), name, scale, overrides)
    key = cache_key(name, config, options)
    if not options.force:
        cached = _valid_cache(target, key)
        if cached is not None and verify_files:
            bad = [f for f, digest in cached["files"].items() if _sha256(target / f) != digest]
            if bad:
                log(f"{name}: {', '.join(bad)} in {target} do not match their recorded sha256; re-exporting")
                cached = None
        if cached is not None:
            log(f"{name}: up to date in {target} (cached; --force re-exports)")
            return ExportResult(name, target, cached, cached=True)
    _ensure_writable(target.parent)

    log(f"{name}: exporting ({scale}, {options.exporter}, opset {options.resolved_opset()}) ...")
    _remove_abandoned(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        start = time.perf_counter()
        with PeakRSS() as peak:
            manifest = _export_into(tmp, name, scale, config, options)
        manifest["export_seconds"] = round(time.perf_counter() - start, 3)
        manifest["peak_rss_bytes"] = peak.peak
        manifest["cache_key"] = key
        _write_json(tmp / MANIFEST, manifest)
        _replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{name}: exported to {target} in {manifest['export_seconds']:.1f} s, parity max error "
        f"{manifest['parity']['max_logit_error']:.1e} in logits")
    return ExportResult(name, target, manifest, cached=False)


def _export_into(folder: Path, name: str, scale: str, config, options: ExportOptions) -> dict[str, Any]:
    model = models.get(name, config=config, seed=options.seed)
    info = models.describe(name, config)
    # Reference outputs first, so the torch model can be freed before ONNX Runtime loads its copy.
    parity_inputs = {b: model.make_inputs(b, seed=options.seed) for b in PARITY_BATCHES}
    expected = {b: model.predict(x) for b, x in parity_inputs.items()}
    external = info["embedding_bytes"] + 4 * info["dense_params"] > EXTERNAL_DATA_BYTES
    raw = folder / "raw"
    raw.mkdir()
    _torch_export(model, raw / ONNX_FILE, options)
    fixed_dims, output_kind, calibration = model.fixed_dims(), model.output_kind, model.calibration
    module_names = {n for n, _ in model.named_modules() if n}
    del model
    gc.collect()

    # Re-save: annotate module paths, and gather the exporter's per-tensor files into one.
    graph = onnx.load(str(raw / ONNX_FILE))
    annotate_modules(graph, module_names)
    check_no_forbidden_ops(graph)
    path = folder / ONNX_FILE
    if external:
        onnx.save_model(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(graph, str(path))
    inputs, outputs = value_specs(graph.graph.input), value_specs(graph.graph.output)
    node_count, ops = len(graph.graph.node), sorted({n.op_type for n in graph.graph.node})
    del graph
    shutil.rmtree(raw)
    gc.collect()

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportCheckError(f"{name}: exported graph fails onnx.checker: {e}") from None
    parity = check_parity(path, parity_inputs, expected, name, output_kind)
    return {
        "model": name,
        "scale": scale,
        "config": config.to_dict(),
        "seed": options.seed,
        "exporter": options.exporter,
        "opset": options.resolved_opset(),
        "inputs": inputs,
        "outputs": outputs,
        "fixed_dims": fixed_dims,
        "calibration": calibration,  # workers rebuild the same weights without running the model
        "external_data": external,
        "nodes": node_count,
        "op_types": ops,
        "parity": parity,
        "files": {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.is_file()},
        "sizes": {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()},
        "versions": versions(),
        "describe": {k: v for k, v in info.items() if k != "config"},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _torch_export(model: models.RecModel, path: Path, options: ExportOptions) -> None:
    example = tuple(torch.from_numpy(v) for v in model.make_inputs(2, seed=options.seed).values())
    names = list(model.input_names) + list(model.output_names)
    model.set_export_form(True)
    try:
        with warnings.catch_warnings():
            # Tracer notes about Python control flow (the AUGRU loop) are expected: the sequence
            # length is a fixed dimension recorded in the manifest, and parity checks the result.
            warnings.simplefilter("ignore")
            if options.exporter == "torchscript":
                torch.onnx.export(
                    model, example, str(path), input_names=list(model.input_names),
                    output_names=list(model.output_names), dynamic_axes={n: {0: "batch"} for n in names},
                    opset_version=options.resolved_opset(), dynamo=False,
                )
            else:
                batch = torch.export.Dim("batch", min=1)
                program = torch.onnx.export(
                    model, example, input_names=list(model.input_names),
                    output_names=list(model.output_names),
                    dynamic_shapes=tuple({0: batch} for _ in example),
                    opset_version=options.resolved_opset(), dynamo=True, verbose=False,
                )
                program.save(str(path), external_data=True)
    finally:
        model.set_export_form(False)


def check_parity(path: Path, inputs: dict[int, dict[str, np.ndarray]], expected: dict[int, np.ndarray],
                 name: str, kind: str = "sigmoid") -> dict[str, Any]:
    """Run the ONNX file in ONNX Runtime (CPU) and compare with PyTorch's outputs per batch size."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = worst_margin = 0.0
    for batch, feed in inputs.items():
        got = session.run(None, feed)[0]
        if got.shape != expected[batch].shape:
            raise ExportCheckError(f"{name}: ONNX output shape {got.shape} != PyTorch {expected[batch].shape} at batch {batch}")
        ok, err, margin = compare(got, expected[batch], kind, PARITY_ATOL, PARITY_RTOL)
        worst, worst_margin = max(worst, err), max(worst_margin, margin)
        if not ok:
            raise ExportCheckError(
                f"{name}: ONNX Runtime differs from PyTorch by {err:.3g} in logits at batch {batch} "
                f"(tolerance atol={PARITY_ATOL}, rtol={PARITY_RTOL})")
    return {"batches": list(inputs), "max_logit_error": worst, "margin": worst_margin, "atol": PARITY_ATOL,
            "rtol": PARITY_RTOL,
            "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider"}


def versions() -> dict[str, str]:
    return {"rechar": rechar.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": ort.__version__}


def cache_key(name: str, config, options: ExportOptions) -> str:
    """Changes whenever anything that shapes the exported file changes, rechar's own code included."""
    payload = {
        "model": name, "config": config.to_dict(), "seed": options.seed, "exporter": options.exporter,
        "opset": options.resolved_opset(), "versions": versions(), "source": _source_digest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _source_digest() -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for sub in ("models", "exporters"):
        for p in sorted((root / sub).glob("*.py")):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def load_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and sanity-check an export folder's manifest."""
    return read_manifest_file(folder, MANIFEST, "an export", "files")


def recorded_calibration(manifest: dict[str, Any], seed: int, config) -> dict[str, Any] | None:
    """The output calibration an export applied (``rechar.models.get(calibration=...)`` rebuilds
    the same weights without running the model), when it was made from this config and seed.
    Its cache key covers rechar's model code, checked by whoever chose the export."""
    if manifest.get("seed") == seed and manifest.get("config") == config.to_dict():
        return manifest.get("calibration")
    return None


def exported_model(name: str, config, seed: int, manifest: dict[str, Any]) -> models.RecModel:
    """The PyTorch model whose weights the export holds: built from the seed, with the export's
    recorded calibration when it was made from this config and seed (else calibrated afresh)."""
    return models.get(name, config=config, seed=seed, calibration=recorded_calibration(manifest, seed, config))


def _valid_cache(folder: Path, key: str) -> dict[str, Any] | None:
    """The manifest if ``folder`` holds a complete export made with ``key``; sizes are checked,
    not hashes (hashing 4 GB on every run would cost more than it saves)."""
    try:
        manifest = load_manifest(folder)
    except UserError:
        return None
    if manifest.get("cache_key") != key:
        return None
    for fname, size in manifest.get("sizes", {}).items():
        p = folder / fname
        if not p.is_file() or p.stat().st_size != size:
            return None
    return manifest


def _ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {folder}: {e.strerror}") from None


def _remove_abandoned(folder: Path) -> None:
    """Delete half-written exports left by processes that were killed (their temporary folders
    carry the writer's pid; at paper scale each can hold gigabytes)."""
    for path in [*folder.glob(".*.tmp-*"), *folder.glob(".*.old-*")]:
        match = re.search(r"\.(?:tmp|old)-(\d+)", path.name)
        if match and not psutil.pid_exists(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished export into place; an older export is removed only after."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
