"""Predicted against measured change, both sides measured side by side in one process.

    python benchmarks/predict_interleaved.py --card CARD.json --source-run RUN --kind scale
        [--target-scale small] [--models ...] [--backends torch,ort-cpu,tf] [--batch-sizes 1,64,1024]
    python benchmarks/predict_interleaved.py --card CARD.json --source-run RUN --kind threads --target-threads 2

On a shared machine the load moves between two runs made minutes apart by more than the effect
being predicted. Here the source and the target configuration of each point are loaded in one
process and timed in alternating rounds (rechar's backends, fresh input pools, rechar's timing
loop), so that both see the same neighbours; the measured change is the median over rounds of
target p50 / source p50. The predicted change is ``rechar predict`` from RUN's profiles (its
scale and threads) to the target: predicted p50 / RUN's p50. Prints both per point and the
median and worst absolute error of the predicted change per backend; writes them to
RUN/predictions/interleaved-<kind>.parquet. (``--kind threads``: torch and ort-cpu; TensorFlow's
thread pools are fixed per process.) ``--recompute OUT.parquet ...`` times nothing: it predicts
the points of earlier outputs again (after a change to the predictor or the card).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import rechar.models as models
from rechar import hostinfo
from rechar.exporters import export
from rechar.predict import Card, Target, predict
from rechar.stacks import BackendOptions, backend_class
from rechar.measure.inputs import FALLBACK_CACHE_BYTES, PoolSpec
from rechar.measure.timing import TimingOptions, time_call
from rechar.results.store import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--card", required=True)
    parser.add_argument("--source-run", required=True, help="profiled run the predictions start from")
    parser.add_argument("--kind", choices=["scale", "threads"], required=True)
    parser.add_argument("--target-scale", default="small")
    parser.add_argument("--target-threads", type=int, default=2)
    parser.add_argument("--models", default=None, help="comma-separated (default: the source run's models)")
    parser.add_argument("--backends", default="torch,ort-cpu,tf")
    parser.add_argument("--batch-sizes", default="1,64,1024")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.3, help="timed seconds per side and round, at least")
    parser.add_argument("--out", default=None, help="parquet file (default: RUN/predictions/interleaved-<kind>.parquet)")
    parser.add_argument("--recompute", nargs="+", default=None, metavar="PARQUET",
                        help="time nothing: predict again the points of these earlier outputs (after a change to the "
                             "predictor or the card) and print the errors")
    args = parser.parse_args()
    if args.recompute:
        recompute(args)
        return

    run = Path(args.source_run)
    options = read_manifest(run)["options"]
    src_scale, src_threads = options["scale"], int(options["threads"])
    tgt_scale = args.target_scale if args.kind == "scale" else src_scale
    tgt_threads = args.target_threads if args.kind == "threads" else src_threads
    backends = [b for b in args.backends.split(",") if args.kind == "scale" or b in ("torch", "ort-cpu")]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    names = args.models.split(",") if args.models else list(options["models"])
    card = Card.load(args.card)
    predicted = predict(run, card, Target(scale=tgt_scale, threads=tgt_threads, models=names, backends=backends,
                                          batches=batches))
    cache = hostinfo.last_level_cache_bytes() or FALLBACK_CACHE_BYTES
    timing = TimingOptions(warmup_iters=5, warmup_seconds=0.05, min_iters=10, min_seconds=args.seconds)
    sides = {"source": (src_scale, src_threads), "target": (tgt_scale, tgt_threads)}
    rows = []
    print(f"{args.kind}: {src_scale}, {src_threads} thread(s) -> {tgt_scale}, {tgt_threads} thread(s); "
          f"{args.rounds} alternating rounds; p50 in µs, median over rounds")
    for name in names:
        loaded = {}
        for side, (scale, _) in sides.items():
            if scale not in {s for s, _ in loaded.values()}:
                model = models.get(name, scale=scale)
                loaded[side] = (scale, (model, export(name, scale, out="exports")))
            else:
                loaded[side] = next(v for v in loaded.values() if v[0] == scale)
        for backend_name in backends:
            if backend_class(backend_name).unavailable_reason():
                continue
            instances = {}
            for side, (scale, threads) in sides.items():
                model, exported = loaded[side][1]
                backend = backend_class(backend_name)(BackendOptions(threads=threads))
                backend.load(model, exported)
                instances[side] = (backend, model, threads)
            for batch in batches:
                calls = {}
                for side, (backend, model, threads) in instances.items():
                    pool = PoolSpec(0, "uniform", 1.05, "fresh", cache).make(model, batch)
                    call = backend.prepare(pool.batches)
                    if backend_name == "torch":  # PyTorch's threads are per process: set them per side
                        calls[side] = lambda c=call, t=threads: (torch.set_num_threads(t), c())
                    else:
                        calls[side] = call
                p50 = {side: [] for side in calls}
                for _ in range(args.rounds):
                    for side, call in calls.items():
                        p50[side].append(float(np.median(time_call(call, timing))) / 1e3)
                src, tgt = statistics.median(p50["source"]), statistics.median(p50["target"])
                match = predicted[(predicted["model"] == name) & (predicted["backend"] == backend_name)
                                  & (predicted["batch"] == batch)]
                ratio = float(match["predicted_p50_us"].iloc[0] / match["source_p50_us"].iloc[0]) if len(match) else np.nan
                rows.append({"kind": args.kind, "model": name, "backend": backend_name, "batch": batch,
                             "source_p50_us": src, "target_p50_us": tgt, "measured_change": tgt / src,
                             "predicted_change": ratio, "error": ratio / (tgt / src) - 1})
                r = rows[-1]
                print(f"{name} {backend_name} b{batch}: {src:.1f} -> {tgt:.1f} µs, measured x{r['measured_change']:.2f}, "
                      f"predicted x{ratio:.2f}, error {r['error'] * 100:+.1f}%", flush=True)
                del calls
            for backend, _, _ in instances.values():
                backend.close()
    report(pd.DataFrame(rows), Path(args.out) if args.out else run / "predictions" / f"interleaved-{args.kind}.parquet")


def recompute(args) -> None:
    table = pd.concat([pd.read_parquet(p) for p in args.recompute], ignore_index=True)
    run = Path(args.source_run)
    options = read_manifest(run)["options"]
    target = Target(scale=args.target_scale if args.kind == "scale" else None,
                    threads=args.target_threads if args.kind == "threads" else None,
                    models=sorted(set(table["model"])))
    predicted = predict(run, Card.load(args.card), target)
    ratio = predicted.assign(predicted_change=predicted["predicted_p50_us"] / predicted["source_p50_us"])
    table = table.drop(columns=["predicted_change", "error"]).merge(
        ratio[["model", "backend", "batch", "predicted_change"]], on=["model", "backend", "batch"])
    table["error"] = table["predicted_change"] / table["measured_change"] - 1
    report(table, Path(args.out) if args.out else run / "predictions" / f"interleaved-{args.kind}-recomputed.parquet",
           f"{options['scale']} -> {target.scale or options['scale']}")


def report(table: pd.DataFrame, out: Path, label: str = "") -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out)
    for r in table.itertuples():
        print(f"{r.model} {r.backend} b{r.batch}: measured x{r.measured_change:.2f}, predicted x{r.predicted_change:.2f}, "
              f"error {r.error * 100:+.1f}%")
    abs_error = table.assign(abs_error=table["error"].abs()).groupby("backend")["abs_error"]
    print(pd.DataFrame({"points": abs_error.size(), "median_abs_error": abs_error.median(),
                        "worst_abs_error": abs_error.max()}).to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"{label} all: median {table['error'].abs().median():.3f}, worst {table['error'].abs().max():.3f} "
          f"({len(table)} points); written to {out}")


if __name__ == "__main__":
    main()
