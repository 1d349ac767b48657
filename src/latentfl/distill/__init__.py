"""Dataset distillation by trajectory matching, in pixel space or a generator's latent space.

The engine behind FedDGM and DynaFed: :func:`distill` runs the outer loop towards fixed pairs
(:class:`FixedTargets`) or pairs drawn each iteration (:class:`SampledTargets`),
:func:`match_trajectory` one iteration's loss and gradients (``full`` or ``two_pass`` unroll),
:mod:`~latentfl.distill.augment` the differentiable augmentation, :class:`Generator` the built-in
class-conditional generator whose F-space latents :class:`GeneratorSpace` trains, and
:mod:`~latentfl.distill.priors` names the generator priors a config can choose (shipped ones,
entry points of other packages, trained files) behind the :class:`GeneratorPrior` interface.
:mod:`~latentfl.distill.jobs` describes a round's distillation as data that any process can run
(:class:`~latentfl.distill.jobs.DistillRequest`); :mod:`~latentfl.distill.distributed` runs one
over a ``torch.distributed`` process group and is imported only by the processes that do.
"""

from latentfl.distill.augment import FAMILIES, AugmentOp, apply_augment, augment, draw_augment
from latentfl.distill.functional import FunctionalStudent
from latentfl.distill.generator import FLatent, Generator, GeneratorConfig, default_split_layer
from latentfl.distill.latent import (
    GeneratorSpace,
    PixelSpace,
    load_generator,
    random_generator,
    save_generator,
)
from latentfl.distill.matching import MatchResult, batch_schedule, match_trajectory
from latentfl.distill.priors import ENTRY_POINT_GROUP, GeneratorPrior, builtin_priors, load_prior
from latentfl.distill.synthesize import (
    DistillConfig,
    SetSpec,
    Space,
    SyntheticSet,
    build_space,
    distill,
    to_uint8,
)
from latentfl.distill.targets import Batch, FixedTargets, SampledTargets, Targets

__all__ = [
    "ENTRY_POINT_GROUP",
    "FAMILIES",
    "AugmentOp",
    "Batch",
    "DistillConfig",
    "FLatent",
    "FixedTargets",
    "FunctionalStudent",
    "Generator",
    "GeneratorConfig",
    "GeneratorPrior",
    "GeneratorSpace",
    "MatchResult",
    "PixelSpace",
    "SampledTargets",
    "SetSpec",
    "Space",
    "SyntheticSet",
    "Targets",
    "apply_augment",
    "augment",
    "batch_schedule",
    "build_space",
    "builtin_priors",
    "default_split_layer",
    "distill",
    "draw_augment",
    "load_generator",
    "load_prior",
    "match_trajectory",
    "random_generator",
    "save_generator",
    "to_uint8",
]
