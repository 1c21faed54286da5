"""The CR-MAE reference loss against hand-computed cases, an independent numpy formula, and DDP."""

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crema_fast.model.loss import cr_mae_loss, masked_mse, normalize_patches, nt_xent


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


def test_cr_mae_loss_combines_the_terms():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 3, 12, 4, 5, generator=g), torch.randn(3, 12, 4, 5, generator=g)
    mask = (torch.rand(2, 3, 12, 4, generator=g) > 0.5).float()
    lead_mask = torch.rand(3, 12, generator=g) > 0.2
    z0, z1 = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    loss, mse, nce = cr_mae_loss(pred, target, mask, lead_mask, z0, z1, lam=0.1, tau=0.2)
    assert torch.equal(mse, masked_mse(pred, target, mask, lead_mask))
    assert torch.equal(nce, nt_xent(z0, z1, 0.2))
    assert torch.allclose(loss, mse + 0.1 * nce)


# ---------------------------------------------------------------------------------------------------
# DDP: negatives gathered across 2 gloo processes give the loss and gradients of one process on the
# concatenated batch.
WORLD, B, E, TAU = 2, 3, 6, 0.25


def _data():
    g = torch.Generator().manual_seed(42)
    return torch.randn(WORLD * B, E, generator=g), torch.randn(WORLD * B, E, generator=g)


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        z0, z1 = _data()
        a = z0[rank * B:(rank + 1) * B].clone().requires_grad_()
        b = z1[rank * B:(rank + 1) * B].clone().requires_grad_()
        loss = nt_xent(a, b, TAU)  # gathers: torch.distributed is initialized with 2 ranks
        loss.backward()
        torch.save({"loss": loss.detach(), "g0": a.grad, "g1": b.grad}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_gather_with_grad_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    z0, z1 = _data()
    a, b = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    single = nt_xent(a, b, TAU, gather=False)
    single.backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    # The global loss is the mean of the ranks' losses; DDP divides the summed gradients by WORLD.
    assert torch.allclose(sum(r["loss"] for r in ranks) / WORLD, single.detach(), atol=1e-6)
    for r, res in enumerate(ranks):
        assert torch.allclose(res["g0"] / WORLD, a.grad[r * B:(r + 1) * B], atol=1e-6)
        assert torch.allclose(res["g1"] / WORLD, b.grad[r * B:(r + 1) * B], atol=1e-6)
