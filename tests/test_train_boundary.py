"""train.py refuses, in one line and before writing anything, a data set whose token ids pass the model's
vocabulary and a run that cannot fit the device's memory (issue 12: validate at the boundary, once)."""
from __future__ import annotations

import json

import pytest

import train
from errors import UserError

from conftest import bad_ids_copy, run_script


def run(data, out_dir, *flags):
    return train.main(["--preset", "debug", "--dataset", str(data), "--out_dir", str(out_dir), "--device", "cpu",
                       *flags])


def test_token_ids_past_the_vocabulary_are_one_line_and_write_nothing(char_data, tmp_path):
    bad = bad_ids_copy(char_data, tmp_path / "bad")  # an old meta.json: the ids are scanned
    with pytest.raises(UserError, match=r"bad holds token id 60000 in train.bin, but the model's vocabulary has "
                                        r"\d+ ids .*re-run python data/prepare.py"):
        run(bad, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    meta = json.loads((bad / "meta.json").read_text())  # a recorded max_token_id is taken as it is
    (bad / "meta.json").write_text(json.dumps({**meta, "max_token_id": 70000}))
    with pytest.raises(UserError, match=r"holds token id 70000 in train.bin and val.bin"):
        run(bad, tmp_path / "run")
    with pytest.raises(UserError, match=r"holds token id 70000"):  # a larger --vocab_size does not hide it
        run(bad, tmp_path / "run", "--vocab_size", "512")
    assert not (tmp_path / "run").exists()
    r = run_script("train.py", "--preset", "debug", "--dataset", str(bad), "--out_dir", str(tmp_path / "run"),
                   "--device", "cpu")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "token id 70000" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags", [["--batch_size", "100000000"], ["--n_embd", "1048576", "--n_head", "2"],
                                   ["--block_size", "100000000", "--batch_size", "100"]])
def test_sizes_past_the_devices_memory_are_refused_before_allocating(char_data, tmp_path, flags):
    with pytest.raises(UserError, match=r"needs at least [\d,.]+ GiB, more than the [\d,.]+ GiB of cpu"):
        run(char_data, tmp_path / "run", *flags)
    assert not (tmp_path / "run").exists()
