"""Write the CIFAR-10 training images the built-in set does not contain, as a "public" .npz.

The built-in ``cifar10-mini`` is the first 500 training and 100 test images per class of the full
archive (sorted file names). Experiments that need public data disjoint from the participants'
(a generator prior for FedDGM, trained with ``latentfl generator train``) can use the remaining
4,500 training images per class. Disjointness is checked on pixel content, not only on indices.

    python scripts/make_public_split.py ../shared/data/cifar10.tar.gz runs/public/cifar10-public.npz
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
    args = parser.parse_args()

    full = load_dataset(f"imagefolder:{args.archive}").train
    builtin = load_dataset("builtin:cifar10-mini")
    keep = np.concatenate([np.flatnonzero(full.y == c)[BUILTIN_PER_CLASS:]
                           for c in range(len(full.classes))])
    seen = {hashlib.sha256(im.tobytes()).digest()
            for im in np.concatenate([builtin.train.x, builtin.test.x])}
    shared = sum(hashlib.sha256(im.tobytes()).digest() in seen for im in full.x[keep])
    if shared:
        raise SystemExit(f"{shared} of the kept images are in the built-in set; expected none "
                         "(is the archive the full CIFAR-10 with sorted file names?)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, x=full.x[keep], y=full.y[keep], classes=np.array(full.classes))
    print(f"wrote {args.out}: {len(keep)} images, none of them in builtin:cifar10-mini")


if __name__ == "__main__":
    main()
