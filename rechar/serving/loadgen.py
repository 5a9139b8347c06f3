"""One LoadGen test of one configuration: the system under test and LoadGen's verdict.

MLPerf LoadGen (``mlperf_loadgen``) issues the queries: in the Server scenario at Poisson
arrival times at a target rate, with a latency bound on the 99th percentile that its
early-stopping rule checks with confidence; in Offline all at once, for the saturation
throughput. Each LoadGen sample is one query of the pool (rechar.serving.queries).

The system under test: ``issue`` puts each query's sub-batches on one FIFO queue, from which
``workers`` executor threads take them; each executor runs its own backend instance (the
frameworks release the GIL while they compute), and a query completes when its last sub-batch
does. With an offload backend, queries of ``offload_threshold`` items or more go whole to one
executor of that backend instead. In the Server scenario a sub-batch that has waited more than
``shed_after_s`` is dropped unrun (the trial is then failed: overloaded), so that an overloaded
trial ends in seconds instead of working through minutes of backlog.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

#: LoadGen's files of a trial that rechar keeps (the trace only when asked for: it is large)
KEPT_LOGS = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")


def available() -> str | None:
    """None if LoadGen can be imported, else why not."""
    try:
        import mlperf_loadgen  # noqa: F401
    except ImportError:
        return "MLPerf LoadGen is not installed (pip install 'rechar[serve]')"
    return None


@dataclasses.dataclass
class Executors:
    """What runs queries: ``calls[q][s][w]`` runs sub-batch s of query q on executor w;
    ``offload[q]`` runs query q whole on the offload backend (None: not offloaded)."""

    calls: list[list[list[Callable[[], Any]]]]
    workers: int
    offload: list[Callable[[], Any] | None] | None = None
    thread_setup: list[Callable[[], None]] | None = None  # per executor: Backend.enter_thread
    offload_setup: Callable[[], None] | None = None


@dataclasses.dataclass(frozen=True)
class TrialSettings:
    scenario: str  # server | offline
    qps: float  # Server: the target arrival rate; Offline: the expected throughput
    p99_bound_ms: float
    min_duration_s: float
    min_queries: int
    seed: int
    max_duration_s: float = 120.0
    shed_after_s: float | None = None  # Server only
    keep_trace: bool = False


class _SystemUnderTest:
    def __init__(self, executors: Executors, shed_after_s: float | None):
        import mlperf_loadgen as lg

        self.lg = lg
        self.executors = executors
        self.shed_after_s = shed_after_s
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.offloaded: queue.SimpleQueue = queue.SimpleQueue()
        self.remaining: dict[int, int] = {}
        self.lock = threading.Lock()
        self.shed = 0
        self.issued = 0
        self.offloaded_queries = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._execute, args=(w,), daemon=True) for w in range(executors.workers)]
        if executors.offload is not None:
            self.threads.append(threading.Thread(target=self._execute_offloaded, daemon=True))
        for t in self.threads:
            t.start()

    def issue(self, samples) -> None:
        now = time.perf_counter()
        offload = self.executors.offload
        self.issued += len(samples)
        for s in samples:
            if offload is not None and offload[s.index] is not None:
                self.offloaded_queries += 1
                with self.lock:
                    self.remaining[s.id] = 1
                self.offloaded.put((s.id, now, s.index))
                continue
            subs = len(self.executors.calls[s.index])
            with self.lock:
                self.remaining[s.id] = subs
            for j in range(subs):
                self.tasks.put((s.id, now, (s.index, j)))

    def _execute(self, w: int) -> None:
        calls = self.executors.calls
        setup = self.executors.thread_setup[w] if self.executors.thread_setup else None
        self._serve(self.tasks, setup, lambda key: calls[key[0]][key[1]][w])

    def _execute_offloaded(self) -> None:
        offload = self.executors.offload
        self._serve(self.offloaded, self.executors.offload_setup, lambda q: offload[q])

    def _serve(self, tasks: queue.SimpleQueue, setup: Callable[[], None] | None, call_for) -> None:
        """One executor thread: take (sample id, issue time, key) tasks until None, run the call
        ``call_for(key)`` unless the task waited past the shedding bound, and complete a sample
        when its last sub-batch is done (an executor's or the offload backend's alike)."""
        if setup:
            setup()
        clock, shed_after = time.perf_counter, self.shed_after_s
        while (task := tasks.get()) is not None:
            sample_id, issued, key = task
            if shed_after is not None and clock() - issued > shed_after:
                with self.lock:
                    self.shed += 1
            else:
                self._run(call_for(key))
            with self.lock:
                self.remaining[sample_id] -= 1
                done = self.remaining[sample_id] == 0
                if done:
                    del self.remaining[sample_id]
            if done:
                self._complete(sample_id)

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as e:  # reported with the trial; the query still completes
            if len(self.errors) < 5:
                self.errors.append(f"{type(e).__name__}: {e}".splitlines()[0])

    def _complete(self, sample_id: int) -> None:
        self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(sample_id, 0, 0)])

    def stop(self) -> None:
        for _ in range(self.executors.workers):
            self.tasks.put(None)
        self.offloaded.put(None)
        for t in self.threads:
            t.join(timeout=60)


def run_test(executors: Executors, settings: TrialSettings, log_dir: Path) -> dict[str, Any]:
    """Run one LoadGen test; return its figures (``parse_detail``) plus ``shed`` and
    ``offloaded_queries``, with LoadGen's logs kept in ``log_dir``."""
    import mlperf_loadgen as lg

    log_dir.mkdir(parents=True, exist_ok=True)
    pool = len(executors.calls)
    sut_state = _SystemUnderTest(executors, settings.shed_after_s if settings.scenario == "server" else None)
    sut = lg.ConstructSUT(sut_state.issue, lambda: None)
    qsl = lg.ConstructQSL(pool, pool, lambda indices: None, lambda indices: None)  # the pool is already in memory
    test = lg.TestSettings()
    test.mode = lg.TestMode.PerformanceOnly
    if settings.scenario == "server":
        test.scenario = lg.TestScenario.Server
        test.server_target_qps = settings.qps
        test.server_target_latency_ns = int(settings.p99_bound_ms * 1e6)
        test.server_target_latency_percentile = 0.99
    else:
        test.scenario = lg.TestScenario.Offline
        test.offline_expected_qps = settings.qps
    test.min_duration_ms = int(settings.min_duration_s * 1000)
    test.max_duration_ms = int(settings.max_duration_s * 1000)
    test.min_query_count = settings.min_queries
    test.qsl_rng_seed = test.sample_index_rng_seed = test.schedule_rng_seed = settings.seed
    logs = lg.LogSettings()
    logs.log_output.outdir = str(log_dir)
    logs.log_output.copy_summary_to_stdout = False
    logs.enable_trace = settings.keep_trace
    start = time.perf_counter()
    try:
        lg.StartTestWithLogSettings(sut, qsl, test, logs)
    finally:
        sut_state.stop()
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    seconds = time.perf_counter() - start
    for path in log_dir.iterdir():
        if path.name not in KEPT_LOGS and not (settings.keep_trace and path.name == "mlperf_log_trace.json"):
            path.unlink()
    figures = parse_detail(log_dir / "mlperf_log_detail.txt")
    # queries: rechar's queries (LoadGen's samples) issued; in Offline LoadGen counts one query of all of them
    figures.update(queries=sut_state.issued, shed=sut_state.shed, offloaded_queries=sut_state.offloaded_queries, test_seconds=seconds,
                   sut_errors=sut_state.errors)
    return figures


def parse_detail(path: Path) -> dict[str, Any]:
    """LoadGen's verdict and figures from ``mlperf_log_detail.txt`` (one ``:::MLLOG`` JSON
    record per line): result, the reason for an INVALID one, rates and query latencies in ms."""
    values: dict[str, Any] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        if line.startswith(":::MLLOG "):
            try:
                rec = json.loads(line[len(":::MLLOG "):])
            except json.JSONDecodeError:
                continue
            values[rec.get("key")] = rec.get("value")
    if "result_validity" not in values:
        raise RuntimeError(f"LoadGen wrote no result to {path}")
    ms = lambda key: values[key] / 1e6 if isinstance(values.get(key), (int, float)) else None  # noqa: E731
    reasons = []
    if values.get("result_perf_constraints_met") is False:
        reasons.append("latency bound not met")
    if values.get("result_min_duration_met") is False:
        reasons.append("minimum duration not met")
    if values.get("result_min_queries_met") is False:
        reasons.append("minimum query count not met")
    wanted = _queries_wanted(values)
    if values.get("early_stopping_met") is False:
        more = re.search(r"at least (\d+) more queries", str(values.get("early_stopping_result", "")))
        reasons.append(f"early stopping: {more.group(1)} more queries wanted" if more else
                       "early stopping: " + " ".join(str(values.get("early_stopping_result", "")).split()))
    scheduled = values.get("result_scheduled_samples_per_sec")
    return {
        "result": values["result_validity"],
        "reason": "; ".join(reasons) or None,
        "early_stopping_only": reasons != [] and all(r.startswith("early stopping") for r in reasons),
        "queries_wanted": wanted,
        "achieved_qps": values.get("result_completed_samples_per_sec", values.get("result_samples_per_second")),
        "scheduled_qps": scheduled,
        "queries": values.get("result_query_count"),
        "overlatency_queries": values.get("result_overlatency_query_count"),
        "p50_ms": ms("result_50.00_percentile_latency_ns"),
        "p90_ms": ms("result_90.00_percentile_latency_ns"),
        "p99_ms": ms("result_99.00_percentile_latency_ns"),
        "max_ms": ms("result_max_latency_ns"),
    }


def _queries_wanted(values: dict[str, Any]) -> int | None:
    """Processed plus the further queries LoadGen's early-stopping rule asked for, if it did."""
    text = " ".join(str(values.get("early_stopping_result", "")).split())
    processed = re.search(r"Processed (\d+) queries", text)
    more = re.search(r"at least (\d+) more queries", text)
    if processed and more:
        return int(processed.group(1)) + int(more.group(1))
    return None
