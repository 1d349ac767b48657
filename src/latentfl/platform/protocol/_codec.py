"""Payload codec: tensors as safetensors bytes, small structures as strict JSON.

Nothing from the network is unpickled: safetensors is a flat header plus raw buffers, parsed
from bytes (no ``torch.load``). Decoded tensors are checked for finite values and, when a model
manifest is given, against its names, shapes and dtypes.
"""

from __future__ import annotations

from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from latentfl.errors import ModelError, ProtocolError, Reason
from latentfl.models import ModelManifest
from latentfl.platform.protocol._header import DEFAULT_MAX_MESSAGE_BYTES
from latentfl.platform.protocol._json import canonical_json, strict_json

DEFAULT_MAX_JSON_BYTES = 1024 * 1024
MAX_TENSORS = 4096
_MAX_SAFETENSORS_HEADER = 1024 * 1024


def _count_tensors(data: bytes) -> int:
    """Tensors declared in a safetensors header, read before anything is allocated for them."""
    if len(data) < 8:
        raise ProtocolError(Reason.MALFORMED, f"tensor payload is {len(data)} bytes; too short")
    size = int.from_bytes(data[:8], "little")
    if size > min(len(data) - 8, _MAX_SAFETENSORS_HEADER):
        raise ProtocolError(
            Reason.MALFORMED,
            f"tensor payload declares a {size}-byte header; expected at most "
            f"{min(len(data) - 8, _MAX_SAFETENSORS_HEADER)}",
        )
    header = strict_json(data[8 : 8 + size], what="safetensors header", max_bytes=size)
    if not isinstance(header, dict):
        raise ProtocolError(Reason.MALFORMED, "safetensors header is not a JSON object")
    return len(header) - ("__metadata__" in header)


def pack_tensors(tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialise named tensors to safetensors bytes (detached, contiguous CPU copies)."""
    ready = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    return _st_save(ready)


def unpack_tensors(
    data: bytes,
    manifest: ModelManifest | None = None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes from a peer; ProtocolError 'too-large', 'malformed',
    'non-finite' or 'manifest' when refused."""
    if len(data) > max_bytes:
        raise ProtocolError(
            Reason.TOO_LARGE, f"tensor payload is {len(data)} bytes; expected at most {max_bytes}"
        )
    data = bytes(data)
    count = _count_tensors(data)
    if manifest is not None and count != len(manifest.entries):
        raise ProtocolError(
            Reason.MANIFEST,
            f"tensor payload holds {count} tensors; the model manifest has {len(manifest.entries)}",
        )
    if count > MAX_TENSORS:
        raise ProtocolError(
            Reason.TOO_LARGE,
            f"tensor payload holds {count} tensors; expected at most {MAX_TENSORS}",
        )
    try:
        tensors = _st_load(data)
    except Exception as exc:  # safetensors raises its own and builtin error types
        raise ProtocolError(
            Reason.MALFORMED, f"tensor payload is not valid safetensors data ({exc})"
        ) from None
    for name, tensor in tensors.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(
            torch.isfinite(tensor).all()
        ):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ProtocolError(
                Reason.NON_FINITE,
                f"tensor {name!r} holds {bad} NaN or infinite values; expected finite values",
            )
    if manifest is not None:
        try:
            manifest.check(tensors)
        except ModelError as exc:
            raise ProtocolError(
                Reason.MANIFEST, f"tensor payload does not fit the model: {exc}"
            ) from None
    return tensors


def pack_json(obj: dict[str, Any]) -> bytes:
    """Canonical JSON bytes of a small structured payload (an object)."""
    if not isinstance(obj, dict):
        raise TypeError(f"JSON payload is a {type(obj).__name__}; expected a dict")
    return canonical_json(obj)


def unpack_json(data: bytes, max_bytes: int = DEFAULT_MAX_JSON_BYTES) -> dict[str, Any]:
    """Parse a JSON payload from a peer strictly; it must be an object."""
    obj = strict_json(bytes(data), what="JSON payload", max_bytes=max_bytes)
    if not isinstance(obj, dict):
        raise ProtocolError(
            Reason.MALFORMED, f"JSON payload is a {type(obj).__name__}; expected an object"
        )
    return obj


__all__ = ["DEFAULT_MAX_JSON_BYTES", "pack_json", "pack_tensors", "unpack_json", "unpack_tensors"]
