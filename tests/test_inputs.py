"""Input pools: the size rule, the batches, and that every pass of a point cycles the same pool."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import rechar.models as models
from rechar.errors import UserError
from rechar.models.layers import EmbeddingTable
from rechar.stacks import BACKENDS
from rechar.measure import counters
from rechar.measure.inputs import PoolRule, PoolSpec, gathered_bytes, pool_hash
from rechar.measure.timing import TimingOptions
from rechar.results.store import COUNTERS_LOG, PROFILES_LOG, read_log, read_point_log
from rechar.sweep import RunOptions, resume_sweep, run_sweep

TESTS_DIR = Path(__file__).parent
MB = 1 << 20


# --- the size rule ------------------------------------------------------------------------------

def test_pool_size_rule_on_known_caches_and_batches():
    rule = PoolRule()  # 4 x the cache, 2..16384 batches, 1 GiB of inputs
    # 32 MiB cache, 1 MiB of rows gathered per batch, tables far larger than the cache: 128 batches
    assert rule.size(MB, 10_000, 32 * MB, 4 << 30) == 128
    assert rule.size(3 * MB, 10_000, 32 * MB, 4 << 30) == 43  # ceil(128 / 3)
    # a bigger cache needs a bigger pool, in proportion
    assert rule.size(MB, 10_000, 96 * MB, 4 << 30) == 384
    # tables smaller than the cache: 4 x the tables is enough
    assert rule.size(MB, 10_000, 32 * MB, 2 * MB) == 8
    # one batch gathering more than 4 x the cache: still two batches, so that calls differ
    assert rule.size(1 << 30, 10_000, 32 * MB, 4 << 30) == 2
    assert rule.size(0, 10_000, 32 * MB, 4 << 30) == 2  # a model without tables
    # tiny batches: capped at max_batches
    assert rule.size(1024, 32, 32 * MB, 4 << 30) == 16_384
    assert PoolRule(llc_multiple=2).size(MB, 10_000, 32 * MB, 4 << 30) == 64


def test_pool_size_respects_the_memory_budget():
    rule = PoolRule()
    # 100 MB of inputs per batch: the 1 GiB budget allows 10 of the 128 the cache asks for
    n = rule.size(MB, 100_000_000, 32 * MB, 4 << 30)
    assert n == 10 and n * 100_000_000 <= rule.budget_bytes
    assert PoolRule(budget_bytes=50 * MB).size(MB, MB, 32 * MB, 4 << 30) == 50
    # a budget below two batches yields to the minimum of two
    assert rule.size(MB, 800_000_000, 32 * MB, 4 << 30) == 2


#: embedding bytes one sample gathers at small scale, from the configs (dim 32 or 64, fp32)
SMALL_BYTES_PER_SAMPLE = {
    "dlrm-rmc1": 8 * 80 * 32 * 4,  # 8 tables x 80 lookups x 32 floats
    "din": (250 + 1 + 3 + 3) * 32 * 4,  # the 250-item history and the candidate, 3 profile and 3 context ids
    "ncf": 4 * 64 * 4,  # a user and an item row in each of the GMF and MLP towers' tables
}


@pytest.mark.parametrize("name", ["dlrm-rmc1", "din", "ncf"])
def test_pools_of_real_models_follow_the_rule(name):
    shell = models.shell(name, models.resolve_config(name, "small"))
    cache = 8 * MB
    tables = sum(t.weight.numel() * 4 for t in shell.embedding_tables())
    for batch in (1, 16, 256):
        pool = PoolSpec(0, "uniform", 1.05, "fresh", cache).make(shell, batch)
        per_batch = batch * SMALL_BYTES_PER_SAMPLE[name]
        assert gathered_bytes(shell, pool.first) == per_batch
        target = 4 * min(cache, tables)
        assert pool.gathered_bytes == per_batch * len(pool) >= min(target, 2 * per_batch)
        assert len(pool) == 2 or (len(pool) - 1) * per_batch < target  # the fewest that reach it
        assert 0 < pool.distinct_rows <= sum(t.weight.shape[0] for t in shell.embedding_tables())
        assert pool.record()["pool_batches"] == len(pool) and pool.record()["inputs"] == "fresh"
    assert len(PoolSpec(0, "uniform", 1.05, "replay", cache).make(shell, 16)) == 1


# --- the batches --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", models.names())
def test_lookups_are_the_ids_the_tables_receive(name):
    """Each model's lookups() (which sizes pools and counts distinct rows) names exactly the ids its
    embedding tables are called with, and its bytes agree with describe()."""
    model = models.get(name, scale="tiny")
    inputs = model.make_inputs(6, seed=2)
    seen: dict[str, list[np.ndarray]] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, path=path: seen.setdefault(path, []).append(args[0].numpy()))
               for path, m in model.named_modules() if isinstance(m, EmbeddingTable)]
    model.predict(inputs)
    for h in handles:
        h.remove()
    claimed = model.lookups(inputs)
    assert set(claimed) == set(seen)
    for path, ids in claimed.items():
        np.testing.assert_array_equal(np.sort(ids, axis=None), np.sort(np.concatenate([a.ravel() for a in seen[path]])))
    described = models.describe(name, model.config)
    assert gathered_bytes(model, inputs) == 6 * described["embedding_bytes_read_per_sample"]


def test_pool_batches_are_deterministic_distinct_and_member_0_is_the_classic_batch():
    shell = models.shell("dlrm-rmc1", models.resolve_config("dlrm-rmc1", "tiny"))
    spec = PoolSpec(3, "uniform", 1.05, "fresh", 100_000)
    a, b = spec.make(shell, 4), spec.make(shell, 4)
    assert len(a) >= 2 and a.hash == b.hash
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a.batches, b.batches) for k in x)
    assert len({pool_hash([x]) for x in a.batches}) == len(a)  # every batch differs
    np.testing.assert_array_equal(a.first["sparse"], shell.make_inputs(4, seed=3)["sparse"])
    assert PoolSpec(3, "uniform", 1.05, "replay", 100_000).make(shell, 4).hash == pool_hash([a.first])
    assert PoolSpec(4, "uniform", 1.05, "fresh", 100_000).make(shell, 4).hash != a.hash
    first, last = spec.ends(shell, 4)
    assert pool_hash([first]) == pool_hash([a.first]) and pool_hash([last]) == pool_hash([a.last])


def test_distinct_rows_counted_per_table():
    shell = models.shell("ncf", models.resolve_config("ncf", "tiny"))
    pool = PoolSpec(0, "uniform", 1.05, "fresh", 100_000).make(shell, 8)
    users = np.concatenate([b["user"] for b in pool.batches])
    items = np.concatenate([b["item"] for b in pool.batches])
    # user ids index two tables (GMF and MLP), item ids two more
    assert pool.distinct_rows == 2 * np.unique(users).size + 2 * np.unique(items).size


# --- every pass of a point on the same pool -----------------------------------------------------

@pytest.fixture
def recording(monkeypatch, tmp_path):
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RECHAR_EXTRA_BACKENDS", "recording=fault_backends:RecordingBackend")
    monkeypatch.setenv("RECHAR_TEST_CALLS", str(calls))
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    monkeypatch.setitem(BACKENDS, "recording", "fault_backends:RecordingBackend")

    def read():
        return [json.loads(line) for line in calls.read_text().splitlines()]

    return read


def _options(tmp_path, **kw):
    # cache_bytes 100,000 (tables of 1 MB): pools of 5 batches at batch 1 and 2 at batch 4.
    values = dict(models=["dlrm-rmc1"], backends=["recording"], batch_sizes=[1, 4], scale="tiny", threads=1,
                  exports_dir=str(tmp_path / "exports"), cache_bytes=100_000,
                  timing=TimingOptions(warmup_iters=2, warmup_seconds=0, min_iters=12, min_seconds=0))
    values.update(kw)
    return RunOptions(**values)


def _pool(options, batch):
    shell = models.shell("dlrm-rmc1", models.resolve_config("dlrm-rmc1", "tiny"))
    return PoolSpec(options.seed, options.ids, options.zipf_alpha, options.inputs, options.cache_bytes).make(shell, batch)


def test_timed_calls_cycle_the_whole_pool(tmp_path, recording):
    options = _options(tmp_path, profile_iters=7)
    run_dir = run_sweep(options, tmp_path / "run")
    calls = recording()
    for batch in (1, 4):
        pool = _pool(options, batch)
        members = [pool_hash([b]) for b in pool.batches]
        mine = [c for c in calls if c["batch"] == batch]
        placements = list(dict.fromkeys(c["placement"] for c in mine))
        gate, timed, profiled = ([c for c in mine if c["placement"] == p] for p in placements)
        # the gate: the pool's first and last batch, one call each
        assert [c["hash"] for c in gate] == [members[0], members[-1]]
        # timing (warm-up + timed calls): each call on the next batch, every batch used, in order
        assert timed[0]["timed_session"] and timed[0]["placed"] == len(pool) == (5 if batch == 1 else 2)
        seq = [c["hash"] for c in timed]
        assert len(seq) == 14 and all(x != y for x, y in zip(seq, seq[1:]))
        assert seq == [members[i % len(pool)] for i in range(len(seq))]
        # the profiling pass (ORT's second session) cycles the same pool
        assert not profiled[0]["timed_session"]
        assert [c["hash"] for c in profiled][:len(pool)] == members
    # every log names the same pool
    hashes = {r["batch"]: r["input_hash"] for r in read_point_log(run_dir)}
    assert hashes == {b: _pool(options, b).hash for b in (1, 4)}
    assert {r["batch"]: r["input_hash"] for r in read_log(run_dir, PROFILES_LOG)} == hashes
    point = next(r for r in read_point_log(run_dir) if r["batch"] == 1)
    assert point["pool_batches"] == 5 and point["inputs"] == "fresh" and point["cache_bytes"] == 100_000
    assert point["pool_gathered_bytes"] == 5 * 8 * 80 * 32 * 4


def test_replay_runs_every_call_on_one_batch(tmp_path, recording):
    options = _options(tmp_path, inputs="replay", batch_sizes=[4])
    run_dir = run_sweep(options, tmp_path / "run")
    calls = recording()
    assert len({c["hash"] for c in calls}) == 1 and all(c["placed"] == 1 for c in calls)
    [point] = read_point_log(run_dir)
    assert point["inputs"] == "replay" and point["pool_batches"] == 1


def test_resume_and_the_passes_after_timing_use_the_same_pool(tmp_path, recording):
    passes = {"profile_iters": 3}
    if counters.perf_path() is not None and counters.probe().usable:
        passes["counter_seconds"] = 0.05
    run_dir = run_sweep(_options(tmp_path, **passes), tmp_path / "run")
    first = {r["batch"]: r["input_hash"] for r in read_point_log(run_dir)}
    # Lose batch 4's records from every log, as a kill before they were written would, then resume.
    for log in ["points.jsonl", PROFILES_LOG, COUNTERS_LOG]:
        path = run_dir / log
        if path.exists():
            lines = [line for line in path.read_text().splitlines() if json.loads(line)["batch"] != 4]
            path.write_text("".join(line + "\n" for line in lines))
    resume_sweep(run_dir)
    assert {r["batch"]: r["input_hash"] for r in read_point_log(run_dir)} == first
    assert {r["batch"]: r["input_hash"] for r in read_log(run_dir, PROFILES_LOG)} == first
    if "counter_seconds" in passes:
        assert {r["batch"]: r["input_hash"] for r in read_log(run_dir, COUNTERS_LOG)} == first


def test_bad_inputs_mode_is_refused(tmp_path, run_cli):
    with pytest.raises(UserError, match="unknown inputs mode 'stale'"):
        _options(tmp_path, inputs="stale", backends=["ort-cpu"]).validate()
    code, _, err = run_cli("run", "--inputs", "stale", "-m", "ncf")
    assert code == 2 and "stale" in err and "Traceback" not in err
