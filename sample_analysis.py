"""Per-token analysis of the samples sample.py draws: token records, colourised text, top-k tables, heatmaps.

sample.py is the CLI (python sample.py --out_dir RUN --colorize_output --colorize_mode entropy, or
--show_heatmaps, --output_json PATH); this module holds what it records and how it is rendered.

One record per generated token, taken at the step that chose it (`token_record`):
  probability  p(chosen token) under the distribution the sampler drew from: the raw logits divided by the
               temperature, top-k and top-p filtered, then normalised by the run's --softmax_variant_output
               (generation.sampling_probs; softmax by default). At temperature 0 (greedy) the sampler draws from
               no distribution (it takes the arg max), so records then use temperature 1 with the same
               filters: the model's own distribution.
  logit        the chosen token's raw logit: the LM head's output, before temperature and filtering.
  rank         how many tokens have a strictly larger raw logit (0 = the model's top choice).
  entropy      -sum p ln p of that same sampling distribution, in nats (at most ln of the vocabulary size).
  top_k        the k most probable tokens of that distribution (k = --colorize_topk), best first.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from rich.color import Color
from rich.console import Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text

from io_utils import atomic_write_bytes

ENTROPY_UNIT = "nats"
DEFINITIONS = {  # written into every JSON report, so a reader needs no source code
    "probability": "p(chosen) after logits / temperature, top-k, top-p and the --softmax_variant_output "
                   "normaliser (temperature 1 when greedy)",
    "logit": "raw logit of the chosen token, before temperature and filtering",
    "rank": "number of tokens with a strictly larger raw logit (0 = top choice)",
    "entropy": f"entropy of the sampling distribution, in {ENTROPY_UNIT}",
    "top_k": "the most probable tokens of the sampling distribution, best first",
}


def show_token(text: str) -> str:
    """A token's text made visible: escapes for newlines and tabs, '·' for spaces."""
    return json.dumps(text, ensure_ascii=False)[1:-1].replace(" ", "·")


def token_record(logits: torch.Tensor, probs: torch.Tensor, chosen: int, decode: Callable[[list[int]], str],
                 k: int) -> dict:
    """The record of one generated token; logits and probs are the step's (V,) raw logits and sampling
    distribution. The dict is JSON-ready (plain ints, floats and strings)."""
    logits, probs = logits.float(), probs.float()
    p = probs[probs > 0]
    top = torch.topk(probs, min(k, probs.numel()))
    return {
        "token_id": chosen,
        "text": decode([chosen]),
        "probability": probs[chosen].item(),
        "logit": logits[chosen].item(),
        "rank": int((logits > logits[chosen]).sum()),
        "entropy": -(p * p.log()).sum().item(),
        "top_k": [{"token_id": i, "text": decode([i]), "probability": q}
                  for i, q in zip(top.indices.tolist(), top.values.tolist())],
    }


# ----------------------------------------------------------------------------------- colourised text
# Red (bad: improbable, low logit, low rank, uncertain) through yellow to green (good), ColorBrewer RdYlGn.
GRADIENT = ((215, 48, 39), (254, 224, 139), (26, 152, 80))
LEGEND_STEPS = 10


def gradient_color(v: float) -> Color:
    """Colour of a score v in [0, 1] on the red -> yellow -> green gradient."""
    v = min(max(v, 0.0), 1.0) * (len(GRADIENT) - 1)
    i = min(int(v), len(GRADIENT) - 2)
    a, b, t = GRADIENT[i], GRADIENT[i + 1], v - i
    return Color.from_rgb(*(round(x + (y - x) * t) for x, y in zip(a, b)))


@dataclass
class Scale:
    """Scores in [0, 1] (1 = green) for a sample's tokens, and the values shown at the two legend ends."""
    scores: list[float]
    red: str
    green: str


def probability_scale(tokens: list[dict]) -> Scale:
    return Scale([t["probability"] for t in tokens], "0", "1")


def logit_scale(tokens: list[dict]) -> Scale:
    values = [t["logit"] for t in tokens]
    lo, hi = min(values, default=0.0), max(values, default=0.0)
    span = hi - lo
    return Scale([(v - lo) / span if span > 0 else 1.0 for v in values], f"{lo:.2f}", f"{hi:.2f}")


def rank_scale(tokens: list[dict]) -> Scale:
    worst = max((t["rank"] for t in tokens), default=0)
    # log scale: the difference between rank 0 and 3 matters more than between 100 and 103
    scores = [1.0 - math.log1p(t["rank"]) / math.log1p(worst) if worst else 1.0 for t in tokens]
    return Scale(scores, f"rank {worst}", "rank 0")


def entropy_scale(tokens: list[dict]) -> Scale:
    top = max((t["entropy"] for t in tokens), default=0.0)
    return Scale([1.0 - t["entropy"] / top if top > 0 else 1.0 for t in tokens],
                 f"{top:.2f} {ENTROPY_UNIT}", f"0 {ENTROPY_UNIT}")


def render_scalar(sample: dict, scale_fn: Callable[[list[dict]], Scale], description: str) -> RenderableType:
    """The sample's text, each generated token on its score's colour, then a one-line legend."""
    scale = scale_fn(sample["tokens"])
    text = Text()
    text.append(sample["prompt_text"], style="dim")  # Text(.., style=) would dim the whole line
    for token, score in zip(sample["tokens"], scale.scores):
        text.append(token["text"], style=Style(color="black", bgcolor=gradient_color(score)))
    legend = Text(f"colour = {description}: red {scale.red} ")
    for i in range(LEGEND_STEPS):
        legend.append("█", style=Style(color=gradient_color(i / (LEGEND_STEPS - 1))))
    legend.append(f" {scale.green} green", style="default")
    return Group(text, legend)


def render_topk(sample: dict) -> RenderableType:
    """The sample's text, then one table row per generated token: its top-k candidates with their
    probabilities, the chosen one marked with '*'."""
    k = max((len(t["top_k"]) for t in sample["tokens"]), default=0)
    table = Table(title="top-k candidates per step (* = chosen)", title_justify="left")
    for name in ("step", "chosen", "p", "rank", *(f"#{i + 1}" for i in range(k))):
        table.add_column(name, justify="right" if name in ("step", "p", "rank") else "left")
    for step, t in enumerate(sample["tokens"]):
        cells = []
        for c in t["top_k"]:
            mark = "*" if c["token_id"] == t["token_id"] else ""
            cells.append(Text(f"{mark}{show_token(c['text'])} {c['probability']:.3f}",
                              style="bold green" if mark else ""))
        table.add_row(str(step), show_token(t["text"]), f"{t['probability']:.3f}", str(t["rank"]), *cells)
    return Group(Text(sample["text"]), table)


@dataclass(frozen=True)
class ColorMode:
    description: str
    render: Callable[[dict], RenderableType]


def _scalar_mode(scale_fn, description: str) -> ColorMode:
    return ColorMode(description, lambda sample: render_scalar(sample, scale_fn, description))


# --colorize_mode choices: the one place their names are written
COLOR_MODES: dict[str, ColorMode] = {
    "probability": _scalar_mode(probability_scale, "probability of the chosen token (sampling distribution)"),
    "logit": _scalar_mode(logit_scale, "raw logit of the chosen token, min..max over this sample"),
    "rank": _scalar_mode(rank_scale, "rank of the chosen token by raw logit (0 = top choice; log scale)"),
    "entropy": _scalar_mode(entropy_scale, f"entropy of the sampling distribution ({ENTROPY_UNIT}; "
                                           "green = confident)"),
    "topk": ColorMode("table of the top-k candidates at every step, chosen one marked", render_topk),
}


# ------------------------------------------------------------------------------------------ figures
HEATMAP_POSITIONS = 64  # generated positions per heatmap figure: beyond this, token labels become unreadable
ANNOTATE_MAX_K = 10     # cells are annotated with their token when at most this many ranks are drawn


def _save_png(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _new_figure(width: float, height: float):
    # the object API with the Agg canvas: no pyplot state, no GUI backend, safe in threads and tests
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def heatmap_figure(tokens: list[dict], first: int, title: str):
    """Top-k probabilities of generated positions first..first+len(tokens)-1: x = position, y = rank."""
    import numpy as np
    k = max(len(t["top_k"]) for t in tokens)
    probs = np.zeros((k, len(tokens)))  # (k, positions)
    for j, t in enumerate(tokens):
        for r, c in enumerate(t["top_k"]):
            probs[r, j] = c["probability"]
    fig = _new_figure(max(6.0, 0.42 * len(tokens) + 2.0), max(2.5, 0.45 * k + 1.6))
    ax = fig.add_subplot()
    im = ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    for j, t in enumerate(tokens):
        for r, c in enumerate(t["top_k"]):
            chosen = c["token_id"] == t["token_id"]
            if k <= ANNOTATE_MAX_K:
                ax.text(j, r, show_token(c["text"])[:6], ha="center", va="center", fontsize=6,
                        color="black" if c["probability"] > 0.6 else "white", fontweight="bold" if chosen else None)
            if chosen:  # outline the cell of the token the sampler picked
                ax.add_patch(_rectangle(j, r))
    ax.set_xticks(range(len(tokens)), [str(first + j) for j in range(len(tokens))], fontsize=6, rotation=90)
    ax.set_yticks(range(k), [str(r) for r in range(k)])
    ax.set_xlabel("generated position (chosen token outlined in red)")
    ax.set_ylabel("rank in top-k")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="probability", fraction=0.03, pad=0.01)
    return fig


def _rectangle(x: int, y: int):
    from matplotlib.patches import Rectangle
    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.2)


def summary_figure(samples: list[dict]):
    """Chosen-token probability and sampling entropy along every sample (one line per sample)."""
    fig = _new_figure(9.0, 5.0)
    ax_p, ax_h = fig.subplots(2, 1, sharex=True)
    for i, s in enumerate(samples):
        x = range(len(s["tokens"]))
        ax_p.plot(x, [t["probability"] for t in s["tokens"]], lw=0.9, label=f"sample {i}")
        ax_h.plot(x, [t["entropy"] for t in s["tokens"]], lw=0.9)
    ax_p.set_ylabel("p(chosen)")
    ax_p.set_ylim(0, 1.02)
    ax_h.set_ylabel(f"entropy ({ENTROPY_UNIT})")
    ax_h.set_xlabel("generated position")
    if 1 < len(samples) <= 10:
        ax_p.legend(fontsize=7, loc="lower right")
    ax_p.set_title("chosen-token probability and entropy of the sampling distribution", fontsize=9)
    return fig


def write_figures(samples: list[dict], out_dir: Path, first: int = 0) -> list[Path]:
    """sample_<i>_topk_<j>.png (HEATMAP_POSITIONS positions each) for samples[first:] (those drawn since
    the last call, in --interactive), and summary.png of all samples."""
    written = []
    for i, s in enumerate(samples[first:], start=first):
        for j, first in enumerate(range(0, len(s["tokens"]), HEATMAP_POSITIONS)):
            part = s["tokens"][first:first + HEATMAP_POSITIONS]
            k = max(len(t["top_k"]) for t in part)
            title = f"sample {i}: top-{k} probabilities, positions {first}-{first + len(part) - 1}"
            written.append(_save_png(heatmap_figure(part, first, title), out_dir / f"sample_{i}_topk_{j}.png"))
    written.append(_save_png(summary_figure(samples), out_dir / "summary.png"))
    return written
