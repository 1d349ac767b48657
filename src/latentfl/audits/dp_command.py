"""``latentfl audit dp-sgd`` and ``latentfl participant audit-dp``: the one-run DP audit.

Both train one model locally on the given data plus canaries with DP-SGD and write an HTML and
JSON report of aggregate numbers (epsilons and counts). Nothing is sent anywhere: the participant
variant reads the site's data and ``[privacy]`` settings from its config and runs beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentfl.audits.dp_audit import DPTraining, one_run_dp_audit
from latentfl.audits.report import dp_audit_json, render_dp_html, write_report
from latentfl.data import load_dataset, to_tensors
from latentfl.device import resolve_device
from latentfl.errors import ConfigError
from latentfl.models import build_model
from latentfl.privacy.dp_sgd import DPSGDConfig, resolve_noise_multiplier
from latentfl.training import TrainConfig


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options of the audited training run shared by both commands."""
    parser.add_argument("--out", type=Path, help="Directory for the reports.")
    parser.add_argument("--model", default="convnet", help="Architecture (model registry name).")
    parser.add_argument("--width", type=int, default=32, help="ConvNet width.")
    parser.add_argument("--depth", type=int, default=2, help="ConvNet depth.")
    parser.add_argument("--epochs", type=int, default=10, help="Epochs of the audited run.")
    parser.add_argument("--batch-size", type=int, default=64, help="Expected Poisson batch size.")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate.")
    parser.add_argument("--canaries", type=int, default=1000,
                        help="Canaries m; each is trained on with probability 1/2.")
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="Confidence of the epsilon lower bound.")
    parser.add_argument("--claimed-epsilon", type=float, metavar="EPS",
                        help="Check this claim instead of the run's own accountant.")
    parser.add_argument("--max-examples", type=int, default=5000,
                        help="Seeded subsample of at most this many training examples.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of canaries, order and noise.")


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
    return run_dp_audit_command(args, data=args.data, dp=dp, delta=args.delta,
                                device=args.device, subset=None)


def run_dp_audit_command(args: argparse.Namespace, *, data: str, dp: DPSGDConfig, delta: float,
                         device: str, subset: Any) -> int:
    """Load the data, run the one-run audit as ``args`` and ``dp`` say, write and print reports.

    ``subset(images) -> images`` picks this site's part of the train split (None: all of it).
    """
    if args.canaries < 2 or not 0 < args.confidence < 1 or args.epochs < 1:
        raise ConfigError(f"--canaries {args.canaries}, --confidence {args.confidence}, --epochs "
                          f"{args.epochs}: expected canaries >= 2, confidence in (0, 1), "
                          "epochs >= 1")
    if not 0 < delta < 1:
        raise ConfigError(f"--delta {delta} must lie strictly between 0 and 1")
    ds = load_dataset(data)
    images = ds.train if subset is None else subset(ds.train)
    if len(images) > args.max_examples:
        rng = np.random.default_rng(args.seed)
        images = images.subset(np.sort(rng.choice(len(images), args.max_examples, replace=False)))
    x, y = to_tensors(images, ds.mean, ds.std)
    num_classes = len(ds.train.classes)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         momentum=0.9, seed=args.seed)
    noise = None
    if dp.enabled:
        noise = resolve_noise_multiplier(dp, num_examples=len(x) + args.canaries // 2,
                                         batch_size=args.batch_size, epochs=args.epochs,
                                         delta=delta)
    options = {"width": args.width, "depth": args.depth} if args.model == "convnet" else {}

    def build() -> torch.nn.Module:
        torch.manual_seed(args.seed)
        return build_model(args.model, num_classes, ds.image_shape, **options)

    audit = one_run_dp_audit(
        x, y, build=build, config=config, num_classes=num_classes, canaries=args.canaries,
        training=DPTraining(noise, dp.max_grad_norm, delta, dp.accountant),
        confidence=args.confidence, claimed_epsilon=args.claimed_epsilon, seed=args.seed,
        device=str(resolve_device(device)))
    context = {"data": data, "model": args.model, "epochs": args.epochs,
               "batch_size": args.batch_size, "max_grad_norm": dp.max_grad_norm}
    html_path, json_path = write_report(args.out, "dp_audit", render_dp_html(audit, context),
                                        dp_audit_json(audit, context))
    for w in audit.warnings:
        print(f"WARNING {w}")
    for v in audit.verdicts:
        print(f"{v.status.upper():5} {v.title}: {v.value}")
    spent = "none (no DP)" if audit.accountant_epsilon is None else f"{audit.accountant_epsilon:.3f}"
    claim = "none" if audit.claimed_epsilon is None else f"{audit.claimed_epsilon:.3f}"
    print(f"accountant epsilon: {spent} (delta {delta:g}); claim checked: {claim}; lower bound: "
          f"{audit.epsilon_lower_bound:.2f} at {100 * audit.confidence:g}% confidence")
    print(f"report: {html_path}\njson:   {json_path}")
    return 0


__all__ = ["add_run_options", "register", "run_dp_audit_command"]
