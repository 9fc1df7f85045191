"""The registry: registration, lookup, normalisation, errors, and names as the one source of choices."""
from __future__ import annotations

import pytest
import torch.nn as nn

import train_args
import variations  # noqa: F401  (fills the registry)
from errors import UserError
from variations import registry
from variations.registry import KINDS, create, get, names, register

from conftest import tiny_config


def test_every_kind_has_variants():
    for kind in KINDS:
        assert names(kind), kind
        assert names(kind) == sorted(names(kind))


def test_lookup_normalises_names():
    assert get("norm", "RMSNorm") is get("norm", "rmsnorm")
    assert get("activation", "Squared-ReLU") is get("activation", "squared_relu")
    assert get("softmax", "  ConSmax ") is get("softmax", "consmax")


def test_unknown_name_names_kind_closest_and_all_valid():
    with pytest.raises(ValueError) as e:
        get("softmax", "consmx")
    msg = str(e.value)
    assert "unknown softmax 'consmx'" in msg
    assert "did you mean 'consmax'?" in msg
    assert "valid: " + ", ".join(names("softmax")) in msg
    assert isinstance(e.value, UserError)


def test_unknown_kind_is_an_error():
    with pytest.raises(UserError, match="unknown component kind 'softmaxx'; did you mean 'softmax'"):
        names("softmaxx")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        @register("norm", "LayerNorm")  # same name after normalisation
        class Dup(nn.Module):
            pass


def test_register_get_create_roundtrip():
    @register("activation", "test_only_identity")
    class Ident(nn.Module):
        """Identity used by this test only."""

        def __init__(self, config):
            super().__init__()

        def forward(self, x):
            return x

    try:
        assert get("activation", "test_only_identity") is Ident
        assert "test_only_identity" in names("activation")
        assert isinstance(create("activation", "test_only_identity", tiny_config()), Ident)
        # a newly registered name is a valid flag value at once, with nothing else to edit
        s = train_args.parse_args(["--activation_variant", "test_only_identity"])
        assert s.model["activation_variant"] == "test_only_identity"
    finally:
        registry.unregister("activation", "test_only_identity")


def test_argparse_choices_come_from_the_registry():
    parser = train_args.build_parser()
    flags = {a.dest: a for a in parser._actions}
    for field, kind in [("attention_variant", "attention"), ("mlp_variant", "mlp"), ("norm_variant", "norm"),
                        ("activation_variant", "activation"), ("softmax_variant_attn", "softmax"),
                        ("position_variant", "position")]:
        assert flags[field].metavar == "{" + ",".join(names(kind)) + "}"
        for name in names(kind):
            assert train_args.parse_args([f"--{field}", name]).model[field] == name
    with pytest.raises(UserError, match="did you mean 'rmsnorm'"):
        train_args.parse_args(["--norm_variant", "rmsnrm"])


def test_list_variants_prints_every_name(capsys):
    import train
    assert train.main(["--list_variants"]) is None
    out = capsys.readouterr().out
    for kind in KINDS:
        for name in names(kind):
            assert name in out


def test_every_variant_has_a_docstring():
    for kind in KINDS:
        for name, doc in registry.describe(kind):
            assert doc, f"{kind} '{name}' has no docstring"


def test_readme_table_is_generated_from_the_registry():
    from variations.__main__ import README, readme_with_table
    text = README.read_text()
    assert readme_with_table(text) == text, "README's variant table is stale: run python -m variations --readme"


def test_docs_are_generated_from_the_registry():
    from variations.__main__ import DOCS, docs_markdown
    assert DOCS.read_text() == docs_markdown(), "docs/variations.md is stale: run python -m variations --docs"


def test_knobs_are_flags_and_config_fields():
    from gpt_conf import GPTConfig
    from variations.registry import all_knobs
    fields = GPTConfig.__dataclass_fields__
    parser_dests = {a.dest for a in train_args.build_parser()._actions}
    for k in all_knobs():
        assert k.name in fields and fields[k.name].default == k.default
        assert k.name in parser_dests
    with pytest.raises(ValueError, match="declared twice"):
        from variations.registry import knob
        knob("norm_eps", 1e-3, "another default")


# ---------------------------------------------------------------- declared capabilities
@pytest.mark.parametrize("kind, base", [("softmax", "variations.softmax.Normalizer"),
                                        ("attention", "variations.attention.Attention"),
                                        ("position", "variations.position.PositionEncoding")])
def test_every_variant_declares_its_capabilities_through_the_base_class(kind, base):
    """Attention, the kernels and the model read capabilities (sdpa_compatible, elementwise, use_sdpa,
    fusable, has_score_bias) as declared attributes, never by getattr/hasattr probes: every variant
    of the kind inherits them from the kind's base class."""
    import importlib
    module, name = base.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    for variant in names(kind):
        assert issubclass(get(kind, variant), cls), f"{kind} '{variant}' does not subclass {base}"


def test_unregister_removes_a_variant_and_its_knobs():
    @register("activation", "test_only_relu")
    class R(nn.Module):
        def __init__(self, config):
            super().__init__()

    registry.unregister("activation", "test_only_relu")
    assert "test_only_relu" not in names("activation")
    with pytest.raises(UserError, match="unknown activation 'test_only_relu'"):
        registry.unregister("activation", "test_only_relu")
