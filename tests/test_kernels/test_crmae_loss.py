"""kernels/crmae_loss.py: the reference against hand-computed cases and an independent formula, and the fused
Triton loss (forward and backward) against the reference.

CPU lane (TRITON_INTERPRET=1, tests/conftest.py): the loss terms and the gradients for pred, z0 and z1 over
B (1, 2, 7, 33) x S (25, 75, 130) and B x E (16, 64, 257), each x fp32/fp16 (GRID), every input holding an
ECG whose mask removes nothing in one view, a lead absent in one record and a flat patch (variance 0); tau = 0.02;
bf16 at a few points; a 2-process gloo run. GPU lane (``-m gpu``): the base shapes in bf16, within twice
PyTorch's own low-precision error against fp64. The model-level switch test is tests/test_model/test_loss.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from kernels import crmae_loss as op
from kernels.crmae_loss import crmae_loss, crmae_loss_ref, masked_mse, normalize_patches, nt_xent
from tests.test_kernels.hopper import compile_results

# One tolerance table, for the kernel against the reference on the same inputs: each entry
# (rtol, atol) for the loss terms and the maximum gradient error relative to the gradient's largest entry.
TOL = {
    # IEEE fp32 in the interpreter; only the order of the sums differs (measured 6e-7 on the terms, 6e-7 on
    # the gradients, over the grid without its B = 33, S = 130 corner).
    torch.float32: {"terms": (1e-5, 1e-6), "grad": 1e-5},
    # loosened: NT-Xent's dots take the normalized embeddings rounded to fp16 (unit roundoff 4.9e-4, as on
    # the GPU, where the reference keeps fp32), and the pred gradient is stored in fp16 by both (measured
    # 2.4e-4 on the terms, 1.05e-3 on the gradients).
    torch.float16: {"terms": (2e-3, 1e-4), "grad": 3e-3},
    # loosened: bf16 storage (8-bit significand, unit roundoff 3.9e-3) and the interpreter's fp32 -> bf16
    # cast truncates (up to twice that).
    torch.bfloat16: {"terms": (1e-2, 1e-3), "grad": 2e-2},
}
# tau = 0.02 multiplies every logit error by 1 / tau = 50: the fp16 dots' rounding then shows in the loss.
TAU_STRESS_TOL = {torch.float32: {"terms": (1e-5, 1e-5), "grad": 1e-5},
                  torch.float16: {"terms": (1e-2, 1e-2), "grad": 2e-2}}

L, P = 12, 5  # P = 5: a row count that is no multiple of the kernel's row blocks
# The MSE part depends on (B, S) alone and NT-Xent on (B, E) alone (separate kernels, nothing shared), so
# pairing S and E up covers every (B, S, dtype) and every (B, E, dtype) of the full product, each once, in
# 24 points instead of 72 (the 24 ran in 25 s on our 2-core machine; the product re-checked the same kernels).
GRID = [(b, s, e, dt) for b in (1, 2, 7, 33) for s, e in ((25, 16), (75, 64), (130, 257))
        for dt in (torch.float32, torch.float16)]


def _ids(p):
    b, s, e, dt = p
    return f"B{b}-S{s}-E{e}-{str(dt).removeprefix('torch.')}"


def make_inputs(b, s, e, dtype, seed=0, device="cpu", p=P, pull=0.5):
    """pred, patches, mask, lead_mask, z0, z1 with the edge cases the contract names built in."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(2, b, L, p, s, generator=g)
    patches = torch.randn(b, L, p, s, generator=g).cumsum(-1) * 30 + 100  # ECG-like µV, far from zero mean
    mask = (torch.rand(2, b, L, p, generator=g) < 0.75).float()
    lead_mask = torch.rand(b, L, generator=g) > 0.1
    mask[0, 0] = 0.0  # ECG 0: view 0 removes nothing
    lead_mask[b - 1, 3] = False  # a lead absent in the last record
    patches[0, 1, 2] = 42.0  # a flat patch: variance 0, normalized to zeros
    mask[:, 0, 1, 2] = 1.0  # ... and removed, so it counts
    z0, z1 = torch.randn(b, e, generator=g), torch.randn(b, e, generator=g)
    z1 = z1 + pull * z0  # positives closer than negatives, as after some training
    cast = dict(device=device, dtype=dtype)
    return (pred.to(**cast), patches.to(device), mask.to(device), lead_mask.to(device), z0.to(**cast),
            z1.to(**cast))


def run(fn, inputs, lam=0.1, tau=0.2, **kw):
    """-> (loss, mse, nce), (d pred, d z0, d z1) of fn on fresh leaf copies of the inputs."""
    pred, patches, mask, lead_mask, z0, z1 = inputs
    pred, z0, z1 = (t.detach().clone().requires_grad_() for t in (pred, z0, z1))
    terms = fn(pred, patches, mask, lead_mask, z0, z1, lam, tau, **kw)
    terms.loss.backward()
    return tuple(t.detach() for t in terms), (pred.grad, z0.grad, z1.grad)


def assert_matches(got, want, tol):
    (t_got, g_got), (t_want, g_want) = got, want
    rtol, atol = tol["terms"]
    for name, a, b in zip(("loss", "mse", "nce"), t_got, t_want):
        assert a.dtype == torch.float32 and a.dim() == 0, name
        torch.testing.assert_close(a, b.float(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
    for name, a, b in zip(("d pred", "d z0", "d z1"), g_got, g_want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.isfinite(a).all(), name
        scale = b.float().abs().max().clamp_min(1e-30)
        err = ((a.float() - b.float()).abs().max() / scale).item()
        assert err <= tol["grad"], f"{name}: relative error {err:.2e} > {tol['grad']:.0e}"


# ----------------------------------------------------------------------------------------------------------
# The reference.

def test_normalize_patches_by_hand():
    x = torch.tensor([[1.0, 3.0], [2.0, 2.0]])  # mean 2, population var 1; a flat patch -> zeros
    out = normalize_patches(x, eps=1e-6)
    assert torch.allclose(out[0], torch.tensor([-1.0, 1.0]) / math.sqrt(1 + 1e-6))
    assert torch.equal(out[1], torch.zeros(2))


def test_masked_mse_by_hand():
    # V=2, B=1, L=2, P=2, S=2. Errors per patch (mean over S of squared error):
    pred = torch.zeros(2, 1, 2, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [2.0, 0.0]], [[0.0, 3.0], [4.0, 4.0]]]])
    # patch errors: lead0: [1, 2], lead1: [4.5, 16]
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 1.0]]], [[[0.0, 1.0], [1.0, 0.0]]]])
    lead_mask = torch.tensor([[True, True]])
    # view 0: removed = (l0,p0)=1, (l0,p1)=2, (l1,p1)=16 -> 19/3; view 1: (l0,p1)=2, (l1,p0)=4.5 -> 6.5/2
    expected = (19 / 3 + 6.5 / 2) / 2
    assert math.isclose(masked_mse(pred, target, mask, lead_mask).item(), expected, rel_tol=1e-6)
    # lead 1 absent: view 0 -> (1+2)/2, view 1 -> 2/1
    lead_mask = torch.tensor([[True, False]])
    assert math.isclose(masked_mse(pred, target, mask, lead_mask).item(), (1.5 + 2) / 2, rel_tol=1e-6)


def test_nt_xent_by_hand():
    # One ECG: each query's only key is its positive -> loss 0.
    z = torch.tensor([[1.0, 2.0]])
    assert nt_xent(z, 3 * z, tau=0.5).item() == pytest.approx(0.0, abs=1e-6)
    # Two orthogonal ECGs, identical views: every query sees its positive at cosine 1 and two
    # negatives at cosine 0 -> log(1 + 2 exp(-1/tau)).
    tau = 0.2
    z = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    assert nt_xent(z, z, tau).item() == pytest.approx(math.log(1 + 2 * math.exp(-1 / tau)), rel=1e-6)


def nt_xent_numpy(z0, z1, tau):
    """Independent formula: the 2B x 2B similarity without its diagonal, positive at i +- B."""
    z = np.concatenate([z0, z1]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = z0.shape[0]
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = np.array([z[i] @ z[j] / tau for j in range(2 * n) if j != i])
        total += -(z[i] @ z[pos] / tau) + np.log(np.exp(sims).sum())
    return total / (2 * n)


def test_nt_xent_matches_numpy_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    expected = nt_xent_numpy(z0.numpy(), z1.numpy(), 0.3)
    assert nt_xent(z0, z1, 0.3).item() == pytest.approx(expected, rel=1e-5)
    a, b = z0.double().requires_grad_(), z1.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: nt_xent(x, y, 0.3), (a, b))


def test_reference_combines_the_terms():
    pred, patches, mask, lead_mask, z0, z1 = make_inputs(3, 5, 8, torch.float32, seed=1)
    loss, mse, nce = crmae_loss_ref(pred, patches, mask, lead_mask, z0, z1, lam=0.1, tau=0.2)
    assert torch.equal(mse, masked_mse(pred, normalize_patches(patches), mask, lead_mask))
    assert torch.equal(nce, nt_xent(z0, z1, 0.2))
    assert torch.allclose(loss, mse + 0.1 * nce)
    raw = crmae_loss_ref(pred, patches, mask, lead_mask, z0, z1, 0.1, 0.2, normalize=False)
    assert torch.equal(raw.mse, masked_mse(pred, patches, mask, lead_mask))


# ----------------------------------------------------------------------------------------------------------
# The kernel against the reference.

@pytest.mark.parametrize("point", GRID, ids=_ids)
def test_kernel_matches_reference(point):
    b, s, e, dtype = point
    inputs = make_inputs(b, s, e, dtype, seed=b * 1000 + s + e)
    assert_matches(run(crmae_loss, inputs), run(crmae_loss_ref, inputs), TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("b,e", [(7, 64), (33, 257)])
def test_kernel_small_temperature(b, e, dtype):
    """tau = 0.02: logits up to +-50, so the log-sum-exp must be the online, max-shifted one."""
    inputs = make_inputs(b, 25, e, dtype, seed=7, pull=0.0)  # unrelated views: a hard, large loss
    got, want = run(crmae_loss, inputs, tau=0.02), run(crmae_loss_ref, inputs, tau=0.02)
    assert want[0][2] > 1.0  # the stress is real: far from the trivial loss
    assert_matches(got, want, TAU_STRESS_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_at_the_limits(dtype):
    """S = 256, E = 1024, P = 64: the contract's largest patch, embedding and patch count."""
    inputs = make_inputs(3, 256, 1024, dtype, seed=13, p=64)
    assert_matches(run(crmae_loss, inputs), run(crmae_loss_ref, inputs), TOL[dtype])


@pytest.mark.parametrize("b,s,e", [(2, 25, 16), (7, 75, 64), (33, 130, 257)])
def test_kernel_bf16(b, s, e):
    inputs = make_inputs(b, s, e, torch.bfloat16, seed=3)
    assert_matches(run(crmae_loss, inputs), run(crmae_loss_ref, inputs), TOL[torch.bfloat16])


def test_kernel_raw_targets_and_empty_views():
    """normalize=False, and a batch where view 1 removes nothing at all: that view contributes 0."""
    inputs = list(make_inputs(7, 75, 64, torch.float32, seed=5))
    inputs[2] = inputs[2].clone()
    inputs[2][1] = 0.0
    got, want = run(crmae_loss, inputs, normalize=False), run(crmae_loss_ref, inputs, normalize=False)
    assert_matches(got, want, TOL[torch.float32])
    assert torch.equal(got[1][0][1], torch.zeros_like(got[1][0][1]))  # no gradient for view 1
    half = masked_mse(inputs[0][:1], inputs[1], inputs[2][:1], inputs[3]) / 2
    torch.testing.assert_close(got[0][1], half, rtol=1e-5, atol=1e-6)


def test_kernel_b1_and_no_gradient_mode():
    """B = 1: each query's only key is its positive, nce = 0 with zero gradients; without requires_grad
    the kernel writes no gradient and gives the same terms."""
    inputs = make_inputs(1, 75, 16, torch.float32, seed=9)
    (terms, grads) = run(crmae_loss, inputs)
    assert terms[2].item() == pytest.approx(0.0, abs=1e-6)
    assert grads[1].abs().max().item() < 1e-6 and grads[2].abs().max().item() < 1e-6
    with torch.no_grad():
        again = crmae_loss(*inputs, 0.1, 0.2)
    assert all(torch.equal(a, b) for a, b in zip(again, terms))


def test_kernel_lead_mask_absent_lead_costs_nothing():
    """Absent leads and visible patches get exactly zero gradient; pred there may even be NaN."""
    pred, patches, mask, lead_mask, z0, z1 = make_inputs(4, 25, 16, torch.float32, seed=11)
    lead_mask = lead_mask.clone()
    lead_mask[2] = False
    pred = pred.clone()
    pred[:, 2] = float("nan")  # never loaded
    pred[mask == 0] = float("nan")
    (terms, grads) = run(crmae_loss, (pred, patches, mask, lead_mask, z0, z1))
    assert torch.isfinite(terms[1])
    assert torch.equal(grads[0][:, 2], torch.zeros_like(grads[0][:, 2]))
    assert (grads[0][mask == 0] == 0).all()


@pytest.mark.parametrize("change,exc,words", [
    (lambda a: a.update(pred=a["pred"][0]), ValueError, "pred expected shape (2, B, L, P, S)"),
    (lambda a: a.update(mask=a["mask"][:, :, :, :2]), ValueError, "mask expected shape"),
    (lambda a: a.update(lead_mask=a["lead_mask"].float()), TypeError, "lead_mask expected torch.bool"),
    (lambda a: a.update(z1=a["z1"][:, :8]), ValueError, "z0 and z1 expected one shape"),
    (lambda a: a.update(z0=a["z0"].double(), z1=a["z1"].double()), TypeError, "z0 expected one of"),
    (lambda a: a.update(tau=0.0), ValueError, "tau expected a finite number (> 0), got 0.0"),
    (lambda a: a.update(pred=torch.zeros(2, 2, L, P, 300), patches=torch.zeros(2, L, P, 300)), ValueError,
     "patch length S expected 1..256, got 300"),
])
def test_kernel_rejects_bad_inputs(change, exc, words):
    names = ("pred", "patches", "mask", "lead_mask", "z0", "z1")
    args = dict(zip(names, make_inputs(2, 25, 16, torch.float32)), lam=0.1, tau=0.2)
    change(args)
    with pytest.raises(exc) as info:
        crmae_loss(**args)
    assert words in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# DDP: 2 gloo processes, keys gathered, against one process on the concatenated batch.
WORLD, B_RANK, E_DDP, S_DDP = 2, 3, 20, 25


def _ddp_inputs():
    pred, patches, mask, lead_mask, z0, z1 = make_inputs(WORLD * B_RANK, S_DDP, E_DDP, torch.float32, seed=21)
    # The same mask and lead pattern on each rank, so that each rank's mse has the same number of terms
    # and the mean of the ranks' mse is the global one (mse is a per-rank mean: loss.py's docstring).
    mask = mask[:, :B_RANK].repeat(1, WORLD, 1, 1)
    lead_mask = lead_mask[:B_RANK].repeat(WORLD, 1)
    return pred, patches, mask, lead_mask, z0, z1


def _ddp_worker(rank, impl, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        sl = slice(rank * B_RANK, (rank + 1) * B_RANK)
        pred, patches, mask, lead_mask, z0, z1 = _ddp_inputs()
        local = (pred[:, sl], patches[sl], mask[:, sl], lead_mask[sl], z0[sl], z1[sl])
        fn = {"triton": crmae_loss, "ref": crmae_loss_ref}[impl]
        terms, grads = run(fn, local)  # gathers: torch.distributed has 2 ranks
        torch.save({"terms": terms, "grads": grads}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("impl", ["triton", "ref"])
def test_ddp_gathered_matches_single_process(impl, tmp_path):
    """Both implementations under 2 gloo ranks (all_gather_with_grad) equal the single-process reference."""
    mp.spawn(_ddp_worker, args=(impl, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    (t_single, g_single) = run(crmae_loss_ref, _ddp_inputs(), gather=False)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for i, name in enumerate(("loss", "mse", "nce")):  # the global loss is the mean of the ranks'
        got = sum(r["terms"][i] for r in ranks) / WORLD
        torch.testing.assert_close(got, t_single[i], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    for r, res in enumerate(ranks):  # DDP divides the summed gradients by WORLD
        sl = slice(r * B_RANK, (r + 1) * B_RANK)
        for name, got, want in zip(("pred", "z0", "z1"), res["grads"],
                                   (g_single[0][:, sl], g_single[1][sl], g_single[2][sl])):
            torch.testing.assert_close(got / WORLD, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------------------
# GPU lane: base pretraining shapes in bf16 (and fp16), against fp64; the kernel's error at most twice
# PyTorch's own when it computes the same loss in that precision.

def lowp_reference(pred, patches, mask, lead_mask, z0, z1, lam, tau, eps=1e-6, normalize=True, gather=None):
    """The reference's arithmetic carried out in pred's / z's own dtype (no upcast): PyTorch's own error."""
    x = patches.to(pred.dtype)
    if normalize:
        x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps)
    err = (pred - x[None]).pow(2).mean(-1)
    w = mask.to(err.dtype) * lead_mask.to(err.dtype)[None, :, :, None]
    mse = ((err * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1.0)).mean()
    q = torch.cat([F.normalize(z0, dim=-1), F.normalize(z1, dim=-1)])
    b = z0.shape[0]
    logits = (q @ q.t() / tau).masked_fill(torch.eye(2 * b, dtype=torch.bool, device=q.device), float("-inf"))
    nce = F.cross_entropy(logits, torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(q.device))
    return op.LossTerms((mse + lam * nce).float(), mse.float(), nce.float())


def _f64(inputs):
    pred, patches, mask, lead_mask, z0, z1 = inputs
    return (pred.double(), patches.double(), mask, lead_mask, z0.double(), z1.double())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b", [256, 37])
def test_gpu_base_shapes_within_twice_pytorch_error(b, dtype):
    inputs = make_inputs(b, 75, 256, dtype, seed=b, device="cuda", p=30)
    got = run(crmae_loss, inputs)
    exact = run(crmae_loss_ref, _f64(inputs))
    torch_lp = run(lowp_reference, inputs)
    for kind, i in (("terms", 0), ("grads", 1)):
        for name, a, want, c in zip(("0", "1", "2"), got[i], exact[i], torch_lp[i]):
            err = (a.double() - want).abs().max().item()
            torch_err = (c.double() - want).abs().max().item()
            atol = 2 * (want.to(dtype).double() - want).abs().max().item() + 1e-6
            assert err <= 2 * torch_err + atol, f"{kind}[{name}]: {err:.3e} > 2 x {torch_err:.3e} + {atol:.1e}"


@pytest.mark.gpu
def test_gpu_fp32_and_large_batch():
    """fp32 (3xTF32 dots) at the base shapes, and a contrastive batch of 2N = 16,384 against the reference."""
    inputs = make_inputs(256, 75, 256, torch.float32, seed=1, device="cuda", p=30)
    assert_matches(run(crmae_loss, inputs), run(crmae_loss_ref, inputs), {"terms": (1e-4, 1e-5), "grad": 1e-4})
    inputs = make_inputs(8192, 25, 256, torch.float32, seed=2, device="cuda", p=2)
    assert_matches(run(crmae_loss, inputs), run(crmae_loss_ref, inputs), {"terms": (1e-4, 1e-5), "grad": 1e-4})


# ----------------------------------------------------------------------------------------------------------
# Compiled for the GPU without one (as tests/test_kernels/test_attention.py does for attention): the
# interpreter accepts code Triton's compiler rejects, so the kernels are compiled for sm_90, interpreter off.

_COMPILE = r'''
import json, os, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as err:
    print(json.dumps({"skip": str(err)}))
    sys.exit(0)
import kernels.crmae_loss as C

FP32_PTRS = {"PATCH", "MASK", "W", "PART", "LSE", "LROW", "SCALE", "DQ", "DK"}
LOWP_PTRS = {"PRED", "GRAD", "Q", "K"}  # pred's / z's dtype

def compile_one(name, dtype, consts, warps=4):
    fn = getattr(C, name)  # a JITFunction (no autotuner around it)
    sig, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in consts:
            sig[arg] = "constexpr"
        elif arg in FP32_PTRS:
            sig[arg] = "*fp32"
        elif arg == "LEAD":
            sig[arg] = "*u8"
        elif arg in LOWP_PTRS:
            sig[arg] = "*" + dtype
        else:
            sig[arg] = "fp32" if arg in ("eps", "inv_s", "qk_scale") else "i32"
        if sig[arg].startswith("*"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    k = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=warps))
    return {"smem": k.metadata.shared, "wgmma": "wgmma" in k.asm["ptx"]}

nce = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_E=64)
out = []
for dt in ("bf16", "fp32"):
    prec = "tf32x3" if dt == "fp32" else "ieee"
    out.append([dt, "_mse_fwd", compile_one("_mse_fwd", dt, dict(NORMALIZE=True, STORE_GRAD=True, BLOCK_R=32,
                                                                   BLOCK_S=128))])
    out.append([dt, "_nce_fwd", compile_one("_nce_fwd", dt, dict(PREC=prec, **nce))])
    for name in ("_nce_bwd_dq", "_nce_bwd_dk"):
        out.append([dt, name, compile_one(name, dt, dict(PREC=prec, BLOCK_EO=128, **nce))])
print(json.dumps(out))
'''


def test_kernels_compile_for_hopper():
    """The four kernels compile for sm_90 in bf16 and fp32 (3xTF32) at the launchers' block sizes; every
    NT-Xent dot becomes wgmma (tensor cores) and each fits the H100's 227 KiB of shared memory per block."""
    results = compile_results(_COMPILE)
    assert {(dt, name) for dt, name, _ in results} == {
        (dt, k) for dt in ("bf16", "fp32") for k in ("_mse_fwd", "_nce_fwd", "_nce_bwd_dq", "_nce_bwd_dk")}
    for dt, name, res in results:
        assert res["smem"] <= 227 * 1024, f"{dt} {name}: {res['smem']} bytes of shared memory"
        if name.startswith("_nce"):
            assert res["wgmma"], f"{dt} {name}: no wgmma in the PTX"
