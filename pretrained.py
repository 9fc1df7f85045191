"""Starting from OpenAI's GPT-2 weights: `train.py --init_from gpt2|gpt2-medium|gpt2-large|gpt2-xl|PATH`.

    python data/shakespeare/prepare.py                       # GPT-2's BPE (tiktoken gpt2)
    python train.py --init_from gpt2 --dataset shakespeare --out_dir out/ft --max_iters 200 --learning_rate 3e-5
    python train.py --init_from ~/models/gpt2 --dataset shakespeare --softmax_variant_attn consmax ...

The source is a Hugging Face GPT-2 checkpoint: a folder holding config.json (model_type gpt2) and
model.safetensors (or pytorch_model.bin, read with weights_only=True), a .safetensors file with that
config.json beside it, or a size's name, looked up in the local Hugging Face cache (huggingface_hub,
never the network: a machine without hub access copies the folder of `huggingface-cli download
openai-community/gpt2` over and passes its path). The weights are read directly (safetensors / torch),
so transformers is not needed; tests compare the logits with transformers' GPT2LMHeadModel.

The model is the matching GPTConfig: learned positions, LayerNorm with bias (GPT-2's epsilon), GELU
with the tanh approximation (gelu_new), the head tied to the token embedding, GPT-2's 50257-token
vocabulary (unpadded), block_size n_positions. GPT-2's Conv1D weights are stored (in, out) and are
transposed into nn.Linear's (out, in). The data set must use GPT-2's tokenizer (tiktoken gpt2).

Settings that keep the weights valid may differ: --dropout, a --block_size up to n_positions (the
position table is cropped), the attention normaliser (--softmax_variant_attn and its knobs), the
output normaliser, linear variants of the same shapes, activation quantisation, kernels. Parameters
the new components add (ConSmax's beta and gamma, QK-norm weights) keep their fresh initialisation.
Settings that change what the weights mean (ARCHITECTURE below: sizes, block components, norm
placement, position encoding) are refused with a one-line error. Fine-tuning GPT-2 with another
attention normaliser is the research use: the weights load, the normaliser is swapped, training
continues (README: "Starting from GPT-2").
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from errors import UserError
from gpt_conf import GPTConfig

# the names --init_from accepts for OpenAI's checkpoints, and their Hugging Face hub ids (current, legacy)
SIZES = {"gpt2": ("openai-community/gpt2", "gpt2"), "gpt2-medium": ("openai-community/gpt2-medium", "gpt2-medium"),
         "gpt2-large": ("openai-community/gpt2-large", "gpt2-large"),
         "gpt2-xl": ("openai-community/gpt2-xl", "gpt2-xl")}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# GPTConfig fields the weights define: a different value is refused (the rest may differ, see the docstring)
ARCHITECTURE = ("n_layer", "n_head", "n_kv_head", "n_embd", "vocab_size", "bias", "attention_variant", "mlp_variant",
                "norm_variant", "norm_variant_final", "activation_variant", "position_variant", "norm_placement_attn",
                "norm_placement_mlp", "mlp_expansion_factor", "mlp_hidden_size", "norm_eps",
                "attention_variant_layerlist", "mlp_variant_layerlist", "norm_variant_layerlist",
                "activation_variant_layerlist")
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}  # HF name -> ours
CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
GPT2_TOKENIZER = {"tokenizer": "tiktoken", "encoding": "gpt2"}


def is_gpt2_source(init_from: str) -> bool:
    """Whether --init_from names GPT-2 weights (a size, a Hugging Face folder or a .safetensors file)
    rather than scratch, resume or a run of this project."""
    path = Path(init_from)
    if init_from in SIZES:
        return True
    if path.is_file():
        return path.suffix == ".safetensors"
    return path.is_dir() and (path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def find_files(source: str) -> tuple[Path, Path]:
    """(config.json, weights file) of --init_from `source`; a one-line UserError when there are none."""
    if source in SIZES:
        folder = _cached_folder(source)
    else:
        path = Path(source)
        if path.is_file():
            config = path.parent / "config.json"
            if not config.is_file():
                raise UserError(f"--init_from {source}: no config.json beside the weights; put the checkpoint's "
                                "config.json in the same folder")
            return config, path
        folder = path
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise UserError(f"--init_from {source}: {folder} holds none of {', '.join(WEIGHT_FILES)}")
    return folder / "config.json", weights


def _cached_folder(name: str) -> Path:
    """The local Hugging Face cache's snapshot folder of GPT-2 size `name` (never the network)."""
    how = (f"download it where the hub is reachable (huggingface-cli download {SIZES[name][0]}), copy the folder "
           f"here and pass its path: --init_from PATH")
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        raise UserError(f"--init_from {name} looks the weights up in the Hugging Face cache, which needs the "
                        f"huggingface_hub package (pip install 'ppa-gpt[export]'); or {how}") from None
    for repo in SIZES[name]:
        for weights in WEIGHT_FILES:
            found = try_to_load_from_cache(repo, weights)
            if isinstance(found, str) and (Path(found).parent / "config.json").is_file():
                return Path(found).parent
    raise UserError(f"--init_from {name}: no GPT-2 weights found in the local Hugging Face cache (this machine "
                    f"downloads nothing at run time); {how}")


def read_hf_config(path: Path) -> dict:
    try:
        hf = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--init_from: cannot read {path} ({e})") from None
    if hf.get("model_type") != "gpt2":
        raise UserError(f"--init_from: {path} describes a '{hf.get('model_type')}' model; only GPT-2 checkpoints "
                        "(model_type gpt2) load")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn") \
            or hf.get("scale_attn_weights") is False or hf.get("activation_function") not in ACTIVATIONS:
        raise UserError(f"--init_from: {path} is a GPT-2 variant this model does not reproduce (activation "
                        f"{hf.get('activation_function')}, attention scaling options); use a standard GPT-2 checkpoint")
    return hf


def gpt2_config(hf: dict, flags: dict) -> GPTConfig:
    """The GPTConfig of GPT-2 config.json `hf` with the user's model `flags` on top; a flag that changes
    what the weights mean, or a block_size past n_positions, is a one-line UserError."""
    base = dict(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], vocab_size=hf["vocab_size"],
                block_size=hf["n_positions"], bias=True, attention_variant="causal", mlp_variant="mlp",
                norm_variant="layernorm", norm_variant_final="layernorm",
                activation_variant=ACTIVATIONS[hf["activation_function"]], position_variant="learned",
                norm_placement_attn="pre", norm_placement_mlp="pre",
                mlp_hidden_size=hf.get("n_inner") or 4 * hf["n_embd"], norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                n_kv_head=hf["n_head"], mlp_expansion_factor=(hf.get("n_inner") or 4 * hf["n_embd"]) / hf["n_embd"],
                dropout=0.0)
    for key, value in flags.items():
        if key in ARCHITECTURE and value != base.get(key):
            raise UserError(f"--{key} {value} does not fit the GPT-2 weights of --init_from ({key} "
                            f"{base.get(key)}); drop the flag (only settings that keep the weights valid may change: "
                            "dropout, block_size, the attention normaliser, quantisation, ...)")
    if flags.get("block_size", base["block_size"]) > hf["n_positions"]:
        raise UserError(f"--block_size {flags['block_size']} exceeds the {hf['n_positions']} positions GPT-2 "
                        f"has weights for; give at most {hf['n_positions']}")
    return GPTConfig(**{**base, **flags})


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """GPT-2's tensors by their Hugging Face names (safetensors, or a torch file read with weights_only)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, in one line
        raise UserError(f"--init_from: cannot read the weights in {path} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); it is corrupt or not a checkpoint") from None


def to_model_state(hf_state: dict, config: GPTConfig) -> dict[str, torch.Tensor]:
    """GPT-2's tensors under this model's names: wpe -> position.wpe (cropped to block_size), Conv1D
    (in, out) weights transposed, the tied lm_head and the attention mask buffers dropped."""
    out = {}
    if "transformer.wte.weight" not in hf_state and "wte.weight" not in hf_state:
        raise UserError("--init_from: the checkpoint has no token embedding (wte.weight); it is not a GPT-2 checkpoint")
    for key, value in hf_state.items():
        key = key.removeprefix("module.")
        if not key.startswith("transformer."):
            key = "transformer." + key if not key.startswith("lm_head.") else key
        if key.endswith((".attn.bias", ".attn.masked_bias")) or key == "lm_head.weight":
            continue  # causal-mask buffers; the head is tied to wte
        if key == "transformer.wpe.weight":
            out["position.wpe.weight"] = value[:config.block_size]
        elif key.endswith(CONV1D):
            out[key] = value.t()
        else:
            out[key] = value
    out["lm_head.weight"] = out["transformer.wte.weight"]  # tied: the same tensor under both names
    return {k: v.float().contiguous() for k, v in out.items()}


def load_gpt2(source: str, flags: dict) -> tuple[GPTConfig, dict[str, torch.Tensor], list[str]]:
    """(model config, state dict in this model's names, names of the model's parameters the weights do
    not provide) for --init_from `source` with the user's model `flags`."""
    config_path, weights_path = find_files(source)
    hf = read_hf_config(config_path)
    config = gpt2_config(hf, flags)
    state = to_model_state(read_weights(weights_path), config)
    from model import GPT
    with torch.device("meta"):  # names and shapes only
        expected = GPT(config).state_dict()
        standard = GPT(gpt2_config(hf, {"block_size": config.block_size})).state_dict()  # what GPT-2 has
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if unexpected or wrong:
        k = (unexpected or wrong)[0]
        raise UserError(f"--init_from {source}: tensor {k} {tuple(state[k].shape)} does not fit the model "
                        f"({'no such parameter' if unexpected else tuple(expected[k].shape)}); the checkpoint is not a "
                        "standard GPT-2")
    absent = [k for k in standard if k not in state]
    if absent:
        raise UserError(f"--init_from {source}: the checkpoint lacks {absent[0]} (and {len(absent) - 1} more); "
                        "it is incomplete or not a GPT-2 checkpoint")
    return config, state, [k for k in expected if k not in state]


def check_tokenizer(meta: dict, dataset: str) -> None:
    """The data set must be tokenized with GPT-2's BPE, or its ids mean other tokens to the model."""
    from data.tokenizer import load_tokenizer
    if load_tokenizer(meta).meta() != GPT2_TOKENIZER:
        raise UserError(f"--init_from GPT-2 weights read GPT-2's tokens, and --dataset {dataset} has a "
                        f"{meta.get('tokenizer')} tokenizer; prepare the data with --tokenizer tiktoken (encoding gpt2)")
