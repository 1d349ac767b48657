"""Architectures, their registry, flat-parameter helpers and weight manifests.

``build_model(name, num_classes, in_shape, **options)`` builds any of ``MODEL_NAMES``. The flat
parameter order (``named_parameters()`` order) is defined in :mod:`latentfl.models.flat` alone;
a state's flat order (every manifest tensor, in manifest order) in :mod:`latentfl.models.manifest`.
"""

from latentfl.models.flat import (
    ParamShapes,
    flatten_named,
    flatten_params,
    functional_forward,
    load_flat_,
    num_params,
    param_shapes,
    unflatten_params,
)
from latentfl.models.manifest import (
    ModelManifest,
    all_finite,
    flatten_state,
    load_tensors_,
    model_manifest,
    state_length,
    state_to_tensors,
    unflatten_state,
)
from latentfl.models.registry import MODEL_NAMES, build_model, model_options

__all__ = [
    "MODEL_NAMES",
    "ModelManifest",
    "ParamShapes",
    "all_finite",
    "build_model",
    "flatten_named",
    "flatten_params",
    "flatten_state",
    "functional_forward",
    "load_flat_",
    "load_tensors_",
    "model_manifest",
    "model_options",
    "num_params",
    "param_shapes",
    "state_length",
    "state_to_tensors",
    "unflatten_params",
    "unflatten_state",
]
