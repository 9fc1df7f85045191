"""analysis/ptq.py and analysis/int_export.py: the weight grid against its formula per channel, 32 bits equal
to the unquantised model exactly, a sweep's JSON and PNG with every group and width, max calibration of
every activation site, the integer export's exact round trip (symmetric / affine x per_channel / per_tensor),
--bits_for touching only what it matches, and bad input as a one-line UserError that writes nothing."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import train
from analysis import int_export, ptq
from errors import UserError
from model import GPT
from run_dir import load_run
from variations.act_quant import SITES, site_modules

from conftest import run_script, tiny_config

FAST = ["--device", "cpu", "--eval_iters", "2", "--calib_batches", "2"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two busy cores: one intra-op thread is several times faster than two fighting for them."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def train_run(char_data, out, *flags):
    train.main(["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--out_dir", str(out),
                "--threads", "1", *flags])
    return out


@pytest.fixture(scope="module")
def run(char_data, tmp_path_factory):
    return train_run(char_data, tmp_path_factory.mktemp("ptq") / "run", "--max_iters", "20")


@pytest.fixture(scope="module")
def relumax_run(char_data, tmp_path_factory):  # a normaliser without exp_input, numerator, denominator sites
    return train_run(char_data, tmp_path_factory.mktemp("ptq") / "relumax", "--max_iters", "1",
                     "--softmax_variant_attn", "relumax")


@pytest.fixture(scope="module")
def qat_run(char_data, tmp_path_factory):  # trained with an activation site of its own (per token)
    return train_run(char_data, tmp_path_factory.mktemp("ptq") / "qat", "--max_iters", "1", "--act_bits_scores", "8")


def session(run, **kw) -> ptq.PTQ:
    """The PTQ of `run` as main builds it with FAST (same calibration and evaluation batches)."""
    model, tok, ckpt = load_run(run, "best", "cpu")
    return ptq.PTQ(model, ckpt["train_config"], tok, torch.device("cpu"), 2, 2, **kw)


# ------------------------------------------------------------------------ weights
@pytest.mark.parametrize("scheme", ["symmetric", "affine"])
def test_weight_grid_per_channel_matches_the_formula(scheme):
    torch.manual_seed(0)
    model = GPT(tiny_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = ptq.quantisable_weights(model)
    assert weights["transformer.wte.weight"] == ["transformer.wte.weight", "lm_head.weight"]  # tied: one tensor
    assert all(before[n].dim() == 2 for n in weights)
    plan = ptq.weight_plan(weights, 4)
    ptq.quantise_weights(model, plan, scheme, "per_channel")
    after = model.state_dict()
    for name in plan:
        for w, got in zip(before[name], after[name]):  # one grid per output channel (row)
            if scheme == "symmetric":  # s = max|w| / 7, q = clamp(round(w / s), -8, 7)
                s = w.abs().max() / 7
                q = torch.clamp(torch.round(w / s), -8, 7)
                expected = q * s
            else:  # s = (hi - lo) / 15, z = round(-lo / s), q = clamp(round(w / s) + z, 0, 15)
                lo, hi = w.min().clamp(max=0), w.max().clamp(min=0)
                s = (hi - lo) / 15
                z = torch.round(-lo / s)
                q = torch.clamp(torch.round(w / s) + z, 0, 15)
                expected = (q - z) * s
            assert torch.equal(got, expected), name
            assert len(torch.unique(got)) <= 16
    for name, t in after.items():  # norms (1-D) untouched; the head is the quantised embedding
        if name not in plan and name != "lm_head.weight":
            assert torch.equal(t, before[name]), name
    assert torch.equal(after["lm_head.weight"], after["transformer.wte.weight"])


def test_weight_plan_patterns_last_match_wins():
    weights = ptq.quantisable_weights(GPT(tiny_config()))
    plan = ptq.weight_plan(weights, 32, (("*", 6), ("*.c_fc.*", 3), ("lm_head.weight", 8), ("*.c_proj.*", 32)))
    assert plan["transformer.wte.weight"] == 8  # matched through its tied name
    assert plan["transformer.h.0.mlp.c_fc.weight"] == 3 and plan["transformer.h.1.attn.c_attn.weight"] == 6
    assert not any("c_proj" in n for n in plan)  # 32: full precision


def test_bits_for_changes_only_matching_tensors(run):
    pattern = "transformer.h.*.attn.*"
    result = ptq.main(["--out_dir", str(run), "--bits_for", f"{pattern}=4", *FAST])
    attn = {f"transformer.h.{i}.attn.{p}.weight" for i in range(2) for p in ("c_attn", "c_proj")}
    assert result["quantised"]["weights"] == {n: 4 for n in attn}
    s = session(run)
    model, plan = s.build(ptq.Spec(bits_for=((pattern, 4),)))
    assert set(plan) == attn
    for name, t in model.state_dict().items():
        assert torch.equal(t, s.state[name]) == (name not in plan), name


# ------------------------------------------------------------------------ evaluation and the sweep
def test_32_bits_is_the_unquantised_model_exactly(run):
    result = ptq.main(["--out_dir", str(run), "--weight_bits", "32", "--act_bits", "32", *FAST])
    fp = result["full_precision"]["loss"]
    assert result["quantised"]["loss"] == fp and result["quantised"]["weights"] == {}
    s = session(run)  # the run's model as load_run gives it, on the same batches
    assert ptq.evaluate_loss(s.base, s.val) == fp
    model, plan = s.build(ptq.Spec())
    assert plan == {} and not site_modules(model) and s.loss(model) == fp
    assert result["full_precision"]["perplexity"] == pytest.approx(math.exp(fp))


def test_sweep_writes_json_and_png_with_every_group_and_width(run):
    result = ptq.main(["--out_dir", str(run), "--sweep", *FAST])
    json_path, png_path = run / "ptq_sweep.json", run / "ptq_sweep.png"
    data = json.loads(json_path.read_text())
    widths = [32, 16, 8, 6, 4, 3, 2]
    assert data["settings"]["sweep"] == widths and data["json"] == str(json_path)
    assert [(p["group"], p["bits"]) for p in data["points"]] == [(g, b) for b in widths for g in ptq.GROUPS]
    fp = data["full_precision"]["loss"]
    assert all(p["loss"] == fp for p in data["points"] if p["bits"] == 32)
    assert all(math.isfinite(p["loss"]) for p in data["points"])
    assert data["groups"]["activations"]["sites"] == list(SITES)
    assert data["groups"]["normaliser"]["sites"] == ["scores", "exp_input", "numerator", "denominator", "probs"]
    assert data["command"].startswith("python analysis/ptq.py --out_dir") and "--sweep" in data["command"]
    assert png_path.read_bytes()[:8] == PNG_MAGIC
    print("\n" + "\n".join(f"{p['group']:>12} {p['bits']:>2} bits: loss {p['loss']:.4f} ({p['delta_loss']:+.4f})"
                           for p in result["points"]))
    json_path.unlink()
    png_path.unlink()


def test_sweep_skips_the_groups_a_run_lacks(relumax_run, tmp_path):
    result = ptq.main(["--out_dir", str(relumax_run), "--sweep", "32,4", *FAST, "--json", str(tmp_path / "s.json"),
                       "--plot", str(tmp_path / "curve.png")])
    assert result["groups"]["normaliser"]["sites"] == ["scores", "probs"]  # relumax has no internal sites
    assert "denominator" not in result["groups"]["activations"]["sites"]
    assert (tmp_path / "curve.png").read_bytes()[:8] == PNG_MAGIC and (tmp_path / "s.json").is_file()


def test_a_run_trained_with_activation_sites_gets_weight_ptq_only(qat_run, tmp_path):
    result = ptq.main(["--out_dir", str(qat_run), "--sweep", "32,4", *FAST, "--json", str(tmp_path / "s.json")])
    assert result["groups"]["weights"]["skipped"] is None
    assert all("trained with activation sites (scores)" in result["groups"][g]["skipped"]
               for g in ("activations", "normaliser", "all"))
    assert {p["group"] for p in result["points"]} == {"weights"}
    result = ptq.main(["--out_dir", str(qat_run), "--weight_bits", "6", "--export", str(tmp_path / "int"), *FAST])
    assert result["export"]["logits_equal"]  # its own per-token sites travel in the config
    with pytest.raises(UserError, match="trained with activation quantisation"):
        ptq.main(["--out_dir", str(qat_run), "--act_bits", "8", *FAST])


def test_activation_ptq_calibrates_every_site(run):
    s = session(run)
    sites = tuple(s.available("activations"))
    assert sites == tuple(SITES)  # softmax has every site
    model, _ = s.build(ptq.Spec(act_bits=8, act_sites=sites))
    modules = site_modules(model)
    assert sorted(m.site for m in modules.values()) == sorted(list(SITES) * model.config.n_layer)
    for name, m in modules.items():
        assert m.granularity == "per_tensor" and bool(m.seen) and not m.calibrating, name
        assert m.lo < m.hi, name  # the raw min and max (the row sum's are >= 1)
    # max calibration: the first site's range is the min and max of the full-precision tensor there
    seen = []
    hook = s.base.transformer.h[0].ln_1.register_forward_hook(lambda mod, inp, out: seen.append(out))
    with torch.no_grad():
        for x, _ in s.calib:
            s.base(x)
    hook.remove()
    first = modules["transformer.h.0.aq.quant.attn_input"]
    assert first.lo.item() == min(t.min().item() for t in seen) and first.hi.item() == max(t.max().item() for t in seen)
    assert math.isfinite(s.loss(model))


# ------------------------------------------------------------------------ integer export
@pytest.mark.parametrize("scheme,granularity,bits", [("symmetric", "per_channel", 4), ("affine", "per_channel", 8),
                                                     ("symmetric", "per_tensor", 12), ("affine", "per_tensor", 3)])
def test_export_round_trip_is_exact(run, tmp_path, scheme, granularity, bits):
    dest = tmp_path / "int"
    result = ptq.main(["--out_dir", str(run), "--weight_bits", str(bits), "--weight_scheme", scheme,
                       "--weight_granularity", granularity, "--act_bits", "8", "--act_sites", "scores,probs",
                       "--export", str(dest), *FAST])
    assert result["export"]["logits_equal"]
    quant = json.loads((dest / int_export.QUANT_FILE).read_text())
    tensors = load_file(dest / int_export.WEIGHTS_FILE)
    wte = quant["tensors"]["transformer.wte.weight"]
    assert wte["aliases"] == ["lm_head.weight"] and "lm_head.weight" not in tensors
    assert (wte["bits"], wte["scheme"], wte["granularity"]) == (bits, scheme, granularity)
    assert wte["int_dtype"] == ("int8" if bits <= 8 else "int16") and (wte["zero_point"] is None) == (scheme == "symmetric")
    q = tensors["transformer.wte.weight"]
    assert q.dtype == getattr(torch, wte["int_dtype"]) and -2 ** (bits - 1) <= q.min() and q.max() <= 2 ** (bits - 1) - 1
    scale = tensors["transformer.wte.weight.scale"]
    assert scale.dtype == torch.float32 and scale.shape == ((q.shape[0],) if granularity == "per_channel" else ())
    assert tensors["transformer.ln_f.weight"].dtype == torch.float32 and not quant["tensors"]["transformer.ln_f.weight"]["quantised"]
    assert quant["formula"] == "x = (q - z) * s" and quant["model_config"]["act_bits_scores"] == [8]

    s = session(run, weight_scheme=scheme, weight_granularity=granularity)  # built here, independently
    fake, _ = s.build(ptq.Spec(weight_bits=bits, act_bits=8, act_sites=("scores", "probs")))
    state = int_export.load_int_export(dest)
    name = "transformer.h.0.attn.c_attn.weight"  # x = (q - z) * s by hand
    d = quant["tensors"][name]
    s_ = tensors[d["scale"]].reshape(-1, 1) if granularity == "per_channel" else tensors[d["scale"]]
    z = tensors[d["zero_point"]].float().reshape(s_.shape) if d["zero_point"] else 0.0
    assert torch.equal((tensors[name].float() - z) * s_, state[name])
    for key, t in fake.state_dict().items():
        assert torch.equal(state[key], t), key
    rebuilt = int_export.build_model(dest)
    x = s.val[0][0]
    with torch.no_grad():
        assert torch.equal(fake(x, all_logits=True)[0], rebuilt(x, all_logits=True)[0])


def test_export_checksum_catches_mixed_files(run, tmp_path):
    dest = tmp_path / "int"
    ptq.main(["--out_dir", str(run), "--weight_bits", "8", "--export", str(dest), *FAST])
    data = bytearray((dest / int_export.WEIGHTS_FILE).read_bytes())
    data[-1] ^= 1
    (dest / int_export.WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum"):
        int_export.load_int_export(dest)


# ------------------------------------------------------------------------ bad input
BAD = {
    "bits_low": (["--weight_bits", "1"], "--weight_bits must be bits from 2 to 16"),
    "bits_high": (["--act_bits", "17"], "--act_bits must be bits"),
    "bits_word": (["--weight_bits", "eight"], "--weight_bits"),
    "sweep_bits": (["--sweep", "32,8,1"], "--sweep must be bits"),
    "unknown_site": (["--act_bits", "8", "--act_sites", "scorez"], "did you mean 'scores'"),
    "pattern": (["--bits_for", "transformer.h.*.nope=4"], "'transformer.h.*.nope' matches no weight matrix"),
    "norm_pattern": (["--bits_for", "*.ln_1.*=4"], "matches no weight matrix (names: transformer.wte.weight"),
    "pattern_syntax": (["--bits_for", "lm_head.weight"], "PATTERN=BITS"),
    "sites_without_bits": (["--act_sites", "scores"], "--act_sites needs --act_bits"),
    "plot_without_sweep": (["--plot", "PLOT"], "--plot draws a sweep"),
    "sweep_and_export": (["--sweep", "--export", "EXPORT"], "drop --export"),
    "sweep_and_bits": (["--sweep", "--weight_bits", "8"], "drop --weight_bits"),
    "eval_iters": (["--eval_iters", "0"], "--eval_iters must be at least 1"),
    "threads": (["--threads", "0"], "--threads must be at least 1"),
}


def files_under(*folders) -> list:
    return sorted(str(p) for f in folders for p in f.rglob("*"))


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, case):
    args, message = BAD[case]
    args = [str(tmp_path / a) if a in ("PLOT", "EXPORT") else a for a in args]
    before = files_under(run, tmp_path)
    with pytest.raises(UserError) as e:
        ptq.main(["--out_dir", str(run), *FAST, *args, "--json", str(tmp_path / "out.json")])
    assert message in str(e.value) and "\n" not in str(e.value)
    assert files_under(run, tmp_path) == before


def test_bad_runs_and_sites(relumax_run, tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    cases = [(["--out_dir", str(tmp_path)], "is not a ppa-gpt run"),
             (["--out_dir", str(tmp_path / "missing")], "not found"),
             (["--out_dir", str(relumax_run), "--act_bits", "8", "--act_sites", "scores,denominator"],
              "--act_sites denominator: no layer of this run has that site"),
             (["--out_dir", str(relumax_run), "--weight_bits", "8", "--export", str(tmp_path / "notes.txt")],
              "is a file, not a folder")]
    before = files_under(relumax_run, tmp_path)
    for args, message in cases:
        with pytest.raises(UserError) as e:
            ptq.main([*FAST, *args, "--json", str(tmp_path / "out.json")])
        assert message in str(e.value) and "\n" not in str(e.value)
    assert files_under(relumax_run, tmp_path) == before


def test_cli_reports_one_line(run):
    proc = run_script("analysis/ptq.py", "--out_dir", str(run), "--weight_bits", "99")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: --weight_bits")
