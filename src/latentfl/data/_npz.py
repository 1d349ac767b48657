"""Image arrays stored in a ``.npz`` file, read with ``allow_pickle=False``.

Required: ``x`` uint8 of shape (N,H,W,C) or (N,H,W) and ``y`` integer of shape (N,). Optional:
``x_test``/``y_test`` (same rules) and ``classes`` (a string array naming each label); without
it the classes are named "0", "1", ... up to the largest label.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from latentfl.errors import DataError


def _images(x: np.ndarray, key: str, source: Path) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DataError(f"{source}: '{key}' has dtype {x.dtype}; expected uint8")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] == 0:
        raise DataError(
            f"{source}: '{key}' has shape {x.shape}; expected (N, H, W, C) or (N, H, W) with N > 0"
        )
    return np.ascontiguousarray(x)


def _labels(y: np.ndarray, key: str, count: int, source: Path) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise DataError(f"{source}: '{key}' has dtype {y.dtype}; expected an integer dtype")
    if y.shape != (count,):
        raise DataError(
            f"{source}: '{key}' has shape {y.shape}; expected ({count},), one per image"
        )
    if y.min() < 0:
        raise DataError(f"{source}: '{key}' holds label {y.min()}; expected labels >= 0")
    return y.astype(np.int64)


def read_npz(source: Path) -> dict[str, np.ndarray]:
    """Validate and return the arrays of ``source`` as train_x/y, test_x/y and classes."""
    try:
        # Open the file ourselves: np.load leaks its handle when the zip directory is bad.
        with source.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"cannot read {source} as .npz: {exc}; expected numeric arrays x and y"
        ) from exc
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise DataError(
            f"{source} lacks arrays {missing}; it has {sorted(arrays)}, expected x and y"
        )
    out = {"train_x": _images(arrays["x"], "x", source)}
    out["train_y"] = _labels(arrays["y"], "y", len(out["train_x"]), source)
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{source} has only one of x_test and y_test; expected both or neither")
    if "x_test" in arrays:
        out["test_x"] = _images(arrays["x_test"], "x_test", source)
        out["test_y"] = _labels(arrays["y_test"], "y_test", len(out["test_x"]), source)
        if out["test_x"].shape[1:] != out["train_x"].shape[1:]:
            raise DataError(
                f"{source}: x_test images are {out['test_x'].shape[1:]}; "
                f"expected the shape of x, {out['train_x'].shape[1:]}"
            )
    top = max(int(out[key].max()) for key in ("train_y", "test_y") if key in out)
    if "classes" in arrays:
        classes = arrays["classes"]
        if classes.dtype.kind != "U" or classes.ndim != 1 or len(classes) <= top:
            raise DataError(
                f"{source}: 'classes' is {classes.dtype} of shape {classes.shape}; "
                f"expected a 1-D string array with at least {top + 1} names"
            )
    else:
        classes = np.array([str(i) for i in range(top + 1)], dtype=str)
    out["classes"] = classes
    out["skipped"] = np.array([], dtype=str)
    return out


__all__ = ["read_npz"]
