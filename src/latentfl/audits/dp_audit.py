"""The one-run DP audit: did a DP-SGD run deliver the epsilon its accountant claims?

m canaries (Gaussian-noise images with random labels, so no real data is needed for them) are
each added to the training data with probability 1/2; the model trains once with the configured
DP-SGD (Opacus, the same ``make_private`` wrap the participant uses); each canary is scored by
the trained model's scaled logit of its label; guesses on the highest and lowest scores give an
epsilon lower bound (``audits/one_run.py``). A bound above the claim proves the claim false.

Runs where the data lives: the report holds counts and epsilons only, never an image or score.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latentfl.audits.attacks import model_outputs
from latentfl.audits.one_run import best_guesses, canaries_needed
from latentfl.audits.verdict import Verdict
from latentfl.privacy.dp_sgd import dp_compatible, make_private
from latentfl.privacy.ledger import PrivacyLedger
from latentfl.seeding import derive_seed
from latentfl.training import TrainConfig, train

SMALL_CANARIES = 1000


@dataclass(frozen=True)
class DPTraining:
    """The audited run's privacy: ``noise_multiplier`` None trains without DP-SGD."""

    noise_multiplier: float | None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"


@dataclass(frozen=True)
class DPAudit:
    canaries: int
    canaries_included: int
    training_examples: int     # the data's own examples (canaries not counted)
    guesses: int
    correct: int
    epsilon_lower_bound: float
    max_provable: float        # the bound if every guess were right: the audit's reach
    confidence: float
    accountant_epsilon: float | None  # what this run's accountant spent (None: DP off)
    claimed_epsilon: float | None     # the claim checked (default: the accountant's)
    delta: float
    noise_multiplier: float | None
    steps: int
    verdicts: list[Verdict]
    warnings: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return any(v.flagged for v in self.verdicts)


def make_canaries(count: int, in_shape: tuple[int, ...], num_classes: int, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``count`` noise images (normalised scale), random labels, and who is included (p = 1/2)."""
    rng = np.random.default_rng(derive_seed(seed, "canaries"))
    x = torch.from_numpy(rng.standard_normal((count, *in_shape)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, num_classes, count).astype(np.int64))
    return x, y, rng.random(count) < 0.5


def one_run_dp_audit(x: torch.Tensor, y: torch.Tensor, *, build: Callable[[], nn.Module],
                     config: TrainConfig, training: DPTraining, num_classes: int,
                     canaries: int = 1000, confidence: float = 0.95,
                     claimed_epsilon: float | None = None, seed: int = 0,
                     device: str = "cpu") -> DPAudit:
    """Insert canaries into (``x``, ``y``), train once as configured, bound epsilon from below.

    ``claimed_epsilon`` checks a claim made elsewhere (a model file's, a ledger's); by default
    the claim is what this run's own accountant reports. ``build()`` returns an untrained model.
    """
    if canaries < 2 or not 0 < confidence < 1:
        raise ValueError(f"canaries {canaries} must be >= 2 and confidence {confidence} in (0, 1)")
    xc, yc, included = make_canaries(canaries, tuple(x.shape[1:]), num_classes, seed)
    keep = torch.from_numpy(included)
    xs, ys = torch.cat([x, xc[keep]]), torch.cat([y, yc[keep]])
    model = build()
    accountant_eps = None
    if training.noise_multiplier is None:
        steps = train(model, xs, ys, config, device=device).steps
    else:
        model = dp_compatible(model)
        with tempfile.TemporaryDirectory() as tmp:
            ledger = PrivacyLedger(Path(tmp) / "ledger.json", delta=training.delta,
                                   accountant=training.accountant)  # type: ignore[arg-type]
            with make_private(ledger=ledger, round_=0, noise_multiplier=training.noise_multiplier,
                              max_grad_norm=training.max_grad_norm,
                              noise_seed=derive_seed(seed, "noise")) as wrap:
                steps = train(model, xs, ys, config, device=device, wrap=wrap).steps
            accountant_eps = ledger.epsilon()
    scores = model_outputs(model, xc, yc, device=device).scaled_logit
    beta = 1 - confidence
    best = best_guesses(scores, included, beta=beta, delta=training.delta)
    claim = accountant_eps if claimed_epsilon is None else float(claimed_epsilon)
    audit = dict(
        canaries=canaries, canaries_included=int(included.sum()), training_examples=len(x),
        guesses=int(best["guesses"]), correct=int(best["correct"]),
        epsilon_lower_bound=float(best["epsilon"]), max_provable=float(best["max_provable"]),
        confidence=confidence, accountant_epsilon=accountant_eps, claimed_epsilon=claim,
        delta=training.delta, noise_multiplier=training.noise_multiplier, steps=steps)
    verdict = _verdict(audit, float(best["level"]))
    return DPAudit(**audit, verdicts=[verdict], warnings=_warnings(audit))


def _verdict(a: dict, level: float) -> Verdict:
    bound, claim, reach = a["epsilon_lower_bound"], a["claimed_epsilon"], a["max_provable"]
    value = (f"epsilon >= {bound:.2f} proven at {100 * a['confidence']:g}% confidence "
             f"({a['correct']} of {a['guesses']} guesses right, {a['canaries']} canaries, "
             f"{a['canaries_included']} included)")
    numbers = {"epsilon_lower_bound": bound, "max_provable": reach, "canaries": a["canaries"],
               "guesses": a["guesses"], "correct": a["correct"], "delta": a["delta"],
               "claimed_epsilon": claim}
    common = dict(metric="dp_one_run", title="DP-SGD delivers its epsilon (one-run audit)",
                  value=value, alpha=level, numbers=numbers,
                  calibration=f"{a['canaries']} canaries, each included with probability 1/2")
    if claim is None:
        return Verdict(**common, threshold="no DP claim: reported for information", status="info",
                       explanation="Trained without DP-SGD. The bound shows how much one run "
                                   "with these canaries can reveal; there is no claim to check.")
    threshold = f"the proven lower bound exceeds the claimed epsilon {claim:.2f}"
    if bound > claim:
        return Verdict(**common, threshold=threshold, status="flag",
                       explanation="VIOLATION: the run leaks more than its DP claim allows. The "
                                   "claim is wrong (noise, sampling or accounting): a bug.")
    if claim > reach:
        need = canaries_needed(claim, beta=level)
        numbers["canaries_needed"] = need
        return Verdict(**common, threshold=threshold, status="inconclusive",
                       explanation=f"Consistent with the claim, but with {a['canaries']} "
                                   f"canaries this audit can prove at most epsilon {reach:.2f}, "
                                   f"below the claim: it could not catch a violation. About "
                                   f"{need:,} canaries would be needed.")
    return Verdict(**common, threshold=threshold, status="pass",
                   explanation="No violation found: the proven lower bound is within the "
                               "claim, and the audit could have shown a violation up to "
                               f"epsilon {reach:.2f}. A one-run audit bounds leakage from "
                               "below only; it does not prove the claim holds.")


def _warnings(a: dict) -> list[str]:
    out = []
    if a["canaries"] < SMALL_CANARIES:
        out.append(f"Only {a['canaries']} canaries: one run can prove at most epsilon "
                   f"{a['max_provable']:.2f}; use {SMALL_CANARIES} or more for a tighter audit.")
    out.append("The bound is a lower bound: a run may leak more than it shows (canaries are "
               "noise images scored from the final model, not the worst case).")
    return out


__all__ = ["DPAudit", "DPTraining", "make_canaries", "one_run_dp_audit"]
