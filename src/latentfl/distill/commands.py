"""``latentfl generator train``: train the built-in generator prior on public data."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from latentfl.data import load_dataset, to_tensors
from latentfl.distill.generator import GeneratorConfig
from latentfl.distill.latent import random_generator
from latentfl.distill.train_prior import train_prior
from latentfl.distill.vae import VaeDesign
from latentfl.errors import ConfigError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generator", help="Generator priors for latent distillation.")
    sub = parser.add_subparsers(title="generator commands", metavar="COMMAND")
    train = sub.add_parser(
        "train", help="Train the built-in generator on PUBLIC data (class-conditional, or "
                      "label-free with --unconditional).",
        description="Train the built-in generator as the decoder of a VAE on a public dataset "
                    "(never on participants' data) and save weights (.safetensors) plus a JSON "
                    "config and PNG samples. Any image size (odd and non-square too) and any "
                    "channel count.")
    train.add_argument("--data", required=True, help="dataset spec, e.g. builtin:cifar10-mini")
    train.add_argument("--out", required=True, type=Path, help="output weights file (.safetensors)")
    train.add_argument("--steps", type=int, default=20000, help="training steps (default 20000)")
    train.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    train.add_argument("--beta", type=float, default=1.0,
                       help="weight of the KL term against reconstruction (default 1)")
    train.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--sample-every", type=int, default=1000,
                       help="write a PNG sample grid every this many steps (default 1000)")
    train.add_argument("--base-channels", type=int, default=128,
                       help="generator feature channels at 4x4 (default 128)")
    train.add_argument("--unconditional", action="store_true",
                       help="ignore the labels: a label-free prior, which carries image "
                            "statistics but no label knowledge into FedDGM (class information "
                            "then comes only from the participants)")
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    for name in ("steps", "batch_size", "sample_every", "base_channels"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} is {getattr(args, name)}; "
                              f"expected a positive integer.")
    if not args.lr > 0 or not args.beta >= 0:
        raise ConfigError(f"--lr {args.lr} / --beta {args.beta}; expected lr > 0 and beta >= 0.")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset = load_dataset(args.data)
    c, h, w = dataset.image_shape
    if min(h, w) < 4:
        raise ConfigError(f"dataset {args.data} has {h}x{w} images; the generator makes images "
                          "of at least 4x4 pixels.")
    x, y = to_tensors(dataset.train, dataset.mean, dataset.std)
    if args.unconditional:
        y = torch.zeros_like(y)  # no label reaches the prior
    config = GeneratorConfig(num_classes=1 if args.unconditional else dataset.num_classes,
                             image_size=h, image_width=w, channels=c,
                             base_channels=args.base_channels,
                             conditional=not args.unconditional)
    torch.manual_seed(args.seed)
    gen = random_generator(config, seed=args.seed, mean=dataset.mean, std=dataset.std).to(device)
    result = train_prior(
        VaeDesign(gen, lr=args.lr, beta=args.beta), x, y, out=args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
        sample_every=args.sample_every,
        meta={"data": args.data, "conditional": not args.unconditional,
              "classes": [] if args.unconditional else list(dataset.train.classes)})
    print(f"generator weights: {result.weights} (config {result.weights.with_suffix('.json')})")
    print(f"sample grids: {', '.join(str(p) for p in result.samples)}")
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.losses.items())
    print(f"final losses: {losses}; {result.seconds:.0f} s")
    return 0
