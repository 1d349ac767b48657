"""``latentfl demo``: FedDGM against FedAvg where label skew hurts, on this machine.

Five participants split the built-in CIFAR-10 mini set with Dirichlet alpha 0.1, so most hold
only a few classes. The ``--method`` (FedDGM by default) runs over the real daemons: a coordinator
and one process per participant on 127.0.0.1, CurveZMQ with signed messages
(:class:`~latentfl.platform.local.LocalConsortium`). The other method then runs in-process on the
same split with the same surrogate, local training and global architecture (the simulator drives
the same strategies). A line is printed per round, then the table, and the last round's FedDGM
synthetic images are saved as a PNG grid labelled with class names.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from latentfl.config import from_dict
from latentfl.data import load_dataset
from latentfl.errors import ConfigError
from latentfl.log import configure_logging
from latentfl.platform.coordinator.store import StateStore
from latentfl.platform.local import LocalConsortium
from latentfl.simulate import PartitionConfig, SimulationConfig, run_simulation
from latentfl.strategies import StrategyConfig

DATA = "builtin:cifar10-mini"
METHODS = ("feddgm", "fedavg")
PARTITION = PartitionConfig(scheme="dirichlet", alpha=0.1, seed=0)
#: FedDGM's image prior. The shipped public prior: {"prior": "trained",
#: "generator_path": "builtin:cifar10-public"}.
PRIOR = {"prior": "random"}
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


def strategy(method: str, mean, std) -> StrategyConfig:
    """The demo's ``method``; FedDGM renders to the public statistics ``mean``/``std``."""
    table = {**STRATEGY, "method": method,
             "feddgm": {**STRATEGY["feddgm"], "mean": list(mean), "std": list(std)}}
    return from_dict(StrategyConfig, table, source="the demo's strategy")


def run_demo(*, rounds: int = 3, participants: int = 5, method: str = "feddgm",
             workdir: Path | None = None, keep: bool = False, seed: int = 0,
             compare: bool = True, timeout_s: float = 1800.0, out=print) -> int:
    """Run the demo; 0 when every round of every method finished."""
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
    feddgm_state = None

    def show(name: str, r: int, accuracy: float | None) -> None:
        results.setdefault(name, []).append(accuracy)
        acc = "-" if accuracy is None else f"{100 * accuracy:6.2f}%"
        out(f"{name:<7} round {r}  test acc {acc}  elapsed {time.monotonic() - started:6.1f}s")

    out(f"{participants} participants, Dirichlet alpha {partition.alpha} on {DATA}; {method} "
        "over the daemons (one process per party, CurveZMQ on 127.0.0.1)")
    with LocalConsortium(root, participants, session="demo", partition=partition,
                         coordinator={"rounds": rounds, "seed": seed, "test_data": DATA,
                                      "device": "cpu", "round_deadline": 300.0,
                                      "strategy": strategy(method, ds.mean, ds.std)},
                         participant={"heartbeat_interval": 2.0}) as consortium:
        consortium.start()
        status, shown = consortium.state_dir / "status.json", 0
        while consortium.supervisor.procs["coordinator"].poll() is None:
            if time.monotonic() - started > timeout_s:
                break
            history = _history(status)
            for rec in history[shown:]:
                show(method, rec["round"], rec["metrics"].get("accuracy"))
            shown = len(history)
            time.sleep(0.5)
        codes = consortium.stop(grace_s=20.0)
    history = _history(status)
    for rec in history[shown:]:
        show(method, rec["round"], rec["metrics"].get("accuracy"))
    ok = codes["coordinator"] == 0 and len(history) == rounds
    if ok and compare:
        other = METHODS[1 - METHODS.index(method)]
        configure_logging("console", level="warning")  # the round lines say what happens
        sim = run_simulation(
            SimulationConfig(data=DATA, participants=participants, rounds=rounds, seed=seed,
                             device="cpu", partition=partition,
                             strategy=strategy(other, ds.mean, ds.std)),
            dataset=ds, on_round=lambda rec: show(other, rec.round, rec.accuracy))
        feddgm_state = sim.strategy.state_dict() if other == "feddgm" else None
    if ok and method == "feddgm":
        checkpoint = StateStore(consortium.state_dir).load_checkpoint(rounds)
        feddgm_state = checkpoint.tensors, checkpoint.meta["strategy"]
    out(f"{'round':>5}  " + "  ".join(f"{name:>8}" for name in results))
    for r in range(rounds):
        out(f"{r + 1:>5}  " + "  ".join(
            f"{'-' if accs[r] is None else f'{100 * accs[r]:.2f}%':>8}"
            for accs in results.values() if r < len(accs)))
    if feddgm_state is not None:
        grid = save_grid(*feddgm_state, ds.train.classes, root / "synthetic.png")
        out(f"synthetic images of the last FedDGM round: {grid}")
    out(f"{'finished' if ok else 'FAILED'} in {time.monotonic() - started:.1f}s; exit codes "
        f"{codes}")
    if keep or workdir or feddgm_state is not None:  # the grid is worth looking at
        out(f"keys, configs, state, journal and logs: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


def _history(status: Path) -> list[dict]:
    """The coordinator's finished rounds so far (none before its first status file)."""
    try:
        return json.loads(status.read_text()).get("history", [])
    except (OSError, ValueError):
        return []


def synthetic_sets(tensors: dict, meta: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """FedDGM's synthetic (images in [0, 1], labels) per participant, from its state."""
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    return {pid: ((tensors[f"synthetic.{pid}.images"] * std + mean).clamp(0, 1),
                  tensors[f"synthetic.{pid}.labels"]) for pid in meta["synthetic"]}


def save_grid(tensors: dict, meta: dict, classes, path: Path, scale: int = 3) -> Path:
    """PNG of one synthetic image per class (columns, named) for each participant (rows)."""
    sets = synthetic_sets(tensors, meta)
    cell, head, side = 32 * scale + 4, 16, 40
    sheet = Image.new("RGB", (side + cell * len(classes), head + cell * len(sets)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(classes):
        draw.text((side + c * cell + 2, 2), name, fill="black")
    for row, (pid, (images, labels)) in enumerate(sets.items()):
        draw.text((2, head + row * cell + cell // 2), pid, fill="black")
        for c in labels.unique(sorted=True).tolist():
            pixels = (images[labels == c][0].permute(1, 2, 0) * 255).round().byte().numpy()
            tile = Image.fromarray(pixels).resize((32 * scale, 32 * scale), Image.NEAREST)
            sheet.paste(tile, (side + c * cell + 2, head + row * cell + 2))
    sheet.save(path)
    return path


def _run(args) -> int:
    return run_demo(rounds=args.rounds, participants=args.participants, method=args.method,
                    workdir=args.workdir, keep=args.keep, seed=args.seed)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="FedDGM vs FedAvg under strong label skew on CIFAR-10 mini: a local "
        "consortium, coordinator and participants as separate processes.")
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


__all__ = ["run_demo", "save_grid", "strategy", "synthetic_sets"]
