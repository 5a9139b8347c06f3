"""The command line: output, and user errors as one line with exit status 2."""

from __future__ import annotations

import json

import pytest


def test_models_lists_all_eleven_with_figures(run_cli):
    code, out, err = run_cli("models", "--scale", "paper", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["model"] for r in rows] == ["dlrm-rmc1", "dlrm-rmc2", "dlrm-rmc3", "ncf", "wnd", "mt-wnd", "din", "dien",
                                          "dlrm-dcnv2", "sasrec", "hstu"]
    by_name = {r["model"]: r for r in rows}
    assert by_name["dlrm-rmc2"]["embedding_bytes"] == 32 * 500_000 * 64 * 4
    assert by_name["din"]["category"] == "attention/sequence"
    assert by_name["dlrm-dcnv2"]["category"] == "cross-network/MLP" and by_name["hstu"]["seq_len"] == 200
    assert all(r["macs_per_sample"] > 0 and r["params"] > 0 for r in rows)
    code, out, _ = run_cli("models", "--scale", "tiny")
    assert code == 0 and "embedding-dominated" in out and "dien" in out


def test_export_then_cached(run_cli, tmp_path):
    code, out, err = run_cli("export", "--model", "ncf,din", "--scale", "tiny", "--out", str(tmp_path))
    assert code == 0, err
    assert (tmp_path / "ncf" / "tiny" / "model.onnx").is_file() and (tmp_path / "din" / "tiny" / "export.json").is_file()
    assert "parity max error" in out
    code, out, _ = run_cli("export", "-m", "ncf", "--scale", "tiny", "--out", str(tmp_path))
    assert code == 0 and "cached" in out


def test_config_file_overrides(run_cli, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[ncf]\nmlp = [32, 16]\n\n[din]\nseq_len = 5\n')
    code, out, err = run_cli("models", "-m", "ncf", "--scale", "tiny", "--config", str(cfg), "--json")
    assert code == 0, err
    assert json.loads(out)[0]["config"]["mlp"] == [32, 16]
    code, out, err = run_cli("export", "-m", "din", "--scale", "tiny", "--config", str(cfg), "--out", str(tmp_path / "x"))
    assert code == 0, err
    [folder] = (tmp_path / "x" / "din").iterdir()
    assert json.loads((folder / "export.json").read_text())["fixed_dims"] == {"seq_len": 5}


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "--model", "dlrm"], "unknown model 'dlrm'"),
        (["export", "--scale", "huge"], "'huge' is not one of"),
        (["models", "--config", "{cfg}/missing.toml"], "cannot read config file"),
        (["models", "--config", "{cfg}/bad.toml"], "is malformed"),
        (["models", "--config", "{cfg}/bad.yaml"], "must end in .toml or .json"),
        (["models", "--config", "{cfg}/unknown_field.toml"], "unknown field 'lookupz'"),
        (["models", "--config", "{cfg}/wrong_type.json"], "field 'lookups' must be int"),
        (["models", "--config", "{cfg}/unknown_model.toml"], "unknown model 'gpt'"),
        (["export", "-m", "ncf", "--scale", "tiny", "--out", "{cfg}/a_file/sub"], "cannot write to"),
        (["export", "--exporter", "tflite"], "'tflite' is not one of"),
        (["frobnicate"], "No such command"),
    ],
)
def test_user_errors_are_one_line_with_status_2(run_cli, tmp_path, args, message):
    (tmp_path / "bad.toml").write_text("[dlrm-rmc1\nlookups = ")
    (tmp_path / "bad.yaml").write_text("a: 1")
    (tmp_path / "unknown_field.toml").write_text("[dlrm-rmc1]\nlookupz = 3\n")
    (tmp_path / "wrong_type.json").write_text('{"dlrm-rmc1": {"lookups": "many"}}')
    (tmp_path / "unknown_model.toml").write_text("[gpt]\nlayers = 3\n")
    (tmp_path / "a_file").write_text("")
    code, out, err = run_cli(*[a.format(cfg=tmp_path) for a in args])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert "Traceback" not in err + out
    assert not (tmp_path / "a_file").is_dir()


def test_help_says_how_big_each_scale_is(run_cli):
    code, out, _ = run_cli("export", "--help")
    assert code == 0
    assert "100,000 rows" in out and "paper" in out


def test_a_failed_verification_is_one_line_with_status_1(run_cli, tmp_path, monkeypatch):
    import rechar.models as models

    real_predict = models.RecModel.predict
    monkeypatch.setattr(models.RecModel, "predict", lambda self, inputs: real_predict(self, inputs) + 1e-3)
    code, _, err = run_cli("export", "-m", "ncf", "--scale", "tiny", "--out", str(tmp_path))
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: verification failed: ncf: ONNX Runtime differs from PyTorch by")


def test_resume_needs_the_run_backends(run_cli, tmp_path):
    from rechar.stacks import backend_class

    if not backend_class("torch-cuda").unavailable_reason():
        pytest.skip("a CUDA device is present, so torch-cuda is available")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "run", "status": "interrupted", "host": {"hostname": "x"},
        "options": {"models": ["ncf"], "backends": ["torch-cuda"], "batch_sizes": [1], "scale": "tiny"},
        "configs": {}, "exports": {}}))
    code, _, err = run_cli("run", "--resume", str(run_dir))
    assert code == 2 and "cannot resume" in err and "torch-cuda is not available" in err


def test_analyze_refuses_an_unwritable_csv_folder(run_cli, tmp_path):
    code, _, err = run_cli("run", "-m", "ncf", "-b", "ort-cpu", "--batch-sizes", "1", "--scale", "tiny",
                           "--exports", str(tmp_path / "e"), "--out", str(tmp_path / "run"), "--min-iters", "1",
                           "--min-seconds", "0", "--quiet")
    assert code == 0, err
    (tmp_path / "file").write_text("")
    code, out, err = run_cli("analyze", str(tmp_path / "run"), "--csv", str(tmp_path / "file" / "csv"))
    assert code == 2 and err.startswith("error: cannot write to") and err.count("\n") == 1
