"""A sweep: models x backends x batch sizes, one worker process per (model, backend).

    >>> from rechar.sweep import RunOptions, run_sweep
    >>> run_dir = run_sweep(RunOptions(models=["ncf"], backends=["ort-cpu"], batch_sizes=[1, 64], scale="tiny"))

Exports come from the export cache (made on demand). Each finished point is durable in
``points.jsonl`` as soon as it is measured; the Parquet tables are rebuilt after each worker.
On a Ray cluster (``RunOptions.ray_address``) the same points are measured by rechar.sweep.cluster.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from rechar import hostinfo
from rechar.errors import UserError
from rechar.jsonfile import write_json_atomic
from rechar.measure import counters
from rechar.results.store import (
    MANIFEST, PASS_LOGS, PointLogTail, point_key, read_log, read_manifest, read_point_log, repair_point_log, write_tables,
)
from rechar.stacks import BACKENDS, DEFAULT_BACKENDS, backend_class, backend_reason, select_backends, with_precisions
from rechar.stacks.variants import split_backend
from rechar.sweep.options import RunOptions, require_ray
from rechar.sweep.rundir import export_models, mark_resumed, now, open_run
from rechar.sweep.unit import run_worker


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
    backends, skipped = in_precisions(backends, options.precisions, skipped, log, on_cluster=bool(options.ray_address))
    counter_support = _check_counters(options, log)
    uarch = _check_uarch(options)
    run_dir, manifest = open_run(run_dir, options, backends, skipped, log,
                                 **({"counters": counter_support} if counter_support else {}),
                                 **({"uarch": uarch} if uarch else {}))
    return _sweep(run_dir, manifest, dataclasses.replace(options, backends=backends), log, progress)


def resume_sweep(
    run_dir: str | Path,
    log: Callable[[str], None] = lambda msg: None,
    progress: Callable[[int, int, str], None] = lambda done, total, label: None,
    profile_iters: int | None = None,
    counter_seconds: float | None = None,
    ray_address: str | None = None,
    uarch_machine: str | None = None,
    remeasure_noisy: int | None = None,
) -> Path:
    """Continue an interrupted run with the options it was started with, skipping finished points.
    With ``profile_iters`` (``counter_seconds``), also profile (count the CPU events of) every
    timed point that has no profile (counts) yet: this is how an existing run gets those passes.
    With ``remeasure_noisy``, measure again, up to that many times, every round timed while the
    machine was busy (a finished run included); the noisy attempts stay in the run."""
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
        require_ray()
        if profile_iters is not None or counter_seconds is not None or uarch_machine is not None:
            raise UserError(f"{run_dir} ran on a Ray cluster: adding a pass to it is not supported yet "
                            "(run with --profile / --counters from the start)")
    if profile_iters is not None:
        if profile_iters < 1:
            raise UserError(f"profile iterations must be at least 1, got {profile_iters}")
        options.profile_iters = profile_iters
        manifest["options"]["profile_iters"] = profile_iters
    if remeasure_noisy is not None:
        if remeasure_noisy < 1:
            raise UserError(f"re-measurements must be at least 1, got {remeasure_noisy}")
        if options.ray_address:
            raise UserError("--remeasure-noisy is not supported on a Ray cluster yet (re-run noisy points locally)")
        options.remeasure_noisy = manifest["options"]["remeasure_noisy"] = max(options.remeasure_noisy,
                                                                               remeasure_noisy)
    if counter_seconds is not None:
        if counter_seconds <= 0:
            raise UserError(f"counter seconds must be positive, got {counter_seconds}")
        options.counter_seconds = counter_seconds
        manifest["options"]["counter_seconds"] = counter_seconds
    counter_support = _check_counters(options, log)
    if counter_support:
        manifest["counters"] = counter_support
    if uarch_machine is not None:
        options.uarch_machine = manifest["options"]["uarch_machine"] = uarch_machine
    uarch = _check_uarch(options)
    if uarch:
        if manifest.get("uarch", {}).get("machine", uarch["machine"]) != uarch["machine"]:
            raise UserError(f"{run_dir} simulated {manifest['uarch']['machine']} already; "
                            f"a run simulates one machine (start another run for {uarch['machine']})")
        manifest["uarch"] = uarch
    for name in options.backends if not options.ray_address else ():
        reason = backend_class(name).unavailable_reason()
        if reason:
            raise UserError(f"cannot resume {run_dir}: backend {name} is not available here: {reason}")
    if manifest.get("host", {}).get("hostname") != hostinfo.host()["hostname"]:
        log(f"note: {run_dir} was started on {manifest['host'].get('hostname')}; resuming on another host")
    mark_resumed(run_dir, manifest)
    return _sweep(run_dir, manifest, options, log, progress)


def in_precisions(backends: list[str], precisions: list[str], skipped: dict[str, str], log,
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
                    run_worker(run_dir, manifest["run_id"], name, backend, todo, exports[name].path, options, done,
                                total, progress, tail, round_=round_)
                    write_tables(run_dir)
                _run_passes(run_dir, manifest["run_id"], name, backend, round_, exports[name].path, options, done,
                            total, progress, tail)
        for attempt in range(1, options.remeasure_noisy + 1):
            for (name, backend, round_), batches in _noisy_rounds(run_dir, attempt).items():
                progress(len(done), total, f"{name} on {backend}: re-measuring noisy round {round_}")
                run_worker(run_dir, manifest["run_id"], name, backend, batches, exports[name].path, options, done,
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
    manifest.update(status="complete", finished=now())
    write_json_atomic(run_dir / MANIFEST, manifest)
    return run_dir


def _cluster_sweep(run_dir: Path, manifest: dict, options: RunOptions, exports: dict, log, progress) -> Path:
    from rechar.sweep import cluster

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
        member_manifest.update(status="complete", finished=now())
        write_json_atomic(member / MANIFEST, member_manifest)
    if options.each_node:
        manifest.update(status="complete", finished=now(), nodes=[m.name for m in cluster.member_runs(run_dir, manifest)])
        write_json_atomic(run_dir / MANIFEST, manifest)
    return run_dir


def _run_passes(run_dir: Path, run_id: str, name: str, backend: str, round_: int, export_dir: Path,
                options: RunOptions, done: set, total: int, progress, tail: PointLogTail) -> None:
    """The passes after timing for this round's timed points that lack them: profiles in every
    round (the spread of a point's category shares is over its rounds), counters in the first."""
    for mode, log_name in PASS_LOGS.items():
        if not options.pass_wanted(mode) or (mode in ("counters", "uarch") and round_ > 0):
            continue
        have = {point_key(r) for r in read_log(run_dir, log_name)}
        timed_ok = {point_key(r) for r in read_point_log(run_dir) if r["status"] == "ok"}
        missing = [b for b in options.batch_sizes
                   if (name, backend, b, round_, 0) in timed_ok and (name, backend, b, round_, 0) not in have]
        if missing:
            progress(len(done), total, f"{name} on {backend}: {mode} pass")
            run_worker(run_dir, run_id, name, backend, missing, export_dir, options, done, total, progress, tail,
                        mode=mode, round_=round_)
            if mode == "uarch":
                from rechar.uarch.table import write_uarch_table

                write_uarch_table(run_dir)


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


def _check_uarch(options: RunOptions) -> dict | None:
    """With the simulation pass asked for: valgrind (a one-line error if missing), its version
    and the simulated machine, recorded in the manifest."""
    if not options.uarch_machine:
        return None
    from rechar.uarch.callgrind import require_valgrind, valgrind_version
    from rechar.uarch.machines import machine

    path = require_valgrind()
    return {**machine(options.uarch_machine).record(), "valgrind": valgrind_version(path)}


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
