"""benchmarks/bench_variants.py end to end on tiny models: every registered variant of the chosen kinds
gets a row with its figures, the baseline is among them, failures are recorded (no timing assertions)."""
from __future__ import annotations

import json

import pytest

from benchmarks import bench_variants
from errors import UserError
from gpt_conf import component_flags
from model import GPT
from variations.cost import COUNTS
from variations.registry import names

TINY = ["--n_embd", "32", "--block_size", "16", "--iters", "1", "--warmup", "0", "--device", "cpu",
        "--threads", "1"]  # one thread: a shared 2-core machine oversubscribed by two threads is erratic


def test_every_variant_of_the_kinds_has_a_row(tmp_path):
    out = tmp_path / "variants.json"
    result = bench_variants.main([*TINY, "--kinds", "softmax", "norm", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result, default=str))
    assert list(data["kinds"]) == ["softmax", "norm"]
    env = data["environment"]
    assert env["torch"] and env["device"] == "cpu" and env["device_name"] and env["date"]
    assert env["command"].startswith("python benchmarks/bench_variants.py")
    s = data["settings"]
    assert s["n_embd"] == 32 and s["block_size"] == 16 and s["tokens_per_step"] == s["batch_size"] * 16

    for kind in ("softmax", "norm"):
        table = data["kinds"][kind]
        assert table["flag"] == component_flags(kind)[0]
        rows = {r["variant"]: r for r in table["rows"] if not r["reference"]}
        assert sorted(rows) == names(kind)  # read from the registry, nothing left out or added
        baseline = [r for r in rows.values() if r["baseline"]]
        assert [r["variant"] for r in baseline] == [table["baseline"]]
        assert table["rows"][0]["baseline"]  # the baseline comes first
        for name, r in rows.items():
            assert r["status"] == "ok", (kind, name, r["error"])
            assert r["flag"] == f"--{table['flag']} {name}"
            assert r["median_ms"] > 0 and r["tokens_per_s"] > 0 and len(r["times_ms"]) == 1
            assert r["time_ratio"] > 0 and r["saved_activation_ratio"] > 0
            assert r["saved_activation_bytes"] > 0
            assert r["peak_memory_bytes"] is None and r["peak_memory_ratio"] is None  # CPU: n/a
            total = r["cost"]["total"]
            assert set(total) == set(COUNTS)
            assert total["macs"] > 0 and total["params"] == r["params"] > 0
            assert {"attention", "mlp", "norms", "lm_head"} <= set(r["cost"]["by_part"])
        base = baseline[0]
        assert base["time_ratio"] == 1.0 and base["saved_activation_ratio"] == 1.0

    # softmax: the baseline on attention's explicit path, and every row's time over it
    refs = [r for r in data["kinds"]["softmax"]["rows"] if r["reference"]]
    assert len(refs) == 1 and refs[0]["status"] == "ok" and refs[0]["median_ms"] > 0
    assert all(r["time_ratio_vs_reference"] > 0 for r in data["kinds"]["softmax"]["rows"])


def test_saved_activation_bytes_match_a_hand_count():
    """Plain softmax attention keeps no T x T matrix for backward (fused SDPA); the explicit path keeps
    the weights (B, n_head, T, T) in fp32 at least once, so its saved bytes exceed the fused path's by that."""
    args = bench_variants.parse_args([*TINY, "--n_layer", "1", "--n_head", "2"])
    bench = bench_variants.Bench(args, bench_variants.choose_device("cpu", None), bench_variants.torch.float32)
    cfg = bench_variants.GPTConfig(**bench.sizes)
    fused = bench.build(cfg)
    explicit = bench.build(cfg)
    explicit.transformer.h[0].attn.use_sdpa = False
    saved_fused, peak = bench.memory(fused)
    saved_explicit, _ = bench.memory(explicit)
    assert peak is None
    weights = args.batch_size * 2 * args.block_size ** 2 * 4  # (B, nh, T, T) fp32
    assert saved_explicit - saved_fused >= weights


def test_a_failing_variant_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    real_names, real_build = bench_variants.names, bench_variants.Bench.build
    monkeypatch.setattr(bench_variants, "names",
                        lambda kind: real_names(kind) + (["no_such_norm"] if kind == "norm" else []))

    def build(self, config):  # rmsnorm builds, then fails in its forward pass
        model = real_build(self, config)
        if config.norm_variant == "rmsnorm":
            def broken(*a, **k):
                raise RuntimeError("broken on purpose\nsecond line")
            model.forward = broken
        return model
    monkeypatch.setattr(bench_variants.Bench, "build", build)

    out = tmp_path / "v.json"
    result = bench_variants.main([*TINY, "--kinds", "norm", "--json", str(out)])
    rows = {r["variant"]: r for r in result["kinds"]["norm"]["rows"]}
    assert rows["no_such_norm"]["status"] == "error" and rows["no_such_norm"]["error"].startswith("build: ")
    assert "no_such_norm" in rows["no_such_norm"]["error"]
    assert rows["rmsnorm"]["status"] == "error"
    assert rows["rmsnorm"]["error"] == "run: RuntimeError: broken on purpose"
    assert rows["layernorm"]["status"] == "ok" and rows["layernorm"]["median_ms"] > 0
    saved = {r["variant"]: r for r in json.loads(out.read_text())["kinds"]["norm"]["rows"]}
    assert saved["rmsnorm"]["error"] == rows["rmsnorm"]["error"] and saved["rmsnorm"]["traceback"]


@pytest.mark.parametrize("argv,message", [
    (["--kinds", "softmx"], "did you mean 'softmax'"),
    (["--n_embd", "30", "--n_head", "4"], "not divisible"),
    (["--iters", "0"], "--iters must be at least 1"),
])
def test_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        bench_variants.main([*TINY, *argv])


def test_model_is_the_baseline_but_for_one_flag():
    """make_entries changes only the kind's flag: every other component stays at its default."""
    args = bench_variants.parse_args([*TINY, "--n_layer", "1"])
    bench = bench_variants.Bench(args, bench_variants.choose_device("cpu", None), bench_variants.torch.float32)
    entries = bench_variants.make_entries("position", bench)
    base = bench_variants.GPTConfig(**bench.sizes).to_dict()
    for e in entries:
        assert isinstance(e.model, GPT)
        diff = {k for k, v in e.model.config.to_dict().items() if v != base[k]}
        assert diff <= {"position_variant"}
