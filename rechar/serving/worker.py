"""One model on one backend under load, every batching policy in turn, in a process of its own.

    python -m rechar.serving.worker SPEC.json

The same isolation as a sweep's worker (rechar.sweep.worker): a fresh process, the parity gate
before anything is timed, every finished trial appended to ``trials.jsonl`` and fsynced. For each
policy: the gate on its first sub-batches, the offline prediction (the query pool's sub-batches
run one after another on an idle executor, as an isolated-batch sweep times them), one Offline
test (the saturation throughput), then the Server search (rechar.serving.search). Trials already
in the log are not run again: the search resumes from them.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

import rechar.models as models
from rechar.errors import one_line
from rechar.measure.gate import compare
from rechar.exporters import ExportResult, exported_model, load_manifest
from rechar.stacks import BackendOptions, backend_class
from rechar.measure import contention
from rechar.measure.contention import NoiseThresholds
from rechar.measure.inputs import FALLBACK_CACHE_BYTES
from rechar.lifetime import die_with_parent
from rechar.sweep.options import WorkerFields
from rechar.results.store import append_point, read_log
from rechar.memory import prefault_mappings
from rechar.serving import loadgen
from rechar.serving.queries import Policy, QueryPool, QuerySizes, make_pool, sub_batches
from rechar.serving.search import SearchRule, anchor, hopeless, next_trial, policy_finished
from rechar.serving.trials import TRIALS_LOG, trial_key

#: queries of the pool that the offline prediction runs (two passes: the first warms)
PREDICTION_QUERIES = 256
#: the fields predict() returns, recorded with every trial
PREDICTION_FIELDS = ("predicted_saturation_qps", "predicted_p99_ms", "predicted_qps")


@dataclasses.dataclass(kw_only=True)
class ServeSpec(WorkerFields):
    policies: list[dict[str, Any]]  # Policy fields
    query_sizes: str
    max_query: int
    p99_ms: float
    min_duration_s: float
    min_queries: int
    offload_backend: str | None = None
    offload_threshold: int | None = None
    search: dict[str, Any] = dataclasses.field(default_factory=dict)  # SearchRule fields
    keep_trace: bool = False

    @property
    def offload(self) -> str:
        return f"{self.offload_backend}>={self.offload_threshold}" if self.offload_backend else ""


class _Loaded:
    """The backend instances of one executor count: one per executor (each with its share of
    the threads), or one shared where the framework's thread pool is per process."""

    def __init__(self, spec: ServeSpec, model, export: ExportResult, workers: int, output_kind: str):
        cls = backend_class(spec.backend)
        threads = spec.threads if cls.threads_per_process else max(1, spec.threads // workers)
        count = 1 if cls.threads_per_process else workers
        self.instances = [cls(BackendOptions(threads=threads)) for _ in range(count)]
        for backend in self.instances:
            backend.load(model, export)
        self.threads = threads
        self.output_kind = output_kind  # from the model's shell: ``model`` is None where the stack holds its own weights
        self.offload = None
        if spec.offload_backend:
            self.offload = backend_class(spec.offload_backend)(BackendOptions(threads=threads))
            self.offload.load(model, export)
        prefault_mappings(export.path)

    def executor(self, w: int):
        return self.instances[w % len(self.instances)]

    def close(self) -> None:
        for backend in [*self.instances, *([self.offload] if self.offload else [])]:
            backend.close()


def _quiet_main_thread() -> None:
    """Keep PyTorch's intra-op parallelism off the main thread. With OpenMP, every thread that
    has run a parallel region keeps a team of threads alive, and while one does, another thread's
    regions ran 4x slower here (DLRM-RMC1, batch 16: 0.23 -> 1.0 ms). So the main thread computes
    single-threaded, and everything measured runs on executor threads (``_on_executor``)."""
    torch.set_num_threads(1)


def _on_executor(backends: list, fn):
    """``fn()`` in a fresh thread set up as an executor of ``backends`` (Backend.enter_thread)."""
    result: list = []

    def target():
        try:
            for backend in backends:
                backend.enter_thread()
            result.append(("ok", fn()))
        except BaseException as e:  # re-raised in the caller
            result.append(("error", e))

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    kind, value = result[0]
    if kind == "error":
        raise value
    return value


def run(spec: ServeSpec) -> None:
    _quiet_main_thread()
    config = models.resolve_config(spec.model, spec.scale, spec.overrides)
    manifest = load_manifest(spec.export_dir)
    model = exported_model(spec.model, config, spec.seed, manifest)
    export = ExportResult(spec.model, Path(spec.export_dir), manifest, cached=True)
    cls = backend_class(spec.backend)
    shell = models.shell(spec.model, config)
    sizes = QuerySizes(spec.query_sizes, spec.max_query)
    pool = make_pool(shell, sizes, spec.seed, spec.ids, spec.zipf_alpha, cls.cache_bytes() or FALLBACK_CACHE_BYTES)
    policies = [Policy(**p) for p in spec.policies]
    threshold = spec.offload_threshold if spec.offload_backend else None
    offloaded = [threshold is not None and int(n) >= threshold for n in pool.sizes]
    # The gate's reference outputs, while PyTorch's weights are loaded: each policy's first two
    # sub-batches (the first non-offloaded queries') and the first offloaded query.
    expected = {p: [(sub, model.predict(sub)) for sub, _ in _gate_subs(pool, p, offloaded)] for p in policies}
    first_offloaded = next((i for i, o in enumerate(offloaded) if o), None)
    expected_offload = model.predict(pool.queries[first_offloaded]) if first_offloaded is not None else None
    uses_torch = cls.uses_torch_model or (spec.offload_backend and backend_class(spec.offload_backend).uses_torch_model)
    if not uses_torch:
        model = None
        gc.collect()

    history = [t for t in read_log(Path(spec.run_dir), TRIALS_LOG, key=trial_key)
               if (t["model"], t["backend"], t.get("offload") or "") == (spec.model, spec.backend, spec.offload)]
    for workers in sorted({p.workers for p in policies}):
        todo = [p for p in policies if p.workers == workers and not policy_finished([t for t in history if t['policy'] == p.label], spec.p99_ms, spec.min_queries, SearchRule(**spec.search))]
        if not todo:
            continue
        try:
            loaded = _Loaded(spec, model, export, workers, shell.output_kind)
        except Exception as e:  # the framework cannot load the model: every policy fails, clearly
            for policy in todo:
                _append(spec, policy, 0, {"status": "failed", "error": f"load failed: {one_line(e)}"})
            continue
        finally:
            _quiet_main_thread()  # loading set the main thread's threads
        for policy in todo:
            serve_policy(spec, loaded, pool, policy, offloaded, expected[policy], expected_offload,
                         [t for t in history if t["policy"] == policy.label])
        loaded.close()
        del loaded
        gc.collect()


def serve_policy(spec: ServeSpec, loaded: _Loaded, pool: QueryPool, policy: Policy, offloaded: list[bool],
                 expected, expected_offload, history: list[dict[str, Any]]) -> None:
    base = {"threads_per_executor": loaded.threads, **pool.record()}
    try:
        executors, sizes = _executors(loaded, pool, policy, offloaded)
        base["sub_batch_sizes"] = ",".join(map(str, sizes))
        error = _gate(loaded, executors, expected, expected_offload, offloaded, spec)
    except Exception as e:
        _append(spec, policy, 0, {**base, "status": "failed", "error": one_line(e)})
        return
    if error:
        _append(spec, policy, 0, {**base, "status": "invalid", "error": error})
        return
    offline = next((t for t in history if t.get("scenario") == "offline"), None)
    # A resumed search keeps the prediction its Offline test was recorded with: measured once.
    prediction = ({k: offline[k] for k in PREDICTION_FIELDS} if offline is not None
                  else predict(loaded, executors, pool, policy, offloaded, spec.p99_ms))
    base.update(prediction)
    if offline is None:
        settings = loadgen.TrialSettings("offline", max(prediction["predicted_saturation_qps"], 1.0), spec.p99_ms,
                                         spec.min_duration_s, 1, spec.seed, keep_trace=spec.keep_trace)
        offline = _trial(spec, policy, 0, executors, settings, base)
        history.append(offline)
    if offline.get("status") != "ok":
        return
    rule = SearchRule(**spec.search)
    if hopeless(offline, spec.p99_ms):
        return  # an idle query already misses the bound: no arrival rate meets it (analysis says so)
    while True:
        server = [t for t in history if t.get("scenario") == "server"]
        plan = next_trial(server, anchor(offline), spec.min_queries, rule)
        if plan is None:
            return
        settings = loadgen.TrialSettings("server", plan.qps, spec.p99_ms, spec.min_duration_s, plan.min_queries,
                                         spec.seed + len(server), shed_after_s=max(20 * spec.p99_ms / 1e3, 0.5),
                                         keep_trace=spec.keep_trace)
        history.append(_trial(spec, policy, len(server) + 1, executors, settings, {**base, "retry_reason": plan.retry}))


def _gate_subs(pool: QueryPool, policy: Policy, offloaded: list[bool]) -> list[tuple[dict, int]]:
    subs = []
    for q, query in enumerate(pool.queries):
        if not offloaded[q]:
            subs += sub_batches(query, policy, pad=False)
        if len(subs) >= 2:
            break
    return subs[:2]


def _executors(loaded: _Loaded, pool: QueryPool, policy: Policy,
               offloaded: list[bool]) -> tuple[loadgen.Executors, list[int]]:
    """Every sub-batch of every query placed on every executor's backend, before the test; and
    the sizes of the sub-batches the backend was given (a static-shape stack's: its buckets)."""
    backend = loaded.executor(0)
    pad = type(backend).static_shapes
    count = len(loaded.instances)
    calls, sizes = [], set()
    for q, query in enumerate(pool.queries):
        subs = [] if offloaded[q] else [sub for sub, _ in sub_batches(query, policy, pad)]
        sizes.update(len(next(iter(sub.values()))) for sub in subs)
        placed = [[loaded.instances[i].prepare([sub]) for i in range(count)] for sub in subs]
        calls.append([[per[w % count] for w in range(policy.workers)] for per in placed])
    offload = None
    if loaded.offload is not None:
        offload = [loaded.offload.prepare([query]) if offloaded[q] else None for q, query in enumerate(pool.queries)]
    return loadgen.Executors(calls, policy.workers, offload,
                             thread_setup=[loaded.executor(w).enter_thread for w in range(policy.workers)],
                             offload_setup=loaded.offload.enter_thread if loaded.offload else None), sorted(sizes)


def _gate(loaded: _Loaded, executors: loadgen.Executors, expected, expected_offload, offloaded, spec) -> str | None:
    """None if the policy's first sub-batches (and first offloaded query) match eager PyTorch on
    every backend instance, else why not."""
    subs = [(q, j) for q in range(len(executors.calls)) for j in range(len(executors.calls[q]))][:len(expected)]
    for (q, j), (sub, want) in zip(subs, expected):
        for w in range(len(loaded.instances)):
            backend = loaded.executor(w)
            got = _on_executor([backend], lambda: backend.outputs(executors.calls[q][j][w]()))[:len(want)]
            ok, err, _ = compare(got, want, loaded.output_kind, spec.atol, spec.rtol)
            if not ok:
                return (f"outputs differ from eager PyTorch by {err:.3g} in logits (atol {spec.atol}, rtol {spec.rtol}; "
                        "rechar.measure.gate)")
    if expected_offload is not None:
        q = offloaded.index(True)
        got = _on_executor([loaded.offload], lambda: loaded.offload.outputs(executors.offload[q]()))
        ok, err, _ = compare(got, expected_offload, loaded.output_kind, spec.atol, spec.rtol)
        if not ok:
            return f"offload backend's outputs differ from eager PyTorch by {err:.3g}"
    return None


def predict(loaded: _Loaded, executors: loadgen.Executors, pool: QueryPool, policy: Policy, offloaded: list[bool],
            p99_ms: float) -> dict[str, float]:
    """The offline view: what an isolated-batch sweep predicts for this policy. The pool's
    sub-batches run one after another on an idle executor (each call timed; the first pass warms);
    a query's work is the sum of its sub-batches', its idle latency the longest executor's share
    when its sub-batches are spread over the executors. Saturation rate = executors / mean work;
    the prediction is that rate where the p99 idle latency meets the bound, else 0 (the sweep's
    "best deployment" rule)."""
    clock = time.perf_counter_ns
    n = min(PREDICTION_QUERIES, len(executors.calls))
    times: list[list[float]] = [[] for _ in range(n)]

    def measure():
        for measured in (False, True):
            for q in range(n):
                call = executors.offload[q] if executors.offload and executors.offload[q] else None
                parts = [call] if call else [per[0] for per in executors.calls[q]]
                for part in parts:
                    start = clock()
                    part()
                    if measured:
                        times[q].append((clock() - start) / 1e9)

    _on_executor([loaded.executor(0), *([loaded.offload] if loaded.offload else [])], measure)
    cpu = [(q, t) for q, t in enumerate(times) if not offloaded[q]]
    off = [sum(t) for q, t in enumerate(times) if offloaded[q]]
    rates = []
    if cpu:
        rates.append(policy.workers * len(times) / sum(sum(t) for _, t in cpu))
    if off:
        rates.append(len(times) / sum(off))
    saturation = min(rates)
    idle = [_spread(t, policy.workers) for q, t in enumerate(times) if not offloaded[q]] + off
    p99 = float(np.percentile(idle, 99)) * 1e3
    return {"predicted_saturation_qps": saturation, "predicted_p99_ms": p99,
            "predicted_qps": saturation if p99 <= p99_ms else 0.0}


def _spread(durations: list[float], workers: int) -> float:
    """The finish time of a query's sub-batches taken from a queue by ``workers`` idle executors."""
    free = [0.0] * workers
    for d in durations:
        i = free.index(min(free))
        free[i] += d
    return max(free)


def _trial(spec: ServeSpec, policy: Policy, index: int, executors: loadgen.Executors, settings: loadgen.TrialSettings,
           base: dict[str, Any]) -> dict[str, Any]:
    log_dir = (Path(spec.run_dir) / "loadgen" / "__".join(filter(None, [spec.model, spec.backend, spec.offload.replace(">=", "-ge"), policy.label]))
               / f"{index:02d}-{settings.scenario}-{settings.qps:g}")
    record = {**base, "scenario": settings.scenario, "target_qps": settings.qps if settings.scenario == "server" else None,
              "min_queries": settings.min_queries, "log_dir": str(log_dir.relative_to(spec.run_dir)),
              "started": time.time()}
    before = contention.read()
    try:
        figures = loadgen.run_test(executors, settings, log_dir)
    except Exception as e:
        record.update(status="failed", error=one_line(e))
    else:
        errors = figures.pop("sut_errors")
        window = contention.between(before, contention.read(), NoiseThresholds(**spec.noise))
        record.update(status="failed" if errors else "ok", error=errors[0] if errors else None, **figures, **window)
        meets = figures["p99_ms"] is not None and figures["p99_ms"] <= spec.p99_ms
        record["meets_bound"] = meets
        record["passed"] = settings.scenario == "server" and figures["result"] == "VALID" and meets and not figures["shed"]
        record["inconclusive"] = (settings.scenario == "server" and figures["result"] != "VALID" and meets
                                  and figures["early_stopping_only"] and not figures["shed"])
        if figures["shed"]:
            record["reason"] = "; ".join(filter(None, [record.get("reason"), f"overloaded: {figures['shed']} sub-batches shed"]))
    record["finished"] = time.time()
    return _append(spec, policy, index, record)


def _append(spec: ServeSpec, policy: Policy, index: int, record: dict[str, Any]) -> dict[str, Any]:
    record = {"run_id": spec.run_id, "model": spec.model, "scale": spec.scale, "backend": spec.backend,
              "offload": spec.offload, "policy": policy.label, "batch": policy.batch, "workers": policy.workers,
              "trial": index, "p99_bound_ms": spec.p99_ms, "query_sizes": spec.query_sizes, **record}
    append_point(Path(spec.run_dir), record, log=TRIALS_LOG)
    return record


def main(argv: list[str]) -> int:
    die_with_parent()
    spec = ServeSpec.read(argv[1])
    if spec.parent_pid and os.getppid() != spec.parent_pid:
        return 1
    try:
        run(spec)
    except Exception as e:
        traceback.print_exc()
        print(f"error: {one_line(e)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
