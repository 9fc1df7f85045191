"""benchmarks/repro_nanogpt.py: nanoGPT's seed patch, the whole-split score against a direct computation,
and loading a nanoGPT-format checkpoint through the checkout's own model.py (a stand-in written here)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks import repro_nanogpt as rn

NANOGPT_LIKE = """\
seed_offset = 0
exec(open('configurator.py').read()) # overrides from command line or config file
torch.manual_seed(1337 + seed_offset)
"""


def test_seed_patch_makes_the_fixed_seed_a_setting(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(NANOGPT_LIKE)
    diff = rn.patch_seed(path)
    text = path.read_text()
    assert "torch.manual_seed(seed + seed_offset)" in text and "1337 + seed_offset" not in text
    # `seed` is declared before the configurator runs, so --seed=N overrides it
    assert text.index("seed = 1337") < text.index("exec(open('configurator.py')")
    assert "- torch.manual_seed(1337 + seed_offset)" in diff


def test_seed_patch_refuses_an_unknown_train_py(tmp_path):
    path = tmp_path / "train.py"
    path.write_text("torch.manual_seed(42)\n")
    with pytest.raises(SystemExit, match="its seed cannot be set"):
        rn.patch_seed(path)


class Bigram(nn.Module):
    """model(x, y) -> (logits, loss), as both GPTs are called."""

    def __init__(self, vocab):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, x, y=None):
        logits = self.table(x)
        return logits, None


def test_split_loss_scores_every_complete_window_once(tmp_path):
    torch.manual_seed(0)
    tokens = np.random.default_rng(0).integers(0, 11, size=1003).astype(np.uint16)
    path = tmp_path / "val.bin"
    tokens.tofile(path)
    model = Bigram(11)
    got = rn.split_loss(model, path, "uint16", block_size=10, batch=7)
    # 1002 // 10 = 100 windows; the direct computation over the same 1000 positions
    x = torch.from_numpy(tokens[:1000].astype(np.int64))
    y = torch.from_numpy(tokens[1:1001].astype(np.int64))
    want = F.cross_entropy(model.table(x), y).item()
    assert got["windows"] == 100 and got["tokens"] == 1000
    assert got["loss"] == pytest.approx(want, rel=1e-6)


FAKE_MODEL_PY = """\
from dataclasses import dataclass
import torch.nn as nn

@dataclass
class GPTConfig:
    vocab_size: int = 5

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)

    def forward(self, idx, targets=None):
        return self.table(idx), None
"""


def test_nanogpt_checkpoint_loads_through_the_checkouts_model_py(tmp_path):
    (tmp_path / "model.py").write_text(FAKE_MODEL_PY)
    weights = torch.randn(7, 7)
    # a torch.compile'd model's keys carry _orig_mod.: stripped
    torch.save({"model": {"_orig_mod.table.weight": weights}, "model_args": {"vocab_size": 7}, "iter_num": 3},
               tmp_path / "ckpt.pt")
    model = rn.load_nanogpt_model(tmp_path, tmp_path / "ckpt.pt")
    assert not model.training
    torch.testing.assert_close(model.table.weight.detach(), weights)
