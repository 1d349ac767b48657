"""``latentfl data inspect`` and ``latentfl data partition``: look at a dataset and its split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from latentfl.data import class_counts, load_dataset, partition
from latentfl.data.partition import PARTITION_SCHEMES

_SPEC_HELP = "dataset spec: imagefolder:PATH, cifar10:PATH, npz:PATH or builtin:cifar10-mini"


def register(subparsers: Any) -> None:
    """Add the ``data`` command and its ``inspect`` and ``partition`` subcommands."""
    data = subparsers.add_parser("data", help="inspect datasets and client partitions")
    commands = data.add_subparsers(title="data commands", metavar="COMMAND", required=True)

    inspect = commands.add_parser("inspect", help="images per split and class, shape, mean/std")
    inspect.add_argument("spec", help=_SPEC_HELP)
    inspect.add_argument("--cache-dir", type=Path, default=None, help="decoded-array cache folder")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(handler=run_inspect)

    part = commands.add_parser("partition", help="per-client class counts of a partition")
    part.add_argument("spec", help=_SPEC_HELP)
    part.add_argument("--clients", type=int, required=True, help="number of clients")
    part.add_argument("--scheme", choices=PARTITION_SCHEMES, default="dirichlet",
                      help="How classes are spread over clients (docs/data.md)")
    part.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    part.add_argument("--seed", type=int, default=0, help="seed of the random split")
    part.add_argument("--min-size", type=int, default=10, help="Dirichlet: samples per client")
    part.add_argument("--classes-per-client", type=int, default=2, help="shards: classes each")
    part.add_argument("--cache-dir", type=Path, default=None, help="decoded-array cache folder")
    part.add_argument("--json", action="store_true", help="print JSON instead of a table")
    part.set_defaults(handler=run_partition)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned first column, right-aligned numbers, two spaces between columns."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return "\n".join(line(r) for r in [header, *rows])


def _summary(spec: str, cache_dir: Path | None) -> dict[str, Any]:
    import numpy as np

    dataset = load_dataset(spec, cache_dir=cache_dir)
    splits = {"train": dataset.train, "test": dataset.test}
    per_class = {
        name: np.bincount(s.y, minlength=dataset.num_classes).tolist()
        for name, s in splits.items()
        if s is not None
    }
    c, h, w = dataset.image_shape
    return {
        "spec": spec,
        "name": dataset.name,
        "classes": list(dataset.train.classes),
        "image_shape": {"height": h, "width": w, "channels": c},
        "images": {name: sum(counts) for name, counts in per_class.items()},
        "per_class": per_class,
        "mean": [round(v, 4) for v in dataset.mean],
        "std": [round(v, 4) for v in dataset.std],
    }


def run_inspect(args: argparse.Namespace) -> int:
    """Print what a dataset holds: images per split and class, image shape, channel mean/std."""
    info = _summary(args.spec, args.cache_dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    shape = info["image_shape"]
    splits = list(info["per_class"])
    print(f"dataset      {info['name']} ({info['spec']})")
    print(f"image shape  {shape['height']}x{shape['width']}x{shape['channels']} (H x W x C)")
    print(f"classes      {len(info['classes'])}")
    print(", ".join(f"{split} {info['images'][split]:,} images" for split in splits))
    print()
    rows = [
        [name, *(f"{info['per_class'][s][i]:,}" for s in splits)]
        for i, name in enumerate(info["classes"])
    ]
    rows.append(["total", *(f"{info['images'][s]:,}" for s in splits)])
    print(_table(["class", *splits], rows))
    print()
    print("channel mean (train)  " + " ".join(f"{v:.4f}" for v in info["mean"]))
    print("channel std  (train)  " + " ".join(f"{v:.4f}" for v in info["std"]))
    return 0


def run_partition(args: argparse.Namespace) -> int:
    """Partition the train split among clients and print the per-client class counts."""
    dataset = load_dataset(args.spec, cache_dir=args.cache_dir)
    labels = dataset.train.y
    parts = partition(
        labels,
        args.clients,
        args.scheme,
        seed=args.seed,
        alpha=args.alpha,
        min_size=args.min_size,
        classes_per_client=args.classes_per_client,
    )
    counts = class_counts(labels, parts, dataset.num_classes)
    options = {"iid": {}, "dirichlet": {"alpha": args.alpha, "min_size": args.min_size},
               "dirichlet_per_client": {"alpha": args.alpha},
               "shards": {"classes_per_client": args.classes_per_client}}
    if args.json:
        out = {
            "spec": args.spec,
            "split": "train",
            "scheme": args.scheme,
            "seed": args.seed,
            **options[args.scheme],
            "classes": list(dataset.train.classes),
            "clients": [
                {"client": i, "counts": row.tolist(), "total": int(row.sum())}
                for i, row in enumerate(counts)
            ],
            "class_totals": counts.sum(axis=0).tolist(),
            "total": int(counts.sum()),
        }
        print(json.dumps(out, indent=2))
        return 0
    described = ", ".join(f"{k}={v}" for k, v in options[args.scheme].items())
    print(
        f"{dataset.name} train split ({len(labels):,} images) over {args.clients} clients: "
        f"{args.scheme}{' (' + described + ')' if described else ''}, seed {args.seed}"
    )
    header = ["client", *dataset.train.classes, "total"]
    rows = [[str(i), *map(str, row), str(row.sum())] for i, row in enumerate(counts)]
    rows.append(["total", *map(str, counts.sum(axis=0)), str(counts.sum())])
    print(_table(header, rows))
    sizes = counts.sum(axis=1)
    print(f"client sizes: min {sizes.min()}, max {sizes.max()}, mean {sizes.mean():.1f}")
    return 0


__all__ = ["register", "run_inspect", "run_partition"]
