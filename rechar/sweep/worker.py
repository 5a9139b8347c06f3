"""One (model, backend) pair over its batch sizes, in a process of its own.

    python -m rechar.sweep.worker SPEC.json

Each framework gets a fresh process so that thread pools, allocators and crashes of one cannot
touch another's numbers. Every finished point is appended to the run's ``points.jsonl`` and
fsynced before the next starts; the parent records whatever a crashed worker left unfinished.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

import rechar.models as models
from rechar.errors import one_line
from rechar.measure.gate import compare
from rechar.exporters import ExportResult, exported_model, load_manifest
from rechar.exporters.graph import check_external_data, check_inputs_match
from rechar.memory import prefault_mappings
from rechar.stacks import BackendOptions, backend_class
from rechar.measure import allocator, contention
from rechar.measure.counters import count_call
from rechar.measure.inputs import FALLBACK_CACHE_BYTES, InputPool, PoolRule, PoolSpec
from rechar.lifetime import die_with_parent
from rechar.measure.contention import NoiseThresholds
from rechar.measure.timing import TimingOptions, summarize, timed_loop, warm_up
from rechar.measure.quality import (EVAL_SAMPLES, EVAL_SEED_OFFSET, QualityThresholds, evaluation_batches, quality,
                                   quality_failure)
from rechar.stacks.variants import split_backend
from rechar.sweep.options import WorkerFields
from rechar.results.store import COUNTERS_LOG, PROFILES_LOG, UARCH_LOG, append_point, read_point_log


@dataclasses.dataclass(kw_only=True)
class WorkerSpec(WorkerFields):
    batches: list[int]
    timing: dict[str, Any]
    profile_iters: int = 0  # >0: a profiling pass of this many iterations after each timed point
    counter_seconds: float = 0.0  # >0: a pass of at least this many seconds counting CPU events (perf)
    mode: str = "run"  # "run": time (then profile, count); "profile" / "counters" / "uarch": only that pass
    malloc: str = "default"  # the allocator the sweep preloaded (checked before anything runs)
    inputs: str = "fresh"  # fresh: cycle an input pool; replay: one batch (rechar.measure.inputs)
    pool_rule: dict[str, Any] = dataclasses.field(default_factory=dict)  # PoolRule fields
    cache_bytes: int | None = None  # size pools against this cache instead of the device's
    round: int = 0  # which round of the sweep this worker measures (--rounds)
    attempt: int = 0  # 0, or the re-measurement of a noisy round (--remeasure-noisy)
    uarch_machine: str = ""  # the simulated machine of the uarch pass (rechar.uarch.machines)
    uarch_dump_dir: str = ""  # where callgrind writes that pass's dumps (the sweep started it so)


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
    manifest = load_manifest(spec.export_dir)
    export = ExportResult(spec.model, Path(spec.export_dir), manifest, cached=True)
    cls = backend_class(spec.backend)
    precision = split_backend(spec.backend)[1]
    # PyTorch's weights are built where a stack runs them or the gate needs reference outputs; a
    # pass added to a run (profile, counters, simulation) of another stack needs only the shapes.
    # The export's recorded calibration spares the model's calibration passes (minutes under
    # Valgrind: rechar.models.calibration).
    needs_weights = cls.uses_torch_model or spec.mode == "run"
    model = exported_model(spec.model, config, spec.seed, manifest) if needs_weights else None
    # Input pools are made per point from a weightless copy of the model (its config and table
    # shapes); the gate's eager-PyTorch reference outputs for the first and last batch of every
    # pool are computed now, while the weights are loaded.
    shell = models.shell(spec.model, config)
    if manifest["fixed_dims"] != shell.fixed_dims():
        raise ValueError(f"export fixes {manifest['fixed_dims']} but the model has {shell.fixed_dims()}; re-export")
    pools = PoolSpec(spec.seed, spec.ids, spec.zipf_alpha, spec.inputs,
                     spec.cache_bytes or cls.cache_bytes() or FALLBACK_CACHE_BYTES, PoolRule(**spec.pool_rule))
    check_external_data(export.onnx_path)
    check_inputs_match(export.onnx_path, pools.member(shell, spec.batches[0], 0))
    expected = ({b: [model.predict(x) for x in pools.ends(shell, b)] for b in spec.batches}
                if spec.mode == "run" and precision == "fp32" else {})
    # Reduced precision: the quality gate's evaluation set and eager fp32 PyTorch's outputs (per
    # timed batch size: the set cut into whole batches of that size).
    evaluation = {}
    if precision != "fp32" and spec.mode == "run":
        eval_inputs = model.make_inputs(EVAL_SAMPLES, seed=spec.seed + EVAL_SEED_OFFSET)
        for b in spec.batches:
            inputs = eval_inputs if b <= EVAL_SAMPLES else model.make_inputs(b, seed=spec.seed + EVAL_SEED_OFFSET)
            chunks = evaluation_batches(inputs, b)
            evaluation[b] = (chunks, np.concatenate([model.predict(c) for c in chunks]))

    backend = cls(BackendOptions(threads=spec.threads, precision=precision))
    # The machine that runs the worker decides whether the precision is real here (a cluster's
    # driver could not): never time a bf16 hint that the hardware would ignore.
    why_not = cls.precision_reason(precision) if spec.mode == "run" else None
    if not cls.uses_torch_model:
        model = None  # the framework holds its own copy of the weights: free PyTorch's
        gc.collect()
    timing = TimingOptions(**spec.timing)
    base = {"run_id": spec.run_id, "model": spec.model, "scale": spec.scale, "backend": spec.backend,
            "framework": cls.framework, "round": spec.round, "attempt": spec.attempt}
    if why_not:
        for batch in spec.batches:
            append_point(spec.run_dir, {**base, "device": backend.device, "batch": batch, "status": "failed",
                                        "precision": precision, "error": f"not offered on this machine: {why_not}"})
        return
    load_start = time.perf_counter()
    try:
        backend.load(model, export)
    except Exception as e:  # a framework that cannot load the model fails every point, clearly
        if spec.mode == "profile":
            raise
        for batch in spec.batches:
            append_point(spec.run_dir, {**base, "device": backend.device, "batch": batch, "status": "failed",
                                        "error": f"load failed: {one_line(e)}"})
        return
    # Weights that the framework memory-mapped from the export come in from disk page by page;
    # make them resident now, as in a server that has been running (rechar.memory).
    prefaulted = prefault_mappings(export.path)
    graph = getattr(backend, "onnx_path", None)  # a graph the stack derived (ORT's int8) lives in a subfolder
    if graph is not None and Path(graph).parent != export.path:
        prefaulted += prefault_mappings(Path(graph).parent)
    load_seconds = time.perf_counter() - load_start
    settings = {**backend.settings(), "malloc": spec.malloc, "weights_prefaulted_bytes": prefaulted}
    held = {"precision": precision, **(backend.weight_bytes() or {})}
    if precision != "fp32" and held.get("embedding_weight_bytes"):
        fp32_rows = sum(t.weight.numel() * 4 for t in shell.embedding_tables())
        pools = dataclasses.replace(pools, row_scale=held["embedding_weight_bytes"] / fp32_rows)

    simulation = None
    if spec.mode == "uarch":
        from rechar.uarch.callgrind import Simulation

        simulation = Simulation(spec.uarch_dump_dir)
    ok = False
    timed = {}  # batch -> seconds per call, from timing (in this worker or, for an added pass, the run's log)
    if spec.mode == "profile":
        timed = {r["batch"]: r["p50_us"] / 1e6 for r in read_point_log(spec.run_dir)
                 if r.get("status") == "ok" and (r["model"], r["backend"], r.get("round", 0)) == (spec.model, spec.backend, spec.round)}
    for batch in spec.batches:
        pool = pools.make(shell, batch)
        if spec.mode == "run":
            judged = quality_gate(backend, *evaluation[batch], shell.output_kind) if batch in evaluation else {}
            record = time_point(spec, backend, base, batch, pool, expected.get(batch, []), timing, load_seconds,
                                settings, {**held, **judged}, shell.output_kind)
            ok = record["status"] == "ok"
            if ok:
                timed[batch] = record["p50_us"] / 1e6
        if spec.profile_iters and (spec.mode == "profile" or (spec.mode == "run" and ok)):
            iterations = profile_iterations(spec.profile_iters, timed.get(batch), timing.max_seconds)
            profile_point(spec, backend, base, batch, pool, iterations)
        if spec.counter_seconds and (spec.mode == "counters" or (spec.mode == "run" and ok)):
            count_point(spec, backend, base, batch, pool)
        if simulation is not None:
            uarch_point(spec, backend, base, batch, pool, simulation)
        del pool
    backend.close()


def quality_gate(backend, batches: list[dict[str, np.ndarray]], want: np.ndarray, kind: str) -> dict[str, Any]:
    """The quality figures of a reduced-precision backend on the evaluation set, run through its
    prepared call at the timed batch size, and why it fails the thresholds (``quality_error``)."""
    try:
        call = backend.prepare(batches)
        got = np.concatenate([backend.outputs(call()) for _ in batches])
        del call
        figures = quality(got, want, kind)
        return {**figures, "quality_error": quality_failure(figures, QualityThresholds())}
    except Exception as e:
        return {"quality_error": f"the evaluation set failed: {one_line(e)}"}


def time_point(spec, backend, base, batch, pool: InputPool, expected, timing, load_seconds, settings,
               held: dict[str, Any], kind: str) -> dict[str, Any]:
    """Gate, then time one point; append its record and return it."""
    record = {**base, "device": backend.device, "batch": batch, **pool.record(),
              "load_seconds": load_seconds, "settings": settings, **held, "started": time.time()}
    try:
        if held["precision"] != "fp32":  # not bit parity: the quality gate decides
            failure = held.get("quality_error") and f"quality gate: {held['quality_error']}"
        else:
            # The gate: the pool's first and last batch, called in turn as the timed call cycles.
            gate = backend.prepare([pool.first, pool.last] if len(pool) > 1 else [pool.first])
            outputs = [backend.outputs(gate()) for _ in expected]
            del gate
            checks = [compare(got, want, kind, spec.atol, spec.rtol) for got, want in zip(outputs, expected)]
            ok, err, margin = all(c[0] for c in checks), max(c[1] for c in checks), max(c[2] for c in checks)
            record.update(gate_logit_error=err, gate_margin=margin,
                          max_abs_error=max(_abs_error(got, want) for got, want in zip(outputs, expected)))
            failure = None if ok else (f"outputs differ from eager PyTorch by {err:.3g} in logits, {margin:.3g}x the "
                                       f"tolerance (atol {spec.atol}, rtol {spec.rtol}; rechar.measure.gate)")
        if failure:
            record.update(status="invalid", error=failure)
        else:
            call = backend.prepare(pool.batches)
            warm_up(call, timing)
            before = contention.read()  # what else the machine does while the point is timed
            latencies = timed_loop(call, timing)
            window = contention.between(before, contention.read(), NoiseThresholds(**spec.noise))
            record.update(status="ok", **summarize(latencies, batch), **window, latencies_ns=latencies.tolist())
            del call
    except Exception as e:
        record.update(status="failed", error=one_line(e))
    record.update(finished=time.time(), peak_rss_bytes=peak_rss_bytes(),
                  peak_device_bytes=backend.peak_device_bytes(), **backend.compile_info(batch))
    append_point(spec.run_dir, record)
    return record


def _abs_error(got: np.ndarray, want: np.ndarray) -> float:
    """The largest difference of the outputs themselves (probabilities), for reading."""
    if got.shape != want.shape:
        return float("inf")
    return float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0


MIN_PROFILE_CALLS = 3


def profile_iterations(requested: int, call_seconds: float | None, budget_seconds: float | None) -> int:
    """Profiled calls for a point: those requested, but no more than fit the timing's time budget
    at the point's timed latency (a profiler only slows calls), and at least MIN_PROFILE_CALLS."""
    if budget_seconds is None or not call_seconds:
        return requested
    return min(requested, max(MIN_PROFILE_CALLS, math.ceil(budget_seconds / call_seconds)))


def profile_point(spec, backend, base, batch, pool: InputPool, iterations: int) -> None:
    """The profiling pass of one point: raw per-op totals to profiles.jsonl, trace kept."""
    trace_dir = Path(spec.run_dir) / "traces" / (f"{spec.model}__{spec.backend}__b{batch}"
                                                 + (f"__r{spec.round}" if spec.round else ""))
    trace_dir.mkdir(parents=True, exist_ok=True)
    record = {**base, "device": backend.device, "batch": batch, "iterations": iterations,
              "input_hash": pool.hash}
    try:
        result = backend.profile(pool.batches, iterations, trace_dir)
        record.update(status="ok", trace=str(result.trace_path.relative_to(spec.run_dir)),
                      iterations=result.iterations, ops=result.ops.to_dict("records"), **result.info)
    except Exception as e:
        record.update(status="failed", error=one_line(e), ops=[])
    append_point(spec.run_dir, record, log=PROFILES_LOG)


def count_point(spec, backend, base, batch, pool: InputPool) -> None:
    """The counting pass of one point: CPU event totals (perf stat) to counters.jsonl."""
    record = {**base, "device": backend.device, "batch": batch, "input_hash": pool.hash}
    try:
        call = backend.prepare(pool.batches)
        for _ in range(3):  # this placement of the inputs, warm (the framework was warmed by timing)
            call()
        record.update(status="ok", **count_call(call, spec.counter_seconds))
        del call
    except Exception as e:
        record.update(status="failed", error=one_line(e))
    append_point(spec.run_dir, record, log=COUNTERS_LOG)


def uarch_point(spec, backend, base, batch, pool: InputPool, simulation) -> None:
    """The simulation pass of one point: simulated events per operator (callgrind) to uarch.jsonl."""
    from rechar.uarch import callgrind
    from rechar.uarch.machines import machine

    record = {**base, "device": backend.device, "batch": batch, "input_hash": pool.hash,
              "threads": spec.threads, "valgrind": callgrind.valgrind_version(), "isa": callgrind.isa()}
    start = time.perf_counter()
    try:
        call = backend.prepare(pool.batches)
        call()  # this placement of the inputs, warm, before instrumentation starts
        calls = callgrind.calls_for(batch)
        label = f"{spec.model} {spec.backend} b{batch}"
        dump, seconds = simulation.simulate_call(call, calls, label=label)
        del call
        summary = callgrind.summarize_natively(dump, calls, batch, machine(spec.uarch_machine).record())
        record.update(status="ok", dump=str(dump.relative_to(spec.run_dir)) if dump.is_relative_to(spec.run_dir)
                      else str(dump), simulated_seconds=seconds, **summary)
    except Exception as e:
        record.update(status="failed", error=one_line(e))
    record["seconds"] = time.perf_counter() - start
    append_point(spec.run_dir, record, log=UARCH_LOG)




def main(argv: list[str]) -> int:
    die_with_parent()
    spec = WorkerSpec.read(argv[1])
    if spec.parent_pid and os.getppid() != spec.parent_pid:
        return 1  # the sweep died before die_with_parent took effect
    try:
        run(spec)
    except Exception as e:
        traceback.print_exc()  # to the worker's log; the parent records unfinished points as failed
        print(f"error: {one_line(e)}", flush=True)  # the last line, which the parent quotes
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
