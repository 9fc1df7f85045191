"""Starting from GPT-2 weights (pretrained.py, train.py --init_from gpt2|PATH): the loaded model's logits
equal transformers' GPT2LMHeadModel's, a checkpoint in GPT-2's key names loads without transformers,
overrides that keep the weights valid are taken (a swapped attention normaliser keeps its fresh
constants), the others are one-line errors, and train.py fine-tunes from it."""
from __future__ import annotations

import json

import pytest
import torch

import pretrained
import train
from conftest import SAMPLE_TEXT, tiny_config
from errors import UserError
from model import GPT

HF_CONFIG = dict(model_type="gpt2", vocab_size=50257, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                 activation_function="gelu_new", layer_norm_epsilon=1e-5, n_inner=None)


def _hf_model(folder, safe: bool = True):
    """A tiny randomly initialised transformers GPT-2 saved to `folder` (no hub access needed)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**{k: v for k, v in HF_CONFIG.items() if k != "model_type"})
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping cannot hide
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=safe)
    return model


def _ours(source, **flags) -> tuple[GPT, list[str]]:
    config, state, new = pretrained.load_gpt2(str(source), flags)
    model = GPT(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert sorted(missing) == sorted(new) and not unexpected
    return model.eval(), new


@pytest.mark.parametrize("safe", [True, False])  # model.safetensors, pytorch_model.bin
def test_logits_equal_transformers(tmp_path, safe):
    hf = _hf_model(tmp_path / "gpt2", safe)
    ours, new = _ours(tmp_path / "gpt2")
    assert new == []
    cfg = ours.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (2, 2, 16, 32, 50257)
    assert (cfg.bias, cfg.activation_variant, cfg.position_variant, cfg.norm_variant) == \
        (True, "gelu_tanh", "learned", "layernorm")
    assert ours.lm_head.weight is ours.transformer.wte.weight  # tied
    idx = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx).logits
        logits, _ = ours(idx, all_logits=True)
    assert ref.std() > 0.01
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)


def test_block_size_crops_positions_and_dropout_may_change(tmp_path):
    hf = _hf_model(tmp_path / "gpt2")
    ours, _ = _ours(tmp_path / "gpt2", block_size=12, dropout=0.2)
    assert ours.config.block_size == 12 and ours.position.wpe.weight.shape == (12, 16)
    idx = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx, all_logits=True)[0], hf(idx).logits, rtol=1e-5, atol=1e-5)


def test_gpt2_key_names_load_without_transformers(tmp_path):
    """A hand-written state dict in GPT-2's names (Conv1D weights stored (in, out), no lm_head) and its
    config.json, as a folder and as a bare .safetensors file: the model computes what the source did."""
    from safetensors.torch import save_file
    torch.manual_seed(0)
    src = GPT(tiny_config(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=True,
                          activation_variant="gelu_tanh")).eval()
    hf_state = {}
    for k, v in src.state_dict().items():
        if k == "lm_head.weight":
            continue
        name = "transformer.wpe.weight" if k == "position.wpe.weight" else k
        hf_state[name] = v.t().contiguous() if k.endswith(pretrained.CONV1D) else v.clone()
    hf_state["transformer.h.0.attn.bias"] = torch.ones(1, 1, 16, 16)  # old checkpoints' mask buffer: ignored
    folder = tmp_path / "hand"
    folder.mkdir()
    save_file(hf_state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**HF_CONFIG, "vocab_size": 50, "n_positions": 16}))
    idx = torch.randint(0, 50, (2, 16))
    for source in (folder, folder / "model.safetensors"):
        assert pretrained.is_gpt2_source(str(source))
        ours, _ = _ours(source)
        with torch.no_grad():
            torch.testing.assert_close(ours(idx, all_logits=True)[0], src(idx, all_logits=True)[0])


def test_swapped_attention_normaliser_keeps_the_weights(tmp_path):
    _hf_model(tmp_path / "gpt2")
    plain, _ = _ours(tmp_path / "gpt2")
    swapped, new = _ours(tmp_path / "gpt2", softmax_variant_attn="consmax")
    assert new and all(".attn.softmax." in k for k in new)  # ConSmax's beta and gamma: fresh
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(swapped.state_dict()[k], v)


@pytest.mark.parametrize("flags, message", [
    (dict(n_embd=64), "--n_embd 64 does not fit the GPT-2 weights of --init_from (n_embd 16); drop the flag"),
    (dict(position_variant="rope"), "--position_variant rope does not fit the GPT-2 weights"),
    (dict(norm_variant="rmsnorm"), "--norm_variant rmsnorm does not fit the GPT-2 weights"),
    (dict(block_size=64), "--block_size 64 exceeds the 32 positions GPT-2 has weights for; give at most 32"),
])
def test_overrides_that_break_the_weights_are_refused(tmp_path, flags, message):
    _hf_model(tmp_path / "gpt2")
    with pytest.raises(UserError) as e:
        pretrained.load_gpt2(str(tmp_path / "gpt2"), flags)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_no_weights_found_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(UserError, match=r"--init_from gpt2: no GPT-2 weights found in the local Hugging Face cache "
                                        r"\(this machine downloads nothing at run time\)"):
        pretrained.find_files("gpt2")
    assert not pretrained.is_gpt2_source(str(tmp_path))  # an empty folder is no GPT-2 checkpoint
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "llama" / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="describes a 'llama' model; only GPT-2 checkpoints"):
        pretrained.load_gpt2(str(tmp_path / "llama"), {})


def test_gpt2_in_the_hugging_face_cache_is_found_by_name(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants
    _hf_model(tmp_path / "src")
    snapshot = tmp_path / "hub" / "models--openai-community--gpt2" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        (snapshot / f).write_bytes((tmp_path / "src" / f).read_bytes())
    (tmp_path / "hub" / "models--openai-community--gpt2" / "refs").mkdir()
    (tmp_path / "hub" / "models--openai-community--gpt2" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert pretrained.find_files("gpt2") == (snapshot / "config.json", snapshot / "model.safetensors")


@pytest.fixture(scope="module")
def gpt2_data(tmp_path_factory):
    """A small data set in GPT-2's BPE (tiktoken gpt2, offline)."""
    from data.prepare import prepare
    src = tmp_path_factory.mktemp("text") / "excerpt.txt"
    src.write_text(SAMPLE_TEXT * 200)
    out = tmp_path_factory.mktemp("data") / "excerpt_gpt2"
    prepare([src], out, tokenizer="tiktoken", encoding="gpt2")
    return out


def test_train_fine_tunes_from_gpt2_with_another_normaliser(tmp_path, gpt2_data, char_data):
    hf = _hf_model(tmp_path / "gpt2")
    common = ["--init_from", str(tmp_path / "gpt2"), "--dataset", str(gpt2_data), "--device", "cpu",
              "--batch_size", "2", "--block_size", "16", "--eval_iters", "2", "--warmup_iters", "0"]
    summary = train.main([*common, "--out_dir", str(tmp_path / "start"), "--max_iters", "0"])
    ckpt = torch.load(tmp_path / "start" / "ckpt_last.pt", weights_only=True)
    torch.testing.assert_close(ckpt["model"]["transformer.h.1.mlp.c_fc.weight"],
                               hf.transformer.h[1].mlp.c_fc.weight.t())  # step 0 holds GPT-2's weights
    assert ckpt["model_config"]["vocab_size"] == 50257 and summary["status"] == "completed"
    summary = train.main([*common, "--out_dir", str(tmp_path / "ft"), "--max_iters", "4", "--eval_interval", "4",
                          "--softmax_variant_attn", "consmax", "--learning_rate", "1e-3"])
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["model"]["softmax_variant_attn"] == "consmax" and config["train"]["init_from"] == str(tmp_path / "gpt2")
    assert summary["status"] == "completed" and summary["iters"] == 4
    resumed = train.main(["--out_dir", str(tmp_path / "ft"), "--init_from", "resume", "--max_iters", "6",
                          "--dataset", str(gpt2_data)])
    assert resumed["iters"] == 6
    with pytest.raises(UserError, match="has a char tokenizer; prepare the data with --tokenizer tiktoken"):
        train.main([*common[:2], "--dataset", str(char_data), "--out_dir", str(tmp_path / "bad")])
    with pytest.raises(UserError, match="--n_layer 3 does not fit the GPT-2 weights"):
        train.main([*common, "--out_dir", str(tmp_path / "bad"), "--n_layer", "3"])
    assert not (tmp_path / "bad").exists()
