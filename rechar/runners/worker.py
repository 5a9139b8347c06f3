"""One (model, backend) pair over its batch sizes, in a process of its own.

    python -m rechar.runners.worker SPEC.json

Each framework gets a fresh process so that thread pools, allocators and crashes of one cannot
touch another's numbers. Every finished point is appended to the run's ``points.jsonl`` and
fsynced before the next starts; the parent records whatever a crashed worker left unfinished.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

import rechar.models as models
from rechar.exporters import ExportResult, load_manifest
from rechar.exporters.graph import check_external_data, check_inputs_match
from rechar.runners import BackendOptions, allocator, backend_class
from rechar.runners.counters import count_call
from rechar.runners.lifetime import die_with_parent
from rechar.runners.measure import TimingOptions, summarize, time_call
from rechar.runners.results import COUNTERS_LOG, PROFILES_LOG, append_point


@dataclasses.dataclass
class WorkerSpec:
    run_id: str
    model: str
    scale: str
    overrides: dict[str, Any]
    seed: int
    ids: str
    zipf_alpha: float
    export_dir: str
    backend: str
    batches: list[int]
    threads: int
    jit_compile: bool
    timing: dict[str, Any]
    atol: float
    rtol: float
    run_dir: str
    parent_pid: int = 0
    profile_iters: int = 0  # >0: a profiling pass of this many iterations after each timed point
    counter_seconds: float = 0.0  # >0: a pass of at least this many seconds counting CPU events (perf)
    mode: str = "run"  # "run": time (then profile, count); "profile" / "counters": only that pass
    malloc: str = "default"  # the allocator the sweep preloaded (checked before anything runs)

    @classmethod
    def read(cls, path: str | Path) -> "WorkerSpec":
        return cls(**json.loads(Path(path).read_text()))


def input_hash(inputs: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name, array in inputs.items():
        h.update(name.encode())
        h.update(str(array.dtype).encode() + str(array.shape).encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux: VmHWM, the high-water mark of the worker's own
    address space. Not ru_maxrss: it carries over exec from the sweep process that spawned the
    worker, so a worker started by a sweep holding gigabytes would report at least that much."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def run(spec: WorkerSpec) -> None:
    if not allocator.loaded(spec.malloc):
        raise RuntimeError(f"allocator {spec.malloc} was asked for but is not loaded in the worker (LD_PRELOAD)")
    config = models.resolve_config(spec.model, spec.scale, spec.overrides)
    model = models.get(spec.model, config=config, seed=spec.seed)
    manifest = load_manifest(spec.export_dir)
    export = ExportResult(spec.model, Path(spec.export_dir), manifest, cached=True)
    if manifest["fixed_dims"] != model.fixed_dims():
        raise ValueError(f"export fixes {manifest['fixed_dims']} but the model has {model.fixed_dims()}; re-export")

    # Inputs and eager-PyTorch reference outputs for every batch, before the backend loads.
    inputs = {b: model.make_inputs(b, seed=spec.seed, ids=spec.ids, zipf_alpha=spec.zipf_alpha) for b in spec.batches}
    check_external_data(export.onnx_path)
    check_inputs_match(export.onnx_path, inputs[spec.batches[0]])
    expected = {b: model.predict(x) for b, x in inputs.items()} if spec.mode == "run" else {}

    cls = backend_class(spec.backend)
    backend = cls(BackendOptions(threads=spec.threads, jit_compile=spec.jit_compile))
    if not cls.uses_torch_model:
        model = None  # the framework holds its own copy of the weights: free PyTorch's
        gc.collect()
    timing = TimingOptions(**spec.timing)
    base = {"run_id": spec.run_id, "model": spec.model, "scale": spec.scale, "backend": spec.backend,
            "framework": cls.framework}
    load_start = time.perf_counter()
    try:
        backend.load(model, export)
    except Exception as e:  # a framework that cannot load the model fails every point, clearly
        if spec.mode == "profile":
            raise
        for batch in spec.batches:
            append_point(spec.run_dir, {**base, "device": backend.device, "batch": batch, "status": "failed",
                                        "error": f"load failed: {_one_line(e)}"})
        return
    load_seconds = time.perf_counter() - load_start
    settings = {**backend.settings(), "malloc": spec.malloc}

    ok = False
    for batch in spec.batches:
        if spec.mode == "run":
            ok = time_point(spec, backend, base, batch, inputs[batch], expected[batch], timing, load_seconds, settings)
        if spec.profile_iters and (spec.mode == "profile" or (spec.mode == "run" and ok)):
            profile_point(spec, backend, base, batch, inputs[batch])
        if spec.counter_seconds and (spec.mode == "counters" or (spec.mode == "run" and ok)):
            count_point(spec, backend, base, batch, inputs[batch])
    backend.close()


def time_point(spec, backend, base, batch, inputs, expected, timing, load_seconds, settings) -> bool:
    """Gate, then time one point; append its record. True if it was timed."""
    record = {**base, "device": backend.device, "batch": batch, "input_hash": input_hash(inputs),
              "load_seconds": load_seconds, "settings": settings, "started": time.time()}
    try:
        call = backend.prepare(inputs)
        got = backend.outputs(call())
        ok, err = _compare(got, expected, spec.atol, spec.rtol)
        record["max_abs_error"] = err
        if not ok:
            record.update(status="invalid", error=f"outputs differ from eager PyTorch by {err:.3g} "
                                                  f"(atol {spec.atol}, rtol {spec.rtol})")
        else:
            latencies = time_call(call, timing)
            record.update(status="ok", **summarize(latencies, batch), latencies_ns=latencies.tolist())
        del call
    except Exception as e:
        record.update(status="failed", error=_one_line(e))
    record.update(finished=time.time(), peak_rss_bytes=peak_rss_bytes(),
                  peak_device_bytes=backend.peak_device_bytes())
    append_point(spec.run_dir, record)
    return record["status"] == "ok"


def profile_point(spec, backend, base, batch, inputs) -> None:
    """The profiling pass of one point: raw per-op totals to profiles.jsonl, trace kept."""
    trace_dir = Path(spec.run_dir) / "traces" / f"{spec.model}__{spec.backend}__b{batch}"
    trace_dir.mkdir(parents=True, exist_ok=True)
    record = {**base, "device": backend.device, "batch": batch, "iterations": spec.profile_iters}
    try:
        result = backend.profile(inputs, spec.profile_iters, trace_dir)
        record.update(status="ok", trace=str(result.trace_path.relative_to(spec.run_dir)),
                      iterations=result.iterations, ops=result.ops.to_dict("records"))
    except Exception as e:
        record.update(status="failed", error=_one_line(e), ops=[])
    append_point(spec.run_dir, record, log=PROFILES_LOG)


def count_point(spec, backend, base, batch, inputs) -> None:
    """The counting pass of one point: CPU event totals (perf stat) to counters.jsonl."""
    record = {**base, "device": backend.device, "batch": batch}
    try:
        call = backend.prepare(inputs)
        for _ in range(3):  # this placement of the inputs, warm (the framework was warmed by timing)
            call()
        record.update(status="ok", **count_call(call, spec.counter_seconds))
        del call
    except Exception as e:
        record.update(status="failed", error=_one_line(e))
    append_point(spec.run_dir, record, log=COUNTERS_LOG)


def _compare(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> tuple[bool, float]:
    if got.shape != want.shape:
        return False, float("inf")
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
    return bool(np.allclose(got, want, atol=atol, rtol=rtol)), err


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return text[0] if text else type(e).__name__


def main(argv: list[str]) -> int:
    die_with_parent()
    spec = WorkerSpec.read(argv[1])
    if spec.parent_pid and os.getppid() != spec.parent_pid:
        return 1  # the sweep died before die_with_parent took effect
    try:
        run(spec)
    except Exception as e:
        traceback.print_exc()  # to the worker's log; the parent records unfinished points as failed
        print(f"error: {_one_line(e)}", flush=True)  # the last line, which the parent quotes
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
