"""The model file the model audit (and the feature encoder) read.

``FILE`` is safetensors weights (``latentfl.models.state_to_tensors``); ``FILE.json`` beside it
says how to rebuild the network::

    {"model": "convnet", "num_classes": 10, "in_shape": [3, 32, 32], "options": {...},
     "mean": [...], "std": [...], "dp": {"epsilon": 3.0, "delta": 1e-5}}   # "dp" optional
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from latentfl.durable import write_atomic
from latentfl.errors import ModelError
from latentfl.models import build_model, load_tensors_, state_to_tensors


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a model and normalise its inputs, plus an optional DP claim."""

    model: str
    num_classes: int
    in_shape: tuple[int, int, int]
    options: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    dp_epsilon: float | None = None
    dp_delta: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "num_classes": self.num_classes,
                               "in_shape": list(self.in_shape), "options": dict(self.options),
                               "mean": list(self.mean), "std": list(self.std)}
        if self.dp_epsilon is not None:
            out["dp"] = {"epsilon": self.dp_epsilon, "delta": self.dp_delta or 0.0}
        return out


def sidecar_path(path: Path | str) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_model_file(path: Path | str, model: nn.Module, spec: ModelSpec,
                    meta: dict[str, Any] | None = None) -> None:
    """Write ``model``'s weights to ``path`` and ``spec`` (plus ``meta``) to ``path.json``."""
    from safetensors.torch import save

    sidecar = spec.to_json()
    if meta:
        sidecar["meta"] = meta
    write_atomic(Path(path), save(state_to_tensors(model)))
    text = json.dumps(sidecar, indent=2, sort_keys=True) + "\n"
    write_atomic(sidecar_path(path), text.encode())


def _parse_spec(raw: Any, where: Path) -> ModelSpec:
    if not isinstance(raw, dict):
        raise ModelError(f"{where} holds {type(raw).__name__}; expected a JSON object")
    try:
        in_shape = tuple(int(v) for v in raw["in_shape"])
        if len(in_shape) != 3:
            raise ValueError(f"in_shape {in_shape} has {len(in_shape)} entries, not 3")
        dp = raw.get("dp")
        spec = ModelSpec(
            model=str(raw["model"]),
            num_classes=int(raw["num_classes"]),
            in_shape=in_shape,  # type: ignore[arg-type]
            options=dict(raw.get("options") or {}),
            mean=tuple(float(v) for v in raw.get("mean") or ()),
            std=tuple(float(v) for v in raw.get("std") or ()),
            dp_epsilon=None if dp is None else float(dp["epsilon"]),
            dp_delta=None if dp is None else float(dp.get("delta", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where} is not a valid model sidecar ({exc!s}); expected keys model, "
                         "num_classes, in_shape, options, mean, std and optionally dp") from exc
    channels = spec.in_shape[0]
    for name, values in (("mean", spec.mean), ("std", spec.std)):
        if len(values) not in (0, channels):
            raise ModelError(f"{where} has {len(values)} {name} values; expected {channels}")
    return spec


def load_model_file(path: Path | str) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model described by ``path.json`` and load the weights in ``path`` into it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; expected safetensors weights")
    if not side.is_file():
        raise ModelError(f"model sidecar {side} does not exist; expected JSON describing the model")
    try:
        raw = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"model sidecar {side} is not readable JSON ({exc})") from exc
    spec = _parse_spec(raw, side)
    model = build_model(spec.model, spec.num_classes, spec.in_shape, **spec.options)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"model file {path} is not readable safetensors ({exc})") from exc
    load_tensors_(model, tensors)
    return model.eval(), spec


__all__ = ["ModelSpec", "load_model_file", "save_model_file", "sidecar_path"]
