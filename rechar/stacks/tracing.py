"""What every stack's trace parser shares: spans on a thread, self time by nesting, the tidy
table of ``PROFILE_COLUMNS``.

Each stack's parser (torch_trace, ort_trace, tf_trace, openvino_trace) turns its framework's raw
trace into the table a backend's ``profile()`` returns: one row per (native_op, node, layer)
with the number of calls and the total SELF time in microseconds, i.e. an op's time minus the
time of the ops it called, so that rows add up without double counting (``aten::linear`` keeps
its own few µs, ``aten::addmm`` inside it the rest). Events a parser does not know are ignored; a
trace without any op event is an error.

They live with the backends, not in rechar.analysis: a backend hands over its profile already
parsed into rows, so that imports run one way down the pipeline (analysis reads only the rows).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path
from typing import Any

import pandas as pd

from rechar.stacks.base import PROFILE_COLUMNS

#: Calls a backend runs before starting the profiler (first calls allocate, compile, fill caches).
PROFILE_WARMUP = 2
#: Chrome-trace categories of device activity that kineto links to the op that launched it.
TORCH_DEVICE_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}


@dataclasses.dataclass(eq=False)
class Span:
    """One event on one thread: an op (counted) or a labelled range such as a module (not)."""

    start: float
    dur: float
    name: str  # the native op, or the range's label
    node: str = ""  # the ONNX node an op ran for
    is_op: bool = True
    self_us: float = 0.0  # set by nest
    within: str = ""  # name of the innermost enclosing range, set by nest
    members: tuple = ()  # a fused kernel's (native op, node, layer) members
    graph: str | None = None  # the compiled graph an Inductor kernel belongs to

    @property
    def end(self) -> float:
        return self.start + self.dur


def nest(spans: list[Span]) -> None:
    """Self time of each op (its duration minus its child ops') and its innermost enclosing range,
    from how the spans of ONE thread nest in time. A child counts as nested when it starts
    inside its parent (rounded timestamps may let it end a hair later)."""
    stack: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.dur)):  # parents before their children
        while stack and stack[-1].end <= span.start:
            stack.pop()
        if span.is_op:
            span.self_us += span.dur
            parent = next((s for s in reversed(stack) if s.is_op), None)
            if parent is not None:
                parent.self_us -= span.dur
            span.within = next((s.name for s in reversed(stack) if not s.is_op), "")
        stack.append(span)


def op_table(rows: list[tuple], trace: str | Path) -> pd.DataFrame:
    """(native_op, node, layer, self_us[, members]) per call -> one row per (native_op, node,
    layer, members)."""
    if not rows:
        raise ValueError(f"{trace}: no operator events in the trace")
    df = pd.DataFrame([(*r, ()) if len(r) == 4 else r for r in rows],
                      columns=["native_op", "node", "layer", "self_us", "members"])
    df["self_us"] = df["self_us"].clip(lower=0.0)  # rounding can leave a parent a hair below 0
    out = df.groupby(["native_op", "node", "layer", "members"], as_index=False).agg(
        calls=("self_us", "size"), self_us=("self_us", "sum"))
    return out.sort_values("self_us", ascending=False, ignore_index=True)[PROFILE_COLUMNS]


def read_bytes(path: str | Path) -> bytes:
    """A trace file's content; ``.gz`` files are decompressed (the test fixtures are)."""
    data = Path(path).read_bytes()
    return gzip.decompress(data) if str(path).endswith(".gz") else data


def read_json(path: str | Path) -> Any:
    return json.loads(read_bytes(path))
