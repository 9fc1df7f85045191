"""The GPT model, assembled from the component registry (variations/) according to a GPTConfig.

    from gpt_conf import GPTConfig; from model import GPT
    model = GPT(GPTConfig(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64))
    logits, loss = model(idx, targets)          # idx, targets: (B, T) token ids
    out = model.generate(idx, max_new_tokens=100, temperature=0.8, top_k=40)   # KV-cached (generation.py)

Pre-norm blocks (x + attn(norm(x)), x + mlp(norm(x))), a final norm, the LM head tied to the token
embedding, GPT-2's init with residual projections (`c_proj`) scaled by 1/sqrt(2 n_layer).
Per-layer shapes come from `config.for_layer(i)`; layers that share weights (--share_layers_every,
--share_layers_map) hold one Block object; --embedding_dim factorizes the tied embedding (ALBERT).
Modules with `adds_loss` (mixture of experts) add their weighted auxiliary loss to the training loss.
"""
from __future__ import annotations

import dataclasses
import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from generation import Engine
from gpt_conf import GPTConfig
from variations.attention import KVCache
from variations.act_quant import ActSites
from variations.cost import DEFAULT, Cost, total
from variations.registry import create


class Block(nn.Module):
    """One transformer block; each sub-layer's norm placement is pre, post or peri (gpt_conf.py)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.placement_attn, self.placement_mlp = config.norm_placement_attn, config.norm_placement_mlp
        self.n_embd = config.n_embd
        self.ln_1 = create("norm", config.norm_variant, config)
        self.attn = create("attention", config.attention_variant, config)
        self.ln_2 = create("norm", config.norm_variant, config)
        self.mlp = create("mlp", config.mlp_variant, config)
        # peri-LN also normalises each sub-layer's output before it joins the residual stream
        self.ln_1_out = create("norm", config.norm_variant, config) if self.placement_attn == "peri" else None
        self.ln_2_out = create("norm", config.norm_variant, config) if self.placement_mlp == "peri" else None
        # activation quantisation at the sub-layers' inputs and on the residual stream (variations/act_quant.py)
        self.aq = ActSites(config, ("attn_input", "mlp_input", "residual"))

    @staticmethod
    def _residual(x, f, norm, norm_out, placement: str) -> torch.Tensor:
        if placement == "pre":
            return x + f(norm(x))
        if placement == "post":
            return norm(x + f(x))
        return x + norm_out(f(norm(x)))  # peri

    def forward(self, x: torch.Tensor, position, cache: KVCache | None = None) -> torch.Tensor:
        x = self._residual(x, lambda h: self.attn(self.aq("attn_input", h), position, cache), self.ln_1,
                           self.ln_1_out, self.placement_attn)
        x = self.aq("residual", x)
        x = self._residual(x, lambda h: self.mlp(self.aq("mlp_input", h)), self.ln_2, self.ln_2_out,
                           self.placement_mlp)
        return self.aq("residual", x)

    def cost(self, T: int) -> dict[str, Cost]:
        norms = [n for n in (self.ln_1, self.ln_2, self.ln_1_out, self.ln_2_out) if n is not None]
        C = self.n_embd
        quantisers = self.aq.cost({"attn_input": C, "mlp_input": C, "residual": 2 * C})
        residual = Cost(elementwise=2 * C).at(self.aq.fmt("residual", DEFAULT), "elementwise")
        return {"attention": self.attn.cost(T), "mlp": self.mlp.cost(T),
                "norms": total(n.cost(T) for n in norms), "residual": residual + quantisers}


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("GPTConfig.vocab_size is not set (train.py fills it from the data set's meta.json)")
        self.config = config
        E = config.embedding_dim or config.n_embd  # token embedding width (factorized when != n_embd)
        blocks: dict[int, Block] = {}  # weight sharing (gpt_conf.weight_groups): one Block object per group
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, E),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([blocks[g] if g in blocks else blocks.setdefault(g, Block(config.for_layer(i)))
                             for i, g in enumerate(config.weight_groups())]),
            ln_f=create("norm", config.norm_variant_final, config),
        ))
        self.position = create("position", config.position_variant, config)
        self.lm_head = nn.Linear(E, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying (Press & Wolf, 2017)
        # a factorized embedding (ALBERT): E -> n_embd after the table, n_embd -> E before the tied head
        factorized = E != config.n_embd
        self.embed_proj = nn.Linear(E, config.n_embd, bias=False) if factorized else None
        self.head_proj = nn.Linear(config.n_embd, E, bias=False) if factorized else None
        # a training setting, not architecture (so not in GPTConfig): train.py --gradient_checkpointing
        self.gradient_checkpointing = False

        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # projections into the residual stream (GPT-2)
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "GPT":
        """Rebuild the model from a checkpoint dict alone (its config and weights)."""
        from errors import UserError
        model = cls(GPTConfig.from_dict(ckpt["model_config"]))
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise UserError(f"checkpoint weights do not match its config ({str(e).splitlines()[0]}); "
                            "it is corrupt or from another version") from None
        return model

    # ------------------------------------------------------------------ size and cost
    def num_params(self, exclude_position: bool = False) -> int:
        """Parameter count, the tied embedding/head counted once; optionally without position tables."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_position:
            n -= sum(p.numel() for p in self.position.parameters())
        return n

    def learned_constants(self, state_dict: dict | None = None) -> dict[str, float | list[float]]:
        """The learned scalars (or per-head vectors) of the registry's normalisers, activations and
        position encodings: ConSmax's beta and gamma, PReLU's slope, hypersphere radii, FIRE's
        threshold, ... by parameter name, as plain numbers (summary.json's `learned_constants`).
        Values come from `state_dict` when given (a sharded model's gathered checkpoint state)."""
        out = {}
        for prefix, module in self.named_modules():
            if getattr(type(module), "registry_kind", None) not in ("softmax", "activation", "norm", "position"):
                continue
            for name, p in module.named_parameters(recurse=False):
                if p.numel() <= max(self.config.n_head, *(self.config.n_head_layerlist or [1])):
                    key = f"{prefix}.{name}"
                    value = (state_dict[key] if state_dict is not None else p).detach().float().cpu()
                    out[key] = value.item() if value.dim() == 0 else value.tolist()
        return out

    def cost(self, T: int | None = None) -> dict[str, Cost]:
        """Hardware cost per token at context length T (default block_size), by component, forward
        pass (variations/cost.py). Keys: embedding, position, layer.<i>.<part>, final_norm, lm_head."""
        T = T or self.config.block_size
        C, V = self.config.n_embd, self.config.vocab_size
        E = self.transformer.wte.embedding_dim
        rows = {"embedding": Cost(params=V * E, weights=E),  # a table lookup: one row read, no arithmetic
                "position": self.position.cost(T)}
        if self.embed_proj is not None:
            rows["embedding"] = rows["embedding"] + Cost(params=E * C, macs=E * C, act_mem=E)
        seen = set()  # a shared block's parameters count once, its work at every use
        for i, block in enumerate(self.transformer.h):
            for part, c in block.cost(T).items():
                rows[f"layer.{i}.{part}"] = dataclasses.replace(c, params=0) if id(block) in seen else c
            seen.add(id(block))
            rows[f"layer.{i}.position"] = block.attn.position_cost(self.position, T)
        rows["final_norm"] = self.transformer.ln_f.cost(T)
        # weights tied to the embedding: no parameters of its own, but the whole table is read
        rows["lm_head"] = Cost(macs=E * V, weights=E * V, act_mem=E)
        if self.head_proj is not None:
            rows["lm_head"] = rows["lm_head"] + Cost(params=C * E, macs=C * E, act_mem=C)
        return rows

    def flops_per_token(self) -> float:
        """Training FLOPs per token, forward + backward (PaLM appendix B; nanoGPT's MFU estimate):
        6 N for the weights plus 12 L H hs T for the attention scores and weighted sum."""
        cfg = self.config
        return 6 * self.num_params(exclude_position=True) + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.block_size

    # ------------------------------------------------------------------ forward
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                caches: list[KVCache] | None = None, all_logits: bool = False):
        """idx (B, T) -> (logits, loss). Logits are (B, T, V) when targets are given or all_logits,
        else (B, 1, V) for the last position only. Targets equal to -1 are ignored."""
        B, T = idx.shape
        start = caches[0].length if caches else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        tok = self.transformer.wte(idx)  # (B, T, E)
        x = self.position.embed(tok if self.embed_proj is None else self.embed_proj(tok), start)  # (B, T, C)
        x = self.transformer.drop(x)
        # gradient checkpointing: keep only each block's input and recompute its activations in the
        # backward pass (non-reentrant: the recomputation replays the same dropout RNG state)
        recompute = self.gradient_checkpointing and self.training and caches is None and torch.is_grad_enabled()
        for i, block in enumerate(self.transformer.h):
            if recompute:
                x = checkpoint(block, x, self.position, use_reentrant=False)
            else:
                x = block(x, self.position, caches[i] if caches else None)
        x = self.transformer.ln_f(x)
        if self.head_proj is not None:
            x = self.head_proj(x)  # (B, T, E): into the tied table's width
        if targets is not None:
            logits = self.lm_head(x)  # (B, T, V)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
            if self.training:  # auxiliary losses (MoE load balancing) train; evaluation losses stay comparable
                loss = loss + self.aux_loss()
            return logits, loss
        logits = self.lm_head(x if all_logits else x[:, [-1], :])  # last position only saves V x T work
        return logits, None

    def aux_loss(self) -> torch.Tensor | float:
        """The weighted auxiliary losses of the last forward pass: each module with `adds_loss` (MoE
        load balancing, variations/mlp.py) contributes aux_loss_weight * aux_loss; 0 without any."""
        return sum((m.aux_loss_weight * m.aux_loss for m in self.modules() if getattr(m, "adds_loss", False)), 0.0)

    def aux_stats(self) -> dict[str, float]:
        """The training log's view of the last forward pass's routing: moe_aux_loss (unweighted, mean
        over the MoE layers), moe_dropped_tokens (assignments dropped at expert capacity, all layers)
        and moe_drop_fraction; {} for a model without mixture-of-experts layers."""
        moe = [m for m in self.modules() if getattr(m, "adds_loss", False)]
        if not moe:
            return {}
        dropped = sum(int(m.dropped) for m in moe)
        return {"moe_aux_loss": sum(float(m.aux_loss.detach()) for m in moe) / len(moe), "moe_dropped_tokens": dropped,
                "moe_drop_fraction": dropped / max(1, sum(m.assignments for m in moe))}

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas: tuple[float, float],
                             device_type: str) -> torch.optim.AdamW:
        """AdamW; matrices and embeddings decay, vectors and scalars (norms, biases, learned softmax
        constants) do not. The fused kernel (one op for all tensors) on CUDA and CPU."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))

    # ------------------------------------------------------------------ generation
    def new_kv_caches(self, batch_size: int, device, dtype: torch.dtype) -> list[KVCache]:
        """Empty keys/values for every layer, block_size positions each (generation.Engine fills them)."""
        cfg = self.config
        return [block.attn.new_cache(cfg.for_layer(i), batch_size, device, dtype)
                for i, block in enumerate(self.transformer.h)]

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None, vocab_limit: int | None = None) -> torch.Tensor:
        """Continue idx (B, T) by max_new_tokens tokens; (B, T + max_new_tokens). temperature 0 means greedy.
        A convenience over generation.Engine, which owns generation: the KV cache (each new token costs one
        position's forward pass; past block_size the window slides, uncached), `vocab_limit` (ids of the
        vocabulary's padding are never drawn), stop ids, per-step hooks and prefix reuse across prompts."""
        engine = Engine(self, vocab_limit=vocab_limit, use_cache=use_cache)
        return engine.generate(idx, max_new_tokens, temperature, top_k, top_p, generator)[0]
