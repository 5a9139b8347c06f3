"""``rechar probe``: about a minute of measurements on the target machine, written as a machine
card (JSON) that ``rechar predict`` re-costs a run's operators with.

- random gathers: ns per row of ``torch.index_select`` (rows copied out: ONNX Runtime's and
  TensorFlow's Gather) and of ``embedding_bag`` (rows summed in bags of 16: PyTorch's pooled
  lookups) over fp32 tables of the models' row widths (32, 64, 128 floats; pooled: 32, 64), working sets from 16 KiB (inside L1) to ``max_working_set`` (default
  4 GiB, or a quarter of the available memory: past the last-level cache and the TLB's reach),
  per thread count;
- streaming bandwidth: a large tensor copied, per thread count;
- GEMMs: ``torch.nn.functional.linear`` at every (in, out) shape of the models' FC layers (and
  GRU projections) and a range of row counts M, per thread count;
- each stack's fixed cost per call: a trivial graph through ONNX Runtime, a trivial module
  through eager PyTorch, a TensorFlow concrete function; a stack that is not installed is
  skipped, and the card says why.

PyTorch's kernels stand for every stack's here: a prediction scales each measured operator by
the ratio of two card figures (target over source), so a stack's own efficiency cancels out.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rechar import hostinfo
from rechar.errors import UserError
from rechar.jsonfile import write_json_atomic
from rechar.predict.machine import CARD_KIND, CARD_VERSION, FIT_METHOD, PLAIN, POOLED, fit_gather

WIDTHS = (32, 64, 128)  # floats per row: the models' embedding widths (1-wide wide tables: as 32)
MIN_WORKING_SET = 16 << 10
GEMM_ROWS = (1, 8, 64, 256, 1024, 4096)
GATHER_ROWS = 16_384  # rows gathered per timed call
PASSES = 2  # sweeps over the gather sizes (the lower figure is kept)
POOL = 16  # rows per bag of the pooled gather (16,384 rows: 1,024 bags)
POOLED_WIDTHS = (32, 64)  # the pooled tables' widths
STACKS = ("torch", "ort", "tf")


@dataclasses.dataclass
class ProbeOptions:
    threads: list[int] = dataclasses.field(default_factory=lambda: default_threads())
    max_working_set: int = dataclasses.field(default_factory=lambda: default_max_working_set())
    widths: tuple[int, ...] = WIDTHS
    gemm_rows: tuple[int, ...] = GEMM_ROWS
    gemm_shapes: list[tuple[int, int]] | None = None  # (in, out); None: every model's FC shapes
    stacks: tuple[str, ...] = STACKS
    seconds_per_figure: float = 0.02  # time spent on each figure, at least one call
    stream_bytes: int = 256 << 20

    def validate(self) -> None:
        if not self.threads or any(not isinstance(t, int) or t < 1 for t in self.threads):
            raise UserError(f"threads must be positive integers, got {self.threads}")
        if self.max_working_set < 2 * MIN_WORKING_SET:
            raise UserError(f"the largest working set must be at least {2 * MIN_WORKING_SET >> 10} KiB, "
                            f"got {self.max_working_set} bytes")
        if not self.widths or any(w < 1 for w in self.widths):
            raise UserError(f"row widths must be positive, got {self.widths}")
        if not self.gemm_rows or any(m < 1 for m in self.gemm_rows):
            raise UserError(f"GEMM row counts must be positive, got {self.gemm_rows}")
        unknown = set(self.stacks) - set(STACKS)
        if unknown:
            raise UserError(f"unknown stack {sorted(unknown)[0]!r} (choose from {', '.join(STACKS)})")


def default_max_working_set() -> int:
    """4 GiB (past the TLB's reach with 4 KiB and with 2 MiB pages, and the size of the study's
    tables), or a quarter of the memory available now if that is less."""
    return int(min(4 << 30, hostinfo.psutil.virtual_memory().available // 4))


def default_threads() -> list[int]:
    """1, 2, 4, ... up to the physical cores, and the physical cores themselves."""
    cores = hostinfo.psutil.cpu_count(logical=False) or 1
    counts = [1 << i for i in range(int(math.log2(cores)) + 1)]
    return sorted(set(counts + [cores]))


def parse_size(text: str) -> int:
    """'64K', '512M', '1G' or bytes -> bytes; a UserError for anything else."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except (ValueError, IndexError):
        raise UserError(f"bad size {text!r} (e.g. 64M, 1G or a number of bytes)") from None
    if not value > 0:
        raise UserError(f"size must be positive, got {text!r}")
    return int(value)


def _timed(fn: Callable[[], Any], seconds: float, min_calls: int = 3) -> float:
    """Seconds of the fastest call of ``fn`` over ``seconds`` of calls (at least ``min_calls``),
    after a warm-up call. The fastest, not the median: on a shared machine a multi-threaded call
    stalls for milliseconds whenever a neighbour holds one of its cores (seen here: median 2x,
    upper quartile 400x the fastest of 300 gathers), and the card describes the machine, not its
    neighbours."""
    fn()
    best = math.inf
    calls = 0
    end = time.perf_counter() + seconds
    while calls < min_calls or time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return best


def working_sets(max_bytes: int) -> list[int]:
    """16 KiB, then powers of sqrt(2), up to max_bytes: two figures per octave."""
    sizes, k = [], 0
    while True:
        size = int(MIN_WORKING_SET * 2 ** (k / 2))
        if size > max_bytes:
            break
        sizes.append(size)
        k += 1
    return sizes


def probe_gather(options: ProbeOptions, log: Callable[[str], None]) -> list[dict]:
    """ns per gathered row, the lower of two sweeps' figures: on a shared machine a busy
    neighbour can slow a whole timing window, rarely two windows seconds apart."""
    floats = options.max_working_set // 4
    buffer = torch.empty(floats, dtype=torch.float32)
    buffer.fill_(1.0)  # touch every page before timing
    best: dict[tuple[str, int, int, int], float] = {}
    gen = torch.Generator().manual_seed(0)
    for sweep in range(PASSES):
        for threads in options.threads:
            torch.set_num_threads(threads)
            for kernel, widths in ((PLAIN, options.widths), (POOLED, [w for w in options.widths if w in POOLED_WIDTHS])):
                for width in widths:
                    out = torch.empty(GATHER_ROWS, width)
                    for ws in working_sets(options.max_working_set):
                        rows = ws // (4 * width)
                        if rows < 1:
                            continue
                        table = buffer[: rows * width].view(rows, width)
                        ids = torch.randint(rows, (GATHER_ROWS,), generator=gen)
                        if kernel == PLAIN:
                            call = functools.partial(torch.index_select, table, 0, ids, out=out)
                        else:
                            bags = ids.view(-1, POOL)
                            call = functools.partial(torch.nn.functional.embedding_bag, bags, table, mode="sum")
                        with torch.inference_mode():
                            seconds = _timed(call, options.seconds_per_figure)
                        key = (kernel, threads, width, rows * width * 4)
                        best[key] = min(best.get(key, math.inf), seconds / GATHER_ROWS * 1e9)
        log(f"  gathers: sweep {sweep + 1} of {PASSES} done")
    del buffer
    return [{"kernel": k, "threads": t, "width": w, "working_set_bytes": ws, "ns_per_row": ns}
            for (k, t, w, ws), ns in best.items()]


def probe_stream(options: ProbeOptions) -> list[dict]:
    n = max(options.stream_bytes // 4, 1 << 16)
    src, dst = torch.ones(n), torch.empty(n)
    rows = []
    for threads in options.threads:
        torch.set_num_threads(threads)
        seconds = _timed(lambda: dst.copy_(src), options.seconds_per_figure * 5)
        rows.append({"threads": threads, "bytes": 2 * n * 4, "gb_per_s": 2 * n * 4 / seconds / 1e9})
    return rows


def probe_gemm(options: ProbeOptions, log: Callable[[str], None]) -> list[dict]:
    """µs per product at each shape (the fastest call)."""
    from rechar.predict.census import model_gemm_shapes

    shapes = sorted(options.gemm_shapes or model_gemm_shapes())
    rows = []
    for threads in options.threads:
        torch.set_num_threads(threads)
        for k, n in shapes:
            weight, bias = torch.randn(n, k), torch.randn(n)
            for m in options.gemm_rows:
                x = torch.randn(m, k)
                with torch.inference_mode():
                    seconds = _timed(lambda: torch.nn.functional.linear(x, weight, bias), options.seconds_per_figure)
                rows.append({"threads": threads, "m": m, "k": k, "n": n, "us": seconds * 1e6})
    log(f"  GEMMs: {len(shapes)} shapes x {len(options.gemm_rows)} row counts x {len(options.threads)} thread counts")
    return rows


def _torch_call() -> Callable[[], Any]:
    module = torch.nn.Identity()
    x = torch.ones(1)

    def call():
        with torch.inference_mode():
            return module(x) + 1

    return call


def _ort_call(threads: int) -> Callable[[], Any]:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "trivial",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(),
                                   opts, providers=["CPUExecutionProvider"])
    feed = {"x": np.ones(1, dtype=np.float32)}
    return lambda: session.run(None, feed)


def _tf_call(threads: int) -> Callable[[], Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process: its pools stay as they are
        pass
    fn = tf.function(lambda x: x + 1.0).get_concrete_function(tf.TensorSpec([1], tf.float32))
    x = tf.ones([1])
    return lambda: fn(x)


def probe_stacks(options: ProbeOptions, log: Callable[[str], None]) -> tuple[dict[str, float], dict[str, str]]:
    """Each stack's fixed cost of one call (µs), and the stacks skipped with the reason."""
    threads = max(options.threads)
    makers = {"torch": _torch_call, "ort": lambda: _ort_call(threads), "tf": lambda: _tf_call(threads)}
    modules = {"ort": "onnxruntime", "tf": "tensorflow", "torch": "torch"}
    costs, skipped = {}, {}
    for stack in options.stacks:
        try:
            call = makers[stack]()
        except ImportError:
            skipped[stack] = f"{modules[stack]} is not installed"
            log(f"  {stack}: skipped ({skipped[stack]})")
            continue
        costs[stack] = _timed(call, options.seconds_per_figure * 10, min_calls=200) * 1e6
    return costs, skipped


def caches() -> list[dict]:
    """The CPU's data and unified caches from sysfs (one instance of each level)."""
    out = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            if kind == "Instruction":
                continue
            out.append({"level": int((index / "level").read_text()), "type": kind,
                        "bytes": hostinfo.parse_size((index / "size").read_text().strip())})
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda c: c["level"])


def check_writable(path: Path) -> None:
    """A UserError now, not after a minute of probing, if the card cannot be written there."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"cannot write the card to {path}: it is a folder")
    if not folder.is_dir():
        raise UserError(f"cannot write the card to {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write the card to {path}: folder {folder} is not writable")


def probe(options: ProbeOptions, out: str | Path | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Probe this machine; return the card (and write it to ``out`` if given)."""
    options.validate()
    path = Path(out) if out is not None else None
    if path is not None:
        check_writable(path)
    start = time.perf_counter()
    saved_threads = torch.get_num_threads()
    try:
        log("probing random gathers")
        gather = probe_gather(options, log)
        log("probing streaming bandwidth")
        stream = probe_stream(options)
        log("probing GEMMs")
        gemm = probe_gemm(options, log)
        log("probing the stacks' cost per call")
        calls, skipped = probe_stacks(options, log)
    finally:
        torch.set_num_threads(saved_threads)

    card = {
        "kind": CARD_KIND, "version": CARD_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": hostinfo.host(), "software": hostinfo.software(), "caches": caches(),
        "options": {"threads": options.threads, "max_working_set": options.max_working_set,
                    "widths": list(options.widths), "gemm_rows": list(options.gemm_rows)},
        "gather": gather, "stream": stream, "gemm": gemm, "call_us": calls, "skipped_stacks": skipped,
        "probe_seconds": round(time.perf_counter() - start, 1),
    }
    card["gather_fit"], card["gather_fit_method"] = fit_gather(card), FIT_METHOD
    if path is not None:
        try:
            write_json_atomic(path, card)
        except OSError as e:
            raise UserError(f"cannot write the card to {path}: {e.strerror}") from None
    return card


def probe_cluster(address: str, selector: str | None, overrides: dict[str, Any], out: str | Path,
                  log: Callable[[str], None] = lambda m: None) -> dict[str, Path]:
    """Probe every node of a Ray cluster (those matching ``selector``, as ``rechar run --nodes``),
    each on the node itself holding all its CPUs, all nodes at once; write one card per node,
    ``<out stem>-<node>.json`` beside ``out``. ``overrides``: ProbeOptions fields set by the user
    (the rest default on each node: its own cores and memory). Returns node label -> card path."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from rechar.sweep.cluster import cluster_nodes, connect, node_folder
    from rechar.sweep.options import require_ray

    ray = require_ray()
    out = Path(out)
    ProbeOptions(**overrides).validate()  # a bad option is a one-line error before any node starts
    connect(address)
    nodes = cluster_nodes(selector)
    paths = {n.label: out.with_name(f"{out.stem}-{node_folder(n.label)}{out.suffix or '.json'}") for n in nodes}
    for path in paths.values():
        check_writable(path)
    remote = ray.remote(_probe_on_node)
    pending = {remote.options(num_cpus=n.cpus, scheduling_strategy=NodeAffinitySchedulingStrategy(n.id, soft=False))
               .remote(overrides): n for n in nodes}
    log(f"probing {len(nodes)} node(s): {', '.join(paths)}")
    failed = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        node = pending.pop(done[0])
        try:
            card = ray.get(done[0])
        except Exception as e:  # noqa: BLE001 - a node that fails is named, the others still written
            failed[node.label] = str(e).strip().splitlines()[-1]
            log(f"node {node.label}: failed: {failed[node.label]}")
            continue
        card["node"] = {"label": node.label, "id": node.id}
        write_json_atomic(paths[node.label], card)
        log(f"node {node.label}: {paths[node.label]} ({card['probe_seconds']} s)")
    if failed:
        written = [str(paths[label]) for label in paths if label not in failed]
        raise UserError(f"probing {len(failed)} of {len(nodes)} node(s) failed ("
                        + "; ".join(f"{label}: {why}" for label, why in failed.items())
                        + f"); written: {', '.join(written) or 'none'}")
    return paths


def _probe_on_node(overrides: dict[str, Any]) -> dict:
    return probe(ProbeOptions(**overrides))
