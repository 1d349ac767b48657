"""``latentfl generator train`` on real image shapes: odd, non-square, any channel count, and
label-free (``--unconditional``) priors that FedDGM can distil in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from latentfl.cli import main
from latentfl.distill import DistillConfig, GeneratorConfig, random_generator
from latentfl.distill.latent import load_generator
from latentfl.simulate import PartitionConfig, SimulationConfig, run_simulation
from latentfl.strategies import ModelSpec, StrategyConfig
from latentfl.strategies.feddgm import FedDGMConfig
from latentfl.training import TrainConfig


def write_npz(path: Path, height: int, width: int, channels: int, n: int = 48) -> str:
    """``n`` random images of 3 classes, the class a brightness level, as an .npz spec."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.integers(0, 80, size=(n, height, width, channels)) + 80 * y[:, None, None, None]
    np.savez(path, x=x.astype(np.uint8), y=y.astype(np.int64),
             x_test=x[:12].astype(np.uint8), y_test=y[:12].astype(np.int64))
    return f"npz:{path}"


def train_cli(tmp_path: Path, data: str, *extra: str) -> int:
    return main(["generator", "train", "--data", data, "--out", str(tmp_path / "g.safetensors"),
                 "--steps", "2", "--batch-size", "4", "--device", "cpu", "--sample-every", "2",
                 "--base-channels", "16", *extra])


@pytest.mark.parametrize("shape", [(28, 28, 1), (64, 48, 3), (7, 5, 2)])
def test_generator_trains_on_odd_and_non_square_images(tmp_path, shape):
    """A few VAE steps at 28x28x1, 64x48x3 and 7x5x2; the saved prior renders that shape."""
    h, w, c = shape
    assert train_cli(tmp_path, write_npz(tmp_path / "d.npz", h, w, c)) == 0
    gen = load_generator(tmp_path / "g.safetensors")
    assert gen.image_shape == (c, h, w) and gen.conditional
    with torch.no_grad():
        images = gen.render(gen.latents(torch.tensor([0, 2]), 0, layer=gen.default_layer))
    assert images.shape == (2, c, h, w) and torch.isfinite(images).all()


def test_generator_renders_224_pixel_images():
    """A 224x224 generator (ImageNet-sized) renders at its size from every split layer."""
    gen = random_generator(GeneratorConfig(num_classes=2, image_size=224, base_channels=16,
                                           min_channels=4), seed=0)
    with torch.no_grad():
        for layer in (0, gen.num_layers):
            assert gen.render(gen.latents(torch.tensor([1]), 0, layer=layer)).shape == (
                1, 3, 224, 224)


def test_too_small_images_are_one_sentence(tmp_path, capsys):
    """Images under 4 pixels a side are refused with one sentence, exit 2, no traceback."""
    assert train_cli(tmp_path, write_npz(tmp_path / "d.npz", 3, 9, 1)) == 2
    err = capsys.readouterr().err
    assert "at least 4x4" in err and "Traceback" not in err


def test_unconditional_prior_ignores_labels_and_feddgm_distils_in_it(tmp_path):
    """--unconditional saves a label-free prior (same image for any label); FedDGM runs on it,
    its labels coming from the participants alone."""
    data = write_npz(tmp_path / "d.npz", 8, 8, 3, n=60)
    assert train_cli(tmp_path, data, "--unconditional") == 0
    path = tmp_path / "g.safetensors"
    gen = load_generator(path)
    assert not gen.conditional and gen.num_classes == 1
    with torch.no_grad():
        a = gen.render(gen.latents(torch.tensor([0, 0]), 3, layer=1))
        b = gen.render(gen.latents(torch.tensor([2, 7]), 3, layer=1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    spec = ModelSpec(name="convnet", num_classes=3, in_shape=(3, 8, 8),
                     options={"width": 4, "depth": 1})
    feddgm = FedDGMConfig(
        global_model=spec, ipc=1, mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu",
        distill=DistillConfig(iterations=2, steps=2, log_every=0, prior="trained",
                              generator_path=path),
        global_train=TrainConfig(epochs=1, batch_size=8), surrogate_train=TrainConfig(epochs=1))
    result = run_simulation(SimulationConfig(
        data=data, participants=2, rounds=1, device="cpu",
        partition=PartitionConfig(alpha=1.0, min_size=5),
        strategy=StrategyConfig(method="feddgm", model=spec, feddgm=feddgm,
                                local=TrainConfig(epochs=1, batch_size=8))))
    sets = result.strategy.synthetic_sets()
    assert sorted(sets) == ["p00", "p01"]
    assert sets["p00"].labels.tolist() == [0, 1, 2]
