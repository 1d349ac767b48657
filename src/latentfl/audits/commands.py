"""``latentfl audit synthetic`` and ``latentfl audit model``: run an audit, write its reports."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentfl.audits import dp_command
from latentfl.audits.distances import FeatureEncoder, random_encoder
from latentfl.audits.membership import audit_model
from latentfl.audits.model_file import load_model_file
from latentfl.audits.report import (
    model_audit_json,
    render_model_html,
    render_synthetic_html,
    synthetic_audit_json,
    write_report,
)
from latentfl.audits.synthetic import audit_synthetic
from latentfl.audits.synthetic_file import load_synthetic
from latentfl.data import load_dataset, to_tensors
from latentfl.device import resolve_device
from latentfl.errors import ConfigError, DataError
from latentfl.models import build_model
from latentfl.seeding import derive_seed
from latentfl.training import TrainConfig, train


def register(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser("audit", help="Measure how much synthetic data or a model "
                                  "leaks about private data; writes HTML + JSON reports.")
    sub = audit.add_subparsers(title="audits", metavar="AUDIT")

    syn = sub.add_parser("synthetic", help="Compare a synthetic set with your private training "
                         "images and a private holdout (run where the private data lives).")
    syn.add_argument("--synthetic", type=Path, required=True,
                     help="Synthetic set (.safetensors with images and labels).")
    syn.add_argument("--private", required=True, metavar="SPEC",
                     help="Dataset spec of the private training data T (its train split).")
    group = syn.add_mutually_exclusive_group()
    group.add_argument("--holdout", metavar="SPEC",
                       help="Dataset spec of private images never used in training (its test "
                            "split if it has one, else its train split). Default: the test "
                            "split of --private.")
    group.add_argument("--holdout-fraction", type=float, metavar="F",
                       help="Use a seeded random fraction F of the private train split as the "
                            "holdout (it must have been kept out of training with this seed).")
    syn.add_argument("--out", type=Path, required=True, help="Directory for the reports.")
    syn.add_argument("--encoder-model", type=Path, metavar="FILE",
                     help="Model file whose penultimate features define the feature distance "
                          "(default: a seeded randomly initialised ConvNet).")
    syn.add_argument("--max-images", type=int, default=5000,
                     help="Seeded subsample of at most this many training and holdout images.")
    syn.add_argument("--alpha", type=float, default=0.05,
                     help="Chance of any false flag on a clean set, over all checks together.")
    syn.add_argument("--seed", type=int, default=0, help="Seed of every subsample and encoder.")
    syn.set_defaults(handler=run_synthetic)

    mod = sub.add_parser("model", help="Membership-inference attacks against a trained model, "
                         "and a check of its DP claim.")
    mod.add_argument("--model", type=Path, required=True,
                     help="Model file (.safetensors weights with a FILE.json sidecar).")
    mod.add_argument("--members", required=True, metavar="SPEC",
                     help="Dataset spec of examples the model trained on (its train split).")
    mod.add_argument("--nonmembers", required=True, metavar="SPEC",
                     help="Dataset spec of unseen examples (its test split if it has one).")
    mod.add_argument("--out", type=Path, required=True, help="Directory for the reports.")
    mod.add_argument("--references", type=int, default=2,
                     help="Reference models the audit trains for LiRA and RMIA (0: LOSS only).")
    mod.add_argument("--ref-epochs", type=int, default=5, help="Epochs per reference model.")
    mod.add_argument("--max-examples", type=int, default=1000,
                     help="Seeded subsample of at most this many members and twice as many "
                          "non-members (with references, half of them train the references).")
    mod.add_argument("--epsilon", type=float, help="DP claim to check (overrides the sidecar).")
    mod.add_argument("--delta", type=float, help="DP delta of the claim (default 1e-5).")
    mod.add_argument("--device", default="auto", help="auto, cpu or cuda[:N].")
    mod.add_argument("--alpha", type=float, default=0.05,
                     help="Chance that a model which never trained on the members gets any "
                          "membership flag, over all attacks and FPR targets together.")
    mod.add_argument("--seed", type=int, default=0, help="Seed of subsamples and references.")
    mod.set_defaults(handler=run_model)
    dp_command.register(sub)


def _subsample(images: Any, limit: int, seed: int) -> Any:
    if len(images) <= limit:
        return images
    rng = np.random.default_rng(seed)
    return images.subset(np.sort(rng.choice(len(images), limit, replace=False)))


def _held_out(dataset: Any) -> Any:
    return dataset.test if dataset.test is not None and len(dataset.test) else dataset.train


def run_synthetic(args: argparse.Namespace) -> int:
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha {args.alpha} must lie strictly between 0 and 1")
    synthetic = load_synthetic(args.synthetic)
    if len(synthetic) == 0:
        raise DataError(f"synthetic set {args.synthetic} holds no images; expected at least one")
    private_ds = load_dataset(args.private)
    private = private_ds.train
    if args.holdout_fraction is not None:
        if not 0 < args.holdout_fraction < 1:
            raise ConfigError(f"--holdout-fraction {args.holdout_fraction} must lie strictly "
                              "between 0 and 1")
        perm = np.random.default_rng(args.seed).permutation(len(private))
        cut = int(round(args.holdout_fraction * len(private)))
        holdout, private = private.subset(np.sort(perm[:cut])), private.subset(np.sort(perm[cut:]))
    elif args.holdout is not None:
        holdout = _held_out(load_dataset(args.holdout))
    elif private_ds.test is not None and len(private_ds.test):
        holdout = private_ds.test
    else:
        raise ConfigError(f"--private {args.private} has no test split to serve as holdout; "
                          "pass --holdout SPEC or --holdout-fraction F")
    private = _subsample(private, args.max_images, args.seed)
    holdout = _subsample(holdout, args.max_images, derive_seed(args.seed, "holdout"))
    if synthetic.images.shape[1:] != private.x.shape[1:]:
        raise DataError(f"synthetic images have shape {synthetic.images.shape[1:]} but private "
                        f"images {private.x.shape[1:]}; expected the same (H, W, C)")
    in_shape = private_ds.image_shape
    if args.encoder_model is not None:
        model, spec = load_model_file(args.encoder_model)
        encoder = FeatureEncoder(model, spec.mean or private_ds.mean, spec.std or private_ds.std,
                                 f"penultimate features of {args.encoder_model.name} "
                                 f"({spec.model})")
    else:
        encoder = random_encoder(in_shape, private_ds.mean, private_ds.std, seed=args.seed)
    audit = audit_synthetic(synthetic.images, private.x, holdout.x, encoder=encoder,
                            seed=args.seed, alpha=args.alpha)
    context = {"synthetic": str(args.synthetic), "private": args.private,
               "holdout": args.holdout or (f"fraction {args.holdout_fraction}"
                                           if args.holdout_fraction else "test split"),
               "synthetic_meta": synthetic.meta}
    html_path, json_path = write_report(
        args.out, "synthetic_audit",
        render_synthetic_html(audit, synthetic.images, private.x, holdout.x, context),
        synthetic_audit_json(audit, context))
    _print_verdicts(audit.verdicts, html_path, json_path, audit.warnings)
    return 0


def run_model(args: argparse.Namespace) -> int:
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha {args.alpha} must lie strictly between 0 and 1")
    if args.references < 0 or args.ref_epochs < 1 or args.max_examples < 2:
        raise ConfigError("--references must be >= 0, --ref-epochs >= 1 and --max-examples >= 2; "
                          f"got {args.references}, {args.ref_epochs}, {args.max_examples}")
    model, spec = load_model_file(args.model)
    members_ds = load_dataset(args.members)
    nonmembers_ds = load_dataset(args.nonmembers)
    if args.members == args.nonmembers and (nonmembers_ds.test is None
                                            or not len(nonmembers_ds.test)):
        raise ConfigError(f"--members and --nonmembers are both {args.members}, which has one "
                          "split only; expected a spec with a test split or two different specs")
    members = _subsample(members_ds.train, args.max_examples, args.seed)
    nonmembers = _subsample(_held_out(nonmembers_ds), 2 * args.max_examples,
                            derive_seed(args.seed, "nonmembers"))
    mean = spec.mean or members_ds.mean
    std = spec.std or members_ds.std
    xm, ym = to_tensors(members, mean, std)
    xn, yn = to_tensors(nonmembers, mean, std)
    if tuple(xm.shape[1:]) != tuple(spec.in_shape):
        raise DataError(f"member images have shape {tuple(xm.shape[1:])} but the model expects "
                        f"{tuple(spec.in_shape)}")
    device = resolve_device(args.device)
    claim = None
    if args.epsilon is not None:
        claim = (args.epsilon, 1e-5 if args.delta is None else args.delta)
    elif spec.dp_epsilon is not None:
        claim = (spec.dp_epsilon, spec.dp_delta or 0.0)

    def build_reference() -> torch.nn.Module:
        return build_model(spec.model, spec.num_classes, spec.in_shape, **spec.options)

    def train_reference(ref: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        torch.manual_seed(seed)
        config = TrainConfig(epochs=args.ref_epochs, batch_size=64, lr=0.01, momentum=0.9,
                             seed=seed)
        train(ref, x, y, config, device=device)

    audit = audit_model(model, (xm, ym), (xn, yn), references=args.references,
                        build_reference=build_reference, train_reference=train_reference,
                        seed=args.seed, dp_claim=claim, device=str(device), alpha=args.alpha)
    context = {"model": str(args.model), "architecture": spec.model, "members": args.members,
               "nonmembers": args.nonmembers, "ref_epochs": args.ref_epochs}
    html_path, json_path = write_report(args.out, "model_audit", render_model_html(audit, context),
                                        model_audit_json(audit, context))
    _print_verdicts(audit.verdicts, html_path, json_path, audit.warnings)
    return 0


def _print_verdicts(verdicts: list[Any], html_path: Path, json_path: Path,
                    warnings: Sequence[str] = ()) -> None:
    for w in warnings:
        print(f"WARNING {w}")
    for v in verdicts:
        print(f"{v.status.upper():5} {v.title}: {v.value}")
    print(f"report: {html_path}\njson:   {json_path}")


__all__ = ["register", "run_model", "run_synthetic"]
