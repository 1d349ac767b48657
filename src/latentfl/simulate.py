"""In-process federation: the daemons' strategies and local training, without sockets.

Experiments and tests use :func:`run_simulation`; ``latentfl simulate --config FILE`` is its CLI.
Participant ``i`` (id ``p00``, ``p01``, ...) holds part ``i`` of a deterministic partition of the
training split, exactly as a participant agent configured with that partition index would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from latentfl.attacks import (
    AttackerConfig,
    assign,
    attack_seed,
    backdoor_success,
    poison_data,
    tamper,
)
from latentfl.config import load_config, option
from latentfl.data import PartitionConfig, evaluation_tensors, load_dataset, to_tensors
from latentfl.device import resolve_device
from latentfl.log import get_logger
from latentfl.strategies import (
    LocalTraining,
    Strategy,
    StrategyConfig,
    build_strategy,
    run_tasks,
    select_participants,
    set_aside_of,
)
from latentfl.training import evaluate

log = get_logger("simulate")


@dataclass(frozen=True)
class SimulationConfig:
    """One in-process federated run."""

    data: str = option("builtin:cifar10-mini", help="Dataset spec (train split is partitioned).")
    participants: int = option(4, help="Number of participants.", min=1)
    fraction: float = option(
        1.0, help="Share of participants sampled each round.", min=0.0, max=1.0, min_exclusive=True
    )
    rounds: int = option(3, help="Number of rounds.", min=1)
    seed: int = option(0, help="Seed of model initialisation and participant sampling.")
    device: str = option("auto", help="auto, cpu or cuda[:N].")
    max_test: int = option(0, help="Evaluate on at most this many test images (0 = all).", min=0)
    output: Path | None = option(None, help="Folder for rounds.jsonl (none = no file).")
    local_training: LocalTraining = option(
        "auto", help="How a round's local training runs: batched (participants sharing an "
        "architecture and settings train together in one vmapped step; same results), sequential "
        "(one at a time), or auto (batched on CUDA, sequential on a CPU, where it is not faster)."
    )
    max_batched_participants: int = option(
        0, help="Most participants trained together when batched, to bound memory (0 = all).",
        min=0,
    )
    partition: PartitionConfig = option(PartitionConfig(), help="Partition of the training split.")
    strategy: StrategyConfig = option(StrategyConfig(), help="The federated method.")
    attackers: tuple[AttackerConfig, ...] = option(
        (), help="Dishonest participants ([[simulation.attackers]], simulator and experiments "
        "only): kind, and count or fraction.")

    def problems(self) -> list[str]:
        out = []
        attackers = sum(a.size(self.participants) for a in self.attackers)
        if attackers > self.participants:
            out.append(f"attackers add up to {attackers} participants; expected at most "
                       f"participants = {self.participants}.")
        sampled = min(self.participants, max(1, int(self.fraction * self.participants + 0.5)))
        needed = self.strategy.robust.minimum_updates()
        if sampled < needed:
            out.append(f"strategy.robust.rule = {self.strategy.robust.rule!r} with f = "
                       f"{self.strategy.robust.f} needs {needed} updates a round; "
                       f"{sampled} participants are sampled. Lower f or sample more.")
        return out


@dataclass(frozen=True)
class RoundRecord:
    """What happened in one round."""

    round: int
    participants: list[str]
    accuracy: float | None
    loss: float | None
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    #: updates the round set aside: participant, rule, action, score, threshold
    set_aside: list[dict] = field(default_factory=list)


@dataclass
class SimulationResult:
    strategy: Strategy
    history: list[RoundRecord]


def participant_ids(count: int) -> list[str]:
    """The ids the simulator (and the demo) give participants: p00, p01, ..."""
    return [f"p{i:02d}" for i in range(count)]


def run_simulation(
    config: SimulationConfig,
    *,
    dataset=None,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> SimulationResult:
    """Run ``config.rounds`` rounds of ``config.strategy`` over partitioned data."""
    device = resolve_device(config.device)
    ds = dataset if dataset is not None else load_dataset(config.data)
    parts = config.partition.split(ds.train.y, config.participants)
    x_train, y_train = to_tensors(ds.train, ds.mean, ds.std)
    test = evaluation_tensors(ds, config.max_test)

    ids = participant_ids(config.participants)
    local_data = {pid: (x_train[idx], y_train[idx]) for pid, idx in zip(ids, parts, strict=True)}
    attack_of = assign(config.attackers, ids)
    for pid, attack in attack_of.items():
        local_data[pid] = poison_data(attack, *local_data[pid],
                                      num_classes=config.strategy.model.num_classes,
                                      mean=ds.mean, std=ds.std, seed=attack_seed(config.seed, pid, 0))
    backdoor = next((a for a in config.attackers if a.kind == "backdoor"), None)
    absent = {pid for pid, attack in attack_of.items() if attack.kind == "absent"}
    strategy = build_strategy(config.strategy)
    strategy.initialize(config.seed)
    history: list[RoundRecord] = []
    rounds_file = None
    if config.output is not None:
        config.output.mkdir(parents=True, exist_ok=True)
        rounds_file = (config.output / "rounds.jsonl").open("w", encoding="utf-8")
    try:
        for r in range(1, config.rounds + 1):
            started = time.perf_counter()
            selected = select_participants(ids, config.fraction, seed=config.seed, round=r)
            server_started = time.perf_counter()
            tasks = strategy.configure_round(r, selected)
            server_seconds = time.perf_counter() - server_started
            updates = run_tasks(
                {pid: tasks[pid] for pid in selected  # baselines ask none
                 if pid in tasks and pid not in absent},
                strategy.model_spec,
                local_data,
                device=device,
                mode=config.local_training,
                group_size=config.max_batched_participants,
            )
            updates = [tamper(attack_of[u.participant], u, tasks[u.participant].weights,
                              seed=attack_seed(config.seed, u.participant, r))
                       if u.participant in attack_of else u for u in updates]
            server_started = time.perf_counter()
            metrics = dict(strategy.aggregate_round(r, updates))
            # what the coordinator spends (configure and aggregate), beside the whole round's time
            metrics["server_seconds"] = server_seconds + time.perf_counter() - server_started
            set_aside = [s.as_dict() for s in set_aside_of(strategy)]
            metrics["set_aside"] = float(len(set_aside))
            if attack_of:
                metrics["attackers_set_aside"] = float(
                    sum(s["participant"] in attack_of for s in set_aside))
            accuracy = loss = None
            if test is not None:
                result = evaluate(strategy.evaluation_model(), *test, device=device)
                accuracy, loss = result.accuracy, result.loss
                if backdoor is not None:
                    metrics["backdoor_success"] = backdoor_success(
                        strategy.evaluation_model(), *test, backdoor, mean=ds.mean, std=ds.std,
                        device=device)
            record = RoundRecord(
                r, selected, accuracy, loss, time.perf_counter() - started, metrics, set_aside
            )
            history.append(record)
            log.info(
                "round_done",
                round=r,
                participants=len(selected),
                accuracy=accuracy,
                seconds=round(record.seconds, 2),
            )
            if rounds_file is not None:
                rounds_file.write(json.dumps(asdict(record)) + "\n")
                rounds_file.flush()
            if on_round is not None:
                on_round(record)
    finally:
        if rounds_file is not None:
            rounds_file.close()
    return SimulationResult(strategy=strategy, history=history)


def format_round(record: RoundRecord) -> str:
    acc = "-" if record.accuracy is None else f"{100 * record.accuracy:6.2f}%"
    return f"{record.round:>5}  {len(record.participants):>12}  {acc:>8}  {record.seconds:8.1f}s"


ROUND_TABLE_HEADER = f"{'round':>5}  {'participants':>12}  {'accuracy':>8}  {'time':>9}"


def _run(args) -> int:
    config = load_config(args.config, SimulationConfig)
    torch.manual_seed(config.seed)
    print(ROUND_TABLE_HEADER)
    run_simulation(config, on_round=lambda rec: print(format_round(rec), flush=True))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("simulate", help="Run a federation in one process (no sockets).")
    parser.add_argument("--config", required=True, type=Path, help="Simulation TOML file.")
    parser.set_defaults(handler=_run)


__all__ = [
    "PartitionConfig",
    "RoundRecord",
    "SimulationConfig",
    "SimulationResult",
    "participant_ids",
    "run_simulation",
]
