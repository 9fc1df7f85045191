r"""Generate text from a trained run, analyse the sampler token by token, or evaluate on a data set.

    python sample.py --out_dir out/quickstart
    python sample.py --out_dir out/quickstart --start "ROMEO:" --num_samples 3 --max_new_tokens 300 \
        --temperature 0.8 --top_k 40 --top_p 0.95 --seed 7
    python sample.py --out_dir out/quickstart --start FILE:prompt.txt --ckpt last
    python sample.py --out_dir out/quickstart --colorize_mode entropy        # tokens coloured by entropy
    python sample.py --out_dir out/quickstart --show_heatmaps --output_json samples.json
    python sample.py --out_dir out/quickstart --interactive --stop_strings '\n\n'   # prompts from stdin
    python sample.py --out_dir out/quickstart --eval_only --eval_dataset shakespeare_char --eval_split val
    python sample.py --out_dir out/quickstart --lm_eval_tasks shakespeare --lm_eval_limit 50   # lm-eval benchmarks
    python sample.py --out_dir out/quickstart --chat --temperature 0.7                      # chat REPL (chat.py)

The model is rebuilt from the checkpoint alone, loaded with torch.load(weights_only=True); the
tokenizer comes from the run's meta.json (written by train.py). Generation uses a KV cache
(--no-kv_cache to compare).

Analysis (sample_analysis.py defines each per-token quantity): --colorize_output prints the samples
coloured by --colorize_mode (plain text when stdout is not a terminal); --show_heatmaps writes top-k
heatmaps, a summary figure and samples.json under RUN/samples/<--sample_name or timestamp>/;
--output_json writes the samples with their per-token records. --stop_strings ends a sample at the
first occurrence of any string in its generated text (the text is cut before it).

Evaluation (--eval_only) is one deterministic pass over the split from its start, in non-overlapping
block_size windows (every token after the first is predicted exactly once, with up to block_size - 1
tokens of context), up to --eval_max_tokens predicted tokens. It reports the mean cross-entropy
(nats/token), perplexity = exp(loss) and bits per byte = total nats / ln 2 / UTF-8 bytes of the
decoded predicted tokens, as a table and as JSON (RUN/eval_<dataset>_<split>.json or --eval_output).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import track
from rich.table import Table

import sample_analysis
from data.dataset import check_token_ids, load_meta, resolve_data_dir
from data.tokenizer import load_tokenizer
from devices import DTYPES, autocast, choose_device, choose_dtype
from errors import ArgumentParser, UserError, run_cli, unknown_name_message
from generation import MAX_NEW_TOKENS, SAMPLING_RULES, Engine, build_normalizer, check_sampling, sampling_probs
from io_utils import atomic_write_json
from model import GPT
from run_dir import CHECKPOINT_CHOICES, load_run

QUIT_WORDS = ("quit",)  # --interactive ends at EOF, an empty line, or one of these
DECODE_CHUNK = 1 << 20  # tokens decoded at once when counting the bytes of an evaluated split


def read_start(start: str) -> str:
    """--start text, or the contents of a file given as FILE:path."""
    if start.startswith("FILE:"):
        path = Path(start[5:])
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--start {start}: cannot read {path} ({e.__class__.__name__})") from None
    return start


def unescape(s: str) -> str:
    r"""Backslash escapes a shell cannot type easily: \n, \t and \\ (others stay as written)."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], s)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="sample.py", description=__doc__.split("\n")[0], allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    run = p.add_argument_group("run")
    run.add_argument("--out_dir", default="out/quickstart", help="run directory written by train.py")
    run.add_argument("--ckpt", choices=CHECKPOINT_CHOICES, default="best", help="which checkpoint of the run")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    run.add_argument("--dtype", default="auto", choices=DTYPES,
                     help="autocast dtype on CUDA (auto: bfloat16 where supported)")

    s = p.add_argument_group("sampling")
    s.add_argument("--start", default=None, help="prompt text, or FILE:path to read it from a file (default: a newline)")
    s.add_argument("--num_samples", type=int, default=1, help="independent samples to draw (per prompt)")
    s.add_argument("--max_new_tokens", type=int, default=500,
                   help=f"tokens to generate per sample (1 to {MAX_NEW_TOKENS:,})")
    s.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy")
    s.add_argument("--top_k", type=int, default=200, help="keep the k most likely tokens (0: all)")
    s.add_argument("--top_p", type=float, default=None, help="nucleus sampling: keep the smallest set with this mass")
    s.add_argument("--seed", type=int, default=1337, help="random seed of the sampler")
    s.add_argument("--kv_cache", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse keys/values of earlier positions (same tokens, faster)")
    s.add_argument("--stop_strings", nargs="+", default=None, metavar="S",
                   help=r"end a sample when its generated text contains any of these; the text is cut before it "
                        r"(\n, \t and \\ are understood)")
    s.add_argument("--interactive", action="store_true",
                   help="read prompts from stdin, one per line, until EOF, an empty line or 'quit'")

    a = p.add_argument_group("per-token analysis (definitions: sample_analysis.py)")
    a.add_argument("--colorize_output", action="store_true", help="print samples coloured by --colorize_mode")
    a.add_argument("--colorize_mode", default=None, metavar="MODE",
                   help="implies --colorize_output (default probability); one of: " + "; ".join(
                       f"{k}: {m.description}" for k, m in sample_analysis.COLOR_MODES.items()))
    a.add_argument("--colorize_topk", type=int, default=5,
                   help="candidates per step in the topk table, --output_json and --show_heatmaps")
    a.add_argument("--show_heatmaps", action="store_true",
                   help="write top-k heatmaps, summary.png and samples.json under RUN/samples/<name>/")
    a.add_argument("--sample_name", default=None, help="folder name under RUN/samples/ (default: a timestamp)")
    a.add_argument("--output_json", default=None, metavar="PATH",
                   help="write the samples, their per-token records and the settings to this JSON file")

    e = p.add_argument_group("evaluation (instead of sampling)")
    e.add_argument("--eval_only", action="store_true", help="evaluate on --eval_dataset instead of sampling")
    e.add_argument("--eval_dataset", default=None, metavar="NAME",
                   help="prepared data set: a folder, or a name under data/ (as train.py --dataset)")
    e.add_argument("--eval_split", default=None, choices=("val", "train"), help="split to evaluate (default val)")
    e.add_argument("--eval_batch_size", type=int, default=None, help="windows per forward pass (default 8)")
    e.add_argument("--eval_max_tokens", type=int, default=None,
                   help="predict at most this many tokens from the split's start (default: the whole split)")
    e.add_argument("--eval_output", default=None, metavar="PATH",
                   help="result JSON (default RUN/eval_<dataset>_<split>.json)")

    b = p.add_argument_group("lm-eval benchmarks (analysis/lm_eval_model.py; needs the eval extra)")
    b.add_argument("--lm_eval_tasks", default=None, metavar="T1,T2",
                   help="run lm-eval's simple_evaluate on these tasks (e.g. shakespeare, hellaswag,arc_easy)")
    b.add_argument("--lm_eval_include_path", action="append", default=None, metavar="DIR",
                   help="extra folder of task YAMLs (data/lm_eval_tasks is always included); repeatable")
    b.add_argument("--lm_eval_limit", type=float, default=None, help="at most this many documents per task")
    b.add_argument("--lm_eval_batch_size", type=int, default=8, help="requests per forward pass")
    b.add_argument("--lm_eval_num_fewshot", type=int, default=None, help="few-shot examples (default: the task's)")
    b.add_argument("--lm_eval_output", default=None, metavar="PATH",
                   help="results JSON (default RUN/lm_eval/<tasks>.json)")

    c = p.add_argument_group("chat (chat.py)")
    c.add_argument("--chat", action="store_true",
                   help="chat with the run in a streaming REPL (python chat.py --help for its commands); "
                        "--device, --seed and the sampling flags given here are passed on")
    return p


CHAT_FLAGS = ("device", "seed", "temperature", "top_k", "top_p", "max_new_tokens")  # passed on to chat.py


def run_chat(args: argparse.Namespace, argv: list[str] | None):
    """sample.py --chat: chat.main with the run and the flags the user gave (chat.py keeps its own defaults)."""
    import chat
    given = {a.split("=")[0][2:] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
    chat_argv = ["--out_dir", str(args.out_dir), "--ckpt", args.ckpt]
    for name in CHAT_FLAGS:
        if name in given and getattr(args, name) is not None:
            chat_argv += [f"--{name}", str(getattr(args, name))]
    return chat.main(chat_argv)


def run_lm_eval(args: argparse.Namespace) -> dict:
    """sample.py --lm_eval_tasks: lm-eval's simple_evaluate on the run (analysis/lm_eval_model.py)."""
    try:
        from analysis.lm_eval_model import run_lm_eval as run
    except ImportError as e:
        raise UserError(f"--lm_eval_tasks needs lm-eval ({e}); pip install lm-eval, or the extra ppa-gpt[eval]") from None
    tasks = [t.strip() for t in args.lm_eval_tasks.split(",") if t.strip()]
    if not tasks:
        raise UserError("--lm_eval_tasks is empty; give task names separated by commas (e.g. shakespeare)")
    return run(args.out_dir, tasks, include_path=args.lm_eval_include_path, ckpt=args.ckpt, device=args.device,
               batch_size=args.lm_eval_batch_size, limit=args.lm_eval_limit, num_fewshot=args.lm_eval_num_fewshot,
               output=args.lm_eval_output, seed=args.seed, dtype=args.dtype)


SAMPLING_ONLY = ("start", "stop_strings", "interactive", "colorize_output", "colorize_mode", "show_heatmaps",
                 "sample_name", "output_json")
EVAL_ONLY = ("eval_dataset", "eval_split", "eval_batch_size", "eval_max_tokens", "eval_output")


def check_args(args: argparse.Namespace) -> None:
    """Every bad value or combination of flags as a one-line UserError; fills implied settings."""
    given = lambda name: getattr(args, name) is not None and getattr(args, name) is not False  # noqa: E731
    if args.eval_only:
        if args.eval_dataset is None:
            raise UserError("--eval_only needs --eval_dataset NAME (a prepared data set, as train.py --dataset)")
        for name in SAMPLING_ONLY:
            if given(name):
                raise UserError(f"--eval_only evaluates instead of sampling; drop --{name}")
        for name in ("eval_batch_size", "eval_max_tokens"):
            if given(name) and getattr(args, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
        return
    for name in EVAL_ONLY:
        if given(name):
            raise UserError(f"--{name} applies only with --eval_only; add --eval_only")
    if args.num_samples < 1:
        raise UserError(f"--num_samples must be at least 1, got {args.num_samples}")
    for name in SAMPLING_RULES:  # the rules chat.py's flags and commands share (generation.py)
        try:
            setattr(args, name, check_sampling(name, getattr(args, name)))
        except UserError as e:
            raise UserError(f"--{name} {e}") from None
    if args.colorize_mode is not None:
        if args.colorize_mode not in sample_analysis.COLOR_MODES:
            raise UserError("--colorize_mode: " + unknown_name_message(
                "colorize mode", args.colorize_mode, sample_analysis.COLOR_MODES))
        args.colorize_output = True
    if args.colorize_topk < 1:
        raise UserError(f"--colorize_topk must be at least 1, got {args.colorize_topk}")
    if args.interactive and args.start is not None:
        raise UserError("--interactive reads its prompts from stdin; drop --start")
    if args.sample_name is not None:
        if not args.show_heatmaps:
            raise UserError("--sample_name names the folder of --show_heatmaps; add --show_heatmaps")
        if args.sample_name in ("", ".", "..") or re.search(r"[/\\]", args.sample_name):
            raise UserError(f"--sample_name '{args.sample_name}' must be a plain folder name (no slashes)")
    if args.stop_strings is not None:
        args.stop_strings = [unescape(x) for x in args.stop_strings]
        if "" in args.stop_strings:
            raise UserError("--stop_strings: an empty string would stop every sample at once; drop it")
    if args.output_json is not None and Path(args.output_json).is_dir():
        raise UserError(f"--output_json {args.output_json} is a folder; give a file path such as samples.json")


def prompts(args: argparse.Namespace):
    """The prompt texts: --start once, or (--interactive) one line of stdin at a time."""
    if not args.interactive:
        yield read_start("\n" if args.start is None else args.start)
        return
    while True:
        if sys.stdin.isatty():
            print("prompt> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("", *QUIT_WORDS):  # "" is EOF; "\n" an empty line
            return
        yield line.rstrip("\r\n")


def draw_sample(model: GPT, tok, ids: list[int], args, gen: torch.Generator, normalizer, record: bool) -> dict:
    """One sample continuing `ids`: {"prompt_text", "text", "stop_string", "tokens": [records]}.

    Records (record=True) are taken in Engine.generate's on_step hook from the logits the sampler used;
    the same hook stops generation once the generated text contains a stop string."""
    generated: list[int] = []
    tokens: list[dict] = []
    stops = args.stop_strings or []
    # a stop string of L characters spans at most 4 L tokens (one per UTF-8 byte): decode only that tail
    tail = 4 * max(map(len, stops), default=0) + 4

    def on_step(logits: torch.Tensor, next_ids: torch.Tensor) -> bool:  # logits (1, V), next_ids (1, 1)
        generated.append(int(next_ids[0, 0]))
        if record:  # greedy draws from no distribution: record temperature 1 (sample_analysis.py)
            probs = sampling_probs(logits, args.temperature or 1.0, args.top_k or None, args.top_p, normalizer)
            tokens.append(sample_analysis.token_record(logits[0], probs[0], generated[-1], tok.decode,
                                                       args.colorize_topk))
        return bool(stops) and any(s in tok.decode(generated[-tail:]) for s in stops)

    engine = Engine(model, vocab_limit=tok.vocab_size, use_cache=args.kv_cache, normalizer=normalizer)
    engine.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                    top_p=args.top_p, generator=gen, on_step=on_step)
    prompt_text, text = tok.decode(ids), tok.decode(generated)
    found = [(text.find(s), s) for s in stops if s in text]
    if not found:
        return {"prompt_text": prompt_text, "text": tok.decode(ids + generated), "stop_string": None, "tokens": tokens}
    cut, stop = min(found)
    # keep the tokens that start before the cut (their decoded prefix is shorter than it)
    n_keep = sum(1 for i in range(len(generated)) if len(tok.decode(generated[:i])) < cut)
    return {"prompt_text": prompt_text, "text": prompt_text + text[:cut], "stop_string": stop,
            "tokens": tokens[:n_keep]}


def sample_report(args, ckpt: dict, samples: list[dict]) -> dict:
    """The JSON of --output_json and --show_heatmaps: run, settings, definitions and every sample."""
    return {"run": {"out_dir": str(args.out_dir), "ckpt": args.ckpt, "iter_num": ckpt.get("iter_num")},
            "settings": vars(args), "definitions": sample_analysis.DEFINITIONS, "samples": samples}


def main(argv: list[str] | None = None) -> list[str] | dict:
    """Sample (returns the sample texts) or, with --eval_only, evaluate (returns the result dict)."""
    args = build_parser().parse_args(argv)
    if args.chat and (args.lm_eval_tasks or args.eval_only):
        raise UserError("--chat runs a REPL on its own; drop --lm_eval_tasks / --eval_only")
    if args.chat:
        return run_chat(args, argv)
    if args.lm_eval_tasks is not None:
        if args.eval_only:
            raise UserError("--lm_eval_tasks and --eval_only are two evaluations; run them one at a time")
        return run_lm_eval(args)
    check_args(args)
    device = choose_device(args.device)
    dtype = choose_dtype(args.dtype, device)
    model, tok, ckpt = load_run(args.out_dir, args.ckpt, device)
    ctx = autocast(device, dtype) if device.type == "cuda" else nullcontext()
    console = Console(highlight=False)
    if args.eval_only:
        with ctx:
            return evaluate(model, tok, ckpt, args, console)

    record = args.colorize_output or args.show_heatmaps or args.output_json is not None
    figures_dir = None
    if args.show_heatmaps:
        figures_dir = Path(args.out_dir) / "samples" / (args.sample_name or time.strftime("%Y%m%d-%H%M%S"))
    normalizer = build_normalizer(model)  # built once, shared by every sample's Engine
    gen = torch.Generator(device=device).manual_seed(args.seed)
    samples: list[dict] = []
    drawn = 0  # samples whose figures are written
    for prompt in prompts(args):
        try:
            ids = tok.encode(prompt)
        except UserError as e:
            if not args.interactive:
                raise
            print(f"error: {e}", file=sys.stderr)  # a bad prompt should not end the session
            continue
        if not ids:
            if tok.eot_token is None:
                raise UserError("--start is empty and this tokenizer has no end-of-text token to start from; give a prompt")
            ids = [tok.eot_token]
        for i in range(args.num_samples):
            with ctx:
                sample = {"prompt": prompt, **draw_sample(model, tok, ids, args, gen, normalizer, record)}
            samples.append(sample)
            if args.colorize_output:
                console.print(sample_analysis.COLOR_MODES[args.colorize_mode or "probability"].render(sample),
                              soft_wrap=True)
            else:
                print(sample["text"])
            if i < args.num_samples - 1:
                print("-" * 40)
        # after each prompt, so that an --interactive session keeps its work; figures only of the new samples
        write_sample_files(args, ckpt, samples, figures_dir, first=drawn)
        drawn = len(samples)
    return [s["text"] for s in samples]


def write_sample_files(args, ckpt: dict, samples: list[dict], figures_dir: Path | None, first: int) -> None:
    if args.output_json is not None:
        atomic_write_json(args.output_json, sample_report(args, ckpt, samples))
    if figures_dir is not None and samples[first:]:
        sample_analysis.write_figures(samples, figures_dir, first)
        atomic_write_json(figures_dir / "samples.json", sample_report(args, ckpt, samples))


# ---------------------------------------------------------------------------------------- evaluation
def eval_windows(n_targets: int, block_size: int) -> list[tuple[int, int]]:
    """(start, length) of the non-overlapping windows predicting tokens 1..n_targets of a split:
    inputs data[start:start+length], targets data[start+1:start+1+length]."""
    return [(s, min(block_size, n_targets - s)) for s in range(0, n_targets, block_size)]


@torch.no_grad()
def evaluate(model: GPT, tok, ckpt: dict, args, console: Console) -> dict:
    """Mean loss, perplexity and bits per byte of the run on one split (module docstring)."""
    data_dir = resolve_data_dir(args.eval_dataset)
    meta = load_meta(data_dir)
    data_tok = load_tokenizer(meta)
    if data_tok.meta() != tok.meta():
        raise UserError(f"the tokenizer of --eval_dataset {args.eval_dataset} ({describe(data_tok)}) differs from "
                        f"the one run {args.out_dir} was trained with ({describe(tok)}); evaluate on a data set "
                        "prepared with the run's tokenizer")
    check_token_ids(meta, model.config.vocab_size)
    split = args.eval_split or "val"
    data = np.memmap(data_dir / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")
    if len(data) < 2:
        raise UserError(f"the {split} split of {data_dir} has {len(data)} token(s); evaluation needs at least 2")
    n_targets = min(len(data) - 1, args.eval_max_tokens or len(data))
    block, batch_size = model.config.block_size, args.eval_batch_size or 8
    windows = eval_windows(n_targets, block)
    # full windows share a length and go in batches; the last, shorter one (if any) goes on its own
    full, tail = [w for w in windows if w[1] == block], [w for w in windows if w[1] < block]
    batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + ([tail] if tail else [])
    device = model.lm_head.weight.device
    total_nats = 0.0
    for group in track(batches, description=f"evaluating {split}", console=console,
                       disable=not console.is_terminal):
        x = torch.from_numpy(np.stack([data[s:s + n].astype(np.int64) for s, n in group])).to(device)      # (B, T)
        y = torch.from_numpy(np.stack([data[s + 1:s + 1 + n].astype(np.int64) for s, n in group])).to(device)
        logits, _ = model(x, all_logits=True)  # (B, T, V)
        total_nats += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
    n_bytes = sum(len(tok.decode(data[s:min(s + DECODE_CHUNK, n_targets + 1)].tolist()).encode("utf-8"))
                  for s in range(1, n_targets + 1, DECODE_CHUNK))
    loss = total_nats / n_targets
    result = {
        "dataset": args.eval_dataset, "data_dir": str(data_dir), "split": split,
        "run": {"out_dir": str(args.out_dir), "ckpt": args.ckpt, "iter_num": ckpt.get("iter_num")},
        "method": "one deterministic pass from the split's start in non-overlapping block_size windows; "
                  "every token after the first is predicted once",
        "block_size": block, "windows": len(windows), "tokens": n_targets, "split_tokens": len(data),
        "bytes": n_bytes, "total_nats": total_nats, "loss": loss, "perplexity": math.exp(loss),
        "bits_per_byte": total_nats / math.log(2) / n_bytes if n_bytes else None,
    }
    out = Path(args.eval_output or Path(args.out_dir) / f"eval_{Path(args.eval_dataset).name}_{split}.json")
    atomic_write_json(out, result)
    table = Table(title=f"{args.out_dir} on {args.eval_dataset} ({split})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in (("loss (nats/token)", f"{loss:.4f}"), ("perplexity", f"{result['perplexity']:.3f}"),
                        ("bits per byte", "n/a" if n_bytes == 0 else f"{result['bits_per_byte']:.4f}"),
                        ("tokens", f"{n_targets:,} of {len(data) - 1:,}"), ("bytes", f"{n_bytes:,}")):
        table.add_row(name, value)
    console.print(table)
    console.print(f"written to {out}")
    return result


def describe(tok) -> str:
    """A tokenizer in words, for the mismatch message: 'char, 65 tokens', 'tiktoken gpt2, 50257 tokens'."""
    meta = tok.meta()
    return " ".join(filter(None, (meta["tokenizer"], meta.get("encoding")))) + f", {tok.vocab_size} tokens"


if __name__ == "__main__":
    sys.exit(run_cli(main))
