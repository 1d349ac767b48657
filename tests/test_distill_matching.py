"""Trajectory matching: unroll modes against each other and against finite differences."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentfl.distill import FunctionalStudent, batch_schedule, match_trajectory
from latentfl.distill.matching import _count_saved, _step_loss
from latentfl.errors import DistillError
from latentfl.models import build_model, flatten_params


def _tiny_problem(dtype=torch.float64, m: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("convnet", 4, (3, 8, 8), width=8, depth=1).to(dtype)
    student = FunctionalStudent(model)
    start = flatten_params(model)
    target = start + 0.02 * torch.randn_like(start)
    images = torch.randn(m, 3, 8, 8, dtype=dtype)
    labels = torch.arange(m) % 4
    alpha = torch.tensor(0.05, dtype=dtype)
    return student, start, target, images, labels, alpha


@pytest.mark.parametrize("augment", [None, "one", "all"])
@pytest.mark.parametrize("soft", [False, True])
def test_two_pass_equals_full_at_one_step(augment, soft):
    """At N=1 the two-pass gradients equal the full unroll's (images, alpha, label logits)."""
    student, start, target, images, labels, alpha = _tiny_problem()
    logits = torch.randn(8, 4, dtype=torch.float64) if soft else None
    kw = dict(steps=1, augment=augment, seed=11, label_logits=logits, batch_size=6)
    full = match_trajectory(student, start, target, images, labels, alpha, unroll="full", **kw)
    two = match_trajectory(student, start, target, images, labels, alpha, unroll="two_pass", **kw)
    torch.testing.assert_close(two.loss, full.loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(two.image_grad, full.image_grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(two.alpha_grad, full.alpha_grad, rtol=1e-10, atol=1e-14)
    if soft:
        torch.testing.assert_close(two.label_grad, full.label_grad, rtol=1e-10, atol=1e-14)
    else:
        assert full.label_grad is None and two.label_grad is None


def test_full_unroll_matches_finite_differences():
    """The full unroll's gradients wrt images, alpha and soft labels match central differences."""
    student, start, target, images, labels, alpha = _tiny_problem()
    logits = torch.randn(8, 4, dtype=torch.float64)
    kw = dict(steps=3, batch_size=4, augment="all", seed=5, unroll="full")

    def loss(x, a, lg):
        return match_trajectory(student, start, target, x, labels, a, label_logits=lg, **kw).loss

    res = match_trajectory(student, start, target, images, labels, alpha, label_logits=logits,
                           **kw)
    eps = 1e-6
    gen = torch.Generator().manual_seed(1)
    d = torch.randn(images.shape, generator=gen, dtype=torch.float64)
    fd = (loss(images + eps * d, alpha, logits) - loss(images - eps * d, alpha, logits)) / (2 * eps)
    torch.testing.assert_close(fd, (res.image_grad * d).sum(), rtol=1e-6, atol=1e-9)
    fd = (loss(images, alpha + eps, logits) - loss(images, alpha - eps, logits)) / (2 * eps)
    torch.testing.assert_close(fd, res.alpha_grad, rtol=1e-6, atol=1e-9)
    d = torch.randn(logits.shape, generator=gen, dtype=torch.float64)
    fd = (loss(images, alpha, logits + eps * d) - loss(images, alpha, logits - eps * d)) / (2 * eps)
    torch.testing.assert_close(fd, (res.label_grad * d).sum(), rtol=1e-6, atol=1e-9)


def test_two_pass_approximates_full_at_several_steps():
    """With N>1 two-pass drops second-order terms yet keeps the gradient direction."""
    student, start, target, images, labels, alpha = _tiny_problem()
    kw = dict(steps=4, batch_size=4, augment="one", seed=2)
    full = match_trajectory(student, start, target, images, labels, alpha, unroll="full", **kw)
    two = match_trajectory(student, start, target, images, labels, alpha, unroll="two_pass", **kw)
    torch.testing.assert_close(two.loss, full.loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(two.alpha_grad, full.alpha_grad, rtol=0.05, atol=1e-9)
    cos = torch.nn.functional.cosine_similarity(full.image_grad.flatten(),
                                                two.image_grad.flatten(), dim=0)
    assert cos > 0.9


@pytest.mark.parametrize("soft", [False, True])
def test_two_pass_graphs_kept_or_recomputed_give_the_same_gradients(soft):
    """Pass two reuses the step graphs pass one kept within the budget and recomputes the rest:
    no step kept, some, or all, the loss and every gradient are the same numbers."""
    torch.manual_seed(0)
    model = build_model("convnet", 4, (3, 8, 8), width=8, depth=2, norm="instance").double()
    student = FunctionalStudent(model)
    start = flatten_params(model)
    target = start + 0.02 * torch.randn_like(start)
    images, labels = torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.arange(8) % 4
    alpha = torch.tensor(0.05, dtype=torch.float64)
    logits = torch.randn(8, 4, dtype=torch.float64) if soft else None
    # what one step's graph weighs, so that the middle budget keeps two of the five steps
    saved = [0]
    theta = start.clone().requires_grad_(True)
    with _count_saved(saved):
        loss = _step_loss(student, theta[None], images[None], labels[None],
                          None if logits is None else logits[None], None, 1, "one")
        torch.autograd.grad(loss.sum(), theta, create_graph=True)
    assert saved[0] > 0
    kw = dict(steps=5, batch_size=4, augment="one", seed=3, label_logits=logits,
              unroll="two_pass")
    runs = [match_trajectory(student, start, target, images, labels, alpha, keep_mib=mib, **kw)
            for mib in (0.0, 2.5 * saved[0] / 2**20, 1e4)]
    for other in runs[1:]:
        torch.testing.assert_close(other.loss, runs[0].loss, rtol=1e-13, atol=0)
        torch.testing.assert_close(other.image_grad, runs[0].image_grad, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(other.alpha_grad, runs[0].alpha_grad, rtol=1e-12, atol=1e-15)
        if soft:
            torch.testing.assert_close(other.label_grad, runs[0].label_grad, rtol=1e-12,
                                       atol=1e-15)


@pytest.mark.parametrize("unroll", ["full", "two_pass"])
def test_participant_batch_equals_one_at_a_time(unroll):
    """P participants in one batched call get the same losses and gradients as P separate calls."""
    student, start, target, _, labels, alpha = _tiny_problem()
    gen = torch.Generator().manual_seed(3)
    p = 3
    starts = start + 0.01 * torch.randn(p, start.numel(), generator=gen, dtype=torch.float64)
    targets = target + 0.01 * torch.randn(p, start.numel(), generator=gen, dtype=torch.float64)
    images = torch.randn(p, 8, 3, 8, 8, generator=gen, dtype=torch.float64)
    alphas = torch.tensor([0.03, 0.05, 0.07], dtype=torch.float64)
    kw = dict(steps=2, batch_size=None, augment=None, unroll=unroll)
    batch = match_trajectory(student, starts, targets, images, labels.expand(p, 8), alphas, **kw)
    for i in range(p):
        one = match_trajectory(student, starts[i], targets[i], images[i], labels, alphas[i], **kw)
        torch.testing.assert_close(batch.loss[i], one.loss, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(batch.image_grad[i], one.image_grad, rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(batch.alpha_grad[i], one.alpha_grad, rtol=1e-8, atol=1e-12)


def test_vmapped_participants_equal_one_at_a_time():
    """The GPU's mapping of P participants (vmap, grouped convolutions) gives each participant's
    logits and gradients as the CPU's one-at-a-time loop does (checked here on the CPU)."""
    student, start, _, _, _, _ = _tiny_problem()
    gen = torch.Generator().manual_seed(4)
    thetas = (start + 0.01 * torch.randn(3, start.numel(), generator=gen, dtype=torch.float64))
    images = torch.randn(3, 5, 3, 8, 8, generator=gen, dtype=torch.float64)
    looped = thetas.clone().requires_grad_(True)
    mapped = thetas.clone().requires_grad_(True)
    out_loop, out_map = student(looped, images), student._many(mapped, images)
    torch.testing.assert_close(out_map, out_loop, rtol=1e-10, atol=1e-12)
    probe = torch.randn(out_loop.shape, generator=gen, dtype=torch.float64)
    (g_loop,) = torch.autograd.grad((out_loop * probe).sum(), looped)
    (g_map,) = torch.autograd.grad((out_map * probe).sum(), mapped)
    torch.testing.assert_close(g_map, g_loop, rtol=1e-10, atol=1e-12)


def test_batch_schedule_walks_shuffled_epochs():
    """Mini-batch indices cover every image once per epoch and repeat for the same seed."""
    idx = batch_schedule(10, 4, 5, seed=7, device=torch.device("cpu"))
    assert idx.shape == (4, 5)
    assert sorted(idx[:2].flatten().tolist()) == list(range(10))
    assert torch.equal(idx, batch_schedule(10, 4, 5, seed=7, device=torch.device("cpu")))
    assert batch_schedule(10, 4, None, seed=7, device=torch.device("cpu")) is None


def test_bad_inputs_are_refused():
    """Zero steps, an unknown unroll mode or a wrong-sized weight vector raise DistillError."""
    student, start, target, images, labels, alpha = _tiny_problem()
    with pytest.raises(DistillError, match="at least 1 step"):
        match_trajectory(student, start, target, images, labels, alpha, steps=0)
    with pytest.raises(DistillError, match="unroll mode"):
        match_trajectory(student, start, target, images, labels, alpha, steps=1, unroll="fast")
    with pytest.raises(DistillError, match="expects"):
        match_trajectory(student, start[:-1], target[:-1], images, labels, alpha, steps=1)


def test_any_module_works_as_student():
    """A plain nn.Module (not from the registry) is a valid functional student."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    student = FunctionalStudent(model)
    start = student.flatten()
    res = match_trajectory(student, start, start + 0.1, torch.randn(6, 3, 2, 2),
                           torch.arange(6) % 3, torch.tensor(0.1), steps=2, augment=None)
    assert res.image_grad.shape == (6, 3, 2, 2) and torch.isfinite(res.loss)


def test_batchnorm_students_are_refused():
    """A student with BatchNorm is refused with a hint to use instance norm."""
    model = build_model("convnet", 4, (3, 8, 8), width=8, depth=1, norm="batch")
    with pytest.raises(DistillError, match="instance"):
        FunctionalStudent(model)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("unroll", ["full", "two_pass"])
def test_cuda_matches_cpu(unroll):
    """On CUDA (float64) the loss and gradients equal the CPU ones, augmentation off."""
    student, start, target, images, labels, alpha = _tiny_problem()
    kw = dict(steps=3, batch_size=4, augment=None, seed=1, unroll=unroll)
    cpu = match_trajectory(student, start, target, images, labels, alpha, **kw)
    student_gpu = FunctionalStudent(student.model.cuda())
    gpu = match_trajectory(student_gpu, start.cuda(), target.cuda(), images.cuda(), labels.cuda(),
                           alpha.cuda(), **{**kw, "batch_size": None})
    ref = match_trajectory(student, start, target, images, labels, alpha,
                           **{**kw, "batch_size": None})
    torch.testing.assert_close(gpu.loss.cpu(), ref.loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gpu.image_grad.cpu(), ref.image_grad, rtol=1e-7, atol=1e-10)
    assert torch.isfinite(cpu.loss)
