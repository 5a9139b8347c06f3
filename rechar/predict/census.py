"""The work a model does per call, by layer, computed from its config alone.

A forward pass of the model's shell (PyTorch's meta device: exact shapes, no weights) under a
dispatch mode that sees every ATen op, with the module path each op runs in (the innermost
module, as the profiles attribute ops: ``rechar.module`` in ONNX, profiler ranges in PyTorch):

- ``calls``: ATen ops run in the layer (an unrolled recurrence has one per step);
- ``elements``: elements the layer's ops read and write (inputs plus outputs, parameters left
  out), the work measure of element-wise, reduction and data-movement ops;
- ``gemms``: (M, K, N) of each matrix product of an ``nn.Linear``.

The id streams of the embedding tables (``streams``) come from the model's own input generator:
each id input is drawn with a marker value, and ``RecModel.lookups`` says which table reads
which marked ids, so a table's id range and lookups per sample come from the code that draws
them (NCF's item id, say, indexes two tables of different sizes within the smaller's range).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import defaultdict

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import rechar.models as models
from rechar.models.base import InputGenerator
from rechar.models.layers import EmbeddingTable
from rechar.predict.reuse import TableStream

_MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}
# Views and metadata: no data moves, so no elements are counted for them.
_VIEWS = {"view", "_unsafe_view", "reshape", "_reshape_alias", "expand", "t", "transpose", "permute", "select",
          "slice", "squeeze", "unsqueeze", "as_strided", "detach", "alias", "unflatten", "flatten", "split",
          "unbind", "chunk", "narrow", "lift_fresh", "empty", "empty_like", "new_empty", "empty_strided"}


@dataclasses.dataclass
class LayerWork:
    calls: int = 0
    elements: int = 0
    gemms: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Census:
    model: str
    batch: int
    layers: dict[str, LayerWork]  # innermost module path ('' = the model's own forward) -> its work
    classes: dict[str, str]  # module path -> class name
    streams: list[TableStream]  # one per embedding table (and id range)

    def work(self, layer: str, inclusive: bool = False) -> LayerWork:
        """The work of the ops that run in ``layer`` itself (as a profile attributes them: to the
        innermost module), or with ``inclusive`` of everything inside it too ('' inclusive: the
        whole model). A layer the forward never entered counts as its nearest ancestor with work,
        inclusive (profilers may name a module path the census does not see)."""
        if not inclusive and layer in self.layers:
            return self.layers[layer]
        while layer and layer not in self.layers and layer not in self.classes:
            layer = layer.rpartition(".")[0]
        prefix = layer + "."
        total = LayerWork()
        for path, w in self.layers.items():
            if path == layer or not layer or path.startswith(prefix):
                total.calls += w.calls
                total.elements += w.elements
                total.gemms.extend(w.gemms)
        return total

    def table(self, layer: str) -> str | None:
        """The embedding table ``layer`` is (or is inside), or None."""
        while layer:
            if self.classes.get(layer) == EmbeddingTable.__name__:
                return layer
            layer = layer.rpartition(".")[0]
        return None

    def is_linear(self, layer: str) -> bool:
        return self.classes.get(layer) == "Linear"


class _Counter(TorchDispatchMode):
    def __init__(self, stack: list[str], parameters: set[int]):
        super().__init__()
        self.stack = stack
        self.parameters = parameters  # ids of the model's parameters: not counted as elements
        self.layers: dict[str, LayerWork] = defaultdict(LayerWork)

    def _counted(self, t: torch.Tensor) -> bool:
        # A table's weight is an input of its gather, but only the gathered rows are read; a
        # Linear's weight is read whole, but its cost is the GEMM's, counted apart.
        base = t._base if t._base is not None else t
        return id(t) not in self.parameters and id(base) not in self.parameters

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        work = self.layers[self.stack[-1] if self.stack else ""]
        work.calls += 1
        if func.__name__.split(".")[0] not in _VIEWS:
            tensors = [a for a in (*_flat(args), *_flat(out)) if isinstance(a, torch.Tensor) and self._counted(a)]
            work.elements += sum(t.numel() for t in tensors)
        if func in _MATMULS:
            a, b = (args[0], args[1]) if func is torch.ops.aten.mm.default else (args[1], args[2])
            work.gemms.append((int(a.shape[0]), int(a.shape[1]), int(b.shape[1])))
        return out


def _flat(value):
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _flat(v)
    else:
        yield value


def census(name: str, config: models.ModelConfig, batch: int) -> Census:
    """The census of ``name`` with ``config`` at ``batch`` (cached: a prediction asks for the same
    few configs many times)."""
    return _census(name, json.dumps(config.to_dict(), sort_keys=True), batch)


@functools.lru_cache(maxsize=64)
def _census(name: str, config_json: str, batch: int) -> Census:
    config = models.resolve_config(name, "paper", json.loads(config_json))
    model = models.shell(name, config)
    stack: list[str] = []

    def enter(path, module, args):
        stack.append(path)

    def leave(module, args, output):
        stack.pop()  # forwards nest: the innermost is last

    handles = []
    for path, module in model.named_modules():
        if path:
            handles.append(module.register_forward_pre_hook(functools.partial(enter, path)))
            handles.append(module.register_forward_hook(leave))
    inputs = _meta_inputs(model, batch)
    counter = _Counter(stack, {id(p) for p in model.parameters()})
    try:
        # Inference mode off: under it (a torch stack loaded in this process) aten.linear runs
        # as one op and its GEMM would go uncounted; with plain no_grad it dispatches to mm/addmm.
        with torch.inference_mode(False), torch.no_grad(), counter:
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    classes = {path: type(m).__name__ for path, m in model.named_modules() if path}
    return Census(name, batch, dict(counter.layers), classes, table_streams(model))


def _meta_inputs(model, batch: int) -> list[torch.Tensor]:
    # Shapes and dtypes of one batch; values do not matter on the meta device.
    sample = _MarkedGenerator(batch)
    arrays = model.generate(sample)
    return [torch.empty(a.shape, dtype=torch.from_numpy(a[:0]).dtype, device="meta") for a in arrays.values()]


#: The marker of draw k is (k + 1) * MARK: models shift ids (SASRec and HSTU draw in
#: [0, rows - 1) and add 1, keeping 0 for padding), and a shift far below MARK leaves the draw
#: readable; ids below MARK were not drawn (padding: one row, read again and again).
MARK = 1 << 32


class _MarkedGenerator(InputGenerator):
    """Draws every id input as a constant marker (MARK times the draw's number), recording each
    draw's id range, so that ``RecModel.lookups`` tells which table reads which draw."""

    def __init__(self, batch: int):
        super().__init__(seed=0, batch=batch)
        self.ranges: list[int] = []

    def ids(self, rows: int, *shape: int) -> np.ndarray:
        self.ranges.append(rows)
        return np.full((self.batch, *shape), len(self.ranges) * MARK, dtype=np.int64)


def table_streams(model) -> list[TableStream]:
    """One stream per (table, id range): rows the ids range over, bytes per row, lookups per
    sample; padding ids (not drawn) are a stream of one row."""
    gen = _MarkedGenerator(batch=1)
    inputs = model.generate(gen)
    tables = {path: m for path, m in model.named_modules() if isinstance(m, EmbeddingTable)}
    streams = []
    for path, ids in model.lookups(inputs).items():
        draws, counts = np.unique(np.asarray(ids).ravel() // MARK - 1, return_counts=True)
        table = tables[path]
        rows, dim = table.weight.shape
        for draw, count in zip(draws, counts):
            drawn = gen.ranges[int(draw)] if draw >= 0 else 1
            streams.append(TableStream(table=path, rows=min(drawn, int(rows)),
                                       row_bytes=int(dim) * table.weight.element_size(), lookups=int(count)))
    return streams


def model_gemm_shapes(names=None, scale: str = "paper") -> set[tuple[int, int]]:
    """(K, N) of every nn.Linear of the models: the shapes the probe measures GEMMs at."""
    shapes = set()
    for name in names or models.names():
        model = models.shell(name, models.resolve_config(name, scale))
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                shapes.add((m.in_features, m.out_features))
            elif isinstance(m, torch.nn.GRU):  # its input and hidden projections
                shapes.add((m.input_size, 3 * m.hidden_size))
                shapes.add((m.hidden_size, 3 * m.hidden_size))
    return shapes
