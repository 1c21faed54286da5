"""The loss switch (crema_fast/model/loss.py) and the model flipped between ``loss="ref"`` and ``"triton"``.

The kernel itself against its reference, and the reference against hand-computed cases and DDP, are in
tests/test_kernels/test_crmae_loss.py. Here: the same CremaModel (tiny preset), the same weights, the same
batch gives the same loss terms and parameter gradients with either loss, and one AdamW step from the same
state gives the same parameters (Triton under the interpreter, fp32).
"""

import copy

import pytest
import torch

import kernels.crmae_loss  # noqa: F401 (imported under TRITON_INTERPRET=1 before a test unsets it)
from crema_fast.errors import ConfigError
from crema_fast.model import CremaModel, LossConfig, ModelConfig
from crema_fast.model import loss as loss_switch
from tests.test_model.conftest import make_batch

# fp32 in the interpreter: the kernel and the reference differ only in the order of their sums
# (tests/test_kernels/test_crmae_loss.py measured 6e-7 relative); the parameter gradients go through the
# whole model's backward, which carries that difference (measured below 1e-6 relative here).
TERMS_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = 1e-5  # max |difference| / max |gradient| per parameter
# Parameters after one AdamW step at lr 1e-3: Adam's first step is lr * g / (|g| + eps), a sign for any
# gradient far above eps. The decoder's key bias has a true gradient of 0 (softmax ignores a shift shared
# by all keys): its rounding noise (~1e-10) against eps = 1e-8 moved it by up to 7.5e-6 differently in the
# two runs, so the test uses eps = 1e-6, where the largest difference measured was 2.2e-7 (0.02% of a step).
STEP_TOL = dict(rtol=1e-5, atol=1e-6)


def test_switch_rejects_unknown_impl():
    with pytest.raises(ConfigError, match=r"loss: expected one of \('ref', 'triton'\), got 'fast'"):
        loss_switch.check_impl("fast")
    with pytest.raises(ConfigError, match="loss expected one of"):
        CremaModel(ModelConfig.preset("tiny"), loss="fast")


def test_triton_without_gpu_or_interpreter_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="loss='triton' needs a CUDA GPU"):
        CremaModel(ModelConfig.preset("tiny"), loss="triton")


def _models(lead_absent=True):
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    ref = CremaModel(cfg, LossConfig(), attention="sdpa", loss="ref")
    fast = CremaModel(cfg, LossConfig(), attention="sdpa", loss="triton")
    fast.load_state_dict(ref.state_dict())
    batch = list(make_batch(cfg, b=5, n_keep=8, seed=3))
    if lead_absent:
        batch[4] = batch[4].clone()
        batch[4][1, 7] = False
    return ref, fast, batch


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(*batch)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_model_same_loss_and_gradients_with_ref_and_triton():
    ref, fast, batch = _models()
    assert (ref.loss_impl, fast.loss_impl) == ("ref", "triton")
    out_r, g_r = _grads(ref, batch)
    out_f, g_f = _grads(fast, batch)
    for name in ("loss", "mse", "nce"):
        torch.testing.assert_close(getattr(out_f, name), getattr(out_r, name), **TERMS_TOL)
    assert out_r.nce > 0.5 and out_r.mse > 0.1  # both terms are live, not the trivial 0
    assert g_r.keys() == g_f.keys() and len(g_r) > 10
    for name, g in g_r.items():
        err = ((g_f[name] - g).abs().max() / g.abs().max().clamp_min(1e-30)).item()
        assert err <= GRAD_TOL, f"{name}: {err:.2e}"
    assert torch.equal(out_f.target, out_r.target)  # computed from the raw patches on demand, both paths


def test_model_one_training_step_gives_the_same_parameters():
    ref, fast, batch = _models()
    for model in (ref, fast):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, eps=1e-6)
        _grads(model, batch)
        opt.step()
    before = _models()[0].state_dict()
    moved = 0
    for (name, p_r), p_f in zip(ref.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(p_f, p_r, **STEP_TOL, msg=lambda m: f"{name}: {m}")
        moved += not torch.equal(p_r, before[name])
    assert moved > 10  # the step changed the weights: the comparison is not of two untouched models


def test_model_triton_loss_with_raw_targets():
    """LossConfig(norm_target=False): the kernel reconstructs the raw patch, as the reference does."""
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(1)
    ref = CremaModel(cfg, LossConfig(norm_target=False), attention="sdpa", loss="ref")
    fast = copy.deepcopy(ref)
    fast.loss_impl = "triton"
    batch = make_batch(cfg, b=3, n_keep=8, seed=4)
    torch.testing.assert_close(fast(*batch).mse, ref(*batch).mse, **TERMS_TOL)
