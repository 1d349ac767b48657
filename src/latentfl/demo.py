"""``latentfl demo``: FedDGM against FedAvg where label skew hurts, on this machine, beside what
its prior alone gives.

Five participants split the built-in CIFAR-10 mini set with Dirichlet alpha 0.1, so most hold
only a few classes. The ``--method`` (FedDGM by default) runs over the real daemons: a coordinator
and one process per participant on 127.0.0.1, CurveZMQ with signed messages
(:class:`~latentfl.platform.local.LocalConsortium`). The other method then runs in-process on the
same split with the same surrogate, local training and global architecture (the simulator drives
the same strategies). Then ``prior_only`` runs in-process: FedDGM's server training on as many
plain class-conditional samples of the same prior as FedDGM's synthetic sets hold, with no
participant input, so the table shows what the prior alone knows and what the participants add.
A line is printed whenever a round changes phase (waiting, local training with its update
count, aggregating) and when it closes, then the table, and the last round's FedDGM synthetic
images are saved as a PNG grid labelled with class names.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from latentfl.config import from_dict
from latentfl.data import load_dataset
from latentfl.errors import ConfigError, StateError
from latentfl.log import set_log_level
from latentfl.platform.coordinator.rounds import load_strategy
from latentfl.platform.local import LocalConsortium
from latentfl.simulate import PartitionConfig, SimulationConfig, run_simulation
from latentfl.strategies import StrategyConfig

DATA = "builtin:cifar10-mini"
METHODS = ("feddgm", "fedavg")
#: Baselines run in-process after the methods (cheap: the server alone, no participant).
BASELINES = ("prior_only",)
PARTITION = PartitionConfig(scheme="dirichlet", alpha=0.1, seed=0)
#: FedDGM's image prior. The shipped public prior: {"prior": "trained",
#: "generator_path": "builtin:cifar10-public"}.
PRIOR = {"prior": "trained", "generator_path": "builtin:cifar10-public"}
#: Every method's model (FedAvg's only one, FedDGM's surrogate and global model alike).
MODEL = {"name": "convnet", "options": {"width": 16, "depth": 2}}
#: Sized for 2 CPU cores; the FedDGM choices are measured in docs/results.md ("FedDGM demo
#: settings"). Plain local SGD: FedDGM's student replays it with plain SGD steps.
STRATEGY = {
    "model": MODEL,
    "local": {"epochs": 1, "batch_size": 32, "lr": 0.05},
    "feddgm": {
        "ipc": 10, "accumulate": True, "device": "cpu", "global_model": MODEL,
        "distill": {"iterations": 30, "steps": 5, "batch_size": 50, "alpha_init": 0.03,
                    "optimizer": "adam", "lr_feature": 0.02, "lr_style": 0.01, "log_every": 0,
                    **PRIOR},
        "global_train": {"epochs": 30, "batch_size": 64, "lr": 0.01, "momentum": 0.9,
                         "augment": True},
        "surrogate_train": {"epochs": 30, "batch_size": 64, "lr": 0.01, "momentum": 0.9,
                            "augment": True},
    },
}


def strategy(method: str, mean: Sequence[float], std: Sequence[float]) -> StrategyConfig:
    """The demo's ``method``; FedDGM renders to the public statistics ``mean``/``std``."""
    table = {**STRATEGY, "method": method,
             "feddgm": {**STRATEGY["feddgm"], "mean": list(mean), "std": list(std)}}
    return from_dict(StrategyConfig, table, source="the demo's strategy")


def run_demo(*, rounds: int = 3, participants: int = 5, method: str = "feddgm",
             workdir: Path | None = None, keep: bool = False, seed: int = 0,
             compare: bool = True, timeout_s: float = 1800.0,
             out: Callable[[str], object] = print) -> int:
    """Run the demo; 0 when every round of every method finished.

    ``compare`` runs the other method in-process for the table; ``out`` receives each line.
    """
    if method not in METHODS:
        raise ConfigError(f"--method is {method!r}; expected one of {', '.join(METHODS)}.")
    if participants < 2 or rounds < 1:
        raise ConfigError(f"--participants {participants} --rounds {rounds}; expected at least "
                          "2 participants and 1 round.")
    if workdir is not None and workdir.exists() and any(workdir.iterdir()):
        raise ConfigError(f"--workdir {workdir} is not empty; expected a new or empty folder.")
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="latentfl-demo-"))
    ds = load_dataset(DATA)
    partition = replace(PARTITION, seed=seed)
    started = time.monotonic()
    results: dict[str, list[float | None]] = {}

    def show(name: str, r: int, accuracy: float | None) -> None:
        results.setdefault(name, []).append(accuracy)
        acc = "-" if accuracy is None else f"{100 * accuracy:6.2f}%"
        out(f"{name:<10} round {r}  test acc {acc}  elapsed {time.monotonic() - started:6.1f}s")

    shown_phase = ""

    def show_progress(status: Path) -> None:
        """A line per closed round, and one whenever the round's phase or counts change."""
        nonlocal shown_phase
        live = _live(status)
        for rec in live.get("history", [])[len(results.get(method, [])):]:
            show(method, rec["round"], rec["metrics"].get("accuracy"))
        phase = phase_line(live, participants, method)
        if phase and phase != shown_phase:
            shown_phase = phase
            out(f"{method:<10} {phase}  elapsed {time.monotonic() - started:6.1f}s")

    out(f"{participants} participants, Dirichlet alpha {partition.alpha} on {DATA}; {method} "
        "over the daemons (one process per party, CurveZMQ on 127.0.0.1)")
    out(f"{method:<10} starting the coordinator and {participants} participant processes")
    with LocalConsortium(root, participants, session="demo", partition=partition,
                         coordinator={"rounds": rounds, "seed": seed, "test_data": DATA,
                                      "device": "cpu", "round_deadline": 300.0,
                                      "strategy": strategy(method, ds.mean, ds.std)},
                         participant={"heartbeat_interval": 2.0}) as consortium:
        consortium.start()
        status = consortium.state_dir / "status.json"
        while (code := consortium.supervisor.exit_codes()["coordinator"]) is None:
            show_progress(status)
            if time.monotonic() - started > timeout_s:
                raise StateError(f"the demo did not finish within {timeout_s:.0f}s; see the "
                                 f"logs in {root / 'logs'}.")
            time.sleep(0.5)
        consortium.wait_finished(timeout_s=0)
    show_progress(status)
    ok = code == 0 and len(results.get(method, [])) == rounds
    sets = None
    if ok and method == "feddgm":
        sets = load_strategy(consortium.coordinator_config())[1].synthetic_sets()
    if ok and compare:
        set_log_level("warning")  # the round lines say what happens
        for other in (METHODS[1 - METHODS.index(method)], *BASELINES):
            out(f"{other:<10} in-process on the same split, the same models and seeds"
                + (" (the prior alone: no participant input)" if other == "prior_only" else ""))
            sim = run_simulation(
                SimulationConfig(data=DATA, participants=participants, rounds=rounds, seed=seed,
                                 device="cpu", partition=partition,
                                 strategy=strategy(other, ds.mean, ds.std)),
                dataset=ds, on_round=lambda rec, name=other: show(name, rec.round, rec.accuracy))
            sets = sim.strategy.synthetic_sets() if other == "feddgm" else sets
    out(f"{'round':>5}  " + "  ".join(f"{name:>10}" for name in results))
    for r in range(max(len(accs) for accs in results.values()) if results else 0):
        out(f"{r + 1:>5}  " + "  ".join(
            f"{'-' if r >= len(accs) or accs[r] is None else f'{100 * accs[r]:.2f}%':>10}"
            for accs in results.values()))
    if sets:
        from latentfl.synthetic_grid import save_grid  # PIL: not for the daemons the CLI starts

        grid = save_grid(sets, ds.train.classes, root / "synthetic.png")
        out(f"synthetic images of the last FedDGM round: {grid}")
    out(f"{'finished' if ok else 'FAILED'} in {time.monotonic() - started:.1f}s "
        f"(coordinator exit {code})")
    if keep or workdir or sets or not ok:  # a grid or a failure is worth a look
        out(f"keys, configs, state, journal and logs: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


def _live(status: Path) -> dict:
    """The coordinator's status file ({} before it writes one)."""
    try:
        return json.loads(status.read_text())
    except (OSError, ValueError):
        return {}


def phase_line(live: dict, participants: int, method: str) -> str | None:
    """What the coordinator's round is doing, from its status file (None when it is not in a
    round: before it starts, and after the last)."""
    phase, r = live.get("phase"), live.get("round")
    received, planned = len(live.get("received", [])), len(live.get("planned", []))
    if phase == "waiting":
        online = sum(1 for p in live.get("participants", {}).values() if p.get("online"))
        return f"round {r}  waiting for participants ({online} of {participants} online)"
    if phase == "collecting":
        return f"round {r}  local training at the sites: updates {received}/{planned}"
    if phase == "aggregating":
        work = (": distilling a synthetic set per participant, then training the global model"
                if method == "feddgm" else "")
        return f"round {r}  aggregating {received} updates{work}"
    return None


def _run(args) -> int:
    return run_demo(rounds=args.rounds, participants=args.participants, method=args.method,
                    workdir=args.workdir, keep=args.keep, seed=args.seed)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="FedDGM vs FedAvg under strong label skew on CIFAR-10 mini: a local "
        "consortium, coordinator and participants as separate processes; beside them "
        "prior_only, what FedDGM's prior gives with no participant.")
    p.add_argument("--method", choices=METHODS, default="feddgm",
                   help="Method run over the daemons (default feddgm); the other runs "
                   "in-process on the same split for the table.")
    p.add_argument("--rounds", type=int, default=3, help="Rounds (default 3).")
    p.add_argument("--participants", type=int, default=5, help="Participants (default 5).")
    p.add_argument("--seed", type=int, default=0,
                   help="Seed of the split, the models and the sampling (default 0).")
    p.add_argument("--workdir", type=Path, default=None,
                   help="Folder for keys, configs, state and logs (kept); default a temp folder.")
    p.add_argument("--keep", action="store_true", help="Keep the temporary folder afterwards.")
    p.set_defaults(handler=_run)


__all__ = ["phase_line", "run_demo", "strategy"]
