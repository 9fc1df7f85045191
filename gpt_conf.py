"""GPTConfig: the flat, serializable description of a model, and the single source of model flags.

Every field becomes a `--flag` of train.py (train_args.py reads `dataclasses.fields`), with the help
text written here beside the field. Component fields hold registry names as strings, so the config
stays plain JSON. Knobs that only some variants read are declared beside those variants
(`knob(...)` in variations/) and appended to GPTConfig as fields, so they need no list here.
`__post_init__` normalises names, fills derived values and validates everything, quoting the flag.

Per-layer choices: `--attention_variant_layerlist causal linear` (likewise for mlp, norm,
activation and the attention softmax) cycles the listed variants over the layers;
`config.for_layer(i)` is the config layer i is built from.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields

import variations  # noqa: F401  (fills the registry: variant names and knobs)
from errors import UserError, unknown_name_message
from hardware import fixed
from variations.act_quant import GRANULARITIES, SCHEMES, SITES, check_site_bits
from variations.kernels import KERNEL_CHOICES
from variations.registry import all_knobs, get, normalize

NORM_PLACEMENTS = ("pre", "post", "peri")  # Xiong et al. 2020 (pre/post); Kim et al. 2025 (peri-LN)
LINEAR_SITES = ("attn_qkv", "attn_proj", "mlp_up", "mlp_down")  # projections with a --linear_variant_<site>


def base_type(annotation) -> type:
    """int for `int`, `int | None`, `Optional[int]`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


_TYPE_OK = {bool: lambda v: isinstance(v, bool),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            str: lambda v: isinstance(v, str),
            list: lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v)}


def check_value(name: str, value, typ: type, meta, where: str = "", flag: bool = False):
    """The one check of a setting's value (train_args.Setting.check and GPTConfig both call it).

    `meta` is the field's metadata: `registry` (the value names registered variants; normalised),
    `choices`, and the bounds `minimum` / `maximum` (inclusive) and `above` / `below` (exclusive).
    A float must be finite (NaN and infinity are refused). Numbers written as strings (YAML reads
    1e-3 as a string) are parsed as a flag would be; an int is written in digits ('1e8' is refused,
    with the digits to write); a per-layer list may be one space-separated string. Returns the value
    as stored; a bad one is a one-line UserError naming the setting (`--name` when `flag`) after `where: `."""
    at = f"{where}: " if where else ""
    label = f"--{name}" if flag else f"setting '{name}'"
    if value is None:
        return None
    if meta.get("site_bits"):  # --act_bits_<site>: one width or one per layer
        try:
            return check_site_bits(name, value)
        except UserError as e:
            raise UserError(f"{at}{e}") from None
    if typ in (int, float) and isinstance(value, str):
        try:
            value = typ(value)
        except ValueError:
            pass  # reported as a wrong type below
    if typ is list and isinstance(value, str):
        value = value.split()
    if typ in _TYPE_OK and not _TYPE_OK[typ](value):
        what = "a non-empty list of names" if typ is list else typ.__name__
        raise UserError(f"{at}{label} must be {what}, got {value!r}{_digits_hint(typ, value)}")
    if typ is float:
        value = float(value)
        if not math.isfinite(value):
            raise UserError(f"{at}{label} must be a finite number, got {value}")
    kind = meta.get("registry")
    if kind is not None:
        for v in value if isinstance(value, list) else [value]:
            try:
                get(kind, v)
            except UserError as e:
                raise UserError(f"{at}{label}: {e}") from None
        return [normalize(v) for v in value] if isinstance(value, list) else normalize(value)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        what = f"value for --{name}" if flag else f"value for '{name}'"
        raise UserError(at + unknown_name_message(what, str(value), choices))
    if typ in (int, float) and not _in_bounds(value, meta):
        raise UserError(f"{at}{label} must be {bounds_text(meta)}, got {value}")
    return value


BOUNDS = ("minimum", "maximum", "above", "below")  # the metadata keys of a number's range


def _in_bounds(value, meta) -> bool:
    lo, hi, above, below = (meta.get(k) for k in BOUNDS)
    return ((lo is None or value >= lo) and (hi is None or value <= hi)
            and (above is None or value > above) and (below is None or value < below))


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def bounds_text(meta) -> str:
    """The range a field's metadata declares, in words: 'in [0, 1)', 'at least 1', 'positive', ''."""
    lo = ("[", meta["minimum"]) if meta.get("minimum") is not None else \
        ("(", meta["above"]) if meta.get("above") is not None else None
    hi = ("]", meta["maximum"]) if meta.get("maximum") is not None else \
        (")", meta["below"]) if meta.get("below") is not None else None
    if lo and hi:
        return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    if lo:
        if lo == ("(", 0):
            return "positive"
        return f"at least {_num(lo[1])}" if lo[0] == "[" else f"greater than {_num(lo[1])}"
    if hi:
        return f"at most {_num(hi[1])}" if hi[0] == "]" else f"less than {_num(hi[1])}"
    return ""


def _digits_hint(typ: type, value) -> str:
    """' (an int is written in digits: 100000000)' for an int typed as 1e8 (flags, YAML) or 1e8 (JSON)."""
    if typ is not int or not isinstance(value, (str, float)) or isinstance(value, bool):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    return f" (an int is written in digits: {int(number)})" if math.isfinite(number) and number.is_integer() else ""


_type_hints = functools.cache(typing.get_type_hints)  # per class: __post_init__ runs for every layer


def _f(default, help: str, **meta):
    """A dataclass field with its --help text (and, for components, the registry kind it names)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class _CoreConfig:
    # --- size (nanoGPT's names) ---
    block_size: int = _f(256, "context length in tokens", minimum=1)
    vocab_size: int = _f(None, "vocabulary size; default: the data set's, padded to a multiple of 64 above 256",
                         minimum=1, maximum=2**32)  # token ids are stored as uint32 at most
    n_layer: int = _f(6, "number of transformer blocks", minimum=1)
    n_head: int = _f(6, "query heads per attention layer", minimum=1)
    n_kv_head: int = _f(None, "key/value heads (grouped-query attention; 1 = multi-query); default: n_head",
                         minimum=1)
    n_embd: int = _f(384, "residual stream width", minimum=1)
    dropout: float = _f(0.0, "dropout probability (embeddings, attention weights, residual branches)",
                          minimum=0.0, below=1.0)
    bias: bool = _f(False, "bias terms in linear layers and layernorm")

    # --- components: names from the registry (python train.py --list_variants) ---
    attention_variant: str = _f("causal", "attention mechanism", registry="attention", per_layer=True)
    mlp_variant: str = _f("mlp", "feed-forward block", registry="mlp", per_layer=True)
    norm_variant: str = _f("layernorm", "normalisation layer of the blocks", registry="norm", per_layer=True)
    activation_variant: str = _f("gelu", "activation of the feed-forward block", registry="activation", per_layer=True)
    softmax_variant_attn: str = _f("softmax", "normaliser of the attention scores", registry="softmax", per_layer=True)
    softmax_variant_output: str = _f("softmax", "turns output logits into sampling probabilities (renormalised; training keeps cross-entropy, so learned constants stay at their init)", registry="softmax")
    position_variant: str = _f("learned", "positional encoding", registry="position")
    norm_variant_final: str = _f(None, "norm before the LM head; default: norm_variant", registry="norm")
    linear_variant: str = _f("linear", "linear layer of every projection (sites below override it)", registry="linear")
    linear_variant_attn_qkv: str = _f(None, "linear layer of the q/k/v projection; default: linear_variant", registry="linear")
    linear_variant_attn_proj: str = _f(None, "linear layer of the attention output; default: linear_variant", registry="linear")
    linear_variant_mlp_up: str = _f(None, "linear layer into the MLP hidden width; default: linear_variant", registry="linear")
    linear_variant_mlp_down: str = _f(None, "linear layer out of the MLP hidden width; default: linear_variant", registry="linear")

    # --- block structure ---
    norm_placement_attn: str = _f("pre", "norm around attention: pre (x + f(n(x))), post (n(x + f(x))), "
                                  "peri (x + n(f(n(x))))", choices=NORM_PLACEMENTS)
    norm_placement_mlp: str = _f("pre", "norm around the feed-forward block: pre, post or peri", choices=NORM_PLACEMENTS)
    mlp_expansion_factor: float = _f(4.0, "feed-forward hidden width as a multiple of n_embd", above=0.0)
    mlp_hidden_size: int = _f(None, "explicit feed-forward hidden width (overrides mlp_expansion_factor)",
                             minimum=1)
    init_std: float = _f(0.02, "std of the normal weight init (residual projections: / sqrt(2 n_layer))",
                         minimum=0.0)
    softmax_kernel: str = _f("auto", "implementation of non-softmax attention normalisers: triton (fused "
                             "kernels), torch (reference), auto (triton on CUDA when importable)",
                             choices=KERNEL_CHOICES)

    # --- activation quantisation (variations/act_quant.py): the --act_bits_<site> fields follow the knobs ---
    act_quant_scheme: str = _f("symmetric", "grid of the activation sites: symmetric (absmax) or affine (min/max "
                               "and a zero point)", choices=SCHEMES)
    act_quant_granularity: str = _f("per_token", "range of the activation sites: per_token (each token its own, "
                                    "dynamic, causal) or per_tensor (one static range per site and layer: a moving "
                                    "average in training, calibrated by analysis/ptq.py)", choices=GRANULARITIES)

    # --- the attention normaliser as its hardware unit (hardware/forward.py, hardware/fixed.py) ---
    softmax_hw_bits: int = _f(None, "run the attention normaliser's forward pass through the bit-exact integer model "
                              "of its generated RTL unit (hardware/): input width in bits (Q(b-b/2).(b/2)); "
                              "backward stays floating point (straight-through); unset: floating point",
                              minimum=fixed.MIN_BITS, maximum=fixed.MAX_BITS)
    softmax_hw_out_bits: int = _f(None, "output width of the hardware unit (UQ0.bits); default: --softmax_hw_bits",
                                  minimum=fixed.MIN_BITS, maximum=fixed.MAX_BITS)
    softmax_hw_exp: str = _f(None, "exponential of the hardware unit: lut_interp (table + linear interpolation) or "
                             "shift_lut (table + shift); default: the unit's (hardware/fixed.py)", choices=fixed.EXP_IMPLS)

    # --- per-layer lists, cycled over the layers; None: every layer uses the field without _layerlist ---
    attention_variant_layerlist: list = _f(None, "attention per layer, cycled", registry="attention", layerlist_of="attention_variant")
    mlp_variant_layerlist: list = _f(None, "feed-forward block per layer, cycled", registry="mlp", layerlist_of="mlp_variant")
    norm_variant_layerlist: list = _f(None, "block norm per layer, cycled", registry="norm", layerlist_of="norm_variant")
    activation_variant_layerlist: list = _f(None, "activation per layer, cycled", registry="activation", layerlist_of="activation_variant")
    softmax_variant_attn_layerlist: list = _f(None, "attention softmax per layer, cycled", registry="softmax", layerlist_of="softmax_variant_attn")

    def __post_init__(self):
        hints = _type_hints(type(self))
        for f in fields(self):  # each value, by the same check as flags, config files and sweeps
            setattr(self, f.name, check_value(f.name, getattr(self, f.name), base_type(hints[f.name]), f.metadata,
                                              flag=True))

        if self.n_embd % self.n_head:
            raise UserError(f"--n_embd {self.n_embd} is not divisible by --n_head {self.n_head}; "
                            f"pick n_embd as a multiple of n_head (e.g. {self.n_head * max(1, round(self.n_embd / self.n_head))})")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_head % self.n_kv_head:
            raise UserError(f"--n_head {self.n_head} is not divisible by --n_kv_head {self.n_kv_head}; "
                            "n_kv_head must divide n_head (n_head = plain multi-head, 1 = multi-query)")
        if self.position_variant == "rope" and self.head_dim % 2:
            raise UserError(f"--position_variant rope needs an even head size, got n_embd/n_head = {self.head_dim}")
        if self.mlp_hidden_size is None:
            self.mlp_hidden_size = int(math.ceil(self.mlp_expansion_factor * self.n_embd))  # >= 1: both > 0
        if self.norm_variant_final is None:
            self.norm_variant_final = self.norm_variant
        for site in LINEAR_SITES:
            if getattr(self, f"linear_variant_{site}") is None:
                setattr(self, f"linear_variant_{site}", self.linear_variant)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def for_layer(self, i: int) -> "GPTConfig":
        """The config of layer i: each *_layerlist picks its entry i (cycling) for its field, and each
        --act_bits_<site> list its entry i."""
        changes = {}
        for f in fields(self):
            target = f.metadata.get("layerlist_of")
            value = getattr(self, f.name)
            if target and value:
                changes[target] = value[i % len(value)]
                changes[f.name] = None
            if f.metadata.get("site_bits") and value and len(value) > 1:
                changes[f.name] = [value[i % len(value)]]
        return dataclasses.replace(self, **changes) if changes else self

    def act_bits(self, site: str) -> int:
        """Bits of an activation site in this layer's config (for_layer), 0 = full precision."""
        value = getattr(self, f"act_bits_{site}")
        if value and len(value) > 1:
            raise ValueError(f"act_bits('{site}') on a model-wide config with a per-layer list; use for_layer(i)")
        return value[0] if value else 0

    def linear_for(self, site: str) -> str:
        """The linear variant of a projection site (one of LINEAR_SITES)."""
        return getattr(self, f"linear_variant_{site}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """Inverse of to_dict; an unknown key is an error (it would otherwise be silently dropped)."""
        valid = {f.name for f in fields(cls)}
        for key in d:
            if key not in valid:
                raise UserError(unknown_name_message("GPTConfig field", key, valid))
        return cls(**d)


def _knob_field(k):
    meta = {"help": k.help, "knob": True}
    if k.choices is not None:
        meta["choices"] = k.choices
    if k.minimum is not None:
        meta["minimum"] = k.minimum
    return (k.name, k.value_type, field(default=k.default, metadata=meta))


def _site_field(site: str, where: str):
    return (f"act_bits_{site}", list, field(default=None, metadata={
        "help": f"activation quantisation bits of {where}: one width, or one per layer (cycled), 0 = full "
                "precision in that layer (variations/act_quant.py)", "site_bits": True}))


# GPTConfig = the core fields above + one field per knob declared in variations/ (after the core ones)
# + one --act_bits_<site> field per activation site (variations/act_quant.SITES)
GPTConfig = dataclasses.make_dataclass("GPTConfig", [_knob_field(k) for k in all_knobs()]
                                       + [_site_field(s, w) for s, w in SITES.items()], bases=(_CoreConfig,))
GPTConfig.__module__ = __name__
GPTConfig.__doc__ = "A model: size, component names, block structure, per-layer lists and variant knobs."


def component_flags(kind: str) -> list[str]:
    """The GPTConfig fields that name a variant of `kind`, the main one first."""
    return [f.name for f in dataclasses.fields(GPTConfig) if f.metadata.get("registry") == kind]


def pad_vocab(n: int) -> int:
    """Round a data set's vocabulary up to a multiple of 64 (faster matmuls), as nanoGPT's 50304."""
    return n if n <= 256 else 64 * math.ceil(n / 64)


def estimate_train_bytes(config: GPTConfig, batch_size: int, gradient_checkpointing: bool = False,
                         shards: int = 1) -> int:
    """A low estimate of the memory one training step of `batch_size` sequences needs, in bytes.

    Parameters: float32 weights, gradients and AdamW's two moments (16 bytes each; FSDP divides them
    over `shards`). Activations per token (Korthikanti et al. 2022, 16-bit values, attention scores
    left out as fused kernels keep none): 34 * n_embd bytes per block, or 2 * n_embd per block plus one
    block's 34 * n_embd with gradient checkpointing; plus the float32 logits (4 * vocab_size). float32
    activations and the attention scores of unfused kernels only add to it, so a run estimated above a
    device's memory cannot fit there (train_args.check_fits refuses it before anything is allocated)."""
    d, layers, vocab = config.n_embd, config.n_layer, config.vocab_size or 0
    kv_dim = config.n_kv_head * config.head_dim
    per_layer = d * (d + 2 * kv_dim) + d * d + 2 * d * config.mlp_hidden_size
    params = layers * per_layer + vocab * d + config.block_size * d
    tokens = batch_size * config.block_size
    per_token = (2 * d * layers + 34 * d) if gradient_checkpointing else 34 * d * layers
    return 16 * params // max(shards, 1) + tokens * (per_token + 4 * vocab)
