"""Supervised fine-tuning data: conversations from a JSONL file, tokenised with the chat template and
served as (x, y) batches whose targets are -1 (ignored by the loss) wherever the target token is not
trained, so the loss and its gradient come from the assistant's tokens only.

    python train.py --init_from out/pretrained --sft_data chats.jsonl --out_dir out/sft --max_iters 200

Each line of the file is one example, either
    {"prompt": "Who is there?", "completion": "Nay, answer me."}          (a user turn and the answer)
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
Blank lines are skipped; any other bad line is a UserError naming the file and the line number.

An example of L tokens gives L - 1 (input, target) pairs; one longer than block_size + 1 tokens is cut
to its first block_size + 1, and dropped if no trained token is left (both counted in `summary`). A
fixed share of the examples (--sft_val_fraction, at least one; 0 holds none out and evaluates the
training loss only) is held out for validation, the same
for every seed. A batch is drawn with the caller's generator alone, like data/dataset.py's TokenData, so a
resumed run sees the same batches. Rows of a batch either pack several whole examples one after the
other (--sft_pack; an example never straddles two rows, and later examples attend to earlier ones of
their row, as in packed pre-training) or hold one example each, padded with target -1.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from data.chat_template import ChatTemplate, check_messages
from errors import UserError

SPLIT_SEED = 0  # the validation split does not depend on --seed: runs with different seeds compare


def read_conversations(path: str | Path) -> list[tuple[int, list[dict]]]:
    """(line number, messages) of every non-blank line of a JSONL file of prompt/completion pairs or
    message lists; a bad line is a UserError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--sft_data {path} not found; give a JSONL file of {{\"prompt\", \"completion\"}} lines")
    conversations = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path} line {number}: not valid UTF-8; save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                conversations.append((number, parse_example(line)))
            except UserError as e:
                raise UserError(f"{path} line {number}: {e}") from None
    if not conversations:
        raise UserError(f"{path} holds no examples; write one JSON object per line")
    return conversations


def parse_example(line: str) -> list[dict]:
    """One JSONL line -> messages; a UserError says what is wrong with it."""
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise UserError(f"invalid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        messages = obj["messages"]
    elif "prompt" in obj and "completion" in obj:
        for key in ("prompt", "completion"):
            if not isinstance(obj[key], str) or not obj[key]:
                raise UserError(f"'{key}' must be a non-empty string")
        messages = [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["completion"]}]
    else:
        raise UserError(f"expected the keys 'prompt' and 'completion', or 'messages'; got {sorted(obj)}")
    check_messages(messages)
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError("no assistant message, so nothing to train on")
    return messages


def encode_example(template: ChatTemplate, messages: list[dict], block_size: int):
    """(x, y, truncated): int64 tensors of up to block_size inputs and their targets, -1 where the
    target is not trained; None for x and y when truncation leaves no trained target."""
    ids, mask = template.encode_conversation(messages)
    truncated = len(ids) > block_size + 1
    ids, mask = ids[:block_size + 1], mask[:block_size + 1]
    if not any(mask[1:]):
        return None, None, truncated
    x = torch.tensor(ids[:-1], dtype=torch.long)
    y = torch.tensor([t if m else -1 for t, m in zip(ids[1:], mask[1:])], dtype=torch.long)
    return x, y, truncated


def split_indices(n: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """(train, val) example indices: a fixed shuffle, round(n * val_fraction) held out, at least one,
    and at least one left to train on. val_fraction 0 holds none out (no validation)."""
    if val_fraction == 0:
        return list(range(n)), []
    if n < 2:
        raise UserError(f"SFT needs at least 2 examples (one is held out for validation), got {n}; add examples")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def pack_rows(lengths: list[int], draw, batch_size: int, block_size: int) -> list[list[int]]:
    """Example indices for each of batch_size rows, filled greedily from draw(): an example that does
    not fit ends the row (its rest is padding) and starts the next one (after the last row it is left
    out). Every length must be <= block_size, so each row holds at least one example."""
    rows, row, used = [], [], 0
    while True:
        i = draw()
        if used + lengths[i] > block_size:
            rows.append(row)
            if len(rows) == batch_size:
                return rows
            row, used = [], 0
        row.append(i)
        used += lengths[i]


def assemble(examples: list[tuple[torch.Tensor, torch.Tensor]], rows: list[list[int]],
             block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), each (len(rows), block_size): each row's examples one after the other, then padding
    (input 0, target -1, after every real position, so causal attention never lets it matter)."""
    x = torch.zeros((len(rows), block_size), dtype=torch.long)
    y = torch.full((len(rows), block_size), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            xi, yi = examples[i]
            x[r, at:at + len(xi)] = xi
            y[r, at:at + len(yi)] = yi
            at += len(xi)
    return x, y


class SFTData:  # implements data.dataset.Batches
    """Batches of SFT examples with TokenData's interface: batch(split, generator) -> (x, y)."""

    def __init__(self, path: str | Path, tokenizer, batch_size: int, block_size: int, device: torch.device,
                 val_fraction: float = 0.1, pack: bool = True, vocab_size: int | None = None):
        self.batch_size, self.block_size, self.device, self.pack = batch_size, block_size, device, pack
        self.template = ChatTemplate(tokenizer)
        examples, truncated, dropped = [], 0, 0
        for number, messages in read_conversations(path):
            try:
                x, y, cut = encode_example(self.template, messages, block_size)
            except UserError as e:  # e.g. a character outside a char vocabulary
                raise UserError(f"{path} line {number}: {e}") from None
            if x is None:
                dropped += 1
                continue
            truncated += cut
            if vocab_size is not None and int(x.max()) >= vocab_size:
                raise UserError(f"{path} line {number}: token id {int(x.max())} is outside the model's vocabulary "
                                f"of {vocab_size}; the tokenizer and the model do not belong together")
            examples.append((x, y))
        needed = 1 if val_fraction == 0 else 2  # one to train on, one held out
        if len(examples) < needed:
            raise UserError(f"{path}: {len(examples)} usable examples ({dropped} dropped: no completion token within "
                            f"block_size + 1 = {block_size + 1} tokens); SFT needs at least {needed}; add examples "
                            "or raise --block_size")
        train_idx, val_idx = split_indices(len(examples), val_fraction)
        self.splits = {"train": [examples[i] for i in train_idx]}
        if val_idx:
            self.splits["val"] = [examples[i] for i in val_idx]
        self.eval_splits = tuple(self.splits)  # data.dataset.Batches: no "val" with --sft_val_fraction 0
        self.lengths = {s: [len(x) for x, _ in ex] for s, ex in self.splits.items()}
        positions = sum(len(x) for x, _ in examples)
        trained = sum(int((y >= 0).sum()) for _, y in examples)
        held_out = f"{len(val_idx)} val" if val_idx else "no validation: --sft_val_fraction 0, evaluations report " \
            "the training loss only and no ckpt_best.pt is written"
        self.summary = (f"sft data {path}: {len(examples)} examples ({len(train_idx)} train, {held_out}), "
                        f"{trained:,} of {positions:,} target tokens trained (completions); {truncated} cut to "
                        f"block_size + 1 = {block_size + 1} tokens, {dropped} dropped (no completion token within them); "
                        + ("packed rows" if pack else "one example per row, padded"))

    def batch(self, split: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        examples, lengths = self.splits[split], self.lengths[split]

        def draw() -> int:
            return int(torch.randint(len(examples), (1,), generator=generator))

        if self.pack:
            rows = pack_rows(lengths, draw, self.batch_size, self.block_size)
        else:
            rows = [[draw()] for _ in range(self.batch_size)]
        x, y = assemble(examples, rows, self.block_size)
        if self.device.type == "cuda":  # pinned host memory lets the copy overlap with compute
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)
