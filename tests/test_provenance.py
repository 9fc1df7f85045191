"""provenance.py: what a summary.json records about the code, software, device and data behind it; and the
evaluation windows, the same for every training seed."""
from __future__ import annotations

import hashlib

import train
import provenance
from data.dataset import TokenData

from conftest import ROOT


def test_fingerprints_hash_small_files_whole_and_sample_large_ones(tmp_path, monkeypatch):
    f = tmp_path / "train.bin"
    f.write_bytes(bytes(range(256)) * 1000)
    assert provenance.fingerprint(f) == "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest()
    monkeypatch.setattr(provenance, "FULL_HASH_BYTES", 1000)
    monkeypatch.setattr(provenance, "BLOCK_BYTES", 100)
    sampled = provenance.fingerprint(f)
    assert sampled.startswith("sha256-sampled:")
    f.write_bytes(f.read_bytes()[:-1] + b"\x01")  # the last block changed: seen
    assert provenance.fingerprint(f) != sampled
    assert set(provenance.data_fingerprints(tmp_path)) == {"train.bin"}


def test_git_state_and_versions():
    state = provenance.git_state(str(ROOT))
    assert state["commit"] is None or len(state["commit"]) == 40
    assert provenance.git_state(str(ROOT.parent / "no-such-repo")) == {"commit": None, "dirty": None}
    v = provenance.versions()
    assert v["torch"] and v["python"] and "triton" in v


def test_a_run_records_provenance_and_scores_every_seed_on_the_same_windows(char_data, tmp_path, monkeypatch):
    eval_seeds = []
    real = TokenData.batch

    def spy(self, split, generator):
        eval_seeds.append(generator.initial_seed())
        return real(self, split, generator)
    monkeypatch.setattr(TokenData, "batch", spy)
    summaries = []
    for seed in (1, 2):
        eval_seeds.clear()
        s = train.main(["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--seed", str(seed),
                        "--out_dir", str(tmp_path / f"s{seed}"), "--max_iters", "2", "--eval_interval", "2"])
        summaries.append((s, set(eval_seeds)))
    (a, seeds_a), (b, seeds_b) = summaries
    assert train.EVAL_SEED in seeds_a and train.EVAL_SEED in seeds_b  # the evaluation generator, both runs
    assert a["eval_tokens"] == 2 * 4 * 32  # eval_iters x batch_size x block_size (debug preset)
    p = a["provenance"]
    assert set(p) == {"git", "python", "torch", "triton", "numpy", "device_name", "threads", "data"}
    assert set(p["data"]) == {"train.bin", "val.bin", "meta.json"} and p["data"] == b["provenance"]["data"]
