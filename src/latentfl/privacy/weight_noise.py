"""Noise on the uploaded weights: clip the update to a norm, add Gaussian noise, account it.

This is the Gaussian mechanism applied once per round to the participant's whole update
``delta_w = w_local - w_start``. After clipping to L2 norm ``C`` any two local datasets give
updates at most ``2C`` apart, so noise of standard deviation ``noise_multiplier * C`` is a
Gaussian mechanism with effective noise multiplier ``noise_multiplier / 2`` on sensitivity 1.
Its Rényi DP at order ``alpha`` is ``alpha / (2 * (noise_multiplier / 2) ** 2)`` per round,
composed over rounds (Opacus's RDP analysis at sample rate 1). Because the bound holds for any
two datasets, the guarantee covers the participant's whole dataset, not only one example: it is
much stronger per unit of noise than it looks, and it needs much more noise than DP-SGD for a
useful epsilon. The ledger composes it with DP-SGD in one accountant.
"""

from __future__ import annotations

import torch

from latentfl.errors import ConfigError
from latentfl.privacy.accounting import AccountantName, epsilon_of_history, noise_multiplier_for


def clip_and_noise(
    update: torch.Tensor,
    *,
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``update`` scaled to L2 norm <= clip_norm plus N(0, (noise_multiplier * clip_norm)^2).

    ``update`` is the flat difference between the trained and the received weights; the
    result is a new tensor of the same shape and dtype (the input is not modified).
    """
    if not clip_norm > 0 or noise_multiplier < 0:
        raise ConfigError(
            f"clip_norm = {clip_norm}, noise_multiplier = {noise_multiplier}; expected "
            "clip_norm > 0 and noise_multiplier >= 0."
        )
    flat = update.detach().to(torch.float64)
    norm = float(torch.linalg.vector_norm(flat))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    noise = torch.randn(flat.shape, generator=generator, dtype=torch.float64, device=flat.device)
    return (flat * scale + noise * (noise_multiplier * clip_norm)).to(update.dtype)


def weight_noise_epsilon(
    noise_multiplier: float, rounds: int, delta: float, accountant: AccountantName = "rdp"
) -> float:
    """Epsilon after ``rounds`` noised uploads at ``noise_multiplier`` (sensitivity 2C)."""
    return epsilon_of_history([(noise_multiplier / 2.0, 1.0, rounds)], delta, accountant)


def weight_noise_multiplier_for(
    target_epsilon: float, rounds: int, delta: float, accountant: AccountantName = "rdp"
) -> float:
    """The weight-noise multiplier keeping ``rounds`` uploads within ``target_epsilon``."""
    return 2.0 * noise_multiplier_for(target_epsilon, delta, 1.0, rounds, accountant)


__all__ = ["clip_and_noise", "weight_noise_epsilon", "weight_noise_multiplier_for"]
