"""Sweeps on a Ray cluster (``rechar run --ray ADDRESS``): the points a local sweep would measure,
each (model, backend) worker a Ray task that starts the usual worker process on a node.

- **Placement.** The driver hands each node one task at a time (a task pinned to the node,
  asking for all of its CPUs), so that two workers never share a machine's cores while timing;
  a backend that needs CUDA only goes to nodes with GPUs; ``--nodes SELECTOR`` keeps nodes that
  have the custom resource SELECTOR or the label ``key=value``.
- **Any node or each node.** By default each point runs once, on the first free matching node.
  ``--each-node`` runs the whole sweep on every matching node, each node's points in a run folder
  of its own under ``<run>/nodes/<node>/`` whose manifest describes that node's machine, so that
  analysis and report treat nodes as the platforms they are.
- **Exports.** Each node exports from the same seed and config into its own cache (the same
  absolute path as the driver's, or ``RECHAR_NODE_EXPORTS`` on the node) and checks that the
  export's cache key and file hashes equal the driver's before measuring: shipping paper-scale
  exports (25 GB) costs more than making them, and the export is deterministic (tested).
- **Results.** A task measures into a run folder of its own on the node with the local sweep's
  supervision (timeout, crash records), then returns its records, logs and traces; the driver
  alone appends them to the run folder (points come back per worker, as each task ends). A node
  lost mid-task leaves its unfinished points recorded as failed with "node lost", which a resume
  measures again; Ctrl-C cancels the cluster's tasks and keeps what came back.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from rechar import hostinfo
from rechar.errors import UserError
from rechar.jsonfile import write_json_atomic
from rechar.stacks import backend_class
from rechar.sweep.options import RunOptions, require_ray
from rechar.sweep.rundir import make_run_dir
from rechar.sweep.unit import run_worker
from rechar.results.store import (
    MANIFEST, PASS_LOGS, POINTS_LOG, PointLogTail, append_point, point_key, read_manifest, read_point_log,
    repair_point_log, write_tables,
)

#: The error of points whose node went away while they were measured; a resume retries them.
NODE_LOST = "node lost"
#: Where each node's per-node run folders live inside an --each-node run.
NODES_DIR = "nodes"



@dataclasses.dataclass
class Node:
    id: str
    hostname: str
    cpus: float
    gpus: float
    resources: dict[str, float]
    labels: dict[str, str]
    label: str = ""  # the platform's name in results: hostname, or hostname/<id> where names repeat

    def matches(self, selector: str | None) -> bool:
        if not selector:
            return True
        key, sep, value = selector.partition("=")
        return self.labels.get(key) == value if sep else self.resources.get(selector, 0) > 0

    def can_run(self, backend: str) -> bool:
        return self.gpus > 0 or backend_class(backend).device != "cuda"


def connect(address: str) -> None:
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise UserError(f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0]}") from None


def cluster_nodes(selector: str | None) -> list[Node]:
    """The live nodes that can run a worker (at least one CPU) and match ``selector``."""
    ray = require_ray()
    nodes = []
    for n in ray.nodes():
        res = n.get("Resources", {})
        if not n.get("Alive") or res.get("CPU", 0) <= 0:
            continue
        node = Node(n["NodeID"], n.get("NodeManagerHostname", "?"), res.get("CPU", 0), res.get("GPU", 0), res,
                    {k: v for k, v in (n.get("Labels") or {}).items()})
        if node.matches(selector):
            nodes.append(node)
    if not nodes:
        raise UserError(f"no node of the Ray cluster has at least one CPU{'' if not selector else ' and matches ' + selector}")
    names = collections.Counter(n.hostname for n in nodes)
    for n in nodes:
        n.label = n.hostname if names[n.hostname] == 1 else f"{n.hostname}/{n.id[:8]}"
    return sorted(nodes, key=lambda n: n.label)


@dataclasses.dataclass
class Unit:
    """One worker's share of a sweep: a model on a backend over some batch sizes, on a node (the
    given one with --each-node, any free matching one otherwise)."""

    run_dir: Path  # the run folder its records go to
    model: str
    backend: str
    batches: list[int]
    round: int
    node: Node | None = None


#: The logs a worker appends to, which a node streams back line by line.
STREAMED_LOGS = (POINTS_LOG, *PASS_LOGS.values())


def node_run(node_spec: dict[str, Any], queue) -> dict[str, Any]:
    """Runs on a node as a Ray task: export and check the model, measure the unit into a run
    folder of the node's own with the local sweep's supervision, streaming each finished record
    to the driver through ``queue`` (a point measured before the node is lost is kept); return
    the unit's worker log and traces."""
    from rechar.exporters import ExportOptions, export

    options = RunOptions.from_dict(node_spec["options"])
    name, backend = node_spec["model"], node_spec["backend"]
    exports_dir = os.environ.get("RECHAR_NODE_EXPORTS") or node_spec["exports_dir"]
    result = export(name, options.scale, options.overrides.get(name), exports_dir, ExportOptions(seed=options.seed),
                    verify_files=True)
    want = node_spec["export"]
    if result.manifest["cache_key"] != want["cache_key"] or result.manifest["files"] != want["files"]:
        raise RuntimeError(f"the node's export of {name} differs from the driver's (cache key or file hashes): "
                           "a different rechar, torch or config on this node")
    tmp = Path(tempfile.mkdtemp(prefix="rechar-node-"))
    offsets = dict.fromkeys(STREAMED_LOGS, 0)

    def stream() -> None:
        items = []
        for log in STREAMED_LOGS:
            path = tmp / log
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(offsets[log])
                    data = f.read()
                end = data.rfind(b"\n") + 1  # whole lines only
                offsets[log] += end
                items += [(node_spec["unit"], log, line.decode()) for line in data[:end].splitlines() if line.strip()]
        if items:
            queue.put_nowait_batch(items)

    stop = threading.Event()
    streamer = threading.Thread(target=lambda: [stream() for _ in iter(lambda: stop.wait(0.5), True)], daemon=True)
    try:
        make_run_dir(tmp)
        streamer.start()
        run_worker(tmp, node_spec["run_id"], name, backend, node_spec["batches"], result.path, options,
                          set(), 0, lambda *a: None, PointLogTail(tmp), round_=node_spec["round"])
        stop.set()
        streamer.join()
        stream()
        files = {str(path.relative_to(tmp)): path.read_bytes() for path in tmp.rglob("*")
                 if path.is_file() and path.relative_to(tmp).parts[0] in ("traces", "logs")}
        return {"files": files, "host": hostinfo.host(), "software": hostinfo.software()}
    finally:
        stop.set()
        shutil.rmtree(tmp, ignore_errors=True)


class ClusterSweep:
    """The driver's side: plans units, hands them to free nodes, writes what comes back."""

    def __init__(self, run_dir: Path, manifest: dict, options, exports: dict, log, progress):
        self.ray = require_ray()
        self.run_dir, self.manifest, self.options, self.exports = run_dir, manifest, options, exports
        self.log, self.progress = log, progress
        self.nodes = cluster_nodes(options.nodes)
        self.all_nodes = list(self.nodes)
        self.task = self.ray.remote(max_retries=0)(node_run)
        self.done = 0
        self.total = 0
        self.assigned: dict[int, tuple[Unit, Node]] = {}  # unit id -> where it runs
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # Records stream back through a queue pinned to the driver's node (it outlives any worker node).
        here = self.ray.get_runtime_context().get_node_id()
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=False)})

    def run(self) -> None:
        units = self._plan()
        self.progress(self.done, self.total, "")
        self.log(f"Ray cluster: {len(self.nodes)} node(s): " + ", ".join(
            f"{n.label} ({n.cpus:g} CPU{', %g GPU' % n.gpus if n.gpus else ''})" for n in self.nodes))
        queue = collections.deque(units)
        in_flight: dict[Any, tuple[Unit, Node]] = {}
        busy: set[str] = set()
        try:
            while queue or in_flight:
                for node in self.nodes:
                    if node.id in busy:
                        continue
                    unit = next((u for u in queue if (u.node is None or u.node.id == node.id) and node.can_run(u.backend)), None)
                    if unit is None:
                        continue
                    queue.remove(unit)
                    in_flight[self._submit(unit, node)] = (unit, node)
                    busy.add(node.id)
                if not in_flight:  # nothing runs and nothing more can start
                    alive = {n.id for n in self.nodes}
                    for unit in queue:
                        if unit.node is not None and unit.node.id not in alive:
                            self._fail(unit, unit.node, f"{NODE_LOST}: {unit.node.label} went away before this point ran",
                                       retry=True)
                        elif self.nodes and any(n.can_run(unit.backend) for n in self.all_nodes):
                            self._fail(unit, None, f"{NODE_LOST}: the nodes that could run {unit.backend} went away",
                                       retry=True)
                        elif self.nodes:
                            self._fail(unit, None, f"no node of the cluster can run {unit.backend} (it needs a GPU)")
                        else:
                            self._fail(unit, None, f"{NODE_LOST}: no matching node is left in the cluster", retry=True)
                    break
                ready, _ = self.ray.wait(list(in_flight), num_returns=1, timeout=0.5)
                self._drain()
                for ref in ready:
                    unit, node = in_flight.pop(ref)
                    busy.discard(node.id)
                    self._collect(ref, unit, node)
        except KeyboardInterrupt:
            for ref in in_flight:
                self.ray.cancel(ref, force=True)
            self._drain()  # what was measured before the interrupt is kept
            raise
        finally:
            self.ray.kill(self.queue.actor)

    def _plan(self) -> list[Unit]:
        """Units for what is not measured yet (a point lost with its node counts as not measured)."""
        units = []
        targets = ([(self.run_dir / NODES_DIR / node_folder(n.label), n) for n in self.nodes] if self.options.each_node
                   else [(self.run_dir, None)])
        for run_dir, node in targets:
            if node is not None:
                self._node_manifest(run_dir, node)
            done = {point_key(r) for r in read_point_log(run_dir) if not r.get("retry")}
            for round_ in range(self.options.rounds):
                for name in self.options.models:
                    for backend in self.options.backends:
                        todo = [b for b in self.options.batch_sizes if (name, backend, b, round_, 0) not in done]
                        self.total += len(self.options.batch_sizes)
                        self.done += len(self.options.batch_sizes) - len(todo)
                        if todo:
                            units.append(Unit(run_dir, name, backend, todo, round_, node))
        return units

    def _node_manifest(self, run_dir: Path, node: Node) -> None:
        """A node's run folder: the sweep's manifest with the node's machine once it is known."""
        if (run_dir / MANIFEST).exists():
            return
        make_run_dir(run_dir)
        manifest = {**self.manifest, "run_id": f"{self.manifest['run_id']}@{node.label}", "node": node.id,
                    "host": {"hostname": node.label}, "kind": "sweep"}
        manifest.pop("nodes", None)
        write_json_atomic(run_dir / MANIFEST, manifest)

    def _submit(self, unit: Unit, node: Node):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        name = unit.model
        unit_id = len(self.assigned)
        self.assigned[unit_id] = (unit, node)
        spec = {"unit": unit_id, "options": {**dataclasses.asdict(self.options), "backends": [unit.backend]}, "model": name,
                "backend": unit.backend, "batches": unit.batches, "round": unit.round,
                "run_id": self._run_id(unit), "exports_dir": str(Path(self.options.exports_dir).resolve()),
                "export": {k: self.manifest["exports"][name][k] for k in ("cache_key", "files")}}
        self.progress(self.done, self.total, f"{name} on {unit.backend} @ {node.label}")
        return self.task.options(
            num_cpus=node.cpus, num_gpus=node.gpus if backend_class(unit.backend).device == "cuda" else 0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.id, soft=False)).remote(spec, self.queue)

    def _run_id(self, unit: Unit) -> str:
        return unit.run_dir.name if unit.node is None else f"{self.manifest['run_id']}@{unit.node.label}"

    def _drain(self) -> None:
        """Append the records the nodes streamed back, each with the node it was measured on."""
        size = self.queue.qsize()
        for unit_id, log, line in self.queue.get_nowait_batch(size) if size else ():
            unit, node = self.assigned[unit_id]
            repair_point_log(unit.run_dir)
            append_point(unit.run_dir, dict(json.loads(line), node=node.id, node_host=node.label), log=log)
            if log == POINTS_LOG:
                self.done += 1
                self.progress(self.done, self.total, f"{unit.model} on {unit.backend} @ {node.label}")

    def _collect(self, ref, unit: Unit, node: Node) -> None:
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.NodeDiedError:
            self._drain()
            self.log(f"node {node.label} was lost while measuring {unit.model} on {unit.backend}")
            self.nodes = [n for n in self.nodes if n.id != node.id]
            self._fail(unit, node, f"{NODE_LOST}: {node.label} went away while the point was measured", retry=True)
            return
        except (self.ray.exceptions.RayError, RuntimeError) as e:
            self._drain()
            self._fail(unit, node, f"task failed on {node.label}: {str(e).strip().splitlines()[-1][:300]}")
            return
        self._drain()
        for rel, data in result["files"].items():
            target = unit.run_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "ab" if rel.startswith("logs") else "wb") as f:
                f.write(data)
        if unit.node is not None:
            self._record_host(unit.run_dir, node, result)
        write_tables(unit.run_dir)

    def _record_host(self, run_dir: Path, node: Node, result: dict) -> None:
        manifest = read_manifest(run_dir)
        if manifest.get("host", {}).get("cpu") is None:
            manifest.update(host={**result["host"], "hostname": node.label}, software=result["software"])
            write_json_atomic(run_dir / MANIFEST, manifest)

    def _fail(self, unit: Unit, node: Node | None, error: str, retry: bool = False) -> None:
        have = {point_key(r) for r in read_point_log(unit.run_dir) if not r.get("retry")}
        for batch in unit.batches:
            if (unit.model, unit.backend, batch, unit.round, 0) in have:
                continue
            rec = {"run_id": self._run_id(unit), "model": unit.model, "scale": self.options.scale,
                   "backend": unit.backend, "device": None, "batch": batch, "round": unit.round, "attempt": 0,
                   "status": "failed", "error": error, "node": node.id if node else None,
                   "node_host": node.label if node else None}
            if retry:
                rec["retry"] = True
            append_point(unit.run_dir, rec)
            self.done += 1
        write_tables(unit.run_dir)


def node_folder(label: str) -> str:
    """A node's label as a file or folder name."""
    return label.replace("/", "-")


def member_runs(run_dir: str | Path, manifest: dict) -> list[Path]:
    """The run folders a run stands for: its per-node runs for an --each-node cluster run, else itself."""
    run_dir = Path(run_dir)
    if manifest.get("options", {}).get("each_node") and "node" not in manifest:  # not a node's own run
        return sorted(p.parent for p in (run_dir / NODES_DIR).glob(f"*/{MANIFEST}"))
    return [run_dir]
