"""Per-layer shapes (--n_head_layerlist, --n_kv_head_layerlist, --mlp_hidden_size_layerlist), weight
sharing across layers (--share_layers_every, --share_layers_map) and the factorized embedding
(--embedding_dim): the sizes asked for, one parameter object per shared block, the cost model, errors."""
from __future__ import annotations

import pytest
import torch

from errors import UserError
from model import GPT
from train_args import parse_args
from variations.cost import total

from conftest import tiny_config


def layer_shapes(model):
    return [(b.attn.n_head, b.attn.n_kv_head, b.attn.head_dim, b.mlp.c_proj.in_features) for b in model.transformer.h]


def test_per_layer_lists_give_the_layer_sizes_asked_for():
    cfg = tiny_config(n_layer=4, n_head_layerlist=[2, 4, 8], n_kv_head_layerlist=[1, 2], mlp_hidden_size_layerlist=[16, 64])
    model = GPT(cfg)
    assert layer_shapes(model) == [(2, 1, 16, 16), (4, 2, 8, 64), (8, 1, 4, 16), (2, 2, 16, 64)]  # lists cycle
    c_attn = [b.attn.c_attn.weight.shape for b in model.transformer.h]
    assert c_attn == [((2 + 2 * 1) * 16, 32), ((4 + 4) * 8, 32), ((8 + 2) * 4, 32), ((2 + 4) * 16, 32)]
    # without --n_kv_head every layer is multi-head; with it, the one count serves every layer
    assert [s[1] for s in layer_shapes(GPT(tiny_config(n_layer=2, n_head_layerlist=[2, 8])))] == [2, 8]
    assert [s[1] for s in layer_shapes(GPT(tiny_config(n_layer=2, n_kv_head=2, n_head_layerlist=[2, 8])))] == [2, 2]
    assert total(model.cost().values()).params == model.num_params()


@pytest.mark.parametrize("attention", ["causal", "mla"])
def test_per_layer_heads_with_rope_keep_cached_generation_exact(attention):
    cfg = tiny_config(n_layer=3, n_head_layerlist=[2, 4, 8], position_variant="rope", rope_fraction=0.5,
                      attention_variant=attention)
    model = GPT(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (2, 4))
    cached = model.generate(prompt, 2 * cfg.block_size, temperature=0)
    assert torch.equal(cached, model.generate(prompt, 2 * cfg.block_size, temperature=0, use_cache=False))
    # each layer rotates half its own head: 3 ops per channel on (n_head + n_kv_head) heads of hs / 2 channels
    rows = model.cost()
    if attention == "causal":
        assert [rows[f"layer.{i}.position"].elementwise for i in range(3)] == [3 * 4 * 8, 3 * 8 * 4, 3 * 16 * 2]


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_head_layerlist=[4, 5]), "--n_head_layerlist: layer 1: --n_embd 32 is not divisible by --n_head 5"),
    (dict(n_head_layerlist=[4, 8], n_kv_head_layerlist=[3]), "layer 0: --n_head 4 is not divisible by --n_kv_head 3"),
    (dict(n_head_layerlist=[2, 4], position_variant="alibi"), "--position_variant alibi adds a score bias"),
    (dict(n_head_layerlist=[4, 0]), "--n_head_layerlist must be whole numbers at least 1, one per layer"),
    (dict(mlp_hidden_size_layerlist=["wide"]), "--mlp_hidden_size_layerlist must be whole numbers"),
    (dict(n_layer=3, share_layers_map=[0, 0]), "--share_layers_map gives 2 group ids for --n_layer 3"),
    (dict(share_layers_map=[0, 0], share_layers_every=2), "give one"),
    (dict(share_layers_every=2, mlp_hidden_size_layerlist=[16, 32]),
     "--share_layers_every: layers 0 and 1 share weights but differ in mlp_hidden_size (16 vs 32)"),
    (dict(share_layers_map=[0, 0], attention_variant_layerlist=["causal", "linear"]), "differ in attention_variant"),
])
def test_shape_and_sharing_errors_are_one_line_and_name_the_flag(kwargs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        tiny_config(**kwargs)
    assert "\n" not in str(e.value)


def test_rope_needs_a_rotated_channel_in_every_layer():
    with pytest.raises(UserError, match="--rope_fraction 0.2 rotates no channel of the smallest heads"):
        GPT(tiny_config(n_head_layerlist=[2, 8], position_variant="rope", rope_fraction=0.2))  # heads of 16, 4


def test_flags_parse_per_layer_lists():
    s = parse_args(["--n_head_layerlist", "2", "4", "--share_layers_map", "0", "1", "0", "1", "--embedding_dim", "16"])
    assert s.model["n_head_layerlist"] == [2, 4] and s.model["share_layers_map"] == [0, 1, 0, 1]
    with pytest.raises(UserError, match="--n_head_layerlist must be at least 1, got 0"):
        parse_args(["--n_head_layerlist", "0"])


@pytest.mark.parametrize("kwargs,groups", [(dict(share_layers_every=2), [0, 0, 1, 1]),
                                           (dict(share_layers_every=4), [0, 0, 0, 0]),
                                           (dict(share_layers_map=[0, 1, 0, 1]), [0, 1, 0, 1])])
def test_shared_layers_hold_one_parameter_tensor(kwargs, groups):
    shared, plain = GPT(tiny_config(n_layer=4, **kwargs)), GPT(tiny_config(n_layer=4))
    h = shared.transformer.h
    for i in range(4):
        for j in range(4):
            same = h[i].attn.c_attn.weight is h[j].attn.c_attn.weight  # identity, not equal copies
            assert same == (groups[i] == groups[j])
    n_blocks = len(set(groups))
    per_block = sum(p.numel() for p in plain.transformer.h[0].parameters())
    assert shared.num_params() == plain.num_params() - (4 - n_blocks) * per_block
    # the cost model: parameters once, work at every use
    s, p = total(shared.cost().values()), total(plain.cost().values())
    assert s.params == shared.num_params() and s.macs == p.macs and s.weights == p.weights
    ckpt = {"model_config": shared.config.to_dict(), "model": shared.state_dict()}  # the checkpoint round trip
    back = GPT.from_checkpoint(ckpt)
    ids = [id(b.attn.c_attn.weight) for b in back.transformer.h]
    assert [ids.index(i) for i in ids] == [groups.index(g) for g in groups]  # the sharing survives loading
    idx = torch.randint(0, 37, (2, 16))
    torch.testing.assert_close(back(idx)[0], shared(idx)[0])


def test_shared_weights_get_the_gradient_of_every_use():
    model = GPT(tiny_config(n_layer=2, share_layers_every=2))
    idx = torch.randint(0, 37, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    w = model.transformer.h[0].mlp.c_fc.weight
    grad = w.grad.clone()
    # the same model unshared, with the same weights in both layers: the shared gradient is their sum
    plain = GPT(tiny_config(n_layer=2))
    sd = {k.replace("h.1.", "h.0."): v for k, v in model.state_dict().items()}
    plain.load_state_dict({**sd, **{k.replace("h.0.", "h.1."): v for k, v in sd.items() if "h.0." in k}})
    _, loss = plain(idx, idx)
    loss.backward()
    torch.testing.assert_close(grad, plain.transformer.h[0].mlp.c_fc.weight.grad + plain.transformer.h[1].mlp.c_fc.weight.grad)


def test_factorized_embedding_projects_in_and_out_with_the_tied_table():
    cfg = tiny_config(embedding_dim=12)
    model = GPT(cfg).eval()
    wte = model.transformer.wte
    assert wte.weight.shape == (37, 12) and model.lm_head.weight is wte.weight
    assert model.embed_proj.weight.shape == (32, 12) and model.head_proj.weight.shape == (12, 32)
    assert model.num_params() == 37 * 12 + 2 * 12 * 32 + sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith(("transformer.wte", "embed_proj", "head_proj")))
    idx = torch.randint(0, 37, (2, 16))
    x = model.position.embed(model.embed_proj(wte(idx)))
    for block in model.transformer.h:
        x = block(x, model.position)
    expect = model.head_proj(model.transformer.ln_f(x)) @ wte.weight.T
    torch.testing.assert_close(model(idx, all_logits=True)[0], expect)
    rows = model.cost()
    assert rows["embedding"].params == 37 * 12 + 12 * 32 and rows["embedding"].macs == 12 * 32
    assert rows["lm_head"].macs == 32 * 12 + 12 * 37 and rows["lm_head"].params == 32 * 12
    assert total(rows.values()).params == model.num_params()
    assert GPT(tiny_config(embedding_dim=32)).embed_proj is None  # n_embd wide: no projection


def test_training_shared_factorized_model_learns():
    model = GPT(tiny_config(n_layer=4, share_layers_every=4, embedding_dim=8, n_head_layerlist=[2]))
    data = torch.randint(0, 37, (4, 17), generator=torch.Generator().manual_seed(0))
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), "cpu")
    losses = []
    for _ in range(25):
        _, loss = model(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3


def test_memory_estimate_counts_shared_and_per_layer_weights():
    from gpt_conf import estimate_train_bytes
    plain, shared = tiny_config(n_layer=4), tiny_config(n_layer=4, share_layers_every=4)
    per_block = 16 * (32 * (32 + 2 * 32) + 32 * 32 + 2 * 32 * 128)  # float32 weights, grads, two Adam moments
    assert estimate_train_bytes(plain, 2) - estimate_train_bytes(shared, 2) == 3 * per_block
    narrow = tiny_config(n_layer=4, mlp_hidden_size_layerlist=[64])
    assert estimate_train_bytes(plain, 2) - estimate_train_bytes(narrow, 2) == 4 * 16 * 2 * 32 * 64
