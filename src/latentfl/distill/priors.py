"""Generator priors by name: the interface the distillation needs, shipped priors, entry points.

A prior is any object with the :class:`GeneratorPrior` interface; the built-in
:class:`~latentfl.distill.generator.Generator` is one. ``generator_path`` in a distillation config
names one of three kinds:

* ``builtin:NAME``: a prior shipped inside the package (``latentfl/distill/builtin/NAME.*``; its
  README says what it was trained on and how to reproduce it);
* ``entrypoint:NAME``: the factory registered under ``NAME`` in the :data:`ENTRY_POINT_GROUP`
  entry-point group by an installed package, called as ``factory(mean=..., std=...)``;
* a path: weights written by ``latentfl generator train`` (``.safetensors`` + ``.json``).

Weights are read with safetensors only, never unpickled; a factory must do the same.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from latentfl.distill.generator import FLatent
from latentfl.distill.latent import load_generator
from latentfl.errors import DistillError

__all__ = ["ENTRY_POINT_GROUP", "GeneratorPrior", "builtin_priors", "load_prior", "prior_problem"]

ENTRY_POINT_GROUP = "latentfl.generators"
BUILTIN = "builtin:"
ENTRY_POINT = "entrypoint:"


@runtime_checkable
class GeneratorPrior(Protocol):
    """A frozen class-conditional generator split into F-space, as trajectory matching uses it.

    ``latents(labels, seed, layer=k)`` returns fresh, detached latents for int ``labels (B,)``,
    the same for the same seed: an :class:`FLatent` whose ``feature`` (trained at the
    feature-map learning rate) and ``styles`` (any further tensors with a leading batch
    dimension, trained at the style learning rate) are the state after split layer ``k``.
    ``render(latent)`` finishes the forward pass: images ``(B, *image_shape)``, differentiable in
    the latent's tensors and normalised with the ``mean``/``std`` the prior was made with (the
    data's, per channel, in [0, 1] pixel units). Split layers run from 0 to ``num_layers``;
    ``default_layer`` is used when a config names none. ``to(device)`` moves the prior and
    returns it (any ``torch.nn.Module`` does).
    """

    image_shape: tuple[int, int, int]
    num_classes: int
    num_layers: int
    default_layer: int

    def latents(self, labels: Tensor, seed: int, *, layer: int) -> FLatent: ...

    def render(self, latent: FLatent) -> Tensor: ...

    def to(self, device: torch.device | str) -> GeneratorPrior: ...


def _builtin_dir() -> Path:
    return Path(str(importlib.resources.files("latentfl.distill") / "builtin"))


def builtin_priors() -> list[str]:
    """Names of the priors shipped in the package (``builtin:NAME``)."""
    return sorted(p.stem for p in _builtin_dir().glob("*.safetensors"))


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def prior_problem(ref: str | Path) -> str | None:
    """Why ``ref`` names no prior (a sentence), or None; file paths are checked when loaded."""
    text = str(ref)
    if text.startswith(BUILTIN) and text[len(BUILTIN):] not in builtin_priors():
        return (f"generator_path '{text}' names no built-in prior; known: "
                f"{_listing(f'{BUILTIN}{n}' for n in builtin_priors())}.")
    if text.startswith(ENTRY_POINT) and text[len(ENTRY_POINT):] not in _entry_points():
        return (f"generator_path '{text}' names no installed '{ENTRY_POINT_GROUP}' entry point; "
                f"known: {_listing(f'{ENTRY_POINT}{n}' for n in sorted(_entry_points()))}.")
    return None


def _listing(names) -> str:
    return ", ".join(names) or "none"


def load_prior(ref: str | Path, *, mean: Sequence[float], std: Sequence[float]) -> GeneratorPrior:
    """The prior ``ref`` names (``builtin:NAME``, ``entrypoint:NAME`` or a weights file), rendering
    images normalised with ``mean``/``std``; raise DistillError if it names none."""
    problem = prior_problem(ref)
    if problem:
        raise DistillError(problem)
    text, mean, std = str(ref), tuple(mean), tuple(std)
    if text.startswith(BUILTIN):
        return load_generator(_builtin_dir() / f"{text[len(BUILTIN):]}.safetensors",
                              mean=mean, std=std)
    if not text.startswith(ENTRY_POINT):
        return load_generator(Path(ref), mean=mean, std=std)
    entry = _entry_points()[text[len(ENTRY_POINT):]]
    try:
        factory = entry.load()
    except (ImportError, AttributeError) as exc:
        raise DistillError(f"entry point '{entry.name}' ({entry.value}) does not load: {exc}.") \
            from None
    prior = factory(mean=mean, std=std)
    if not isinstance(prior, GeneratorPrior):
        raise DistillError(f"entry point '{entry.name}' ({entry.value}) returned a "
                           f"{type(prior).__name__}; expected an object with the GeneratorPrior "
                           f"interface (image_shape, num_classes, num_layers, default_layer, "
                           f"latents, render, to).")
    return prior
