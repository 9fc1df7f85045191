"""One registry for every kind of interchangeable model component.

    @register("softmax", "consmax")
    class ConSmax(nn.Module):
        def __init__(self, config): ...

    get("softmax", "ConSmax")          -> the class (names are normalised: case, '-' and spaces)
    create("softmax", "consmax", cfg)  -> an instance built with the uniform `(config)` constructor
    names("softmax")                   -> sorted valid names; feeds argparse choices, docs and tests

A name that is not registered raises `UserError` (a `ValueError`) naming the kind, the closest
valid name and all valid names. Registering a name twice raises. Variant names are typed only in
the `@register` decorators; everything else derives from `names()`.

Knobs (settings only some variants read) are declared next to their variant and attached to it:

    BASE = knob("strongermax_base", 2.0, "base of the exponent")
    @register("softmax", "strongermax", knobs=[BASE])

GPTConfig gains one field per declared knob (gpt_conf.py), so each knob is a train.py flag and a
config-file key without being listed anywhere else.

Training kinds (TRAINING_KINDS: the optimiser and the learning-rate schedule) use the same registry,
but their variants are built from the training settings, not the model config, and their knobs are
declared with `scope="train"`: they become TrainConfig fields (train_args.py), not GPTConfig ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

from errors import UserError, unknown_name_message

# The component kinds, in the order docs and --list_variants show them.
KINDS = ("attention", "mlp", "norm", "activation", "softmax", "position", "linear")
# Kinds chosen by training settings (variations/optimizer.py, variations/lr_schedule.py): their flag is the kind
TRAINING_KINDS = ("optimizer", "lr_schedule")
SCOPES = ("model", "train")  # where a knob becomes a field: GPTConfig or TrainConfig

_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS + TRAINING_KINDS}


@dataclass(frozen=True)
class Knob:
    """A setting read by some variants; becomes GPTConfig field `name` and flag `--name`."""
    name: str
    default: Any
    help: str
    value_type: type
    choices: tuple | None = None
    minimum: float | None = None  # inclusive lower bound, checked by GPTConfig
    scope: str = "model"  # "model": a GPTConfig field; "train": a TrainConfig field (training kinds' knobs)


_KNOBS: dict[str, Knob] = {}
_VARIANT_KNOBS: dict[tuple[str, str], tuple[Knob, ...]] = {}


def knob(name: str, default, help: str, value_type: type | None = None, choices: Iterable | None = None,
         minimum: float | None = None, scope: str = "model") -> Knob:
    """Declare a knob (once; declaring the same knob again identically returns it). The type is the
    default's unless given (needed when the default is None)."""
    if scope not in SCOPES:
        raise ValueError(f"knob '{name}': scope must be one of {SCOPES}, got {scope!r}")
    k = Knob(name, default, help, value_type or type(default), tuple(choices) if choices is not None else None,
             minimum, scope)
    if name in _KNOBS and _KNOBS[name] != k:
        raise ValueError(f"knob '{name}' is declared twice with different settings: {_KNOBS[name]} vs {k}")
    _KNOBS[name] = k
    return k

T = TypeVar("T", bound=type)


def normalize(name: str) -> str:
    """'Squared-ReLU ' -> 'squared_relu'."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _kind_table(kind: str) -> dict[str, type]:
    if kind not in _REGISTRY:
        raise UserError(unknown_name_message("component kind", kind, KINDS))
    return _REGISTRY[kind]


def register(kind: str, name: str, knobs: Iterable[Knob] = ()) -> Callable[[T], T]:
    """Class decorator: make `cls` available as `name` among the variants of `kind`, reading `knobs`."""
    table = _kind_table(kind)
    key = normalize(name)
    knobs = tuple(knobs)
    for k in knobs:
        if _KNOBS.get(k.name) is not k:
            raise ValueError(f"{kind} '{key}': knob '{k.name}' must be declared with knob() first")
        if (k.scope == "train") != (kind in TRAINING_KINDS):
            raise ValueError(f"{kind} '{key}': knob '{k.name}' has scope '{k.scope}'; a {kind} reads "
                             f"{'train' if kind in TRAINING_KINDS else 'model'}-scope knobs")

    def decorator(cls: T) -> T:
        if key in table:
            raise ValueError(f"{kind} '{key}' is already registered (by {table[key].__qualname__})")
        table[key] = cls
        _VARIANT_KNOBS[(kind, key)] = knobs
        cls.registry_kind, cls.registry_name = kind, key
        return cls

    return decorator


def unregister(kind: str, name: str) -> None:
    """Remove a registered variant (a variant defined for one experiment, a notebook or a test)."""
    get(kind, name)  # an unknown name: the usual error with suggestions
    key = normalize(name)
    del _REGISTRY[kind][key]
    del _VARIANT_KNOBS[(kind, key)]


def get(kind: str, name: str) -> type:
    """The class registered as `name` for `kind`; UserError with suggestions on a miss."""
    table = _kind_table(kind)
    key = normalize(name)
    if key not in table:
        raise UserError(unknown_name_message(kind, name, table))
    return table[key]


def create(kind: str, name: str, config, *args, **kwargs):
    """Instantiate a registered component with its uniform `(config, ...)` constructor."""
    return get(kind, name)(config, *args, **kwargs)


def names(kind: str) -> list[str]:
    """Sorted registered names of `kind`."""
    return sorted(_kind_table(kind))


def describe(kind: str) -> list[tuple[str, str]]:
    """(name, first docstring line) for each variant of `kind`, for --list_variants and docs."""
    table = _kind_table(kind)
    out = []
    for key in sorted(table):
        doc = (table[key].__doc__ or "").strip().splitlines()
        out.append((key, doc[0] if doc else ""))
    return out


def all_knobs(scope: str = "model") -> list[Knob]:
    """Every declared knob of `scope` (model: GPTConfig fields; train: TrainConfig fields), in declaration order."""
    return [k for k in _KNOBS.values() if k.scope == scope]


def variant_knobs(kind: str, name: str) -> tuple[Knob, ...]:
    """The knobs the variant `name` of `kind` reads."""
    get(kind, name)
    return _VARIANT_KNOBS[(kind, normalize(name))]


def check_training_settings(tc) -> None:
    """For each training kind (TRAINING_KINDS), on the training settings `tc`: a knob that only other
    variants of the kind read, set away from its default, is a one-line UserError (it would be silently
    ignored); then the chosen variant's own `check()`."""
    for kind in TRAINING_KINDS:
        chosen = getattr(tc, kind)
        reads = {k.name for k in variant_knobs(kind, chosen)}
        readers: dict[str, list[str]] = {}
        for (k_kind, name), knobs in _VARIANT_KNOBS.items():
            for k in knobs if k_kind == kind else ():
                readers.setdefault(k.name, []).append(name)
        for knob_name, variants in readers.items():
            if knob_name not in reads and getattr(tc, knob_name) != _KNOBS[knob_name].default:
                alternatives = " or ".join(f"--{kind} {v}" for v in sorted(variants))
                raise UserError(f"--{knob_name} is read by {alternatives} only, and this run's --{kind} is "
                                f"{chosen}: drop --{knob_name} or pass {alternatives}")
        create(kind, chosen, tc).check()
