"""The ``[strategy.robust]`` section, and the one path from a round's updates to a robust rule.

The averaging methods (FedAvg, FedProx, FedNova, DynaFed's FedAvg rounds) call
:func:`robust_combine` from their shared ``combine`` step, so the coordinator daemon and the
simulator run the same code. Under a robust rule claimed example counts are ignored: every
accepted update counts once (FedNova's step-count correction then weighs participants equally).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from latentfl.config import option
from latentfl.errors import ConfigError
from latentfl.strategies.base import Tensors, Update
from latentfl.strategies.robust import (
    RuleResult,
    SetAside,
    bulyan_rule,
    krum_rule,
    median_rule,
    norm_bound_rule,
    trimmed_mean_rule,
)

Rule = Literal["none", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "norm_bound"]


@dataclass(frozen=True)
class RobustConfig:
    """How the averaging methods resist dishonest participants (docs/privacy.md, Robustness)."""

    rule: Rule = option(
        "none", help="Aggregation rule: none (weighted mean), median, trimmed_mean, krum, "
        "multi_krum, bulyan or norm_bound. Any rule but none ignores claimed example counts "
        "(each update counts once); all but norm_bound need plain aggregation.")
    f: int = option(1, help="Attackers assumed (krum, multi_krum: n >= 2f + 3; bulyan: "
                            "n >= 4f + 3).", min=0)
    beta: float = option(0.1, help="Share trimmed from each end per coordinate (trimmed_mean).",
                         min=0.0, max=0.49)
    keep: int = option(0, help="Updates Multi-Krum averages (0 = n - f).", min=0)
    clip_norm: float = option(0.0, help="norm_bound: fixed L2 bound on each update's change "
                                        "(0 = clip_multiple x the round's median norm).", min=0.0)
    clip_multiple: float = option(1.0, help="norm_bound without clip_norm: the bound as a "
                                            "multiple of the round's median update norm.",
                                  min=0.0, min_exclusive=True)
    outlier_mads: float = option(3.0, help="median, trimmed_mean: report updates farther from "
                                           "the aggregate than median + this many MADs.",
                                 min=0.0, min_exclusive=True)

    def minimum_updates(self) -> int:
        """The fewest updates a round needs under this rule."""
        return {"krum": 2 * self.f + 3, "multi_krum": 2 * self.f + 3,
                "bulyan": 4 * self.f + 3}.get(self.rule, 1)

    @property
    def enabled(self) -> bool:
        return self.rule != "none"


def apply_rule(config: RobustConfig, ids: Sequence[str], deltas: torch.Tensor) -> RuleResult:
    """Run ``config.rule`` on the (n, P) delta matrix (the rule must not be none)."""
    n = deltas.shape[0]
    if n < config.minimum_updates():
        raise ConfigError(f"strategy.robust.rule = {config.rule!r} with f = {config.f} needs at "
                          f"least {config.minimum_updates()} updates; the round has {n}.")
    if config.rule == "median":
        return median_rule(ids, deltas, mads=config.outlier_mads)
    if config.rule == "trimmed_mean":
        return trimmed_mean_rule(ids, deltas, beta=config.beta, mads=config.outlier_mads)
    if config.rule == "krum":
        return krum_rule(ids, deltas, f=config.f, keep=1)
    if config.rule == "multi_krum":
        return krum_rule(ids, deltas, f=config.f, keep=min(n, config.keep or n - config.f),
                         rule="multi_krum")
    if config.rule == "bulyan":
        return bulyan_rule(ids, deltas, f=config.f)
    if config.rule == "norm_bound":
        return norm_bound_rule(ids, deltas, clip_norm=config.clip_norm,
                               clip_multiple=config.clip_multiple)
    raise ConfigError(f"strategy.robust.rule = {config.rule!r} is not a robust rule.")


def flatten(tensors: Tensors, names: Sequence[str]) -> torch.Tensor:
    """The float64 vector of ``tensors`` in ``names`` order."""
    return torch.cat([tensors[n].detach().reshape(-1).to(torch.float64) for n in names])


def unflatten(vector: torch.Tensor, like: Tensors, names: Sequence[str]) -> Tensors:
    """Tensors shaped and typed like ``like`` from a vector in ``names`` order."""
    out: Tensors = {}
    offset = 0
    for n in names:
        ref = like[n]
        out[n] = vector[offset:offset + ref.numel()].reshape(ref.shape).to(ref.dtype)
        offset += ref.numel()
    return out


def update_deltas(start: Tensors, weights: Sequence[Tensors]) -> torch.Tensor:
    """The (n, P) float64 matrix of each upload minus ``start`` (sorted tensor names)."""
    names = sorted(start)
    origin = flatten(start, names)
    return torch.stack([flatten(w, names) - origin for w in weights])


def robust_combine(config: RobustConfig, start: Tensors,
                   updates: Sequence[Update]) -> tuple[Tensors, tuple[SetAside, ...]]:
    """``start`` plus the rule's aggregate of the updates' changes, and what it set aside."""
    names = sorted(start)
    result = apply_rule(config, [u.participant for u in updates],
                        update_deltas(start, [u.weights for u in updates]))
    return unflatten(flatten(start, names) + result.delta, start, names), result.set_aside


def clip_update(start: Tensors, trained: Tensors, max_norm: float) -> Tensors:
    """``trained`` with its change from ``start`` scaled down to L2 norm ``max_norm`` at most
    (an honest participant's own bound, applied before masking in secagg and ckks modes)."""
    names = sorted(start)
    origin = flatten(start, names)
    delta = flatten(trained, names) - origin
    norm = float(delta.norm())
    if norm <= max_norm:
        return trained
    return unflatten(origin + delta * (max_norm / norm), trained, names)


__all__ = ["RobustConfig", "Rule", "apply_rule", "clip_update", "robust_combine",
           "update_deltas"]
