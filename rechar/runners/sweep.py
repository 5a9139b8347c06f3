"""A sweep: models x backends x batch sizes, one worker process per (model, backend).

    >>> from rechar.runners.sweep import RunOptions, run_sweep
    >>> run_dir = run_sweep(RunOptions(models=["ncf"], backends=["ort-cpu"], batch_sizes=[1, 64], scale="tiny"))

Exports come from the export cache (made on demand). Each finished point is durable in
``points.jsonl`` as soon as it is measured; the Parquet tables are rebuilt after each worker.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import psutil

from rechar.models import DEFAULT_SCALE, names as model_names, resolve_config
from rechar import hostinfo
from rechar.errors import UserError
from rechar.jsonfile import write_json_atomic
from rechar.exporters import ExportOptions, export
from rechar.runners import allocator, backend_class, backend_reason, counters, select_backends, with_precisions
from rechar.runners.precision import PRECISIONS, split_backend
from rechar.runners.contention import NoiseThresholds
from rechar.runners.inputs import INPUT_MODES, PoolRule
from rechar.runners.measure import TimingOptions
from rechar.runners.results import (
    MANIFEST, PASS_LOGS, POINTS_LOG, SCHEMA_VERSION, PointLogTail, append_point, point_key, read_log, read_manifest, read_point_log, repair_point_log,
    write_tables,
)

DEFAULT_BATCH_SIZES = (1, 16, 64, 256, 1024)
#: Gate tolerance against eager PyTorch. Outputs are probabilities; fp32 kernels of different
#: frameworks differ by summation order (seen up to ~1e-6), far inside this.
GATE_ATOL = 1e-4
GATE_RTOL = 1e-3


@dataclasses.dataclass
class WorkloadOptions:
    """What a sweep and a serving run (rechar.serving.ServeOptions) share: the models' scale and
    overrides, the seed and id distribution of weights and inputs, the workers' threads and
    allocator, the export cache, the worker timeout, the parity gate and the noise thresholds."""

    scale: str = DEFAULT_SCALE
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    threads: int = dataclasses.field(default_factory=lambda: psutil.cpu_count(logical=False) or 1)
    seed: int = 0
    ids: str = "uniform"
    zipf_alpha: float = 1.05
    malloc: str = "default"  # the workers' memory allocator: default (glibc), jemalloc, tcmalloc
    exports_dir: str = "exports"
    timeout: float = 600.0  # seconds a worker may go without finishing a point (or trial)
    atol: float = GATE_ATOL
    rtol: float = GATE_RTOL
    noise: NoiseThresholds = NoiseThresholds()

    @classmethod
    def _known(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The fields of ``data`` (options as recorded in a manifest) this class has, nested
        options rebuilt."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["noise"] = NoiseThresholds(**values.get("noise", {}))
        return values

    def validate_workload(self, models: list[str]) -> None:
        for name in models:
            resolve_config(name, self.scale, self.overrides.get(name))
        if self.threads < 1:
            raise UserError(f"threads must be at least 1, got {self.threads}")
        if self.timeout <= 0:
            raise UserError(f"timeout must be positive, got {self.timeout}")
        allocator.preload(self.malloc)  # a one-line error if the library is not installed
        self.noise.validate()


@dataclasses.dataclass
class RunOptions(WorkloadOptions):
    models: list[str] = dataclasses.field(default_factory=model_names)
    backends: list[str] = dataclasses.field(default_factory=list)  # empty or ["all"]: every available one
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    inputs: str = "fresh"  # fresh: every call on the next batch of a pool; replay: one batch (rechar.runners.inputs)
    pool_rule: PoolRule = PoolRule()
    cache_bytes: int | None = None  # size input pools against this cache (default: each backend's device)
    timing: TimingOptions = TimingOptions()
    profile_iters: int = 0  # >0: a profiling pass per point with each framework's profiler
    counter_seconds: float = 0.0  # >0: a pass per point counting CPU events with perf stat
    rounds: int = 1  # times each point is measured, each time in a fresh worker, interleaved
    remeasure_noisy: int = 0  # re-measure a round measured on a busy machine up to this many times
    precisions: list[str] = dataclasses.field(default_factory=lambda: ["fp32"])  # each backend in each (rechar.runners.precision)
    ray_address: str | None = None  # run the workers on this Ray cluster (rechar.runners.cluster)
    nodes: str | None = None  # only the cluster's nodes with this custom resource, or label key=value
    each_node: bool = False  # the whole sweep on every matching node (one run folder per node)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunOptions":
        """Options as recorded in a run manifest."""
        values = cls._known(data)
        values["timing"] = TimingOptions(**values.get("timing", {}))
        values["pool_rule"] = PoolRule(**values.get("pool_rule", {}))
        values.setdefault("inputs", "replay")  # runs from before input pools replayed one batch
        return cls(**values)

    def validate(self) -> None:
        self.validate_workload(self.models)
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UserError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        if self.inputs not in INPUT_MODES:
            raise UserError(f"unknown inputs mode {self.inputs!r} (choose from {', '.join(INPUT_MODES)})")
        if self.cache_bytes is not None and self.cache_bytes < 1:
            raise UserError(f"cache size must be positive, got {self.cache_bytes}")
        if self.rounds < 1:
            raise UserError(f"rounds must be at least 1, got {self.rounds}")
        if self.remeasure_noisy < 0:
            raise UserError(f"re-measurements must not be negative, got {self.remeasure_noisy}")
        if self.profile_iters < 0 or self.counter_seconds < 0:
            raise UserError("profile iterations and counter seconds cannot be negative")
        self.precisions = list(dict.fromkeys(self.precisions))
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            raise UserError(f"unknown precision {', '.join(unknown) or '(none)'} (choose from {', '.join(PRECISIONS)})")
        if (self.nodes or self.each_node) and not self.ray_address:
            raise UserError("--nodes and --each-node place work on a Ray cluster: give --ray ADDRESS too")
        if self.ray_address:
            from rechar.runners.cluster import require_ray

            require_ray()
            if self.remeasure_noisy:
                raise UserError("--remeasure-noisy is not supported on a Ray cluster yet (re-run noisy points locally)")
            if self.rounds > 1 and not self.each_node:  # a point's rounds must share one machine
                raise UserError("--rounds on a Ray cluster needs --each-node (each point's rounds on one machine)")

    def pass_wanted(self, mode: str) -> bool:
        """Whether the pass ``mode`` (a key of PASS_LOGS) is part of this run."""
        return bool({"profile": self.profile_iters, "counters": self.counter_seconds}[mode])


def new_run_dir(root: str | Path = "runs") -> Path:
    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


class SweepInterrupted(Exception):
    """The sweep was stopped (Ctrl-C); finished points are kept and it can be resumed."""

    def __init__(self, run_dir: Path, done: int, total: int):
        super().__init__(f"interrupted: {done} of {total} points finished and kept; "
                         f"resume with: rechar run --resume {run_dir}")
        self.run_dir = run_dir


def run_sweep(
    options: RunOptions,
    run_dir: str | Path | None = None,
    log: Callable[[str], None] = lambda msg: None,
    progress: Callable[[int, int, str], None] = lambda done, total, label: None,
) -> Path:
    """Run the sweep into ``run_dir`` (a new folder under runs/ by default) and return it."""
    options.validate()
    # On a cluster the nodes, not the driver, decide what can run (a GPU backend on a CPU driver).
    backends, skipped = select_backends(options.backends) if not options.ray_address else (
        cluster_backends(options.backends), {})
    backends, skipped = _in_precisions(backends, options.precisions, skipped, log, on_cluster=bool(options.ray_address))
    for name, reason in skipped.items():
        log(f"skipping backend {name}: {reason}")
    if not backends:
        raise UserError("no backend is available")
    counter_support = _check_counters(options, log)
    run_dir = Path(run_dir) if run_dir else new_run_dir()
    if (run_dir / MANIFEST).exists():
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or choose another --out")
    _make_run_dir(run_dir)
    manifest = {
        "schema_version": SCHEMA_VERSION, "run_id": run_dir.name, "status": "running",
        "started": _now(), "finished": None, "resumed": [],
        "host": hostinfo.host(), "software": hostinfo.software(),
        "options": {**dataclasses.asdict(options), "backends": backends}, "skipped_backends": skipped,
        "configs": {}, "exports": {},
    }
    if counter_support:
        manifest["counters"] = counter_support
    write_json_atomic(run_dir / MANIFEST, manifest)
    return _sweep(run_dir, manifest, dataclasses.replace(options, backends=backends), log, progress)


def resume_sweep(
    run_dir: str | Path,
    log: Callable[[str], None] = lambda msg: None,
    progress: Callable[[int, int, str], None] = lambda done, total, label: None,
    profile_iters: int | None = None,
    counter_seconds: float | None = None,
    ray_address: str | None = None,
) -> Path:
    """Continue an interrupted run with the options it was started with, skipping finished points.
    With ``profile_iters`` (``counter_seconds``), also profile (count the CPU events of) every
    timed point that has no profile (counts) yet: this is how an existing run gets those passes."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest.get("kind") == "serve":
        raise UserError(f"{run_dir} is a serving run, not a sweep; resume it with rechar serve --resume {run_dir}")
    options = RunOptions.from_dict(manifest["options"])
    if ray_address:  # the cluster may have a new address since the run started
        if not options.ray_address:
            raise UserError(f"{run_dir} was not run on a Ray cluster; resume it without --ray")
        options.ray_address = manifest["options"]["ray_address"] = ray_address
    if options.ray_address:
        from rechar.runners.cluster import require_ray

        require_ray()
        if profile_iters is not None or counter_seconds is not None:
            raise UserError(f"{run_dir} ran on a Ray cluster: adding a pass to it is not supported yet "
                            "(run with --profile / --counters from the start)")
    if profile_iters is not None:
        if profile_iters < 1:
            raise UserError(f"profile iterations must be at least 1, got {profile_iters}")
        options.profile_iters = profile_iters
        manifest["options"]["profile_iters"] = profile_iters
    if counter_seconds is not None:
        if counter_seconds <= 0:
            raise UserError(f"counter seconds must be positive, got {counter_seconds}")
        options.counter_seconds = counter_seconds
        manifest["options"]["counter_seconds"] = counter_seconds
    counter_support = _check_counters(options, log)
    if counter_support:
        manifest["counters"] = counter_support
    for name in options.backends if not options.ray_address else ():
        reason = backend_class(name).unavailable_reason()
        if reason:
            raise UserError(f"cannot resume {run_dir}: backend {name} is not available here: {reason}")
    if manifest.get("host", {}).get("hostname") != hostinfo.host()["hostname"]:
        log(f"note: {run_dir} was started on {manifest['host'].get('hostname')}; resuming on another host")
    mark_resumed(run_dir, manifest)
    return _sweep(run_dir, manifest, options, log, progress)


def mark_resumed(run_dir: Path, manifest: dict) -> None:
    """Record in the manifest that the run is running again (a sweep's or a serving run's)."""
    manifest["resumed"] = [*manifest.get("resumed", []), _now()]
    manifest.update(status="running", finished=None)
    write_json_atomic(run_dir / MANIFEST, manifest)


def export_models(run_dir: Path, manifest: dict, options, log) -> dict:
    """Every model of a run exported (or found in the cache and verified), its resolved config and
    export recorded in the manifest; ``options`` has models, scale, overrides, exports_dir, seed."""
    exports = {}
    for name in options.models:
        result = export(name, options.scale, options.overrides.get(name), options.exports_dir,
                        ExportOptions(seed=options.seed), log=log, verify_files=True)
        exports[name] = result
        manifest["configs"][name] = result.manifest["config"]
        manifest["exports"][name] = {"path": str(result.path.resolve()), "cache_key": result.manifest["cache_key"],
                                     "files": result.manifest["files"]}
    write_json_atomic(run_dir / MANIFEST, manifest)
    return exports


def _in_precisions(backends: list[str], precisions: list[str], skipped: dict[str, str], log,
                   on_cluster: bool = False) -> tuple[list[str], dict]:
    """Each backend in each precision; a precision a stack does not offer is skipped with its
    reason (never run in fp32 instead). On a cluster only the stack's offer counts here (whether
    it runs is the node's to say)."""
    chosen = []
    for name in with_precisions(backends, precisions):
        precision = split_backend(name)[1]
        reason = None if "@" not in name else (backend_class(name).precision_reason(precision) if on_cluster
                                                else backend_reason(name))
        if reason:
            skipped[name] = reason  # logged with the others by run_sweep
        else:
            chosen.append(name)
    if not chosen:
        raise UserError("no backend is available in the precisions asked for: "
                        + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return chosen, skipped


def cluster_backends(names: list[str]) -> list[str]:
    """Backends of a cluster sweep as named (known names; none: the default set, ``all``: every one):
    whether each can run is up to the node that gets it."""
    from rechar.runners import BACKENDS, DEFAULT_BACKENDS

    chosen = list(DEFAULT_BACKENDS) if not names else list(BACKENDS) if "all" in names else names
    for name in chosen:
        backend_class(name)  # an unknown name is a one-line error
    return list(dict.fromkeys(chosen))


def _sweep(run_dir: Path, manifest: dict, options: RunOptions, log, progress) -> Path:
    exports = export_models(run_dir, manifest, options, log)
    if options.ray_address:
        return _cluster_sweep(run_dir, manifest, options, exports, log, progress)

    repair_point_log(run_dir)
    pairs = [(m, b) for m in options.models for b in options.backends]
    total = len(pairs) * len(options.batch_sizes) * options.rounds
    done = {point_key(r) for r in read_point_log(run_dir)}
    progress(len(done), total, "")
    tail = PointLogTail(run_dir)
    tail.new_keys()  # skip what is already there
    try:
        # Rounds interleave: every (model, backend) worker of round r runs before any of round
        # r + 1, so that a drift of the machine hits every stack alike; each in a fresh process.
        for round_ in range(options.rounds):
            for name, backend in pairs:
                todo = [b for b in options.batch_sizes if (name, backend, b, round_, 0) not in done]
                if todo:
                    _run_worker(run_dir, manifest["run_id"], name, backend, todo, exports[name].path, options, done,
                                total, progress, tail, round_=round_)
                    write_tables(run_dir)
                _run_passes(run_dir, manifest["run_id"], name, backend, round_, exports[name].path, options, done,
                            total, progress, tail)
        for attempt in range(1, options.remeasure_noisy + 1):
            for (name, backend, round_), batches in _noisy_rounds(run_dir, attempt).items():
                progress(len(done), total, f"{name} on {backend}: re-measuring noisy round {round_}")
                _run_worker(run_dir, manifest["run_id"], name, backend, batches, exports[name].path, options, done,
                            total, progress, tail, round_=round_, attempt=attempt)
            write_tables(run_dir)
    except KeyboardInterrupt:
        write_tables(run_dir)
        manifest.update(status="interrupted")
        write_json_atomic(run_dir / MANIFEST, manifest)
        raise SweepInterrupted(run_dir, len(done), total) from None
    points = write_tables(run_dir)
    manifest["input_hashes"] = {  # the same seed must give these in every run (see tests)
        name: {str(int(b)): h for b, h in zip(group["batch"], group["input_hash"]) if isinstance(h, str)}
        for name, group in points.drop_duplicates(["model", "batch"]).groupby("model")}
    manifest.update(status="complete", finished=_now())
    write_json_atomic(run_dir / MANIFEST, manifest)
    return run_dir


def _cluster_sweep(run_dir: Path, manifest: dict, options: RunOptions, exports: dict, log, progress) -> Path:
    from rechar.runners import cluster

    cluster.connect(options.ray_address)
    driver = cluster.ClusterSweep(run_dir, manifest, options, exports, log, progress)
    try:
        driver.run()
    except KeyboardInterrupt:
        for member in cluster.member_runs(run_dir, manifest):
            write_tables(member)
        manifest.update(status="interrupted")
        write_json_atomic(run_dir / MANIFEST, manifest)
        raise SweepInterrupted(run_dir, driver.done, driver.total) from None
    for member in cluster.member_runs(run_dir, manifest):
        write_tables(member)
        member_manifest = manifest if member == run_dir else read_manifest(member)
        member_manifest.update(status="complete", finished=_now())
        write_json_atomic(member / MANIFEST, member_manifest)
    if options.each_node:
        manifest.update(status="complete", finished=_now(), nodes=[m.name for m in cluster.member_runs(run_dir, manifest)])
        write_json_atomic(run_dir / MANIFEST, manifest)
    return run_dir


def _run_passes(run_dir: Path, run_id: str, name: str, backend: str, round_: int, export_dir: Path,
                options: RunOptions, done: set, total: int, progress, tail: PointLogTail) -> None:
    """The passes after timing for this round's timed points that lack them: profiles in every
    round (the spread of a point's category shares is over its rounds), counters in the first."""
    for mode, log_name in PASS_LOGS.items():
        if not options.pass_wanted(mode) or (mode == "counters" and round_ > 0):
            continue
        have = {point_key(r) for r in read_log(run_dir, log_name)}
        timed_ok = {point_key(r) for r in read_point_log(run_dir) if r["status"] == "ok"}
        missing = [b for b in options.batch_sizes
                   if (name, backend, b, round_, 0) in timed_ok and (name, backend, b, round_, 0) not in have]
        if missing:
            progress(len(done), total, f"{name} on {backend}: {mode} pass")
            _run_worker(run_dir, run_id, name, backend, missing, export_dir, options, done, total, progress, tail,
                        mode=mode, round_=round_)


def _noisy_rounds(run_dir: Path, attempt: int) -> dict[tuple[str, str, int], list[int]]:
    """(model, backend, round) -> batches whose round has only noisy attempts so far, fewer than
    ``attempt`` of them: the ones to measure again as that attempt."""
    tries: dict[tuple, list[dict]] = {}
    for rec in read_point_log(run_dir):
        tries.setdefault((rec["model"], rec["backend"], int(rec["batch"]), int(rec.get("round", 0))), []).append(rec)
    again: dict[tuple[str, str, int], list[int]] = {}
    for (name, backend, batch, round_), recs in tries.items():
        timed = [r for r in recs if r["status"] == "ok"]
        latest = max(int(r.get("attempt", 0)) for r in recs)
        if latest == attempt - 1 and timed and all(r.get("noisy") is True for r in timed):
            again.setdefault((name, backend, round_), []).append(batch)
    return again


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "logs").mkdir(exist_ok=True)
        (run_dir / "specs").mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run folder {run_dir}: {e.strerror}") from None


def _run_worker(run_dir: Path, run_id: str, name: str, backend: str, batches: list[int], export_dir: Path,
                options: RunOptions, done: set, total: int, progress, tail: PointLogTail, mode: str = "run",
                round_: int = 0, attempt: int = 0) -> None:
    repair_point_log(run_dir)
    spec = {
        "run_id": run_id, "parent_pid": os.getpid(), "model": name, "scale": options.scale,
        "overrides": options.overrides.get(name, {}),
        "seed": options.seed, "ids": options.ids, "zipf_alpha": options.zipf_alpha,
        "export_dir": str(export_dir.resolve()), "backend": backend, "batches": batches,
        "threads": options.threads, "malloc": options.malloc,
        "inputs": options.inputs, "pool_rule": dataclasses.asdict(options.pool_rule), "cache_bytes": options.cache_bytes,
        "timing": dataclasses.asdict(options.timing), "atol": options.atol, "rtol": options.rtol,
        "run_dir": str(run_dir.resolve()), "profile_iters": options.profile_iters,
        "counter_seconds": options.counter_seconds, "mode": mode, "round": round_, "attempt": attempt,
        "noise": dataclasses.asdict(options.noise),
    }
    if attempt:  # a re-measurement times again, nothing more
        spec.update(profile_iters=0, counter_seconds=0.0)
    stem = (f"{name}__{backend}" + (f"__r{round_}" if options.rounds > 1 else "") + (f"__a{attempt}" if attempt else "")
            + ("" if mode == "run" else f"__{mode}"))
    spec_path = run_dir / "specs" / f"{stem}.json"
    write_json_atomic(spec_path, spec)
    log_path = run_dir / "logs" / f"{stem}.log"
    label = f"{name} on {backend}"
    progress(len(done), total, label)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "rechar.runners.worker", str(spec_path)],
                                stdout=log_file, stderr=subprocess.STDOUT, env=_worker_env(options))
        deadline = time.monotonic() + options.timeout
        marker = _log_sizes(run_dir)
        status = None
        try:
            while proc.poll() is None:
                if _log_sizes(run_dir) != marker:  # a point (or one of its passes) finished: the clock restarts
                    marker = _log_sizes(run_dir)
                    deadline = time.monotonic() + options.timeout
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    status = "timeout"
                    break
                time.sleep(0.25)
                _refresh(tail, done, total, label, progress)
        except KeyboardInterrupt:
            proc.kill()  # the point it was measuring is abandoned; finished ones are on disk
            proc.wait()
            repair_point_log(run_dir)
            _refresh(tail, done, total, label, progress)
            raise
    _refresh(tail, done, total, label, progress)
    if mode != "run":
        if proc.returncode != 0:
            log_name = PASS_LOGS[mode]
            have = {point_key(r) for r in read_log(run_dir, log_name)}
            error = "timeout" if status == "timeout" else f"worker exited with {_describe_exit(proc.returncode)}: {_tail(log_path)}"
            for batch in batches:
                if (name, backend, batch, round_, attempt) not in have:
                    append_point(run_dir, {"run_id": run_id, "model": name, "backend": backend, "device": None,
                                           "batch": batch, "round": round_, "attempt": attempt, "status": "failed",
                                           "error": error}, log=log_name)
        return
    missing = [b for b in batches if (name, backend, b, round_, attempt) not in done]
    if not missing:
        return
    if status == "timeout":
        error = f"killed: no point finished within the {options.timeout:g} s timeout"
    else:
        error = f"worker exited with {_describe_exit(proc.returncode)}: {_tail(log_path)}"
    for batch in missing:
        append_point(run_dir, {"run_id": run_id, "model": name, "scale": options.scale, "backend": backend,
                               "device": None, "batch": batch, "round": round_, "attempt": attempt,
                               "status": status or "failed", "error": error})
        done.add((name, backend, batch, round_, attempt))
    progress(len(done), total, label)


def _log_sizes(run_dir: Path) -> tuple[int, ...]:
    return tuple((run_dir / log).stat().st_size if (run_dir / log).exists() else 0 for log in (POINTS_LOG, *PASS_LOGS.values()))


def _check_counters(options: RunOptions, log) -> dict | None:
    """With the counting pass asked for: what perf can count here (recorded in the manifest), a
    notice if hardware events are missing, and a one-line error if nothing can be counted."""
    if not options.counter_seconds:
        return None
    support = counters.probe()
    if not support.usable:
        raise UserError(f"cannot count CPU events: {support.reason}")
    if support.reason:
        log(f"note: {support.reason}; counting software events only")
    return support.to_dict()


def _refresh(tail: PointLogTail, done: set, total: int, label: str, progress) -> None:
    keys = set(tail.new_keys())
    if keys - done:
        done |= keys
        progress(len(done), total, label)


def _worker_env(options: RunOptions) -> dict[str, str]:
    env = dict(os.environ)
    # OpenMP pools of every framework follow --threads; set before the worker imports them.
    env.update(OMP_NUM_THREADS=str(options.threads), MKL_NUM_THREADS=str(options.threads),
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    library = allocator.preload(options.malloc)
    if library:
        env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD")]))
    return env


def _describe_exit(code: int) -> str:
    if code is not None and code < 0:
        import signal

        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def _tail(path: Path, lines: int = 1, limit: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    tail = " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"
    return tail[-limit:]
