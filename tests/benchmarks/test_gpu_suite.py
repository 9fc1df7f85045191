"""benchmarks/gpu_suite.py: --cpu_smoke runs every stage's code path on CPU (a failure injected into one
stage is recorded and the others go on), stages that do not fit the budget are skipped with the reason,
and the command lines meant for a GPU parse with the scripts they call. No timing assertions."""
from __future__ import annotations

import json
import shlex

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

import train_args  # noqa: E402
from benchmarks import bench_attention, bench_decode, bench_softmax, bench_train, gpu_suite  # noqa: E402
from conftest import run_script  # noqa: E402
from errors import UserError  # noqa: E402


@pytest.mark.slow
def test_cpu_smoke_runs_every_stage_and_records_a_failure(tmp_path):
    out = tmp_path / "suite.json"
    proc = run_script("benchmarks/gpu_suite.py", "--cpu_smoke", "--json", str(out), "--fail_stage", "decode",
                      timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]  # a stage failed
    result = json.loads(out.read_text())
    stages = result["stages"]
    assert list(stages) == gpu_suite.STAGES and result["mode"] == "cpu_smoke"
    assert result["failed"] == ["decode"]
    decode = stages["decode"]
    assert decode["status"] == "failed" and "failing on purpose" in decode["reason"]
    assert {r["variant"] for r in decode["result"]["rows"]} == {"softmax", "consmax"}  # it ran first
    for name, rec in stages.items():
        assert name == "decode" or rec["status"] == "ok", (name, rec["reason"])
        assert rec["seconds"] > 0 and rec["result"]

    tests = stages["pytest"]["result"]
    assert tests["tests"] == tests["passed"] > 0 and tests["workers"] == 2
    assert all(s["exit_code"] == 0 for s in tests["shards"])
    assert {r["variant"] for r in stages["softmax"]["result"]["rows"]} == {"softmax", "consmax"}
    assert all(r["fused_ms"] > 0 for r in stages["softmax"]["result"]["rows"])  # the kernels ran (interpreted)
    assert all(r["fused_ms"] > 0 for r in stages["attention"]["result"]["rows"])
    train = stages["train"]["result"]
    for variant, kernel in (("softmax", "torch"), ("consmax", "triton")):
        assert train[variant]["ours"]["median"]["tokens_per_s"] > 0
        assert train[variant]["settings"]["model"]["softmax_variant_attn"] == variant
        assert train[variant]["ours"]["runs"][0]["summary"]["softmax_kernel"] == kernel
    repro = stages["repro"]["result"]
    assert repro["reference_val_loss"] == gpu_suite.NANOGPT_CHAR_VAL_LOSS
    assert all(repro[v]["status"] == "completed" and repro[v]["best_val_loss"] > 0 for v in ("softmax", "consmax"))

    env = result["environment"]
    for key in ("date", "command", "torch", "triton", "python", "source_sha256", "cpu_model"):
        assert env[key], key
    assert "git_commit" in env and env["command"].startswith("python benchmarks/gpu_suite.py --cpu_smoke")
    assert {t["name"] for t in result["targets"]} >= {"softmax_bandwidth", "attention_5x_materialised",
                                                       "attention_memory_linear", "mfu_consmax", "kv_cache_softmax"}
    assert all(t["met"] in (True, False, None) for t in result["targets"])
    assert all(c["stage"] in stages for c in result["commands"])
    assert (tmp_path / "suite" / "pytest_0.xml").is_file()  # work folder: --json without its suffix

    md = out.with_suffix(".md").read_text()
    assert "CPU smoke run" in md and "## Stages" in md and "## Targets" in md
    assert "| decode | bench_decode" in md and "| failed |" in md
    for title in ("bench_softmax", "bench_attention", "bench_train", "nanoGPT shakespeare_char"):
        assert f"## {title}" in md


def test_stages_that_do_not_fit_are_skipped_with_the_reason(tmp_path):
    out = tmp_path / "s.json"
    result = gpu_suite.main(["--cpu_smoke", "--budget_s", "1", "--stages", "softmax", "repro", "--skip_repro",
                             "--json", str(out)])
    reasons = {name: (rec["status"], rec["reason"]) for name, rec in result["stages"].items()}
    assert reasons["pytest"] == ("skipped", "not in --stages")
    assert reasons["repro"] == ("skipped", "--skip_repro")
    assert reasons["softmax"][0] == "skipped" and "of --budget_s 1 left" in reasons["softmax"][1]
    assert result["failed"] == [] and json.loads(out.read_text())["stages"] == result["stages"]
    assert "not measured" in out.with_suffix(".md").read_text()


def test_user_errors():
    with pytest.raises(UserError, match="did you mean 'decode'"):
        gpu_suite.main(["--cpu_smoke", "--stages", "decod"])
    if not torch.cuda.is_available():  # the GPU mode on a machine without one
        with pytest.raises(UserError, match="no CUDA device"):
            gpu_suite.main(["--budget_s", "1"])


def test_gpu_command_lines_parse():
    """What runs on the GPU differs from the smoke run only in these flags: each parses with its script."""
    flags = {k: shlex.split(v) for k, v in gpu_suite.FLAGS["gpu"].items()}
    assert bench_softmax.build_parser().parse_args(flags["softmax"]).lengths == [1024, 2048, 4096, 8192]
    assert 2048 in bench_attention.build_parser().parse_args(flags["attention"]).lengths
    decode = bench_decode.build_parser().parse_args(flags["decode"])
    assert decode.prompt_len + decode.new_tokens <= decode.block_size
    train = bench_train.build_parser().parse_args([*flags["train"], "--extra", "x"])
    assert train.preset == "gpt2" and train.compile and train.dtype == "bfloat16"
    for variant, settings in gpu_suite.TRAIN_VARIANTS.items():
        s = train_args.parse_args(["--preset", "gpt2", *flags["train_extra"], "--softmax_variant_attn", variant,
                                   *train_args.settings_to_argv(settings)])
        assert s.train["gradient_accumulation_steps"] == 1 and s.model["softmax_variant_attn"] == variant
    repro = train_args.parse_args(train_args.settings_to_argv(gpu_suite.REPRO["gpu"]))
    assert repro.model["n_layer"] == 6 and repro.train["max_iters"] == 5000 and repro.train["compile"]


def test_a_command_past_the_budget_is_stopped(tmp_path):
    args = gpu_suite.build_parser().parse_args(["--cpu_smoke", "--budget_s", "2", "--work_dir", str(tmp_path)])
    suite = gpu_suite.Suite(args, "cpu_smoke")
    suite.begin("decode")
    with pytest.raises(gpu_suite.StageError, match="sleep: timed out after"):
        suite.run([gpu_suite.PY, "-c", "import time; print('started', flush=True); time.sleep(60)"], "sleep")
    (record,) = suite.commands
    assert record["timed_out"] and record["exit_code"] is None and record["seconds"] < 30
    assert record["stage"] == "decode" and "started" in (tmp_path / "sleep.log").read_text()
