"""Search methods: how one training step updates the weights and the architecture.

- `fixed`: weights only (the backbone as is, or a frozen K-op architecture).
- `joint`: single-level "supernet SGD": one training loss, both parameter sets step on it.
- `bilevel`: DARTS-style alternation: the architecture steps on a *validation* batch, then the
  weights step on a training batch. First order by default; `second_order=True` uses the unrolled
  one-step lookahead with the finite-difference Hessian-vector product of DARTS (Liu et al. 2019).

A method never sees the test split: the engine hands it training batches and a `next_val()`
callable that yields validation batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


def lr_factor(
    progress: float, milestones: Sequence[float] = (0.5, 0.75), gammas: Sequence[float] = (0.5, 0.1)
) -> float:
    """The learning-rate multiplier at `progress` in [0, 1] of the run (a MultiStepLR as a function).

    Each gamma multiplies the rate once progress reaches its milestone, so the defaults give
    1, then 0.5 from half-way, then 0.05 from three quarters. A pure function of progress lets the
    weight and architecture optimizers follow one schedule and makes resuming trivial.
    """
    factor = 1.0
    for m, g in zip(milestones, gammas):
        if progress >= m - 1e-12:
            factor *= g
    return factor


class GradSync:
    """How a pass's gradients are combined across data-parallel processes; this one: a single process.

    Methods wrap each forward/backward pass in `backward_pass(params)` (the parameters the pass
    updates); gradients computed with `torch.autograd.grad` go through `no_sync()` and `average`.
    `chrysalis.search.distributed.DDPGradSync` is the multi-process version.
    """

    world_size = 1

    def backward_pass(self, params: Sequence[nn.Parameter]) -> AbstractContextManager:
        """Context for a forward+backward whose gradients of `params` must end up averaged over ranks."""
        return nullcontext()

    def no_sync(self) -> AbstractContextManager:
        """Context for a forward pass whose gradients are taken (and averaged) by hand."""
        return nullcontext()

    def average(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average `tensors` over ranks, in place."""


class Method:
    """Base class: one optimisation step of a search method on a training batch.

    Args:
        model: the network.
        weights: the trainable weight parameters.
        arch: the trainable architecture parameters (empty when the architecture is fixed).
        weight_opt: optimizer over `weights`.
        arch_opt: optimizer over `arch` (None when there is nothing to search).
        grad_clip: max gradient norm, applied to the weights and to the architecture separately
            (they have their own optimizers and very different scales); 0 = off.
        second_order: bilevel only: DARTS' unrolled architecture gradient.
        grad_sync: how gradients are averaged over data-parallel processes (default: one process).
    """

    name = "base"
    uses_val = False

    def __init__(
        self,
        model: nn.Module,
        weights: list[nn.Parameter],
        arch: list[nn.Parameter],
        weight_opt: torch.optim.Optimizer,
        arch_opt: torch.optim.Optimizer | None,
        *,
        grad_clip: float = 0.0,
        second_order: bool = False,
        grad_sync: GradSync | None = None,
    ) -> None:
        self.model, self.weights, self.arch = model, weights, arch
        self.sync = grad_sync if grad_sync is not None else GradSync()
        self.weight_opt, self.arch_opt = weight_opt, arch_opt
        self.grad_clip, self.second_order = grad_clip, second_order
        self.arch_active = arch_opt is not None and bool(arch)

    def set_arch_active(self, active: bool) -> None:
        """Freeze (warm-up epochs) or unfreeze the architecture; frozen params get no gradient."""
        self.arch_active = active and self.arch_opt is not None and bool(self.arch)
        for p in self.arch:
            p.requires_grad_(self.arch_active)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self.model(x)
        return F.cross_entropy(logits, y), logits

    def _clip(self, params: list[nn.Parameter]) -> None:
        if self.grad_clip > 0:
            grads = [p for p in params if p.grad is not None]
            if grads:
                torch.nn.utils.clip_grad_norm_(grads, self.grad_clip)

    def weight_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """A weight step on a training batch; returns (loss, logits), detached."""
        self.weight_opt.zero_grad(set_to_none=True)
        with self.sync.backward_pass(self.weights):
            loss, logits = self.loss(batch)
            loss.backward()
        self._clip(self.weights)
        self.weight_opt.step()
        return loss.detach(), logits.detach()

    def step(self, batch: Batch, next_val: Callable[[], Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step on `batch`; returns (training loss, logits) for the running metrics."""
        raise NotImplementedError


class Fixed(Method):
    """Weights only; the architecture (if any) stays as it is."""

    name = "fixed"

    def set_arch_active(self, active: bool) -> None:
        super().set_arch_active(False)

    def step(self, batch: Batch, next_val: Callable[[], Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight_step(batch)


class Joint(Method):
    """Single-level supernet SGD: weights and architecture both step on the training loss."""

    name = "joint"

    def step(self, batch: Batch, next_val: Callable[[], Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.arch_active:
            return self.weight_step(batch)
        self.weight_opt.zero_grad(set_to_none=True)
        self.arch_opt.zero_grad(set_to_none=True)
        with self.sync.backward_pass(self.weights + self.arch):
            loss, logits = self.loss(batch)
            loss.backward()
        self._clip(self.weights)
        self._clip(self.arch)
        self.weight_opt.step()
        self.arch_opt.step()
        return loss.detach(), logits.detach()


class Bilevel(Method):
    """DARTS-style: architecture step on a validation batch, then weight step on a training batch."""

    name = "bilevel"
    uses_val = True

    def step(self, batch: Batch, next_val: Callable[[], Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.arch_active:
            self.arch_step(next_val(), batch)
        # Only the weights need gradients in the weight step: freezing the architecture skips
        # its (costly) backward through the K-matrices.
        for p in self.arch:
            p.requires_grad_(False)
        try:
            return self.weight_step(batch)
        finally:
            for p in self.arch:
                p.requires_grad_(self.arch_active)

    def arch_step(self, val_batch: Batch, train_batch: Batch) -> None:
        """Update the architecture on `val_batch` (`train_batch` only feeds the second-order term)."""
        self.arch_opt.zero_grad(set_to_none=True)
        if self.second_order:
            grads = self._unrolled_arch_grads(val_batch, train_batch)
            for p, g in zip(self.arch, grads):
                p.grad = g
        else:
            for p in self.weights:  # first order: d L_val / d arch at the current weights
                p.requires_grad_(False)
            try:
                with self.sync.backward_pass(self.arch):
                    loss, _ = self.loss(val_batch)
                    loss.backward()
            finally:
                for p in self.weights:
                    p.requires_grad_(True)
        self._clip(self.arch)
        self.arch_opt.step()

    def _unrolled_arch_grads(self, val_batch: Batch, train_batch: Batch) -> list[torch.Tensor]:
        """DARTS second order: grad_a L_val(w', a) - xi * Hessian-vector term, w' = w - xi grad_w L_train.

        The Hessian-vector product grad_a (grad_w L_train . dw') is estimated by central finite
        differences at w +- eps dw', with eps = 0.01 / ||dw'|| as in DARTS.
        """
        group = self.weight_opt.param_groups[0]
        xi, wd = group["lr"], group.get("weight_decay", 0.0)
        backup = [w.detach().clone() for w in self.weights]

        def grads(batch: Batch, wrt: list[nn.Parameter]) -> list[torch.Tensor]:
            with self.sync.no_sync():
                loss, _ = self.loss(batch)
                gs = torch.autograd.grad(loss, wrt, allow_unused=True)
            out = [torch.zeros_like(p) if g is None else g for p, g in zip(wrt, gs)]
            self.sync.average(out)  # every rank takes the same virtual step and finite difference
            return out

        try:
            g_train = grads(train_batch, self.weights)
            with torch.no_grad():  # the virtual step w' (plain SGD with weight decay)
                for w, g in zip(self.weights, g_train):
                    w.sub_(xi * (g + wd * w))
            g_val = grads(val_batch, self.arch + self.weights)
            g_arch, dw = g_val[: len(self.arch)], g_val[len(self.arch):]
            eps = 0.01 / torch.sqrt(sum((d * d).sum() for d in dw)).clamp_min(1e-12)
            fd = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for w, b, d in zip(self.weights, backup, dw):
                        w.copy_(b + sign * eps * d)
                fd.append(grads(train_batch, self.arch))
            return [ga - xi * (gp - gm) / (2 * eps) for ga, gp, gm in zip(g_arch, *fd)]
        finally:
            with torch.no_grad():
                for w, b in zip(self.weights, backup):
                    w.copy_(b)


METHOD_CLASSES: dict[str, type[Method]] = {m.name: m for m in (Fixed, Joint, Bilevel)}


def make_method(name: str, *args, **kwargs) -> Method:
    """Instantiate the method `name` (fixed, joint, bilevel)."""
    if name not in METHOD_CLASSES:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_CLASSES)}")
    return METHOD_CLASSES[name](*args, **kwargs)
