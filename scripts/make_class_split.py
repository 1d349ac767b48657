"""Write the images of some classes of a dataset as an .npz, labels renumbered 0..K-1.

Used to build the disjoint-class setting of issue 22: a prior trained on five CIFAR-10 classes
of the public split, a task on the other five classes of the built-in set, so the prior carries
image statistics but no label knowledge of the task (docs/results.md, "Baselines").

    python scripts/make_class_split.py npz:runs/public/cifar10-public.npz \
        data-cache/public-even.npz --classes airplane,bird,deer,frog,ship
    python scripts/make_class_split.py builtin:cifar10-mini data-cache/mini-odd.npz \
        --classes automobile,cat,dog,horse,truck
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from latentfl.data import load_dataset


def keep_classes(x: np.ndarray, y: np.ndarray, wanted: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The images whose label is in ``wanted``, labels renumbered to their place in it."""
    rows = np.flatnonzero(np.isin(y, wanted))
    renumber = {old: new for new, old in enumerate(wanted)}
    return x[rows], np.array([renumber[int(v)] for v in y[rows]], dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="dataset spec, e.g. builtin:cifar10-mini")
    parser.add_argument("out", type=Path, help="the .npz to write (x, y, classes, x_test, y_test)")
    parser.add_argument("--classes", required=True, help="comma-separated class names to keep")
    args = parser.parse_args()

    ds = load_dataset(args.data)
    names = [c.strip() for c in args.classes.split(",") if c.strip()]
    unknown = [c for c in names if c not in ds.train.classes]
    if unknown or len(set(names)) != len(names):
        raise SystemExit(f"--classes {args.classes!r}: {unknown or 'repeats'}; expected distinct "
                         f"names among {', '.join(ds.train.classes)}.")
    wanted = [ds.train.classes.index(c) for c in names]
    arrays = dict(zip(("x", "y"), keep_classes(ds.train.x, ds.train.y, wanted), strict=True))
    if ds.test is not None:
        arrays.update(zip(("x_test", "y_test"), keep_classes(ds.test.x, ds.test.y, wanted),
                          strict=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, classes=np.array(names), **arrays)
    print(f"wrote {args.out}: {len(arrays['y'])} training images of {', '.join(names)}")


if __name__ == "__main__":
    main()
