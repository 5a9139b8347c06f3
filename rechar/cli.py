"""The ``rechar`` command: a thin layer over the Python API (rechar.models, rechar.exporters)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

import rechar
import rechar.models as models
from rechar.errors import UserError
from rechar.exporters import DEFAULT_EXPORTER, EXPORTERS, ExportCheckError, ExportOptions, export


def _split_names(values: tuple[str, ...]) -> list[str]:
    """``--model a --model b,c`` -> [a, b, c]."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def select_models(names: tuple[str, ...], all_models: bool) -> list[str]:
    chosen = _split_names(names)
    if all_models or not chosen:
        return models.names()
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
    chosen = select_models(model_names, all_models=False)
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
@click.option("--all", "all_models", is_flag=True, help="Export all eight models (the default without --model).")
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


def main() -> None:
    """Entry point: user errors are one line on stderr and exit status 2, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
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
