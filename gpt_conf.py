"""GPTConfig: the flat, serializable description of a model, and the single source of model flags.

Every field becomes a `--flag` of train.py (train_args.py reads `dataclasses.fields`), with the help
text written here beside the field. Component fields hold registry names as strings, so the config
stays plain JSON; `__post_init__` normalises them, fills derived values and validates everything,
quoting the flag the user typed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from errors import UserError, unknown_name_message


def _f(default, help: str, **meta):
    """A dataclass field with its --help text (and, for components, the registry kind it names)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class GPTConfig:
    # --- size (nanoGPT's names) ---
    block_size: int = _f(256, "context length in tokens")
    vocab_size: int = _f(None, "vocabulary size; default: the data set's, padded to a multiple of 64 above 256")
    n_layer: int = _f(6, "number of transformer blocks")
    n_head: int = _f(6, "query heads per attention layer")
    n_kv_head: int = _f(None, "key/value heads (grouped-query attention; 1 = multi-query); default: n_head")
    n_embd: int = _f(384, "residual stream width")
    dropout: float = _f(0.0, "dropout probability (embeddings, attention weights, residual branches)")
    bias: bool = _f(False, "bias terms in linear layers and layernorm")

    # --- components: names from the registry (python train.py --list_variants) ---
    attention_variant: str = _f("causal", "attention mechanism", registry="attention")
    mlp_variant: str = _f("mlp", "feed-forward block", registry="mlp")
    norm_variant: str = _f("layernorm", "normalisation layer", registry="norm")
    activation_variant: str = _f("gelu", "activation inside the `mlp` feed-forward block", registry="activation")
    softmax_variant_attn: str = _f("softmax", "normaliser of the attention scores", registry="softmax")
    position_variant: str = _f("learned", "positional encoding", registry="position")

    # --- variant knobs ---
    mlp_expansion_factor: float = _f(4.0, "feed-forward hidden width as a multiple of n_embd")
    mlp_hidden_size: int = _f(None, "explicit feed-forward hidden width (overrides mlp_expansion_factor)")
    norm_eps: float = _f(1e-5, "epsilon of the normalisation layers")
    rope_theta: float = _f(10000.0, "RoPE base frequency")
    consmax_beta_init: float = _f(2.5, "ConSmax: initial beta (learned offset subtracted before exp)")
    consmax_gamma_init: float = _f(100.0, "ConSmax: initial gamma (learned divisor replacing the row sum)")
    init_std: float = _f(0.02, "std of the normal weight init (residual projections: / sqrt(2 n_layer))")

    def __post_init__(self):
        import variations  # noqa: F401  (fills the registry; imported here to avoid an import cycle)
        from variations.registry import get, normalize

        for f in fields(self):
            kind = f.metadata.get("registry")
            if kind is not None:
                value = normalize(str(getattr(self, f.name)))
                try:
                    get(kind, value)
                except UserError as e:
                    raise UserError(f"--{f.name}: {e}") from None
                setattr(self, f.name, value)

        for name in ("n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise UserError(f"--n_embd {self.n_embd} is not divisible by --n_head {self.n_head}; "
                            f"pick n_embd as a multiple of n_head (e.g. {self.n_head * max(1, round(self.n_embd / self.n_head))})")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head:
            raise UserError(f"--n_head {self.n_head} is not divisible by --n_kv_head {self.n_kv_head}; "
                            "n_kv_head must divide n_head (n_head = plain multi-head, 1 = multi-query)")
        if self.position_variant == "rope" and self.head_dim % 2:
            raise UserError(f"--position_variant rope needs an even head size, got n_embd/n_head = {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise UserError(f"--vocab_size must be positive, got {self.vocab_size}")
        if self.mlp_hidden_size is None:
            self.mlp_hidden_size = int(math.ceil(self.mlp_expansion_factor * self.n_embd))
        if self.mlp_hidden_size < 1:
            raise UserError(f"--mlp_hidden_size must be at least 1, got {self.mlp_hidden_size}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

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


def pad_vocab(n: int) -> int:
    """Round a data set's vocabulary up to a multiple of 64 (faster matmuls), as nanoGPT's 50304."""
    return n if n <= 256 else 64 * math.ceil(n / 64)
