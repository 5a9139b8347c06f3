"""--malloc: the workers run with the allocator asked for, or the run says why not."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys

import pytest

from rechar.errors import UserError
from rechar.measure import allocator
from rechar.results.store import load_points

INSTALLED = [c for c in allocator.ALLOCATORS if ctypes.util.find_library(allocator.ALLOCATORS[c][0])]


def test_choices_and_unknown():
    assert allocator.preload("default") is None and allocator.loaded("default")
    with pytest.raises(UserError, match="unknown allocator 'hoard'"):
        allocator.preload("hoard")


@pytest.mark.parametrize("choice", list(allocator.ALLOCATORS))
def test_preloaded_allocator_is_mapped_only_when_preloaded(choice):
    if choice not in INSTALLED:
        pytest.skip(f"{choice} is not installed here (Debian: {allocator.ALLOCATORS[choice][1]})")
    probe = [sys.executable, "-c", f"from rechar.measure import allocator; print(allocator.loaded({choice!r}))"]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    assert subprocess.run(probe, capture_output=True, text=True, env=env).stdout.strip() == "False"
    env["LD_PRELOAD"] = allocator.preload(choice)
    assert subprocess.run(probe, capture_output=True, text=True, env=env).stdout.strip() == "True"


@pytest.mark.parametrize("choice", list(allocator.ALLOCATORS))
def test_run_with_an_allocator(tiny_run, choice):
    if choice not in INSTALLED:
        pytest.skip(f"{choice} is not installed here (Debian: {allocator.ALLOCATORS[choice][1]})")
    code, _, err, run_dir = tiny_run("-m", "ncf", "-b", "torch,ort-cpu", "--batch-sizes", "4", "--malloc", choice,
                                     "--quiet")
    assert code == 0, err
    points = load_points(run_dir)
    assert (points["status"] == "ok").all()
    assert all(json.loads(s)["malloc"] == choice for s in points["settings"])
    assert json.loads((run_dir / "manifest.json").read_text())["options"]["malloc"] == choice


def test_missing_allocator_is_one_line_and_runs_nothing(tiny_run, monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    code, _, err, run_dir = tiny_run("-m", "ncf", "-b", "ort-cpu", "--malloc", "jemalloc", "--quiet")
    assert code == 2
    assert err.strip().splitlines() == ["error: allocator jemalloc not found: install it "
                                        "(Debian: apt-get install libjemalloc2)"]
    assert not run_dir.exists()


def test_worker_refuses_to_measure_without_the_allocator(tiny_run, monkeypatch):
    """Should the preload not take (here: the parent skips it), the worker records why instead of
    measuring with the wrong allocator."""
    if "jemalloc" not in INSTALLED:
        pytest.skip("jemalloc is not installed here (Debian: libjemalloc2)")
    monkeypatch.setattr(allocator, "preload", lambda choice: None)
    code, out, err, run_dir = tiny_run("-m", "ncf", "-b", "ort-cpu", "--batch-sizes", "4", "--malloc", "jemalloc",
                                       "--quiet")
    assert code == 0, err
    assert "not timed:" in out and "ncf ort-cpu batch 4: failed" in out  # a run with no timed point still prints
    [point] = load_points(run_dir).to_dict("records")
    assert point["status"] == "failed" and "allocator jemalloc was asked for but is not loaded" in point["error"]
