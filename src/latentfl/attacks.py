"""Dishonest participants for the simulator and the experiment runner (never the shipped agent).

``[[simulation.attackers]]`` turns some participants into attackers. Data attacks change what
they train on: ``label_flip`` (label k becomes K-1-k) and ``backdoor`` (a white square in the
bottom-right corner, relabelled to ``target``, on ``poison_fraction`` of their examples). Update
attacks change what they send, as a change ``d`` from the round's starting weights ``w``:
``scale`` sends ``w + factor d`` (model replacement), ``sign_flip`` sends ``w - factor d``,
``gaussian`` sends ``w + N(0, sigma^2)`` in place of its change; ``backdoor`` sends
``w + boost d``. ``absent`` sends nothing: those sites take no part (no task, no update), which
is the reference a defence is measured against, since the best it can do is set the attackers
aside and lose their share of the data. Attackers are the first participants (p00, p01, ...), ``count`` of them or
``round(fraction x participants)``; their claimed example counts are their true ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

from latentfl.config import option
from latentfl.seeding import derive_seed
from latentfl.strategies import Tensors, Update

AttackKind = Literal["sign_flip", "scale", "gaussian", "label_flip", "backdoor", "absent"]


@dataclass(frozen=True)
class AttackerConfig:
    """One group of dishonest participants (a ``[[simulation.attackers]]`` entry)."""

    kind: AttackKind = option(
        "scale", help="sign_flip, scale, gaussian, label_flip, backdoor or absent (the module "
        "docstring of latentfl.attacks says what each sends).")
    count: int = option(0, help="Attackers of this kind (0: use fraction).", min=0)
    fraction: float = option(0.0, help="Share of participants of this kind when count is 0.",
                             min=0.0, max=1.0)
    factor: float = option(10.0, help="scale and sign_flip: the change is multiplied by factor "
                                      "(sign_flip: by -factor).", min=0.0)
    sigma: float = option(1.0, help="gaussian: std of the noise sent instead of the change.",
                          min=0.0)
    target: int = option(0, help="backdoor: the class triggered images are relabelled to.",
                         min=0)
    poison_fraction: float = option(0.5, help="backdoor: share of the attacker's examples "
                                              "given the trigger.", min=0.0, max=1.0)
    boost: float = option(1.0, help="backdoor: the change is multiplied by boost (model "
                                    "replacement when > 1).", min=0.0)
    trigger_size: int = option(3, help="backdoor: side of the white square trigger, pixels.",
                               min=1)

    def size(self, participants: int) -> int:
        return self.count or round(self.fraction * participants)


def assign(attackers: Sequence[AttackerConfig], ids: Sequence[str]
           ) -> dict[str, AttackerConfig]:
    """Participant id -> its attack: groups take consecutive ids from the first."""
    out: dict[str, AttackerConfig] = {}
    at = 0
    for group in attackers:
        for pid in ids[at:at + group.size(len(ids))]:
            out[pid] = group
        at += group.size(len(ids))
    return out


def add_trigger(x: torch.Tensor, size: int, mean: Sequence[float],
                std: Sequence[float]) -> torch.Tensor:
    """``x`` (N, C, H, W, normalised with mean/std) with a white square in its bottom-right."""
    white = ((1 - torch.tensor(mean, dtype=x.dtype)) / torch.tensor(std, dtype=x.dtype))
    out = x.clone()
    out[:, :, -size:, -size:] = white.view(1, -1, 1, 1)
    return out


def poison_data(attack: AttackerConfig, x: torch.Tensor, y: torch.Tensor, *, num_classes: int,
                mean: Sequence[float], std: Sequence[float], seed: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The local data a data attacker trains on (unchanged for the update attacks)."""
    if attack.kind == "label_flip":
        return x, num_classes - 1 - y
    if attack.kind != "backdoor":
        return x, y
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(y), generator=g)[:round(attack.poison_fraction * len(y))]
    x, y = x.clone(), y.clone()
    x[chosen] = add_trigger(x[chosen], attack.trigger_size, mean, std)
    y[chosen] = attack.target
    return x, y


def tamper(attack: AttackerConfig, update: Update, start: Tensors, *, seed: int) -> Update:
    """The update an attacker sends in place of its honest ``update``."""
    if attack.kind == "scale":
        factor = attack.factor
    elif attack.kind == "sign_flip":
        factor = -attack.factor
    elif attack.kind == "backdoor":
        factor = attack.boost
    elif attack.kind == "gaussian":
        g = torch.Generator().manual_seed(seed)
        noisy = {k: s + attack.sigma * torch.randn(s.shape, generator=g, dtype=s.dtype)
                 if s.is_floating_point() else s for k, s in start.items()}
        return replace(update, weights=noisy)
    else:
        return update
    weights = {k: (s + factor * (update.weights[k] - s)).to(s.dtype) if s.is_floating_point()
               else update.weights[k] for k, s in start.items()}
    return replace(update, weights=weights)


def backdoor_success(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     attack: AttackerConfig, *, mean: Sequence[float], std: Sequence[float],
                     device: torch.device | str = "cpu") -> float:
    """Share of triggered test images of the other classes that ``model`` calls ``target``."""
    keep = y != attack.target
    triggered = add_trigger(x[keep], attack.trigger_size, mean, std)
    model.to(device).eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(triggered), 512):
            hits += int((model(triggered[i:i + 512].to(device)).argmax(dim=1)
                         == attack.target).sum())
    return hits / max(len(triggered), 1)


def attack_seed(seed: int, pid: str, round: int) -> int:
    return derive_seed(seed, "attack", round, pid)


__all__ = ["AttackKind", "AttackerConfig", "add_trigger", "assign", "attack_seed",
           "backdoor_success", "poison_data", "tamper"]
