"""What a run is asked to do: the options of a sweep (RunOptions) and what a sweep and a serving
run share (WorkloadOptions), with their validation and how they are read back from a manifest."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import psutil

from rechar.errors import UserError
from rechar.measure import allocator
from rechar.measure.contention import NoiseThresholds
from rechar.measure.gate import GATE_ATOL, GATE_RTOL
from rechar.measure.inputs import INPUT_MODES, PoolRule
from rechar.measure.timing import TimingOptions
from rechar.models import DEFAULT_SCALE, names as model_names, resolve_config
from rechar.stacks.variants import PRECISIONS

DEFAULT_BATCH_SIZES = (1, 16, 64, 256, 1024)


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

    def worker_fields(self, run_id: str, model: str, backend: str, export_dir: Path, run_dir: Path) -> dict[str, Any]:
        """The fields of a worker's spec (WorkerFields) that come from these options."""
        return {"run_id": run_id, "parent_pid": os.getpid(), "model": model, "scale": self.scale,
                "overrides": self.overrides.get(model, {}), "seed": self.seed, "ids": self.ids,
                "zipf_alpha": self.zipf_alpha, "export_dir": str(export_dir.resolve()), "backend": backend,
                "threads": self.threads, "atol": self.atol, "rtol": self.rtol, "run_dir": str(run_dir.resolve()),
                "noise": dataclasses.asdict(self.noise)}

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
    inputs: str = "fresh"  # fresh: every call on the next batch of a pool; replay: one batch (rechar.measure.inputs)
    pool_rule: PoolRule = PoolRule()
    cache_bytes: int | None = None  # size input pools against this cache (default: each backend's device)
    timing: TimingOptions = TimingOptions()
    profile_iters: int = 0  # >0: a profiling pass per point with each framework's profiler
    counter_seconds: float = 0.0  # >0: a pass per point counting CPU events with perf stat
    uarch_machine: str = ""  # set: a pass per point simulating this machine's caches under callgrind (rechar.uarch)
    rounds: int = 1  # times each point is measured, each time in a fresh worker, interleaved
    remeasure_noisy: int = 0  # re-measure a round measured on a busy machine up to this many times
    precisions: list[str] = dataclasses.field(default_factory=lambda: ["fp32"])  # each backend in each (rechar.stacks.variants)
    ray_address: str | None = None  # run the workers on this Ray cluster (rechar.sweep.cluster)
    nodes: str | None = None  # only the cluster's nodes with this custom resource, or label key=value
    each_node: bool = False  # the whole sweep on every matching node (one run folder per node)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunOptions":
        """Options as recorded in a run manifest."""
        values = cls._known(data)
        # Runs from before the time budget had none: a resumed one keeps timing as it began.
        values["timing"] = TimingOptions(**{"max_seconds": None, **values.get("timing", {})})
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
        self.timing.validate()
        if self.rounds < 1:
            raise UserError(f"rounds must be at least 1, got {self.rounds}")
        if self.remeasure_noisy < 0:
            raise UserError(f"re-measurements must not be negative, got {self.remeasure_noisy}")
        if self.profile_iters < 0 or self.counter_seconds < 0:
            raise UserError("profile iterations and counter seconds cannot be negative")
        if self.uarch_machine:
            from rechar.uarch.machines import MACHINES

            if self.uarch_machine not in MACHINES:
                raise UserError(f"unknown machine {self.uarch_machine!r} for --uarch-machine "
                                f"(choose from {', '.join(MACHINES)})")
            if self.ray_address:
                raise UserError("the simulation pass (--uarch) is not supported on a Ray cluster yet")
        self.precisions = list(dict.fromkeys(self.precisions))
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            raise UserError(f"unknown precision {', '.join(unknown) or '(none)'} (choose from {', '.join(PRECISIONS)})")
        if (self.nodes or self.each_node) and not self.ray_address:
            raise UserError("--nodes and --each-node place work on a Ray cluster: give --ray ADDRESS too")
        if self.ray_address:
            require_ray()
            if self.remeasure_noisy:
                raise UserError("--remeasure-noisy is not supported on a Ray cluster yet (re-run noisy points locally)")
            if self.rounds > 1 and not self.each_node:  # a point's rounds must share one machine
                raise UserError("--rounds on a Ray cluster needs --each-node (each point's rounds on one machine)")

    def pass_wanted(self, mode: str) -> bool:
        """Whether the pass ``mode`` (a key of PASS_LOGS) is part of this run."""
        return bool({"profile": self.profile_iters, "counters": self.counter_seconds, "uarch": self.uarch_machine}[mode])


def require_ray():
    """Ray, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'rechar[ray]'") from None
    return ray


@dataclasses.dataclass(kw_only=True)
class WorkerFields:
    """What every worker process is told, a sweep's (rechar.sweep.worker.WorkerSpec) and a serving
    run's (rechar.serving.worker.ServeSpec) alike; each adds what only it needs."""

    run_id: str
    model: str
    scale: str
    overrides: dict[str, Any]
    seed: int
    ids: str
    zipf_alpha: float
    export_dir: str
    backend: str
    threads: int
    atol: float
    rtol: float
    run_dir: str
    parent_pid: int = 0
    noise: dict[str, Any] = dataclasses.field(default_factory=dict)  # NoiseThresholds fields

    @classmethod
    def read(cls, path: str | Path):
        return cls(**json.loads(Path(path).read_text()))
