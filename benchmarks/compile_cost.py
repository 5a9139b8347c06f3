"""What does compiling cost? torch.compile (Inductor) per model, cold and from its cache.

    python benchmarks/compile_cost.py [--models all] [--batch 64] [--scale small] [--threads 2]

For each model: the torch-compile backend compiles it for one batch size in a fresh process
with an empty Inductor cache (cold), then again in another fresh process with the cache the
first one left (cached: what a resumed or repeated run pays, since rechar keeps the cache with
the model's export). Both are the backend's own ``compile_seconds`` (the first call, which
traces, compiles and runs once). Prints a table of both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

import rechar.models as models

CHILD = """
import json, sys, types
from pathlib import Path
import rechar.models as models
from rechar.stacks import BackendOptions
from rechar.stacks.torch_backend import TorchCompileBackend
name, scale, batch, threads, cache_parent = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
model = models.get(name, scale=scale)
backend = TorchCompileBackend(BackendOptions(threads=threads))
backend.load(model, types.SimpleNamespace(path=Path(cache_parent)))  # the cache goes to <path>/inductor
backend.prepare([model.make_inputs(batch)])
print(json.dumps(backend.compile_info(batch)))
"""


def compile_once(name: str, scale: str, batch: int, threads: int, cache_parent: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, name, scale, str(batch), str(threads), cache_parent],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="all")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--scale", default="small")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    names = models.names() if args.models == "all" else args.models.split(",")
    print(f"torch.compile (Inductor, static shapes), {args.scale} scale, batch {args.batch}, {args.threads} threads; "
          "seconds of the first call, each in a fresh process")
    print("| model | cold s | cached s | cached / cold | cache hit |")
    print("|---|---:|---:|---:|---|")
    for name in names:
        with tempfile.TemporaryDirectory() as cache_parent:
            cold = compile_once(name, args.scale, args.batch, args.threads, cache_parent)
            cached = compile_once(name, args.scale, args.batch, args.threads, cache_parent)
        print(f"| {name} | {cold['compile_seconds']:.1f} | {cached['compile_seconds']:.1f} | "
              f"{cached['compile_seconds'] / cold['compile_seconds']:.2f} | {cached['compile_cache_hit']} |", flush=True)


if __name__ == "__main__":
    main()
