"""Membership-inference attack scores, as pure functions of per-example model outputs.

Higher score = "more likely a member". The reference models are all OUT models (never trained
on the points being scored): the offline variants of LiRA (Carlini et al. 2022) and RMIA
(Zarifzadeh et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Outputs:
    """Per-example quantities of one model on one set of examples."""

    loss: np.ndarray        # cross-entropy
    prob: np.ndarray        # softmax probability of the true label
    scaled_logit: np.ndarray  # log(p / (1 - p)), computed stably from the logits
    correct: np.ndarray     # bool: top-1 prediction equals the label


@torch.no_grad()
def model_outputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512,
                  device: str | torch.device = "cpu") -> Outputs:
    """Evaluate ``model`` on normalised ``x`` (N, C, H, W) with labels ``y``."""
    model = model.to(device).eval()
    losses, probs, scaled, correct = [], [], [], []
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start:start + batch_size].to(device)).double()
        yb = y[start:start + batch_size].to(device)
        logp = F.log_softmax(logits, dim=1)
        lp_true = logp.gather(1, yb[:, None])[:, 0]
        others = logits.clone()
        others.scatter_(1, yb[:, None], -torch.inf)
        # log p - log(1 - p) = z_y - logsumexp_{j != y} z_j
        scaled.append((logits.gather(1, yb[:, None])[:, 0] - torch.logsumexp(others, 1)).cpu())
        losses.append((-lp_true).cpu())
        probs.append(lp_true.exp().cpu())
        correct.append((logits.argmax(1) == yb).cpu())
    return Outputs(torch.cat(losses).numpy(), torch.cat(probs).numpy(),
                   torch.cat(scaled).numpy(), torch.cat(correct).numpy())


def loss_scores(target: Outputs) -> np.ndarray:
    """LOSS attack (Yeom et al. 2018): members have lower loss."""
    return -target.loss


def lira_offline_scores(target: Outputs, references: list[Outputs]) -> np.ndarray:
    """Offline LiRA: how far the target's scaled logit sits above the OUT distribution.

    The OUT mean is per example; the spread is pooled over examples (a fixed variance, which is
    what LiRA recommends with few reference models), so the score is a z-value.
    """
    if not references:
        raise ValueError("offline LiRA needs at least one reference model, got 0")
    ref = np.stack([r.scaled_logit for r in references])  # (R, N)
    mu = ref.mean(axis=0)
    spread = (ref - mu).std() if len(references) > 1 else ref.std()
    return (target.scaled_logit - mu) / max(float(spread), 1e-12)


def rmia_offline_scores(target: Outputs, references: list[Outputs], population: Outputs,
                        population_references: np.ndarray, *, a: float = 0.3,
                        gamma: float = 1.0) -> np.ndarray:
    """Offline RMIA: share of population points z that x beats in likelihood ratio.

    ``population_references`` is (R, Z) of reference probabilities for z, NaN where that
    reference trained on z (so only OUT references enter). Offline, p(x) is approximated from
    OUT models as 0.5 ((1 + a) mean_OUT + (1 - a)).
    """
    if not references:
        raise ValueError("RMIA needs at least one reference model, got 0")

    def marginal(out_mean: np.ndarray) -> np.ndarray:
        return 0.5 * ((1 + a) * out_mean + (1 - a))

    ref_x = np.stack([r.prob for r in references]).mean(axis=0)
    ratio_x = target.prob / marginal(ref_x)
    usable = np.isfinite(population_references).any(axis=0)
    ref_z = np.nanmean(population_references[:, usable], axis=0)
    ratio_z = np.sort(population.prob[usable] / marginal(ref_z))
    if ratio_z.size == 0:
        raise ValueError("RMIA needs population points with at least one OUT reference, got none")
    # score(x) = fraction of z with ratio_x / ratio_z > gamma  <=>  ratio_z < ratio_x / gamma
    share = np.searchsorted(ratio_z, ratio_x / gamma, side="left") / ratio_z.size
    # Ties (e.g. many x beating every z) would flatten the ROC at low FPR; break them by the
    # likelihood ratio itself, squashed below the 1/Z step so the ranking between steps stays.
    tie_break = np.arctan(np.log(np.maximum(ratio_x, 1e-300))) / np.pi / (2 * ratio_z.size + 2)
    return share + tie_break


__all__ = ["Outputs", "lira_offline_scores", "loss_scores", "model_outputs",
           "rmia_offline_scores"]
