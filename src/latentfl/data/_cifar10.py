"""torchvision's CIFAR-10 python files (``cifar-10-batches-py``) as uint8 NHWC arrays.

``cifar10:PATH`` accepts the ``cifar-10-batches-py`` folder, a folder holding it, or the
``cifar-10-python.tar.gz`` archive it comes in. The files are read with the non-executing reader
of ``_cifar_pickle``.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from latentfl.data._cifar_pickle import BATCH_FILES, REQUIRED_FILES, parse_plain_pickle
from latentfl.errors import DataError

FOLDER = "cifar-10-batches-py"


def _read_files(source: Path) -> dict[str, bytes]:
    if source.is_dir():
        folder = source / FOLDER if (source / FOLDER).is_dir() else source
        return {
            name: (folder / name).read_bytes()
            for name in REQUIRED_FILES
            if (folder / name).is_file()
        }
    try:
        with tarfile.open(source, "r:*") as archive:
            found: dict[str, bytes] = {}
            for info in archive:
                name = info.name.rsplit("/", 1)[-1]
                handle = archive.extractfile(info) if info.isfile() else None
                if name in REQUIRED_FILES and handle is not None:
                    found[name] = handle.read()
            return found
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(
            f"cannot read {source} as CIFAR-10: {exc}; expected the {FOLDER} folder or its .tar.gz"
        ) from exc


def _batch(data: bytes, where: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: (N,32,32,3) uint8 images, (N,) int64 labels."""
    batch: Any = parse_plain_pickle(data, where)
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DataError(f"{where} has no 'data' and 'labels' entries; expected a CIFAR-10 batch")
    images, labels = batch["data"], batch["labels"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        raise DataError(f"{where}: 'data' is not a 2-D uint8 array; expected shape (N, 3072)")
    side = int(round((images.shape[1] / 3) ** 0.5))
    if 3 * side * side != images.shape[1]:
        raise DataError(f"{where}: rows of {images.shape[1]} bytes; expected 3 x side x side")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (images.shape[0],) or (y.size and (y.min() < 0 or y.max() >= num_classes)):
        raise DataError(
            f"{where}: {y.size} labels for {images.shape[0]} images; "
            f"expected one label in [0, {num_classes}) per image"
        )
    # Each row is the red plane, then green, then blue, each row-major: CHW -> HWC.
    x = images.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y


def read_cifar10(source: Path) -> dict[str, np.ndarray]:
    """Decode the CIFAR-10 python files at ``source`` into train_x/y, test_x/y and classes."""
    files = _read_files(source)
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise DataError(
            f"{source} lacks CIFAR-10 files {missing}; "
            f"expected {FOLDER} with {list(REQUIRED_FILES)}"
        )
    meta = parse_plain_pickle(files["batches.meta"], f"{source}/batches.meta")
    names = meta.get("label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names:
        raise DataError(f"{source}/batches.meta has no 'label_names' list; expected class names")
    classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    train = [_batch(files[name], f"{source}/{name}", len(classes)) for name in BATCH_FILES]
    test_x, test_y = _batch(files["test_batch"], f"{source}/test_batch", len(classes))
    return {
        "classes": np.array(classes, dtype=str),
        "train_x": np.concatenate([x for x, _ in train]),
        "train_y": np.concatenate([y for _, y in train]),
        "test_x": test_x,
        "test_y": test_y,
        "skipped": np.array([], dtype=str),
    }


__all__ = ["read_cifar10"]
