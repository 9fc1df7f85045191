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
"""
from __future__ import annotations

from typing import Callable, TypeVar

from errors import UserError, unknown_name_message

# The component kinds, in the order docs and --list_variants show them.
KINDS = ("attention", "mlp", "norm", "activation", "softmax", "position")

_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}

T = TypeVar("T", bound=type)


def normalize(name: str) -> str:
    """'Squared-ReLU ' -> 'squared_relu'."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _kind_table(kind: str) -> dict[str, type]:
    if kind not in _REGISTRY:
        raise UserError(unknown_name_message("component kind", kind, KINDS))
    return _REGISTRY[kind]


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator: make `cls` available as `name` among the variants of `kind`."""
    table = _kind_table(kind)
    key = normalize(name)

    def decorator(cls: T) -> T:
        if key in table:
            raise ValueError(f"{kind} '{key}' is already registered (by {table[key].__qualname__})")
        table[key] = cls
        cls.registry_kind, cls.registry_name = kind, key
        return cls

    return decorator


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
