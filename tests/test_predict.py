"""Prediction (rechar.predict): the reuse profile against hand-computed cases and brute-force LRU
simulations, the probe's card and one-line errors, and predict on a hand-made run and card
against the formula computed by hand."""

from __future__ import annotations

import collections
import json
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq

from rechar.errors import UserError
from rechar.models.base import InputGenerator
from rechar.predict import Card, ProbeOptions, Target, predict, probe
from rechar.predict.machine import CARD_KIND, CARD_VERSION, FIT_METHOD, fit_curve
from rechar.predict.reuse import TableStream, hit_ratios
from rechar.results.store import SCHEMA_VERSION, append_point, write_tables


# The reuse profile


def lru_hit_ratio(stream, capacity_rows: int, warm: int = 0) -> float:
    """Brute force: an LRU cache of ``capacity_rows`` rows over ``stream``; hits after ``warm``."""
    cache: collections.OrderedDict = collections.OrderedDict()
    hits = counted = 0
    for i, key in enumerate(stream):
        hit = key in cache
        if hit:
            cache.move_to_end(key)
        else:
            cache[key] = None
            if len(cache) > capacity_rows:
                cache.popitem(last=False)
        if i >= warm:
            hits += hit
            counted += 1
    return hits / counted


def test_uniform_hit_ratio_is_exact():
    # One uniform table larger than the cache: hit = cache rows / table rows, exactly.
    table = [TableStream("t", rows=1000, row_bytes=128, lookups=4)]
    assert hit_ratios(table, 100 * 128)[""] == pytest.approx(0.1, abs=1e-9)
    assert hit_ratios(table, 250 * 128)["t"] == pytest.approx(0.25, abs=1e-9)
    # A table that fits: every lookup hits.
    assert hit_ratios(table, 1000 * 128)[""] == 1.0
    # Two tables of equal popularity per row (rows and lookups in proportion) behave as one table.
    two = [TableStream("a", 1000, 128, 1), TableStream("b", 3000, 128, 3)]
    assert hit_ratios(two, 400 * 128)[""] == pytest.approx(0.1, abs=1e-9)


@pytest.mark.parametrize("capacity", [20, 200, 1000])
def test_zipf_hit_ratio_matches_lru_simulation(capacity):
    # ids drawn by rechar's own generator (Zipf 1.05 over 2,000 rows), run through an LRU cache.
    ids = InputGenerator(seed=3, batch=60_000, ids="zipf", zipf_alpha=1.05).ids(2000)
    simulated = lru_hit_ratio(ids.tolist(), capacity, warm=10_000)
    predicted = hit_ratios([TableStream("t", 2000, 128, 1)], capacity * 128, ids="zipf", alpha=1.05)[""]
    assert predicted == pytest.approx(simulated, abs=0.015)


def test_merged_tables_match_lru_simulation():
    # Two tables share the cache: 3 lookups per sample in a 500-row Zipf table, 1 in a 4,000-row
    # one; rows of the second table are keyed apart from the first's.
    gen = InputGenerator(seed=5, batch=30_000, ids="zipf", zipf_alpha=0.9)
    a, b = gen.ids(500, 3), gen.ids(4000, 1)
    stream = [key for sa, sb in zip(a.tolist(), b.tolist()) for key in (*sa, 10_000 + sb[0])]
    streams = [TableStream("a", 500, 64, 3), TableStream("b", 4000, 64, 1)]
    for capacity in (100, 800):
        simulated = lru_hit_ratio(stream, capacity, warm=20_000)
        predicted = hit_ratios(streams, capacity * 64, ids="zipf", alpha=0.9)[""]
        assert predicted == pytest.approx(simulated, abs=0.015)


def test_cycled_pool_matches_lru_simulation():
    # A point cycles through a pool: 3,000 uniform draws over 10,000 rows, replayed.
    pool = InputGenerator(seed=1, batch=3000).ids(10_000).tolist()
    stream = pool * 8
    for capacity, expected in ((1000, None), (4000, 1.0)):
        simulated = lru_hit_ratio(stream, capacity, warm=2 * len(pool))
        predicted = hit_ratios([TableStream("t", 10_000, 128, 1)], capacity * 128, pool_samples=3000)[""]
        assert predicted == pytest.approx(simulated, abs=0.02)
        if expected is not None:  # the pool's 2,592 distinct rows fit in 4,000: all hit
            assert predicted == expected


def test_zipf_bins_match_the_exact_sum():
    # An independent exact Che over every row of a 300,000-row Zipf table (dense arrays).
    rows, alpha, cache_rows = 300_000, 1.05, 5_000
    p = np.arange(1, rows + 1, dtype=float) ** -alpha
    p /= p.sum()
    t = brentq(lambda t: np.sum(-np.expm1(-p * t)) - cache_rows, 1, 1e12)
    exact = float(np.sum(p * -np.expm1(-p * t)))
    assert hit_ratios([TableStream("t", rows, 4, 1)], cache_rows * 4, "zipf", alpha)[""] == pytest.approx(exact, abs=1e-3)


def test_reuse_refuses_bad_input():
    with pytest.raises(UserError, match="unknown id distribution"):
        hit_ratios([TableStream("t", 10, 4, 1)], 40, ids="normal")
    with pytest.raises(UserError, match="positive"):
        hit_ratios([TableStream("t", 0, 4, 1)], 40)


# The probe


def test_tiny_probe_writes_a_well_formed_card(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if TensorFlow were not installed
    options = ProbeOptions(threads=[1], max_working_set=256 << 10, widths=(32,), gemm_rows=(1, 16),
                           gemm_shapes=[(16, 8), (64, 32)], stacks=("torch", "ort", "tf"),
                           seconds_per_figure=0.001, stream_bytes=1 << 20)
    path = tmp_path / "card.json"
    card = probe(options, path)
    on_disk = json.loads(path.read_text())
    assert on_disk["kind"] == CARD_KIND and on_disk["version"] == CARD_VERSION
    assert on_disk["skipped_stacks"] == {"tf": "tensorflow is not installed"}
    assert set(on_disk["call_us"]) == {"torch", "ort"} and all(v > 0 for v in on_disk["call_us"].values())
    assert {r["kernel"] for r in on_disk["gather"]} == {"index_select", "embedding_bag"}
    sizes = sorted(r["working_set_bytes"] for r in on_disk["gather"] if r["kernel"] == "index_select")
    assert sizes[0] == 16 << 10 and sizes[-1] <= 256 << 10 and len(sizes) == 9  # 16 KiB .. 256 KiB: 4 octaves, 2 figures each
    assert {(r["m"], r["k"], r["n"]) for r in on_disk["gemm"]} == {(1, 16, 8), (16, 16, 8), (1, 64, 32), (16, 64, 32)}
    assert on_disk["host"]["logical_cores"] >= 1 and on_disk["stream"][0]["gb_per_s"] > 0
    loaded = Card.load(path)
    assert loaded.gemm_us(1, 16, 64, 32) == pytest.approx(next(r["us"] for r in card["gemm"] if
                                                               (r["m"], r["k"], r["n"]) == (16, 64, 32)))


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "error: bad --threads '0'"),
    (["--threads", "two"], "error: bad --threads 'two'"),
    (["--max-working-set", "1K"], "error: the largest working set must be at least 32 KiB"),
    (["--max-working-set", "lots"], "error: bad size 'lots'"),
    (["--stacks", "jax"], "error: unknown stack 'jax'"),
    (["-o", "/nonexistent-folder/card.json"], "error: cannot write the card to /nonexistent-folder/card.json"),
])
def test_probe_errors_are_one_line(run_cli, args, message):
    code, out, err = run_cli("probe", *args)
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1


def test_probe_refuses_a_folder_as_output(run_cli, tmp_path):
    code, _, err = run_cli("probe", "-o", str(tmp_path))
    assert code == 2 and "is a directory" in err and err.count("\n") == 1


def test_gather_fit_recovers_a_planted_curve():
    # Figures made by the model's own formula with known levels (capacities on the probe's grid);
    # one figure slowed by a neighbour (x40) must not move the fit.
    levels = [(32 << 10, 1.0), (1 << 20, 2.0), (16 << 20, 6.0), (256 << 20, 3.0)]
    ws = [int((16 << 10) * 2 ** (k / 2)) for k in range(33)]
    ns = [2.0 + sum(p * (1 - min(1, c / w)) for c, p in levels) for w in ws]
    ns[17] *= 40
    fit = fit_curve(ws, ns)
    model = [fit["base_ns"] + sum(lv["penalty_ns"] * (1 - min(1, lv["capacity_bytes"] / w)) for lv in fit["levels"])
             for w in ws]
    clean = [2.0 + sum(p * (1 - min(1, c / w)) for c, p in levels) for w in ws]
    assert max(abs(m / c - 1) for m, c in zip(model, clean)) < 1e-6
    assert fit["base_ns"] == pytest.approx(2.0)
    assert {round(lv["capacity_bytes"]): round(lv["penalty_ns"], 6) for lv in fit["levels"]} == {c: p for c, p in levels}


# predict on a hand-made run and card

BASE_NS, LEVELS = 2.0, [(64 << 10, 1.0), (1 << 20, 2.0), (4 << 20, 4.0), (64 << 20, 8.0)]
POOLED_BASE_NS, POOLED_PENALTY = 1.0, 3.0  # the pooled gather's curve: base 1 ns, penalties x3


def hand_card(gather_scale: float = 1.0, hostname: str = "box") -> dict:
    """A card with known gather curves (the fits given), GEMM time = 1 + 1e-4 * m*k*n µs."""
    def fit(kernel, base, penalty):
        return {"kernel": kernel, "threads": 1, "width": 32, "base_ns": base * gather_scale,
                "levels": [{"capacity_bytes": c, "penalty_ns": p * penalty * gather_scale} for c, p in LEVELS]}
    gemm = [{"threads": 1, "m": m, "k": k, "n": n, "us": 1 + 1e-4 * m * k * n}
            for k, n in ((4, 8), (8, 1), (72, 8), (8, 8)) for m in (1, 16, 64, 256)]
    return {"kind": CARD_KIND, "version": CARD_VERSION,
            "host": {"hostname": hostname, "cpu": "hand-made", "logical_cores": 1, "llc_bytes": 64 << 20},
            "gather": [{"threads": 1, "width": 32, "working_set_bytes": 1 << 20, "ns_per_row": 3.0}],
            "gather_fit": [fit("index_select", BASE_NS, 1.0), fit("embedding_bag", POOLED_BASE_NS, POOLED_PENALTY)],
            "gather_fit_method": FIT_METHOD,
            "gemm": gemm, "stream": [{"threads": 1, "gb_per_s": 10.0}],
            "call_us": {"torch": 5.0}}


CONFIG = {"dense_features": 4, "bottom_mlp": [8], "table_rows": [1000, 1000], "embedding_dim": 32, "lookups": 4,
          "interaction": "concat", "top_mlp": [8, 1]}
OPS = [  # native op, layer, calls, self µs (per iteration: iterations = 1)
    ("aten::embedding_bag", "emb.tables.0", 1, 100.0),
    ("aten::embedding_bag", "emb.tables.1", 1, 100.0),
    ("aten::addmm", "top_mlp.0", 1, 50.0),
    ("aten::cat", "interaction", 1, 10.0),
    ("aten::view", "", 1, 1.0),  # the stack's floor: 1 µs per call
]
ORT_OPS = [("Gather", "emb.tables.0", 1, 100.0), ("Gather", "emb.tables.1", 1, 100.0), ("Gemm", "top_mlp.0", 1, 50.0),
           ("Concat", "interaction", 1, 10.0), ("Reshape", "", 1, 1.0)]


def make_run(folder, p50_us: float = 300.0, pool_batches: int = 1000, batch: int = 64, backend: str = "torch",
             ops=OPS):
    folder.mkdir()
    manifest = {"schema_version": SCHEMA_VERSION, "run_id": "hand", "status": "finished",
                "host": {"hostname": "box", "cpu": "hand-made", "logical_cores": 1},
                "options": {"scale": "small", "threads": 1, "ids": "uniform", "zipf_alpha": 1.05, "inputs": "fresh",
                            "overrides": {}},
                "configs": {"dlrm-rmc1": CONFIG}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    point = {"run_id": "hand", "model": "dlrm-rmc1", "scale": "small", "backend": backend, "framework": backend,
             "device": "cpu", "batch": batch, "status": "ok", "iterations": 100, "p50_us": p50_us, "mean_us": p50_us,
             "min_us": p50_us, "max_us": p50_us, "inputs": "fresh", "pool_batches": pool_batches}
    append_point(folder, point)
    profile = {**{k: point[k] for k in ("run_id", "model", "backend", "device", "batch")}, "status": "ok",
               "iterations": 1, "ops": [{"native_op": op, "node": "", "layer": layer, "calls": calls, "self_us": us,
                                         "members": []} for op, layer, calls, us in ops]}
    append_point(folder, profile, log="profiles.jsonl")
    write_tables(folder)
    return folder


def expected_gather_ns(total_table_bytes: float, base: float = BASE_NS, penalty: float = 1.0) -> float:
    """By hand: uniform lookups over two equal tables (one stream in effect): a level of C bytes
    hits min(1, C / table bytes)."""
    return base + sum(p * penalty * (1 - min(1.0, c / total_table_bytes)) for c, p in LEVELS)


def test_predict_matches_the_hand_computed_formula(tmp_path):
    run = make_run(tmp_path / "run")
    card = Card(hand_card())
    same = predict(run, card)
    assert same["predicted_p50_us"].iloc[0] == pytest.approx(300.0)  # nothing changed: the measurement
    assert (same["kind"] == "prediction").all()

    big = predict(run, card, Target(tables_rows="100x")).iloc[0]
    # PyTorch's embedding_bag: the pooled curve
    g_src = expected_gather_ns(2 * 1000 * 128, POOLED_BASE_NS, POOLED_PENALTY)
    g_tgt = expected_gather_ns(2 * 100_000 * 128, POOLED_BASE_NS, POOLED_PENALTY)
    # Each gather: 1 µs floor + 99 µs scaled by the ns per row; FC, cat and the view unchanged
    # (same shapes, same elements); profiled 261 µs < p50 300 µs: the change is added as is.
    expected = 300.0 + 2 * 99.0 * (g_tgt / g_src - 1)
    assert big["predicted_p50_us"] == pytest.approx(expected, rel=1e-6)
    assert big["target_table_bytes"] == 2 * 100_000 * 128
    t_emb = 2 * (1 + 99 * g_tgt / g_src)
    assert big["share_embedding"] == pytest.approx(t_emb / (t_emb + 50 + 10 + 1))
    # ONNX Runtime's Gather copies rows out: the plain curve, reported as the point's gather cost
    ort = predict(make_run(tmp_path / "ort", backend="ort-cpu", ops=ORT_OPS), card, Target(tables_rows="100x")).iloc[0]
    p_src, p_tgt = expected_gather_ns(2 * 1000 * 128), expected_gather_ns(2 * 100_000 * 128)
    assert ort["predicted_p50_us"] == pytest.approx(300.0 + 2 * 99.0 * (p_tgt / p_src - 1), rel=1e-6)
    assert ort["source_gather_ns"] == pytest.approx(p_src) and ort["target_gather_ns"] == pytest.approx(p_tgt)


def test_predict_follows_a_planted_change_of_gather_cost(tmp_path):
    # The same run on a "machine" whose gathers cost twice as much, everything else equal: each
    # gather's variable part (99 µs) doubles, nothing else moves.
    run = make_run(tmp_path / "run")
    slow = Card(hand_card(gather_scale=2.0, hostname="slow"))
    row = predict(run, slow, source_card=Card(hand_card())).iloc[0]
    assert row["predicted_p50_us"] == pytest.approx(300.0 + 2 * 99.0)
    # A run profiled with the profiler's overhead (profiled 261 µs over a p50 of 130.5: coverage
    # 2) moves by half the change.
    run2 = make_run(tmp_path / "run2", p50_us=130.5)
    row2 = predict(run2, slow, source_card=Card(hand_card())).iloc[0]
    assert row2["predicted_p50_us"] == pytest.approx(130.5 + 99.0)


def test_predict_errors_are_one_line(run_cli, tmp_path):
    run = make_run(tmp_path / "run")
    card = tmp_path / "card.json"
    card.write_text(json.dumps(hand_card(hostname="elsewhere")))
    code, _, err = run_cli("predict", str(run), "--target", str(card))
    assert code == 2 and "was measured on box" in err and err.count("\n") == 1
    code, _, err = run_cli("predict", str(run), "--target", str(tmp_path / "none.json"))
    assert code == 2 and err.startswith("error: no machine card at") and err.count("\n") == 1
    (tmp_path / "bad.json").write_text("{}")
    code, _, err = run_cli("predict", str(run), "--target", str(tmp_path / "bad.json"))
    assert code == 2 and "is not a rechar machine card" in err
    card.write_text(json.dumps(hand_card()))
    code, _, err = run_cli("predict", str(run), "--target", str(card), "--tables-rows", "many")
    assert code == 2 and err.startswith("error: bad --tables-rows 'many'") and err.count("\n") == 1
    code, _, err = run_cli("predict", str(run), "--target", str(card), "--threads", "8")
    assert code == 2 and "has no figures for 8 thread(s)" in err and err.count("\n") == 1
    code, _, err = run_cli("predict", str(tmp_path), "--target", str(card))
    assert code == 2 and "is not a run folder" in err and err.count("\n") == 1
    (run / "profiles.jsonl").unlink()
    (run / "ops.parquet").unlink()
    code, _, err = run_cli("predict", str(run), "--target", str(card))
    assert code == 2 and "has no operator profiles" in err and err.count("\n") == 1
    make_run(tmp_path / "run3")
    run = tmp_path / "run3"
    code, out, err = run_cli("predict", str(run), "--target", str(card), "--tables-rows", "100x")
    assert code == 0 and out.startswith("PREDICTED p50 (not measured)")
    written = pd.read_parquet(run / "predictions" / "box-run-trun-rows100x.parquet")
    assert list(written["kind"]) == ["prediction"]


def test_census_reads_tables_and_products_from_the_config():
    import rechar.models as models
    from rechar.predict.census import census

    # NCF at small scale: the user id indexes the 100,000-row GMF table within the 28,000-row MLP
    # table's range (the generator draws it so); one lookup each.
    ncf = census("ncf", models.resolve_config("ncf", "small"), batch=8)
    streams = {s.table: s for s in ncf.streams}
    assert (streams["gmf_user"].rows, streams["mlp_user"].rows, streams["gmf_user"].lookups) == (28_000, 28_000, 1)
    assert streams["gmf_user"].row_bytes == 64 * 4
    # DIN: the item table serves 250 behaviours and the target; the attention MLP's first layer
    # multiplies batch x 250 rows of [h, t, h-t, h*t] (4 x 32) by 128 x 80.
    din = census("din", models.resolve_config("din", "small"), batch=4)
    assert sum(s.lookups for s in din.streams if s.table == "item_emb") == 251
    assert din.work("attention.mlp.0").gemms == [(4 * 250, 128, 80)]
    assert din.work("top_mlp.0").gemms == [(4, 128, 200)]
    # Table weights are not elements: a pooled table's work does not grow with its rows.
    rmc1 = [census("dlrm-rmc1", models.resolve_config("dlrm-rmc1", s), batch=2).work("emb.tables.0").elements
            for s in ("tiny", "small")]
    assert rmc1[0] == rmc1[1]
    # SASRec draws item ids in [0, rows - 1) and adds 1 (0 pads the history): one item table read
    # by history and candidates, 3,952 rows drawn, padding a stream of one row; every step and
    # every candidate is one lookup (this census crashed on the shifted ids before)
    config = models.resolve_config("sasrec", "small")
    sas = census("sasrec", config, batch=1)
    by_rows = {}
    for stream in sas.streams:
        assert stream.table == "item_emb"
        by_rows[stream.rows] = by_rows.get(stream.rows, 0) + stream.lookups
    assert set(by_rows) <= {config.item_rows - 1, 1} and config.item_rows - 1 in by_rows
    assert sum(by_rows.values()) == config.seq_len + config.candidates


def test_a_stalled_op_takes_the_time_of_its_identical_siblings():
    # Three identical tables; a neighbour stalled the second one's gathers in the profile (x50):
    # it is costed as the other two.
    import rechar.models as models
    from rechar.predict.census import census
    from rechar.predict.predict import same_work_median

    config = models.resolve_config("dlrm-rmc1", "paper", {**CONFIG, "table_rows": [1000, 1000, 1000]})
    ops = pd.DataFrame({"native_op": ["aten::embedding_bag"] * 3 + ["aten::addmm"],
                        "op_category": ["embedding"] * 3 + ["fc"], "category": ["embedding"] * 3 + ["fc"],
                        "layer": ["emb.tables.0", "emb.tables.1", "emb.tables.2", "top_mlp.0"],
                        "calls_per_iter": [1.0] * 4, "self_us_per_iter": [10.0, 500.0, 12.0, 40.0]})
    fixed = same_work_median(ops, census("dlrm-rmc1", config, 64))
    assert list(fixed["self_us_per_iter"]) == [12.0, 12.0, 12.0, 40.0]


def test_tlb_levels_count_pages_not_rows():
    from rechar.predict.reuse import PAGE_BYTES, page_streams

    table = [TableStream("t", rows=100_000, row_bytes=128, lookups=1)]
    pages = page_streams(table)
    assert pages == [TableStream("t", rows=100_000 * 128 // PAGE_BYTES, row_bytes=PAGE_BYTES, lookups=1)]
    # Uniform: the same hit ratio either way (C / table bytes) ...
    assert hit_ratios(pages, 1 << 20)[""] == pytest.approx(hit_ratios(table, 1 << 20)[""]) == pytest.approx(
        (1 << 20) / 12.8e6)
    # ... but a pool of 1,000 lookups fits 1 MiB as rows (~128 KB) and not as pages (~3.2 MB of reach).
    assert hit_ratios(table, 1 << 20, pool_samples=1000)[""] == 1.0
    assert hit_ratios(pages, 1 << 20, pool_samples=1000)[""] < 0.5


def test_more_threads_never_cost_more_than_one_in_the_card():
    # A neighbour held the second core while the last two-thread figures (8 MiB and up) were taken
    # (x100): no later figure shows them up, only the one-thread figures of the same work.
    # the fitted two-thread curve stays near or under the one-thread one (the fit smooths the
    # capped figures into their neighbours: within 10%), never near the stalled figures.
    from rechar.predict.machine import fit_gather

    ws = [int((16 << 10) * 2 ** (k / 2)) for k in range(21)]
    one = [2.0 + 6.0 * (1 - min(1, (1 << 20) / w)) for w in ws]
    two = [v / 1.8 * (100 if w >= (8 << 20) else 1) for v, w in zip(one, ws)]
    card = {"gather": [{"kernel": "index_select", "threads": t, "width": 32, "working_set_bytes": w, "ns_per_row": v}
                       for t, vs in ((1, one), (2, two)) for w, v in zip(ws, vs)]}
    fits = {f["threads"]: f for f in fit_gather(card)}

    def cost(fit, w):
        return fit["base_ns"] + sum(lv["penalty_ns"] * (1 - min(1, lv["capacity_bytes"] / w)) for lv in fit["levels"])

    for w, v in zip(ws, one):
        assert cost(fits[2], w) <= v * 1.1


def test_census_counts_gemms_with_a_torch_stack_loaded_in_the_process():
    """A loaded torch stack keeps inference mode on; the census must still see each Linear's GEMM."""
    import torch

    import rechar.models as models
    from rechar.predict.census import _census, census

    _census.cache_clear()
    with torch.inference_mode():
        din = census("din", models.resolve_config("din", "small"), batch=4)
    _census.cache_clear()
    assert din.work("attention.mlp.0").gemms == [(4 * 250, 128, 80)]
    assert din.work("top_mlp.0").gemms == [(4, 128, 200)]
