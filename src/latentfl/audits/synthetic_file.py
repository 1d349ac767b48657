"""The synthetic-set file: what distillation writes and the synthetic audit reads.

A safetensors file with

- ``images``: uint8 (N, H, W, C) pixels, or float (N, C, H, W) normalised images together with
  ``mean`` and ``std`` float tensors of length C (pixel = image * std + mean, in [0, 1] units);
- ``labels``: int64 (N,);
- optional metadata: one JSON object under the safetensors metadata key ``latentfl``.

``save_synthetic`` always writes the uint8 form; ``load_synthetic`` accepts both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentfl.durable import write_atomic
from latentfl.errors import DataError

META_KEY = "latentfl"


@dataclass(frozen=True)
class SyntheticSet:
    """Synthetic images as uint8 (N, H, W, C), their int64 labels and free-form metadata."""

    images: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _as_numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def save_synthetic(path: Path | str, images_uint8_nhwc: np.ndarray | torch.Tensor,
                   labels: np.ndarray | torch.Tensor, meta: dict[str, Any] | None = None) -> None:
    """Write a synthetic set; ``meta`` must be JSON-serialisable (method, round, participant...)."""
    from safetensors.torch import save

    images = _as_numpy(images_uint8_nhwc)
    labels_np = _as_numpy(labels).astype(np.int64).reshape(-1)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(f"synthetic images must be uint8 (N, H, W, C), got {images.dtype} "
                        f"{images.shape}")
    if labels_np.shape[0] != images.shape[0]:
        raise DataError(f"synthetic set has {images.shape[0]} images but {labels_np.shape[0]} "
                        "labels; expected one label per image")
    tensors = {"images": torch.from_numpy(np.ascontiguousarray(images)),
               "labels": torch.from_numpy(labels_np)}
    data = save(tensors, metadata={META_KEY: json.dumps(meta or {}, sort_keys=True)})
    write_atomic(Path(path), data)


def load_synthetic(path: Path | str) -> SyntheticSet:
    """Read a synthetic set written by ``save_synthetic`` or by a float/normalised writer."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"synthetic set file {path} does not exist; expected a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            raw_meta = (f.metadata() or {}).get(META_KEY, "{}")
            tensors = {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"synthetic set file {path} is not readable safetensors ({exc})") from exc
    missing = {"images", "labels"} - keys
    if missing:
        raise DataError(f"synthetic set file {path} lacks tensor(s) {sorted(missing)}; "
                        "expected 'images' and 'labels'")
    try:
        meta = json.loads(raw_meta)
    except json.JSONDecodeError as exc:
        raise DataError(f"synthetic set file {path} has metadata that is not JSON ({exc})") from exc
    images = tensors["images"]
    if images.dtype == torch.uint8:
        if images.ndim != 4:
            raise DataError(f"uint8 images in {path} have shape {tuple(images.shape)}; "
                            "expected (N, H, W, C)")
        pixels = images.numpy()
    elif images.is_floating_point():
        pixels = _denormalise(images, tensors, path)
    else:
        raise DataError(f"images in {path} have dtype {images.dtype}; expected uint8 or float")
    labels = tensors["labels"].to(torch.int64).reshape(-1).numpy()
    if labels.shape[0] != pixels.shape[0]:
        raise DataError(f"{path} holds {pixels.shape[0]} images but {labels.shape[0]} labels; "
                        "expected one label per image")
    if not np.all(np.isfinite(pixels.astype(np.float32))):
        raise DataError(f"images in {path} contain non-finite values")
    return SyntheticSet(images=np.ascontiguousarray(pixels), labels=labels, meta=meta)


def _denormalise(images: torch.Tensor, tensors: dict[str, torch.Tensor], path: Path) -> np.ndarray:
    if images.ndim != 4:
        raise DataError(f"float images in {path} have shape {tuple(images.shape)}; "
                        "expected (N, C, H, W)")
    if "mean" not in tensors or "std" not in tensors:
        raise DataError(f"float images in {path} need 'mean' and 'std' tensors to be turned back "
                        "into pixels; expected both beside 'images'")
    channels = images.shape[1]
    mean = tensors["mean"].float().reshape(-1)
    std = tensors["std"].float().reshape(-1)
    if mean.numel() != channels or std.numel() != channels:
        raise DataError(f"mean/std in {path} have {mean.numel()}/{std.numel()} entries; expected "
                        f"{channels} (one per channel)")
    if not torch.isfinite(images).all():
        raise DataError(f"images in {path} contain non-finite values")
    pixels = images.float() * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
    pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


__all__ = ["SyntheticSet", "load_synthetic", "save_synthetic"]
