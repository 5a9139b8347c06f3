"""Sweeps on a Ray cluster: a head and two nodes with different custom resources, all on this
machine (ray.cluster_utils.Cluster), running the real workers."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'rechar[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

from rechar.analysis import analyze  # noqa: E402
from rechar.errors import UserError  # noqa: E402
from rechar.stacks import BACKENDS  # noqa: E402
from rechar.sweep.cluster import NODE_LOST, member_runs  # noqa: E402
from rechar.measure.timing import TimingOptions  # noqa: E402
from rechar.results.store import POINTS_LOG, load_points, read_manifest, read_point_log  # noqa: E402
from rechar.sweep import RunOptions, resume_sweep, run_sweep  # noqa: E402

TESTS_DIR = Path(__file__).parent
FAST = TimingOptions(warmup_iters=2, warmup_seconds=0.0, min_iters=5, min_seconds=0.0)
STALLING = "fault_backends:StallingBackend"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (no CPUs: nothing runs there) + node "fast" + node "slow" labelled tier=b. The nodes
    inherit this environment, so their workers find the test backends."""
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
    os.environ["RECHAR_EXTRA_BACKENDS"] = f"stalling={STALLING}"
    os.environ["RECHAR_TEST_STALL_FLAG"] = str(tmp_path_factory.mktemp("stall") / "stalled")
    sys.path.insert(0, str(TESTS_DIR))
    BACKENDS["stalling"] = STALLING
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    fast = c.add_node(num_cpus=1, resources={"fast": 1})
    slow = c.add_node(num_cpus=1, resources={"slow": 1}, labels={"tier": "b"})
    c.wait_for_nodes()
    yield c, {"fast": fast.node_id, "slow": slow.node_id}
    ray.shutdown()
    c.shutdown()
    BACKENDS.pop("stalling", None)
    sys.path.remove(str(TESTS_DIR))
    os.environ.clear()
    os.environ.update(saved)


def _options(tmp_path, cluster, **kw):
    opts = dict(models=["ncf"], backends=["ort-cpu", "torch"], batch_sizes=[1, 4], scale="tiny", timing=FAST,
                exports_dir=str(tmp_path / "exports"), threads=1, ray_address=cluster[0].address)
    opts.update(kw)
    return RunOptions(**opts)


def _valid(run_dir):
    return {(r["model"], r["backend"], r["batch"]) for r in read_point_log(run_dir) if r["status"] == "ok"}


#: what a point's record holds that does not depend on where or when it ran: the inputs it was
#: timed on, how they were drawn and sized, the stack's settings, the number of timed calls
DETERMINISTIC = ["input_hash", "inputs", "pool_batches", "pool_gathered_bytes", "pool_distinct_rows", "cache_bytes",
                 "settings", "iterations", "precision", "device"]


def _values(run_dir):
    return {(r["model"], r["backend"], r["batch"]): r for r in read_point_log(run_dir)}


@pytest.mark.slow  # a Ray sweep and a local one side by side: 25 s
def test_points_go_to_the_selected_nodes_and_match_a_local_sweep(tmp_path, cluster):
    local = run_sweep(_options(tmp_path, cluster, ray_address=None), tmp_path / "local")
    by_resource = run_sweep(_options(tmp_path, cluster, nodes="fast"), tmp_path / "fast")
    by_label = run_sweep(_options(tmp_path, cluster, nodes="tier=b"), tmp_path / "tier-b")
    want = {("ncf", b, n) for b in ("ort-cpu", "torch") for n in (1, 4)}
    assert _valid(local) == _valid(by_resource) == _valid(by_label) == want
    # the same points, not only the same keys: same inputs, settings and call counts, and the gate
    # saw the same outputs (the same weights and inputs on the same machine, one thread)
    mine = _values(local)
    for remote in (_values(by_resource), _values(by_label)):
        for key, rec in remote.items():
            assert {f: rec.get(f) for f in DETERMINISTIC} == {f: mine[key].get(f) for f in DETERMINISTIC}, key
            assert rec["iterations"] == FAST.min_iters
            assert rec["max_abs_error"] == pytest.approx(mine[key]["max_abs_error"], abs=1e-7), key
    assert {r["node"] for r in read_point_log(by_resource)} == {cluster[1]["fast"]}
    assert {r["node"] for r in read_point_log(by_label)} == {cluster[1]["slow"]}
    assert "node" not in read_point_log(local)[0]
    points = load_points(by_resource)
    assert set(points["node"]) == {cluster[1]["fast"]} and points["host"].notna().all()
    assert read_manifest(by_resource)["status"] == "complete"


def test_each_node_runs_the_whole_sweep_as_a_platform_of_its_own(tmp_path, cluster):
    run_dir = run_sweep(_options(tmp_path, cluster, each_node=True), tmp_path / "each")
    members = member_runs(run_dir, read_manifest(run_dir))
    assert len(members) == 2
    nodes = set()
    for member in members:
        assert _valid(member) == {("ncf", b, n) for b in ("ort-cpu", "torch") for n in (1, 4)}
        nodes |= {r["node"] for r in read_point_log(member)}
        manifest = read_manifest(member)
        assert manifest["host"]["cpu"] and manifest["host"]["hostname"] in member.name.replace("-", "/")
    assert nodes == set(cluster[1].values())
    hosts = set(analyze([run_dir])["points"]["host"])  # the analysis sees two platforms
    assert len(hosts) == 2
    from rechar.report import write_report

    html = write_report([run_dir], tmp_path / "each.html").read_text()
    assert all(host in html for host in hosts)


def test_a_lost_node_loses_only_its_point_and_resume_measures_it(tmp_path, cluster):
    """The stalling backend hangs at batch 4 on whichever node gets it; that node is killed: its
    batch-1 point (streamed back before) is kept, batch 4 is recorded as lost, the other node
    finishes the rest; resume on a new node measures batch 4 once."""
    c, _ = cluster
    labels = []

    def kill_the_stalled_node():
        flag = Path(os.environ["RECHAR_TEST_STALL_FLAG"])
        deadline = time.monotonic() + 120
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        stalled = next(label for label in reversed(labels) if "stalling" in label)
        node_id = re.search(r"@ .*?([0-9a-f]{8})$", stalled).group(1)
        victim = next(n for n in c.worker_nodes if n.node_id.startswith(node_id))
        c.remove_node(victim)

    killer = threading.Thread(target=kill_the_stalled_node, daemon=True)
    killer.start()
    opts = _options(tmp_path, cluster, backends=["stalling", "ort-cpu", "torch"])
    run_dir = run_sweep(opts, tmp_path / "lost", progress=lambda done, total, label: labels.append(label))
    killer.join(timeout=5)
    records = {(r["backend"], r["batch"]): r for r in read_point_log(run_dir)}
    lost = records[("stalling", 4)]
    assert lost["status"] == "failed" and lost["error"].startswith(NODE_LOST) and lost["retry"] is True
    assert records[("stalling", 1)]["status"] == "ok"  # streamed back before the node went
    assert all(r["status"] == "ok" for k, r in records.items() if k != ("stalling", 4))
    c.add_node(num_cpus=1, resources={"fast": 1})
    c.wait_for_nodes()
    resume_sweep(run_dir)
    final = read_point_log(run_dir)
    assert len(final) == 6 and all(r["status"] == "ok" for r in final)  # one record per point
    lines = (run_dir / POINTS_LOG).read_text().splitlines()
    assert len(lines) == 7  # append-only: the lost record stays in the log
    assert len(load_points(run_dir)) == 6
    with pytest.raises(UserError, match="ran on a Ray cluster: adding a pass to it is not supported yet"):
        resume_sweep(run_dir, profile_iters=3)
    with pytest.raises(UserError, match="--remeasure-noisy is not supported on a Ray cluster yet"):
        resume_sweep(run_dir, remeasure_noisy=1)


def test_ray_missing_is_a_one_line_error(run_cli, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    code, out, err = run_cli("run", "-m", "ncf", "-b", "ort-cpu", "--scale", "tiny", "--ray", "auto",
                             "--out", str(tmp_path / "r"))
    assert code == 2 and err.strip().splitlines() == ["error: --ray needs Ray: pip install 'rechar[ray]'"]
    assert not (tmp_path / "r").exists()
    code, _, err = run_cli("run", "-m", "ncf", "--scale", "tiny", "--each-node", "--out", str(tmp_path / "r"))
    assert code == 2 and "give --ray ADDRESS too" in err


def test_probe_on_a_cluster_writes_one_card_per_node(tmp_path, cluster, run_cli):
    """``rechar probe --ray`` probes each node on the node (the head has no CPU: not probed), one
    card per node named after it; ``--nodes`` selects as ``rechar run`` does. (The nodes are those
    alive now: an earlier test of this module replaces one.)"""
    import json

    from rechar.predict.probe import probe_cluster
    from rechar.sweep.cluster import connect

    connect(cluster[0].address)
    alive = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    small = {"threads": [1], "max_working_set": 64 << 10, "widths": (32,), "gemm_rows": (1,),
             "gemm_shapes": [(16, 8)], "stacks": ("torch",), "seconds_per_figure": 0.001, "stream_bytes": 1 << 20}
    paths = probe_cluster(cluster[0].address, None, small, tmp_path / "card.json")
    assert len(paths) == len(alive) == 2 and all(p.parent == tmp_path and p.name.startswith("card-")
                                                  for p in paths.values())
    cards = {label: json.loads(path.read_text()) for label, path in paths.items()}
    assert all(card["node"]["label"] == label and card["options"]["threads"] == [1] and card["gemm"]
               for label, card in cards.items())
    assert {card["node"]["id"] for card in cards.values()} == {n["NodeID"] for n in alive}  # each from its own node
    selector = next(iter(k for k in ("slow", "fast") if any(n["Resources"].get(k) for n in alive)))
    (tmp_path / "b").mkdir()
    chosen = probe_cluster(cluster[0].address, selector, small, tmp_path / "b" / "card.json")
    assert {json.loads(p.read_text())["node"]["id"] for p in chosen.values()} == {
        n["NodeID"] for n in alive if n["Resources"].get(selector)}
    code, _, err = run_cli("probe", "--nodes", "tier=b")
    assert code == 2 and err.strip() == "error: --nodes selects nodes of a Ray cluster: give --ray ADDRESS too"


def test_a_node_whose_probe_fails_is_named_and_the_others_are_written(tmp_path, cluster, monkeypatch):
    """A fault planted on one node: the error names that node and its cause, the other node's card
    is still written (not lost to the first failure)."""
    import importlib

    from rechar.sweep.cluster import connect

    probe_module = importlib.import_module("rechar.predict.probe")  # the package exports a function of that name

    connect(cluster[0].address)
    alive = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    victim = alive[0]["NodeID"]

    def probe_or_fail(overrides):  # shipped to the nodes by value
        import ray as node_ray

        from rechar.predict.probe import ProbeOptions, probe

        if node_ray.get_runtime_context().get_node_id() == victim:
            raise RuntimeError("planted fault")
        return probe(ProbeOptions(**overrides))

    monkeypatch.setattr(probe_module, "_probe_on_node", probe_or_fail)
    small = {"threads": [1], "max_working_set": 64 << 10, "widths": (32,), "gemm_rows": (1,),
             "gemm_shapes": [(16, 8)], "stacks": ("torch",), "seconds_per_figure": 0.001, "stream_bytes": 1 << 20}
    with pytest.raises(UserError) as raised:
        probe_module.probe_cluster(cluster[0].address, None, small, tmp_path / "card.json")
    message = str(raised.value)
    assert message.startswith("probing 1 of 2 node(s) failed (") and "RuntimeError: planted fault" in message
    cards = sorted(tmp_path.glob("card-*.json"))
    assert len(cards) == 1 and str(cards[0]) in message
    assert victim not in cards[0].read_text() and "gemm" in cards[0].read_text()
