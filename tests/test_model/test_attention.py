"""crema_fast.model.attention, the switch: ref vs sdpa at op level and model level; the triton switch's
contract with a stand-in kernel; and the real Triton kernel against ref at model level (one tiny CREMA
model, same weights: same loss and the same gradient for every parameter; CPU lane: the kernel runs in
Triton's interpreter). The kernel's own op-level tests: tests/test_kernels/test_attention.py."""

import types

import pytest
import torch

import crema_fast._kernels
from crema_fast.errors import ConfigError
from crema_fast.model import CremaModel, LossConfig, ModelConfig, random_masking
from crema_fast.model.attention import attention

attention_ref = crema_fast._kernels.load_kernels("attention").attention_ref

from .conftest import build, make_batch


def _qkv(b=2, h=3, n=7, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=dtype).requires_grad_() for _ in range(3)]


def test_ref_padding_equals_attention_over_kept_keys_only():
    q, k, v = _qkv(b=1, n=9)
    keep = torch.tensor([[True] * 6 + [False] * 3])
    out = attention(q, k, v, keep, impl="ref")
    scores = q @ k[:, :, :6].transpose(-2, -1) / 4.0  # d = 16
    assert torch.allclose(out, scores.softmax(-1) @ v[:, :, :6], atol=1e-6)


def test_ref_and_sdpa_same_outputs_and_gradients():
    q, k, v = _qkv(b=3, n=11)
    keep = torch.ones(3, 11, dtype=torch.bool)
    keep[0, 7:] = False
    keep[1, ::2] = False
    keep[2] = False  # an ECG with no lead: guarded, must stay finite and equal across impls
    grads = {}
    outs = {}
    for impl in ("ref", "sdpa"):
        for t in (q, k, v):
            t.grad = None
        outs[impl] = attention(q, k, v, keep, impl=impl)
        (outs[impl] * torch.linspace(-1, 1, 16)).sum().backward()
        grads[impl] = [t.grad.clone() for t in (q, k, v)]
    assert torch.isfinite(outs["ref"]).all()
    assert torch.allclose(outs["ref"], outs["sdpa"], atol=1e-5)
    for gr, gs in zip(grads["ref"], grads["sdpa"]):
        assert torch.allclose(gr, gs, atol=1e-5)


def test_attention_validates_its_arguments():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="key_padding_mask"):
        attention(q, k, v, torch.ones(2, 7), impl="ref")
    with pytest.raises(ValueError, match="key_padding_mask"):
        attention(q, k, v, torch.ones(2, 6, dtype=torch.bool), impl="ref")
    with pytest.raises(ConfigError, match="impl"):
        attention(q, k, v, impl="flash")


def test_model_ref_and_sdpa_same_outputs_and_gradients(small_cfg):
    ref = build(small_cfg, attention="ref")
    sdpa = build(small_cfg, attention="sdpa")
    sdpa.load_state_dict(ref.state_dict())
    assert (ref.attention, sdpa.attention) == ("ref", "sdpa") and ref.loss_impl == "ref"
    signal, ids_keep, mask, ids_restore, lead_mask = make_batch(small_cfg, b=4)
    lead_mask[1, 3:9] = False
    outs = []
    for m in (ref, sdpa):
        out = m(signal, ids_keep, mask, ids_restore, lead_mask)
        out.loss.backward()
        outs.append(out)
    assert torch.allclose(outs[0].pred, outs[1].pred, atol=1e-5)
    for name in ("loss", "mse", "nce"):
        assert torch.allclose(getattr(outs[0], name), getattr(outs[1], name), atol=1e-5), name
    for (name, p_ref), p_sdpa in zip(ref.named_parameters(), sdpa.parameters()):
        assert torch.allclose(p_ref.grad, p_sdpa.grad, atol=1e-5, rtol=1e-4), name


def _raise_import_error(name):
    raise ImportError(f"No module named 'kernels.{name}'")


def test_triton_without_kernel_is_a_config_error(small_cfg, monkeypatch):
    monkeypatch.setattr(crema_fast._kernels, "load_kernels", _raise_import_error)
    with pytest.raises(ConfigError, match="triton"):
        CremaModel(small_cfg, attention="triton")
    # a module that exists but has no ``attention`` yet is the same error
    empty = types.ModuleType("kernels.attention")
    monkeypatch.setattr(crema_fast._kernels, "load_kernels", lambda name: empty)
    with pytest.raises(ConfigError, match="no function 'attention'"):
        CremaModel(small_cfg, attention="triton")


def test_triton_without_cuda_or_interpreter_is_a_config_error(small_cfg, monkeypatch):
    """No CUDA and no TRITON_INTERPRET=1: refused at construction, not at the first forward pass."""
    fake = types.SimpleNamespace(attention=lambda q, k, v, *, key_padding_mask, scale: q)
    real = crema_fast._kernels.load_kernels
    monkeypatch.setattr(crema_fast._kernels, "load_kernels", lambda name: fake if name == "attention" else real(name))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match=r"needs a CUDA GPU \(or TRITON_INTERPRET=1"):
        CremaModel(small_cfg, attention="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        CremaModel(small_cfg, attention="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert CremaModel(small_cfg, attention="triton").attention == "triton"


def test_triton_switch_calls_the_kernel_with_the_contract(small_cfg, monkeypatch):
    """A stand-in kernel (the reference, called with the contract's keywords) gives the ref model's
    outputs: the switch passes q, k, v, key_padding_mask and scale and uses what comes back."""
    calls = []

    def fake_attention(q, k, v, *, key_padding_mask, scale):
        calls.append(scale)
        return attention_ref(q, k, v, key_padding_mask, scale)

    fake = types.SimpleNamespace(attention=fake_attention, attention_ref=attention_ref)
    real = crema_fast._kernels.load_kernels
    monkeypatch.setattr(crema_fast._kernels, "load_kernels", lambda name: fake if name == "attention" else real(name))
    tri = build(small_cfg, attention="triton")
    ref = build(small_cfg, attention="ref")
    ref.load_state_dict(tri.state_dict())
    batch = make_batch(small_cfg, b=2)
    assert tri.attention == "triton"
    assert torch.allclose(tri(*batch).loss, ref(*batch).loss, atol=1e-6)
    assert calls and all(s == pytest.approx(small_cfg.head_dim ** -0.5) for s in calls)


def test_unknown_switches_are_config_errors(small_cfg):
    with pytest.raises(ConfigError, match="attention"):
        CremaModel(small_cfg, attention="flash")
    with pytest.raises(ConfigError, match="loss"):
        CremaModel(small_cfg, loss="fused")
    with pytest.raises(TypeError, match="model_cfg"):
        CremaModel(dict(ModelConfig().to_dict()))


# The tiny preset with every switch, the real kernel included. Its real token layout: an encoder over
# 12 x (8 + 2) = 120 visible tokens and a decoder over 12 x (30 + 2) = 384 tokens, head dim 32; one record
# has absent leads, so the key padding mask is exercised too.
IMPLS = ("ref", "sdpa", "triton")
# fp32 everywhere; only the order of summation differs between the three paths.
LOSS_RTOL = 1e-6
GRAD_ATOL, GRAD_RTOL = 1e-6, 1e-5  # measured: max |difference| 3e-8 for gradients up to 0.14


@pytest.fixture(scope="module")
def runs():
    cfg = ModelConfig.preset("tiny")
    g = torch.Generator().manual_seed(0)
    B = 2
    signal = torch.randn(B, cfg.n_leads, cfg.signal_length, generator=g)
    n_keep = cfg.n_patches - round(0.75 * cfg.n_patches)
    ids_keep, mask, ids_restore = random_masking(2, B, cfg.n_leads, cfg.n_patches, n_keep, generator=g)
    lead_mask = torch.ones(B, cfg.n_leads, dtype=torch.bool)
    lead_mask[1, 3:] = False  # a limb-lead-only record: its precordial-lead tokens are masked keys
    torch.manual_seed(0)
    ref = CremaModel(cfg, LossConfig(), attention="ref")
    out = {}
    for impl in IMPLS:
        m = CremaModel(cfg, LossConfig(), attention=impl)
        m.load_state_dict(ref.state_dict())
        assert m.attention == impl
        res = m(signal, ids_keep, mask, ids_restore, lead_mask)
        res.loss.backward()
        out[impl] = (res.loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    return out


@pytest.mark.parametrize("impl", ["sdpa", "triton"])
def test_tiny_model_same_loss_every_impl(runs, impl):
    loss_ref, _ = runs["ref"]
    loss, _ = runs[impl]
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, loss_ref, rtol=LOSS_RTOL, atol=0.0)


@pytest.mark.parametrize("impl", ["sdpa", "triton"])
def test_tiny_model_same_gradients_every_impl(runs, impl):
    _, grads_ref = runs["ref"]
    _, grads = runs[impl]
    assert grads.keys() == grads_ref.keys() and len(grads) > 10
    assert any("attn" in n or "qkv" in n for n in grads), "expected attention parameters among the gradients"
    for name, g in grads.items():
        torch.testing.assert_close(g, grads_ref[name], atol=GRAD_ATOL, rtol=GRAD_RTOL,
                                   msg=lambda m, n=name: f"{n}: {m}")
