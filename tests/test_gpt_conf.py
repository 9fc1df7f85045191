"""GPTConfig: derivation, validation messages that quote the flag, and serialisation round trips."""
from __future__ import annotations

import json

import pytest

from errors import UserError
from gpt_conf import GPTConfig, pad_vocab


def test_derived_fields():
    cfg = GPTConfig(vocab_size=65, n_head=8, n_embd=256, mlp_expansion_factor=3)
    assert cfg.n_kv_head == 8 and cfg.head_dim == 32 and cfg.mlp_hidden_size == 768
    assert GPTConfig(vocab_size=65, mlp_hidden_size=100).mlp_hidden_size == 100


def test_names_are_normalised():
    cfg = GPTConfig(vocab_size=65, norm_variant="RMSNorm", activation_variant="Squared-ReLU")
    assert cfg.norm_variant == "rmsnorm" and cfg.activation_variant == "squared_relu"


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_embd=100, n_head=6), "--n_embd 100 is not divisible by --n_head 6"),
    (dict(n_head=6, n_kv_head=4), "--n_head 6 is not divisible by --n_kv_head 4"),
    (dict(n_layer=0), "--n_layer must be at least 1"),
    (dict(dropout=1.0), "--dropout must be in [0, 1)"),
    (dict(mlp_variant="swigl"), "--mlp_variant: unknown mlp 'swigl'; did you mean 'swiglu'?"),
    (dict(position_variant="rope", n_embd=18, n_head=2), "rope needs an even head size"),
])
def test_validation_names_the_flag(kwargs, message):
    with pytest.raises(UserError) as e:
        GPTConfig(vocab_size=65, **kwargs)
    assert message in str(e.value)


def test_round_trip_through_json():
    cfg = GPTConfig(vocab_size=65, n_kv_head=2, softmax_variant_attn="consmax", position_variant="rope")
    again = GPTConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_unknown_key_is_an_error():
    d = GPTConfig(vocab_size=65).to_dict()
    d["n_layers"] = 3
    with pytest.raises(UserError, match="unknown GPTConfig field 'n_layers'; did you mean 'n_layer'"):
        GPTConfig.from_dict(d)


def test_pad_vocab():
    assert pad_vocab(65) == 65 and pad_vocab(256) == 256
    assert pad_vocab(50257) == 50304 and pad_vocab(50304) == 50304


def test_every_field_has_help():
    for f in GPTConfig.__dataclass_fields__.values():
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize("kwargs,message", [
    (dict(dropout=float("nan")), "--dropout must be a finite number, got nan"),
    (dict(init_std=float("inf")), "--init_std must be a finite number, got inf"),
    (dict(n_kv_head=0), "--n_kv_head must be at least 1, got 0"),
    (dict(mlp_expansion_factor=0.0), "--mlp_expansion_factor must be positive, got 0.0"),
    (dict(rope_theta=float("nan")), "--rope_theta must be a finite number, got nan"),  # a knob
])
def test_values_are_checked_by_their_declared_range(kwargs, message):
    with pytest.raises(UserError) as e:
        GPTConfig(vocab_size=65, **kwargs)
    assert str(e.value) == message
