"""The distillation loop: loss goes down, participants batch correctly, DynaFed's pair sampler."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from latentfl.config import from_dict
from latentfl.distill import DistillConfig, build_space, distill, distill_many, save_generator
from latentfl.distill.generator import GeneratorConfig
from latentfl.distill.latent import random_generator
from latentfl.errors import ConfigError, DistillError
from latentfl.models import build_model, flatten_params

SHAPE = (3, 8, 8)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _model_and_target(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("convnet", 4, SHAPE, width=8, depth=1)
    start = flatten_params(model)
    # a real target: a few SGD steps on random "private" data
    x, y = torch.randn(32, *SHAPE), torch.arange(32) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, start, flatten_params(model)


def _space(cfg, seed=0):
    return build_space(cfg, image_shape=SHAPE, num_classes=4, mean=MEAN, std=STD, seed=seed)


@pytest.mark.parametrize("prior,unroll", [("pixel", "full"), ("random", "two_pass"),
                                          ("random", "full")])
def test_distill_lowers_the_matching_loss(prior, unroll):
    """A few iterations lower the loss; the result has IPC images per class and a positive alpha."""
    model, start, target = _model_and_target()
    cfg = DistillConfig(iterations=12, steps=5, batch_size=6, prior=prior, unroll=unroll,
                        optimizer="adam", lr_pixel=0.05, lr_feature=0.05, lr_style=0.05,
                        alpha_lr=1e-4, log_every=0)
    out = distill(start, target, model, num_classes=4, ipc=2, space=_space(cfg), config=cfg,
                  seed=1)
    assert out.images.shape == (8, *SHAPE) and out.images.dtype == torch.float32
    assert out.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert out.soft_labels is None and out.alpha > 0 and len(out.losses) == 12
    assert min(out.losses[-3:]) < out.losses[0]


def test_soft_labels_are_learned():
    """With soft labels on, the returned label distributions moved from their initial values."""
    model, start, target = _model_and_target()
    cfg = DistillConfig(iterations=3, steps=3, prior="pixel", soft_labels=True, lr_labels=50.0,
                        log_every=0)
    out = distill(start, target, model, num_classes=4, ipc=1, space=_space(cfg), config=cfg)
    assert out.soft_labels.shape == (4, 4)
    torch.testing.assert_close(out.soft_labels.sum(1), torch.ones(4))
    assert not torch.allclose(out.soft_labels.diagonal(), torch.full((4,), 0.9), atol=1e-5)


def test_distill_many_equals_one_participant_at_a_time():
    """Participants batched in one loop get the sets they get when distilled one by one."""
    model, start, target = _model_and_target()
    _, _, target2 = _model_and_target(seed=1)
    cfg = DistillConfig(iterations=3, steps=2, prior="random", augment=False, log_every=0,
                        unroll="full")
    starts, targets = torch.stack([start, start]), torch.stack([target, target2])
    many = distill_many(starts, targets, model, num_classes=4, ipc=1, space=_space(cfg),
                        config=cfg, seed=5)
    for p in range(2):
        one = distill(starts[p], targets[p], model, num_classes=4, ipc=1, space=_space(cfg),
                      config=cfg, seed=5 + p)
        torch.testing.assert_close(many[p].images, one.images, rtol=1e-4, atol=1e-4)
        assert many[p].losses == pytest.approx(one.losses, rel=1e-4)


def test_sample_pair_draws_a_pair_per_iteration():
    """sample_pair is called once per iteration with a seeded generator (DynaFed's use)."""
    model, start, target = _model_and_target()
    snapshots = torch.stack([start, 0.5 * (start + target), target])
    calls = []

    def sample_pair(iteration, gen):
        calls.append(iteration)
        i = int(torch.randint(0, 2, (1,), generator=gen))
        return snapshots[i], snapshots[i + 1:].mean(0)

    cfg = DistillConfig(iterations=4, steps=2, prior="pixel", soft_labels=True, log_every=0)
    out = distill(None, None, model, num_classes=4, ipc=1, space=_space(cfg), config=cfg,
                  sample_pair=sample_pair, classes=[1, 3])
    assert calls == [0, 1, 2, 3]
    assert out.labels.tolist() == [1, 3] and len(out.losses) == 4


def test_trained_prior_loads_and_checks_shape(tmp_path):
    """prior 'trained' loads a saved generator and refuses one made for other images."""
    path = save_generator(random_generator(GeneratorConfig(num_classes=4, image_size=8,
                                                           base_channels=16), seed=0),
                          tmp_path / "g.safetensors")
    cfg = DistillConfig(prior="trained", generator_path=path)
    assert _space(cfg).image_shape == SHAPE
    with pytest.raises(DistillError, match="expected"):
        build_space(cfg, image_shape=(3, 16, 16), num_classes=4, mean=MEAN, std=STD, seed=0)


def test_config_from_toml_table_and_problems():
    """DistillConfig loads from a TOML-shaped table and refuses 'trained' without a path."""
    cfg = from_dict(DistillConfig, {"iterations": 5, "unroll": "two_pass", "batch_size": 10})
    assert cfg.iterations == 5 and cfg.unroll == "two_pass" and cfg.steps == 20
    with pytest.raises(ConfigError, match="generator_path"):
        from_dict(DistillConfig, {"prior": "trained"})
    with pytest.raises(ConfigError):
        from_dict(DistillConfig, {"unroll": "three_pass"})


def test_identical_start_and_target_is_refused():
    """A start equal to its target has no trajectory; distill says so."""
    model, start, _ = _model_and_target()
    cfg = dataclasses.replace(DistillConfig(), iterations=1, prior="pixel")
    with pytest.raises(DistillError, match="equals its target"):
        distill(start, start.clone(), model, num_classes=4, ipc=1, space=_space(cfg), config=cfg)


def test_to_uint8_inverts_the_normalisation():
    """to_uint8 maps normalised images back to the uint8 NHWC pixels they came from."""
    from latentfl.distill import to_uint8

    pixels = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    images = (pixels.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    assert (to_uint8(images, MEAN, STD) == pixels.numpy()).all()


def test_participant_classes_batch_equal_class_sets():
    """Per-participant classes: each set has its own labels and equals a one-by-one run."""
    model, start, target = _model_and_target()
    cfg = DistillConfig(iterations=2, steps=2, prior="pixel", augment=False, log_every=0)
    starts = torch.stack([start, start, start])
    targets = torch.stack([target, 0.5 * (start + target), 0.2 * start + 0.8 * target])
    per = [[0, 2], [1, 3], [0, 2]]
    many = distill_many(starts, targets, model, num_classes=4, ipc=1, space=_space(cfg),
                        config=cfg, seed=3, participant_classes=per)
    for p in range(3):
        assert many[p].labels.tolist() == per[p]
        one = distill(starts[p], targets[p], model, num_classes=4, ipc=1, space=_space(cfg),
                      config=cfg, seed=3 + p, classes=per[p])
        torch.testing.assert_close(many[p].images, one.images, rtol=1e-4, atol=1e-4)
    with pytest.raises(DistillError, match="one class list per participant"):
        distill_many(starts, targets, model, num_classes=4, ipc=1, space=_space(cfg), config=cfg,
                     participant_classes=per[:2])
    with pytest.raises(DistillError, match="not valid"):
        distill(start, target, model, num_classes=4, ipc=1, space=_space(cfg), config=cfg,
                classes=[4])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("unroll", ["full", "two_pass"])
def test_distill_many_runs_on_cuda(unroll):
    """Batched distillation in the generator's F-space runs on CUDA with finite losses."""
    model, start, target = _model_and_target()
    cfg = DistillConfig(iterations=3, steps=3, batch_size=4, prior="random", unroll=unroll,
                        log_every=0)
    space = build_space(cfg, image_shape=SHAPE, num_classes=4, mean=MEAN, std=STD, seed=0,
                        device="cuda")
    sets = distill_many(torch.stack([start, start]), torch.stack([target, 0.5 * (start + target)]),
                        model, num_classes=4, ipc=2, space=space, config=cfg, device="cuda")
    assert len(sets) == 2 and all(torch.isfinite(torch.tensor(s.losses)).all() for s in sets)
    assert sets[0].images.device.type == "cpu"
