"""run_dir.py: the run directory's file names, reading a run, the summary schema, and a checkpoint
written by an earlier version of the project (tests/fixtures/run_v0) that must keep loading."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import run_dir
from errors import UserError
from run_dir import RunDir, load_run, resolve_checkpoint

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_v0"


def test_a_checkpoint_written_by_the_previous_version_still_loads_and_computes_the_same_logits():
    """run_v0 was trained by ppa-gpt main at d118a6c (before run_dir.py); its weights, config and
    tokenizer must load, and the model must give the logits recorded then (expected.json)."""
    expected = json.loads((FIXTURE / "expected.json").read_text())
    model, tok, ckpt = load_run(FIXTURE)  # best -> falls back to ckpt_last.pt (the fixture has no best)
    assert ckpt["iter_num"] == 4 and model.config.softmax_variant_attn == "consmax"
    x = torch.tensor([tok.encode(expected["prompt"])])
    with torch.no_grad():
        logits, _ = model(x, all_logits=True)
    assert float(logits.double().sum()) == pytest.approx(expected["logits_sum"], rel=1e-5)
    torch.testing.assert_close(logits[0, 0, :8], torch.tensor(expected["logits_first"]), rtol=0, atol=1e-5)


def test_checkpoint_choice_falls_back_from_best_to_last(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoint_path("best") == tmp_path / run_dir.CKPT_BEST  # neither exists: best is named
    (tmp_path / run_dir.CKPT_LAST).write_bytes(b"x")
    assert run.checkpoint_path("best") == tmp_path / run_dir.CKPT_LAST
    assert run.latest_checkpoint_path() == tmp_path / run_dir.CKPT_LAST
    (tmp_path / run_dir.CKPT_BEST).write_bytes(b"x")
    assert run.checkpoint_path("best") == tmp_path / run_dir.CKPT_BEST
    assert run.checkpoint_path("last") == tmp_path / run_dir.CKPT_LAST
    with pytest.raises(UserError, match="unknown checkpoint 'latest'; valid: best, last"):
        run.checkpoint_path("latest")


def test_resolve_checkpoint_takes_a_file_or_a_run_directory(tmp_path):
    assert resolve_checkpoint(FIXTURE) == FIXTURE / run_dir.CKPT_LAST
    assert resolve_checkpoint(FIXTURE / run_dir.CKPT_LAST) == FIXTURE / run_dir.CKPT_LAST
    with pytest.raises(UserError, match="does not exist; give a run directory or a checkpoint file"):
        resolve_checkpoint(tmp_path / "nope")


def test_load_run_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="run directory .* not found; train one with"):
        load_run(tmp_path / "missing")
    with pytest.raises(UserError, match="no checkpoint at"):
        load_run(tmp_path)


def test_the_summary_schema_is_what_train_writes():
    """Writers go through check_summary: the keys train.py writes are exactly the declared ones."""
    summary = json.loads((FIXTURE / run_dir.SUMMARY).read_text())
    assert set(summary) < set(run_dir.summary_keys())  # an older summary: a subset (readers use .get)
    # the keys added since the fixture was written
    summary.update(learned_constants={}, threads=1, error=None, exp2_per_token=0, weights_per_token=0,
                   kv_read_per_token=0, kv_write_per_token=0, eval_tokens=None, provenance=None,
                   **dict.fromkeys(run_dir.ppa_summary_keys()))
    assert list(run_dir.check_summary(summary)) == run_dir.summary_keys()
    with pytest.raises(KeyError, match="extra \\['bogus'\\]"):
        run_dir.check_summary({**summary, "bogus": 1})
    numeric = run_dir.numeric_summary_keys()
    assert {"best_val_loss", "num_params", "macs_per_token", "exp_per_token", "cost_params",
            "energy_pj_per_token_decode", "latency_us_per_token_decode", "area_mm2"} <= set(numeric)
    assert not {"status", "device", "dtype", "ppa_target", "ppa_format"} & set(numeric)
    assert all(isinstance(summary[k], (int, float)) or summary[k] is None for k in numeric)


def test_clear_results_keeps_settings_and_removes_results(tmp_path):
    run = RunDir(tmp_path)
    for name in (*run_dir.RESULT_FILES, run_dir.CONFIG):
        (tmp_path / name).write_text("{}")
    (tmp_path / run_dir.TENSORBOARD).mkdir()
    run.clear_results()
    assert sorted(p.name for p in tmp_path.iterdir()) == [run_dir.CONFIG]


def test_reading_json_files(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_json_or_none(run_dir.SUMMARY) is None
    (tmp_path / run_dir.SUMMARY).write_text("{not json")
    assert run.read_json_or_none(run_dir.SUMMARY) is None
    with pytest.raises(UserError, match="run summary .* cannot be read as JSON"):
        run.read_summary()
    run.write_meta({"tokenizer": "char", "data_dir": "/somewhere/private"})
    assert run.read_meta() == {"tokenizer": "char"}  # the data set's path stays out of the run
