"""Post-training quantisation (PTQ) of a trained run: its weights and activations, without retraining.

    python analysis/ptq.py --out_dir out/quickstart --weight_bits 8                   # weights, per channel
    python analysis/ptq.py --out_dir out/quickstart --weight_bits 4 --bits_for 'lm_head.weight=8'
    python analysis/ptq.py --out_dir out/quickstart --act_bits 8 --act_sites scores,probs
    python analysis/ptq.py --out_dir out/quickstart --sweep 32,16,8,6,4,3,2          # table, JSON, PNG
    python analysis/ptq.py --out_dir out/quickstart --weight_bits 8 --export out/quickstart/int8

Weights: every 2-D weight matrix (the linear layers of attention and MLP, the token embedding, which
is also the tied LM head, and a learned position table) is fake-quantised in a copy of the model with
variations.linear.fake_quant: --weight_scheme symmetric (absmax scale) or affine (min/max and a zero
point), --weight_granularity per_channel (one range per output channel: a row of the (out, in) matrix)
or per_tensor. --bits_for 'transformer.h.*.attn.*=4' gives the tensors whose names match the glob
(fnmatch, any of a tied tensor's names) their own bits (the last matching pattern wins; 32 keeps a
tensor in full precision). Not quantised: norms' weights and biases, linear biases, the normalisers'
and activations' learned constants (ConSmax beta/gamma, PReLU slope, ...), buffers. Layers that
quantise their own weights (--linear_variant quantized, bitlinear) round the PTQ weights again.

Activations: the model is rebuilt from the run's config with --act_bits_<site> set for the chosen sites
(variations/act_quant.py) and --act_quant_granularity per_tensor: one static range per site and layer,
the run's --act_quant_scheme unless --act_scheme. The ranges are calibrated by max calibration (the
min and max each site sees, Jacob et al., 2018) over --calib_batches batches of the run's own training
split, with the weights already quantised and every site passing tensors through unchanged while it
calibrates; then they are frozen. A site is set only in the layers that have it (a normaliser without
a row sum has no denominator; linear attention no scores); one that no layer has is an error. Runs
trained with activation sites of their own are refused (their ranges are part of the model).

Evaluation: the mean validation loss over --eval_iters batches (the run's batch size and context) drawn
with a fixed generator seed, so every configuration sees the same batches and the differences are the
quantisation's, and the perplexity exp(loss); in fp32, no autocast. 32 bits is full precision: such a
configuration gives exactly the unquantised model's loss.

--sweep 32,16,8,6,4,3,2: at each width, the groups weights (weights only; --bits_for applies below 32),
activations (every site the run has), normaliser (scores, the normaliser's internal sites, probs) and
all (weights and activations). A table, a JSON (--json, default OUT_DIR/ptq_sweep.json: settings,
command, every point) and a PNG (--plot, default beside the JSON: loss against bits, one line per group,
the full-precision loss dashed). --export DIR (one configuration) writes the integer weights, scales and
zero points with analysis/int_export.py and checks that the model rebuilt from them gives exactly the
fake-quantised model's logits. Every file is written atomically, after the evaluation.
"""
from __future__ import annotations

import dataclasses
import io
import math
import shlex
import sys
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import torch

from analysis import int_export
from analysis.inspect_ckpts import console_for_tables
from data.dataset import TokenData, check_token_ids, load_meta, resolve_data_dir
from data.tokenizer import load_tokenizer
from devices import choose_device
from errors import ArgumentParser, UserError, run_cli, unknown_name_message
from io_utils import atomic_write_bytes, atomic_write_json
from model import GPT, Block
from run_dir import CHECKPOINT_CHOICES, RunDir, load_run
from variations.act_quant import INSIDE_ATTENTION, SCHEMES, SITES, finish_calibration, site_modules, \
    start_calibration
from variations.linear import MAX_BITS, MIN_BITS, fake_quant

FULL = 32  # bits meaning full precision
GROUPS = ("weights", "activations", "normaliser", "all")
GRANULARITIES = ("per_channel", "per_tensor")
SWEEP_DEFAULT = "32,16,8,6,4,3,2"
EVAL_SEED, CALIB_SEED = 1_000_003, 2_000_003  # fixed: the same batches for every configuration
SITE_BUFFERS = ("lo", "hi", "seen")  # a per_tensor site's state, absent from checkpoints trained without it


# ---------------------------------------------------------------------------------------- settings
def check_bits(flag: str, value) -> int:
    """A bit width: MIN_BITS..MAX_BITS, or FULL (full precision)."""
    try:
        bits = int(str(value).strip())
    except ValueError:
        bits = None
    if bits is None or not (bits == FULL or MIN_BITS <= bits <= MAX_BITS):
        raise UserError(f"{flag} must be bits from {MIN_BITS} to {MAX_BITS}, or {FULL} for full precision; got {value!r}")
    return bits


def parse_sweep(text: str) -> list[int]:
    """'32,16,8' -> [32, 16, 8]: distinct widths, widest first."""
    bits = {check_bits("--sweep", b) for b in text.split(",") if b.strip()}
    if not bits:
        raise UserError(f"--sweep needs bit widths separated by commas, e.g. {SWEEP_DEFAULT}; got {text!r}")
    return sorted(bits, reverse=True)


def parse_bits_for(items: list[str]) -> tuple[tuple[str, int], ...]:
    """['transformer.h.*.attn.*=4'] -> (('transformer.h.*.attn.*', 4),)."""
    out = []
    for item in items:
        pattern, sep, bits = item.rpartition("=")
        if not sep or not pattern:
            raise UserError(f"--bits_for takes PATTERN=BITS (e.g. 'transformer.h.*.attn.*=4'), got {item!r}")
        out.append((pattern, check_bits(f"--bits_for {pattern}", bits)))
    return tuple(out)


def parse_sites(text: str) -> tuple[str, ...]:
    """'scores,probs' -> ('scores', 'probs'); an unknown name is a UserError with the closest one."""
    sites = [s.strip() for s in text.split(",") if s.strip()]
    for s in sites:
        if s not in SITES:
            raise UserError("--act_sites: " + unknown_name_message("activation site", s, SITES))
    if not sites:
        raise UserError(f"--act_sites needs site names separated by commas; valid: {', '.join(SITES)}")
    return tuple(dict.fromkeys(sites))


@dataclass(frozen=True)
class Spec:
    """One PTQ configuration. FULL bits (or no sites) leaves that part in full precision."""
    weight_bits: int = FULL
    bits_for: tuple[tuple[str, int], ...] = ()
    act_bits: int = FULL
    act_sites: tuple[str, ...] = ()

    @property
    def quantises_activations(self) -> bool:
        return self.act_bits != FULL and bool(self.act_sites)


# ---------------------------------------------------------------------------------------- the model's parts
def quantisable_weights(model: torch.nn.Module) -> dict[str, list[str]]:
    """First name -> every name (tied ones too) of each 2-D floating-point parameter: what PTQ rounds."""
    out, seen = {}, {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.dim() != 2 or not p.is_floating_point():
            continue
        if id(p) in seen:
            out[seen[id(p)]].append(name)
        else:
            seen[id(p)] = name
            out[name] = [name]
    return out


def weight_plan(weights: dict[str, list[str]], bits: int, bits_for=()) -> dict[str, int]:
    """First name -> bits of every weight to quantise: `bits`, or the last --bits_for pattern matching any
    of its names; FULL ones are left out."""
    plan = {}
    for first, names in weights.items():
        b = bits
        for pattern, pb in bits_for:
            if any(fnmatchcase(n, pattern) for n in names):
                b = pb
        if b != FULL:
            plan[first] = b
    return plan


def check_patterns(weights: dict[str, list[str]], bits_for) -> None:
    """Each --bits_for pattern matches at least one weight matrix."""
    names = [n for ns in weights.values() for n in ns]
    for pattern, _ in bits_for:
        if not any(fnmatchcase(n, pattern) for n in names):
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise UserError(f"--bits_for '{pattern}' matches no weight matrix (names: {shown}; norms, biases and "
                            "normaliser constants are never quantised)")


@torch.no_grad()
def quantise_weights(model: torch.nn.Module, plan: dict[str, int], scheme: str, granularity: str) -> None:
    """Replace the planned weights of `model` by their fake-quantised values (in place)."""
    params = dict(model.named_parameters())
    for name, bits in plan.items():
        p = params[name]
        p.copy_(fake_quant(p.float(), bits, scheme, per_row=granularity == "per_channel").to(p.dtype))


def layer_sites(config) -> list[frozenset[str]]:
    """The activation sites each layer has: a site is probed by building the layer's block with it set
    (on the meta device: no memory, no init), so the attention's and normaliser's own checks decide."""
    probed, out = {}, []
    for i in range(config.n_layer):
        cfg = config.for_layer(i)
        key = (cfg.attention_variant, cfg.softmax_variant_attn, cfg.mlp_variant)
        if key not in probed:
            have = set()
            for site in SITES:
                try:
                    with torch.device("meta"):
                        block = Block(dataclasses.replace(cfg, act_quant_granularity="per_tensor",
                                                          **{f"act_bits_{site}": [8]}))
                except UserError:  # this layer has no such site
                    continue
                if any(m.site == site for m in site_modules(block).values()):
                    have.add(site)
            probed[key] = frozenset(have)
        out.append(probed[key])
    return out


def trained_sites(config) -> list[str]:
    """The activation sites the run was trained with (its own quantisers)."""
    return [s for s in SITES if any(getattr(config, f"act_bits_{s}") or [])]


# ---------------------------------------------------------------------------------------- data
def run_batches(train: dict, config, tokenizer, device, calib: int, evals: int) -> tuple[list, list]:
    """(calibration batches from the training split, evaluation batches from the validation split) of the
    run's own data, each drawn with its fixed seed, at the run's batch size and context."""
    if train.get("sft_data"):
        from data.sft import SFTData
        data = SFTData(train["sft_data"], tokenizer, train["batch_size"], config.block_size, device,
                       train["sft_val_fraction"], train["sft_pack"], config.vocab_size)
    else:
        meta = load_meta(resolve_data_dir(train["dataset"]))
        if load_tokenizer(meta).meta() != tokenizer.meta():
            raise UserError(f"the data set {train['dataset']} was prepared with another tokenizer than the run's; "
                            "re-prepare it as the run was trained")
        check_token_ids(meta, config.vocab_size)
        data = TokenData(meta, train["batch_size"], config.block_size, device)
    if "val" not in data.eval_splits:
        raise UserError("the run has no validation split (--sft_val_fraction 0); PTQ evaluates on it")
    calib_gen, eval_gen = torch.Generator().manual_seed(CALIB_SEED), torch.Generator().manual_seed(EVAL_SEED)
    return ([data.batch("train", calib_gen) for _ in range(calib)],
            [data.batch("val", eval_gen) for _ in range(evals)])


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: list) -> float:
    """Mean loss over the batches (the same code path for every configuration)."""
    model.eval()
    return sum(model(x, y)[1].item() for x, y in batches) / len(batches)


# ---------------------------------------------------------------------------------------- a PTQ session
class PTQ:
    """A run's model and data; `build(spec)` gives the quantised model, `loss(model)` its validation loss."""

    def __init__(self, model: GPT, train: dict, tokenizer, device, calib_batches: int, eval_iters: int,
                 weight_scheme: str = "symmetric", weight_granularity: str = "per_channel", act_scheme: str | None = None):
        self.base, self.config, self.device = model.eval(), model.config, device
        self.weight_scheme, self.weight_granularity = weight_scheme, weight_granularity
        self.act_scheme = act_scheme or self.config.act_quant_scheme
        self.state = model.state_dict()
        self.weights = quantisable_weights(model)
        self.sites = layer_sites(self.config)
        self.trained_sites = trained_sites(self.config)
        self.calib, self.val = run_batches(train, self.config, tokenizer, device, calib_batches, eval_iters)

    def available(self, group: str) -> list[str]:
        """The sites of an activation group that some layer has."""
        wanted = INSIDE_ATTENTION if group == "normaliser" else SITES
        return [s for s in wanted if any(s in layer for layer in self.sites)]

    def check_sites(self, sites: tuple[str, ...]) -> None:
        if self.trained_sites:
            raise UserError(f"the run was trained with activation quantisation (act_bits_{self.trained_sites[0]}); "
                            "activation PTQ is for runs trained without it (its weights can still be quantised)")
        for s in sites:
            if not any(s in layer for layer in self.sites):
                cfg = self.config
                raise UserError(f"--act_sites {s}: no layer of this run has that site (attention "
                                f"'{cfg.attention_variant}', normaliser '{cfg.softmax_variant_attn}'); its sites: "
                                f"{', '.join(self.available('activations'))}")

    def act_config(self, spec: Spec):
        """The run's config with the spec's sites set (0 in layers without them), static ranges."""
        fields = {}
        for s in spec.act_sites:
            per_layer = [spec.act_bits if s in layer else 0 for layer in self.sites]
            fields[f"act_bits_{s}"] = per_layer[:1] if len(set(per_layer)) == 1 else per_layer
        return dataclasses.replace(self.config, act_quant_granularity="per_tensor", act_quant_scheme=self.act_scheme,
                                   **fields)

    def build(self, spec: Spec) -> tuple[GPT, dict[str, int]]:
        """(the quantised model in eval mode, its weight plan): weights rounded, then sites calibrated."""
        config = self.act_config(spec) if spec.quantises_activations else self.config
        model = GPT(config).to(self.device)
        result = model.load_state_dict(self.state, strict=False)
        allowed = {f"{name}.{b}" for name in site_modules(model) for b in SITE_BUFFERS}
        missing = [k for k in result.missing_keys if k not in allowed]
        if missing or result.unexpected_keys:  # the run's own model: a mismatch is a bug, not the user's
            raise RuntimeError(f"checkpoint does not fit the PTQ model: missing {missing[:3]}, unexpected "
                               f"{result.unexpected_keys[:3]}")
        plan = weight_plan(self.weights, spec.weight_bits, spec.bits_for)
        quantise_weights(model, plan, self.weight_scheme, self.weight_granularity)
        model.eval()
        if spec.quantises_activations:
            start_calibration(model)
            with torch.no_grad():
                for x, _ in self.calib:
                    model(x)
            finish_calibration(model)
        return model, plan

    def loss(self, model: torch.nn.Module) -> float:
        return evaluate_loss(model, self.val)

    def group_spec(self, group: str, bits: int, bits_for=()) -> Spec | None:
        """The configuration of a sweep point (FULL: full precision in every group); None: the group is skipped."""
        if self.skip_reason(group):
            return None
        if bits == FULL:
            return Spec()
        weights = {"weight_bits": bits, "bits_for": bits_for} if group in ("weights", "all") else {}
        if group == "weights":
            return Spec(**weights)
        return Spec(**weights, act_bits=bits, act_sites=tuple(self.available(group)))

    def skip_reason(self, group: str) -> str | None:
        """Why a sweep group cannot be run on this model, or None."""
        if group == "weights":
            return None
        if self.trained_sites:
            return f"the run was trained with activation sites ({', '.join(self.trained_sites)})"
        return None if self.available(group) else "no layer of this run has these sites"


# ---------------------------------------------------------------------------------------- output
def perplexity(loss: float) -> float:
    """exp(loss); inf past what a float holds (a model that quantisation broke)."""
    return math.inf if loss > 700 else math.exp(loss)  # nan stays nan


def point(loss: float, fp_loss: float) -> dict:
    return {"loss": loss, "perplexity": perplexity(loss), "delta_loss": loss - fp_loss}


def sweep_table(result: dict):
    from rich.table import Table
    groups = [g for g in GROUPS if result["groups"][g]["skipped"] is None]
    table = Table(title=f"PTQ sweep of {result['run']} ({result['checkpoint']}): validation loss (change from "
                        f"full precision {result['full_precision']['loss']:.4f})", title_justify="left")
    table.add_column("bits", justify="right")
    for g in groups:
        table.add_column(g, justify="right")
    by = {(p["group"], p["bits"]): p for p in result["points"]}
    for bits in result["settings"]["sweep"]:
        label = f"{bits} (fp)" if bits == FULL else str(bits)
        table.add_row(label, *(f"{by[g, bits]['loss']:.4f} ({by[g, bits]['delta_loss']:+.4f})" for g in groups))
    return table


def sweep_plot(result: dict) -> bytes:
    """PNG: validation loss against bits (widest first), one line per group, full precision dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    bits = result["settings"]["sweep"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    for group in GROUPS:
        pts = {p["bits"]: p["loss"] for p in result["points"] if p["group"] == group}
        if pts:
            ax.plot(range(len(bits)), [pts[b] for b in bits], marker="o", label=group)
    ax.axhline(result["full_precision"]["loss"], color="black", linestyle="--", linewidth=1, label="full precision")
    ax.set_xticks(range(len(bits)), [f"{b} (fp)" if b == FULL else str(b) for b in bits])
    ax.set_xlabel("bits")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"PTQ of {result['run']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def export_point(ptq: PTQ, model: GPT, plan: dict[str, int], dest: Path, source: dict) -> dict:
    """Integer export of one configuration, checked before writing: the model rebuilt from the bytes gives
    exactly the fake-quantised model's logits on a validation sequence (CPU, fp32)."""
    originals = {a: ptq.state[a] for first in plan for a in ptq.weights[first]}  # rounded from the originals
    state = {**model.state_dict(), **originals}
    sites = {name: {"site": m.site, "bits": m.bits, "scheme": m.scheme, "granularity": m.granularity,
                    **({"lo": m.lo.item(), "hi": m.hi.item()} if m.granularity == "per_tensor" else {})}
             for name, m in site_modules(model).items()}
    data, quant = int_export.encode(state, plan, ptq.weight_scheme, ptq.weight_granularity, model.config.to_dict(),
                                    extra={"source": source, "activation_sites": sites})
    rebuilt = int_export.round_trip(data, quant)
    x = ptq.val[0][0][:1].cpu()  # (1, T)
    with torch.no_grad():
        ours, theirs = model.cpu()(x, all_logits=True)[0], rebuilt(x, all_logits=True)[0]
    if not torch.equal(ours, theirs):  # a bug in the encoding, not the user's doing
        raise RuntimeError(f"the integer export's logits differ from the fake-quantised model's by "
                           f"{(ours - theirs).abs().max().item():.3g}; nothing was written")
    int_export.write_export(dest, data, quant)
    return {"dest": str(dest), "tensors_quantised": len(plan), "bytes": len(data), "logits_equal": True}


# ---------------------------------------------------------------------------------------- CLI
def parser() -> ArgumentParser:
    p = ArgumentParser(prog="analysis/ptq.py", description=__doc__.splitlines()[0])
    p.add_argument("--out_dir", required=True, help="run directory written by train.py")
    p.add_argument("--checkpoint", "--ckpt", choices=CHECKPOINT_CHOICES, default="best",
                   help="which checkpoint of the run (--ckpt as in export.py)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=None, help="torch's intra-op CPU threads (as train.py --threads): "
                   "on a busy machine, the free cores")
    w = p.add_argument_group("weights")
    w.add_argument("--weight_bits", metavar="BITS", help=f"bits of every 2-D weight ({MIN_BITS}..{MAX_BITS}; {FULL}: full precision, "
                                         "the default)")
    w.add_argument("--weight_granularity", choices=GRANULARITIES, default="per_channel",
                   help="one range per output channel (weight row) or one per matrix")
    w.add_argument("--weight_scheme", choices=SCHEMES, default="symmetric",
                   help="symmetric (absmax scale) or affine (min/max range, zero point)")
    w.add_argument("--bits_for", nargs="+", action="extend", default=[], metavar="PATTERN=BITS",
                   help="bits of the weights whose names match an fnmatch glob, e.g. 'transformer.h.*.attn.*=4' "
                        f"(last match wins; {FULL} keeps full precision)")
    a = p.add_argument_group("activations")
    a.add_argument("--act_bits", metavar="BITS", help=f"bits of the activation sites ({MIN_BITS}..{MAX_BITS}; {FULL}: off, the default)")
    a.add_argument("--act_sites", metavar="SITE,...", help="comma-separated sites (default: every site the run has): "
                                       + ", ".join(SITES))
    a.add_argument("--act_scheme", choices=SCHEMES, help="grid of the sites (default: the run's act_quant_scheme)")
    a.add_argument("--calib_batches", type=int, default=8, metavar="N",
                   help="training batches for max calibration (default 8)")
    e = p.add_argument_group("evaluation and output")
    e.add_argument("--eval_iters", type=int, default=20, metavar="N",
                   help="validation batches per configuration (default 20)")
    e.add_argument("--sweep", nargs="?", const=SWEEP_DEFAULT, metavar="BITS,...",
                   help=f"evaluate every group ({', '.join(GROUPS)}) at each width (default {SWEEP_DEFAULT})")
    e.add_argument("--json", metavar="FILE", help="write the results here (a sweep's default: OUT_DIR/ptq_sweep.json)")
    e.add_argument("--plot", metavar="PNG", help="a sweep's PNG (default: beside the JSON, .png)")
    e.add_argument("--export", metavar="DIR", help="write the integer weights (analysis/int_export.py) to DIR")
    return p


def check_args(args) -> None:
    for flag in ("calib_batches", "eval_iters"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.sweep is not None:
        clash = [f"--{f}" for f in ("weight_bits", "act_bits", "act_sites", "export") if getattr(args, f) is not None]
        if clash:
            raise UserError(f"--sweep sets the bits and the sites of each point; drop {', '.join(clash)}")
    elif args.plot is not None:
        raise UserError("--plot draws a sweep; add --sweep")
    if args.act_sites is not None and args.act_bits is None:
        raise UserError("--act_sites needs --act_bits")
    if args.export is not None and Path(args.export).exists() and not Path(args.export).is_dir():
        raise UserError(f"--export {args.export} is a file, not a folder; choose another --export")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    check_args(args)
    sweep = parse_sweep(args.sweep) if args.sweep is not None else None
    weight_bits = check_bits("--weight_bits", args.weight_bits) if args.weight_bits is not None else FULL
    act_bits = check_bits("--act_bits", args.act_bits) if args.act_bits is not None else FULL
    act_sites = parse_sites(args.act_sites) if args.act_sites is not None else None
    bits_for = parse_bits_for(args.bits_for)
    run = RunDir(args.out_dir)
    if not run.path.is_dir():
        raise UserError(f"run directory {run.path} not found; train one with: python train.py --out_dir {run.path}")
    if not run.is_run():
        raise UserError(f"{run.path} is not a ppa-gpt run (no config.json with model and train sections); give "
                        "the --out_dir of a train.py run")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    model, tokenizer, ckpt = load_run(run.path, args.checkpoint, device)
    train = ckpt.get("train_config") or run.read_config()["train"]
    ptq = PTQ(model, train, tokenizer, device, args.calib_batches, args.eval_iters, args.weight_scheme,
              args.weight_granularity, args.act_scheme)
    check_patterns(ptq.weights, bits_for)
    if act_bits != FULL:
        act_sites = act_sites or tuple(ptq.available("activations"))
        ptq.check_sites(act_sites)
    console = console_for_tables()
    fp_loss = ptq.loss(ptq.base)
    result = {"run": str(run.path), "checkpoint": run.checkpoint_path(args.checkpoint).name,
              "iter_num": ckpt.get("iter_num"), "command": shlex.join(["python", "analysis/ptq.py", *argv]),
              "settings": {"weight_scheme": args.weight_scheme, "weight_granularity": args.weight_granularity,
                           "bits_for": [f"{p}={b}" for p, b in bits_for], "act_scheme": ptq.act_scheme,
                           "act_granularity": "per_tensor", "calibration": "max (min and max seen), training split",
                           "calib_batches": args.calib_batches, "eval_iters": args.eval_iters,
                           "batch_size": train["batch_size"], "block_size": ptq.config.block_size,
                           "eval_seed": EVAL_SEED, "calib_seed": CALIB_SEED},
              "full_precision": {"loss": fp_loss, "perplexity": perplexity(fp_loss)}}
    if sweep is not None:
        run_sweep(ptq, sweep, bits_for, result, console)
        json_path = Path(args.json) if args.json else run.path / "ptq_sweep.json"
        plot_path = Path(args.plot) if args.plot else json_path.with_suffix(".png")
        result["json"], result["plot"] = str(json_path), str(plot_path)
        console.print(sweep_table(result))
        for group, g in result["groups"].items():
            if g["skipped"]:
                console.print(f"skipped {group}: {g['skipped']}", highlight=False)
        atomic_write_bytes(plot_path, sweep_plot(result))
        atomic_write_json(json_path, result)
        console.print(f"wrote {json_path} and {plot_path}", highlight=False)
        return result
    spec = Spec(weight_bits, bits_for, act_bits, act_sites or ())
    qmodel, plan = ptq.build(spec)
    loss = ptq.loss(qmodel)
    sites = {s: getattr(qmodel.config, f"act_bits_{s}") for s in spec.act_sites} if spec.quantises_activations else {}
    result["settings"].update(weight_bits=weight_bits, act_bits=act_bits)
    result["quantised"] = {**point(loss, fp_loss), "weights": plan, "act_sites": sites}
    console.print(f"{run.path} ({result['checkpoint']}): full precision loss {fp_loss:.4f} (ppl "
                  f"{perplexity(fp_loss):.3f}); quantised {loss:.4f} (ppl {perplexity(loss):.3f}, {loss - fp_loss:+.4f}): "
                  f"{len(plan)} of {len(ptq.weights)} weight matrices, {len(sites)} activation sites", highlight=False)
    if args.export:
        source = {"run": str(run.path), "checkpoint": result["checkpoint"], "iter_num": result["iter_num"],
                  "command": result["command"]}
        result["export"] = export_point(ptq, qmodel, plan, Path(args.export), source)
        console.print(f"wrote {args.export}/{int_export.WEIGHTS_FILE} and {int_export.QUANT_FILE}; the model rebuilt "
                      "from it gives exactly the fake-quantised logits", highlight=False)
    if args.json:
        atomic_write_json(args.json, result)
    return result


def run_sweep(ptq: PTQ, sweep: list[int], bits_for, result: dict, console) -> None:
    """Every group at every width into result['groups'] and result['points'] (equal configurations once)."""
    fp_loss, done = result["full_precision"]["loss"], {}
    result["settings"]["sweep"] = sweep
    result["groups"] = {g: {"skipped": ptq.skip_reason(g),
                            "sites": ptq.available(g) if g != "weights" and ptq.skip_reason(g) is None else []}
                        for g in GROUPS}
    result["points"] = []
    for bits in sweep:
        for group in GROUPS:
            spec = ptq.group_spec(group, bits, bits_for)
            if spec is None:
                continue
            if spec not in done:
                model, _ = ptq.build(spec)
                done[spec] = ptq.loss(model)
            result["points"].append({"group": group, "bits": bits, **point(done[spec], fp_loss)})
            console.print(f"{group:>12} {bits:>2} bits: loss {done[spec]:.4f}", highlight=False)


if __name__ == "__main__":
    sys.exit(run_cli(main))
