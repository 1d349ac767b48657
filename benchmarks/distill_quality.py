"""Distillation quality: how much one FedDGM round's synthetic images teach a fresh model.

The setting of ``latentfl demo``: the built-in CIFAR-10 mini set split among 4 participants
(Dirichlet alpha 0.5, seed 0), a width-16 ConvNet surrogate trained for one local epoch (batch
32, SGD lr 0.05, ``--momentum``) from one random initialisation. For each distillation variant
the server distils 10 images per class per participant (random-init generator prior unless the
variant says otherwise), trains a width-32 ConvNet for 30 epochs on the 400 images (SGD 0.01,
momentum 0.9, augmentation) and reports its accuracy on 1,000 test images, with the matching
loss at the first and last iteration. A variant is a JSON object of DistillConfig fields over
the demo's base (10 iterations, N = 5, batch 50):

    python benchmarks/distill_quality.py --momentum 0 \\
        --variant paper '{}' --variant adam '{"iterations": 30, "alpha_init": 0.03,
        "optimizer": "adam", "lr_feature": 0.02, "lr_style": 0.01}'
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from latentfl.data import PartitionConfig, evaluation_tensors, load_dataset, to_tensors
from latentfl.distill import DistillConfig, FixedTargets, SetSpec, build_space, distill
from latentfl.models import flatten_params, load_tensors_, state_to_tensors
from latentfl.strategies import ModelSpec
from latentfl.training import TrainConfig, evaluate, train

BASE = {"iterations": 10, "steps": 5, "batch_size": 50, "log_every": 0}
PARTICIPANTS = 4
SURROGATE = ModelSpec(options={"width": 16, "depth": 2})
GLOBAL = ModelSpec(options={"width": 32, "depth": 2})
GLOBAL_TRAIN = TrainConfig(epochs=30, batch_size=64, lr=0.01, momentum=0.9, augment=True)


def participant_targets(momentum: float, seed: int):
    """The demo's data, the shared start and each participant's locally trained weights."""
    torch.manual_seed(seed)
    ds = load_dataset("builtin:cifar10-mini")
    parts = PartitionConfig(scheme="dirichlet", alpha=0.5, seed=0).split(ds.train.y, PARTICIPANTS)
    x, y = to_tensors(ds.train, ds.mean, ds.std)
    surrogate = SURROGATE.build()
    local = TrainConfig(epochs=1, batch_size=32, lr=0.05, momentum=momentum)
    targets = []
    for i, idx in enumerate(parts):
        model = SURROGATE.build()
        load_tensors_(model, state_to_tensors(surrogate))
        train(model, x[idx], y[idx], replace(local, seed=i))
        targets.append(flatten_params(model))
    return ds, surrogate, flatten_params(surrogate), torch.stack(targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"),
                        required=True, help="a name and DistillConfig fields as JSON")
    parser.add_argument("--momentum", type=float, default=0.0, help="participants' SGD momentum")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ds, surrogate, start, targets = participant_targets(args.momentum, args.seed)
    test = evaluation_tensors(ds, 1000)
    print(f"participants' displacement |theta_k - theta_r|: "
          f"{', '.join(f'{d:.2f}' for d in (targets - start).norm(dim=1).tolist())}")
    print(f"{'variant':<16} {'match loss first -> last (mean)':>32} {'accuracy':>9} {'distill':>8}")
    for name, fields in args.variant:
        config = DistillConfig(**{**BASE, **json.loads(fields)})
        space = build_space(config, image_shape=(3, 32, 32), num_classes=10, mean=ds.mean,
                            std=ds.std, seed=args.seed)
        started = time.perf_counter()
        sets = []
        for p in range(PARTICIPANTS):
            sets += distill(FixedTargets(start[None], targets[p:p + 1]), surrogate,
                            spec=SetSpec(num_classes=10, ipc=10), space=space, config=config,
                            seed=p)
        seconds = time.perf_counter() - started
        model = GLOBAL.build()
        train(model, torch.cat([s.images for s in sets]), torch.cat([s.labels for s in sets]),
              GLOBAL_TRAIN)
        accuracy = evaluate(model, *test).accuracy
        first = sum(s.losses[0] for s in sets) / len(sets)
        last = sum(s.losses[-1] for s in sets) / len(sets)
        print(f"{name:<16} {f'{first:.3f} -> {last:.3f}':>32} {100 * accuracy:>8.1f}% "
              f"{seconds:>7.0f}s", flush=True)


if __name__ == "__main__":
    main()
