"""analysis/export.py: safetensors round trip for any model; Hugging Face LlamaForCausalLM export whose
logits, greedy continuations and tokenizer match ours; refusal of models Llama cannot express."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

import train
from data.tokenizer import load_tokenizer
from errors import UserError
from gpt_conf import GPTConfig
from io_utils import read_json
from model import GPT

from conftest import ROOT, SAMPLE_TEXT, run_script

spec = importlib.util.spec_from_file_location("export", ROOT / "analysis" / "export.py")
export = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export)

needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="transformers is not installed (pip install 'ppa-gpt[export]')")
LLAMA = dict(position_variant="rope", norm_variant="rmsnorm", mlp_variant="swiglu")
LLAMA_FLAGS = [x for k, v in LLAMA.items() for x in (f"--{k}", v)]


def perturbed(cfg: GPTConfig) -> GPT:
    """A model with random weights everywhere (norm weights and biases too, not just their init)."""
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def llama_run(char_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "llama"
    train.main(["--preset", "debug", "--dataset", str(char_data), "--out_dir", str(out), "--device", "cpu",
                "--max_iters", "10", "--n_kv_head", "1", "--rope_theta", "500", *LLAMA_FLAGS])
    return out


# ------------------------------------------------------------------------ safetensors

def test_safetensors_round_trips_every_tensor(tmp_path):
    cfg = GPTConfig(vocab_size=40, n_layer=2, n_head=2, n_embd=16, block_size=8, bias=True,
                    softmax_variant_attn="consmax", position_variant="fire", linear_variant_mlp_up="quantized")
    model = perturbed(cfg)
    export.export_safetensors(model, tmp_path / "st", {"tokenizer": "byte"})
    back = export.load_safetensors(tmp_path / "st")
    assert back.config == cfg
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert back.lm_head.weight is back.transformer.wte.weight  # tied again after loading
    from safetensors import safe_open
    with safe_open(str(tmp_path / "st" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys() or "transformer.wte.weight" not in f.keys()  # stored once
        assert f.metadata()["tokenizer"] == '{"tokenizer": "byte"}'
    idx = torch.randint(0, 40, (2, 8))
    assert torch.equal(model(idx, all_logits=True)[0], back(idx, all_logits=True)[0])


def test_safetensors_cli_on_a_run(llama_run, tmp_path):
    result = export.main(["--out_dir", str(llama_run), "--format", "safetensors", "--ckpt", "last"])
    assert result["dest"] == str(llama_run / "export" / "safetensors")
    back = export.load_safetensors(llama_run / "export" / "safetensors" / "model.safetensors")
    ckpt = torch.load(llama_run / "ckpt_last.pt", weights_only=True)
    for k, t in ckpt["model"].items():
        assert torch.equal(back.state_dict()[k], t)
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        export.main(["--out_dir", str(llama_run), "--format", "safetensors"])
    export.main(["--out_dir", str(llama_run), "--format", "safetensors", "--overwrite"])
    with pytest.raises(UserError, match="has no model_config metadata"):
        from safetensors.torch import save_file
        save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
        export.load_safetensors(tmp_path / "foreign.safetensors")


# ------------------------------------------------------------------------ Hugging Face Llama

@needs_transformers
@pytest.mark.parametrize("shape", [dict(n_head=4, n_kv_head=2), dict(n_head=4, n_kv_head=4, bias=True),
                                   dict(n_head=2, n_kv_head=1, rope_theta=500.0, norm_eps=1e-6, mlp_hidden_size=24)])
def test_hf_llama_logits_and_greedy_tokens_match(tmp_path, shape):
    from transformers import LlamaForCausalLM
    cfg = GPTConfig(vocab_size=50, n_layer=2, n_embd=32, block_size=24, **LLAMA, **shape)
    model = perturbed(cfg)
    export.export_hf(model, tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    idx = torch.randint(0, 50, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx, all_logits=True)[0], rtol=0, atol=1e-4)
        # KV-cached greedy decoding on both sides: RoPE offsets of the cached positions agree too
        ours = model.generate(idx[:1, :5], 12, temperature=0)
        theirs = hf.generate(idx[:1, :5], max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert torch.equal(ours, theirs)
    assert hf.config.tie_word_embeddings and hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()


@needs_transformers
def test_hf_export_of_a_trained_run_with_its_tokenizer(llama_run, capsys):
    from transformers import AutoTokenizer
    result = export.main(["--out_dir", str(llama_run), "--format", "hf"])
    assert result["max_logit_diff"] < 1e-4 and result["tokenizer"] is True
    assert "logits match transformers' LlamaForCausalLM" in capsys.readouterr().out
    ours = load_tokenizer(read_json(llama_run / "meta.json"))
    theirs = AutoTokenizer.from_pretrained(llama_run / "export" / "hf")
    text = "HAMLET: To be, or not\n  to be."
    assert theirs.encode(text, add_special_tokens=False) == ours.encode(text)
    assert theirs.decode(ours.encode(text)) == text


def bpe_meta() -> dict:
    from data.tokenizer import train_bpe
    return train_bpe([SAMPLE_TEXT * 20], vocab_size=300).meta()


@needs_transformers
@pytest.mark.parametrize("meta", [{"tokenizer": "byte"}, {"tokenizer": "tiktoken", "encoding": "gpt2"}, bpe_meta],
                         ids=["byte", "gpt2", "bpe"])
def test_hf_tokenizers_give_our_ids(meta):
    meta = meta() if callable(meta) else meta
    ours, theirs = load_tokenizer(meta), export.hf_tokenizer(meta)
    text = "First Citizen:\n  Before we proceed — any further, héar me 'speak' 123!\t🎉"
    assert theirs.encode(text, add_special_tokens=False) == ours.encode(text)
    assert theirs.decode(ours.encode(text)) == text


def test_non_llama_models_are_refused_with_the_fields(llama_run):
    cfg = GPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=32, block_size=24, qk_norm=True, rope_fraction=0.5,
                    norm_placement_mlp="peri", mlp_variant_layerlist=["swiglu", "geglu"],
                    linear_variant="bitlinear", linear_variant_attn_qkv="linear", **LLAMA)
    with pytest.raises(UserError) as e:
        export.export_hf(GPT(cfg), llama_run / "never")
    assert str(e.value) == (
        "--format hf needs a llama-shaped model; this one has mlp_variant_layerlist=swiglu geglu (needs swiglu), "
        "norm_placement_mlp=peri (needs pre), linear_variant_attn_proj=bitlinear (needs linear), "
        "linear_variant_mlp_up=bitlinear (needs linear), linear_variant_mlp_down=bitlinear (needs linear), "
        "qk_norm=True (needs False), rope_fraction=0.5 (needs 1.0); export it with --format safetensors instead")
    assert not (llama_run / "never").exists()
    # knobs of variants the model does not use do not matter; the default GPT-2 shape is listed
    assert export.llama_mismatches(GPTConfig(vocab_size=50, rope_fraction=0.5, **LLAMA)) == ["rope_fraction=0.5 (needs 1.0)"]
    assert export.llama_mismatches(GPTConfig(vocab_size=50, consmax_beta_init=1.0, **LLAMA)) == []
    assert export.llama_mismatches(GPTConfig(vocab_size=50)) == [
        "mlp_variant=mlp (needs swiglu)", "norm_variant=layernorm (needs rmsnorm)",
        "position_variant=learned (needs rope)", "norm_variant_final=layernorm (needs rmsnorm)"]


def test_hf_export_needs_transformers(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(UserError) as e:
        export.export_hf(GPT(GPTConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, **LLAMA)), tmp_path / "hf")
    assert str(e.value) == "--format hf needs transformers: pip install transformers (or pip install 'ppa-gpt[export]')"


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path, llama_run):
    r = run_script("analysis/export.py", "--out_dir", str(tmp_path / "none"), "--format", "hf")
    assert r.returncode == 2 and r.stderr.startswith("error: run directory") and r.stderr.count("\n") == 1
    r = run_script("analysis/export.py", "--out_dir", str(llama_run), "--format", "onnx")
    assert r.returncode == 2 and "invalid choice: 'onnx'" in r.stderr
