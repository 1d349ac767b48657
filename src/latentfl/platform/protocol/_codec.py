"""Payload codec: tensors as safetensors bytes, small structures as strict JSON.

Nothing from the network is unpickled: safetensors is a flat header plus raw buffers, parsed
from bytes (no ``torch.load``). The safetensors header is read first, under the field rule of
``_json``: only the dtypes in ``WIRE_DTYPES`` pass, and with a model manifest each tensor must
carry exactly the manifest's dtype, before any tensor is built. Decoded tensors are then checked
for finite values and, with a manifest, against its names and shapes.
"""

from __future__ import annotations

from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from latentfl.errors import ModelError, ProtocolError, Reason
from latentfl.models import ModelManifest, all_finite
from latentfl.platform.protocol._header import DEFAULT_MAX_MESSAGE_BYTES
from latentfl.platform.protocol._json import canonical_json, strict_json

DEFAULT_MAX_JSON_BYTES = 1024 * 1024
MAX_TENSORS = 4096
_MAX_SAFETENSORS_HEADER = 1024 * 1024


# safetensors dtype codes the protocol carries, as torch names (the manifest's spelling); any
# other code (float8, complex, unsigned 16-64 bit, ...) is refused before the tensors are built.
WIRE_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def _read_header(data: bytes) -> dict[str, Any]:
    """The tensors a safetensors payload declares ({name: entry}), read and checked against
    the field rule and the wire dtypes before anything is allocated for them."""
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
    entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
    for name, entry in entries.items():
        code = entry.get("dtype") if isinstance(entry, dict) else None
        if not isinstance(code, str) or code not in WIRE_DTYPES:  # a list is unhashable
            raise ProtocolError(
                Reason.MANIFEST,
                f"tensor {name[:80]!r} has dtype {str(code)[:20]!r}; expected one of "
                f"{sorted(WIRE_DTYPES)}",
            )
    return entries


def _check_dtypes(entries: dict[str, Any], manifest: ModelManifest) -> None:
    """Every declared tensor must carry exactly the manifest's dtype (names are checked later)."""
    expected = {name: dtype for name, _, dtype in manifest.entries}
    for name, entry in entries.items():
        dtype = WIRE_DTYPES[entry["dtype"]]
        if name in expected and dtype != expected[name]:
            raise ProtocolError(
                Reason.MANIFEST,
                f"tensor {name!r} has dtype {dtype}; the model manifest has {expected[name]}",
            )


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
    entries = _read_header(data)
    count = len(entries)
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
    if manifest is not None:
        _check_dtypes(entries, manifest)
    try:
        tensors = _st_load(data)
    except Exception as exc:  # safetensors raises its own and builtin error types
        raise ProtocolError(
            Reason.MALFORMED, f"tensor payload is not valid safetensors data ({exc})"
        ) from None
    for name, tensor in tensors.items():
        if not all_finite(tensor):
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


__all__ = ["DEFAULT_MAX_JSON_BYTES", "WIRE_DTYPES", "pack_json", "pack_tensors", "unpack_json", "unpack_tensors"]
