"""The search engine: one run = one directory, trained epoch by epoch, resumable to the same result.

Layout of a run directory (documented in docs/SEARCH.md):
    config.yaml      the resolved SearchConfig
    metrics.jsonl    one JSON line per finished epoch
    checkpoint.pt    the latest state (atomic writes; loads with torch.load(..., weights_only=True))
    tb/              TensorBoard events
    results.json     written once the run has finished (schema 1)

Determinism: the training order of epoch e is a permutation drawn from a generator seeded by
(seed, e), and validation batches for bilevel from (seed, e, cycle), so both are pure functions of
the position in the run; the checkpoint stores the global RNG states (dropout) and the position,
so a resumed run replays exactly what an uninterrupted one would have done. The test split is read
only after the search, to report the final numbers.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..chrysalize import arch_parameters, conv_gains, kops, match_conv_gain_, weight_parameters
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_atomic, set_rng_state
from .config import ConfigError, SearchConfig, config_differences, read_yaml
from .distributed import (
    DistContext,
    distributed_session,
    evaluate_sharded,
    shard_batches,
    shard_indices,
    sync_buffers,
    wrap_model,
)
from .methods import Method, lr_factor, make_method

RESULTS_SCHEMA = 1
RUN_FILES = ("config.yaml", "metrics.jsonl", CHECKPOINT_NAME, "results.json")
MAX_ROLLBACKS = 3  # on_nonfinite: rollback gives up (and stops) after this many in one process


class NonFiniteError(RuntimeError):
    """The loss or a parameter became NaN/inf; the message names the step and the checkpoint kept."""


# --------------------------------------------------------------------------- data and model
def _get_dataset(name: str, split: str, **options: Any) -> Any:
    """`chrysalis.data.get_dataset` (imported late: tests substitute this hook)."""
    from ..data import get_dataset

    return get_dataset(name, split, **options)


def _create_space(name: str, info: Any, op: str, *, space_options: dict, **kop_options: Any) -> nn.Module:
    """`chrysalis.spaces.create_space` (imported late: tests substitute this hook)."""
    from ..spaces import create_space

    return create_space(name, info, op, space_options=space_options, **kop_options)


@dataclass
class Split:
    """One split held in memory (on the run's device): batches are indexed directly, no DataLoader."""

    inputs: torch.Tensor
    targets: torch.Tensor
    info: Any

    def __len__(self) -> int:
        return len(self.targets)


def load_split(config: SearchConfig, split: str, limit: int | None = None, device: str = "cpu") -> Split:
    """The `split` of the config's dataset, cut to `limit` examples.

    The subset is the first `limit` examples after a fixed shuffle (the same for every seed and
    run): stored splits may be sorted by class, so a plain prefix could hold a single class.
    """
    ds = _get_dataset(config.data, split, **config.data_options)
    inputs, targets = ds.inputs, ds.targets
    if limit is not None and limit < len(targets):
        keep = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        inputs, targets = inputs[keep], targets[keep]
    if len(targets) == 0:
        raise ConfigError(f"the {split} split of {config.data!r} is empty")
    return Split(inputs.to(device), targets.to(device), ds.info)


def model_spec(config: SearchConfig) -> dict[str, Any]:
    """What `create_space` needs to rebuild the run's model: space, op, space/K-op options, seed.

    K-op options are `init`, `depth` and `kop_options` for op "kop", `kop_options` alone for
    "fft", none for "conv". Export and plotting rebuild models from this too.
    """
    kop_options: dict[str, Any] = {}
    if config.op == "kop":
        kop_options = {"init": config.init, "depth": config.depth, **config.kop_options}
    elif config.op == "fft":
        kop_options = dict(config.kop_options)
    return {"space": config.space, "op": config.op, "space_options": dict(config.space_options),
            "kop_options": kop_options, "seed": config.seed}


def build_model(config: SearchConfig, info: Any) -> nn.Module:
    """The backbone for `info` with the config's op, seeded by `config.seed`.

    Seeding right before building makes a conv model and its warm-started K-op twin (same seed)
    start from the same weights, so they compute the same function at step 0.
    """
    spec = model_spec(config)
    torch.manual_seed(spec["seed"])
    return _create_space(spec["space"], info, spec["op"], space_options=spec["space_options"], **spec["kop_options"])


def load_architecture(model: nn.Module, run_dir: str | Path) -> None:
    """Copy the architecture parameters of the run in `run_dir` (its checkpoint) into `model`."""
    state = load_checkpoint(run_dir)["model"]
    arch_ids = {id(p) for p in arch_parameters(model)}
    names = [n for n, p in model.named_parameters() if id(p) in arch_ids]
    missing = [n for n in names if n not in state]
    if missing:
        raise ConfigError(f"the checkpoint in {run_dir} has no architecture parameter(s) "
                          f"{', '.join(missing[:3])}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            if params[n].shape != state[n].shape:
                raise ConfigError(f"architecture {n} has shape {tuple(state[n].shape)} in {run_dir}, "
                                  f"but {tuple(params[n].shape)} here")
            params[n].copy_(state[n])


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on `split`, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(split), batch_size):
        x, y = split.inputs[i:i + batch_size], split.targets[i:i + batch_size]
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    return loss_sum / len(split), correct / len(split)


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda if available, else cpu; anything else as torch.device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {name!r} ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


def _generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by a tuple of ints (the data order is a pure function of them)."""
    h = 0
    for k in keys:
        h = (h * 1_000_003 + int(k) + 1) % (2**61 - 1)
    return torch.Generator().manual_seed(h)


def default_out(config: SearchConfig) -> str:
    """runs/<space>-<data>-<op>-<method>[-<init>]-s<seed>."""
    parts = [config.space, config.data, config.op, config.method]
    if config.op == "kop":
        parts.append(config.init)
    return str(Path("runs") / ("-".join(parts) + f"-s{config.seed}"))


# --------------------------------------------------------------------------- the run
class SearchRun:
    """A search/training run in one directory; `run()` trains (or resumes) and writes results.

    Args:
        config: the run's configuration (`config.out` is its directory; default from the config).
        resume: continue from `out/checkpoint.pt` if there is one (a fresh start otherwise).
        overwrite: delete a previous run's files in `out` and start over.
    """

    def __init__(self, config: SearchConfig, *, resume: bool = False, overwrite: bool = False) -> None:
        if config.out is None:
            config = config.replace(out=default_out(config))
        self.config = config
        self.out = Path(config.out)
        self.resume, self.overwrite = resume, overwrite
        self._log_fn: Callable[[str], None] = print
        self.dist = DistContext()  # a single process until `run` joins torchrun's process group

    # -- setup -----------------------------------------------------------------------------
    def _check_dir(self) -> dict[str, Any] | None:
        """Check the run directory (nothing written yet); return the checkpoint to resume from."""
        existing = next(p for p in (self.out, *self.out.parents) if p.exists())  # first that exists
        if not existing.is_dir():
            raise ConfigError(f"cannot use {self.out} as a run directory: {existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write the run directory {self.out}: {existing} is not writable")
        has_run = any((self.out / f).exists() for f in RUN_FILES if f != "config.yaml")
        if has_run and not (self.resume or self.overwrite):
            raise ConfigError(f"{self.out} already holds a run; pass --resume to continue it, "
                              "--overwrite to start over, or another --out")
        if not self.resume or self.overwrite or not (self.out / "config.yaml").exists():
            return None
        saved = SearchConfig.from_dict(read_yaml(self.out / "config.yaml"))
        diff = config_differences(saved, self.config)
        if diff:
            details = ", ".join(f"{k}: {getattr(saved, k)!r} -> {getattr(self.config, k)!r}" for k in diff)
            raise ConfigError(f"cannot resume {self.out}: its config differs ({details})")
        path = self.out / CHECKPOINT_NAME
        return load_checkpoint(path) if path.exists() else None

    def _init_dir(self) -> None:
        """Create the run directory (clearing an old run with overwrite) and save the config."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the run directory {self.out}: {e.strerror or e}") from None
        if self.overwrite:
            for f in RUN_FILES:
                (self.out / f).unlink(missing_ok=True)
            shutil.rmtree(self.out / "tb", ignore_errors=True)
        self.config.save(self.out / "config.yaml")

    def _setup(self) -> dict[str, Any] | None:
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        if self.dist.enabled:
            if cfg.batch_size % self.dist.world_size:
                raise ConfigError(f"batch_size {cfg.batch_size} is the global batch and must be a multiple of "
                                  f"the number of processes ({self.dist.world_size})")
            if self.device.type == "cuda" and self.device.index is None:
                self.device = torch.device("cuda", self.dist.local_rank)
        ckpt = self._check_dir_on_main()
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.train = load_split(cfg, "train", cfg.limit_train, self.device)
        self.val = load_split(cfg, "val", cfg.limit_val, self.device)
        self.model = build_model(cfg, self.train.info).to(self.device)
        if cfg.arch_from:
            load_architecture(self.model, cfg.arch_from)
            self._match_gain(cfg)
        if self.dist.rank > 0:  # same initial model everywhere, but each rank its own dropout stream
            torch.manual_seed(int(_generator(cfg.seed, 104_729, self.dist.rank).initial_seed()))
        arch_all = list(arch_parameters(self.model))
        searched = cfg.method != "fixed" and not cfg.arch_from
        # Parameters frozen by the space (KOp `search=`) stay frozen; `fixed` freezes them all.
        arch = [p for p in arch_all if p.requires_grad] if searched else []
        for p in arch_all:
            if not searched:
                p.requires_grad_(False)
        weights = [p for p in weight_parameters(self.model) if p.requires_grad]
        self.num_weight_params = sum(p.numel() for p in weight_parameters(self.model))
        self.num_arch_params = sum(p.numel() for p in arch_all)
        weight_opt = torch.optim.SGD(weights, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        arch_opt = None
        if arch:
            if cfg.arch_optimizer == "adam":
                arch_opt = torch.optim.Adam(arch, lr=cfg.arch_lr, weight_decay=cfg.arch_weight_decay)
            else:
                arch_opt = torch.optim.SGD(arch, lr=cfg.arch_lr, momentum=cfg.momentum,
                                           weight_decay=cfg.arch_weight_decay)
        # Data-parallel: the DDP wrapper (weights and K-matrices) trains, `self.model` is saved.
        self.train_module, grad_sync = wrap_model(self.model, self.dist, self.device)
        self.method: Method = make_method(cfg.method, self.train_module, weights, arch, weight_opt, arch_opt,
                                          grad_clip=cfg.grad_clip, second_order=cfg.second_order,
                                          grad_sync=grad_sync)
        # Only now that data and model exist: a typo in a name leaves no half-made run behind.
        if self.dist.is_main:
            self._init_dir()
        self.dist.barrier()
        return ckpt

    def _match_gain(self, cfg: SearchConfig) -> None:
        """Retrain: rescale the fresh weights to the found operator's gain if asked, or if some
        K-op amplifies or damps by more than max_init_gain (a retrain would diverge)."""
        # Deterministic (seeded), so every rank computes the same gains and factors.
        gains = conv_gains(self.model, generator=_generator(cfg.seed, 7919))
        limit = cfg.max_init_gain
        extreme = [n for n, g in gains.items() if limit and not 1 / limit <= g <= limit]
        self.init_gains, self.gain_matched = gains, bool(cfg.match_gain or extreme)
        if self.gain_matched:
            match_conv_gain_(self.model, gains=gains)
        if extreme and not cfg.match_gain:
            self._log(f"the architecture from {cfg.arch_from} scales its input by "
                      + ", ".join(f"{gains[n]:.3g}x ({n})" for n in extreme)
                      + f" at init (beyond max_init_gain {limit:g}): fresh weights rescaled to the conv's "
                      "output scale (match_gain)")

    def _check_dir_on_main(self) -> dict[str, Any] | None:
        """`_check_dir` on rank 0; its checkpoint (or its error) is broadcast to every rank."""
        if not self.dist.enabled:
            return self._check_dir()
        ckpt, error = None, None
        if self.dist.is_main:
            try:
                ckpt = self._check_dir()
            except ConfigError as e:
                error = str(e)
        ckpt, error = self.dist.broadcast((ckpt, error))
        if error is not None:
            raise ConfigError(error)
        return ckpt

    def _on_any_rank(self, flag: bool) -> bool:
        """True when `flag` is true on some rank (a single process: `flag`)."""
        return self.dist.sum([float(flag)])[0] > 0 if self.dist.enabled else flag

    def _load_on_main(self) -> dict[str, Any]:
        """The run's checkpoint, read by rank 0 and broadcast (other nodes need not see `out`)."""
        if not self.dist.enabled:
            return load_checkpoint(self.out / CHECKPOINT_NAME)
        return self.dist.broadcast(load_checkpoint(self.out / CHECKPOINT_NAME) if self.dist.is_main else None)

    def _evaluate(self, split: Split) -> tuple[float, float]:
        """(loss, accuracy) on `split`; data-parallel: each rank a block, sums all-reduced."""
        if not self.dist.enabled:
            return evaluate(self.model, split, self.config.eval_batch_size)
        sync_buffers(self.model, self.dist)
        return evaluate_sharded(self.model, split.inputs, split.targets, self.dist, self.config.eval_batch_size)

    # -- data order --------------------------------------------------------------------------
    def _train_batches(self, epoch: int) -> list[torch.Tensor]:
        perm = torch.randperm(len(self.train), generator=_generator(self.config.seed, epoch))
        # This rank's slice of every global batch (a single process: all of it; a last batch of
        # one is dropped: it breaks BatchNorm).
        return shard_batches(list(perm.split(self.config.batch_size)), self.dist.rank, self.dist.world_size)

    def _val_stream(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Validation batches for the bilevel architecture steps: the k-th is a function of (epoch, k)."""
        bs, n = self.config.batch_size, len(self.val)
        per_cycle = max(1, math.ceil(n / bs))
        k = start
        while True:
            cycle, j = divmod(k, per_cycle)
            perm = torch.randperm(n, generator=_generator(self.config.seed, epoch, 7, cycle))
            idx = shard_indices(perm[j * bs:(j + 1) * bs], self.dist.rank, self.dist.world_size).to(self.device)
            k += 1
            yield self.val.inputs[idx], self.val.targets[idx]

    # -- schedule ------------------------------------------------------------------------------
    def _apply_schedule(self, epoch: int) -> float:
        cfg = self.config
        factor = lr_factor(epoch / cfg.epochs, cfg.lr_milestones, cfg.lr_gammas)
        for g in self.method.weight_opt.param_groups:
            g["lr"] = cfg.lr * factor * self.lr_scale
        if self.method.arch_opt is not None:
            for g in self.method.arch_opt.param_groups:
                g["lr"] = cfg.arch_lr * factor * self.lr_scale
        self.method.set_arch_active(epoch >= cfg.warmup_epochs)
        return factor

    # -- checkpointing -------------------------------------------------------------------------
    def _checkpoint(self, epoch: int, batch: int, running: dict[str, float], epoch_seconds: float) -> None:
        m = self.method
        if self.dist.enabled:  # the global partial sums, rank 0's buffers, and every rank's RNG state
            running = dict(zip(running, self.dist.sum(list(running.values()))))
            sync_buffers(self.model, self.dist)
            rng_ranks = self.dist.gather(rng_state())
        state = {
            "format": 1,
            "config": self.config.to_dict(),
            "epoch": epoch,  # the epoch to continue (== epochs done when batch == 0)
            "batch": batch,  # the next batch of that epoch
            "step": self.step,
            "model": self.model.state_dict(),
            "weight_opt": m.weight_opt.state_dict(),
            "arch_opt": m.arch_opt.state_dict() if m.arch_opt is not None else {},
            "schedule": {"progress": epoch / self.config.epochs,
                         "factor": lr_factor(epoch / self.config.epochs, self.config.lr_milestones,
                                             self.config.lr_gammas)},
            "rng": rng_state(),
            "running": dict(running),
            "epoch_seconds": epoch_seconds,
            "wall_seconds": self.wall_before + (time.perf_counter() - self.t0),
            "lr_scale": self.lr_scale,
        }
        if self.dist.enabled:
            state["world_size"], state["rng_ranks"] = self.dist.world_size, rng_ranks
        if self.dist.is_main:
            save_atomic(state, self.out / CHECKPOINT_NAME)
        self.dist.barrier()

    def _restore(self, ckpt: dict[str, Any]) -> tuple[int, int, dict[str, float], float]:
        self.model.load_state_dict(ckpt["model"])
        self.method.weight_opt.load_state_dict(ckpt["weight_opt"])
        if self.method.arch_opt is not None and ckpt["arch_opt"]:
            self.method.arch_opt.load_state_dict(ckpt["arch_opt"])
        self._restore_rng(ckpt)
        self.step = ckpt["step"]
        self.wall_before = ckpt["wall_seconds"]
        self.lr_scale = float(ckpt.get("lr_scale", 1.0))
        # Drop metric lines written after this checkpoint (a crash between the two writes).
        metrics = self.out / "metrics.jsonl"
        if self.dist.is_main and metrics.exists():
            lines = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
            keep = [ln for ln in lines if json.loads(ln)["epoch"] <= ckpt["epoch"]]
            metrics.write_text("".join(ln + "\n" for ln in keep))
        # Data-parallel: the saved sums are global; rank 0 carries them, the others restart at 0.
        running = {k: v if self.dist.is_main else 0.0 for k, v in ckpt["running"].items()}
        return ckpt["epoch"], ckpt["batch"], running, ckpt["epoch_seconds"]

    def _restore_rng(self, ckpt: dict[str, Any]) -> None:
        """Each rank's saved RNG state; with another number of processes than saved, rank 0's state
        (and a fresh, rank-dependent seed for the others)."""
        ranks = ckpt.get("rng_ranks")
        if ranks is not None and len(ranks) == self.dist.world_size:
            set_rng_state(ranks[self.dist.rank])
            return
        set_rng_state(ckpt["rng"])
        if self.dist.rank > 0:
            torch.manual_seed(int(_generator(self.config.seed, 104_729, self.dist.rank, ckpt["step"]).initial_seed()))

    # -- logging -------------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        if not self.dist.is_main:
            return
        if self.config.quiet:
            print(msg, flush=True)
        else:
            tqdm.write(msg)

    def _writer(self, purge_step: int | None):
        if not self.config.tensorboard or not self.dist.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

        return SummaryWriter(str(self.out / "tb"), purge_step=purge_step)

    # -- main loop -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train (or resume) to `config.epochs`, then evaluate on test and write results.json.

        Under torchrun (`WORLD_SIZE` > 1) every process calls this: it joins the process group (or
        uses one that is already initialised) and trains its shard; rank 0 writes the files.
        """
        with distributed_session(self.config.dist_backend, self.config.device) as ctx:
            self.dist = ctx
            try:
                return self._run()
            finally:
                self.dist = DistContext()

    def _run(self) -> dict[str, Any]:
        cfg = self.config
        ckpt = self._setup()
        self.t0 = time.perf_counter()
        self.step, self.wall_before = 0, 0.0
        self.lr_scale, self.rollbacks = 1.0, 0
        start_epoch, start_batch, running, epoch_seconds = 0, 0, {}, 0.0
        if ckpt is not None:
            start_epoch, start_batch, running, epoch_seconds = self._restore(ckpt)
            self._log(f"resuming {self.out} at epoch {start_epoch + 1}, batch {start_batch}")
        elif cfg.on_nonfinite == "rollback":  # something to roll back to before the first epoch ends
            self._checkpoint(0, 0, {"loss": 0.0, "correct": 0.0, "count": 0.0}, 0.0)
        writer = self._writer(purge_step=start_epoch + 1 if ckpt is not None else None)
        self.model.train()
        try:
            epochs = tqdm(range(start_epoch, cfg.epochs), desc=f"{cfg.method}/{cfg.op}", unit="epoch",
                          initial=start_epoch, total=cfg.epochs, disable=cfg.quiet or not self.dist.is_main,
                          dynamic_ncols=True)
            for epoch in epochs:
                b0 = start_batch if epoch == start_epoch else 0
                if b0 == 0:
                    running, epoch_seconds = {"loss": 0.0, "correct": 0.0, "count": 0.0}, 0.0
                record = self._train_epoch_guarded(epoch, b0, running, epoch_seconds)
                self._log_epoch(record, writer)
                self._checkpoint(epoch + 1, 0, {"loss": 0.0, "correct": 0.0, "count": 0.0}, 0.0)
        finally:
            if writer is not None:
                writer.close()
        return self._finish()

    # -- non-finite loss or parameters --------------------------------------------------------
    def _check_parameters(self, epoch: int, batch: int) -> None:
        for name, p in self.model.named_parameters():
            if not torch.isfinite(p).all():
                self._nonfinite(f"parameter {name}", epoch, batch)

    def _nonfinite(self, what: str, epoch: int, batch: int) -> None:
        path = self.out / CHECKPOINT_NAME
        kept = (f"the last good checkpoint {path} (step {load_checkpoint(path)['step']}) is kept"
                if path.exists() else "no checkpoint had been written yet")
        raise NonFiniteError(f"non-finite {what} at step {self.step} (epoch {epoch + 1}, batch {batch + 1}); "
                             f"stopped: {kept}; lower the learning rate, set grad_clip, or set "
                             "on_nonfinite: rollback")

    def _train_epoch_guarded(self, epoch: int, b0: int, running: dict[str, float], epoch_seconds: float) -> dict:
        """`_train_epoch`; with on_nonfinite "rollback", a NaN/inf reloads the last good checkpoint
        (always one of this epoch: one is written at the start and at every epoch end) and
        retries with both learning rates multiplied by rollback_lr_factor."""
        while True:
            try:
                return self._train_epoch(epoch, b0, running, epoch_seconds)
            except NonFiniteError as e:
                if self.config.on_nonfinite != "rollback" or self.rollbacks >= MAX_ROLLBACKS:
                    raise
                self.rollbacks += 1
                scale = self.lr_scale * self.config.rollback_lr_factor
                e0, b0, running, epoch_seconds = self._restore(self._load_on_main())
                if e0 != epoch:
                    raise
                self.lr_scale = scale
                self._log(f"{str(e).split('; stopped')[0]}: rolled back to step {self.step}, "
                          f"learning rates x{self.lr_scale:g}")

    def _train_epoch(self, epoch: int, b0: int, running: dict[str, float], epoch_seconds: float) -> dict:
        cfg = self.config
        t_start = time.perf_counter() - epoch_seconds
        factor = self._apply_schedule(epoch)
        batches = self._train_batches(epoch)
        val_stream = self._val_stream(epoch, start=b0) if self.method.uses_val else None

        def next_val() -> tuple[torch.Tensor, torch.Tensor]:
            return next(val_stream)

        bar = tqdm(total=len(batches), initial=b0, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   leave=False, disable=cfg.quiet or not self.dist.is_main, dynamic_ncols=True)
        for b in range(b0, len(batches)):
            idx = batches[b].to(self.device)
            x, y = self.train.inputs[idx], self.train.targets[idx]
            loss, logits = self.method.step((x, y), next_val)
            self.step += 1
            if self._on_any_rank(not math.isfinite(loss.item())):  # data-parallel: every rank stops
                self._nonfinite(f"training loss {loss.item()}", epoch, b)
            running["loss"] += loss.item() * len(y)
            running["correct"] += (logits.argmax(1) == y).sum().item()
            running["count"] += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{running['loss'] / running['count']:.3f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and b + 1 < len(batches):
                self._check_parameters(epoch, b)  # never save a non-finite state
                self._checkpoint(epoch, b + 1, running, time.perf_counter() - t_start)
        bar.close()
        self._check_parameters(epoch, len(batches) - 1)
        val_loss, val_acc = self._evaluate(self.val)
        if self.dist.enabled:  # metrics over the global data: sums and counts of every rank
            running = dict(zip(running, self.dist.sum(list(running.values()))))
        if not math.isfinite(val_loss):
            self._nonfinite(f"validation loss {val_loss}", epoch, len(batches) - 1)
        arch_opt = self.method.arch_opt
        return {
            "epoch": epoch + 1,
            "step": self.step,
            "train_loss": running["loss"] / max(running["count"], 1),
            "train_acc": running["correct"] / max(running["count"], 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": cfg.lr * factor * self.lr_scale,
            "arch_lr": cfg.arch_lr * factor * self.lr_scale if arch_opt is not None else None,
            "arch_active": self.method.arch_active,
            "seconds": time.perf_counter() - t_start,
            "conv_distance": {name: op.conv_distance() for name, op in kops(self.model)},
        }

    def _log_epoch(self, record: dict, writer) -> None:
        if not self.dist.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        e = record["epoch"]
        dist = record["conv_distance"]
        mean_dist = f" conv_dist {sum(dist.values()) / len(dist):.3f}" if dist else ""
        self._log(f"[{self.out.name}] epoch {e}/{self.config.epochs} train_loss {record['train_loss']:.4f} "
                  f"train_acc {record['train_acc']:.4f} val_loss {record['val_loss']:.4f} "
                  f"val_acc {record['val_acc']:.4f}{mean_dist} ({record['seconds']:.1f}s)")
        if writer is not None:
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "arch_lr"):
                if record[key] is not None:
                    writer.add_scalar(key.replace("_", "/", 1) if "_" in key else key, record[key], e)
            for name, d in dist.items():
                writer.add_scalar(f"conv_distance/{name}", d, e)
            writer.flush()

    def _finish(self) -> dict[str, Any]:
        """Evaluate the searched model as is on the test split (first read of it) and write results."""
        cfg = self.config
        metrics = (self.out / "metrics.jsonl").read_text() if self.dist.is_main else ""
        lines = [json.loads(ln) for ln in metrics.splitlines() if ln.strip()]
        test = load_split(cfg, "test", None, self.device)
        test_loss, test_acc = self._evaluate(test)
        last = lines[-1] if lines else {}
        import chrysalis

        info = self.train.info
        results = {
            "schema": RESULTS_SCHEMA,
            "config": cfg.to_dict(),
            "data": info.to_dict() if hasattr(info, "to_dict") else dict(vars(info)),
            "method": cfg.method,
            "op": cfg.op,
            "init": cfg.init,
            "seed": cfg.seed,
            "epochs": cfg.epochs,
            "final": {"train_acc": last.get("train_acc"), "train_loss": last.get("train_loss"),
                      "val_acc": last.get("val_acc"), "val_loss": last.get("val_loss"),
                      "test_acc": test_acc, "test_loss": test_loss},
            "best_val_acc": max((ln["val_acc"] for ln in lines), default=None),
            "conv_distance": last.get("conv_distance", {}),
            "wall_seconds": self.wall_before + (time.perf_counter() - self.t0),
            "num_weight_params": self.num_weight_params,
            "num_arch_params": self.num_arch_params,
            "versions": {"chrysalis": chrysalis.__version__, "torch": torch.__version__,
                         "python": platform.python_version()},
        }
        if cfg.arch_from:
            results["retrain_of"] = cfg.arch_from
            results["init_gains"] = self.init_gains  # the found operator's gain on fresh weights
            results["gain_matched"] = self.gain_matched
        if self.dist.is_main:
            (self.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        self._log(f"[{self.out.name}] test_acc {test_acc:.4f} test_loss {test_loss:.4f} -> {self.out}")
        return self.dist.broadcast(results)  # rank 0's (the only one with metrics.jsonl) everywhere


def run_search(config: SearchConfig, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) one search/training run; returns the contents of its results.json."""
    return SearchRun(config, resume=resume, overwrite=overwrite).run()
