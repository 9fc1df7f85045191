"""variations/triton_softmax.py: every normaliser's fused row kernel against its torch reference.

Runs on CPU through Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py) and on a GPU when
there is one. Registry-driven: a new softmax variant is tested the moment it is registered.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

from conftest import tiny_config  # noqa: E402
from variations import kernels  # noqa: E402
from variations import triton_softmax as ts  # noqa: E402
from variations import triton_transforms as tt  # noqa: E402
from variations.attention import causal_mask  # noqa: E402
from variations.registry import create, get, names  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# every normaliser with a Triton kernel; those without one (triton_kernel = False, e.g. pwl_softmax, whose
# piecewise-linear exponential does not fit the kernels' online-softmax loop) run their torch module under
# --softmax_kernel triton: tests/variations/test_softmax_pwl.py checks that refusal and its log line
VARIANTS = [n for n in names("softmax") if kernels.has_kernel(get("softmax", n))]
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def module(name: str) -> torch.nn.Module:
    """A variant with its learned scalars moved off their init (and off each other, per head)."""
    m = create("softmax", name, tiny_config()).to(DEVICE)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def scores(shape, dtype=torch.float32, scale=3.0) -> torch.Tensor:
    return (scale * torch.randn(shape, device=DEVICE)).to(dtype).requires_grad_()


def check(name, x, causal, window=None, dtype=torch.float32):
    """Forward and gradients (input and learned scalars) of fused_rows vs module(x, mask)."""
    m = module(name)
    mask = causal_mask(x.size(-2), x.size(-1), DEVICE, window) if causal else None
    ref = m(x, mask)
    out = ts.fused_rows(m, x, causal=causal, window=window)
    assert out.dtype == x.dtype and out.shape == x.shape
    tol = TOL[dtype]
    scale = ref.detach().float().abs().max().clamp(min=1e-30)
    assert ((out.float() - ref.float()).abs().max() / scale) < tol, name
    g = torch.randn_like(ref)
    inputs = [x, *m.parameters()]
    expected = torch.autograd.grad(ref, inputs, g)
    got = torch.autograd.grad(out, inputs, g)
    for e, o in zip(expected, got):
        assert o.dtype == e.dtype
        assert ((o.float() - e.float()).abs().max() / e.float().abs().max().clamp(min=1e-30)) < 10 * tol, name


@pytest.mark.parametrize("name", VARIANTS)
def test_causal_scores_match_reference(name):
    """(B, nh, T_q, T_k) with T_q < T_k (the KV-cache layout) and odd lengths; per-head scalars line up."""
    check(name, scores((2, 4, 5, 7)), causal=True)


@pytest.mark.parametrize("name", VARIANTS)
def test_single_position_and_window(name):
    check(name, scores((1, 4, 1, 1)), causal=True)  # T = 1
    check(name, scores((2, 4, 9, 9)), causal=True, window=3)


@pytest.mark.parametrize("name", VARIANTS)
def test_unmasked_rows_any_shape(name):
    """Without the causal mask: any (..., n) shape, e.g. output logits (B, V) of --softmax_variant_output."""
    check(name, scores((3, 131)), causal=False)


@pytest.mark.parametrize("name", VARIANTS)
def test_fully_masked_rows_are_zero_with_zero_gradient(name):
    x = scores((2, 4, 3, 6)).detach()
    x[0, 1, :, :] = float("-inf")  # every key of these rows barred by the caller
    x[1, 2, 1, :4] = float("-inf")  # part of a row
    x.requires_grad_()
    check(name, x, causal=True)
    m = module(name)
    out = ts.fused_rows(m, x, causal=True)
    assert torch.all(out[0, 1] == 0)
    (grad,) = torch.autograd.grad(out.sum(), [x])
    assert torch.all(grad[0, 1] == 0) and torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", VARIANTS)
def test_half_precision_inputs(name, dtype):
    """bf16 / fp16 scores: fp32 math inside, the same rounding of the result as the reference."""
    check(name, scores((2, 4, 6, 6), dtype, scale=2.0), causal=True, dtype=dtype)


@pytest.mark.parametrize("name", ["softmax", "sigsoftmax", "consmax_v2", "polymax"])
def test_tiled_path_for_long_rows(name, monkeypatch):
    """Rows longer than SINGLE_PASS_MAX take the tiled loop (online max/sum, two passes): shrink the
    limits so the interpreter runs it on a short row, with a partial last tile."""
    monkeypatch.setattr(ts, "SINGLE_PASS_MAX", 16)
    monkeypatch.setattr(ts, "LOOP_BLOCK", 16)
    assert not ts.launch_shape(40)[2]
    check(name, scores((1, 4, 5, 40)), causal=True)
    check(name, scores((1, 4, 5, 40)), causal=True, window=20)


def test_fp16_weights_clamp_to_the_dtype_maximum():
    """consmax with a tiny gamma overflows fp16: both clamp at 65504 and pass no gradient there."""
    m = module("consmax")
    with torch.no_grad():
        m.gamma.fill_(1e-3)
        m.beta.fill_(0.0)
    x = torch.tensor([[[[1.0, 5.0, 12.0]]]], device=DEVICE).half().requires_grad_()
    ref, out = m(x), ts.fused_rows(m, x)
    assert out.max().item() == torch.finfo(torch.float16).max == ref.max().item()
    (g_ref,) = torch.autograd.grad(ref.float().sum(), [x])
    (g_out,) = torch.autograd.grad(out.float().sum(), [x])
    assert g_out[..., 2].item() == 0 == g_ref[..., 2].item()
    torch.testing.assert_close(g_out, g_ref)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_declares_its_kernel(name):
    """kernel_spec names a known transform; the elementwise flag agrees with the transform's family."""
    m = module(name)
    transform, params = m.kernel_spec(torch.zeros(2, 4, 3, 3))
    assert transform in tt.TRANSFORMS
    assert params.dim() == 2 and params.size(1) == 4 and params.dtype == torch.float32
    assert get("softmax", name).elementwise == (not tt.is_normalising(transform))
    assert params.requires_grad == bool(list(m.parameters()))  # learned scalars stay in the autograd graph
