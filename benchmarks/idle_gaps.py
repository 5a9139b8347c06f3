"""What an idle gap between requests costs: the same prepared calls back to back and after
sleeping 1, 10 and 100 ms, per stack and thread count (the gap a server sees at low load, which
an isolated-batch sweep never has).

    python benchmarks/idle_gaps.py [--model dlrm-rmc1] [--scale small] [--batch 164]

Each configuration runs in a thread of its own set up as a serving executor (Backend.enter_thread),
with the process's main thread kept single-threaded, as rechar.serving does. Prints p50 and p90
per gap and the ratio of the p50 after a 100 ms gap to back to back.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np
import torch

import rechar.models as models
from rechar.exporters import ExportOptions, export
from rechar.stacks import BackendOptions, backend_class

GAPS_S = (0.0, 0.001, 0.01, 0.1)
CALLS = 60


def measure(model, export_result, backend_name: str, threads: int, batch: int) -> list[tuple[float, float, float]]:
    backend = backend_class(backend_name)(BackendOptions(threads=threads))
    backend.load(model if backend_class(backend_name).uses_torch_model else None, export_result)
    torch.set_num_threads(1)  # the main thread stays out of OpenMP (see rechar.serving.worker)
    calls = [backend.prepare([model.make_inputs(batch, seed=0, member=1 + i)]) for i in range(CALLS + 20)]
    rows: list[tuple[float, float, float]] = []

    def run():
        backend.enter_thread()
        for call in calls[:20]:
            call()
        for gap in GAPS_S:
            latencies = []
            for call in calls[20:]:
                if gap:
                    time.sleep(gap)
                start = time.perf_counter()
                call()
                latencies.append(time.perf_counter() - start)
            rows.append((gap, float(np.median(latencies)) * 1e3, float(np.percentile(latencies, 90)) * 1e3))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    backend.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dlrm-rmc1")
    parser.add_argument("--scale", default="small")
    parser.add_argument("--batch", type=int, default=164, help="items per call (164: the median query)")
    parser.add_argument("--exports", default="exports")
    args = parser.parse_args()
    config = models.resolve_config(args.model, args.scale)
    model = models.get(args.model, config=config, seed=0)
    result = export(args.model, args.scale, out=Path(args.exports), options=ExportOptions())
    print(f"{args.model} ({args.scale}), {args.batch} items per call, {CALLS} calls per gap; p50 / p90 ms")
    for backend_name, threads in (("torch", 1), ("torch", 2), ("ort-cpu", 1), ("ort-cpu", 2)):
        rows = measure(model, result, backend_name, threads, args.batch)
        cells = "  ".join(f"gap {gap * 1e3:g} ms: {p50:.2f} / {p90:.2f}" for gap, p50, p90 in rows)
        print(f"{backend_name:8s} {threads} thread(s)  {cells}  -> x{rows[-1][1] / rows[0][1]:.1f} after 100 ms")


if __name__ == "__main__":
    main()
