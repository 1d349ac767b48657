"""Generator priors: the VAE design trains and reloads, the shipped prior, priors by name."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from latentfl.config import from_dict
from latentfl.distill import DistillConfig, GeneratorConfig, build_space, random_generator
from latentfl.distill.latent import load_generator
from latentfl.distill.priors import GeneratorPrior, builtin_priors, load_prior
from latentfl.distill.train_prior import train_prior
from latentfl.distill.vae import VaeDesign
from latentfl.errors import ConfigError, DistillError
from latentfl.simulate import run_simulation
from latentfl.strategies import ModelSpec
from latentfl.strategies.feddgm import FedDGMConfig
from latentfl.training import TrainConfig
from test_simulate import config, tiny_dataset  # the simulator tests' tiny 3-class task

CONFIG = GeneratorConfig(num_classes=3, image_size=8, z_dim=8, w_dim=16, base_channels=16,
                         min_channels=8)
CIFAR_MEAN, CIFAR_STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _images(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=gen), torch.arange(n) % 3


def test_vae_prior_trains_a_few_steps_and_reloads_identically(tmp_path):
    """Training the VAE prior changes the decoder; the saved file reloads to the same outputs."""
    gen = random_generator(CONFIG, seed=0, mean=(0.5,) * 3, std=(0.25,) * 3)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    x, y = _images()
    result = train_prior(VaeDesign(gen), x, y, out=tmp_path / "p.safetensors", steps=4,
                         batch_size=8, sample_every=2, progress=False)
    assert set(result.losses) == {"reconstruction", "kl"}
    assert [p.name for p in result.samples] == ["p-samples-000002.png", "p-samples-000004.png"]
    assert any(not torch.equal(before[k], v) for k, v in gen.state_dict().items())
    back = load_generator(result.weights, mean=(0.5,) * 3, std=(0.25,) * 3)
    for k, v in gen.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(back.render(back.latents(labels, 5, layer=1)),
                                   gen.render(gen.latents(labels, 5, layer=1)), rtol=0, atol=0)


def test_shipped_prior_loads_and_renders_cifar_images():
    """builtin:cifar10-public is a small 32x32 RGB, 10-class prior rendering in the data's range."""
    assert "cifar10-public" in builtin_priors()
    prior = load_prior("builtin:cifar10-public", mean=CIFAR_MEAN, std=CIFAR_STD)
    assert isinstance(prior, GeneratorPrior)
    assert prior.image_shape == (3, 32, 32) and prior.num_classes == 10
    with torch.no_grad():
        images = prior.render(prior.latents(torch.arange(10), 0, layer=prior.default_layer))
    assert images.shape == (10, 3, 32, 32) and torch.isfinite(images).all()
    pixels = images * torch.tensor(CIFAR_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR_MEAN).view(
        1, 3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert pixels.std() > 0.05  # images, not a flat colour
    folder = Path(__import__("latentfl.distill", fromlist=["x"]).__file__).parent / "builtin"
    assert sum(p.stat().st_size for p in folder.glob("cifar10-public.*")) < 5 * 2**20


def test_config_names_the_shipped_prior_and_refuses_unknown_names(tmp_path):
    """generator_path 'builtin:NAME' stays as written in a config file; an unknown name lists
    the known ones."""
    cfg = from_dict(DistillConfig, {"prior": "trained", "generator_path": "builtin:cifar10-public"},
                    base_dir=tmp_path)
    assert str(cfg.generator_path) == "builtin:cifar10-public"
    space = build_space(cfg, image_shape=(3, 32, 32), num_classes=10, mean=CIFAR_MEAN,
                        std=CIFAR_STD, seed=0)
    assert space.image_shape == (3, 32, 32)
    with pytest.raises(ConfigError, match="names no built-in prior; known: builtin:cifar10-public"):
        from_dict(DistillConfig, {"prior": "trained", "generator_path": "builtin:imagenet"})
    with pytest.raises(DistillError, match="no installed 'latentfl.generators' entry point"):
        load_prior("entrypoint:no-such-generator", mean=CIFAR_MEAN, std=CIFAR_STD)
    relative = from_dict(DistillConfig, {"generator_path": "runs/g.safetensors"}, base_dir=tmp_path)
    assert relative.generator_path == tmp_path / "runs" / "g.safetensors"


TINY_PRIOR = textwrap.dedent('''
    """A third-party generator prior: 4x4 feature maps upsampled to 8x8 RGB, weights in safetensors."""
    from pathlib import Path

    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from latentfl.distill import FLatent

    RENDERED = [0]  # images rendered, so a test can see the distillation ran through this prior


    class TinyPrior(torch.nn.Module):
        image_shape = (3, 8, 8)
        num_classes = 3
        num_layers = 1
        default_layer = 1

        def __init__(self, mean, std):
            super().__init__()
            self.embed = torch.nn.Embedding(3, 8 * 16)
            self.to_rgb = torch.nn.Conv2d(8, 3, 3, padding=1)
            self.load_state_dict(load_file(str(Path(__file__).with_name("tiny.safetensors"))))
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

        def latents(self, labels, seed, *, layer):
            gen = torch.Generator(device=labels.device).manual_seed(seed)
            noise = torch.randn(labels.shape[0], 8, 4, 4, generator=gen, device=labels.device)
            with torch.no_grad():
                feature = self.embed(labels).view(-1, 8, 4, 4) + 0.1 * noise
            return FLatent(feature.contiguous(), [torch.ones(labels.shape[0], 8)], layer)

        def render(self, latent):
            RENDERED[0] += latent.feature.shape[0]
            h = latent.feature * latent.styles[0][:, :, None, None]
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
            return ((torch.tanh(self.to_rgb(h)) + 1) / 2 - self.mean) / self.std


    def make(*, mean, std):
        return TinyPrior(mean, std)
''')


def _install_tiny_prior(root: Path) -> None:
    """A package on sys.path with a real dist-info that registers 'tiny-test' as a generator."""
    from safetensors.torch import save_file

    (root / "latentfl_test_tinyprior").mkdir()
    (root / "latentfl_test_tinyprior" / "__init__.py").write_text(TINY_PRIOR)
    torch.manual_seed(0)
    weights = {"embed.weight": torch.randn(3, 128), "to_rgb.weight": torch.randn(3, 8, 3, 3) * 0.3,
               "to_rgb.bias": torch.zeros(3)}
    save_file(weights, str(root / "latentfl_test_tinyprior" / "tiny.safetensors"))
    info = root / "latentfl_test_tinyprior-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: latentfl-test-tinyprior\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[latentfl.generators]\ntiny-test = latentfl_test_tinyprior:make\n")


def test_entry_point_generator_runs_a_feddgm_round(tmp_path, monkeypatch):
    """A generator registered in 'latentfl.generators' by an installed package drives FedDGM."""
    _install_tiny_prior(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    distill = from_dict(DistillConfig, {"prior": "trained", "generator_path": "entrypoint:tiny-test",
                                        "iterations": 3, "steps": 2, "log_every": 0,
                                        "optimizer": "adam", "lr_feature": 0.05,
                                        "lr_style": 0.05}, base_dir=tmp_path)
    prior = load_prior(distill.generator_path, mean=(0.3,) * 3, std=(0.3,) * 3)
    assert type(prior).__module__ == "latentfl_test_tinyprior"
    feddgm = FedDGMConfig(
        global_model=ModelSpec(name="convnet", num_classes=3, in_shape=(3, 8, 8),
                               options={"width": 8, "depth": 1}),
        ipc=2, mean=(0.3, 0.3, 0.3), std=(0.3, 0.3, 0.3), device="cpu", distill=distill,
        global_train=TrainConfig(epochs=2, batch_size=8, lr=0.05),
        surrogate_train=TrainConfig(epochs=2, batch_size=8, lr=0.05))
    result = run_simulation(replace(config("feddgm", feddgm=feddgm), rounds=1),
                            dataset=tiny_dataset())
    images = result.strategy.synthetic["p00"].images
    assert images.shape == (6, 3, 8, 8) and torch.isfinite(images).all()
    assert sys.modules["latentfl_test_tinyprior"].RENDERED[0] > 18  # initial render and more
    assert 0.0 <= result.history[-1].accuracy <= 1.0
