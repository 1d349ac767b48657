"""Baseline ``prior_only``: FedDGM's server training on plain samples of its prior.

No participant is asked anything. Each round the server draws, for every participant selected
that round, ``ipc`` class-conditional samples of each class from the same prior FedDGM distils
in (the undistilled starting latents, rendered), so its training set holds as many images as
FedDGM's would, and trains the global model exactly as FedDGM does (``accumulate`` included;
the surrogate is left alone, since no participant receives it). What it reaches is what the prior alone knows about the labels; the
gap to FedDGM is what the participants add. With a label-free prior there is no class to
sample, so the baseline does not apply and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from latentfl.distill import SyntheticSet
from latentfl.distill.latent import GeneratorSpace, PixelSpace
from latentfl.distill.synthesize import build_space
from latentfl.errors import ConfigError
from latentfl.log import get_logger
from latentfl.seeding import derive_seed
from latentfl.strategies.base import Task, Update
from latentfl.strategies.feddgm import FedDGM

log = get_logger("prior_only")


class PriorOnly(FedDGM):
    """FedDGM with its distilled sets replaced by undistilled prior samples (module docstring)."""

    name = "prior_only"

    def initialize(self, seed: int) -> None:
        super().initialize(seed)
        self._space: GeneratorSpace | PixelSpace | None = None
        self._slots = 0

    def configure_round(self, round: int, participants: Sequence[str]) -> dict[str, Task]:
        self._slots = len(participants)  # one prior set per participant FedDGM would distil for
        return {}

    def aggregate_round(self, round: int, updates: Sequence[Update]) -> dict[str, float]:
        space = self._prior_space()
        spec = self.model_spec
        labels = torch.arange(spec.num_classes).repeat_interleave(self.config.ipc)
        sets = []
        for slot in range(max(self._slots, 1)):
            params = space.init(labels, derive_seed(self._seed, "prior-only", round, slot))
            sets.append(SyntheticSet(space.render(params).float().cpu(), labels, None, 0.0, ()))
        self.synthetic = {f"prior-{slot:02d}": s for slot, s in enumerate(sets)}
        metrics = self._train_on_sets(round, sets, surrogate=False)  # no participant uses it
        log.info("prior_only_round", round=round, **metrics)
        return metrics

    def _prior_space(self) -> GeneratorSpace | PixelSpace:
        if self._space is None:
            spec, cfg = self.model_spec, self.config
            self._space = build_space(cfg.distill, image_shape=tuple(spec.in_shape),
                                      num_classes=spec.num_classes, mean=cfg.mean, std=cfg.std,
                                      seed=self._seed)
            generator = getattr(self._space, "generator", None)
            if generator is not None and not getattr(generator, "conditional", True):
                raise ConfigError(
                    f"prior_only samples the prior class by class, but "
                    f"{cfg.distill.generator_path} is a label-free prior with no class to "
                    "sample; the baseline does not apply (report it as n/a).")
        return self._space


__all__ = ["PriorOnly"]
