"""Text generation, in one place: the sampler, the vocabulary-padding mask, and an Engine that prefills a
prompt into a KV cache, steps one token at a time, rolls the cache back and runs the decode loop
(after nanochat's Engine). GPT.generate (model.py), sample.py, chat.py and analysis/lm_eval_model.py all
go through here.

    from generation import Engine
    engine = Engine(model, vocab_limit=tokenizer.vocab_size)     # model: a GPT (model.py)
    ids, why = engine.generate(prompt, 100, temperature=0.8, top_k=40, stop_ids=[eot])  # prompt: (B, T)
    logits = engine.prefill(next_prompt)   # keeps the cache's common prefix with the previous context
    logits, next_ids = engine.step(temperature=0)                  # one token by hand: (B, V), (B, 1)

Exactness: a prefill reuses the cached keys/values of the prefix the new prompt shares with the cached
ids and rolls the rest back (KVCache.truncate), always rerunning at least the last prompt id, so the
tokens are the ones a fresh prefill gives. Once the context passes block_size the window slides and
every position shifts, so from then on each step runs the cropped window without the cache, exactly as
uncached generation (use_cache=False) does: the same tokens either way.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from errors import UserError
from variations.registry import create

# on_step(logits (B, V), next_ids (B, 1)) -> True to stop; see Engine.generate
OnStep = Callable[[torch.Tensor, torch.Tensor], "bool | None"]

# A million new tokens is hours of a small model's decoding (past block_size each token reruns the whole
# window); a larger --max_new_tokens is a typo that would look like a hang.
MAX_NEW_TOKENS = 1_000_000
# sampling setting -> (type, test, a valid value in words): sample.py's flags and chat.py's flags and
# /commands all check through check_sampling
SAMPLING_RULES = {
    "temperature": (float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0 (0: greedy)"),
    "top_k": (int, lambda v: v >= 0, "an integer >= 0 (0: every token)"),
    "top_p": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),  # NaN fails every comparison
    "max_new_tokens": (int, lambda v: 1 <= v <= MAX_NEW_TOKENS, f"an integer from 1 to {MAX_NEW_TOKENS:,}"),
}


def check_sampling(name: str, value):
    """`value` of sampling setting `name` (a number, or the text typed) as the sampler takes it; a bad
    one is a UserError 'needs <a valid value>, got <value>' for the caller to prefix with its flag or
    command. None (unset) passes."""
    kind, ok, expected = SAMPLING_RULES[name]
    if value is None:
        return None
    try:
        number = kind(value) if isinstance(value, str) else value
    except ValueError:
        number = None
    typed = isinstance(number, kind) or (kind is float and isinstance(number, int))
    if not typed or isinstance(number, bool) or not ok(number):
        shown = f"'{value}'" if isinstance(value, str) else value
        raise UserError(f"needs {expected}, got {shown}")
    return kind(number)


# ---------------------------------------------------------------------------------------- sampling
def build_normalizer(model: nn.Module) -> nn.Module:
    """The output normaliser of a GPT (--softmax_variant_output, a softmax-registry module) on its device."""
    cfg = model.config
    return create("softmax", cfg.softmax_variant_output, cfg).to(model.lm_head.weight.device)


def mask_padding(logits: torch.Tensor, vocab_limit: int | None) -> torch.Tensor:
    """logits (B, V) with ids >= vocab_limit set to -inf: the padding of the vocabulary (gpt_conf.pad_vocab)
    that no tokenizer decodes. A copy when anything is masked; the logits themselves otherwise."""
    if vocab_limit is None or vocab_limit >= logits.size(-1):
        return logits
    logits = logits.clone()
    logits[:, vocab_limit:] = float("-inf")
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None,
                normalizer: nn.Module | None = None) -> torch.Tensor:
    """Pick the next token from logits (B, V): greedy at temperature 0, else sample after top-k and
    nucleus (top-p) filtering. `normalizer` (a softmax-registry module, --softmax_variant_output)
    turns logits into weights, renormalised to sum to one; default: softmax. Returns (B, 1) ids."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    return torch.multinomial(sampling_probs(logits, temperature, top_k, top_p, normalizer), 1, generator=generator)


def sampling_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, normalizer: nn.Module | None = None) -> torch.Tensor:
    """The (B, V) distribution sample_next draws from at temperature > 0: logits / temperature, top-k and
    top-p filtering, then `normalizer` (default softmax); filtered tokens get probability 0."""
    logits = logits.float() / temperature
    keep = torch.ones_like(logits, dtype=torch.bool)
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        keep &= logits >= kth

    def probabilities(mask):
        w = normalizer(logits, mask) if normalizer is not None else torch.softmax(
            logits.masked_fill(~mask, float("-inf")), dim=-1)
        w = w.float().clamp(min=0).masked_fill(~mask, 0.0)
        dead = w.sum(dim=-1, keepdim=True) <= 0  # e.g. relumax with every kept logit negative
        if dead.any():  # such a row falls back to softmax over the kept logits
            w = torch.where(dead, torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1), w)
        return w / w.sum(dim=-1, keepdim=True)

    probs = probabilities(keep)
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # keep the smallest set reaching top_p
        keep &= ~torch.zeros_like(keep).scatter(-1, order, drop_sorted)
        probs = probabilities(keep)
    return probs


# ---------------------------------------------------------------------------------------- engine
def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading positions every row of a (B, n) and b (B, m) share; 0 when B differs."""
    if a.size(0) != b.size(0):
        return 0
    n = min(a.size(1), b.size(1))
    differ = (a[:, :n] != b[:, :n]).any(dim=0).nonzero()  # (k, 1) positions where some row differs
    return int(differ[0, 0]) if len(differ) else n


class Engine:
    """Generation over one GPT: prefill, step, rollback and the decode loop, with a KV cache that lives
    from one prompt to the next (`use_cache=False`: every step runs the cropped window instead).

    State: `ids` (B, T) the context (the last prompt and the ids sampled since); `cached` (B, n) the ids
    whose keys/values the cache holds at positions 0..n-1; `reused` / `prefilled` the ids of the last
    prompt taken from the cache / run by prefill. `vocab_limit` bars the vocabulary's padding ids.
    """

    def __init__(self, model: nn.Module, vocab_limit: int | None = None, use_cache: bool = True,
                 normalizer: nn.Module | None = None):
        self.model, self.vocab_limit, self.use_cache = model, vocab_limit, use_cache
        self.block_size = model.config.block_size
        self.normalizer = normalizer if normalizer is not None else build_normalizer(model)
        self.device = model.lm_head.weight.device
        self.ids = torch.zeros((1, 0), dtype=torch.long, device=self.device)  # (B, T)
        self.cached = self.ids  # (B, n)
        self.caches = None  # list[KVCache], one per layer, made by the first cached prefill
        self.logits: torch.Tensor | None = None  # (B, V) raw logits of the context's last position, when known
        self.reused = self.prefilled = 0

    def _as_batch(self, ids) -> torch.Tensor:
        """(B, T) ids: a tensor as given, a list of ints as one row on the model's device."""
        if isinstance(ids, torch.Tensor):
            return ids
        return torch.tensor([list(ids)], dtype=torch.long, device=self.device)

    def _forward(self, x: torch.Tensor, cached: bool) -> torch.Tensor:
        """Run x (B, t) after the cached ids (cached) or on its own; raw logits (B, V) of its last position."""
        if cached:
            logits, _ = self.model(x, caches=self.caches)  # (B, 1, V): the last position only
            self.cached = torch.cat((self.cached, x), dim=1)
        else:
            logits, _ = self.model(x)
        return logits[:, -1, :]

    @torch.no_grad()
    def prefill(self, prompt) -> torch.Tensor:
        """Make `prompt` (B, T), or a list of ints, the context; raw logits (B, V) of its last position.
        A prompt longer than block_size keeps its last block_size ids in the cache."""
        prompt = self._as_batch(prompt)
        if prompt.size(1) == 0:
            raise ValueError("cannot prefill an empty prompt: give at least one token id")
        self.ids = prompt
        window = prompt[:, -self.block_size:]  # (B, t)
        if not self.use_cache:
            self.reused, self.prefilled = 0, window.size(1)
            self.logits = self._forward(window, cached=False)
            return self.logits
        if self.caches is None or self.cached.size(0) != window.size(0):
            self.caches = self.model.new_kv_caches(window.size(0), prompt.device, self.model.lm_head.weight.dtype)
            self.cached = window[:, :0]
        # keep the common prefix, but rerun at least the last prompt id: its logits start the reply
        keep = min(common_prefix(self.cached, window), window.size(1) - 1)
        for cache in self.caches:  # roll back: keys/values past `keep` are overwritten by the next append
            cache.truncate(keep)
        self.cached = self.cached[:, :keep]
        self.reused, self.prefilled = keep, window.size(1) - keep
        self.logits = self._forward(window[:, keep:], cached=True)
        return self.logits

    def rollback(self, n: int) -> torch.Tensor:
        """Forget the context after its first n ids (1 <= n <= T); the cache keeps what it holds of them
        and reruns the last (prefill). Raw logits (B, V) of position n - 1."""
        if not 1 <= n <= self.ids.size(1):
            raise ValueError(f"the context holds {self.ids.size(1)} ids; cannot roll back to {n}")
        return self.prefill(self.ids[:, :n])

    @torch.no_grad()
    def step(self, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample one id per row and append it to the context. Returns the (B, V) logits the sampler read
        (padding masked, before temperature) and the (B, 1) ids. New ids run through the model (into the
        cache) only when the next step needs their logits, so the last step of a loop costs no forward."""
        if self.ids.size(1) == 0:
            raise ValueError("prefill a prompt before the first step")
        if self.logits is None:
            if self.caches is not None and self.ids.size(1) <= self.block_size:
                self.logits = self._forward(self.ids[:, self.cached.size(1):], cached=True)  # the new id
            else:  # past block_size the window slides and every position shifts: no cache from here on
                self.logits = self._forward(self.ids[:, -self.block_size:], cached=False)
        logits = mask_padding(self.logits, self.vocab_limit)
        next_ids = sample_next(logits, temperature, top_k, top_p, generator, self.normalizer)  # (B, 1)
        self.ids = torch.cat((self.ids, next_ids), dim=1)
        self.logits = None
        return logits, next_ids

    @torch.no_grad()
    def generate(self, prompt, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None,
                 stop_ids: Iterable[int] = (), on_step: OnStep | None = None) -> tuple[torch.Tensor, str]:
        """Prefill `prompt` (B, T) and step up to max_new_tokens times; temperature 0 is greedy.

        Stops early ("stop") once every row has sampled one of `stop_ids` (rows of a batch step together;
        the step that ends the last row is not passed to on_step), or when `on_step(logits, next_ids)`,
        called after each step with what step returned, returns True (e.g. a stop string in the text).
        Returns (the context (B, T + new ids), stop ids included; why it ended: "stop" or "max_new_tokens")."""
        self.prefill(prompt)
        stops = set(stop_ids)
        done = [False] * self.ids.size(0)
        for _ in range(max_new_tokens):
            logits, next_ids = self.step(temperature, top_k, top_p, generator)
            if stops:
                done = [d or t in stops for d, t in zip(done, next_ids[:, 0].tolist())]
                if all(done):
                    return self.ids, "stop"
            if on_step is not None and on_step(logits, next_ids):
                return self.ids, "stop"
        return self.ids, "max_new_tokens"
