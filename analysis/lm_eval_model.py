"""Evaluate a ppa-gpt run with EleutherAI's lm-evaluation-harness (lm-eval 0.4.x): an LM wrapper and a runner.

    python analysis/lm_eval_model.py --out_dir out/quickstart --tasks shakespeare
    python analysis/lm_eval_model.py --out_dir RUN --tasks shakespeare_nextline,shakespeare_ppl --limit 50 \
        --batch_size 16 --num_fewshot 2 --output results.json
    python analysis/lm_eval_model.py --out_dir RUN --tasks lambada_openai   # lm-eval's own: needs its HF data set

    from analysis.lm_eval_model import PPAGPTLM, run_lm_eval
    lm = PPAGPTLM.from_run("out/quickstart", device="cpu")          # any lm_eval LM consumer accepts it
    results = run_lm_eval("out/quickstart", "shakespeare", limit=20)

Tasks: lm-eval's own (most download a Hugging Face data set on first use), the offline tasks of
data/lm_eval_tasks/ (always on the include path: shakespeare_nextline, shakespeare_ppl and their group
shakespeare; no network needed) and YAML folders given with --include_path. The results (lm-eval's
dict, made JSON-serialisable) go to RUN/lm_eval/<tasks>.json, and a table is printed.

How PPAGPTLM scores (it subclasses lm_eval's TemplateLM, the base of its Hugging Face model HFLM):
- loglikelihood(context, continuation): split as HFLM does (TemplateLM._encode_pair): trailing whitespace
  of the context moves to the continuation, the whole string and the context are encoded and the
  continuation is what the whole has beyond the context's tokens (for char/byte tokenizers the same as
  encoding both separately). Each continuation token is scored by the log_softmax of the logits at the
  position before it, over the model's whole (padded) vocabulary, as train.py's loss; is_greedy compares
  the argmax over the tokenizer's ids, as generation does. Inputs longer than block_size keep their last
  block_size + 1 tokens (the context is cut on the left); a continuation longer than block_size is an error.
- Empty context: the tokenizer's end-of-text token (tokenizer.eot_token, e.g. tiktoken's). Char and byte
  tokenizers have none; their documents are joined with blank lines (data/prepare.py), so the newline
  token stands in. A vocabulary without a newline uses the first continuation token as context (that
  token is then not scored). loglikelihood_rolling starts documents from the same token.
- loglikelihood_rolling: lm_eval.utils.get_rolling_token_windows + make_disjoint_window with
  context_len=1 and max_seq_len=block_size, as HFLM: disjoint windows of block_size predicted tokens.
- generate_until: generation.Engine (KV cache) on batches of equal-length contexts (the model has no
  padding mask); contexts keep their last block_size tokens and the window slides as generation goes on.
  It stops once every row holds a stop string (or the end-of-text token) or after max_gen_toks
  (default 256); the text is cut at the first stop string. temperature/do_sample/top_k/top_p
  follow lm_eval.models.utils.normalize_gen_kwargs (greedy unless do_sample).
Requests are sorted by length, batched (--batch_size, right padding: causal attention never looks at
it) and returned in their original order. On CUDA the forward passes run under autocast (--dtype).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
import sys
from contextlib import nullcontext
from pathlib import Path


import torch
import torch.nn.functional as F

from errors import ArgumentParser, UserError, run_cli
from generation import Engine
from io_utils import atomic_write_json

try:
    from lm_eval import utils as lm_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
except ImportError:  # lm-eval is the optional "eval" dependency
    raise UserError("lm-eval is not installed; install it with: pip install -e '.[eval]'") from None

TASKS_DIR = Path(__file__).resolve().parent.parent / "data" / "lm_eval_tasks"  # our offline tasks
SAMPLING_KWARGS = ("temperature", "top_k", "top_p")  # generation kwargs Engine.generate understands
HANDLED_KWARGS = ("do_sample", "until", "max_gen_toks")  # consumed before Engine.generate
log = logging.getLogger(__name__)


def _progress(disable: bool):
    """A rich progress bar on stderr (where lm-eval's own bars go), shown only on a terminal, gone when done."""
    from rich.console import Console
    from rich.progress import Progress
    console = Console(stderr=True)
    return Progress(console=console, disable=disable or not console.is_terminal, transient=True)


def _single_token(tokenizer, text: str) -> int | None:
    """The id of `text` when the tokenizer encodes it as one token, else None (e.g. not in a char vocabulary)."""
    try:
        ids = tokenizer.encode(text)
    except UserError:
        return None
    return ids[0] if len(ids) == 1 else None


class PPAGPTLM(TemplateLM):
    """An lm_eval LM over a ppa-gpt model and its tokenizer (see the module docstring for the scoring)."""

    backend = "causal"

    def __init__(self, model, tokenizer, batch_size: int = 8, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float32, max_gen_toks: int = 256, seed: int = 1234,
                 info: dict | None = None):
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"--batch_size must be a positive integer, got {batch_size!r}")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                            f"{model.config.vocab_size}; they do not belong together")
        self._device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self._device).eval()
        self.tokenizer = tokenizer
        self.dtype = dtype
        self._batch_size = batch_size
        self._max_gen_toks = max_gen_toks
        self.seed = seed
        self.info = dict(info or {})
        self._prefix = tokenizer.eot_token if tokenizer.eot_token is not None else _single_token(tokenizer, "\n")

    @classmethod
    def from_run(cls, out_dir: str | Path, ckpt: str = "best", device: str = "auto", dtype: str = "auto",
                 **kwargs) -> "PPAGPTLM":
        """The model and tokenizer of a run directory (run_dir.load_run), on `device` (auto, cpu, cuda, ...)."""
        from devices import choose_device, choose_dtype
        from run_dir import load_run
        dev = choose_device(device, None)
        model, tokenizer, state = load_run(out_dir, ckpt, dev)
        info = {"run": str(out_dir), "ckpt": ckpt, "iter_num": state.get("iter_num"),
                "best_val_loss": state.get("best_val_loss")}
        return cls(model, tokenizer, device=dev, dtype=choose_dtype(dtype, dev), info=info, **kwargs)

    # ------------------------------------------------------------------ what lm-eval asks of a model
    @property
    def eot_token_id(self) -> int | None:
        return self.tokenizer.eot_token  # None for char and byte tokenizers

    @property
    def prefix_token_id(self) -> int | None:
        """Context of an empty context: end-of-text, else the newline token, else None (module docstring)."""
        return self._prefix

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        meta = json.dumps(self.tokenizer.meta(), sort_keys=True).encode()  # a char vocabulary is part of it
        return f"ppa-gpt-{self.tokenizer.name}-{hashlib.sha256(meta).hexdigest()[:12]}"

    def get_model_info(self) -> dict:
        """Added by simple_evaluate to results["config"]."""
        return {"model_num_parameters": self.model.num_params(), "model_dtype": str(self.dtype),
                "block_size": self.max_length, "tokenizer": self.tokenizer_name, **self.info}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    def _autocast(self):
        if self._device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast(self._device.type, dtype=self.dtype)
        return nullcontext()

    # ------------------------------------------------------------------ log-likelihood
    def _encode_request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids); an empty context becomes [prefix_token_id] (docstring)."""
        if context:
            ctx, cont = self._encode_pair(context, continuation)  # HFLM's split (TemplateLM)
        else:
            ctx, cont = [], self.tok_encode(continuation)
        if not ctx:  # empty, or only whitespace that _encode_pair moved into the continuation
            ctx, cont = ([self._prefix], cont) if self._prefix is not None else (cont[:1], cont[1:])
        return ctx, cont

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        reqs = [(req.args, *self._encode_request(*req.args)) for req in requests]
        return self._loglikelihood_tokens(reqs, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: (cache key or None, context ids, continuation ids) -> (sum log-prob, is_greedy) each."""
        L = self.max_length
        for _, ctx, cont in requests:
            if len(cont) > L:
                raise UserError(f"a task asks for the log-likelihood of a {len(cont)}-token continuation, longer "
                                f"than this model's context (block_size {L}); use tasks with shorter answers "
                                "or a model with a larger block_size")
            if cont and not ctx:
                raise ValueError("context ids must not be empty; loglikelihood() supplies the prefix token")
        # longest first, so each batch holds similar lengths and the largest batch comes first
        collator = Collator(list(requests), sort_fn=lambda r: (-len(r[1]) - len(r[2]), tuple(r[1] + r[2])))
        out = []
        with _progress(disable_tqdm) as progress:
            bar = progress.add_task("log-likelihood requests", total=len(requests))
            for chunk in collator.get_batched(n=self.batch_size):
                out.extend(self._score_batch(chunk))
                progress.advance(bar, len(chunk))
        return collator.get_original(out)

    def _score_batch(self, chunk) -> list[tuple[float, bool]]:
        """One forward pass over a batch of (cache key, context ids, continuation ids)."""
        L, out = self.max_length, []
        # inputs: context + continuation without its last token, at most block_size of them (left cut)
        inputs = [(ctx + cont)[-(L + 1):][:-1] for _, ctx, cont in chunk]
        # right padding: causal attention never lets a real position look at the padding after it
        idx = torch.zeros((len(chunk), max(len(x) for x in inputs)), dtype=torch.long)  # (B, T)
        for row, x in enumerate(inputs):
            idx[row, :len(x)] = torch.tensor(x, dtype=torch.long)
        with torch.no_grad(), self._autocast():
            logits, _ = self.model(idx.to(self._device), all_logits=True)  # (B, T, V)
        for row, ((key, _, cont), x) in enumerate(zip(chunk, inputs)):
            n, c = len(x), len(cont)
            if c == 0:
                answer = (0.0, True)  # log P(empty continuation) = 0
            else:
                # position j predicts token j + 1, so the last c inputs predict the continuation
                logprobs = F.log_softmax(logits[row, n - c:n].float(), dim=-1)  # (c, V)
                target = torch.tensor(cont, dtype=torch.long, device=logprobs.device)
                greedy = logprobs[:, :self.tokenizer.vocab_size].argmax(dim=-1)  # ids the tokenizer has
                answer = (float(logprobs.gather(-1, target[:, None]).sum()), bool((greedy == target).all()))
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents in disjoint block_size windows (HFLM's windows)."""
        windows, owner = [], []
        for k, req in enumerate(requests):
            tokens, prefix = self.tok_encode(req.args[0]), self._prefix
            if prefix is None:  # no end-of-text or newline token: the first token is context only
                prefix, tokens = (tokens[0], tokens[1:]) if tokens else (None, [])
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=tokens, prefix_token=prefix, max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[k] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        eot_text = self.tok_decode([self.eot_token_id]) if self.eot_token_id is not None else None
        groups: dict[tuple, list[int]] = {}  # (generation kwargs, context length) -> request indices
        prepared, warned = [], []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs or {}), self.max_gen_toks)
            until = handle_stop_sequences(kwargs["until"], eos=eot_text)
            ignored = sorted(set(kwargs) - set(SAMPLING_KWARGS) - set(HANDLED_KWARGS))
            if ignored and ignored not in warned:
                warned.append(ignored)
                log.warning("generation kwargs %s are ignored: ppa-gpt's generate takes %s", ", ".join(ignored),
                            ", ".join(HANDLED_KWARGS + SAMPLING_KWARGS))
            ids = self.tok_encode(context)[-self.max_length:]
            if not ids:
                if self._prefix is None:
                    raise UserError("a generation request has an empty context and this tokenizer has neither an "
                                    "end-of-text nor a newline token to start from")
                ids = [self._prefix]
            prepared.append((ids, until, kwargs))
            key = (json.dumps({**kwargs, "until": until}, sort_keys=True, default=str), len(ids))
            groups.setdefault(key, []).append(i)
        gen = torch.Generator(device=self._device).manual_seed(self.seed)
        results: list[str | None] = [None] * len(requests)
        batches = [indices[s:s + self.batch_size] for indices in groups.values()
                   for s in range(0, len(indices), self.batch_size)]
        with _progress(disable_tqdm) as progress:
            bar = progress.add_task("generate_until requests", total=len(requests))
            for batch in batches:
                _, until, kwargs = prepared[batch[0]]
                x = torch.tensor([prepared[i][0] for i in batch], dtype=torch.long, device=self._device)  # (B, T)
                for i, text in zip(batch, self._generate(x, until, kwargs, gen)):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                progress.advance(bar, len(batch))
        return results

    def _generate(self, x: torch.Tensor, until: list[str], kwargs: dict, gen: torch.Generator) -> list[str]:
        """Continue each row of x (B, T); stop early once every row's text holds a stop string."""
        new = [[] for _ in range(x.size(0))]
        done = [False] * x.size(0)

        def on_step(logits: torch.Tensor, next_ids: torch.Tensor) -> bool:  # next_ids (B, 1)
            for b, t in enumerate(next_ids[:, 0].tolist()):
                if not done[b]:
                    new[b].append(t)
                    text = self.tok_decode(new[b])
                    done[b] = t == self.eot_token_id or any(s and s in text for s in until)
            return all(done)

        engine = Engine(self.model, vocab_limit=self.tokenizer.vocab_size)  # a fresh cache per batch
        with self._autocast():
            engine.generate(x, kwargs["max_gen_toks"], temperature=kwargs.get("temperature", 0.0),
                            top_k=kwargs.get("top_k"), top_p=kwargs.get("top_p"), generator=gen, on_step=on_step)
        return [postprocess_generated_text(self.tok_decode(ids), stop=until, think_end_token=None) for ids in new]


# ---------------------------------------------------------------------------------------- the runner

def resolve_tasks(names: list[str], task_manager) -> list[str]:
    """Task specs for TaskManager.load: names, glob patterns (expanded) and YAML file paths; an unknown
    name is a UserError naming the closest known ones."""
    specs = []
    for name in names:
        if name in task_manager.all_tasks:
            specs.append(name)
        elif name.endswith(".yaml") and Path(name).is_file():
            specs.append(str(Path(name).resolve()))
        elif matches := task_manager.match_tasks([name]):
            specs.extend(matches)
        else:
            raise UserError(unknown_task_message(name, task_manager.all_tasks))
    return list(dict.fromkeys(specs))


def unknown_task_message(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ";"
    return (f"unknown lm-eval task '{name}'{hint} {len(valid)} tasks are known (lm-eval's own, {TASKS_DIR.name}/ "
            f"and --include_path folders); list them with: lm-eval ls tasks --include_path {TASKS_DIR}")


def build_task_manager(names: list[str], include_path: list[str] | None = None):
    """(lm-eval TaskManager, task specs) over our task folder, include_path and lm-eval's own tasks.
    Indexing lm-eval's ~14k tasks takes seconds, so when every name is one of ours (or a YAML file)
    a manager without them is used; glob patterns always see every task."""
    from lm_eval.tasks import TaskManager
    for p in include_path or []:
        if not Path(p).is_dir():
            raise UserError(f"--include_path {p} is not a folder; give a folder of lm-eval task YAML files")
    paths = [str(TASKS_DIR), *(str(p) for p in include_path or [])]
    manager = TaskManager(include_path=paths, include_defaults=False)
    if not all(n in manager.all_tasks or (n.endswith(".yaml") and Path(n).is_file()) for n in names):
        manager = TaskManager(include_path=paths)
    return manager, resolve_tasks(names, manager)


def results_path(out_dir: str | Path, names: list[str]) -> Path:
    """RUN/lm_eval/<tasks>.json, the task names made safe for a file name."""
    stem = "+".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(n).stem if n.endswith(".yaml") else n) for n in names)
    if len(stem) > 120:
        stem = stem[:100] + "-" + hashlib.sha256(stem.encode()).hexdigest()[:8]
    return Path(out_dir) / "lm_eval" / f"{stem}.json"


def metric_rows(results: dict) -> list[tuple[str, str, str, float | str, float | str]]:
    """(task, metric, filter, value, stderr) for every metric of every task and group in the results."""
    rows = []
    for section in ("results", "groups"):
        for task, metrics in results.get(section, {}).items():
            if section == "groups" and task in results.get("results", {}):
                continue  # a group shows up in both sections
            for key, value in metrics.items():
                if "," not in key or "_stderr," in key:
                    continue
                metric, filt = key.split(",", 1)
                rows.append((task, metric, filt, value, metrics.get(f"{metric}_stderr,{filt}", "N/A")))
    return rows


def print_table(results: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    table = Table(title=title)
    for header, justify in (("task", "left"), ("metric", "left"), ("filter", "left"), ("value", "right"),
                            ("stderr", "right")):
        table.add_column(header, justify=justify)
    for task, metric, filt, value, stderr in metric_rows(results):
        table.add_row(task, metric, filt, fmt(value), fmt(stderr))
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a pipe or file: plain text, not squeezed into 80 columns
    console.print(table)


def run_lm_eval(out_dir: str | Path, tasks: str | list[str], include_path: str | list[str] | None = None,
                ckpt: str = "best", device: str = "auto", batch_size: int = 8, limit: int | float | None = None,
                num_fewshot: int | None = None, output: str | Path | None = None, seed: int = 1234,
                dtype: str = "auto") -> dict:
    """Evaluate the run in out_dir on lm-eval tasks (names, patterns or YAML paths; a comma-separated
    string or a list); writes the results JSON (default RUN/lm_eval/<tasks>.json), prints a table and
    returns the results. limit: documents per task (a fraction when below 1)."""
    from lm_eval import simple_evaluate
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise UserError("--tasks is empty; name lm-eval tasks, e.g. --tasks shakespeare")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be positive, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num_fewshot must not be negative, got {num_fewshot}")
    include = [include_path] if isinstance(include_path, (str, Path)) else list(include_path or [])
    manager, specs = build_task_manager(names, include)
    lm = PPAGPTLM.from_run(out_dir, ckpt, device, dtype, batch_size=batch_size, seed=seed)
    limit = int(limit) if limit is not None and limit >= 1 else limit
    results = simple_evaluate(model=lm, tasks=specs, task_manager=manager, num_fewshot=num_fewshot, limit=limit,
                              batch_size=batch_size, device=str(lm.device), log_samples=False,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed)
    # functions in the task configs, numpy scalars, sets: the same conversion as lm-eval's own CLI
    results = json.loads(json.dumps(results, default=lm_utils.handle_non_serializable))
    path = Path(output) if output else results_path(out_dir, names)
    atomic_write_json(path, results)
    print_table(results, f"lm-eval: {Path(out_dir).name} ({ckpt} checkpoint)")
    print(f"results -> {path}")
    return results


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="analysis/lm_eval_model.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--out_dir", required=True, help="run directory written by train.py")
    p.add_argument("--tasks", required=True,
                   help="comma-separated lm-eval task or group names, glob patterns or YAML files (e.g. shakespeare)")
    p.add_argument("--include_path", action="append", metavar="DIR",
                   help=f"extra folder of task YAMLs (repeatable; {TASKS_DIR.name}/ is always included)")
    p.add_argument("--ckpt", choices=("best", "last"), default="best", help="which checkpoint of the run")
    p.add_argument("--limit", type=float, default=None, help="documents per task (a fraction of them when below 1)")
    p.add_argument("--batch_size", type=int, default=8, help="requests per forward pass")
    p.add_argument("--num_fewshot", type=int, default=None,
                   help="few-shot examples in each prompt (default: the task's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="autocast dtype on CUDA (auto: bfloat16 where supported)")
    p.add_argument("--output", default=None, help="results JSON path (default: RUN/lm_eval/<tasks>.json)")
    p.add_argument("--seed", type=int, default=1234,
                   help="seed of lm-eval's few-shot sampling and of sampled generation")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    return run_lm_eval(args.out_dir, args.tasks, include_path=args.include_path, ckpt=args.ckpt, device=args.device,
                       batch_size=args.batch_size, limit=args.limit, num_fewshot=args.num_fewshot,
                       output=args.output, seed=args.seed, dtype=args.dtype)


if __name__ == "__main__":
    sys.exit(run_cli(main))
