"""Datasets as uint8 arrays, loaded from a spec string, with per-channel statistics.

A spec is ``SCHEME:TARGET``:

- ``imagefolder:PATH``  an ImageFolder tree in a folder or a ``.tar.gz``/``.tgz``/``.tar``
- ``cifar10:PATH``      torchvision's ``cifar-10-batches-py`` files (folder or archive)
- ``npz:PATH``          arrays ``x``, ``y`` (and optionally ``x_test``, ``y_test``, ``classes``)
- ``builtin:NAME``      a dataset shipped in the package (``cifar10-mini``)

Decoded image folders and CIFAR-10 files are cached on disk (see ``_cache``), together with
their channel statistics, so a second load only reads one array file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from latentfl.data import _cache
from latentfl.data._cifar10 import read_cifar10
from latentfl.data._imagefolder import read_imagefolder
from latentfl.data._npz import read_npz
from latentfl.errors import DataError
from latentfl.log import get_logger

if TYPE_CHECKING:
    import torch

SPEC_SCHEMES = ("builtin", "cifar10", "imagefolder", "npz")
BUILTIN_DATASETS = {"cifar10-mini": "cifar10-mini.tar.gz"}
_REQUIRED = ("classes", "train_x", "train_y", "skipped", "mean", "std")


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images ``x`` uint8 (N,H,W,C) with labels ``y`` int64 (N,) indexing ``classes``."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.x.dtype != np.uint8 or self.x.ndim != 4:
            raise DataError(f"images are {self.x.dtype} {self.x.shape}; expected uint8 (N,H,W,C)")
        y = np.asarray(self.y)
        if y.shape != (len(self.x),) or y.dtype.kind not in "iu":
            raise DataError(f"labels are {y.dtype} {y.shape}; expected integers ({len(self.x)},)")
        object.__setattr__(self, "y", y.astype(np.int64, copy=False))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """The images at ``indices`` (a copy), with the same class names."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageSet(x=self.x[idx], y=self.y[idx], classes=self.classes)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A named dataset: a train split, an optional test split, train-split channel statistics."""

    name: str
    train: ImageSet
    test: ImageSet | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W), the shape of one image as the models take it."""
        _, h, w, c = self.train.x.shape
        return (c, h, w)


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 NHWC images, in [0, 1] units, exactly.

    A 256-bin histogram per channel gives exact sums without a float copy of the images.
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[-1]):
        counts = np.bincount(x[..., c].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float(counts @ values / total)
        var = float(counts @ (values - mean) ** 2 / total)
        means.append(mean)
        stds.append(var**0.5)
    return tuple(means), tuple(stds)


def to_tensors(
    images: ImageSet, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float32 NCHW images ``(x/255 - mean) / std`` and int64 labels."""
    import torch

    channels = images.x.shape[-1]
    if len(mean) != channels or len(std) != channels:
        raise DataError(
            f"mean/std have {len(mean)}/{len(std)} entries; expected one per channel ({channels})"
        )
    # torch.from_numpy warns on read-only arrays (e.g. from np.frombuffer): copy those first.
    pixels = images.x if images.x.flags.writeable else images.x.copy()
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    x = x.to(torch.float32, memory_format=torch.contiguous_format)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x.div_(255.0).sub_(m).div_(s)
    return x, torch.from_numpy(np.asarray(images.y, dtype=np.int64).copy())


def evaluation_tensors(dataset: Dataset, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The test split as normalised tensors (its first ``limit`` images if > 0); None if absent."""
    if dataset.test is None or not len(dataset.test):
        return None
    test = dataset.test
    if limit and len(test) > limit:
        test = test.subset(range(limit))
    return to_tensors(test, dataset.mean, dataset.std)


def _name_of(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".npz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _cached(
    kind: str, name: str, path: Path, cache_dir: Path | str | None
) -> dict[str, np.ndarray]:
    """Arrays of ``path`` from the cache, or decoded, measured and then cached."""
    root = _cache.resolve_cache_dir(cache_dir)
    entry = _cache.entry_path(root, name, _cache.source_key(kind, path))
    arrays = _cache.load_entry(entry, _REQUIRED)
    log = get_logger("data")
    if arrays is not None:
        if arrays["skipped"].size:
            log.warning(
                "dataset was cached without unreadable images", count=arrays["skipped"].size
            )
        return arrays
    reader = read_cifar10 if kind == "cifar10" else read_imagefolder
    arrays = reader(path)
    mean, std = channel_stats(arrays["train_x"])
    arrays["mean"], arrays["std"] = np.array(mean), np.array(std)
    if _cache.save_entry(entry, arrays):
        log.info("dataset cached", path=str(entry), images=int(len(arrays["train_y"])))
    return arrays


def _from_arrays(name: str, arrays: dict[str, np.ndarray]) -> Dataset:
    classes = tuple(str(c) for c in arrays["classes"])
    train = ImageSet(x=arrays["train_x"], y=arrays["train_y"].astype(np.int64), classes=classes)
    test = None
    if "test_x" in arrays:
        test = ImageSet(x=arrays["test_x"], y=arrays["test_y"].astype(np.int64), classes=classes)
    if "mean" in arrays:
        mean = tuple(float(v) for v in arrays["mean"])
        std = tuple(float(v) for v in arrays["std"])
    else:
        mean, std = channel_stats(train.x)
    return Dataset(name=name, train=train, test=test, mean=mean, std=std)


def load_dataset(spec: str, *, cache_dir: Path | str | None = None) -> Dataset:
    """Load the dataset that ``spec`` names (see the module docstring); raises DataError."""
    scheme, sep, target = spec.partition(":")
    if not sep or scheme not in SPEC_SCHEMES:
        raise DataError(
            f"dataset spec '{spec}' has unknown scheme '{scheme if sep else ''}'; "
            f"expected SCHEME:TARGET with SCHEME one of {', '.join(SPEC_SCHEMES)}"
        )
    if scheme == "builtin":
        if target not in BUILTIN_DATASETS:
            raise DataError(
                f"unknown built-in dataset '{target}'; "
                f"expected one of {', '.join(BUILTIN_DATASETS)}"
            )
        resource = resources.files("latentfl.data") / "builtin" / BUILTIN_DATASETS[target]
        with resources.as_file(resource) as path:
            return _from_arrays(target, _cached("imagefolder", target, path, cache_dir))
    path = Path(os.path.expanduser(target))
    if not target or not path.exists():
        where = "" if path.is_absolute() else (
            f" (a relative path is taken from the working directory {os.getcwd()}, not from "
            "the config file; give an absolute path)")
        raise DataError(f"dataset path '{target}' in spec '{spec}' does not exist{where}")
    if scheme == "npz":
        return _from_arrays(_name_of(path), read_npz(path))
    if (
        scheme == "imagefolder"
        and path.is_file()
        and not path.name.endswith((".tar.gz", ".tgz", ".tar"))
    ):
        raise DataError(
            f"'{path}' is a file but not a .tar.gz/.tgz/.tar; expected a folder or archive"
        )
    return _from_arrays(_name_of(path), _cached(scheme, _name_of(path), path, cache_dir))


__all__ = [
    "BUILTIN_DATASETS",
    "SPEC_SCHEMES",
    "Dataset",
    "ImageSet",
    "channel_stats",
    "load_dataset",
    "to_tensors",
]
