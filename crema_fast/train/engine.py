"""The pretraining loop: AdamW + warmup-cosine, clipping, accumulation, AMP, compile, DDP, checkpoints.

    trainer = Trainer(cfg, run_dir, store)          # or Trainer(cfg, run_dir, resume=read_checkpoint(d))
    summary = trainer.fit()

One optimizer step = ``optim.grad_accum`` micro-batches of ``cfg.micro_batch(world_size)`` ECGs per
rank. The host synchronises only at logging steps (every ``train.log_every``) and before checkpoints:
that is where losses are read, the metrics row is written (``metrics.jsonl``), the progress bar moves
and non-finite losses are caught. Which step first went non-finite is tracked on the device, so the
error names the exact step even between logging steps; the run stops there, and no checkpoint is
written after that step, so the last one on disk is good.

Distributed: launched by ``torchrun`` (WORLD_SIZE > 1 in the environment), the trainer joins the
process group (NCCL on CUDA, gloo on CPU), wraps the model in DistributedDataParallel, gives each
rank's loader its rank and world size, and lets rank 0 alone write files. Logged losses are the mean
over ranks. Exact resume: model, optimizer, scheduler, loader positions and RNG states of every rank
are in each checkpoint; on one process on the CPU a run of 2N steps and a run of N steps + resume + N
give the same losses bit for bit. A resume needs the same number of processes as the run it continues
(CremaError otherwise, before anything is built); a resume with another ``train.steps`` re-stretches
the cosine schedule from the resumed step to the new total (a warm restart, announced on stderr).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from crema_fast.errors import CremaError
from crema_fast.train.checkpoint import (load_model_state, rng_state, save_checkpoint, set_rng_state,
                                         unwrap)
from crema_fast.train.config import RunConfig

# Dense bf16 peak (TFLOP/s) by device-name prefix, for MFU; CPUs have none (MFU is not reported).
PEAK_BF16_TFLOPS = {"NVIDIA H100": 989.0, "NVIDIA H200": 989.0, "NVIDIA A100": 312.0, "NVIDIA L4": 121.0}


_JOINED = False  # whether setup_distributed created the process group (then close() destroys it)


class NonFiniteLossError(CremaError):
    """The loss became NaN or inf; the message names the step and the last good checkpoint."""


@dataclass
class Summary:
    """What a run did: steps done (``start_step`` of them before this process), the last logged loss
    terms, throughput, and where its files are."""

    run_dir: str
    start_step: int
    steps: int
    loss: float
    mse: float
    nce: float
    ecg_per_s: float
    seconds: float
    checkpoint: str | None
    plots: list[str]
    metrics: str


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device): joins the process group when torchrun set WORLD_SIZE > 1."""
    global _JOINED
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        # CREMA_DIST_TIMEOUT_S: how long a collective may wait before it fails naming itself (torch's
        # default is 10-30 minutes: a stuck rank then looks like a silent hang)
        wait = os.environ.get("CREMA_DIST_TIMEOUT_S")
        kw = {"timeout": datetime.timedelta(seconds=float(wait))} if wait else {}
        dist.init_process_group(backend="nccl" if cuda else "gloo", **kw)
        _JOINED = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def check_resume_world(ckpt: dict, world: int) -> None:
    """Refuse, before anything is built, to resume with another number of processes: exact resume needs
    every rank's loader position and RNG state, which only the same world size has."""
    saved = int(ckpt.get("world_size") or len(ckpt.get("loader") or []) or 1)
    if saved != world:
        raise CremaError(f"checkpoint written by {saved} processes; resume with {saved} (got {world})")


def store_ref(store) -> str | None:
    """How checkpoints and config.json name the store: an absolute path for a local one (a resumed run may
    start in another working directory), a URL as it is; a StoreReader by what it was opened with."""
    if store is None:
        return None
    store = getattr(store, "store", store)  # a StoreReader: the path or URL it was opened with
    if isinstance(store, (str, Path)) and "://" not in str(store):
        return str(Path(store).expanduser().resolve())
    return str(store)


def build_model(cfg: RunConfig) -> torch.nn.Module:
    from crema_fast.model import CremaModel

    return CremaModel(cfg.model, cfg.loss, attention=cfg.train.attention, loss=cfg.train.loss)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (>= 2-D) only; biases, norms and 1-D tokens are not decayed."""
    decay, other = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else other).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def device_peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for prefix, tflops in PEAK_BF16_TFLOPS.items():
        if name.startswith(prefix):
            return tflops * 1e12
    return None


class Trainer:
    """Owns the model, optimizer, scheduler, loader and run folder of one run (one per process).

    cfg: the run config; run_dir: the run folder (created by rank 0); store: a store path/URL or
    StoreReader (ignored when ``loader`` is given); loader: any iterable of ``Batch`` with ``state_dict``
    / ``load_state_dict`` (and optionally ``set_epoch``) already sharded for this rank, in place of an
    ``ECGLoader``; resume: a checkpoint dict (``read_checkpoint``) to continue from; progress: show a
    tqdm bar on rank 0.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, store=None, *, loader=None, resume: dict | None = None,
                 progress: bool = True):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.rank, self.world, self.device = setup_distributed()
        self._in_fit = False  # True while fit() runs: a close() then skips the barrier (see close)
        self.main = self.rank == 0
        if resume is not None:
            check_resume_world(resume, self.world)
        self.micro = cfg.micro_batch(self.world)
        t = cfg.train
        torch.manual_seed(t.seed)  # the same initial weights on every rank (DDP also broadcasts them)
        self.model = build_model(cfg).to(self.device)
        self.model.sit.checkpoint_blocks = t.act_ckpt
        # fused: one kernel per step and no host read of the step counts (the single-tensor AdamW calls
        # .item() on them), on the CPU too, so the CPU lane's no-sync test covers the GPU's code path.
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=cfg.optim.betas,
            eps=cfg.optim.eps, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cfg.optim.lr_factor(s, t.steps))
        if loader is None:
            if store is None:
                raise ValueError("Trainer: expected a store or a loader, got neither")
            from crema_fast.data.loader import ECGLoader

            loader = ECGLoader(store, cfg.data, cfg.mask, self.micro, seed=t.seed, rank=self.rank,
                               world_size=self.world, workers=t.workers, train=True, order=t.order)
        if hasattr(loader, "__len__") and len(loader) == 0:
            raise CremaError(f"the data has too few records for a batch of {self.micro} per process "
                             f"(train.batch_size={t.batch_size} over {self.world} process(es)): lower train.batch_size")
        self.loader, self.store = loader, store
        self.step, self.epoch, self._it = 0, 0, None
        self._ahead = None  # (batch on its way to the device, loader state and epoch before it) or None
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.last_checkpoint: str | None = None
        self.last_row: dict = {}
        if resume is not None:
            self._restore(resume)
        else:
            torch.manual_seed(t.seed + self.rank)
            np.random.seed(t.seed + self.rank)
        self.net = self.model
        if t.compile:
            self.net = torch.compile(self.net, mode=t.compile_mode)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.amp_dtype = cfg.amp_dtype(self.device.type)
        self.flops_per_ecg = unwrap(self.model).flops_per_ecg(cfg.mask.n_keep(cfg.model.n_patches))
        self.peak = device_peak_flops(self.device)

    # -- state ---------------------------------------------------------------------------------------
    def _gather(self, obj):
        """``obj`` of every rank, in rank order (a one-element list on one process)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def _restore(self, ckpt: dict) -> None:
        states, rngs = ckpt.get("loader") or [], ckpt.get("rng") or []
        load_model_state(self.model, ckpt, self.cfg)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        # The hyper-parameters are this run's config (a resumed run may extend train.steps or change the
        # optimizer's settings with --set); the moments and the step count come from the checkpoint. The
        # schedule's length is the saved train.steps unless the user changed it: then the cosine is
        # re-stretched to the new total from this step on (a warm restart), and we say so.
        o, total = self.cfg.optim, self.cfg.train.steps
        saved_total = int(((ckpt.get("config") or {}).get("train") or {}).get("steps", total))
        step = int(ckpt["step"])
        if total != saved_total and self.main:
            old_lr, new_lr = o.lr * o.lr_factor(step, saved_total), o.lr * o.lr_factor(step, total)
            print(f"resume: train.steps {saved_total} -> {total}: the LR schedule is re-stretched from step {step} "
                  f"to the new total {total} (warm restart: lr {old_lr:.3g} -> {new_lr:.3g})", file=sys.stderr)
        self.scheduler.lr_lambdas = [lambda s: o.lr_factor(s, total)] * len(self.optimizer.param_groups)
        self.scheduler.base_lrs = [o.lr] * len(self.optimizer.param_groups)
        for i, g in enumerate(self.optimizer.param_groups):
            g.update(lr=o.lr * o.lr_factor(self.scheduler.last_epoch, total), initial_lr=o.lr, betas=o.betas,
                     eps=o.eps, weight_decay=o.weight_decay if i == 0 else 0.0)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.step, self.epoch = int(ckpt["step"]), int(ckpt.get("epoch", 0))
        self.last_checkpoint = ckpt.get("path")
        self.last_row = dict(ckpt.get("metrics") or {})
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
        if states:
            self.loader.load_state_dict(states[self.rank])
        if rngs:
            set_rng_state(rngs[self.rank])

    def state(self) -> dict:
        """The checkpoint dict of this step (collective under DDP: every rank must call it)."""
        return {
            "step": self.step, "epoch": self.epoch if self._ahead is None else self._ahead[2],
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "loader": self._gather(self._loader_state()), "rng": self._gather(rng_state()),
            "config": self.cfg.to_dict(), "store": store_ref(self.store),
            "world_size": self.world, "metrics": self.last_row,
        }

    def save(self) -> str | None:
        state = self.state()
        if self.main:
            self.last_checkpoint = str(save_checkpoint(self.run_dir, state, keep_last=self.cfg.train.keep_last))
        return self.last_checkpoint

    # -- the step ------------------------------------------------------------------------------------
    def _next_batch(self):
        empty = 0  # epochs in a row without a batch: one is a resume at an epoch's end, two is no data
        while True:
            if self._it is None:
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
                empty += 1
                if empty > 2:
                    raise CremaError("the loader yields no batch: fewer records than one batch per process")
                if hasattr(self.loader, "epoch"):  # ECGLoader advances its own epoch after a full pass
                    self.epoch = int(self.loader.epoch)
                else:
                    self.epoch += 1
                    if hasattr(self.loader, "set_epoch"):
                        self.loader.set_epoch(self.epoch)

    def _loader_state(self) -> dict:
        """The loader's position before the prefetched batch (if any): a resume must yield that batch again."""
        return self.loader.state_dict() if self._ahead is None else self._ahead[1]

    def _fetch(self):
        """The next batch, its copy to the device started: pinned and non_blocking on the copy stream
        (CUDA), so that it overlaps the compute already queued; with the loader state before it."""
        state, epoch = self.loader.state_dict(), self.epoch
        batch = self._next_batch()
        if self._copy_stream is None:
            return batch.to(self.device), state, epoch
        with torch.cuda.stream(self._copy_stream):
            return batch.pin().to(self.device, non_blocking=True), state, epoch

    def _take(self):
        """The batch to compute on now, ready on the device."""
        ahead, self._ahead = self._ahead, None
        batch = (ahead or self._fetch())[0]
        if self._copy_stream is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_stream(self._copy_stream)
            for f in dataclasses.fields(batch):  # the caching allocator must not reuse them before use
                getattr(batch, f.name).record_stream(stream)
        return batch

    def _forward(self, batch):
        """The model's output for one micro-batch (under autocast when AMP is on)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            return self.net(batch.signal, batch.ids_keep, batch.mask, batch.ids_restore, batch.lead_mask)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step. Returns (loss terms (3,) averaged over micro-batches, grad norm, seconds
        spent waiting for data); all tensors stay on the device."""
        accum, wait = self.cfg.optim.grad_accum, 0.0
        terms = torch.zeros(3, device=self.device)
        for i in range(accum):
            t0 = time.perf_counter()
            batch = self._take()
            wait += time.perf_counter() - t0
            sync = i == accum - 1 or self.world == 1
            ctx = self.net.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                out = self._forward(batch)
                (out.loss / accum).backward()
            terms += torch.stack([out.loss, out.mse, out.nce]).detach().float() / accum
            # The GPU runs the queued backward meanwhile.
            if self.cfg.train.prefetch:
                t0 = time.perf_counter()
                self._ahead = self._fetch()
                wait += time.perf_counter() - t0
        clip = self.cfg.optim.grad_clip or math.inf
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return terms, gnorm.detach().float(), wait

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self, stop_at: int | None = None) -> Summary:
        """Train until ``train.steps`` (or until step ``stop_at``, checkpointing there: a pause that
        ``--resume`` continues exactly). Raises NonFiniteLossError when the loss goes NaN/inf."""
        t = self.cfg.train
        end = t.steps if stop_at is None else min(stop_at, t.steps)
        start, self.t_start = self.step, time.perf_counter()
        self._in_fit = True
        if self.main:
            self._prepare_run_dir()
        self.model.train()
        bar = self._bar(end)
        acc = torch.zeros(5, device=self.device)  # loss, mse, nce, grad norm, steps
        bad = torch.full((), -1, dtype=torch.long, device=self.device)  # first non-finite step, -1 = none
        t_log, wait, done_ecg = time.perf_counter(), 0.0, 0
        try:
            while self.step < end:
                terms, gnorm, w = self.train_step()
                wait += w
                finite = torch.isfinite(terms[0])
                bad = torch.where(finite | (bad >= 0), bad, torch.full_like(bad, self.step))
                acc += torch.cat([terms, gnorm[None], torch.ones(1, device=self.device)])
                log_now = self.step % t.log_every == 0 or self.step == end
                ckpt_now = self.step % t.ckpt_every == 0 or self.step == end
                if log_now or ckpt_now:
                    self._check_finite(bad, terms)
                if log_now:
                    dt = time.perf_counter() - t_log
                    row = self._log_row(acc, dt, wait)
                    done_ecg += int(row["steps"]) * t.batch_size
                    if bar is not None:
                        bar.update(int(row["steps"]))
                        bar.set_postfix(loss=f"{row['loss']:.4f}", ecg_s=f"{row['ecg_per_s']:.0f}")
                    acc.zero_()
                    t_log, wait = time.perf_counter(), 0.0
                if ckpt_now:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - self.t_start
        plots = self._plots() if t.plots else []
        self._in_fit = False
        row = self.last_row
        summary = Summary(str(self.run_dir), start, self.step, row.get("loss", math.nan), row.get("mse", math.nan),
                          row.get("nce", math.nan), done_ecg / seconds if seconds > 0 else 0.0, seconds,
                          self.last_checkpoint, plots, str(self.run_dir / "metrics.jsonl"))
        if self.main:
            (self.run_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
        return summary

    def _check_finite(self, bad: torch.Tensor, terms: torch.Tensor) -> None:
        first = bad.clone()
        if self.world > 1:  # the earliest bad step of any rank; -1 (none) must not win the MIN
            first = torch.where(first < 0, torch.full_like(first, 2**62), first)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
            first = torch.where(first == 2**62, torch.full_like(first, -1), first)
        first = int(first.item())
        if first >= 0:
            kept = self.last_checkpoint or "none (no checkpoint had been written yet)"
            raise NonFiniteLossError(
                f"non-finite loss at step {first} (loss at step {self.step}: {terms[0].item()}); the run "
                f"stopped at step {self.step} without writing a checkpoint; the last good checkpoint: {kept}")

    def _log_row(self, acc: torch.Tensor, dt: float, wait: float) -> dict:
        if self.world > 1:
            acc = acc.clone()
            dist.all_reduce(acc, op=dist.ReduceOp.SUM)
            acc[:4] /= self.world
            acc[4] /= self.world
        loss, mse, nce, gnorm, n = acc.tolist()
        n = max(n, 1.0)
        ecg_s = n * self.cfg.train.batch_size / dt if dt > 0 else 0.0
        row = {"step": self.step, "loss": loss / n, "mse": mse / n, "nce": nce / n,
               "lr": self.scheduler.get_last_lr()[0], "grad_norm": gnorm / n, "ecg_per_s": ecg_s,
               "data_wait": min(1.0, wait / dt) if dt > 0 else 0.0, "steps": int(n),
               "elapsed_s": time.perf_counter() - self.t_start}
        if self.peak is not None:  # training = 3x the forward FLOPs; per-GPU throughput over per-GPU peak
            row["mfu"] = 3 * self.flops_per_ecg * ecg_s / self.world / self.peak
        self.last_row = row
        if self.main:
            with (self.run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
        return row

    # -- files ---------------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        """config.json, and metrics.jsonl cut back to the resumed step (rows a killed run logged after its
        last checkpoint would otherwise appear twice)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        meta = {"config": self.cfg.to_dict(), "store": store_ref(self.store),
                "world_size": self.world}
        (self.run_dir / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():
            rows = [r for r in metrics.read_text().splitlines() if r.strip()]
            kept = [r for r in rows if json.loads(r)["step"] <= self.step]
            metrics.write_text("".join(r + "\n" for r in kept))

    def _bar(self, end: int):
        if not (self.main and self.progress):
            return None
        from tqdm import tqdm

        return tqdm(total=end, initial=self.step, desc="pretrain", unit="step", file=sys.stderr,
                    dynamic_ncols=True)

    def _plots(self) -> list[str]:
        """Rank 0 writes the PNGs; under DDP every rank runs the reconstruction's forward pass, because the
        loss's all-gather is collective."""
        from crema_fast.train.plots import plot_losses, plot_reconstruction, reconstruct

        out = [plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")] if self.main else []
        if self.store is not None:
            from crema_fast.data.loader import ECGLoader

            # A fixed crop and a deterministic mask (train=False): the same picture for the same weights.
            loader = ECGLoader(self.store, self.cfg.data, self.cfg.mask, 1, seed=self.cfg.train.seed, train=False,
                               order="shard", drop_last=False)
            batch = next(iter(loader)).to(self.device)
            model = unwrap(self.model)
            result = reconstruct(model, batch)
            if self.main:
                out.append(plot_reconstruction(model, batch, self.run_dir / "reconstruction.png", result=result,
                                               rate=self.cfg.data.model_rate))
        return [str(p) for p in out]

    def close(self) -> None:
        """Leave the process group if ``setup_distributed`` created it.

        The order matters under gloo. The group goes with its last reference, and its destructor joins
        gloo's threads while this thread holds the GIL; a gloo thread that is still letting go of a
        finished collective's tensors needs the GIL for that, so both waited forever (py-spy, 1 of 6
        2-process runs on a 2-core machine: ~ProcessGroupGloo in std::thread::join beside a gloo thread
        in ~AsyncAllgatherWork -> gil_scoped_acquire, once DDP's reducer was freed). So: a barrier (no
        rank is inside a collective), the GIL released for a moment (those threads finish), then DDP
        and the group go, here rather than whenever the trainer is collected."""
        global _JOINED
        if _JOINED and dist.is_initialized():
            if not self._in_fit:  # after fit() raised, the other ranks may be inside another collective
                dist.barrier()
                if dist.get_backend() == "gloo":
                    time.sleep(0.1)  # releases the GIL
                self.net = self.model
            dist.destroy_process_group()
            _JOINED = False
