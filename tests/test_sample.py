"""sample.py: rebuild from a run directory alone, deterministic sampling, KV cache on and off, errors."""
from __future__ import annotations

import pytest

import sample
import train
from errors import UserError

from conftest import run_script


@pytest.fixture(scope="module")
def run_dir(char_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train.main(["--preset", "debug", "--dataset", str(char_data), "--out_dir", str(out), "--device", "cpu",
                "--max_iters", "30", "--learning_rate", "3e-3"])
    return out


def test_sample_is_reproducible_and_cache_independent(run_dir, capsys):
    args = ["--out_dir", str(run_dir), "--start", "HAMLET", "--max_new_tokens", "40", "--device", "cpu"]
    a = sample.main(args + ["--seed", "3"])
    b = sample.main(args + ["--seed", "3", "--no-kv_cache"])
    c = sample.main(args + ["--seed", "4"])
    assert a == b and a != c
    assert a[0].startswith("HAMLET") and len(a[0]) == len("HAMLET") + 40
    greedy = sample.main(args + ["--temperature", "0", "--num_samples", "2"])
    assert greedy[0] == greedy[1]
    assert "HAMLET" in capsys.readouterr().out


def test_start_from_file(run_dir, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("To be, or not")
    out = sample.main(["--out_dir", str(run_dir), "--start", f"FILE:{prompt}", "--max_new_tokens", "5",
                       "--top_p", "0.9", "--ckpt", "last", "--device", "cpu"])
    assert out[0].startswith("To be, or not")


def test_sample_errors(run_dir, tmp_path):
    with pytest.raises(UserError, match="run directory .* not found"):
        sample.main(["--out_dir", str(tmp_path / "nope")])
    with pytest.raises(UserError, match="character"):
        sample.main(["--out_dir", str(run_dir), "--start", "\u2603", "--device", "cpu"])  # not in the vocabulary
    with pytest.raises(UserError, match="cannot read"):
        sample.main(["--out_dir", str(run_dir), "--start", f"FILE:{tmp_path / 'missing.txt'}"])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ckpt_best.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="corrupt or truncated"):
        sample.main(["--out_dir", str(broken)])


def test_sample_cli_prints_text(run_dir):
    r = run_script("sample.py", "--out_dir", str(run_dir), "--max_new_tokens", "20", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) >= 20
