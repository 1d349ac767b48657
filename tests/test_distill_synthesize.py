"""The distillation loop: loss goes down, participants batch correctly, pairs drawn per iteration."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from latentfl.config import from_dict
from latentfl.distill import (
    DistillConfig,
    FixedTargets,
    SampledTargets,
    SetSpec,
    build_space,
    distill,
    save_generator,
)
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


def _distill(starts, targets, model, cfg, *, ipc=1, seed=0, classes=None):
    """The sets of fixed pairs ``starts``/``targets (P, D)``, 4 classes, the config's space."""
    return distill(FixedTargets(starts, targets, classes), model, spec=SetSpec(4, ipc),
                   space=_space(cfg), config=cfg, seed=seed)


@pytest.mark.parametrize("prior,unroll", [("pixel", "full"), ("random", "two_pass"),
                                          ("random", "full")])
def test_distill_lowers_the_matching_loss(prior, unroll):
    """A few iterations lower the loss; the result has IPC images per class and a positive alpha."""
    model, start, target = _model_and_target()
    cfg = DistillConfig(iterations=12, steps=5, batch_size=6, prior=prior, unroll=unroll,
                        optimizer="adam", lr_pixel=0.05, lr_feature=0.05, lr_style=0.05,
                        alpha_lr=1e-4, log_every=0)
    (out,) = _distill(start[None], target[None], model, cfg, ipc=2, seed=1)
    assert out.images.shape == (8, *SHAPE) and out.images.dtype == torch.float32
    assert out.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert out.soft_labels is None and out.alpha > 0 and len(out.losses) == 12
    assert min(out.losses[-3:]) < out.losses[0]


def test_soft_labels_are_learned():
    """With soft labels on, the returned label distributions moved from their initial values."""
    model, start, target = _model_and_target()
    cfg = DistillConfig(iterations=3, steps=3, prior="pixel", soft_labels=True, lr_labels=50.0,
                        log_every=0)
    (out,) = _distill(start[None], target[None], model, cfg)
    assert out.soft_labels.shape == (4, 4)
    torch.testing.assert_close(out.soft_labels.sum(1), torch.ones(4))
    assert not torch.allclose(out.soft_labels.diagonal(), torch.full((4,), 0.9), atol=1e-5)


def test_batched_participants_equal_one_at_a_time():
    """A batched participant gets the set it gets alone, whatever the others in its batch match."""
    model, start, target = _model_and_target()
    _, _, target2 = _model_and_target(seed=1)
    cfg = DistillConfig(iterations=3, steps=2, prior="random", augment=False, log_every=0,
                        unroll="full")
    starts = torch.stack([start, start])
    for first, second in ((target, target2), (target2, target)):
        many = _distill(starts, torch.stack([first, second]), model, cfg, seed=5)
        (one,) = _distill(start[None], first[None], model, cfg, seed=5)
        torch.testing.assert_close(many[0].images, one.images, rtol=1e-4, atol=1e-4)
        assert many[0].losses == pytest.approx(one.losses, rel=1e-4)
        assert many[1].losses != pytest.approx(one.losses, rel=1e-4)


def test_sampled_targets_draw_a_pair_per_iteration():
    """SampledTargets calls its sampler once per iteration with a seeded generator (DynaFed's use)."""
    model, start, target = _model_and_target()
    snapshots = torch.stack([start, 0.5 * (start + target), target])
    calls = []

    def sample(iteration, gen):
        calls.append(iteration)
        i = int(torch.randint(0, 2, (1,), generator=gen))
        return snapshots[i][None], snapshots[i + 1:].mean(0)[None]

    cfg = DistillConfig(iterations=4, steps=2, prior="pixel", soft_labels=True, log_every=0)
    targets = SampledTargets(sample, classes=[1, 3])
    (out,) = distill(targets, model, spec=SetSpec(4, 1), space=_space(cfg), config=cfg)
    assert calls == [0, 1, 2, 3]
    assert out.labels.tolist() == [1, 3] and len(out.losses) == 4
    (again,) = distill(targets, model, spec=SetSpec(4, 1), space=_space(cfg), config=cfg)
    assert calls == [0, 1, 2, 3] * 2 and torch.equal(out.images, again.images)
    wrong = SampledTargets(sample, participants=2)
    with pytest.raises(DistillError, match=r"expected both \(2, D\)"):
        distill(wrong, model, spec=SetSpec(4, 1), space=_space(cfg), config=cfg)


def test_uniform_label_init_and_adam_step_size():
    """label_init 'uniform' starts every soft label at 1/K; Adam moves alpha by about alpha_lr."""
    model, start, target = _model_and_target()
    cfg = DistillConfig(iterations=1, steps=2, prior="pixel", soft_labels=True, lr_labels=0.0,
                        label_init="uniform", alpha_optimizer="adam", alpha_lr=1e-3, log_every=0)
    (out,) = _distill(start[None], target[None], model, cfg)
    torch.testing.assert_close(out.soft_labels, torch.full((4, 4), 0.25))
    assert abs(out.alpha - cfg.alpha_init) == pytest.approx(1e-3, rel=1e-3)


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
        _distill(start[None], start[None].clone(), model, cfg)


def test_to_uint8_inverts_the_normalisation():
    """to_uint8 maps normalised images back to the uint8 NHWC pixels they came from."""
    from latentfl.distill import to_uint8

    pixels = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    images = (pixels.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    assert (to_uint8(images, MEAN, STD) == pixels.numpy()).all()


def test_participant_classes_batch_equal_class_sets():
    """Per-participant classes: each set has its own labels and equals a run where every
    participant shares its class list (so grouping by classes changes no numbers)."""
    model, start, target = _model_and_target()
    cfg = DistillConfig(iterations=2, steps=2, prior="pixel", augment=False, log_every=0)
    starts = torch.stack([start, start, start])
    targets = torch.stack([target, 0.5 * (start + target), 0.2 * start + 0.8 * target])
    per = [[0, 2], [1, 3], [0, 2]]
    many = _distill(starts, targets, model, cfg, seed=3, classes=per)
    for p in range(3):
        assert many[p].labels.tolist() == per[p]
        shared = _distill(starts, targets, model, cfg, seed=3, classes=[per[p]] * 3)
        torch.testing.assert_close(many[p].images, shared[p].images, rtol=1e-4, atol=1e-4)
    with pytest.raises(DistillError, match="one class list per participant"):
        FixedTargets(starts, targets, per[:2])
    with pytest.raises(DistillError, match="not valid"):
        _distill(start[None], target[None], model, cfg, classes=[[4]])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("unroll", ["full", "two_pass"])
def test_batched_distillation_runs_on_cuda(unroll):
    """Batched distillation in the generator's F-space runs on CUDA with finite losses."""
    model, start, target = _model_and_target()
    cfg = DistillConfig(iterations=3, steps=3, batch_size=4, prior="random", unroll=unroll,
                        log_every=0)
    space = build_space(cfg, image_shape=SHAPE, num_classes=4, mean=MEAN, std=STD, seed=0,
                        device="cuda")
    targets = FixedTargets(torch.stack([start, start]),
                           torch.stack([target, 0.5 * (start + target)]))
    sets = distill(targets, model, spec=SetSpec(4, 2), space=space, config=cfg, device="cuda")
    assert len(sets) == 2 and all(torch.isfinite(torch.tensor(s.losses)).all() for s in sets)
    assert sets[0].images.device.type == "cpu"
