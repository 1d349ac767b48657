"""Local training of many participants at once: one vmapped step trains all of them.

:func:`train_many` gives, to float tolerance, what :func:`latentfl.training.train` gives for each
participant alone (same data order, same augmentation draws, same optimizer maths), but each step
is one ``torch.func.vmap`` graph over the participants' stacked flat parameter vectors ``(P, D)``,
so a GPU runs P small trainings as one batched one. Inside the step loop nothing waits for the
device: batches are gathered on the device from an index schedule built before the loop, losses
are summed on the device, and finiteness is checked once at the end.

A participant whose data is used up (fewer examples, so fewer steps) is masked: ``torch.where``
keeps its parameters and optimizer state. Because every participant steps from step 1 until it
runs out, its own step count equals the global one while it is active, so Adam's bias correction
is a plain number shared by all active participants.

Only participants sharing an architecture whose forward is a pure function of its parameters
(no buffers, e.g. no BatchNorm statistics; no dropout) and settings equal up to the seed can be
trained together, and never under DP-SGD: :func:`can_batch` says why not, so callers can fall back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap
from torch.utils.data import DataLoader

from latentfl.errors import ConfigError, ModelError
from latentfl.models import flatten_named, functional_forward, param_shapes, unflatten_params
from latentfl.seeding import derive_seed
from latentfl.training import TrainConfig, TrainResult, Wrap, augment_batch, check_data

#: torch.optim.Adam's defaults, which :func:`latentfl.training.train` uses.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def can_batch(model: nn.Module, configs: Sequence[TrainConfig], *, wrap: Wrap | None = None
              ) -> str | None:
    """``None`` if :func:`train_many` can train these participants together, else the reason."""
    if wrap is not None:
        return "a wrapped optimizer (DP-SGD) trains one participant at a time"
    if not configs:
        return "there are no participants"
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        return f"the model has buffers that training may change ({', '.join(buffers[:3])})"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return "the model uses dropout, whose masks come from the global random generator"
    if not all(p.requires_grad for p in model.parameters()):
        return "the model has frozen parameters"
    settings = {replace(c, seed=0) for c in configs}
    if len(settings) > 1:
        return f"the training settings differ in more than the seed ({len(settings)} variants)"
    return None


def train_many(
    model: nn.Module,
    starts: Sequence[Mapping[str, torch.Tensor]],
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
    configs: Sequence[TrainConfig],
    *,
    device: str | torch.device = "cpu",
    names: Sequence[str] | None = None,
) -> list[tuple[dict[str, torch.Tensor], TrainResult]]:
    """Train P participants of architecture ``model`` together: participant i starts from the
    parameters ``starts[i]`` and trains on ``data[i] = (x, y)`` with ``configs[i]``.

    Returns each participant's final parameters (CPU tensors by name) and its TrainResult, as
    :func:`latentfl.training.train` would. ``model`` only lends its structure; it is not changed.
    Raises ConfigError if :func:`can_batch` refuses, ModelError naming the first participant
    whose loss became non-finite (by ``names[i]``, default its index).
    """
    if not len(starts) == len(data) == len(configs):
        raise ConfigError(f"got {len(starts)} starting weights, {len(data)} datasets and "
                          f"{len(configs)} configs; expected one of each per participant.")
    reason = can_batch(model, configs)
    if reason is not None:
        raise ConfigError(f"these participants cannot be trained together: {reason}; "
                          "train them one at a time with latentfl.training.train.")
    for x, y in data:
        check_data(x, y)
    device = torch.device(device)
    config = configs[0]
    shapes = param_shapes(model)
    count = len(configs)

    # Batches, built before the loop: step t of participant p uses rows index[t, p, :rows[t, p]]
    # of the concatenated data; the rest of the row is padding with weight 0.
    schedules = [_batch_order(len(y), c) for (_, y), c in zip(data, configs, strict=True)]
    steps = [len(s) for s in schedules]
    total_steps = max(steps)
    padded = max(len(b) for s in schedules for b in s)  # B: the longest batch
    index = torch.zeros(total_steps, count, padded, dtype=torch.int64)
    rows = torch.zeros(total_steps, count, dtype=torch.int64)
    offset = 0
    for p, ((x, _), schedule) in enumerate(zip(data, schedules, strict=True)):
        for t, batch in enumerate(schedule):
            index[t, p, :len(batch)] = batch + offset
            rows[t, p] = len(batch)
        offset += len(x)
    everyone_active = (rows > 0).all(dim=1).tolist()
    x_all = torch.cat([x for x, _ in data]).to(device)  # (sum N, C, H, W)
    y_all = torch.cat([y for _, y in data]).to(device)
    index, rows = index.to(device), rows.to(device)
    weight = (torch.arange(padded, device=device) < rows[..., None]).to(x_all.dtype)  # (S, P, B)
    active = (rows > 0)[..., None]  # (S, P, 1)
    augment_rngs = [torch.Generator().manual_seed(derive_seed(c.seed, "augment")) for c in configs]

    def batch_loss(flat: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor):
        # One participant: flat (D,), xb (B, C, H, W); mean cross-entropy over its real rows.
        losses = F.cross_entropy(functional_forward(model, flat, xb), yb, reduction="none")
        mean = torch.where(wb > 0, losses, 0.0).sum() / wb.sum().clamp_min(1.0)
        return mean, mean.detach()

    step_all = vmap(grad(batch_loss, has_aux=True))
    flat = torch.stack([flatten_named(dict(s), shapes) for s in starts]).to(device)  # (P, D)
    start = flat.clone()
    state = _initial_state(config, flat)
    loss_sum = torch.zeros(count, dtype=torch.float64, device=device)
    first_bad = torch.full((count,), -1, dtype=torch.int64, device=device)
    was_training = model.training
    model.train()
    try:
        for t in range(total_steps):
            xb = x_all[index[t]]  # (P, B, C, H, W)
            if config.augment:
                xb = _augmented(xb, schedules, t, augment_rngs)
            grads, loss = step_all(flat, xb, y_all[index[t]], weight[t])  # (P, D), (P,)
            if config.prox_mu > 0:  # FedProx: the gradient of mu/2 ||w - w_start||^2
                grads = grads + (flat - start) * config.prox_mu
            new_flat, new_state = _optimizer_step(config, flat, grads, state, t + 1)
            if everyone_active[t]:
                flat, state = new_flat, new_state
            else:
                flat = torch.where(active[t], new_flat, flat)
                state = tuple(torch.where(active[t], n, o)
                              for n, o in zip(new_state, state, strict=True))
            loss_sum += torch.where(active[t, :, 0], loss.double() * rows[t], 0.0)
            bad = active[t, :, 0] & ~torch.isfinite(loss) & (first_bad < 0)
            first_bad = torch.where(bad, t + 1, first_bad)
    finally:
        model.train(was_training)

    first_bad_cpu = first_bad.tolist()  # the one wait for the device
    for p, step in enumerate(first_bad_cpu):
        if step >= 0:
            name = p if names is None else names[p]
            raise ModelError(f"training loss of participant {name} is not finite at its step "
                             f"{step}; expected a finite value (lower the learning rate or check "
                             f"the data).")
    flat_cpu, loss_cpu = flat.cpu(), loss_sum.tolist()
    results = []
    for p, schedule in enumerate(schedules):
        examples = sum(len(b) for b in schedule)
        weights = {name: v.clone() for name, v in unflatten_params(flat_cpu[p], shapes).items()}
        results.append((weights, TrainResult(steps=steps[p], examples=examples,
                                             loss=loss_cpu[p] / max(examples, 1))))
    return results


def _batch_order(n: int, config: TrainConfig) -> list[torch.Tensor]:
    """The index batches :func:`latentfl.training.train` draws, in order: the same shuffling
    DataLoader over positions instead of examples, so its random draws are the same by
    construction (one base seed per epoch's iterator, then torch's RandomSampler draws)."""
    order = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(range(n), batch_size=config.batch_size, shuffle=True, generator=order)
    batches: list[torch.Tensor] = []
    for _ in range(config.epochs):
        for batch in loader:
            batches.append(batch)
            if config.max_steps is not None and len(batches) >= config.max_steps:
                return batches
    return batches


def _augmented(xb: torch.Tensor, schedules: list[list[torch.Tensor]], t: int,
               rngs: list[torch.Generator]) -> torch.Tensor:
    """``xb`` (P, B, C, H, W) with each participant's real rows cropped and flipped exactly as
    :func:`latentfl.training.augment_batch` would with that participant's generator.

    augment_batch is a gather with zero fill, so it is run on the CPU on a map of pixel numbers
    (1..H*W, exact in float32; 0 = padding): the same draws, and the output says where each pixel
    comes from. The maps then move to the device in one copy and one gather applies them to
    every image.
    """
    count, batch, channels, h, w = xb.shape
    pixels = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w)
    source = torch.zeros(count, batch, h * w, dtype=torch.int64)  # padded rows read pixel 0
    for p, schedule in enumerate(schedules):
        if t < len(schedule):
            b = len(schedule[t])
            source[p, :b] = augment_batch(pixels.expand(b, 1, h, w), rngs[p]).reshape(b, -1).long()
    if xb.device.type == "cuda":
        source = source.pin_memory().to(xb.device, non_blocking=True)
    padded = F.pad(xb.flatten(3), (1, 0))  # (P, B, C, 1 + H*W); position 0 is the zero fill
    picked = padded.gather(3, source[:, :, None, :].expand(count, batch, channels, h * w))
    return picked.view(count, batch, channels, h, w)


def _initial_state(config: TrainConfig, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if config.optimizer == "adam":
        return torch.zeros_like(flat), torch.zeros_like(flat)  # exp_avg, exp_avg_sq
    return (torch.zeros_like(flat),) if config.momentum > 0 else ()  # momentum buffer


def _optimizer_step(config: TrainConfig, flat: torch.Tensor, grads: torch.Tensor,
                    state: tuple[torch.Tensor, ...], step: int
                    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One step of torch.optim.SGD / Adam as :func:`latentfl.training.train` configures them,
    written with the same operations in the same order, on stacked vectors ``(P, D)``."""
    g = grads if config.weight_decay == 0 else grads.add(flat, alpha=config.weight_decay)
    if config.optimizer == "sgd":
        if config.momentum > 0:
            g = g if step == 1 else state[0].mul(config.momentum).add(g)
            state = (g,)
        return flat.add(g, alpha=-config.lr), state
    beta1, beta2 = ADAM_BETAS
    exp_avg = state[0].lerp(g, 1 - beta1)
    exp_avg_sq = state[1].mul(beta2).addcmul(g, g, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add(ADAM_EPS)
    step_size = config.lr / (1 - beta1**step)
    return flat.addcdiv(exp_avg, denom, value=-step_size), (exp_avg, exp_avg_sq)


__all__ = ["can_batch", "train_many"]
