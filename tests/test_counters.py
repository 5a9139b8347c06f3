"""CPU event counts with perf stat: parsing, gating, thread coverage, the machine's support
detected and said, the counting pass of a run end to end, and the error without perf."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time

import numpy as np
import pytest

from rechar.analysis.counters import counted_metrics, counter_table, load_counters
from rechar.measure import counters
from rechar.measure.counters import EVENTS, HARDWARE, PerfSession, parse_perf_csv, probe
from rechar.results.store import COUNTERS_LOG

needs_perf = pytest.mark.skipif(counters.perf_path() is None, reason="perf is not installed on this machine")

# perf stat -x, output (value,unit,event,run-time,running-%,metric,metric-unit) as perf 6.1 writes it
# with -o: a comment header, status lines from the control FIFO, a hybrid CPU's two PMUs for one
# event, a multiplexed event, and events that did not count.
PERF_OUTPUT = """\
# started on Thu Nov 26 10:52:25 2026

Events disabled
Events enabled
2014.28,msec,task-clock,2014280000,100.00,1.994,CPUs utilized
41,,context-switches,2014280000,100.00,20.355,/sec
0,,cpu-migrations,2014280000,100.00,0.000,/sec
12,,page-faults,2014280000,100.00,5.957,/sec
5000000000,,cycles,1003211000,49.80,2.493,GHz
8000000000,,instructions,1003211000,49.80,1.60,insn per cycle
<not supported>,,stalled-cycles-frontend,0,100.00,,
3000,,cpu_core/LLC-load-misses/,5000,60.00,,
1000,,cpu_atom/LLC-load-misses/,5000,40.00,,
<not counted>,,dTLB-load-misses,0,0.00,,
Events disabled
"""


def test_parse_perf_csv():
    r = parse_perf_csv(PERF_OUTPUT)
    assert r.counts["task_clock_ms"] == pytest.approx(2014.28)
    assert r.counts["cycles"] == 5e9 and r.counts["instructions"] == 8e9
    assert r.counts["llc_load_misses"] == 4000  # both PMUs summed
    assert r.counts["stalled_cycles_frontend"] is None and r.not_counted["stalled_cycles_frontend"] == "not supported"
    assert r.counts["dtlb_load_misses"] is None and r.not_counted["dtlb_load_misses"] == "not counted"
    assert r.running_pct["cycles"] == pytest.approx(49.8) and r.running_pct["llc_load_misses"] == pytest.approx(40.0)
    assert "branches" not in r.counts  # not in the output: not a zero


def test_derived_metrics_arithmetic():
    r = parse_perf_csv(PERF_OUTPUT)
    row = {"host": "h", "run_id": "r", "model": "m", "backend": "torch", "device": "cpu", "batch": 64,
           "status": "ok", "error": None, "iterations": 40, "seconds": 1.01, "min_running_pct": 40.0,
           **{event: r.counts.get(event) for event in EVENTS}}
    d = counter_table([row]).iloc[0]
    assert d["ipc"] == pytest.approx(1.6)
    assert d["llc_mpki"] == pytest.approx(4000 / 8e9 * 1e3)
    assert d["cpus_utilized"] == pytest.approx(2014.28 / 1010)
    assert d["instructions_per_sample"] == pytest.approx(8e9 / (40 * 64))
    assert d["page_faults_per_iter"] == pytest.approx(12 / 40)
    assert np.isnan(d["frontend_stall_share"]) and np.isnan(d["dtlb_mpki"]) and np.isnan(d["branch_mpki"])
    assert counted_metrics(counter_table([row])) == [
        "cpus_utilized", "ipc", "instructions_per_sample", "llc_mpki", "page_faults_per_iter",
        "context_switches_per_iter"]


@needs_perf
def test_probe_says_what_this_machine_counts():
    """probe() agrees with perf itself on whether hardware events count here; when they do not,
    it says so and names them, and the software events still count."""
    out = subprocess.run(["perf", "stat", "-x", ",", "-e", "instructions,task-clock", "--", "true"],
                         capture_output=True, text=True).stderr
    direct = parse_perf_csv(out)
    support = probe()
    assert support.usable and support.perf
    assert ("instructions" in support.hardware) == (direct.counts.get("instructions") is not None)
    if len(support.hardware) < len(HARDWARE):
        assert "hardware events not counted on this machine" in support.reason
        missing = [EVENTS[e][0] for e in HARDWARE if e not in support.hardware]
        assert all(name in support.reason for name in missing)
    else:
        assert support.reason is None


@needs_perf
def test_only_the_enabled_window_is_counted_and_every_thread_is():
    stop = threading.Event()

    def spin():  # a thread other than the one that enables counting
        x = 0
        while not stop.is_set():
            x += 1

    with PerfSession(os.getpid()) as perf:
        t_end = time.perf_counter() + 0.4
        while time.perf_counter() < t_end:  # busy, but not counted
            pass
        worker = threading.Thread(target=spin)
        worker.start()
        perf.enable()
        time.sleep(0.3)  # this thread sleeps: only the spinning thread's time can be counted
        perf.disable()
        stop.set()
        worker.join()
    clock = perf.reading.counts["task_clock_ms"]
    assert 100 < clock < 380, clock  # ~300 ms of the other thread; none of the 400 ms before


@needs_perf
def test_perf_that_cannot_attach_is_an_error_not_a_hang():
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer exists
    start = time.monotonic()
    with pytest.raises(counters.CounterError, match="perf stat exited"):
        with PerfSession(gone.pid) as perf:
            perf.enable()
    assert time.monotonic() - start < counters.PERF_TIMEOUT


@needs_perf
def test_page_faults_of_fresh_memory_are_counted():
    kept = []
    result = counters.count_call(lambda: kept.append(np.ones(16 * 2**20 // 8)), min_seconds=0, min_iters=4)
    # 4 x 16 MiB touched: at least one fault per 2 MiB (transparent huge pages), up to one per 4 KiB
    assert result["iterations"] == 4 and result["counts"]["page_faults"] >= 32


@needs_perf
def test_counting_pass_of_a_run_end_to_end(run_cli, tiny_run, tmp_path):
    code, out, err, run_dir = tiny_run("-m", "ncf", "-b", "torch,ort-cpu", "--batch-sizes", "1,16", "--counters",
                                       "--counter-seconds", "0.2")
    assert code == 0, err
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counters"]["usable"] and manifest["options"]["counter_seconds"] == 0.2
    if manifest["counters"]["reason"]:
        assert "counting software events only" in out  # the machine's limit is said
    table = load_counters(run_dir)
    assert len(table) == 4 and (table["status"] == "ok").all() and table["batch"].dtype == "int64"
    assert (table["iterations"] >= 10).all() and (table["seconds"] >= 0.2).all()
    # every thread of the worker was counted while it ran: busy CPUs between ~0 and the threads asked for
    assert (table["cpus_utilized"] > 0.2).all() and (table["cpus_utilized"] < 2 * manifest["options"]["threads"] + 0.5).all()
    code, out, err = run_cli("analyze", str(run_dir))
    assert code == 0, err
    assert "6. CPU event counts per point" in out and "cpus_utilized" in out
    code, out, err = run_cli("report", str(run_dir), "-o", str(tmp_path / "r.html"))
    assert code == 0, err
    html = (tmp_path / "r.html").read_text()
    assert 'id="counters"' in html and "CPUs busy" in html
    if manifest["counters"]["reason"]:
        assert "hardware events not counted on this machine" in html


@needs_perf
def test_count_an_existing_run(run_cli, tiny_run):
    code, _, err, run_dir = tiny_run("-m", "ncf", "-b", "ort-cpu", "--batch-sizes", "4,8", "--quiet")
    assert code == 0, err
    assert load_counters(run_dir).empty
    points_before = (run_dir / "points.jsonl").read_bytes()
    code, out, err = run_cli("counters", str(run_dir), "--counter-seconds", "0.1", "--quiet")
    assert code == 0, err
    assert "2 points counted" in out
    assert (run_dir / "points.jsonl").read_bytes() == points_before  # the timing is untouched
    lines = (run_dir / COUNTERS_LOG).read_text().splitlines()
    code, out, _ = run_cli("counters", str(run_dir), "--quiet")  # nothing left to count: a no-op
    assert code == 0 and (run_dir / COUNTERS_LOG).read_text().splitlines() == lines


def test_without_perf_the_error_is_one_line_and_nothing_is_lost(run_cli, tiny_run, tmp_path, monkeypatch):
    code, _, err, run_dir = tiny_run("-m", "ncf", "-b", "ort-cpu", "--batch-sizes", "4", "--quiet")
    assert code == 0, err
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.iterdir() if p.is_file()}
    monkeypatch.setattr(counters, "perf_path", lambda: None)
    assert not probe().usable and "perf not found" in probe().reason
    code, out, err = run_cli("counters", str(run_dir), "--quiet")
    assert code == 2
    assert err.strip().splitlines() == ["error: cannot count CPU events: perf not found: install it "
                                        "(Debian: apt-get install linux-perf)"]
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.iterdir() if p.is_file()}
    assert after == before
    code, _, err, new = tiny_run("-m", "ncf", "-b", "ort-cpu", "--counters", "--quiet", out="new")
    assert code == 2 and "perf not found" in err and not new.exists()


@needs_perf
def test_a_failed_counting_pass_is_recorded_and_shown(run_cli, tiny_run, tmp_path):
    from rechar.measure.inputs import InputPool
    from rechar.sweep.worker import WorkerSpec, count_point

    code, _, err, run_dir = tiny_run("-m", "ncf", "-b", "ort-cpu", "--batch-sizes", "4", "--quiet")
    assert code == 0, err

    class Broken:
        device = "cpu"

        def prepare(self, batches):
            raise RuntimeError("input placement failed")

    spec = WorkerSpec.read(run_dir / "specs" / "ncf__ort-cpu.json")
    spec.counter_seconds = 0.1
    count_point(spec, Broken(), {"run_id": "run", "model": "ncf", "backend": "ort-cpu"}, 4,
                InputPool([{}], "fresh", 1, 0, 0, "0"))
    [row] = load_counters(run_dir).to_dict("records")
    assert row["status"] == "failed" and row["error"] == "RuntimeError: input placement failed"
    code, out, err = run_cli("analyze", str(run_dir))
    assert code == 0, err
    assert "counting passes that failed" in out and "input placement failed" in out
    code, _, err = run_cli("report", str(run_dir), "-o", str(tmp_path / "r.html"))
    assert code == 0, err
    html = (tmp_path / "r.html").read_text()
    assert "Points whose counting pass failed" in html and "input placement failed" in html
