"""analysis/checkpoint_stats.py: statistics equal direct torch computations on the state dict, histograms,
comparison (itself: cosine 1, angle 0; another run: the direct cosine; missing and reshaped tensors), errors."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from analysis import checkpoint_stats
from errors import UserError
from test_inspect_ckpts import runs_root  # noqa: F401  (the three tiny runs a, b, c)


def state_dict(run_dir, which="best"):
    return torch.load(run_dir / f"ckpt_{which}.pt", weights_only=True)["model"]


def test_tensor_stats_by_hand():
    s = checkpoint_stats.tensor_stats(torch.tensor([1.0, 2.0, 3.0, 4.0]), zero_threshold=1.5)
    # mean 2.5; central moments m2 = 1.25, m4 = (2 * 1.5^4 + 2 * 0.5^4) / 4 = 2.5625
    assert s["shape"] == [4] and s["numel"] == 4 and s["mean"] == 2.5 and (s["min"], s["max"]) == (1.0, 4.0)
    assert s["std"] == pytest.approx(math.sqrt(5 / 3)) and s["l2_norm"] == pytest.approx(math.sqrt(30))
    assert s["kurtosis"] == pytest.approx(2.5625 / 1.25 ** 2 - 3) and s["frac_small"] == 0.25
    rel = checkpoint_stats.tensor_stats(torch.tensor([1.0, 2.0, 3.0, 4.0]), zero_threshold=0.5, relative=True)
    assert rel["frac_small"] == 0.25  # |w| < 0.5 * rms = 0.5 * sqrt(7.5) = 1.37
    const = checkpoint_stats.tensor_stats(torch.ones(3))
    assert const["kurtosis"] is None and const["std"] == 0.0
    one = checkpoint_stats.tensor_stats(torch.tensor(2.0))
    assert one["shape"] == [] and one["std"] is None and one["kurtosis"] is None


def test_stats_equal_torch_on_the_state_dict(runs_root, tmp_path, capsys):  # noqa: F811
    run = runs_root / "c"
    result = checkpoint_stats.main([str(run), "--csv", str(tmp_path / "s.csv"), "--json", str(tmp_path / "s.json")])
    weights = state_dict(run)
    assert result["checkpoint"] == str(run / "ckpt_best.pt") and list(result["stats"]) == list(weights)
    for name, t in weights.items():
        s, x = result["stats"][name], t.double().flatten()
        assert s["shape"] == list(t.shape) and s["numel"] == t.numel()
        assert s["mean"] == pytest.approx(x.mean().item(), rel=1e-12, abs=1e-15)
        assert (s["min"], s["max"]) == (t.min().item(), t.max().item())
        assert s["l2_norm"] == pytest.approx(torch.norm(t.double()).item(), rel=1e-12)
        assert s["frac_small"] == (t.abs() < 1e-3).sum().item() / t.numel()
        if t.numel() > 1:
            assert s["std"] == pytest.approx(torch.std(x).item(), rel=1e-12)
            kurt = ((x - x.mean()) ** 4).mean() / x.var(unbiased=False) ** 2 - 3
            assert s["kurtosis"] == pytest.approx(kurt.item(), rel=1e-9)
    assert any(t.numel() == 1 for t in weights.values())  # consmax's scalars: std and kurtosis undefined
    assert "transformer.h.0.attn.c_attn.weight" in capsys.readouterr().out

    assert json.loads((tmp_path / "s.json").read_text())["stats"] == result["stats"]
    with open(tmp_path / "s.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["tensor"] for t in table] == list(weights)
    for t in table:
        s = result["stats"][t["tensor"]]
        assert t["shape"] == "x".join(map(str, s["shape"])) and float(t["l2_norm"]) == s["l2_norm"]
        assert (float(t["kurtosis"]) if t["kurtosis"] else None) == s["kurtosis"]


def test_filter_relative_threshold_and_histograms(runs_root, tmp_path):  # noqa: F811
    run = runs_root / "a"
    result = checkpoint_stats.main([str(run), "--ckpt", "last", "--filter", r"mlp\.c_fc", "--zero_threshold", "0.1",
                                    "--relative", "--histograms", str(tmp_path / "hist")])
    weights = state_dict(run, "last")
    names = [n for n in weights if "mlp.c_fc" in n]
    assert list(result["stats"]) == names and result["checkpoint"].endswith("ckpt_last.pt")
    for n in names:
        t = weights[n]
        rms = t.double().pow(2).mean().sqrt()
        assert result["stats"][n]["frac_small"] == (t.double().abs() < 0.1 * rms).double().mean().item()
    pngs = sorted((tmp_path / "hist").iterdir())
    assert [p.name for p in pngs] == sorted(f"{n}.png" for n in names) == sorted(
        p.split("/")[-1] for p in result["histograms"])
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_compare_with_itself_and_another_run(runs_root, tmp_path):  # noqa: F811
    same = checkpoint_stats.main([str(runs_root / "a"), "--compare", str(runs_root / "a" / "ckpt_best.pt")])
    rows = same["compare"]["rows"]
    assert list(rows) == list(state_dict(runs_root / "a"))
    assert all(r["cosine"] == pytest.approx(1.0, abs=1e-12) and r["angle_deg"] == 0.0 and r["rel_l2_diff"] == 0.0
               for r in rows.values())

    a, c = state_dict(runs_root / "a"), state_dict(runs_root / "c")
    other = checkpoint_stats.main([str(runs_root / "a"), "--compare", str(runs_root / "c"),
                                   "--csv", str(tmp_path / "cmp.csv")])["compare"]
    assert other["only_in_a"] == [] and other["only_in_b"] == [k for k in c if k not in a]  # consmax's beta, gamma
    assert other["only_in_b"] and other["shape_mismatch"] == {} and list(other["rows"]) == list(a)
    for name, r in other["rows"].items():
        x, y = a[name].double().flatten(), c[name].double().flatten()
        cos = torch.nn.functional.cosine_similarity(x, y, dim=0).item()
        assert r["cosine"] == pytest.approx(cos, abs=1e-12)
        assert r["angle_deg"] == pytest.approx(math.degrees(math.acos(min(1.0, cos))), abs=1e-4)
        assert r["rel_l2_diff"] == pytest.approx((torch.norm(x - y) / torch.norm(x)).item(), rel=1e-12)
    with open(tmp_path / "cmp.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["tensor"] for t in table] == list(a)
    assert [float(t["cosine"]) for t in table] == [other["rows"][t["tensor"]]["cosine"] for t in table]


def test_compare_lists_reshaped_and_missing_tensors(runs_root, tmp_path):  # noqa: F811
    ckpt = torch.load(runs_root / "a" / "ckpt_best.pt", weights_only=True)
    name = "transformer.h.0.mlp.c_fc.weight"
    ckpt["model"][name] = ckpt["model"][name][:64]  # (64, 32) instead of (128, 32)
    ckpt["model"]["extra.mask"] = torch.ones(3, dtype=torch.bool)  # not floating point: skipped in stats
    del ckpt["model"]["transformer.ln_f.weight"]
    torch.save(ckpt, tmp_path / "edited.pt")
    result = checkpoint_stats.main([str(tmp_path / "edited.pt"), "--compare", str(runs_root / "a")])
    cmp = result["compare"]
    assert cmp["shape_mismatch"] == {name: [[64, 32], [128, 32]]}
    assert cmp["only_in_a"] == ["extra.mask"] and cmp["only_in_b"] == ["transformer.ln_f.weight"]
    assert name not in cmp["rows"] and len(cmp["rows"]) == len(ckpt["model"]) - 2
    assert result["skipped"] == ["extra.mask"] and "extra.mask" not in result["stats"]


def test_errors(runs_root, tmp_path):  # noqa: F811
    bad = tmp_path / "ckpt_best.pt"
    bad.write_bytes(b"PK\x03\x04 truncated" * 7)
    with pytest.raises(UserError, match=r"^checkpoint .*ckpt_best.pt is corrupt or truncated"):
        checkpoint_stats.main([str(bad)])
    with pytest.raises(UserError, match="corrupt or truncated"):
        checkpoint_stats.main([str(runs_root / "a"), "--compare", str(tmp_path)])  # a run dir holding it
    with pytest.raises(UserError, match="does not exist"):
        checkpoint_stats.main([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"^no checkpoint at .*empty/ckpt_best.pt"):
        checkpoint_stats.main([str(tmp_path / "empty")])
    with pytest.raises(UserError, match=r"--filter '\[' is not a valid regular expression"):
        checkpoint_stats.main([str(runs_root / "a"), "--filter", "["])
    with pytest.raises(UserError, match="no floating-point tensor of .* matches --filter 'nothing'"):
        checkpoint_stats.main([str(runs_root / "a"), "--filter", "nothing"])
    with pytest.raises(UserError, match="--zero_threshold must be a number >= 0"):
        checkpoint_stats.main([str(runs_root / "a"), "--zero_threshold", "-1"])
