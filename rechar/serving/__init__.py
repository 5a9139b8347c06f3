"""Serving under load: the highest query rate a model serves on a stack within a p99 bound, per
batching policy, measured with MLPerf LoadGen.

    >>> from rechar.serving import ServeOptions, run_serve
    >>> run_dir = run_serve(ServeOptions(models=["dlrm-rmc1"], backends=["ort-cpu"], p99_ms=10))

One worker process per (model, backend), as in a sweep (rechar.serving.worker); queries and
their sizes in rechar.serving.queries, the system under test in rechar.serving.loadgen, the
search in rechar.serving.search, the run folder in rechar.serving.trials.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from rechar.errors import UserError
from rechar.jsonfile import write_json_atomic
from rechar.stacks import backend_class, select_backends
from rechar.results.store import MANIFEST, append_point, read_manifest
from rechar.sweep.options import WorkloadOptions
from rechar.sweep.rundir import export_models, mark_resumed, now, open_run, worker_env
from rechar.sweep.supervise import file_sizes, run_worker_process
from rechar.serving import loadgen
from rechar.serving.queries import Policy, QuerySizes
from rechar.serving.search import SearchRule, policy_finished
from rechar.serving.trials import TRIALS_LOG, config_key, read_trials, write_trials

__all__ = ["ServeOptions", "run_serve", "resume_serve", "ServeInterrupted"]


@dataclasses.dataclass
class ServeOptions(WorkloadOptions):
    models: list[str] = dataclasses.field(default_factory=lambda: ["dlrm-rmc1"])
    backends: list[str] = dataclasses.field(default_factory=list)  # empty: the default set, as far as available
    batches: list[int | None] = dataclasses.field(default_factory=lambda: [16, 64, 256, None])  # None: whole queries
    workers: list[int] = dataclasses.field(default_factory=lambda: [1])
    query_sizes: str = "lognormal:5.1,0.2"
    max_query: int = 1024
    p99_ms: float = 10.0
    min_duration_s: float = 2.0
    min_queries: int = 512
    offload_backend: str | None = None
    offload_threshold: int | None = None
    search: SearchRule = SearchRule()
    keep_trace: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServeOptions":
        values = cls._known(data)
        values["search"] = SearchRule(**values.get("search", {}))
        return cls(**values)

    @property
    def policies(self) -> list[Policy]:
        return [Policy(b, w) for w in self.workers for b in self.batches]

    def validate(self) -> None:
        reason = loadgen.available()
        if reason:
            raise UserError(reason)
        self.validate_workload(self.models)
        if not self.p99_ms > 0:
            raise UserError(f"the p99 bound must be positive, got {self.p99_ms} ms")
        QuerySizes(self.query_sizes, self.max_query)  # a one-line error if the spec is bad
        if not self.batches or any(b is not None and b < 1 for b in self.batches):
            raise UserError(f"batch sizes must be positive integers or 'query', got {self.batches}")
        if not self.workers or min(self.workers) < 1:
            raise UserError(f"workers must be at least 1, got {self.workers}")
        if self.min_duration_s <= 0 or self.min_queries < 1:
            raise UserError("the minimum duration and query count must be positive")
        if (self.offload_backend is None) != (self.offload_threshold is None):
            raise UserError("--offload-backend and --offload-threshold go together")
        variants = [b for b in [*self.backends, self.offload_backend or ""] if "@" in b]
        if variants:  # its gate is bit parity: reduced precision would fail it, or be run in fp32
            raise UserError(f"rechar serve runs fp32 stacks; precision variants ({', '.join(variants)}) are "
                            "measured by rechar run --precision")
        if self.offload_backend is not None:
            cls = backend_class(self.offload_backend)  # unknown: a one-line error naming the choices
            why = cls.unavailable_reason()
            if why:
                raise UserError(f"offload backend {self.offload_backend} is not available: {why}")
            if self.offload_threshold < 1:
                raise UserError(f"the offload threshold must be at least 1 item, got {self.offload_threshold}")


class ServeInterrupted(Exception):
    def __init__(self, run_dir: Path, done: int, total: int):
        super().__init__(f"interrupted: {done} of {total} configurations finished, every finished trial kept; "
                         f"resume with: rechar serve --resume {run_dir}")
        self.run_dir = run_dir


def run_serve(options: ServeOptions, run_dir: str | Path | None = None, log: Callable[[str], None] = lambda m: None,
              progress: Callable[[int, int, str], None] = lambda d, t, label: None) -> Path:
    """Serve every (model, backend) under load into ``run_dir`` (a new folder under runs/)."""
    options.validate()
    backends, skipped = select_backends(options.backends)
    run_dir, manifest = open_run(run_dir, options, backends, skipped, log, kind="serve")
    return _serve(run_dir, manifest, dataclasses.replace(options, backends=backends), log, progress)


def resume_serve(run_dir: str | Path, log: Callable[[str], None] = lambda m: None,
                 progress: Callable[[int, int, str], None] = lambda d, t, label: None) -> Path:
    """Continue an interrupted serving run: finished trials are kept, searches go on from them."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest.get("kind") != "serve":
        raise UserError(f"{run_dir} is a sweep, not a serving run; resume it with rechar run --resume")
    options = ServeOptions.from_dict(manifest["options"])
    for name in options.backends:
        reason = backend_class(name).unavailable_reason()
        if reason:
            raise UserError(f"cannot resume {run_dir}: backend {name} is not available here: {reason}")
    mark_resumed(run_dir, manifest)
    return _serve(run_dir, manifest, options, log, progress)


def _serve(run_dir: Path, manifest: dict, options: ServeOptions, log, progress) -> Path:
    exports = export_models(run_dir, manifest, options, log)
    pairs = [(m, b) for m in options.models for b in options.backends]
    total = len(pairs) * len(options.policies)
    try:
        for name, backend in pairs:
            if _unfinished(run_dir, options, name, backend):
                progress(_finished_count(run_dir, options, pairs), total, f"{name} on {backend}")
                _run_worker(run_dir, manifest["run_id"], name, backend, exports[name].path, options)
                write_trials(run_dir)
        progress(_finished_count(run_dir, options, pairs), total, "")
    except KeyboardInterrupt:
        write_trials(run_dir)
        manifest.update(status="interrupted")
        write_json_atomic(run_dir / MANIFEST, manifest)
        raise ServeInterrupted(run_dir, _finished_count(run_dir, options, pairs), total) from None
    write_trials(run_dir)
    manifest.update(status="complete", finished=now())
    write_json_atomic(run_dir / MANIFEST, manifest)
    return run_dir


def _offload_label(options: ServeOptions) -> str:
    return f"{options.offload_backend}>={options.offload_threshold}" if options.offload_backend else ""


def _trials_of(run_dir: Path, options: ServeOptions, name: str, backend: str) -> dict[str, list[dict]]:
    offload = _offload_label(options)
    mine: dict[str, list[dict]] = {p.label: [] for p in options.policies}
    for t in read_trials(run_dir):
        if config_key(t)[:3] == (name, backend, offload) and t["policy"] in mine:
            mine[t["policy"]].append(t)
    return {label: sorted(ts, key=lambda t: int(t["trial"])) for label, ts in mine.items()}


def _unfinished(run_dir: Path, options: ServeOptions, name: str, backend: str) -> list[str]:
    return [label for label, ts in _trials_of(run_dir, options, name, backend).items()
            if not policy_finished(ts, options.p99_ms, options.min_queries, options.search)]


def _finished_count(run_dir: Path, options: ServeOptions, pairs) -> int:
    return sum(len(options.policies) - len(_unfinished(run_dir, options, m, b)) for m, b in pairs)


def _run_worker(run_dir: Path, run_id: str, name: str, backend: str, export_dir: Path, options: ServeOptions) -> None:
    spec = {
        **options.worker_fields(run_id, name, backend, export_dir, run_dir),
        "policies": [dataclasses.asdict(p) for p in options.policies], "query_sizes": options.query_sizes,
        "max_query": options.max_query, "p99_ms": options.p99_ms, "min_duration_s": options.min_duration_s,
        "min_queries": options.min_queries, "offload_backend": options.offload_backend,
        "offload_threshold": options.offload_threshold, "search": dataclasses.asdict(options.search),
        "keep_trace": options.keep_trace,
    }
    stem = f"{name}__{backend}"
    exit_ = run_worker_process("rechar.serving.worker", spec, run_dir / "specs" / f"{stem}.json",
                               run_dir / "logs" / f"{stem}.log", worker_env(options.threads, options.malloc),
                               options.timeout, lambda: file_sizes([run_dir / TRIALS_LOG]))  # a trial finished
    unfinished = _unfinished(run_dir, options, name, backend)
    if not unfinished:
        return
    status, error = ("timeout" if exit_.timed_out else None), exit_.error(options.timeout, unit="trial")
    trials = _trials_of(run_dir, options, name, backend)
    for policy in options.policies:
        if policy.label in unfinished:
            append_point(run_dir, {
                "run_id": run_id, "model": name, "scale": options.scale, "backend": backend,
                "offload": _offload_label(options),
                "policy": policy.label, "batch": policy.batch, "workers": policy.workers,
                "trial": 1 + max((int(t["trial"]) for t in trials[policy.label]), default=-1),
                "status": status or "failed", "error": error, "p99_bound_ms": options.p99_ms}, log=TRIALS_LOG)
