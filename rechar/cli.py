"""The ``rechar`` command: a thin layer over the Python API (rechar.models, rechar.exporters)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

import rechar
import rechar.models as models
from rechar.errors import UserError
from rechar.analysis import analyze, format_tables
from rechar.analysis.counters import load_counters
from rechar.analysis.ops import OPS, build_ops_table
from rechar.exporters import DEFAULT_EXPORTER, EXPORTERS, ExportCheckError, ExportOptions, export
from rechar.stacks import BACKENDS, DEFAULT_BACKENDS
from rechar.measure import allocator
from rechar.sweep.cluster import member_runs
from rechar.measure.contention import NoiseThresholds
from rechar.measure.timing import TimingOptions
from rechar.results.store import COUNTERS_LOG, load_points, read_manifest, summary
from rechar.sweep import DEFAULT_BATCH_SIZES, RunOptions, SweepInterrupted, resume_sweep, run_sweep
from rechar.serving import ServeInterrupted, ServeOptions, resume_serve, run_serve
from rechar.serving.queries import parse_batches
from rechar.serving.trials import is_serve_run


def _split_names(values: tuple[str, ...]) -> list[str]:
    """``--model a --model b,c`` -> [a, b, c]."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def select_models(names: tuple[str, ...], all_models: bool, default_all: bool = False) -> list[str]:
    """The models named; with ``--all`` every model; with neither the study's eight (or every
    model with ``default_all``)."""
    chosen = _split_names(names)
    if all_models or (not chosen and default_all):
        return models.names()
    if not chosen:
        return list(models.STUDY_MODELS)
    for name in chosen:
        models.resolve_config(name, "tiny")  # raises UserError naming an unknown model
    return list(dict.fromkeys(chosen))


def load_overrides(path: str | None, chosen: list[str]) -> dict[str, dict[str, Any]]:
    """Per-model field overrides from ``--config``; every section must name a known model."""
    if path is None:
        return {}
    data = models.load_config_file(path)
    for name in data:
        if name not in models.MODELS:
            raise UserError(f"config file {path}: unknown model {name!r} (choose from {', '.join(models.MODELS)})")
    return {name: data[name] for name in chosen if name in data}


scale_option = click.option(
    "--scale", type=click.Choice(list(models.SCALES)), default=models.DEFAULT_SCALE, show_default=True,
    help=models.SCALE_HELP,
)
config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="TOML or JSON file overriding config fields, one table per model (e.g. [dlrm-rmc1] lookups = 40).",
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
ids_option = click.option("--ids", type=click.Choice(["uniform", "zipf"]), default="uniform", show_default=True,
                          help="Distribution of sparse ids.")
zipf_alpha_option = click.option("--zipf-alpha", type=click.FloatRange(min=0, min_open=True), default=1.05,
                                 show_default=True, help="Zipf exponent with --ids zipf.")
profile_iters_option = click.option("--profile-iters", type=click.IntRange(min=1), default=20, show_default=True,
                                    help="Iterations per profiling pass.")
uarch_machine_option = click.option(
    "--uarch-machine", type=click.Choice(["host", "broadwell", "cascadelake"]), default=None,
    help="The machine the simulation pass simulates: this one's caches (host, the default) or the study's "
         "Intel servers (one core's share of the last level).")
counter_seconds_option = click.option("--counter-seconds", type=click.FloatRange(min=0, min_open=True), default=1.0,
                                      show_default=True, help="Seconds per counting pass, at least.")
model_option = click.option(
    "--model", "-m", "model_names", multiple=True,
    help=f"Model name, repeatable or comma-separated: {', '.join(models.MODELS)}.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(rechar.__version__, prog_name="rechar")
def cli() -> None:
    """Characterize recommendation-model inference across software stacks."""


@cli.command("models")
@model_option
@scale_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON records instead of a table.")
def models_cmd(model_names, scale, config_path, as_json) -> None:
    """List the models with their size and per-sample cost, computed from the config."""
    chosen = select_models(model_names, all_models=False, default_all=True)
    overrides = load_overrides(config_path, chosen)
    rows = [models.describe(n, models.resolve_config(n, scale, overrides.get(n))) for n in chosen]
    if as_json:
        click.echo(json.dumps([{**r, "scale": scale} for r in rows], indent=2))
        return
    header = ("model", "category", "params", "emb MB", "MACs/sample", "emb bytes read/sample", "lookups/sample")
    table = [header] + [
        (r["model"], r["category"], f"{r['params']:,}", f"{r['embedding_bytes'] / 1e6:,.1f}",
         f"{r['macs_per_sample']:,}", f"{r['embedding_bytes_read_per_sample']:,}", f"{r['lookups_per_sample']:,}")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    click.echo(f"scale: {scale}")
    for row in table:
        click.echo("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))


@cli.command("export")
@model_option
@click.option("--all", "all_models", is_flag=True,
              help="Export every model, the three after the study included (without --model: the study's eight).")
@scale_option
@config_option
@click.option("--out", default="exports", show_default=True, type=click.Path(file_okay=False),
              help="Folder for exports: OUT/<model>/<scale>/model.onnx and export.json.")
@click.option("--exporter", type=click.Choice(list(EXPORTERS)), default=DEFAULT_EXPORTER, show_default=True,
              help="PyTorch's ONNX exporter: torchscript (fast) or dynamo (torch.export based).")
@click.option("--opset", type=click.IntRange(min=13), default=None,
              help="ONNX opset (default: 17 for torchscript, 20 for dynamo).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights and parity inputs.")
@click.option("--force", is_flag=True, help="Re-export even if a valid cached export exists.")
def export_cmd(model_names, all_models, scale, config_path, out, exporter, opset, seed, force) -> None:
    """Export models to ONNX and verify each (checker, no Loop, ONNX Runtime parity)."""
    chosen = select_models(model_names, all_models)
    overrides = load_overrides(config_path, chosen)
    options = ExportOptions(exporter=exporter, opset=opset, seed=seed, force=force)
    for name in chosen:
        export(name, scale, overrides.get(name), out, options, log=click.echo)


def _parse_batch_sizes(ctx, param, value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not sizes or any(b < 1 for b in sizes):
        raise click.BadParameter(f"{value!r}: batch sizes must be positive integers")
    return list(dict.fromkeys(sizes))


class ProgressBar:
    """One line on stderr, redrawn in place on a terminal; a line per change otherwise."""

    def __init__(self, enabled: bool, unit: str = "points"):
        self.enabled = enabled
        self.unit = unit
        self.tty = sys.stderr.isatty()
        self.last = None

    def __call__(self, done: int, total: int, label: str) -> None:
        if not self.enabled or (done, label) == self.last:
            return
        self.last = (done, label)
        width = 30
        filled = int(width * done / total) if total else width
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {self.unit}  {label}"
        if self.tty:
            click.echo(f"\r\033[K{line}", err=True, nl=done == total)
        else:
            click.echo(line, err=True)


@cli.command("run")
@model_option
@click.option("--all", "all_models", is_flag=True,
              help="Every model, the three after the study included (without --model: the study's eight).")
@click.option("--backend", "-b", "backend_names", multiple=True,
              help=f"Backend, repeatable or comma-separated: {', '.join(BACKENDS)}, or all (every one available "
                   f"here). Default: {', '.join(DEFAULT_BACKENDS)}, those available here.")
@click.option("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)), show_default=True,
              callback=_parse_batch_sizes, help="Comma-separated batch sizes.")
@scale_option
@config_option
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads of every framework (default: physical cores).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder (default: runs/<timestamp>-<id>).")
@click.option("--exports", "exports_dir", default="exports", show_default=True, type=click.Path(file_okay=False),
              help="Export cache folder (models are exported on demand).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights and inputs.")
@ids_option
@zipf_alpha_option
@click.option("--inputs", type=click.Choice(["fresh", "replay"]), default="fresh", show_default=True,
              help="fresh: each call runs the next batch of a pool sized to overflow the last-level cache; "
                   "replay: every call runs one batch (the cache-warm best case).")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Measure every point this many times, each in a fresh worker, rounds interleaved; the "
                   "point's p50 and its 95% interval come from the rounds.")
@click.option("--remeasure-noisy", type=click.IntRange(min=0), default=0, show_default=True,
              help="Measure a round again, up to this many times, when the machine was busy while it was timed "
                   "(with --resume: also in a finished run).")
@click.option("--noisy-others", type=click.FloatRange(min=0, max=1, min_open=True), default=0.10, show_default=True,
              help="A point is noisy when other processes used more than this share of the machine's CPUs.")
@click.option("--noisy-steal", type=click.FloatRange(min=0, max=1, min_open=True), default=0.05, show_default=True,
              help="A point is noisy when the hypervisor stole more than this share of the CPU time.")
@click.option("--warmup-iters", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--warmup-seconds", type=click.FloatRange(min=0), default=0.2, show_default=True)
@click.option("--min-iters", type=click.IntRange(min=1), default=50, show_default=True,
              help="Timed iterations per point, at least (within --max-seconds).")
@click.option("--min-seconds", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Timed seconds per point, at least.")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Time budget of a point's warm-up and of its timing: a slow point stops past it once it has "
                   "2 warm-up and 10 timed calls.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600, show_default=True,
              help="Seconds a point may take before its worker is killed (the first point also covers loading).")
@click.option("--malloc", type=click.Choice(allocator.CHOICES), default="default", show_default=True,
              help="Memory allocator of the worker processes (jemalloc and tcmalloc are preloaded).")
@quiet_option
@click.option("--profile", "profile", is_flag=True,
              help="Add a profiling pass per point (each framework's own profiler), separate from timing.")
@profile_iters_option
@click.option("--counters", "count", is_flag=True,
              help="Add a pass per point counting CPU events with perf stat (IPC, cache and branch misses, "
                   "stalls; software events where the machine exposes no hardware counters).")
@counter_seconds_option
@click.option("--uarch", "simulate", is_flag=True,
              help="Add a pass per point simulating caches and branch predictors under valgrind's callgrind "
                   "(instructions, cache and branch misses per operator; needs valgrind).")
@uarch_machine_option
@click.option("--report", "write_html", is_flag=True,
              help="Write the HTML report of the run to reports/<run id>.html at the end.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue an interrupted run folder with its own options, skipping finished points.")
@click.option("--precision", "precisions", default="fp32", show_default=True,
              help="Comma-separated precisions: fp32, bf16, int8; each backend runs in each it offers "
                   "(reduced precision passes a quality gate against fp32 instead of bit parity).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run the workers on this Ray cluster (auto: the cluster this machine belongs to), one "
                   "measurement per node at a time; needs rechar[ray].")
@click.option("--nodes", "node_selector", default=None, metavar="SELECTOR",
              help="With --ray: only nodes with this custom resource, or with the label key=value.")
@click.option("--each-node", is_flag=True,
              help="With --ray: run the whole sweep on every matching node (one run folder per node inside the run).")
def run_cmd(model_names, all_models, backend_names, batch_sizes, scale, config_path, threads, out, exports_dir,
            seed, ids, zipf_alpha, inputs, rounds, remeasure_noisy, noisy_others, noisy_steal, warmup_iters, warmup_seconds, min_iters, min_seconds, max_seconds, timeout, malloc, quiet,
            profile, profile_iters, count, counter_seconds, simulate, uarch_machine, write_html, resume_dir, precisions,
            ray_address, node_selector, each_node) -> None:
    """Time models x backends x batch sizes; every point checked against eager PyTorch first."""
    echo = (lambda msg: None) if quiet else click.echo
    if resume_dir:
        run_dir = resume_sweep(resume_dir, log=echo, progress=ProgressBar(not quiet), ray_address=ray_address,
                               remeasure_noisy=remeasure_noisy or None)
        if read_manifest(run_dir)["options"].get("profile_iters"):
            build_ops_table(run_dir)
        _finish_run(run_dir, write_html)
        return
    chosen = select_models(model_names, all_models)
    options = RunOptions(
        models=chosen, backends=_split_names(backend_names), batch_sizes=batch_sizes, scale=scale,
        overrides=load_overrides(config_path, chosen), seed=seed, ids=ids, zipf_alpha=zipf_alpha, inputs=inputs,
        malloc=malloc, exports_dir=exports_dir, timeout=timeout, profile_iters=profile_iters if profile else 0,
        counter_seconds=counter_seconds if count else 0.0, rounds=rounds, remeasure_noisy=remeasure_noisy,
        uarch_machine=(uarch_machine or "host") if simulate or uarch_machine else "",  # a machine implies the pass
        noise=NoiseThresholds(others_share=noisy_others, steal_share=noisy_steal),
        ray_address=ray_address, nodes=node_selector, each_node=each_node,
        precisions=_split_names((precisions,)),
        timing=TimingOptions(warmup_iters=warmup_iters, warmup_seconds=warmup_seconds, min_iters=min_iters,
                             min_seconds=min_seconds, max_seconds=max_seconds),
    )
    if threads:
        options.threads = threads
    run_dir = run_sweep(options, out, log=echo, progress=ProgressBar(not quiet))
    if options.profile_iters:
        build_ops_table(run_dir)
    _finish_run(run_dir, write_html)


def _finish_run(run_dir: Path, write_html: bool) -> None:
    for member in member_runs(run_dir, read_manifest(run_dir)):
        if member != Path(run_dir):
            click.echo(f"node {member.name}:")
        click.echo(summary(load_points(member)))
    click.echo(f"results: {run_dir}")
    if write_html:
        from rechar.report import default_report_path, write_report  # Bokeh takes a second to import

        click.echo(f"report: {write_report([run_dir], default_report_path([run_dir]))}")


def _add_pass(run_dir: str, quiet: bool, **passes) -> Path:
    """Resume a run with a pass added (profile_iters= or counter_seconds=): it runs for every timed
    point that lacks it, and whatever else the run had left unfinished."""
    echo = (lambda msg: None) if quiet else click.echo
    return resume_sweep(run_dir, log=echo, progress=ProgressBar(not quiet), **passes)


@cli.command("profile")
@click.argument("run_dir", type=click.Path(file_okay=False))
@profile_iters_option
@quiet_option
def profile_cmd(run_dir, profile_iters, quiet) -> None:
    """Add the profiling pass to an existing run (every timed point without a profile)."""
    run_dir = _add_pass(run_dir, quiet, profile_iters=profile_iters)
    ops = build_ops_table(run_dir)
    click.echo(f"{ops.groupby(['model', 'backend', 'batch']).ngroups} points profiled; ops table: {run_dir / OPS}")


@cli.command("counters")
@click.argument("run_dir", type=click.Path(file_okay=False))
@counter_seconds_option
@quiet_option
def counters_cmd(run_dir, counter_seconds, quiet) -> None:
    """Add the CPU-event counting pass (perf stat) to an existing run (every timed point without counts)."""
    run_dir = _add_pass(run_dir, quiet, counter_seconds=counter_seconds)
    counted = load_counters(run_dir)
    click.echo(f"{int((counted['status'] == 'ok').sum())} points counted; log: {run_dir / COUNTERS_LOG}")


@cli.command("uarch")
@click.argument("run_dir", type=click.Path(file_okay=False))
@uarch_machine_option
@quiet_option
def uarch_cmd(run_dir, uarch_machine, quiet) -> None:
    """Add the simulation pass (callgrind: instructions, cache and branch misses per operator) to an
    existing run (every timed point without one); resumable, each worker under the run's --timeout."""
    from rechar.uarch.table import UARCH_TABLE, load_uarch

    recorded = read_manifest(Path(run_dir))["options"].get("uarch_machine")
    run_dir = _add_pass(run_dir, quiet, uarch_machine=uarch_machine or recorded or "host")
    table = load_uarch(run_dir)
    ok = table[table["status"] == "ok"]
    click.echo(f"{ok.groupby(['model', 'backend', 'batch']).ngroups} points simulated; table: {run_dir / UARCH_TABLE}")


@cli.command("analyze")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--p99-bound-ms", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Tail-latency bound for the best-deployment table.")
@click.option("--reference", default="torch", show_default=True,
              help="Backend the bottleneck shift is measured against.")
@click.option("--csv", "csv_dir", type=click.Path(file_okay=False), default=None,
              help="Also write every table as CSV into this folder.")
def analyze_cmd(run_dirs, p99_bound_ms, reference, csv_dir) -> None:
    """Operator breakdown, bottleneck shift, GPU speedup, best deployment and feature correlation
    over one or more runs (e.g. a CPU server's and a GPU server's)."""
    tables = analyze(list(run_dirs), p99_bound_ms=p99_bound_ms, reference=reference)
    click.echo(format_tables(tables))
    if csv_dir:
        folder = Path(csv_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot write to {folder}: {e.strerror}") from None
        for name, table in tables.items():
            table.to_csv(folder / f"{name}.csv", index=False)
        click.echo(f"tables written to {folder}")


@cli.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "-o", "out_path", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write (default: reports/<run id>.html, run ids joined with '+').")
@click.option("--p99-bound-ms", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Tail-latency bound for the best-deployment table.")
def report_cmd(run_dirs, out_path, p99_bound_ms) -> None:
    """Write a self-contained HTML report (charts and tables, no network needed) over one or more runs."""
    from rechar.report import default_report_path, write_report  # Bokeh takes a second to import: only here

    path = write_report(list(run_dirs), out_path or default_report_path(list(run_dirs)), p99_bound_ms=p99_bound_ms)
    click.echo(f"report: {path}")


@cli.command("serve")
@model_option
@click.option("--all", "all_models", is_flag=True, help="Every model, the three after the study included.")
@click.option("--backend", "-b", "backend_names", multiple=True,
              help=f"Backend, repeatable or comma-separated (default: {', '.join(DEFAULT_BACKENDS)}, those available).")
@click.option("--batch", "batches", default="16,64,256,query", show_default=True,
              help="Batching policies: split each query into sub-batches of at most this many items; 'query': "
                   "no split. Comma-separated: each is searched and the best named.")
@click.option("--workers", default="1", show_default=True,
              help="Parallel executors sharing the threads (comma-separated to compare several).")
@click.option("--p99-ms", type=float, default=10.0, show_default=True, help="Bound on the p99 query latency.")
@click.option("--query-sizes", default="lognormal:5.1,0.2", show_default=True,
              help="Items per query: fixed:N, lognormal:MU,SIGMA, normal:MEAN,STD, file:PATH or mlperf-dlrm "
                   "(MLPerf's DLRM query sizes, 100-700).")
@click.option("--max-query", type=int, default=1024, show_default=True, help="Query sizes are clipped to this.")
@click.option("--min-duration", type=float, default=2.0, show_default=True, help="Seconds per LoadGen test, at least.")
@click.option("--min-queries", type=int, default=512, show_default=True,
              help="Queries per LoadGen test, at least (its early-stopping rule may ask for more).")
@click.option("--offload-backend", default=None, help="Backend that serves the large queries (e.g. ort-cuda).")
@click.option("--offload-threshold", type=int, default=None, help="Queries of this many items or more are offloaded.")
@scale_option
@config_option
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads in all, divided among the executors (default: physical cores).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights, queries and arrivals.")
@ids_option
@zipf_alpha_option
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder (default: runs/<timestamp>-<id>).")
@click.option("--exports", "exports_dir", default="exports", show_default=True, type=click.Path(file_okay=False))
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600, show_default=True,
              help="Seconds without a finished test before the worker is killed.")
@click.option("--keep-trace", is_flag=True, help="Keep LoadGen's trace of every test (large).")
@quiet_option
@click.option("--report", "write_html", is_flag=True, help="Write the HTML report of the run at the end.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue an interrupted serving run: finished tests are kept, searches go on.")
def serve_cmd(model_names, all_models, backend_names, batches, workers, p99_ms, query_sizes, max_query, min_duration,
              min_queries, offload_backend, offload_threshold, scale, config_path, threads, seed, ids, zipf_alpha, out,
              exports_dir, timeout, keep_trace, quiet, write_html, resume_dir) -> None:
    """Serve models under load with MLPerf LoadGen: the highest query rate per stack and batching
    policy whose p99 latency meets the bound (default model: dlrm-rmc1; --all for every model)."""
    echo = (lambda msg: None) if quiet else click.echo
    progress = ProgressBar(not quiet, unit="configurations")
    if resume_dir:
        run_dir = resume_serve(resume_dir, log=echo, progress=progress)
    else:
        chosen = select_models(model_names, all_models) if (model_names or all_models) else ["dlrm-rmc1"]
        try:
            worker_counts = [int(w) for w in workers.split(",") if w.strip()]
        except ValueError:
            raise UserError(f"bad --workers {workers!r}: give positive integers") from None
        options = ServeOptions(
            models=chosen, backends=_split_names(backend_names), batches=parse_batches(batches), workers=worker_counts,
            scale=scale, overrides=load_overrides(config_path, chosen), seed=seed, ids=ids, zipf_alpha=zipf_alpha,
            query_sizes=query_sizes,
            max_query=max_query, p99_ms=p99_ms, min_duration_s=min_duration, min_queries=min_queries,
            offload_backend=offload_backend, offload_threshold=offload_threshold, exports_dir=exports_dir,
            timeout=timeout, keep_trace=keep_trace)
        if threads:
            options.threads = threads
        run_dir = run_serve(options, out, log=echo, progress=progress)
    click.echo(format_tables(analyze([run_dir], p99_bound_ms=p99_ms)))
    click.echo(f"results: {run_dir}")
    if write_html:
        from rechar.report import default_report_path, write_report

        click.echo(f"report: {write_report([run_dir], default_report_path([run_dir]))}")


@cli.command("show")
@click.argument("run_dir", type=click.Path(file_okay=False))
def show_cmd(run_dir) -> None:
    """Print a run's summary table."""
    manifest = read_manifest(Path(run_dir))
    host = manifest.get("host", {})
    click.echo(f"run {manifest['run_id']} ({manifest['status']}), started {manifest['started']} on "
               f"{host.get('hostname')}: {host.get('cpu')}, {host.get('logical_cores')} cores")
    for name, reason in manifest.get("skipped_backends", {}).items():
        click.echo(f"skipped backend {name}: {reason}")
    if is_serve_run(manifest):
        click.echo(format_tables(analyze([run_dir])))
        return
    for member in member_runs(run_dir, manifest):
        if member != Path(run_dir):
            click.echo(f"node {member.name}:")
        click.echo(summary(load_points(member)))


# Prediction (rechar.predict): probe a machine, re-cost a run for another scale, thread count or machine.


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad {what} {text!r}: give comma-separated positive integers") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"bad {what} {text!r}: give comma-separated positive integers")
    return values


@cli.command("probe")
@click.option("--out", "-o", "out_path", type=click.Path(dir_okay=False), default="machine-card.json",
              show_default=True, help="Machine card (JSON) to write.")
@click.option("--threads", "threads_text", default=None,
              help="Comma-separated thread counts to probe (default: 1, 2, 4, ... up to the physical cores).")
@click.option("--max-working-set", default=None,
              help="Largest working set of the gather probe, e.g. 1G (default: 4G, or a quarter of the available "
                   "memory if less).")
@click.option("--stacks", "stacks_text", default="torch,ort,tf", show_default=True,
              help="Stacks whose fixed cost per call is probed (torch, ort, tf); missing ones are skipped.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Probe every node of this Ray cluster (auto: the cluster this machine belongs to), each on the "
                   "node, all at once: one card per node, OUT's name with the node's appended; needs rechar[ray].")
@click.option("--nodes", "node_selector", default=None, metavar="SELECTOR",
              help="With --ray: only nodes with this custom resource, or with the label key=value.")
@quiet_option
def probe_cmd(out_path, threads_text, max_working_set, stacks_text, ray_address, node_selector, quiet) -> None:
    """Measure this machine for predictions (about a minute): gathers, bandwidth, GEMMs, call costs."""
    from rechar.predict.probe import ProbeOptions, parse_size, probe, probe_cluster

    overrides = {"stacks": tuple(_split_names((stacks_text,)))}
    if max_working_set:
        overrides["max_working_set"] = parse_size(max_working_set)
    if threads_text:
        overrides["threads"] = _int_list(threads_text, "--threads")
    echo = (lambda msg: None) if quiet else click.echo
    if node_selector and not ray_address:
        raise UserError("--nodes selects nodes of a Ray cluster: give --ray ADDRESS too")
    if ray_address:
        for label, path in probe_cluster(ray_address, node_selector, overrides, out_path, log=echo).items():
            click.echo(f"machine card of node {label}: {path}")
        return
    card = probe(ProbeOptions(**overrides), out_path, log=echo)
    for stack, reason in card["skipped_stacks"].items():
        click.echo(f"skipped stack {stack}: {reason}")
    click.echo(f"machine card: {out_path} ({card['probe_seconds']} s)")


@cli.command("predict")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--target", "card_path", required=True, type=click.Path(dir_okay=False),
              help="Machine card of the target machine (rechar probe).")
@click.option("--source-card", "source_path", type=click.Path(dir_okay=False), default=None,
              help="Card of the machine the run was measured on (default: the target card if it is the same "
                   "machine, else RUN/machine-card.json).")
@click.option("--scale", type=click.Choice(list(models.SCALES)), default=None, help="Target scale (default: the run's).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Target threads (default: the run's).")
@click.option("--tables-rows", default=None,
              help="Every embedding table's rows at the target: a factor (10x) or a row count (5000000).")
@config_option
@model_option
@click.option("--against", "measured_run", type=click.Path(file_okay=False), default=None,
              help="Validate: predict this measured run's scale, threads and configs, and compare with its p50s.")
@click.option("--out", "-o", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Parquet file for the predictions (default: RUN/predictions/<target>.parquet).")
def predict_cmd(run_dir, card_path, source_path, scale, threads, tables_rows, config_path, model_names,
                measured_run, out_path) -> None:
    """Predict p50 latency of a profiled run's points at another scale, thread count or machine."""
    from rechar.predict import Card, Target, error_summary, format_predictions, predict, validate, write_predictions

    card = Card.load(card_path)
    source = Card.load(source_path) if source_path else None
    chosen = _split_names(model_names) or None
    if measured_run:
        if scale or threads or tables_rows or config_path:
            raise UserError("--against takes the target from the measured run: drop --scale, --threads, "
                            "--tables-rows and --config")
        table = validate(run_dir, measured_run, card, source_card=source)
        if chosen:
            table = table[table["model"].isin(chosen)]
        path = Path(out_path or Path(run_dir) / "predictions" / f"validation-{Path(measured_run).name}.parquet")
        write_predictions(table, path)
        view = table[["model", "backend", "batch", "measured_p50_us", "predicted_p50_us", "error"]].copy()
        view["measured_p50_us"] = (view["measured_p50_us"] / 1e3).round(3)
        view["predicted_p50_us"] = (view["predicted_p50_us"] / 1e3).round(3)
        view = view.rename(columns={"measured_p50_us": "measured p50 ms", "predicted_p50_us": "PREDICTED p50 ms"})
        view["error"] = (view["error"] * 100).round(1).astype(str) + "%"
        click.echo(f"PREDICTED from {run_dir}, MEASURED in {measured_run}:")
        click.echo(view.to_string(index=False))
        click.echo(error_summary(table, ["validation", "backend"]).to_string(index=False))
        click.echo(error_summary(table).to_string(index=False))
        click.echo(f"validation: {path}")
        return
    overrides = load_overrides(config_path, models.names()) if config_path else {}
    target = Target(scale=scale, threads=threads, tables_rows=tables_rows, overrides=overrides, models=chosen)
    table = predict(run_dir, card, target, source_card=source)
    default_name = f"{card.host.get('hostname')}-{scale or 'run'}-t{threads or 'run'}" + (
        f"-rows{tables_rows}" if tables_rows else "")
    path = write_predictions(table, out_path or Path(run_dir) / "predictions" / f"{default_name}.parquet")
    click.echo(format_predictions(table))
    click.echo(f"predictions: {path}")


def main() -> None:
    """Entry point: user errors are one line on stderr and exit status 2, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except (SweepInterrupted, ServeInterrupted) as e:
        click.echo(f"\n{e}", err=True)
        sys.exit(130)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted; finished points are kept", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(2)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except ExportCheckError as e:
        click.echo(f"error: verification failed: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
