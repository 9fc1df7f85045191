"""Chat with a trained run in the terminal: a streaming REPL over the run's chat template.

    python chat.py --out_dir out/sft
    python chat.py --out_dir out/sft --system "You are terse." --temperature 0.7 --top_p 0.9 --seed 3
    echo "Who is there?" | python chat.py --out_dir out/sft --temperature 0      # a plain-text transcript

Each line you type joins the history; the prompt is `ChatTemplate.encode_prompt(history)`
(data/chat_template.py) and the reply streams token by token until a stop token, a stop string, /max
tokens or the end of the context (block_size). Replies are decoded as a whole and only the new suffix is
printed, so tokens that split a character or merge across characters print correctly, and text that may
begin a stop string is held back until it is known not to.

The KV cache (generation.Engine) lives across turns: a new prompt that starts with what the cache holds
runs only its new tokens; where it differs (old turns dropped, a reply re-tokenised) the cache is rolled
back to the common prefix, so the tokens are the ones a fresh prefill gives. When the conversation no longer fits
block_size (with room for a reply), the oldest turns are dropped; the system message stays.

Commands: /temp X, /topk K, /topp P|off, /max N (no value: show it), /model RUN, /models, /reset,
/params, /help, /quit (also Ctrl-D; Ctrl-C leaves too). Colours and a rich prompt when stdout is a
terminal, plain text otherwise. `main(argv, stdin, stdout)` returns the ChatRepl, for tests.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from data.chat_template import ChatTemplate
from devices import choose_device
from errors import ArgumentParser, UserError, run_cli, unknown_name_message
from generation import Engine, check_sampling
from gpt_conf import GPTConfig
from run_dir import CHECKPOINT_CHOICES, SUMMARY, RunDir, load_run

SIZE_FIELDS = ("n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "vocab_size")  # rows of /params


# ---------------------------------------------------------------------------------------- settings
def parse_temperature(text: str) -> float:
    return check_sampling("temperature", text)


def parse_top_k(text: str) -> int:
    return check_sampling("top_k", text)


def parse_top_p(text: str) -> float | None:
    if str(text).lower() in ("off", "none"):
        return None
    try:
        return check_sampling("top_p", text)
    except UserError as e:
        raise UserError(f"{e}".replace(", got", ", or off, got", 1)) from None


def parse_max_new_tokens(text: str) -> int:
    return check_sampling("max_new_tokens", text)


@dataclass
class Settings:
    temperature: float = 0.8
    top_k: int = 50
    top_p: float | None = None
    max_new_tokens: int = 256


# slash command -> (Settings field, parser, argument, help). The CLI flags (--<field>) come from here too.
SETTINGS = {
    "temp": ("temperature", parse_temperature, "X", "sampling temperature (0: greedy)"),
    "topk": ("top_k", parse_top_k, "K", "sample from the K most likely tokens (0: all)"),
    "topp": ("top_p", parse_top_p, "P", "nucleus sampling: the smallest set of mass P (off: no limit)"),
    "max": ("max_new_tokens", parse_max_new_tokens, "N", "most tokens per reply"),
}
# the other commands -> (argument, help); each is ChatRepl.cmd_<name>
ACTIONS = {
    "model": ("RUN", "load another run (a path, or a name from /models) and clear the history"),
    "models": ("", "list the runs beside the current one that hold a checkpoint"),
    "reset": ("", "clear the history (the system message stays)"),
    "params": ("", "show the sampling settings and the model"),
    "help": ("", "list the commands"),
    "quit": ("", "leave (also Ctrl-D or Ctrl-C)"),
}
COMMANDS = {**{name: (arg, help) for name, (_, _, arg, help) in SETTINGS.items()}, **ACTIONS}


def show_value(value) -> str:
    return "off" if value is None else str(value)


def config_changes(cfg: GPTConfig) -> str:
    """The fields of `cfg` beyond SIZE_FIELDS that differ from a default GPTConfig of the same size."""
    base = GPTConfig(**{name: getattr(cfg, name) for name in SIZE_FIELDS if name != "n_kv_head"})
    changed = [f"{f.name}={getattr(cfg, f.name)}" for f in fields(cfg)
               if f.name not in SIZE_FIELDS and getattr(cfg, f.name) != getattr(base, f.name)]
    return ", ".join(changed) or "none (GPTConfig defaults)"


def held_back(text: str, stop_strings: list[str]) -> int:
    """How many characters at the end of `text` must wait: a trailing U+FFFD (a multi-byte character
    whose remaining bytes are still to come) and the longest tail that begins a stop string."""
    n = len(text)
    while n and text[n - 1] == "\ufffd":
        n -= 1
    tail = max((k for s in stop_strings for k in range(1, len(s)) if text[:n].endswith(s[:k])), default=0)
    return len(text) - n + tail


class ReplyText:
    """A reply decoded as it grows: `add(id)` decodes every id so far and returns the text that became
    final (tokens may split or merge characters, so per-token decoding would print them wrong), and
    cuts the reply at the first stop string (`stopped`). `flush()` returns what was held back."""

    def __init__(self, tokenizer, stop_strings: list[str]):
        self.tokenizer, self.stop_strings = tokenizer, stop_strings
        self.ids: list[int] = []
        self.text, self.shown, self.stopped = "", 0, False

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids)
        cut = min((i for i in (self.text.find(s) for s in self.stop_strings) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            return self.flush()
        ready = len(self.text) - held_back(self.text, self.stop_strings)
        piece = self.text[self.shown:ready]
        self.shown = max(self.shown, ready)
        return piece

    def flush(self) -> str:
        piece = self.text[self.shown:]
        self.shown = len(self.text)
        return piece


# ---------------------------------------------------------------------------------------- session
class ChatSession:
    """A loaded run, its chat template, the history and the generation Engine, whose KV cache is kept
    between turns."""

    def __init__(self, run_dir: str | Path, which: str, device: torch.device, settings: Settings,
                 system: str | None = None, seed: int = 1337):
        self.which, self.device, self.settings, self.system = which, device, settings, system
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.seed = seed
        self.load(run_dir)

    def load(self, run_dir: str | Path) -> None:
        """Load a run (everything is built before anything is replaced, so a failure keeps the old one)."""
        model, tokenizer, ckpt = load_run(run_dir, self.which, self.device)
        template = ChatTemplate(tokenizer)
        engine = Engine(model, vocab_limit=tokenizer.vocab_size)  # its KV cache lives across turns
        self.run_dir, self.model, self.tokenizer, self.ckpt = Path(run_dir), model, tokenizer, ckpt
        self.template, self.engine = template, engine
        self.reset()

    def reset(self) -> None:
        self.history: list[dict] = [{"role": "system", "content": self.system}] if self.system else []

    @property
    def runs_dir(self) -> Path:
        """The folder holding this run and its siblings (/models, /model NAME)."""
        return self.run_dir.resolve().parent

    @property
    def block_size(self) -> int:
        return self.model.config.block_size

    @property
    def reused(self) -> int:
        """Tokens of the last prompt whose keys/values came from the cache."""
        return self.engine.reused

    @property
    def prefilled(self) -> int:
        """Tokens of the last prompt that ran through the model."""
        return self.engine.prefilled

    def build_prompt(self) -> tuple[list[int], int]:
        """Prompt ids of the history; the oldest turns leave the history until the prompt plus room for
        a reply (min(max_new_tokens, block_size / 2)) fits block_size. Returns (ids, messages dropped)."""
        block = self.block_size
        room = min(self.settings.max_new_tokens, block // 2)
        first = 1 if self.history and self.history[0]["role"] == "system" else 0
        history = list(self.history)
        while True:
            ids = self.template.encode_prompt(history)
            if len(ids) + room <= block:
                break
            if len(history) - first <= 1:
                with_system = "the system message and " if first else ""
                raise UserError(f"the prompt needs {len(ids)} tokens with only {with_system}your last message; the "
                                f"model's context is {block} tokens, {room} of them kept for the reply: write less, "
                                "or lower /max")
            del history[first]  # the oldest user message, then the replies to it
            while len(history) - first > 1 and history[first]["role"] == "assistant":
                del history[first]
        dropped = len(self.history) - len(history)
        self.history[:] = history
        return ids, dropped

    def generate_reply(self, prompt: list[int], on_text=None) -> tuple[str, str]:
        """Continue `prompt` with the engine (its cache reused and rolled back across turns) until a stop
        token, a stop string or the budget; `on_text(piece)` receives the reply text as it becomes final.
        Returns (reply, why it ended: "stop", "max_new_tokens" or "context")."""
        s = self.settings
        reply = ReplyText(self.tokenizer, self.template.stop_strings)
        emit = on_text or (lambda piece: None)

        def on_step(logits: torch.Tensor, next_id: torch.Tensor) -> bool:  # next_id (1, 1)
            emit(reply.add(next_id.item()))
            return reply.stopped

        budget = min(s.max_new_tokens, self.block_size - len(prompt))  # the prompt and reply share the context
        _, why = self.engine.generate(prompt, budget, s.temperature, s.top_k or None, s.top_p, self.generator,
                                      stop_ids=self.template.stop_token_ids, on_step=on_step)
        if why == "max_new_tokens" and budget < s.max_new_tokens:
            why = "context"
        emit(reply.flush())
        return reply.text, why

    def add_user(self, message: str) -> tuple[list[int], int]:
        """Add a user message; (prompt ids, messages dropped from the history). A message that cannot
        be encoded or does not fit raises a UserError and leaves the history as it was."""
        self.history.append({"role": "user", "content": message})
        try:
            return self.build_prompt()
        except UserError:
            self.history.pop()
            raise

    def answer(self, prompt: list[int], on_text=None) -> tuple[str, str]:
        """Generate the reply to `prompt` and add it to the history; (reply, why it ended)."""
        reply, why = self.generate_reply(prompt, on_text)
        if reply:  # the template takes no empty message; an empty reply leaves no trace
            self.history.append({"role": "assistant", "content": reply})
        return reply, why


# ---------------------------------------------------------------------------------------- REPL
class ChatRepl:
    """Reads lines from `stdin`, runs slash commands, streams replies to `console`."""

    def __init__(self, session: ChatSession, console: Console, stdin):
        self.session, self.console, self.stdin = session, console, stdin
        self.told_cropping = False
        tty = getattr(stdin, "isatty", lambda: False)()
        self.interactive = tty and stdin is sys.stdin and console.is_terminal  # a person at a terminal
        self.echo = not tty  # piped input is echoed, so the output reads as a transcript
        if self.interactive:
            try:
                import readline  # noqa: F401  (input() then edits lines and recalls earlier ones)
            except ImportError:  # not on every platform
                pass

    # ---- output
    def say(self, text: str = "", style: str | None = None, end: str = "\n") -> None:
        self.console.print(text, style=style, end=end, markup=False, highlight=False, emoji=False)

    def error(self, message: str) -> None:
        self.say(f"error: {message}", style="bold red")

    def table(self, rows: list[tuple], header: tuple | None = None) -> None:
        table = Table(show_header=header is not None, box=None, pad_edge=False, header_style="bold")
        for name in header or [""] * len(rows[0]):
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*(Text(str(c)) for c in row))
        self.console.print(table)

    # ---- input
    def read_line(self) -> str | None:
        """The next line without its newline; None at end of input."""
        prompt = Text("you> ", style="bold green")
        if self.interactive:
            try:
                return self.console.input(prompt)
            except EOFError:
                self.say()
                return None
        self.console.print(prompt, end="")
        line = self.stdin.readline()
        if not line:
            self.say()
            return None
        line = line.rstrip("\r\n")
        if self.echo:
            self.say(line)
        return line

    # ---- loop
    def run(self) -> None:
        s = self.session
        self.say(f"chatting with {s.run_dir} ({self.model_line()}); /help lists the commands, /quit or Ctrl-D leaves",
                 style="dim")
        try:
            while (line := self.read_line()) is not None:
                line = line.strip()
                if line.startswith("/"):
                    if not self.command(line):
                        break
                elif line:
                    self.reply(line)
        except KeyboardInterrupt:
            self.say()
        self.say("bye", style="dim")

    def reply(self, message: str) -> None:
        s = self.session
        try:
            prompt, dropped = s.add_user(message)
        except UserError as e:
            self.error(str(e))
            return
        if dropped and not self.told_cropping:
            keep = " (the system message stays)" if s.system else ""
            self.say(f"(the conversation outgrew the model's {s.block_size}-token context: the oldest turns are "
                     f"dropped from now on{keep})", style="dim")
            self.told_cropping = True
        self.say("assistant> ", style="bold cyan", end="")
        _, why = s.answer(prompt, on_text=lambda piece: piece and self.say(piece, end=""))
        self.say()
        if why == "context":
            self.say(f"(reply cut: the {s.block_size}-token context is full)", style="dim")

    def command(self, line: str) -> bool:
        """Run one slash command; False when the session should end."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name not in COMMANDS:
            self.error(unknown_name_message("command", f"/{name}", [f"/{c}" for c in COMMANDS]))
            return True
        try:
            if name in SETTINGS:
                self.set_value(name, arg)
                return True
            if arg and not ACTIONS[name][0]:
                raise UserError("takes no argument")
            return getattr(self, f"cmd_{name}")(arg) is not False
        except UserError as e:
            self.error(f"/{name} {e}")
            return True

    def set_value(self, name: str, arg: str) -> None:
        field, parse, _, _ = SETTINGS[name]
        if arg:
            setattr(self.session.settings, field, parse(arg))
        self.say(f"{field} = {show_value(getattr(self.session.settings, field))}", style="dim")

    # ---- actions (ACTIONS)
    def cmd_model(self, arg: str) -> None:
        s = self.session
        if not arg:
            self.say(f"model: {s.run_dir} (/models lists the others)", style="dim")
            return
        path = Path(arg).expanduser()
        if not path.is_dir() and (s.runs_dir / arg).is_dir():
            path = s.runs_dir / arg  # a name from /models
        s.load(path)
        self.told_cropping = False
        self.say(f"loaded {path} ({self.model_line()}); the history is cleared", style="dim")

    def cmd_models(self, arg: str) -> None:
        s = self.session
        rows = []
        for d in sorted(p for p in s.runs_dir.iterdir() if p.is_dir()):
            run = RunDir(d)
            if run.latest_checkpoint_path() is None:
                continue
            summary = run.read_json_or_none(SUMMARY) or {}
            loss = summary.get("best_val_loss")
            rows.append(("*" if d.resolve() == s.run_dir.resolve() else "", d.name, summary.get("iters", "?"),
                         "?" if loss is None else f"{loss:.4f}"))
        self.say(f"runs in {s.runs_dir} (* = loaded; /model NAME switches):", style="dim")
        self.table(rows, ("", "run", "iters", "best val loss"))

    def cmd_reset(self, arg: str) -> None:
        self.session.reset()
        self.told_cropping = False
        self.say("history cleared", style="dim")

    def cmd_params(self, arg: str) -> None:
        s, cfg = self.session, self.session.model.config
        rows = [(f.name, show_value(getattr(s.settings, f.name))) for f in fields(Settings)]
        rows += [("seed", s.seed), ("run", s.run_dir), ("checkpoint", self.checkpoint_line()),
                 ("parameters", f"{s.model.num_params():,}"), ("device", s.device)]
        rows += [(name, getattr(cfg, name)) for name in SIZE_FIELDS]
        rows += [("other config", config_changes(cfg))]
        cached = s.engine.cached.size(1)  # context tokens whose keys/values the engine's cache holds
        rows += [("chat template", f"{s.template.layout} layout"),
                 ("history", f"{len(s.history)} messages, {cached} of {s.block_size} context tokens cached")]
        self.table(rows)

    def cmd_help(self, arg: str) -> None:
        self.table([(f"/{name}" + (f" {a}" if a else ""), help) for name, (a, help) in COMMANDS.items()])
        self.say("a setting command without a value shows it; anything else you type is sent to the model",
                 style="dim")

    def cmd_quit(self, arg: str) -> bool:
        return False

    # ---- descriptions
    def checkpoint_line(self) -> str:
        ckpt = self.session.ckpt
        loss = ckpt.get("best_val_loss")
        loss = f", best val loss {loss:.4f}" if isinstance(loss, float) and math.isfinite(loss) else ""
        return f"{self.session.which}, iter {ckpt.get('iter_num', '?')}{loss}"

    def model_line(self) -> str:
        s = self.session
        return f"{s.model.num_params() / 1e6:.2f}M parameters, {s.block_size}-token context, {self.checkpoint_line()}"


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="chat.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--out_dir", default="out/quickstart", help="run directory written by train.py")
    p.add_argument("--ckpt", choices=CHECKPOINT_CHOICES, default="best", help="which checkpoint of the run")
    p.add_argument("--system", default=None, help="system message that opens the conversation")
    defaults = Settings()
    for name, (field, _, arg, help) in SETTINGS.items():
        default = show_value(getattr(defaults, field))
        p.add_argument(f"--{field}", default=default, metavar=arg,
                       help=f"{help}; default {default}; /{name} changes it")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=1337, help="random seed of the sampler")
    return p


def build_console(stdout) -> Console:
    console = Console(file=stdout, soft_wrap=True)
    return console if console.is_terminal else Console(file=stdout, soft_wrap=True, width=160)


def main(argv: list[str] | None = None, stdin=None, stdout=None) -> ChatRepl:
    args = build_parser().parse_args(argv)
    values = {}
    for field, parse, _, _ in SETTINGS.values():
        try:
            values[field] = parse(getattr(args, field))
        except UserError as e:
            raise UserError(f"--{field} {e}") from None
    if args.system is not None and not args.system.strip():
        raise UserError("--system is empty; give a message or leave the flag out")
    device = choose_device(args.device)
    session = ChatSession(args.out_dir, args.ckpt, device, Settings(**values), args.system, args.seed)
    repl = ChatRepl(session, build_console(stdout or sys.stdout), stdin or sys.stdin)
    repl.run()
    return repl


if __name__ == "__main__":
    sys.exit(run_cli(main))
