"""One worker of a sweep: a (model, backend) pair over some of its batch sizes, in one process.

The local sweep and each node of a cluster sweep run their workers through ``run_worker``: the
worker's spec, its supervision (rechar.sweep.supervise), and a record for every point the worker
left unmeasured (a crash, a timeout), so that a sweep always knows the fate of every point.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rechar.results.store import PASS_LOGS, POINTS_LOG, PointLogTail, append_point, point_key, read_log, repair_point_log
from rechar.sweep.options import RunOptions
from rechar.sweep.rundir import worker_env
from rechar.sweep.supervise import file_sizes, run_worker_process


def run_worker(run_dir: Path, run_id: str, name: str, backend: str, batches: list[int], export_dir: Path,
               options: RunOptions, done: set, total: int, progress, tail: PointLogTail, mode: str = "run",
               round_: int = 0, attempt: int = 0) -> None:
    """One worker process measuring ``batches`` of (name, backend) into ``run_dir`` (the pass
    ``mode``), supervised; the points it left unmeasured are recorded with why."""
    repair_point_log(run_dir)
    spec = {
        **options.worker_fields(run_id, name, backend, export_dir, run_dir), "batches": batches,
        "malloc": options.malloc, "inputs": options.inputs, "pool_rule": dataclasses.asdict(options.pool_rule),
        "cache_bytes": options.cache_bytes, "timing": dataclasses.asdict(options.timing),
        "profile_iters": options.profile_iters, "counter_seconds": options.counter_seconds, "mode": mode,
        "round": round_, "attempt": attempt, "uarch_machine": options.uarch_machine,
    }
    prefix: list[str] = []
    threads = options.threads
    if mode == "uarch":  # one simulated core: one intra-op thread, under callgrind (rechar.uarch)
        from rechar.uarch.callgrind import UARCH_ENV, valgrind_command
        from rechar.uarch.machines import machine

        threads = spec["threads"] = 1
        dump_dir = run_dir / "callgrind"
        dump_dir.mkdir(exist_ok=True)
        spec["uarch_dump_dir"] = str(dump_dir.resolve())
        prefix = valgrind_command(machine(options.uarch_machine), dump_dir)
    env = worker_env(threads, options.malloc)
    if mode == "uarch":
        env.update(UARCH_ENV)
    if attempt:  # a re-measurement times again, nothing more
        spec.update(profile_iters=0, counter_seconds=0.0)
    stem = (f"{name}__{backend}" + (f"__r{round_}" if options.rounds > 1 else "") + (f"__a{attempt}" if attempt else "")
            + ("" if mode == "run" else f"__{mode}"))
    label = f"{name} on {backend}"
    progress(len(done), total, label)
    logs = [run_dir / log for log in (POINTS_LOG, *PASS_LOGS.values())]
    try:
        # A point (or one of its passes) finished: the clock restarts.
        exit_ = run_worker_process("rechar.sweep.worker", spec, run_dir / "specs" / f"{stem}.json",
                                   run_dir / "logs" / f"{stem}.log", env,
                                   options.timeout, lambda: file_sizes(logs),
                                   lambda: _refresh(tail, done, total, label, progress), prefix=prefix)
    except KeyboardInterrupt:
        repair_point_log(run_dir)
        _refresh(tail, done, total, label, progress)
        raise
    _refresh(tail, done, total, label, progress)
    if mode != "run":
        if exit_.returncode != 0:
            log_name = PASS_LOGS[mode]
            have = {point_key(r) for r in read_log(run_dir, log_name)}
            error = "timeout" if exit_.timed_out else exit_.error(options.timeout)
            for batch in batches:
                if (name, backend, batch, round_, attempt) not in have:
                    append_point(run_dir, {"run_id": run_id, "model": name, "backend": backend, "device": None,
                                           "batch": batch, "round": round_, "attempt": attempt, "status": "failed",
                                           "error": error}, log=log_name)
        return
    missing = [b for b in batches if (name, backend, b, round_, attempt) not in done]
    for batch in missing:
        append_point(run_dir, {"run_id": run_id, "model": name, "scale": options.scale, "backend": backend,
                               "device": None, "batch": batch, "round": round_, "attempt": attempt,
                               "status": "timeout" if exit_.timed_out else "failed",
                               "error": exit_.error(options.timeout)})
        done.add((name, backend, batch, round_, attempt))
    if missing:
        progress(len(done), total, label)


def _refresh(tail: PointLogTail, done: set, total: int, label: str, progress) -> None:
    keys = set(tail.new_keys())
    if keys - done:
        done |= keys
        progress(len(done), total, label)
