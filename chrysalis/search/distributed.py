"""Data-parallel search: one run trained by several processes (`torchrun ... -m chrysalis search`).

torchrun starts one process per rank and sets `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR`
and `MASTER_PORT`; `distributed_session` reads them, initialises the default process group
(`gloo` on CPU, `nccl` on CUDA unless the config's `dist_backend` says otherwise) and destroys
it at the end. Without those variables (or with `WORLD_SIZE=1`) nothing changes: a single process.

How one search is split (documented in docs/SCALING.md, "One search, data-parallel"):

- The model, with its K-matrices as submodules, is wrapped in `DistributedDataParallel`, which
  broadcasts rank 0's parameters and buffers at the start; every rank builds it from the same seed.
- `batch_size` is the *global* batch: every global batch of the (seed, epoch) permutation that a
  single process would use is cut into `world_size` equal, disjoint slices, one per rank
  (`shard_batches`); so a run has the same number of steps and the same learning-rate recipe
  whatever the number of processes.
- A pass that updates every parameter DDP knows (joint, fixed) lets DDP all-reduce the gradients
  during the backward. A pass that updates only a part of them (bilevel's architecture step and
  weight step, the weights-only steps of a warm-up) runs under `no_sync()` and all-reduces the
  gradients of the parameters it steps by hand (`DDPGradSync`): DDP's reducer would otherwise
  wait for gradients that never come.
- Metrics are sums and counts all-reduced over ranks; evaluation is sharded the same way. Only
  rank 0 writes files; the checkpoint holds the RNG state of every rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import DIST_BACKENDS as BACKENDS
from .config import ConfigError
from .methods import GradSync


# --------------------------------------------------------------------------- the process group
@dataclass
class DistContext:
    """Where this process stands in the run: rank, world size, and the collectives the engine uses.

    The default (`DistContext()`) is a single process: every collective is the identity.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when more than one process trains this run."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs and writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op for a single process)."""
        if self.enabled:
            dist.barrier()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of `values` over ranks (float64, so counts stay exact)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (pickled; for small things such as a checkpoint)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """`[obj of rank 0, obj of rank 1, ...]` on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def _device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment variables ((0, 1, 0) without them)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ConfigError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers ({e})") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local_rank


def choose_backend(requested: str, device_type: str) -> str:
    """`auto` -> nccl for CUDA devices, gloo otherwise; an explicit choice is checked."""
    if requested not in BACKENDS:
        raise ConfigError(f"dist_backend must be one of {', '.join(BACKENDS)}; got {requested!r}")
    if requested == "auto":
        return "nccl" if device_type == "cuda" else "gloo"
    if requested == "nccl" and device_type != "cuda":
        raise ConfigError("dist_backend 'nccl' needs device cuda; use gloo on CPU")
    return requested


def current_context() -> DistContext:
    """The context of an already initialised default process group (a single process otherwise)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    _, _, local_rank = env_world()
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())


@contextmanager
def distributed_session(backend: str = "auto", device: str = "cpu",
                        timeout_minutes: float = 30.0) -> Iterator[DistContext]:
    """Join the process group that torchrun's environment describes, for the duration of the block.

    An already initialised group (a caller's, or an outer session's) is used as is and left open;
    a group this call creates is destroyed on exit. Without torchrun (`WORLD_SIZE` unset or 1)
    this yields a single-process context and does nothing else.

    Args:
        backend: auto | gloo | nccl (auto: nccl when `device` is CUDA, gloo otherwise).
        device: the config's device (cpu | cuda | cuda:N | auto); decides `auto` and, for CUDA,
            makes `cuda:LOCAL_RANK` this process's device.
        timeout_minutes: how long a collective waits for the other ranks before failing.
    """
    if dist.is_available() and dist.is_initialized():
        yield current_context()
        return
    rank, world, local_rank = env_world()
    if world == 1:
        yield DistContext()
        return
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    device_type = "cuda" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "cpu"
    name = choose_backend(backend, device_type)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(name, init_method="env://", rank=rank, world_size=world,
                            timeout=timedelta(minutes=timeout_minutes))
    finished = False
    try:
        yield DistContext(rank, world, local_rank, name)
        finished = True
    finally:
        if finished:
            # Leave together: a rank that tears its gloo pairs down while another rank's are still
            # open can abort that rank at exit ("terminate called without an active exception").
            # Not after an error: the other ranks may never arrive, and the timeout would hide it.
            dist.barrier()
        dist.destroy_process_group()


# --------------------------------------------------------------------------- sharding
def shard_batches(batches: Sequence[torch.Tensor], rank: int, world_size: int) -> list[torch.Tensor]:
    """This rank's slice of each global batch; every rank gets the same number of equal-sized slices.

    `batches` are the global batches of an epoch (index tensors, in order, as a single process
    would use them: all of `batch_size` but the last). Rank r takes the r-th of `world_size`
    contiguous, equal slices of each. The last batch is cut to a multiple of `world_size` (its
    remainder, fewer than `world_size` examples, is dropped) and dropped entirely when that leaves
    a slice of one example while other batches exist — a batch of one breaks BatchNorm, the rule
    a single process applies too. With `world_size == 1` this is exactly the single-process order.
    Slices of different ranks are disjoint, and together they cover every kept example.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    out = []
    for i, batch in enumerate(batches):
        per_rank = len(batch) // world_size
        last = i == len(batches) - 1
        if per_rank == 0 or (last and per_rank == 1 and len(batches) > 1):
            if not last:
                raise ValueError(f"batch size {len(batch)} is smaller than the world size {world_size}")
            continue
        out.append(batch[rank * per_rank:(rank + 1) * per_rank])
    return out


def shard_indices(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's slice of one global (validation) batch, padded so that every rank gets as many.

    Used for bilevel's validation stream, whose k-th batch must exist on every rank: a batch whose
    size is not a multiple of `world_size` is padded by repeating its first examples.
    """
    n = len(batch)
    if n % world_size:
        need = world_size - n % world_size
        batch = torch.cat([batch, batch.repeat(-(-need // n))[:need]])
    per_rank = len(batch) // world_size
    return batch[rank * per_rank:(rank + 1) * per_rank]


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous block of `n` items (sizes differ by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@torch.no_grad()
def evaluate_sharded(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, ctx: DistContext,
                     batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the whole split, each rank evaluating its own block.

    `model` is the plain module (not the DDP wrapper: evaluation needs no collective but the final
    all-reduce of the sums, and ranks may hold blocks of different sizes).
    """
    start, stop = shard_range(len(targets), ctx.rank, ctx.world_size)
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(start, stop, batch_size):
        x, y = inputs[i:min(i + batch_size, stop)], targets[i:min(i + batch_size, stop)]
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    loss_sum, correct, count = ctx.sum([loss_sum, correct, stop - start])
    return loss_sum / count, correct / count


# --------------------------------------------------------------------------- the model
def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> tuple[nn.Module, GradSync]:
    """The module to train with and how its gradients are averaged over ranks.

    A single process gets `model` itself and a no-op `GradSync`. Otherwise the model (weights and
    K-matrices alike: they are its submodules) is wrapped in `DistributedDataParallel`, which
    broadcasts rank 0's parameters and buffers; only parameters that require a gradient now are
    registered with DDP (an architecture frozen for good is left out, which is fine).
    """
    if not ctx.enabled:
        return model, GradSync()
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("nothing to train: every parameter is frozen")
    device_ids = [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)  # syncs buffers by default
    return ddp, DDPGradSync(ddp, ctx)


class DDPGradSync(GradSync):
    """Gradient averaging for a DDP-wrapped model.

    `backward_pass(params)`: when `params` are exactly the parameters DDP registered, DDP's own
    all-reduce (overlapped with the backward) does the work; otherwise the pass runs under
    `no_sync()` and the gradients of `params` are averaged by hand afterwards, in one flat
    all-reduce per dtype.
    """

    def __init__(self, ddp: nn.parallel.DistributedDataParallel, ctx: DistContext) -> None:
        self.ddp, self.ctx = ddp, ctx
        self.world_size = ctx.world_size
        self.registered = {id(p) for p in ddp.module.parameters() if p.requires_grad}

    def backward_pass(self, params: Sequence[nn.Parameter]) -> AbstractContextManager:
        live = {id(p) for p in params if p.requires_grad}
        if live == self.registered:
            return nullcontext()
        return self._manual(params)

    @contextmanager
    def _manual(self, params: Sequence[nn.Parameter]) -> Iterator[None]:
        with self.ddp.no_sync():
            yield
        grads = [p.grad for p in params if p.grad is not None]
        self.average(grads)

    def no_sync(self) -> AbstractContextManager:
        return self.ddp.no_sync()

    def average(self, tensors: Sequence[torch.Tensor]) -> None:
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        for ts in groups.values():
            flat = torch.cat([t.reshape(-1) for t in ts])
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for t in ts:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()


def sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift apart on different shards)."""
    if ctx.enabled:
        for b in model.buffers():
            dist.broadcast(b, src=0)
