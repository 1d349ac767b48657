"""Write the CIFAR-10 training images the built-in set does not contain, as a "public" .npz.

The built-in ``cifar10-mini`` is the first 500 training and 100 test images per class of the full
archive (sorted file names). Experiments that need public data disjoint from the participants'
(a generator prior for FedDGM, trained with ``latentfl generator train``) can use the remaining
4,500 training images per class. Disjointness is checked on pixel content, not only on indices.

    python scripts/make_public_split.py ../shared/data/cifar10.tar.gz runs/public/cifar10-public.npz

For experiments on the full CIFAR-10 whose prior must never see the participants' images, split
the 50,000 training images in two: ``--private-per-class 2500 --private-out PRIVATE.npz``
writes the first 2,500 per class (the built-in set's 500 among them) with the 10,000 test
images as the participants' data, and the public .npz gets the other 2,500 per class.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from latentfl.data import load_dataset

BUILTIN_PER_CLASS = 500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="the full CIFAR-10 ImageFolder archive")
    parser.add_argument("out", type=Path, help="the .npz to write (x, y, classes)")
    parser.add_argument("--private-per-class", type=int, default=BUILTIN_PER_CLASS,
                        help="training images per class kept out of the public part, from the "
                             f"first in file-name order (default {BUILTIN_PER_CLASS}, the "
                             "built-in set; at least that)")
    parser.add_argument("--private-out", type=Path, default=None,
                        help="also write the kept-out images, with the test split, as an .npz")
    args = parser.parse_args()
    if args.private_per_class < BUILTIN_PER_CLASS:
        raise SystemExit(f"--private-per-class {args.private_per_class}; expected at least "
                         f"{BUILTIN_PER_CLASS}, so the built-in set stays private.")

    dataset = load_dataset(f"imagefolder:{args.archive}")
    full = dataset.train
    builtin = load_dataset("builtin:cifar10-mini")
    per_class = [np.flatnonzero(full.y == c) for c in range(len(full.classes))]
    keep = np.concatenate([rows[args.private_per_class:] for rows in per_class])
    private = np.concatenate([rows[: args.private_per_class] for rows in per_class])
    seen = {hashlib.sha256(im.tobytes()).digest()
            for im in np.concatenate([builtin.train.x, builtin.test.x])}
    shared = sum(hashlib.sha256(im.tobytes()).digest() in seen for im in full.x[keep])
    if shared:
        raise SystemExit(f"{shared} of the kept images are in the built-in set; expected none "
                         "(is the archive the full CIFAR-10 with sorted file names?)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, x=full.x[keep], y=full.y[keep], classes=np.array(full.classes))
    print(f"wrote {args.out}: {len(keep)} images, none of them in builtin:cifar10-mini")
    if args.private_out is not None:
        args.private_out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.private_out, x=full.x[private], y=full.y[private],
                 x_test=dataset.test.x, y_test=dataset.test.y, classes=np.array(full.classes))
        print(f"wrote {args.private_out}: {len(private)} training images (other indices than {args.out}'s) "
              f"and {len(dataset.test)} test images")


if __name__ == "__main__":
    main()
