"""Shared fixtures: the eight models exported once at tiny scale for the whole test session."""

from __future__ import annotations

import sys

import pytest

import rechar.models as models
from rechar.exporters import ExportOptions, export


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory):
    """name -> ExportResult for all eight models at tiny scale (torchscript exporter)."""
    out = tmp_path_factory.mktemp("exports")
    return {name: export(name, "tiny", out=out, options=ExportOptions()) for name in models.names()}


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run the real ``rechar`` entry point in-process: returns (exit status, stdout, stderr)."""
    from rechar.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["rechar", *args])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def tiny_run(run_cli, tmp_path):
    """``rechar run`` at tiny scale with short timing into ``tmp_path/<out>`` (exports in
    ``tmp_path/e``), extra arguments appended: returns (exit status, stdout, stderr, run folder)."""

    def run(*args: str, out: str = "run"):
        run_dir = tmp_path / out
        code, stdout, stderr = run_cli("run", "--scale", "tiny", "--exports", str(tmp_path / "e"), "--out", str(run_dir),
                                       "--min-iters", "3", "--min-seconds", "0", "--warmup-seconds", "0", *args)
        return code, stdout, stderr, run_dir

    return run


@pytest.fixture(autouse=True)
def no_leaked_grad_mode():
    """A test that loads a PyTorch stack in-process must close it: the stack enters inference mode
    for its worker's life, and a mode left on changes how later tests' forwards dispatch."""
    import torch

    yield
    assert not torch.is_inference_mode_enabled(), "this test left PyTorch's inference mode on (a backend not closed?)"
    assert torch.is_grad_enabled(), "this test left PyTorch's grad mode off"
