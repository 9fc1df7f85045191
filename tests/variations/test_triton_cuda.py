"""The Triton kernels on a GPU, compiled natively, at the shapes they run at in a model.

Every normaliser's row kernel (single-pass rows of about a thousand columns, and rows longer than
SINGLE_PASS_MAX, which take the tiled loop) and every elementwise normaliser's fused attention (64 x 64
tiles, head size 64, GQA 4:1), each in float32 and bfloat16, forward and backward (inputs and learned
scalars), against the torch reference computed in float32 from the same (rounded) inputs; then GPTs in
bf16 (autocast, and bf16 weights with a KV cache) with the fused kernels against the torch path.
tests/variations/test_triton_{softmax,attention}.py check the same kernels exhaustively at tiny
sizes (in the CPU interpreter without a GPU).

Skipped without CUDA. PPA_CUDA_TESTS_DEVICE=cpu runs the same tests on CPU at tiny sizes through
Triton's interpreter (TRITON_INTERPRET=1), which is how benchmarks/gpu_suite.py --cpu_smoke proves this
module runs before a GPU is ever lent:

    python -m pytest tests/variations/test_triton_cuda.py                         # on a GPU machine
    PPA_CUDA_TESTS_DEVICE=cpu python -m pytest tests/variations/test_triton_cuda.py -k consmax
"""
from __future__ import annotations

import math
import os

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

from conftest import tiny_config  # noqa: E402
from model import GPT  # noqa: E402
from variations import kernels  # noqa: E402
from variations import triton_softmax as ts  # noqa: E402
from variations.attention import causal_mask  # noqa: E402
from variations.registry import create, get, names  # noqa: E402
from variations.triton_attention import fused_attention  # noqa: E402

DEVICE = os.environ.get("PPA_CUDA_TESTS_DEVICE", "cuda")
if DEVICE == "cuda":
    pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
                  pytest.mark.skipif(kernels.interpreter_on(), reason="TRITON_INTERPRET is set: these tests "
                                     "are for natively compiled kernels; unset it")]
else:
    pytestmark = pytest.mark.skipif(not kernels.interpreter_on(),
                                    reason=f"PPA_CUDA_TESTS_DEVICE={DEVICE} needs TRITON_INTERPRET=1")

# Shapes on the GPU; tiny ones for the interpreter. Rows: (B, nh, T_q, T_k) causal scores, the second
# past SINGLE_PASS_MAX (tiled loop, KV-cache layout T_q < T_k). Attention: B, nh, nkv, T, head size.
ON_GPU = DEVICE == "cuda"
ROWS = [(2, 4, 1031, 1031), (1, 4, 3, ts.SINGLE_PASS_MAX + 9)] if ON_GPU else [(1, 2, 5, 37), (1, 2, 2, 8201)]
ATTN = dict(B=2, nh=8, nkv=2, T=1000, hs=64) if ON_GPU else dict(B=1, nh=4, nkv=1, T=37, hs=16)
MODEL = dict(n_layer=2, n_head=8, n_kv_head=2, n_embd=512, block_size=256, vocab_size=512) if ON_GPU \
    else dict(n_layer=1, n_head=4, n_kv_head=2, n_embd=32, block_size=24, vocab_size=37)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# relative to the reference's largest magnitude: (forward, gradients)
TOL = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (2e-2, 5e-2)}
ELEMENTWISE = [n for n in names("softmax") if get("softmax", n).elementwise]


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 means fp32: train.py turns TF32 on for CUDA, and the fused attention follows that flag."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.float()
    return ((got.float() - expected).abs().max() / expected.abs().max().clamp(min=1e-30)).item()


def normaliser(name: str, config) -> torch.nn.Module:
    """The variant with its learned scalars moved off their init (and off each other, per head)."""
    m = create("softmax", name, config).to(DEVICE)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def compare(out, ref, inputs_out, inputs_ref, dtype, what):
    """Forward, then the gradients of the same upstream gradient (rounded to the output's dtype)."""
    fwd_tol, grad_tol = TOL[dtype]
    assert out.dtype == dtype and out.shape == ref.shape, what
    assert torch.isfinite(out).all(), what
    assert rel_err(out, ref) < fwd_tol, (what, "forward", rel_err(out, ref))
    g = torch.randn_like(ref).to(dtype)
    got = torch.autograd.grad(out, inputs_out, g)
    expected = torch.autograd.grad(ref, inputs_ref, g.float())
    for i, (o, e) in enumerate(zip(got, expected)):
        assert o.dtype == inputs_out[i].dtype, (what, i)
        assert rel_err(o, e) < grad_tol, (what, f"gradient {i}", rel_err(o, e))


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("name", [n for n in names("softmax") if kernels.has_kernel(get("softmax", n))])  # the rest have no kernel (test_softmax_pwl.py)
def test_row_kernel(name, dtype):
    for shape in ROWS:
        m = normaliser(name, tiny_config(n_head=shape[1], n_embd=shape[1] * 8))
        x = (3 * torch.randn(shape, device=DEVICE)).to(dtype).requires_grad_()
        x32 = x.detach().float().requires_grad_()
        ref = m(x32, causal_mask(shape[-2], shape[-1], DEVICE))
        out = ts.fused_rows(m, x, causal=True)
        params = list(m.parameters())
        compare(out, ref, [x, *params], [x32, *params], dtype, f"{name} rows {shape}")


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_fused_attention(name, dtype):
    B, nh, nkv, T, hs = (ATTN[k] for k in ("B", "nh", "nkv", "T", "hs"))
    m = normaliser(name, tiny_config(n_head=nh, n_kv_head=nkv, n_embd=nh * hs))
    q = torch.randn(B, nh, T, hs, device=DEVICE).to(dtype).requires_grad_()
    k = torch.randn(B, nkv, T, hs, device=DEVICE).to(dtype).requires_grad_()
    v = torch.randn(B, nkv, T, hs, device=DEVICE).to(dtype).requires_grad_()
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    # the explicit path of attention.causal in fp32: T x T scores, the torch normaliser, weighted sum
    kr, vr = k32.repeat_interleave(nh // nkv, dim=1), v32.repeat_interleave(nh // nkv, dim=1)
    ref = m((q32 @ kr.transpose(-2, -1)) / math.sqrt(hs), causal_mask(T, T, DEVICE)) @ vr
    out = fused_attention(m, q, k, v)
    params = list(m.parameters())
    compare(out, ref, [q, k, v, *params], [q32, k32, v32, *params], dtype, f"{name} attention")


def paired(softmax: str, **overrides) -> tuple[GPT, GPT]:
    """Two identical GPTs on DEVICE, --softmax_kernel torch and triton."""
    cfg = dict(MODEL, softmax_variant_attn=softmax, **overrides)
    ref = GPT(tiny_config(softmax_kernel="torch", **cfg)).to(DEVICE)
    fused = GPT(tiny_config(softmax_kernel="triton", **cfg)).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("softmax", ["consmax", "softermax"])  # fused attention; fused rows
def test_model_in_bf16_autocast(softmax):
    """A training step's loss and gradients under bf16 autocast, fused kernels against the torch path."""
    ref, fused = paired(softmax)
    idx = torch.randint(0, MODEL["vocab_size"], (2, MODEL["block_size"]), device=DEVICE)
    grads = []
    for model in (ref, fused):
        with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
            _, loss = model(idx, idx)
        loss.backward()
        grads.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (loss_ref, g_ref), (loss_fused, g_fused) = grads
    assert math.isfinite(loss_fused) and loss_fused == pytest.approx(loss_ref, rel=2e-2)
    assert torch.nn.functional.cosine_similarity(g_fused, g_ref, dim=0) > 0.99
    assert ((g_fused - g_ref).norm() / g_ref.norm()).item() < 0.1


@pytest.mark.parametrize("softmax", ["softmax", "consmax"])  # SDPA with a cache mask; fused T_q = 1
def test_kv_cache_decode_in_bf16(softmax):
    """bf16 weights and cache: each cached one-token step's logits equal a full uncached forward's."""
    _, model = paired(softmax)
    model = model.to(torch.bfloat16).eval()
    ids = torch.randint(0, MODEL["vocab_size"], (2, MODEL["block_size"] // 2), device=DEVICE)
    caches = model.new_kv_caches(2, DEVICE, torch.bfloat16)
    with torch.no_grad():
        model(ids[:, :-4], caches=caches)
        for t in range(ids.size(1) - 4, ids.size(1)):
            cached, _ = model(ids[:, t:t + 1], caches=caches)  # (B, 1, V)
            full, _ = model(ids[:, :t + 1])
            assert rel_err(cached, full) < 3e-2, (softmax, t, rel_err(cached, full))
