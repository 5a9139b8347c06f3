"""The eight models: shapes, value ranges, determinism, sizes computed from the config, inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import rechar.models as models
from rechar.errors import UserError

NAMES = models.names()


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_and_ranges(name):
    model = models.get(name, scale="tiny")
    inputs = model.make_inputs(batch=7)
    out = model.predict(inputs)
    assert out.dtype == np.float32
    assert out.shape[0] == 7 and np.isfinite(out).all()
    if name in ("sasrec", "hstu"):  # a logit per candidate (scaled cosine similarity)
        assert out.shape == (7, model.config.candidates) and out.std() > 0
        return
    assert ((out > 0) & (out < 1)).all()
    if name in ("din", "dien"):  # softmax over two classes
        assert out.shape == (7, 2)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)
    else:
        assert out.shape == (7, model.config.tasks if name == "mt-wnd" else 1)


@pytest.mark.parametrize("name", NAMES)
def test_export_form_computes_the_same(name):
    """Eager (fused embedding_bag) and ONNX form (gather + sum) are the same math."""
    model = models.get(name, scale="tiny")
    inputs = model.make_inputs(batch=5)
    eager = model.predict(inputs)
    model.set_export_form(True)
    np.testing.assert_allclose(model.predict(inputs), eager, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_weights_and_inputs_are_deterministic(name):
    a, b, c = (models.get(name, scale="tiny", seed=s) for s in (0, 0, 1))
    x = a.make_inputs(batch=4, seed=3)
    y = b.make_inputs(batch=4, seed=3)
    assert all(np.array_equal(x[k], y[k]) for k in x)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    assert not np.array_equal(a.predict(x), c.predict(x))
    z = a.make_inputs(batch=4, seed=4)
    assert any(not np.array_equal(x[k], z[k]) for k in x)


@pytest.mark.parametrize("name", NAMES)
def test_ids_are_in_range(name):
    model = models.get(name, scale="tiny")
    for dist in ("uniform", "zipf"):
        inputs = model.make_inputs(batch=64, ids=dist)
        for (key, value), spec in zip(inputs.items(), model.input_names):
            assert key == spec
            if value.dtype == np.int64:
                assert value.min() >= 0
        # every lookup is valid: the eager model would raise on an out-of-range id
        model.predict(inputs)


def test_zipf_ids_are_skewed_and_uniform_are_not():
    model = models.get("dlrm-rmc1", scale="small")
    counts = {}
    for dist in ("uniform", "zipf"):
        ids = model.make_inputs(batch=256, ids=dist)["sparse"][:, 0, :].ravel()
        _, c = np.unique(ids, return_counts=True)
        counts[dist] = np.sort(c)[::-1]
    n = len(model.make_inputs(batch=256)["sparse"][:, 0, :].ravel())
    # The 100 hottest rows of a 100,000-row table: ~1.5% of 20,480 uniform draws (sampling noise), far more if Zipf.
    assert counts["uniform"][:100].sum() / n < 0.03
    assert counts["zipf"][:100].sum() / n > 0.3


@pytest.mark.parametrize("name", ["din", "dien"])
def test_padded_history_steps_do_not_contribute(name):
    model = models.get(name, scale="tiny")
    inputs = model.make_inputs(batch=16)
    mask = inputs["history_mask"]
    assert ((mask == 0) | (mask == 1)).all() and (mask[:, 0] == 1).all()
    assert (mask == 0).any(), "some samples should be padded"
    # mask is a prefix of ones: padding at the end
    assert (np.diff(mask, axis=1) <= 0).all()
    changed = dict(inputs)
    rng = np.random.default_rng(9)
    changed["history"] = np.where(mask == 0, rng.integers(0, model.config.item_rows, mask.shape), inputs["history"])
    assert not np.array_equal(changed["history"], inputs["history"])
    np.testing.assert_allclose(model.predict(changed), model.predict(inputs), atol=1e-7)
    # ...while a valid step does contribute
    changed["history"] = inputs["history"].copy()
    changed["history"][:, 0] = (inputs["history"][:, 0] + 1) % model.config.item_rows
    assert not np.allclose(model.predict(changed), model.predict(inputs), atol=1e-7)


def test_din_weights_are_masked_but_not_normalised_and_dien_normalises():
    """DIN's attention weights are the activation unit's scores (the DIN paper drops the
    sum-to-one constraint), zero on padded steps; DIEN's are a masked softmax over time."""
    import torch

    din = models.get("din", scale="tiny")
    x = {k: torch.from_numpy(v) for k, v in din.make_inputs(32, seed=1).items()}
    mask = x["history_mask"]
    with torch.inference_mode():
        behaviours, target = din.item_emb(x["history"]), din.item_emb(x["target"])
        w = din.attention.weights(behaviours, target, mask)
        interest = din.attention(behaviours, target, mask)
    assert (w[mask == 0] == 0).all() and (w[mask == 1] != 0).all()
    assert (w.sum(1) - 1).abs().max() > 0.05 and (w.sum(1) - 1).abs().min() > 1e-4  # no sample sums to 1
    torch.testing.assert_close(interest, (w.unsqueeze(-1) * behaviours).sum(1), atol=1e-6, rtol=1e-5)
    dien = models.get("dien", scale="tiny")
    x = {k: torch.from_numpy(v) for k, v in dien.make_inputs(32, seed=1).items()}
    with torch.inference_mode():
        states, _ = dien.interest_extractor(dien.item_emb(x["history"]))
        a = dien.attention(states, dien.item_emb(x["target"]), x["history_mask"])
    torch.testing.assert_close(a.sum(1), torch.ones(32), atol=1e-5, rtol=0)
    assert (a[x["history_mask"] == 0] < 1e-6).all()


def test_describe_matches_hand_computed_figures_for_rmc1():
    d = models.describe("dlrm-rmc1", models.resolve_config("dlrm-rmc1", "paper"))
    assert d["category"] == "embedding-dominated"
    assert d["embedding_bytes"] == 8 * 4_000_000 * 32 * 4  # 4.1 GB, as in the specification
    mlp_macs = 128 * 64 + 64 * 32 + 288 * 256 + 256 * 64 + 64 * 1
    assert d["macs_per_sample"] == mlp_macs
    assert d["embedding_bytes_read_per_sample"] == 8 * 80 * 32 * 4
    assert d["params"] == 8 * 4_000_000 * 32 + mlp_macs + (64 + 32 + 256 + 64 + 1)


def test_describe_counts_recurrent_and_attention_work():
    c = models.resolve_config("dien", "paper")
    d = models.describe("dien", c)
    S, E, H = c.seq_len, c.embedding_dim, c.hidden
    gru = S * 3 * (E * H + H * H)
    attention = S * ((H + E) * 80 + 80 * 40 + 40)
    augru = S * 3 * (H * H + H * H)
    top = (H + 3 * E) * 200 + 200 * 80 + 80 * 2
    assert d["macs_per_sample"] == gru + attention + augru + top
    assert d["seq_len"] == 40


def test_describe_does_not_allocate_paper_tables():
    # Paper-scale tables are 0.8-4.9 GB each; on the meta device describe() allocates none of it.
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    figures = [models.describe(name, models.resolve_config(name, "paper")) for name in NAMES]
    assert max(f["embedding_bytes"] for f in figures) > 4e9
    assert process.memory_info().rss - before < 300e6


def test_paper_config_follows_the_specification():
    c = models.resolve_config
    assert c("dlrm-rmc2", "paper").table_rows == (500_000,) * 32
    assert c("dlrm-rmc3", "paper").bottom_mlp == (1024, 256, 32)
    assert c("mt-wnd", "paper").table_rows.count(5_000_000) == 2
    assert c("mt-wnd", "paper").tasks == 8
    assert c("din", "paper").seq_len == 250
    assert c("dien", "paper").hidden == 64


def test_scales_cap_rows_and_sequences():
    small, tiny = models.resolve_config("din", "small"), models.resolve_config("din", "tiny")
    assert small.item_rows == 100_000 and small.seq_len == 250
    assert tiny.item_rows == 1_000 and tiny.seq_len == 8
    assert models.resolve_config("ncf", "small").mlp_user_rows == 28_000  # under the cap: unchanged


def test_overrides_apply_after_the_scale_and_are_type_checked():
    c = models.resolve_config("dlrm-rmc1", "tiny", {"lookups": 5, "table_rows": [10, 20], "interaction": "dot"})
    assert c.lookups == 5 and c.table_rows == (10, 20) and c.interaction == "dot"
    model = models.get("dlrm-rmc1", config=c)
    assert model.predict(model.make_inputs(3)).shape == (3, 1)
    with pytest.raises(UserError, match="unknown field 'lookup'"):
        models.resolve_config("dlrm-rmc1", "tiny", {"lookup": 5})
    with pytest.raises(UserError, match="field 'lookups' must be int"):
        models.resolve_config("dlrm-rmc1", "tiny", {"lookups": "5"})
    with pytest.raises(UserError, match="must be int"):
        models.resolve_config("dlrm-rmc1", "tiny", {"lookups": True})
    with pytest.raises(UserError, match="list of int"):
        models.resolve_config("dlrm-rmc1", "tiny", {"table_rows": 10})
    with pytest.raises(UserError, match="must be positive"):
        models.resolve_config("dlrm-rmc1", "tiny", {"lookups": 0})
    with pytest.raises(UserError, match="interaction must be one of"):
        models.resolve_config("dlrm-rmc1", "tiny", {"interaction": "cross"})


def test_dot_interaction_uses_pairwise_products():
    c = models.resolve_config("dlrm-rmc1", "tiny", {"interaction": "dot", "table_rows": [50, 50, 50]})
    model = models.get("dlrm-rmc1", config=c)
    # bottom output (32) + 4 features choose 2 = 6 pairwise dots
    assert model.top_mlp[0].in_features == 32 + 6


def test_unknown_model_scale_and_distribution_are_user_errors():
    with pytest.raises(UserError, match="unknown model 'dlrm'"):
        models.get("dlrm")
    with pytest.raises(UserError, match="unknown scale 'huge'"):
        models.get("ncf", scale="huge")
    with pytest.raises(UserError, match="unknown id distribution"):
        models.get("ncf", scale="tiny").make_inputs(2, ids="normal")
    with pytest.raises(UserError, match="batch size must be a positive integer"):
        models.get("ncf", scale="tiny").make_inputs(0)


def test_config_is_json_round_trippable():
    import json

    for name in NAMES:
        c = models.resolve_config(name, "small")
        again = models.resolve_config(name, "paper", json.loads(json.dumps(c.to_dict())))
        assert dataclasses.asdict(again) == dataclasses.asdict(c)
