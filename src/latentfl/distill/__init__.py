"""Dataset distillation by trajectory matching, in pixel space or a generator's latent space.

The engine behind FedDGM and DynaFed: :func:`distill` / :func:`distill_many` run the outer loop,
:func:`match_trajectory` one iteration's loss and gradients (``full`` or ``two_pass`` unroll),
:mod:`~latentfl.distill.augment` the differentiable augmentation, :class:`Generator` the built-in
class-conditional generator whose F-space latents :class:`GeneratorSpace` trains, and
:mod:`~latentfl.distill.priors` names the generator priors a config can choose (shipped ones,
entry points of other packages, trained files) behind the :class:`GeneratorPrior` interface.
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
from latentfl.distill.matching import MatchResult, batch_schedule, match_trajectory, step_seed
from latentfl.distill.priors import ENTRY_POINT_GROUP, GeneratorPrior, builtin_priors, load_prior
from latentfl.distill.synthesize import (
    DistillConfig,
    SyntheticSet,
    build_space,
    distill,
    distill_many,
    to_uint8,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "FAMILIES",
    "AugmentOp",
    "DistillConfig",
    "FLatent",
    "FunctionalStudent",
    "Generator",
    "GeneratorConfig",
    "GeneratorPrior",
    "GeneratorSpace",
    "MatchResult",
    "PixelSpace",
    "SyntheticSet",
    "apply_augment",
    "augment",
    "batch_schedule",
    "build_space",
    "builtin_priors",
    "default_split_layer",
    "distill",
    "distill_many",
    "draw_augment",
    "load_generator",
    "load_prior",
    "match_trajectory",
    "random_generator",
    "save_generator",
    "step_seed",
    "to_uint8",
]
