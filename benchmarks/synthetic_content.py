"""What FedDGM's synthetic set carries, per class and per participant (issue 22's "why").

Runs one FedDGM cell of an experiment file and, beside it, a reference classifier: the cell's
global architecture trained centrally on all of the task's training images with FedDGM's
server training (an upper bound no participant could reach alone). The reference then labels

- the last round's synthetic images of each participant: per class, the share it assigns to the
  image's own label, split by whether the participant holds that class;
- as many plain samples of the prior (``prior_only``'s training images): the same share.

A share near ``1 / classes`` means the images carry no recognisable class content for a model
that has seen the real task; the matching loss of every round comes from the cell's metrics.

    OMP_NUM_THREADS=2 python benchmarks/synthetic_content.py \\
        --config experiments/baselines_disjoint-classes.toml --only alpha=0.1,seed=0
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from latentfl.config import load_config
from latentfl.data import evaluation_tensors, load_dataset, to_tensors
from latentfl.experiment import ExperimentConfig, grid
from latentfl.experiment.config import restrict
from latentfl.simulate import participant_ids, run_simulation
from latentfl.strategies import SyntheticImages, build_strategy
from latentfl.training import evaluate, train


def own_label_share(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    classes: int) -> list[float | None]:
    """Per class, the share of its images ``model`` assigns to that class (None: no image)."""
    with torch.no_grad():
        predicted = model.eval()(images).argmax(1)
    return [float((predicted[labels == k] == k).float().mean()) if (labels == k).any() else None
            for k in range(classes)]


def mean(values: list[float]) -> float:
    """The mean of ``values`` in percent (0 for none)."""
    return 100 * sum(values) / max(len(values), 1)


def renormalise(sets: SyntheticImages, mean, std) -> torch.Tensor:
    """Synthetic images in the task data's normalisation (the reference model's input)."""
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (sets.pixels() - m) / s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="an experiment file with feddgm")
    parser.add_argument("--only", required=True, help="alpha=A,seed=S (one cell)")
    args = parser.parse_args()
    cfg = load_config(args.config, ExperimentConfig)
    cfg = restrict(replace(cfg, output=cfg.output or Path("runs/synthetic_content")),
                   f"method=feddgm,{args.only}")
    cell = grid(cfg)[0]
    sim = cell.simulation
    ds = load_dataset(sim.data)
    classes = sim.strategy.model.num_classes
    x, y = to_tensors(ds.train, ds.mean, ds.std)
    test = evaluation_tensors(ds)

    started = time.perf_counter()
    reference = sim.strategy.feddgm.global_model.build()
    train(reference, x, y, sim.strategy.feddgm.global_train)
    print(f"reference (central, all {len(y)} training images): test accuracy "
          f"{100 * evaluate(reference, *test).accuracy:.1f}% ({time.perf_counter() - started:.0f} s)")

    result = run_simulation(replace(sim, output=None), dataset=ds)
    print("round  accuracy  match_loss  synthetic_images")
    for rec in result.history:
        print(f"{rec.round:>5}  {100 * rec.accuracy:7.1f}%  {rec.metrics['match_loss']:10.3f}  "
              f"{rec.metrics['synthetic_images']:>16.0f}")
    parts = sim.partition.split(ds.train.y, sim.participants)
    sets = result.strategy.synthetic_sets()
    print("participant  held classes (images)  own-label share per class (held classes marked *)")
    held_shares, other_shares = [], []
    for pid, idx in zip(participant_ids(sim.participants), parts, strict=True):
        counts = torch.bincount(torch.as_tensor(ds.train.y[idx]), minlength=classes).tolist()
        s = sets[pid]
        shares = own_label_share(reference, renormalise(s, ds.mean, ds.std), s.labels, classes)
        cells = []
        for k, share in enumerate(shares):
            if share is None:
                continue
            (held_shares if counts[k] else other_shares).append(share)
            cells.append(f"{k}{'*' if counts[k] else ''}:{100 * share:.0f}%")
        print(f"{pid:>11}  {counts}  {' '.join(cells)}")
    print(f"own-label share, held classes: {mean(held_shares):.1f}% ({len(held_shares)}); "
          f"classes not held: {mean(other_shares):.1f}% ({len(other_shares)}); "
          f"chance {100 / classes:.1f}%")

    prior = build_strategy(replace(sim.strategy, method="prior_only"))
    prior.initialize(sim.seed)
    prior.configure_round(1, participant_ids(sim.participants))
    prior.aggregate_round(1, [])
    shares = [own_label_share(reference, renormalise(s, ds.mean, ds.std), s.labels, classes)
              for s in prior.synthetic_sets().values()]
    flat = [v for row in shares for v in row if v is not None]
    print(f"own-label share of plain prior samples (prior_only's images): {mean(flat):.1f}%")


if __name__ == "__main__":
    main()
