"""variations/triton_attention.py and the --softmax_kernel dispatch (variations/kernels.py).

The fused attention against the materialised reference (scores, the torch normaliser, weighted sum)
for every elementwise normaliser, several head counts and GQA ratios; the attention module and a
short training run with --softmax_kernel triton against torch. CPU: Triton's interpreter.
"""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

import train  # noqa: E402
from conftest import read_metrics, tiny_config  # noqa: E402
from errors import UserError  # noqa: E402
from model import GPT  # noqa: E402
from variations import kernels  # noqa: E402
from variations.attention import causal_mask  # noqa: E402
from variations.registry import create, get, names  # noqa: E402
from variations.triton_attention import fused_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ELEMENTWISE = [n for n in names("softmax") if get("softmax", n).elementwise]


def reference(m, q, k, v, window=None):
    """The explicit path of attention.causal: T x T scores, the torch normaliser, weighted sum."""
    nh, nkv = q.size(1), k.size(1)
    k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    return m(s, causal_mask(q.size(2), k.size(2), q.device, window)) @ v


def check(name, nh, nkv, t_q, t_k, hs=8, window=None, block=None):
    m = create("softmax", name, tiny_config(n_head=nh, n_kv_head=nkv, n_embd=nh * hs)).to(DEVICE)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    q = torch.randn(2, nh, t_q, hs, device=DEVICE, requires_grad=True)
    k = torch.randn(2, nkv, t_k, hs, device=DEVICE, requires_grad=True)
    v = torch.randn(2, nkv, t_k, hs, device=DEVICE, requires_grad=True)
    ref = reference(m, q, k, v, window)
    out = fused_attention(m, q, k, v, window=window, block=block)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6)
    g = torch.randn_like(ref)
    inputs = [q, k, v, *m.parameters()]
    for got, expected in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_every_elementwise_normaliser(name):
    """Odd T over several 16-wide tiles, GQA 2:1: output and gradients of q, k, v and learned scalars."""
    check(name, nh=4, nkv=2, t_q=37, t_k=37)


@pytest.mark.parametrize("nh,nkv", [(4, 4), (4, 1), (6, 3)])
def test_head_counts_and_gqa_ratios(nh, nkv):
    """consmax_v2 has one beta and gamma per query head: gradients must land on the right head."""
    check("consmax_v2", nh=nh, nkv=nkv, t_q=21, t_k=21)


@pytest.mark.parametrize("name", ["consmax", "relu2max"])
def test_window_kv_cache_layout_and_single_position(name):
    check(name, nh=2, nkv=1, t_q=33, t_k=33, window=7)  # key tiles outside the window are skipped
    check(name, nh=2, nkv=2, t_q=5, t_k=29)  # queries are the last positions (KV cache)
    check(name, nh=2, nkv=1, t_q=1, t_k=1)
    check(name, nh=2, nkv=1, t_q=20, t_k=20, hs=24, block=32)  # head size below the padded tile


def test_half_precision():
    m = create("softmax", "consmax", tiny_config()).to(DEVICE)
    q, k, v = (torch.randn(1, 4, 19, 8, device=DEVICE).bfloat16() for _ in range(3))
    ref = reference(m, q.float(), k.float(), v.float())  # the same (bf16-rounded) inputs in fp32
    out = fused_attention(m, q, k, v)
    assert out.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: errors relative to the output's scale (consmax's is set by its gamma)
    scale = ref.abs().max().item()
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=4e-3 * scale)


def test_normalising_variants_are_refused():
    m = create("softmax", "softermax", tiny_config())
    q = torch.randn(1, 4, 3, 8)
    with pytest.raises(ValueError, match="elementwise normaliser"):
        fused_attention(m, q, q, q)


# ---------------------------------------------------------------- dispatch

def test_select_reasons_and_errors(monkeypatch):
    kernels.select.cache_clear()
    assert kernels.select("torch", "cuda")[0] == "torch"
    assert kernels.select("auto", "cpu") == ("torch", "auto: no CUDA device (cpu)")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    kernels.select.cache_clear()
    with pytest.raises(UserError, match="needs a CUDA device .*TRITON_INTERPRET=1"):
        kernels.select("triton", "cpu")
    assert kernels.select("auto", "cuda")[0] == "triton"
    monkeypatch.setattr(kernels, "triton_version", lambda: None)
    kernels.select.cache_clear()
    with pytest.raises(UserError, match="Triton is not installed; pip install triton"):
        kernels.select("triton", "cuda")
    assert kernels.select("auto", "cuda") == ("torch", "auto: Triton is not installed")
    kernels.select.cache_clear()


def test_bad_choice_is_a_config_error():
    with pytest.raises(UserError, match="softmax_kernel"):
        tiny_config(softmax_kernel="cuda")


def paired_models(**overrides):
    """Two identical models, one with --softmax_kernel torch and one with triton."""
    kw = dict(n_head=4, n_kv_head=2, block_size=24, **overrides)
    ref = GPT(tiny_config(softmax_kernel="torch", **kw)).to(DEVICE)
    fused = GPT(tiny_config(softmax_kernel="triton", **kw)).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("overrides", [
    dict(softmax_variant_attn="consmax"),  # fused attention
    dict(softmax_variant_attn="consmax_v2", window_size=5),  # fused attention, windowed
    dict(softmax_variant_attn="softermax"),  # normalising: fused rows
    dict(softmax_variant_attn="relumax", position_variant="alibi"),  # score bias: fused rows
    dict(softmax_variant_attn="sigmoidmax", attn_logit_softcap=5.0),  # soft-cap: fused rows
], ids=["consmax", "consmax_v2-window", "softermax", "relumax-alibi", "sigmoidmax-softcap"])
def test_model_with_triton_kernels_matches_torch(overrides):
    ref, fused = paired_models(**overrides)
    idx = torch.randint(0, 37, (2, 24), device=DEVICE)
    _, loss_ref = ref(idx, idx)
    _, loss_fused = fused(idx, idx)
    torch.testing.assert_close(loss_fused, loss_ref, rtol=1e-5, atol=1e-6)
    loss_ref.backward()
    loss_fused.backward()
    for (name, a), b in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    # cached generation takes the fused path with T_q < T_k
    out_ref = ref.generate(idx[:, :4], 6, temperature=0)
    assert torch.equal(fused.generate(idx[:, :4], 6, temperature=0), out_ref)


def test_describe_names_the_paths():
    _, fused = paired_models(softmax_variant_attn_layerlist=["consmax", "softmax"])
    line = kernels.describe(fused, torch.device(DEVICE))
    assert line.startswith("softmax kernel: triton") and "fused attention (consmax): layers 0" in line
    ref, _ = paired_models()
    assert kernels.describe(ref, torch.device(DEVICE)) is None  # plain softmax: SDPA, nothing to choose


def test_training_with_triton_matches_torch(char_data, tmp_path):
    """A short run of the debug preset: the same losses with the fused kernels as with the reference.
    float32 (auto would be bf16 on a GPU, where the two paths round differently); on a GPU train.py
    turns TF32 on, and both paths then multiply in TF32: a looser tolerance there."""
    runs = {}
    for kernel in ("torch", "triton"):
        out = tmp_path / kernel
        summary = train.main(["--preset", "debug", "--dataset", str(char_data), "--out_dir", str(out),
                              "--softmax_variant_attn", "consmax", "--max_iters", "6", "--eval_interval", "3",
                              "--softmax_kernel", kernel, "--device", DEVICE, "--dtype", "float32"])
        assert summary["softmax_kernel"] == kernel
        runs[kernel] = [r for r in read_metrics(out) if "loss" in r]
    assert len(runs["torch"]) == len(runs["triton"]) > 0
    for a, b in zip(runs["torch"], runs["triton"]):
        assert a["iter"] == b["iter"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4 if DEVICE == "cpu" else 2e-3)
