"""Where synthetic images live while they are distilled: pixel space or a generator's F-space.

A *space* turns trainable tensors into images and image gradients back into gradients of those
tensors:

* :class:`PixelSpace`: the images themselves are trained (initialised as Gaussian noise in the
  normalised space; the server has no real images to start from).
* :class:`GeneratorSpace`: F-space latents of a generator prior
  (:class:`~latentfl.distill.priors.GeneratorPrior`): the built-in
  :class:`~latentfl.distill.generator.Generator` randomly initialised from a seed (a deep image
  prior that needs no data) or trained by ``latentfl generator train`` on public data and loaded
  from safetensors + JSON, a prior shipped in the package, or one from an installed entry point.

Backprop to latents runs in two stages: :meth:`GeneratorSpace.render_for_grad` makes the images,
trajectory matching returns the image gradients, and the function it returned accumulates the
latent gradients. Up to ``chunk_size`` images keep their generator graph for that; beyond, so
memory stays bounded, they render without one and :meth:`GeneratorSpace.backward` replays the
generator chunk by chunk, calling ``autograd.backward(images_chunk, grad_chunk)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from latentfl.distill.generator import FLatent, Generator, GeneratorConfig
from latentfl.errors import DistillError

if TYPE_CHECKING:  # priors.py imports this module
    from latentfl.distill.priors import GeneratorPrior

__all__ = ["GeneratorSpace", "PixelSpace", "load_generator", "random_generator", "save_generator"]


class PixelSpace:
    """Train the normalised images directly; one tensor ``(B, C, H, W)``."""

    kind = "pixel"

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        self.image_shape = tuple(image_shape)

    def init(self, labels: Tensor, seed: int) -> list[Tensor]:
        """Gaussian-noise images for ``labels``, drawn from ``seed``."""
        gen = torch.Generator(device=labels.device)
        gen.manual_seed(seed)
        images = torch.randn(labels.shape[0], *self.image_shape, generator=gen,
                             device=labels.device)
        return [images.requires_grad_(True)]

    def lr_groups(self, params: list[Tensor], *, pixel: float, feature: float, style: float
                  ) -> list[dict]:
        """Optimiser parameter groups: the images at the pixel learning rate."""
        return [{"params": params, "lr": pixel}]

    def render(self, params: list[Tensor]) -> Tensor:
        """The images (detached)."""
        return params[0].detach()

    def backward(self, params: list[Tensor], image_grad: Tensor) -> None:
        """Accumulate ``image_grad`` into the images' ``.grad``."""
        torch.autograd.backward(params[0], image_grad, inputs=params)

    def render_for_grad(self, params: list[Tensor]) -> tuple[Tensor, Callable[[Tensor], None]]:
        """The images (detached) and the function that accumulates their gradient."""
        return self.render(params), lambda image_grad: self.backward(params, image_grad)


class GeneratorSpace:
    """Train F-space latents of a frozen generator prior at split layer ``layer``."""

    kind = "generator"

    def __init__(self, generator: GeneratorPrior, *, layer: int | None = None,
                 chunk_size: int = 256) -> None:
        self.generator = generator
        self.layer = generator.default_layer if layer is None else layer
        if not 0 <= self.layer <= generator.num_layers:
            raise DistillError(f"split layer {self.layer} is out of range; expected "
                               f"0..{generator.num_layers}.")
        self.chunk_size = chunk_size
        self.image_shape = tuple(generator.image_shape)

    def init(self, labels: Tensor, seed: int) -> list[Tensor]:
        """Fresh latents for ``labels`` from ``seed``: ``[feature, *styles]``, trainable."""
        lat = self.generator.latents(labels, seed, layer=self.layer)
        return [t.requires_grad_(True) for t in lat.tensors()]

    def lr_groups(self, params: list[Tensor], *, pixel: float, feature: float, style: float
                  ) -> list[dict]:
        """Optimiser parameter groups: feature maps and style codes at their own rates."""
        return [{"params": params[:1], "lr": feature}, {"params": params[1:], "lr": style}]

    def latent(self, params: list[Tensor]) -> FLatent:
        """The F-space latent made of the trainable tensors (differentiable)."""
        return FLatent(params[0], list(params[1:]), self.layer)

    def render(self, params: list[Tensor]) -> Tensor:
        """Images from the latents, without an autograd graph."""
        with torch.no_grad():
            lat = self.latent([p.detach() for p in params])
            n = params[0].shape[0]
            return torch.cat([self.generator.render(lat.slice(a, a + self.chunk_size))
                              for a in range(0, n, self.chunk_size)])

    def backward(self, params: list[Tensor], image_grad: Tensor) -> None:
        """Accumulate latent gradients by replaying the generator ``chunk_size`` images at a time."""
        lat = self.latent(params)
        for a in range(0, image_grad.shape[0], self.chunk_size):
            images = self.generator.render(lat.slice(a, a + self.chunk_size))
            torch.autograd.backward(images, image_grad[a:a + self.chunk_size], inputs=params)

    def render_for_grad(self, params: list[Tensor]) -> tuple[Tensor, Callable[[Tensor], None]]:
        """The images (detached) and the function that accumulates their gradient into the
        latents. Up to ``chunk_size`` images render once and keep their graph for it; more
        render without one and :meth:`backward` replays them chunk by chunk."""
        if params[0].shape[0] > self.chunk_size:
            return self.render(params), lambda image_grad: self.backward(params, image_grad)
        images = self.generator.render(self.latent(params))
        return images.detach(), lambda image_grad: torch.autograd.backward(
            images, image_grad, inputs=params)


def random_generator(config: GeneratorConfig, *, seed: int,
                     mean: tuple[float, ...] | None = None,
                     std: tuple[float, ...] | None = None) -> Generator:
    """A randomly initialised generator (deep image prior), the same for the same seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Generator(config, mean=mean, std=std)


def save_generator(generator: Generator, path: Path, *, meta: dict | None = None) -> Path:
    """Write weights to ``path`` (safetensors) and ``path.with_suffix('.json')`` (config, meta)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    save_file(tensors, str(path))
    doc = {"format": "latentfl-generator/1", "config": asdict(generator.config),
           "meta": meta or {}}
    path.with_suffix(".json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def load_generator(path: Path, *, mean: tuple[float, ...] | None = None,
                   std: tuple[float, ...] | None = None) -> Generator:
    """Load a generator written by :func:`save_generator`; raise DistillError if it does not fit."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path = path.with_suffix(".json")
    try:
        doc = json.loads(cfg_path.read_text())
        names = {f.name for f in fields(GeneratorConfig)}
        config = GeneratorConfig(**{k: v for k, v in doc["config"].items() if k in names})
        tensors = {k: v.float() if v.is_floating_point() else v  # fp16 files load as fp32
                   for k, v in load_file(str(path)).items()}
    except FileNotFoundError as exc:
        raise DistillError(f"generator file {exc.filename} does not exist; expected weights "
                           f"{path} and config {cfg_path} from 'latentfl generator train'.") from None
    except (ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise DistillError(f"generator files {path} / {cfg_path} are not a latentfl generator: "
                           f"{exc}.") from None
    generator = Generator(config, mean=mean, std=std)
    try:
        generator.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DistillError(f"generator weights {path} do not fit its config: {first}.") from None
    return generator
