"""``latentfl audit dp-sgd`` and ``latentfl participant audit-dp``: the one-run DP audit.

Both train one model locally on the given data plus canaries with DP-SGD and write an HTML and
JSON report of aggregate numbers (epsilons and counts). The participant variant reads the site's
data and ``[privacy]`` settings from its config and runs beside the agent; with ``--share`` it
sends the aggregate numbers to the coordinator. The agent runs the same audit
(:func:`audit_dp_sgd`, :func:`write_dp_report`) when an operator requests it and its site policy
allows it (``platform/participant/audits/requested.py``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentfl.audits.dp_audit import DPAudit, DPTraining, one_run_dp_audit
from latentfl.audits.report import dp_audit_json, render_dp_html, write_report
from latentfl.data import load_dataset, to_tensors
from latentfl.device import resolve_device
from latentfl.errors import ConfigError
from latentfl.log import get_logger
from latentfl.models import build_model
from latentfl.privacy.dp_sgd import DPSGDConfig, resolve_noise_multiplier
from latentfl.training import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    """``latentfl audit dp-sgd`` (called by audits.commands)."""
    p = sub.add_parser("dp-sgd", help="One-run DP audit: train once with canaries and bound "
                       "epsilon from below, beside the accountant's epsilon.")
    p.add_argument("--data", required=True, metavar="SPEC", help="Dataset spec (train split).")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--noise-multiplier", type=float, help="DP-SGD noise multiplier.")
    group.add_argument("--target-epsilon", type=float, help="Derive the noise for this epsilon.")
    group.add_argument("--no-dp", action="store_true", help="Train without DP-SGD.")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="Per-example clip norm.")
    p.add_argument("--delta", type=float, default=1e-5, help="DP delta.")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N].")
    add_run_options(p)
    p.set_defaults(handler=_run_dp_sgd)


def _run_dp_sgd(args: argparse.Namespace) -> int:
    if args.out is None:
        raise ConfigError("latentfl audit dp-sgd needs --out DIR for the reports.")
    dp = DPSGDConfig(enabled=not args.no_dp, noise_multiplier=args.noise_multiplier,
                     target_epsilon=args.target_epsilon, max_grad_norm=args.max_grad_norm)
    run_dp_audit_command(args, data=args.data, dp=dp, delta=args.delta, device=args.device,
                         subset=None)
    return 0


@dataclass(frozen=True)
class DPAuditOptions:
    """The audited run's options (the DP settings are separate: they are the site's own).

    Defaults are ``latentfl audit dp-sgd``'s; ``claimed_epsilon`` None checks the run's own
    accountant.
    """

    canaries: int = 1000
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    confidence: float = 0.95
    max_examples: int = 5000
    seed: int = 0
    model: str = "convnet"
    width: int = 32
    depth: int = 2
    claimed_epsilon: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DPAuditOptions:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def problems(self) -> list[str]:
        out = []
        if self.canaries < 2 or not 0 < self.confidence < 1 or self.epochs < 1:
            out.append(f"--canaries {self.canaries}, --confidence {self.confidence}, --epochs "
                       f"{self.epochs}: expected canaries >= 2, confidence in (0, 1), epochs >= 1")
        if self.batch_size < 1 or self.max_examples < 1:
            out.append(f"--batch-size {self.batch_size}, --max-examples {self.max_examples}: "
                       "expected integers >= 1")
        return out


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options of the audited training run shared by both commands."""
    d = DPAuditOptions()
    parser.add_argument("--out", type=Path, help="Directory for the reports.")
    parser.add_argument("--model", default=d.model, help="Architecture (model registry name).")
    parser.add_argument("--width", type=int, default=d.width, help="ConvNet width.")
    parser.add_argument("--depth", type=int, default=d.depth, help="ConvNet depth.")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="Epochs of the audited run.")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help="Expected Poisson batch size.")
    parser.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate.")
    parser.add_argument("--canaries", type=int, default=d.canaries,
                        help="Canaries m; each is trained on with probability 1/2.")
    parser.add_argument("--confidence", type=float, default=d.confidence,
                        help="Confidence of the epsilon lower bound.")
    parser.add_argument("--claimed-epsilon", type=float, metavar="EPS",
                        help="Check this claim instead of the run's own accountant.")
    parser.add_argument("--max-examples", type=int, default=d.max_examples,
                        help="Seeded subsample of at most this many training examples.")
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="Seed of canaries, order and noise.")


def subsample(count: int, options: DPAuditOptions) -> np.ndarray | None:
    """The seeded, sorted indices of at most ``options.max_examples`` of ``count`` examples
    (None: keep all)."""
    if count <= options.max_examples:
        return None
    rng = np.random.default_rng(options.seed)
    return np.sort(rng.choice(count, options.max_examples, replace=False))


def audit_dp_sgd(x: torch.Tensor, y: torch.Tensor, *, num_classes: int,
                 options: DPAuditOptions, dp: DPSGDConfig, delta: float,
                 device: str) -> DPAudit:
    """The one-run DP audit of ``dp`` (at ``delta``) on normalised images ``x`` and labels ``y``
    (a seeded subsample of at most ``options.max_examples``), run as ``options`` say."""
    problems = options.problems()
    if not 0 < delta < 1:
        problems.append(f"--delta {delta} must lie strictly between 0 and 1")
    if problems:
        raise ConfigError("; ".join(problems) + ".")
    keep = subsample(len(x), options)
    if keep is not None:
        x, y = x[torch.from_numpy(keep)], y[torch.from_numpy(keep)]
    config = TrainConfig(epochs=options.epochs, batch_size=options.batch_size, lr=options.lr,
                         momentum=0.9, seed=options.seed)
    noise = None
    if dp.enabled:
        noise = resolve_noise_multiplier(dp, num_examples=len(x) + options.canaries // 2,
                                         batch_size=options.batch_size, epochs=options.epochs,
                                         delta=delta)
    arch = ({"width": options.width, "depth": options.depth} if options.model == "convnet"
            else {})

    def build() -> torch.nn.Module:
        torch.manual_seed(options.seed)
        return build_model(options.model, num_classes, tuple(x.shape[1:]), **arch)

    get_logger("audit").info(
        "dp_audit_training", examples=len(x), canaries=options.canaries,
        epochs=options.epochs, noise_multiplier=noise,
        summary=f"training one model on {len(x)} examples and {options.canaries} canaries for "
                f"{options.epochs} epoch(s)" + ("" if noise is None else f" with noise "
                                                 f"{noise:.3f}") + "; this is the slow part")
    return one_run_dp_audit(
        x, y, build=build, config=config, num_classes=num_classes, canaries=options.canaries,
        training=DPTraining(noise, dp.max_grad_norm, delta, dp.accountant),
        confidence=options.confidence, claimed_epsilon=options.claimed_epsilon,
        seed=options.seed, device=str(resolve_device(device)))


def write_dp_report(audit: DPAudit, out: Path, *, data: str, options: DPAuditOptions,
                    dp: DPSGDConfig) -> tuple[Path, Path]:
    """``dp_audit.html`` and ``dp_audit.json`` in ``out``: aggregate numbers only."""
    context = {"data": data, "model": options.model, "epochs": options.epochs,
               "batch_size": options.batch_size, "max_grad_norm": dp.max_grad_norm}
    return write_report(out, "dp_audit", render_dp_html(audit, context),
                        dp_audit_json(audit, context))


def run_dp_audit_command(args: argparse.Namespace, *, data: str, dp: DPSGDConfig, delta: float,
                         device: str, subset: Any) -> tuple[Path, Path]:
    """Load the data, run the one-run audit as ``args`` and ``dp`` say, write and print the
    reports; their paths. ``subset(images) -> images`` picks this site's part of the train
    split (None: all of it)."""
    options = DPAuditOptions.from_args(args)
    problems = options.problems()
    if problems:  # before any data is loaded
        raise ConfigError("; ".join(problems) + ".")
    ds = load_dataset(data)
    images = ds.train if subset is None else subset(ds.train)
    keep = subsample(len(images), options)  # before the images become float tensors
    x, y = to_tensors(images if keep is None else images.subset(keep), ds.mean, ds.std)
    audit = audit_dp_sgd(x, y, num_classes=len(ds.train.classes), options=options, dp=dp,
                         delta=delta, device=device)
    html_path, json_path = write_dp_report(audit, args.out, data=data, options=options, dp=dp)
    for w in audit.warnings:
        print(f"WARNING {w}")
    for v in audit.verdicts:
        print(f"{v.status.upper():5} {v.title}: {v.value}")
    spent = "none (no DP)" if audit.accountant_epsilon is None else f"{audit.accountant_epsilon:.3f}"
    claim = "none" if audit.claimed_epsilon is None else f"{audit.claimed_epsilon:.3f}"
    print(f"accountant epsilon: {spent} (delta {delta:g}); claim checked: {claim}; lower bound: "
          f"{audit.epsilon_lower_bound:.2f} at {100 * audit.confidence:g}% confidence")
    print(f"report: {html_path}\njson:   {json_path}")
    return html_path, json_path


__all__ = ["DPAuditOptions", "add_run_options", "audit_dp_sgd", "register", "run_dp_audit_command",
           "subsample", "write_dp_report"]
