"""Opening a run folder, the same way for a sweep, a serving run and a cluster node's folder.

A run folder holds ``manifest.json`` (what was asked, on which machine, with which software),
the append-only logs the workers write, and ``logs/`` and ``specs/`` for each worker process.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from rechar import hostinfo
from rechar.errors import UserError
from rechar.exporters import ExportOptions, export
from rechar.jsonfile import write_json_atomic
from rechar.measure import allocator
from rechar.results.store import MANIFEST, SCHEMA_VERSION


def new_run_dir(root: str | Path = "runs") -> Path:
    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def make_run_dir(run_dir: Path) -> None:
    """The folder and its ``logs/`` and ``specs/``; a one-line error if it cannot be made."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "logs").mkdir(exist_ok=True)
        (run_dir / "specs").mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run folder {run_dir}: {e.strerror}") from None


def open_run(run_dir: str | Path | None, options: Any, backends: list[str], skipped: dict[str, str],
             log: Callable[[str], None], kind: str | None = None, **extra: Any) -> tuple[Path, dict]:
    """A new run: log the backends skipped (with why), refuse a run without any backend or a
    folder that already holds a run, make the folder and write its manifest (``options`` as
    recorded, with the backends chosen; ``extra`` added to the manifest)."""
    for name, reason in skipped.items():
        log(f"skipping backend {name}: {reason}")
    if not backends:
        raise UserError("no backend is available")
    run_dir = Path(run_dir) if run_dir else new_run_dir()
    if (run_dir / MANIFEST).exists():
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or choose another --out")
    make_run_dir(run_dir)
    manifest = {
        "schema_version": SCHEMA_VERSION, **({"kind": kind} if kind else {}), "run_id": run_dir.name,
        "status": "running", "started": now(), "finished": None, "resumed": [],
        "host": hostinfo.host(), "software": hostinfo.software(),
        "options": {**dataclasses.asdict(options), "backends": backends}, "skipped_backends": skipped,
        "configs": {}, "exports": {}, **extra,
    }
    write_json_atomic(run_dir / MANIFEST, manifest)
    return run_dir, manifest


def mark_resumed(run_dir: Path, manifest: dict) -> None:
    """Record in the manifest that the run is running again (a sweep's or a serving run's)."""
    manifest["resumed"] = [*manifest.get("resumed", []), now()]
    manifest.update(status="running", finished=None)
    write_json_atomic(run_dir / MANIFEST, manifest)


def finish_run(run_dir: Path, manifest: dict, status: str = "complete", **extra: Any) -> None:
    manifest.update(status=status, **({"finished": now()} if status == "complete" else {}), **extra)
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


def worker_env(threads: int, malloc: str) -> dict[str, str]:
    """The environment of a worker process."""
    env = dict(os.environ)
    # OpenMP pools of every framework follow --threads; set before the worker imports them.
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    library = allocator.preload(malloc)
    if library:
        env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD")]))
    return env
