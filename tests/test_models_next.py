"""The models after the study (DLRM-DCNv2, SASRec, HSTU): faithfulness to implementations that
are not ours, and to the defining equations computed independently in numpy on shared weights;
MLPerf sizes, the memory refusal, padding, and the cost figures computed by hand.

Tolerances: float32 against float64 numpy, atol 1e-5 on outputs of order 1; the bare cross network
(outputs up to ~4, 3456-term sums) 1e-4 absolute and relative, also against torchrec's module,
which runs the same float32 math in its own order."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

import rechar.models as models
from rechar.errors import UserError
from rechar.models.config import load_config_file
from rechar.models.dcnv2 import MLPERF_LOOKUPS, MLPERF_TABLE_ROWS

ATOL = 1e-5
#: The cross network alone sums 3456 products per output in float32 and its outputs reach ~4:
#: errors of 2e-5 against float64 are float32 rounding (seen: <= 2.3e-5).
CROSS_TOL = 1e-4
REPO = Path(__file__).resolve().parents[1]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _linear(x, layer):
    return x @ _np(layer.weight).T + (_np(layer.bias) if layer.bias is not None else 0.0)


def _layer_norm(x, eps):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)


def _silu(x):
    return x / (1 + np.exp(-x))


def _l2(x):
    return x / np.maximum(np.sqrt((x * x).sum(-1, keepdims=True)), 1e-6)


def _randomize(module: torch.nn.Module, seed: int = 5, std: float = 0.1) -> None:
    """Give every parameter random values (biases initialised to zero would test nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


# --- DLRM-DCNv2 -----------------------------------------------------------------------------------

def test_dcnv2_paper_config_is_mlperf_dlrm_v2():
    c = models.resolve_config("dlrm-dcnv2", "paper")
    assert sum(c.lookups) == 214 and len(c.table_rows) == 26
    assert sum(c.table_rows) == 204_184_588
    assert (c.bottom_mlp, c.top_mlp, c.embedding_dim, c.cross_layers, c.cross_rank) == (
        (512, 256, 128), (1024, 1024, 512, 256, 1), 128, 3, 512)
    d = models.describe("dlrm-dcnv2", c)
    assert d["embedding_bytes"] == 204_184_588 * 128 * 4  # 104.5 GB
    assert d["lookups_per_sample"] == 214 and d["embedding_bytes_read_per_sample"] == 214 * 128 * 4
    bottom = 13 * 512 + 512 * 256 + 256 * 128
    cross = 3 * (3456 * 512 + 512 * 3456)
    top = 3456 * 1024 + 1024 * 1024 + 1024 * 512 + 512 * 256 + 256
    assert d["macs_per_sample"] == bottom + cross + top


def test_dcnv2_small_scale_caps_large_tables_and_keeps_small_ones():
    c = models.resolve_config("dlrm-dcnv2", "small")
    assert c.table_rows == tuple(min(r, 100_000) for r in MLPERF_TABLE_ROWS)
    assert c.table_rows[5] == 3 and c.table_rows[1] == 39_060 and c.table_rows[0] == 100_000
    assert c.lookups == MLPERF_LOOKUPS


def test_dcnv2_paper_scale_refuses_in_one_line_before_allocating():
    before = psutil.Process().memory_info().rss
    with pytest.raises(UserError) as error:
        models.get("dlrm-dcnv2", scale="paper")
    message = str(error.value)
    assert "\n" not in message and "needs 104.6 GB for its weights" in message and "--scale small" in message
    assert psutil.Process().memory_info().rss - before < 200e6


def test_a_model_that_fits_is_refused_when_memory_is_short(monkeypatch):
    """The check compares the weights with the memory available now, for any model."""
    need = models.weight_bytes("ncf", models.resolve_config("ncf", "tiny"))
    short = psutil.virtual_memory()._replace(available=need - 1)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: short)
    with pytest.raises(UserError, match=r"ncf at scale 'tiny' needs 0\.0 GB"):
        models.get("ncf", scale="tiny")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: short._replace(available=need))
    assert models.get("ncf", scale="tiny") is not None


def test_dcnv2_bag_sizes_must_match_tables():
    with pytest.raises(UserError, match="lookups has 2 bag sizes for 26 tables"):
        models.resolve_config("dlrm-dcnv2", "tiny", {"lookups": [1, 2]})


def test_dcnv2_cross_network_follows_its_equation():
    """x_{l+1} = x_0 * (W_l (V_l x_l) + b_l) + x_l, in numpy on the model's weights."""
    model = models.get("dlrm-dcnv2", scale="tiny", overrides={"cross_rank": 7})
    cross = model.cross
    _randomize(cross, std=0.01)
    x0 = torch.randn(5, 27 * 128)
    x = _np(x0)
    for down, up in zip(cross.down, cross.up):
        x = _np(x0) * _linear(_linear(x, down), up) + x
    np.testing.assert_allclose(_np(cross(x0)), x, atol=CROSS_TOL, rtol=CROSS_TOL)


def _torchrec_crossnet_class():
    """torchrec's LowRankCrossNet, loaded from its file: ``import torchrec`` itself fails beside
    torch 2.13 (fbgemm_gpu's library does not load), but crossnet.py imports only torch."""
    spec = importlib.util.find_spec("torchrec")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchrec is not installed (pip install torchrec==1.9.2 --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "modules" / "crossnet.py"
    module_spec = importlib.util.spec_from_file_location("torchrec_crossnet", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.LowRankCrossNet


def test_dcnv2_cross_network_matches_torchrec_on_shared_weights():
    LowRankCrossNet = _torchrec_crossnet_class()
    ours = models.get("dlrm-dcnv2", scale="tiny").cross
    _randomize(ours, std=0.01)  # outputs of order 1, as with trained weights
    features, layers, rank = ours.down[0].in_features, len(ours.down), ours.down[0].out_features
    theirs = LowRankCrossNet(in_features=features, num_layers=layers, low_rank=rank)
    with torch.no_grad():
        for l, (down, up) in enumerate(zip(ours.down, ours.up)):
            theirs.V_kernels[l].copy_(down.weight)  # [rank, features]
            theirs.W_kernels[l].copy_(up.weight)  # [features, rank]
            theirs.bias[l].copy_(up.bias)
    x0 = torch.randn(9, features)
    with torch.no_grad():
        torch.testing.assert_close(ours(x0), theirs(x0), atol=CROSS_TOL, rtol=CROSS_TOL)


def test_dcnv2_forward_matches_numpy():
    """The whole model: bottom MLP, per-table sum-pooled bags, concat, cross network, top MLP,
    sigmoid, recomputed in numpy from the inputs and the weights."""
    model = models.get("dlrm-dcnv2", scale="tiny", overrides={"cross_rank": 16})
    _randomize(model.cross)
    inputs = model.make_inputs(6, seed=2)
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    x = inputs["dense"].astype(np.float64)
    for layer in model.bot_mlp[0::2]:
        x = relu(_linear(x, layer))
    start, pooled = 0, []
    for table, n in zip(model.emb.tables, model.config.lookups):
        pooled.append(_np(table.weight)[inputs["sparse"][:, start:start + n]].sum(axis=1))
        start += n
    x0 = np.concatenate([x, *pooled], axis=1)
    x = x0
    for down, up in zip(model.cross.down, model.cross.up):
        x = x0 * _linear(_linear(x, down), up) + x
    layers = list(model.top_mlp[0::2])
    for layer in layers[:-1]:
        x = relu(_linear(x, layer))
    want = 1 / (1 + np.exp(-_linear(x, layers[-1])))
    np.testing.assert_allclose(model.predict(inputs), want, atol=ATOL)


# --- SASRec ------------------------------------------------------------------------------------------

def test_sasrec_attention_equals_pytorchs_multihead_attention():
    """Our attention block against torch.nn.MultiheadAttention (which the reference uses) on the
    same weights, with its causal boolean mask."""
    model = models.get("sasrec", scale="tiny", overrides={"heads": 2, "embedding_dim": 12})
    ours = model.blocks[0].attention
    mha = torch.nn.MultiheadAttention(12, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([ours.query.weight, ours.key.weight, ours.value.weight]))
        mha.in_proj_bias.copy_(torch.cat([ours.query.bias, ours.key.bias, ours.value.bias]))
        mha.out_proj.weight.copy_(ours.out.weight)
        mha.out_proj.bias.copy_(ours.out.bias)
        q, kv = torch.randn(3, 8, 12), torch.randn(3, 8, 12)
        want, _ = mha.eval()(q, kv, kv, attn_mask=torch.ones(8, 8, dtype=torch.bool).triu(1))
        torch.testing.assert_close(ours(q, kv, model.causal), want, atol=ATOL, rtol=1e-5)


def _sasrec_numpy(model, inputs):
    c = model.config
    history, candidates = inputs["history"], inputs["candidates"]
    table = _np(model.item_emb.weight)
    valid = (history != 0)[..., None].astype(np.float64)
    x = (table[history] * math.sqrt(c.embedding_dim) + _np(model.input.positions)) * valid
    S, H, D = c.seq_len, c.heads, c.embedding_dim
    d = D // H
    for block in model.blocks:
        q_in = _layer_norm(x, 1e-8)
        att = block.attention
        heads = []
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            q = _linear(q_in, att.query)[..., sl]
            k = _linear(x, att.key)[..., sl]
            v = _linear(x, att.value)[..., sl]
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            scores = np.where(np.tril(np.ones((S, S))) > 0, scores, -np.inf)  # causal
            w = np.exp(scores - scores.max(-1, keepdims=True))
            heads.append((w / w.sum(-1, keepdims=True)) @ v)
        y = _layer_norm(q_in + _linear(np.concatenate(heads, -1), att.out), 1e-8)
        x = (_linear(np.maximum(_linear(y, block.ffn.inner), 0), block.ffn.outer) + y) * valid
    last = valid[:, :, 0].sum(1).astype(int) - 1
    state = _l2(x[np.arange(len(x)), last])
    cosine = np.einsum("bd,bkd->bk", state, _l2(table[candidates]))
    return cosine * _np(model.scoring.scale) + _np(model.scoring.bias)


@pytest.mark.parametrize("heads", [1, 2])
def test_sasrec_forward_matches_numpy_causal_softmax_attention(heads):
    model = models.get("sasrec", scale="tiny", overrides={"heads": heads, "embedding_dim": 12, "ffn_hidden": 10})
    inputs = model.make_inputs(7, seed=4)
    assert (inputs["history"] == 0).any() and (inputs["history"][:, 0] != 0).all()
    np.testing.assert_allclose(model.predict(inputs), _sasrec_numpy(model, inputs), atol=ATOL)


# --- HSTU ---------------------------------------------------------------------------------------------

def _reference_position_bias(w: np.ndarray, n: int) -> np.ndarray:
    """The reference's construction of the relative-position bias (pad, tile, reshape, slice),
    restated in numpy: an independent check of the model's offset gather."""
    t = np.tile(np.pad(w[:2 * n - 1], (0, n)), n)
    t = t[:-n].reshape(n, 3 * n - 2)
    r = (2 * n - 1) // 2
    return t[:, r:-r]


def _hstu_numpy(model, inputs):
    c = model.config
    history, ts, candidates = inputs["history"], inputs["timestamps"], inputs["candidates"]
    table = _np(model.item_emb.weight)
    valid = (history != 0)[..., None].astype(np.float64)
    x = (table[history] * math.sqrt(c.embedding_dim) + _np(model.input.positions)) * valid
    N, H = c.seq_len, c.heads
    following = np.concatenate([ts[:, 1:], ts[:, -1:]], axis=1)
    dt = np.maximum(np.abs(following[:, :, None] - ts[:, None, :]), 1)
    buckets = np.clip((np.log(dt) / 0.301).astype(np.int64), 0, 128)
    causal = np.tril(np.ones((N, N)))
    for layer in model.layers:
        uvqk = _silu(_layer_norm(x, 1e-6) @ _np(layer.uvqk.weight).T)
        u, v, q, k = np.split(uvqk, np.cumsum(layer.splits)[:-1], axis=-1)
        bias = layer.attention.bias
        rab = _reference_position_bias(_np(bias.position_weights), N)[None] + _np(bias.time_weights)[buckets]
        heads = []
        for h in range(H):
            qh, kh = (t[..., h * c.qk_dim:(h + 1) * c.qk_dim] for t in (q, k))
            vh = v[..., h * c.v_dim:(h + 1) * c.v_dim]
            a = _silu(qh @ kh.transpose(0, 2, 1) + rab) / N * causal  # pointwise: no softmax
            heads.append(a @ vh)
        x = _linear(u * _layer_norm(np.concatenate(heads, -1), 1e-6), layer.output) + x
    last = valid[:, :, 0].sum(1).astype(int) - 1
    state = _l2(x[np.arange(len(x)), last])
    cosine = np.einsum("bd,bkd->bk", state, _l2(table[candidates]))
    return cosine * _np(model.scoring.scale) + _np(model.scoring.bias)


def test_hstu_relative_position_bias_is_the_references_toeplitz_matrix():
    n = 6
    w = np.arange(2 * n - 1, dtype=np.float64)
    bias = _reference_position_bias(w, n)
    assert bias[0, 0] == w[n - 1] and bias[0, n - 1] == w[2 * n - 2] and bias[n - 1, 0] == w[0]  # w[j - i + n - 1]
    model = models.get("hstu", scale="tiny", overrides={"seq_len": n})
    module = model.layers[0].attention.bias
    with torch.no_grad():
        module.position_weights.copy_(torch.from_numpy(w))
        module.time_weights.zero_()
    np.testing.assert_array_equal(_np(module(torch.zeros(1, n, n, dtype=torch.int64)))[0], bias)


def test_hstu_time_buckets_by_hand():
    from rechar.models.hstu import TimeBuckets

    time_buckets = TimeBuckets()
    ts = torch.tensor([[0, 1, 10, 1000, 1000 + 86_400]])
    b = time_buckets(ts)[0]
    # bucket(ts[i + 1] - ts[j]): floor(ln(max(|dt|, 1)) / 0.301)
    assert b[0, 0] == 0  # dt = 1 - 0 = 1: ln 1 = 0
    assert b[1, 0] == int(math.log(10) / 0.301) == 7
    assert b[2, 1] == int(math.log(999) / 0.301) == 22
    assert b[4, 4] == 0  # the last step is its own "next": dt = 0, clamped to 1
    assert b[3, 0] == int(math.log(86_400 + 1000) / 0.301) == 37
    far = time_buckets(torch.tensor([[0, 10**18]]))[0]
    assert far[0, 0] == 128  # clamped to the last bucket


def test_hstu_time_buckets_are_exact_at_bucket_boundaries():
    """Gaps either side of every boundary up to a year (T_k = ceil(exp(0.301 k))): buckets equal
    float64's floor(ln(dt) / 0.301), where float32's log alone puts some on the wrong side."""
    from rechar.models.hstu import TimeBuckets

    k = np.arange(1, 60)
    edges = np.ceil(np.exp(0.301 * k)).astype(np.int64)
    gaps = np.unique(np.concatenate([edges - 1, edges, edges + 1]).clip(1, None))
    ts = torch.from_numpy(np.concatenate([[0], gaps]))[None]  # ts[i + 1] - ts[0] = gaps[i]
    got = TimeBuckets()(ts)[0, :-1, 0].numpy()
    want = np.floor(np.log(gaps.astype(np.float64)) / 0.301).astype(np.int64)
    np.testing.assert_array_equal(got, want)
    float32 = (np.log(gaps.astype(np.float32)) / np.float32(0.301)).astype(np.int64)
    assert (float32 != want).any(), "no boundary case that float32 gets wrong: the test would not see a regression"


@pytest.mark.parametrize("heads", [1, 2])
def test_hstu_forward_matches_numpy_pointwise_attention(heads):
    """SiLU(QK^T + rab) / N * causal, then V, u-gating, output layer and residual, in numpy."""
    model = models.get("hstu", scale="tiny", overrides={"heads": heads, "blocks": 2, "qk_dim": 5, "v_dim": 4})
    for layer in model.layers:  # non-zero relative biases, so that they are tested
        _randomize(layer.attention.bias, seed=len(layer.splits) + heads)
    inputs = model.make_inputs(6, seed=3)
    np.testing.assert_allclose(model.predict(inputs), _hstu_numpy(model, inputs), atol=ATOL)


def test_hstu_attention_is_pointwise():
    hstu = models.get("hstu", scale="tiny")
    x = {k: torch.from_numpy(v) for k, v in hstu.make_inputs(2).items()}
    with torch.profiler.profile() as prof, torch.inference_mode():
        hstu(*x.values())
    ops = {e.key for e in prof.key_averages()}
    assert "aten::silu" in ops and not {"aten::softmax", "aten::_softmax"} & ops


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_padded_history_steps_do_not_change_the_scores(name):
    """Padding (id 0, at the end of a history) is zeroed before the first layer and, being
    later than every valid step, never attended to: the padding row's values do not matter."""
    model = models.get(name, scale="tiny")
    inputs = model.make_inputs(16, seed=6)
    assert (inputs["history"] == 0).any()
    before = model.predict(inputs)
    with torch.no_grad():
        model.item_emb.weight[0] += 1.0
    np.testing.assert_allclose(model.predict(inputs), before, atol=1e-6)
    changed = dict(inputs, history=inputs["history"].copy())  # ...while a valid step does count
    changed["history"][:, 0] = inputs["history"][:, 0] % (model.config.item_rows - 1) + 1
    assert not np.allclose(model.predict(changed), before, atol=1e-6)


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_scores_are_calibrated_cosine_similarities_of_the_candidates(name):
    model = models.get(name, scale="tiny")
    inputs = model.make_inputs(64, seed=1)
    inputs["candidates"][:, 1] = inputs["candidates"][:, 0]  # the same item twice scores the same
    out = model.predict(inputs)
    assert out.shape == (64, model.config.candidates)
    np.testing.assert_array_equal(out[:, 0], out[:, 1])
    scale, bias = float(model.scoring.scale), float(model.scoring.bias)
    cosine = (out - bias) / scale
    assert np.abs(cosine).max() <= 1 + 1e-5 and scale > 0
    assert 1.0 <= out.std() <= 2.0  # calibrated like the other models' logits


def test_sequential_describe_counts_attention_work_by_hand():
    c = models.resolve_config("sasrec", "paper")
    S, D, F, K = c.seq_len, c.embedding_dim, c.ffn_hidden, c.candidates
    d = models.describe("sasrec", c)
    assert d["macs_per_sample"] == c.blocks * (4 * S * D * D + 2 * S * S * D + 2 * S * D * F) + K * D
    assert d["seq_len"] == 200 and d["candidates"] == 100 and d["lookups_per_sample"] == S + K
    h = models.resolve_config("hstu", "paper")
    N, D, H = h.seq_len, h.embedding_dim, h.heads
    per_layer = N * D * (2 * h.v_dim + 2 * h.qk_dim) * H + N * N * (h.qk_dim + h.v_dim) * H + N * h.v_dim * H * D
    assert models.describe("hstu", h)["macs_per_sample"] == h.blocks * per_layer + h.candidates * D
    assert (h.blocks, h.heads, h.qk_dim, h.v_dim, h.embedding_dim, h.seq_len) == (8, 2, 25, 25, 50, 200)


@pytest.mark.slow  # builds and runs the full-width model: 40 s
def test_hstu_dlrm_v3_config_file_is_mlperfs_shape():
    overrides = load_config_file(REPO / "configs" / "hstu-dlrmv3.toml")
    assert list(overrides) == ["hstu"]
    c = models.resolve_config("hstu", "tiny", overrides["hstu"])
    assert (c.blocks, c.heads, c.qk_dim, c.v_dim, c.embedding_dim, c.candidates) == (5, 4, 128, 128, 512, 2048)
    model = models.get("hstu", config=dataclasses.replace(c, seq_len=8, item_rows=1000))
    assert model.predict(model.make_inputs(2)).shape == (2, 2048)



def test_export_of_paper_dcnv2_is_one_line_exit_2_and_writes_nothing(run_cli, tmp_path):
    code, out, err = run_cli("export", "-m", "dlrm-dcnv2", "--scale", "paper", "--out", str(tmp_path / "e"))
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "dlrm-dcnv2 at scale 'paper' needs 104.6 GB" in err
    assert not (tmp_path / "e" / "dlrm-dcnv2").exists()


def test_model_feature_table_covers_the_later_models():
    from rechar.analysis.features import model_features

    f = model_features({n: models.resolve_config(n, "small").to_dict() for n in ("dlrm-dcnv2", "sasrec", "hstu")})
    f = f.set_index("model")
    assert f.loc["dlrm-dcnv2", "lookups_per_sample"] == 214 and f.loc["dlrm-dcnv2", "seq_len"] == 0
    assert f.loc["dlrm-dcnv2", "embedding_bytes_read_per_sample"] == 214 * 128 * 4
    assert f.loc["hstu", "seq_len"] == 200 and f.loc["sasrec", "seq_len"] == 200
    assert f.loc["hstu", "embedding_bytes_read_per_sample"] == (200 + 100) * 50 * 4  # history + candidates
    assert f.loc["hstu", "macs_per_sample"] > f.loc["sasrec", "macs_per_sample"] > 0
