"""Coordinator seconds per round of each robust aggregation rule, at 10 and 100 participants.

Each participant's update is a ConvNet-3 (instance norm; width 32 as in
``experiments/robust_cifar10-cpu.toml``, or ``--width``) plus a small random change; the timed call is
``FedAvg.aggregate_round``, the code both daemons and the simulator run, so the figure covers
flattening, the rule and writing the new global model. Krum and Multi-Krum use f = 2 (10) or
f = 20 (100); Bulyan f = 1 (10, since it needs n >= 4f + 3) or f = 20 (100). The last row per
cohort is FedDGM's upload screening at its defaults (flattening and scoring the uploads; the
distillation it precedes is not timed).

    python benchmarks/robust_aggregation.py --cohorts 10 100 --repeats 3 [--width 128]
"""

from __future__ import annotations

import argparse
import time

import torch

from latentfl.strategies import FedAvg, ModelSpec, Update
from latentfl.strategies.defence import RobustConfig, update_deltas
from latentfl.strategies.feddgm import ScreeningConfig
from latentfl.strategies.robust import screen_uploads
from latentfl.training import TrainConfig


def model(width: int) -> ModelSpec:
    return ModelSpec(options={"width": width, "depth": 3, "norm": "instance", "pooling": "avg"})


def rules(n: int) -> dict[str, RobustConfig]:
    f = 2 if n <= 10 else n // 5
    return {
        "none (weighted mean)": RobustConfig(),
        "median": RobustConfig(rule="median"),
        "trimmed_mean (beta 0.2)": RobustConfig(rule="trimmed_mean", beta=0.2),
        f"krum (f {f})": RobustConfig(rule="krum", f=f),
        f"multi_krum (f {f})": RobustConfig(rule="multi_krum", f=f),
        f"bulyan (f {1 if n <= 10 else f})": RobustConfig(rule="bulyan",
                                                          f=1 if n <= 10 else f),
        "norm_bound (x median)": RobustConfig(rule="norm_bound"),
    }


def round_of_updates(spec: ModelSpec, n: int, robust: RobustConfig) -> tuple[FedAvg, list[Update]]:
    strategy = FedAvg(spec, TrainConfig(), robust=robust)
    strategy.initialize(0)
    start = strategy.global_weights()
    g = torch.Generator().manual_seed(n)
    return strategy, [Update(f"p{i:03d}", 1, {k: v + 0.01 * torch.randn(v.shape, generator=g)
                                              for k, v in start.items()}, 100, 10)
                      for i in range(n)]


def best_seconds(call, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - began)
    return best


def seconds_per_round(spec: ModelSpec, n: int, robust: RobustConfig, repeats: int) -> float:
    strategy, updates = round_of_updates(spec, n, robust)
    start = strategy.global_weights()

    def aggregate() -> None:
        strategy.set_global_weights(start)
        strategy.aggregate_round(1, updates)
    return best_seconds(aggregate, repeats)


def screening_seconds(spec: ModelSpec, n: int, repeats: int) -> float:
    strategy, updates = round_of_updates(spec, n, RobustConfig())
    screening = ScreeningConfig()
    ids = [u.participant for u in updates]

    def screen() -> None:
        deltas = update_deltas(strategy.global_weights(), [u.weights for u in updates])
        screen_uploads(ids, deltas, mads=screening.mads, min_spread=screening.min_spread)
    return best_seconds(screen, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=32, help="ConvNet width (128: the "
                                                             "registry's default surrogate).")
    args = parser.parse_args()
    spec = model(args.width)
    params = sum(v.numel() for v in spec.build().state_dict().values())
    print(f"ConvNet-3 width {args.width}: {params:,} values per update; best of {args.repeats}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'participants':>12}  {'rule':<26} {'s / round':>10}")
    for n in args.cohorts:
        for name, robust in rules(n).items():
            print(f"{n:>12}  {name:<26} {seconds_per_round(spec, n, robust, args.repeats):>10.3f}",
                  flush=True)
        print(f"{n:>12}  {'feddgm screening':<26} {screening_seconds(spec, n, args.repeats):>10.3f}",
              flush=True)


if __name__ == "__main__":
    main()
