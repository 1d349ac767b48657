"""Read an ImageFolder tree, from a folder or a ``.tar.gz`` of one, into uint8 arrays.

Accepted layouts, below the root or below one wrapping top-level folder (as archives often have):
``train/<class>/<image>`` with an optional ``test/<class>/<image>``, or ``<class>/<image>``
(a single split, used as the training split). Labels are the sorted class folder names of the
training split. Files whose suffix is not an image suffix are ignored.

An image that Pillow cannot decode is skipped: each one is logged with its path, the count is
logged per split, and the paths are returned under ``skipped``. A split left with no image at all
is an error. All images must share one size; grayscale images are widened to RGB when the set
mixes both.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from latentfl.errors import DataError
from latentfl.log import get_logger

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})

Member = tuple[str, Callable[[], bytes]]
"""A file of the tree: its path relative to the root ('/'-separated) and how to read its bytes."""


def is_archive(path: Path) -> bool:
    """Whether ``path`` names a gzip-compressed or plain tar archive."""
    return path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar"))


def _folder_members(root: Path) -> Iterator[Member]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = Path(os.path.relpath(full, root)).as_posix()
            yield rel, full.read_bytes


def _archive_members(path: Path) -> Iterator[Member]:
    """Image members of a tar archive, read in one sequential pass (gzip cannot seek cheaply)."""
    try:
        with tarfile.open(path, "r:*") as archive:
            for info in archive:
                name = posixpath.normpath(info.name.lstrip("/"))
                if not info.isfile() or name.startswith("..") or not _is_image_name(name):
                    continue
                handle = archive.extractfile(info)
                if handle is None:
                    continue
                data = handle.read()
                yield name, (lambda data=data: data)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot read archive {path}: {exc}; expected a readable .tar.gz") from exc


def _is_image_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _layout(paths: list[str], source: Path) -> tuple[str, dict[str, str]]:
    """Find the tree's root and map each image path to its split; returns (root, {path: split})."""
    base = ""
    while True:
        rel = [p[len(base) :].split("/") for p in paths]
        if any(parts[0] == "train" and len(parts) == 3 for parts in rel):
            splits = {
                p: parts[0]
                for p, parts in zip(paths, rel, strict=True)
                if len(parts) == 3 and parts[0] in ("train", "test")
            }
            return base, splits
        if rel and all(len(parts) == 2 for parts in rel):
            return base, {p: "train" for p in paths}
        tops = {parts[0] for parts in rel if len(parts) > 1}
        if len(tops) != 1 or any(len(parts) == 1 for parts in rel):
            break
        base += tops.pop() + "/"
    top_level = sum(1 for parts in rel if len(parts) == 1)
    raise DataError(
        f"{source} has no class folders ({len(paths)} images, {top_level} at the top level); "
        "expected train/<class>/<image> (and test/<class>/<image>) or <class>/<image>"
    )


def _decode(data: bytes) -> np.ndarray:
    """Decode one image to HxW (gray) or HxWx3 (colour) uint8; raises OSError/ValueError if bad."""
    from PIL import Image  # only when decoding: a daemon reading its cached data never needs it

    with Image.open(io.BytesIO(data)) as image:
        mode = "L" if image.mode in _GRAY_MODES else "RGB"
        return np.asarray(image.convert(mode), dtype=np.uint8)


def _decode_split(
    members: list[Member], root: str, classes: dict[str, int], source: Path, split: str
) -> tuple[list[np.ndarray], list[int], list[str], list[str]]:
    """Decode one split; returns (images, labels, paths of those images, paths skipped)."""
    from PIL import Image
    from tqdm import tqdm

    log = get_logger("data.imagefolder")
    images: list[np.ndarray] = []
    labels: list[int] = []
    kept: list[str] = []
    skipped: list[str] = []
    prefix = f"{source}:" if is_archive(source) else f"{source}/"
    for rel, read in tqdm(members, desc=f"decode {split}", unit="img", disable=None, leave=False):
        where = prefix + rel
        try:
            images.append(_decode(read()))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            log.warning("unreadable image skipped", path=where, error=str(exc))
            skipped.append(where)
            continue
        labels.append(classes[rel[len(root) :].split("/")[-2]])
        kept.append(where)
    if skipped:
        log.warning(
            "unreadable images skipped", split=split, count=len(skipped), source=str(source)
        )
    if not images:
        raise DataError(
            f"split '{split}' of {source} has no readable image ({len(skipped)} unreadable); "
            "expected at least one image Pillow can decode"
        )
    return images, labels, kept, skipped


def _stack(images: list[np.ndarray], paths: list[str], channels: int, source: Path) -> np.ndarray:
    size = images[0].shape[:2]
    out = np.empty((len(images), *size, channels), dtype=np.uint8)
    for i, image in enumerate(images):
        if image.shape[:2] != size:
            raise DataError(
                f"image {paths[i]} in {source} is {image.shape[1]}x{image.shape[0]} pixels; "
                f"expected every image to be {size[1]}x{size[0]} like the first one"
            )
        out[i] = image[..., None] if image.ndim == 2 else image
    return out


def read_imagefolder(source: Path) -> dict[str, np.ndarray]:
    """Decode the tree at ``source`` (folder or tar archive) into train_x/y, test_x/y, classes."""
    members = list(_archive_members(source) if is_archive(source) else _folder_members(source))
    members = [(rel, read) for rel, read in members if _is_image_name(rel)]
    if not members:
        raise DataError(f"{source} contains no image files; expected {sorted(IMAGE_SUFFIXES)}")
    root, split_of = _layout([rel for rel, _ in members], source)
    by_split: dict[str, list[Member]] = {"train": [], "test": []}
    for rel, read in sorted(members, key=lambda m: m[0]):
        if rel in split_of:
            by_split[split_of[rel]].append((rel, read))
    ignored = len(members) - sum(len(v) for v in by_split.values())
    if ignored:
        get_logger("data.imagefolder").warning(
            "images outside class folders ignored", count=ignored, source=str(source)
        )
    names = sorted({rel[len(root) :].split("/")[-2] for rel, _ in by_split["train"]})
    classes = {name: i for i, name in enumerate(names)}
    unknown = sorted({rel[len(root) :].split("/")[-2] for rel, _ in by_split["test"]} - set(names))
    if unknown:
        raise DataError(
            f"test split of {source} has class folders {unknown} that the train split lacks; "
            "expected the test classes to be a subset of the train classes"
        )
    decoded = {
        split: _decode_split(group, root, classes, source, split)
        for split, group in by_split.items()
        if group
    }
    channels = 3 if any(img.ndim == 3 for imgs, *_ in decoded.values() for img in imgs) else 1
    arrays: dict[str, np.ndarray] = {"classes": np.array(names, dtype=str)}
    skipped: list[str] = []
    for split, (images, labels, kept, bad) in decoded.items():
        arrays[f"{split}_x"] = _stack(images, kept, channels, source)
        arrays[f"{split}_y"] = np.asarray(labels, dtype=np.int64)
        skipped.extend(bad)
    arrays["skipped"] = np.array(skipped, dtype=str)
    return arrays


__all__ = ["IMAGE_SUFFIXES", "is_archive", "read_imagefolder"]
