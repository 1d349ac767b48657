"""The TASK's options as a type: one encoder (:meth:`TaskOptions.meta`) and one strict decoder
(:meth:`TaskOptions.from_meta`).

A TASK's payload is the weights (safetensors); its signed header's meta holds the options:

    train        JSON of the TrainConfig (the participant's local training settings)
    model        JSON of the ModelSpec (registry name and options, never code)
    aggregation  how the update will be aggregated (:class:`~latentfl.privacy.Aggregation`)
    update       what the participant returns (:class:`UpdateForm`)
    manifest     digest of the model manifest both sides check the tensors against
    secagg       secagg and ckks only: the round's masking parameters (the secagg codec's)
    method       the method the coordinator runs with the updates (e.g. ``feddgm``, which
                 distils each upload into synthetic images), for the site's approval policy;
                 gated (:data:`GATED_TASK_META`): sent only to an agent whose HELLO lists it
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from latentfl.config import from_dict, to_dict
from latentfl.errors import ConfigError, ModelError, ProtocolError, Reason
from latentfl.platform.protocol._codec import unpack_json
from latentfl.platform.protocol._control import check_meta_keys
from latentfl.platform.protocol._header import Kind
from latentfl.platform.protocol._json import canonical_json
from latentfl.privacy.modes import Aggregation
from latentfl.strategies.base import ModelSpec
from latentfl.training import TrainConfig

REQUIRED = ("train", "model", "aggregation", "update", "manifest")
OPTIONAL = ("secagg", "method")
GATED_TASK_META = frozenset({"method"})
"""Optional TASK keys added after agents were deployed: the coordinator sends one only to an
agent whose HELLO says it decodes it (an older agent's strict decoder refuses an unknown key)."""
_METHOD = re.compile(r"[a-z][a-z0-9_]{0,31}")


class UpdateForm(StrEnum):
    """What a participant returns for a task."""

    WEIGHTS = "weights"  # its trained weights
    NORMALISED = "normalised"  # FedNova: start + (trained - start) / a, a its local step count


@dataclass(frozen=True)
class TaskOptions:
    """Everything a TASK says besides its weights (see the module docstring)."""

    train: TrainConfig
    model: ModelSpec
    aggregation: Aggregation
    manifest: str
    update: UpdateForm = UpdateForm.WEIGHTS
    secagg: str | None = None
    method: str | None = None

    def meta(self) -> dict[str, Any]:
        meta = {"train": canonical_json(to_dict(self.train)).decode("ascii"),
                "model": canonical_json(to_dict(self.model)).decode("ascii"),
                "aggregation": self.aggregation.value, "update": self.update.value,
                "manifest": self.manifest}
        optional = {"secagg": self.secagg, "method": self.method}
        return meta | {k: v for k, v in optional.items() if v is not None}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> TaskOptions:
        """The options of a TASK's meta; ProtocolError 'malformed' for anything undefined,
        missing or invalid."""
        check_meta_keys(Kind.TASK, meta, required=REQUIRED, optional=OPTIONAL)
        try:
            train = from_dict(TrainConfig, _json(meta, "train"), source="TASK train")
            model = from_dict(ModelSpec, _json(meta, "model"), source="TASK model")
            model.manifest()  # builds it (once per distinct spec): refused if it cannot
        except (ConfigError, ModelError, TypeError, ValueError) as exc:
            raise ProtocolError(Reason.MALFORMED, f"TASK settings are refused: {exc}") from None
        aggregation = _choice(meta, "aggregation", Aggregation)
        update = _choice(meta, "update", UpdateForm)
        manifest, secagg, method = meta["manifest"], meta.get("secagg"), meta.get("method")
        if not isinstance(manifest, str) or not (secagg is None or isinstance(secagg, str)):
            raise ProtocolError(Reason.MALFORMED, "TASK manifest and secagg must be strings.")
        if "method" in meta and not (isinstance(method, str) and _METHOD.fullmatch(method)):
            raise ProtocolError(Reason.MALFORMED, f"TASK method is {str(method)[:40]!r}; expected "
                                                  "a method name (a-z, 0-9, _; at most 32).")
        return cls(train, model, aggregation, manifest, update, secagg, method)


def _json(meta: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = meta[key]
    if not isinstance(value, str):
        raise ProtocolError(Reason.MALFORMED, f"TASK meta {key!r} is {value!r}; expected a JSON "
                                              "object as a string.")
    return unpack_json(value.encode("utf-8"))


def _choice(meta: Mapping[str, Any], key: str, enum: type[StrEnum]) -> Any:
    try:
        return enum(meta[key])
    except ValueError:
        raise ProtocolError(Reason.MALFORMED, f"TASK {key} is {str(meta[key])[:40]!r}; expected "
                                              f"one of {[e.value for e in enum]}.") from None


__all__ = ["GATED_TASK_META", "TaskOptions", "UpdateForm"]
