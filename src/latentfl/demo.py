"""``latentfl demo``: a whole consortium on this machine, one process per party.

It makes a temporary consortium (keys, roster, TOML configs in a work folder), starts the
coordinator and N participants as separate ``python -m latentfl`` processes on 127.0.0.1,
over CurveZMQ with signed messages, exactly as institutions would run them. The built-in
CIFAR-10 mini set is split among the participants (Dirichlet alpha 0.5) and a few rounds of
FedDGM (default) or FedAvg run. A per-round table follows the coordinator's status file. After a
FedDGM run, FedAvg on the same split runs in-process for comparison, and the last round's
synthetic images are saved as a PNG grid (one row per participant, one column per class).

All children share one process group that this process owns, and a ``finally`` block
terminates (then kills) that group, so nothing is left behind on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from latentfl.errors import ConfigError, StateError

DEMO_TIMEOUT_S = 600.0
DEMO_DATA = "builtin:cifar10-mini"
METHODS = ("feddgm", "fedavg")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FEDAVG_STRATEGY = """
[strategy]
method = "fedavg"
"""

#: Sized for a 2-core CPU: 30 distillation iterations, a random-init generator prior. Measured
#: choices (docs/results.md, "FedDGM demo settings"): Adam on the latents (SGD at the paper's
#: lr 1000 saturates images once the surrogate has been trained on synthetic data), a larger
#: initial step size than the paper's 0.01 (with 5 student steps 0.01 cannot move far enough
#: to lower the matching loss), and every round's images kept for the global model (a model
#: retrained on one round's 400 images forgets the round before).
FEDDGM_STRATEGY = """
[strategy]
method = "feddgm"

[strategy.feddgm]
ipc = 10
accumulate = true
mean = {mean}
std = {std}
device = "cpu"

[strategy.feddgm.global_model]
name = "convnet"
options = {{ width = 32, depth = 2 }}

[strategy.feddgm.distill]
iterations = 30
steps = 5
batch_size = 50
alpha_init = 0.03
optimizer = "adam"
lr_feature = 0.02
lr_style = 0.01
prior = "random"
log_every = 0

[strategy.feddgm.global_train]
epochs = 30
batch_size = 64
lr = 0.01
momentum = 0.9
augment = true

[strategy.feddgm.surrogate_train]
epochs = 30
batch_size = 64
lr = 0.01
momentum = 0.9
augment = true
"""

#: Plain SGD locally: FedDGM's student replays participants' training with plain SGD steps, so
#: a momentum trajectory is one it cannot reproduce. FedAvg does as well either way here.
SURROGATE = """
[strategy.model]
name = "convnet"
options = { width = 16, depth = 2 }

[strategy.local]
epochs = 1
batch_size = 32
lr = 0.05
"""


def strategy_toml(method: str, *, mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    """The ``[strategy]`` sections of the demo's coordinator for ``method``."""
    if method == "fedavg":
        head = FEDAVG_STRATEGY
    else:
        head = FEDDGM_STRATEGY.format(
            mean=[round(m, 4) for m in mean], std=[round(s, 4) for s in std]
        )
    return head + SURROGATE


def coordinator_toml(
    *,
    keys: Path,
    state: Path,
    port: int,
    rounds: int,
    participants: int,
    strategy: str,
    session: str = "demo",
) -> str:
    return f"""# latentfl coordinator --config {state.parent / "coordinator.toml"}
session = "{session}"
bind = "tcp://127.0.0.1:{port}"
key_dir = "{keys / "coordinator"}"
roster = "{keys / "roster.toml"}"
state_dir = "{state}"
rounds = {rounds}
seed = 0
min_participants = {participants}
quorum = 1.0
round_deadline = 240.0
heartbeat_timeout = 20.0
test_data = "builtin:cifar10-mini"
device = "cpu"
{strategy}"""


def participant_toml(
    *,
    keys: Path,
    pid: str,
    index: int,
    participants: int,
    port: int,
    state: Path,
    session: str = "demo",
) -> str:
    return f"""# latentfl participant --config {state.parent / (pid + ".toml")}
session = "{session}"
coordinator = "tcp://127.0.0.1:{port}"
key_dir = "{keys / "participants" / pid}"
roster = "{keys / "roster.toml"}"
state_dir = "{state}"
data = "builtin:cifar10-mini"
device = "cpu"
heartbeat_interval = 2.0
coordinator_timeout = 30.0

[partition]
scheme = "dirichlet"
alpha = 0.5
seed = 0
clients = {participants}
index = {index}
"""


def write_consortium(
    root: Path, *, rounds: int, participants: int, method: str = "fedavg"
) -> dict[str, Path]:
    """Keys, roster and configs for a local consortium under ``root``; config paths by party."""
    from latentfl.data import load_dataset
    from latentfl.platform.crypto import init_consortium
    from latentfl.simulate import participant_ids

    stats = load_dataset(DEMO_DATA)  # public statistics the generator renders to
    strategy = strategy_toml(method, mean=stats.mean, std=stats.std)

    keys = root / "keys"
    ids = participant_ids(participants)
    init_consortium(keys, ids)
    port = free_port()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    configs = {"coordinator": root / "coordinator.toml"}
    configs["coordinator"].write_text(
        coordinator_toml(
            keys=keys,
            state=root / "state",
            port=port,
            rounds=rounds,
            participants=participants,
            strategy=strategy,
        )
    )
    for i, pid in enumerate(ids):
        configs[pid] = root / f"{pid}.toml"
        configs[pid].write_text(
            participant_toml(
                keys=keys,
                pid=pid,
                index=i,
                participants=participants,
                port=port,
                state=root / "participants" / pid,
            )
        )
    return configs


class ProcessGroup:
    """Child processes in one process group, all stopped by :meth:`stop`."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.pgid: int | None = None
        self._logs: list = []

    def start(self, name: str, args: list[str], log: Path) -> subprocess.Popen:
        fh = log.open("wb")
        self._logs.append(fh)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        # The first child leads a new group (not the terminal's), the others join it.
        group = {"process_group": 0} if self.pgid is None else {"process_group": self.pgid}
        proc = subprocess.Popen(
            [sys.executable, "-m", "latentfl", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            **group,
        )
        if self.pgid is None:
            self.pgid = proc.pid
        self.procs[name] = proc
        return proc

    def stop(self, grace_s: float = 10.0) -> None:
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for proc in self.procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait()
        for fh in self._logs:
            fh.close()


def _read_history(status_path: Path) -> list[dict]:
    try:
        return json.loads(status_path.read_text()).get("history", [])
    except (OSError, ValueError):
        return []


def run_demo(
    *,
    rounds: int = 3,
    participants: int = 4,
    method: str = "feddgm",
    workdir: Path | None = None,
    keep: bool = False,
    timeout_s: float = DEMO_TIMEOUT_S,
    out=print,
) -> int:
    """Run the demo; return 0 when every round finished."""
    if method not in METHODS:
        raise ConfigError(f"--method is {method!r}; expected one of {', '.join(METHODS)}.")
    if participants < 2:
        raise ConfigError(f"--participants is {participants}; expected at least 2.")
    if rounds < 1:
        raise ConfigError(f"--rounds is {rounds}; expected at least 1.")
    if workdir is not None and workdir.exists() and any(workdir.iterdir()):
        raise ConfigError(f"--workdir {workdir} is not empty; expected a new or empty folder.")
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="latentfl-demo-"))
    keep = keep or workdir is not None
    configs = write_consortium(root, rounds=rounds, participants=participants, method=method)
    group = ProcessGroup()
    previous = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    started = time.monotonic()
    status_path = root / "state" / "status.json"
    try:
        coord = group.start(
            "coordinator",
            ["coordinator", "--config", str(configs["coordinator"])],
            root / "logs" / "coordinator.log",
        )
        for name, path in configs.items():
            if name != "coordinator":
                group.start(
                    name, ["participant", "--config", str(path)], root / "logs" / f"{name}.log"
                )
        out(
            f"consortium of {participants} participants in {root}; {method}, {rounds} rounds, "
            "one process per party, CurveZMQ on 127.0.0.1"
        )
        out(f"{'round':>5}  {'participants':>12}  {'test acc':>8}  {'round time':>10}")
        shown = 0
        while True:
            history = _read_history(status_path)
            for rec in history[shown:]:
                acc = rec["metrics"].get("accuracy")
                acc_s = "-" if acc is None else f"{100 * acc:7.2f}%"
                out(
                    f"{rec['round']:>5}  {len(rec['accepted']):>12}  {acc_s:>8}  "
                    f"{rec['seconds']:>9.1f}s"
                )
            shown = max(shown, len(history))
            if coord.poll() is not None:
                break
            if time.monotonic() - started > timeout_s:
                raise StateError(
                    f"the demo did not finish within {timeout_s:.0f}s; see the "
                    f"logs in {root / 'logs'}."
                )
            time.sleep(0.5)
        for name, proc in group.procs.items():
            if name != "coordinator":
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=20)
        ok = coord.returncode == 0 and shown >= rounds
        out(
            f"{'finished' if ok else 'FAILED'} in {time.monotonic() - started:.1f}s "
            f"(coordinator exit {coord.returncode})"
        )
        if ok and method == "feddgm":
            grid = save_synthetic_grid(configs["coordinator"], root / "synthetic.png")
            out(f"synthetic images of the last round: {grid}")
            keep = True  # the grid is worth looking at
            _print_fedavg_comparison(configs["coordinator"], _read_history(status_path), out)
        out(f"state:   {root / 'state'}  (checkpoints, accepted updates, status.json)")
        out(f"journal: {root / 'state' / 'journal.jsonl'}")
        out(f"logs:    {root / 'logs'}")
        return 0 if ok else 1
    finally:
        for sig in previous:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        group.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
            out(f"(removed {root}; use --keep or --workdir to keep it)")


def save_synthetic_grid(coordinator_config: Path, path: Path) -> Path:
    """PNG of the last checkpoint's synthetic images: a row per participant, a column per class."""
    import torch
    from torchvision.utils import save_image

    from latentfl.config import load_config
    from latentfl.platform.coordinator.config import CoordinatorConfig
    from latentfl.platform.coordinator.rounds import load_strategy

    config = load_config(coordinator_config, CoordinatorConfig)
    rows = []
    for sets in load_strategy(config)[1].synthetic_sets().values():
        pixels = sets.pixels()
        rows.append(torch.stack([pixels[sets.labels == c][0]
                                 for c in sets.labels.unique(sorted=True)]))
    if not rows:
        raise StateError(f"checkpoint in {config.state_dir} holds no synthetic images.")
    save_image(torch.cat(rows), path, nrow=len(rows[0]), padding=2)
    return path


def _print_fedavg_comparison(coordinator_config: Path, history: list[dict], out) -> None:
    """FedAvg on the demo's split, with the demo's surrogate and local training, in-process."""
    from dataclasses import replace

    from latentfl.config import load_config
    from latentfl.log import configure_logging
    from latentfl.platform.coordinator.config import CoordinatorConfig
    from latentfl.simulate import PartitionConfig, SimulationConfig, run_simulation

    configure_logging("console", level="warning")  # the table below says what happened
    cfg = load_config(coordinator_config, CoordinatorConfig)
    sim = SimulationConfig(
        data=DEMO_DATA,
        participants=cfg.min_participants,
        rounds=cfg.rounds,
        seed=cfg.seed,
        device="cpu",
        partition=PartitionConfig(scheme="dirichlet", alpha=0.5, seed=0),
        strategy=replace(cfg.strategy, method="fedavg"),
    )
    fedavg = run_simulation(sim).history
    out(f"{'round':>5}  {'FedDGM (global convnet-32)':>26}  {'FedAvg (convnet-16)':>20}")
    for rec, base in zip(history, fedavg, strict=False):
        acc = rec["metrics"].get("accuracy")
        out(
            f"{rec['round']:>5}  {'-' if acc is None else f'{100 * acc:.2f}%':>26}  "
            f"{100 * base.accuracy:>19.2f}%"
        )


def _raise_interrupt(*_args) -> None:
    raise KeyboardInterrupt


def _run(args) -> int:
    rounds = args.rounds or (2 if args.method == "feddgm" else 3)
    return run_demo(
        rounds=rounds,
        participants=args.participants,
        method=args.method,
        workdir=args.workdir,
        keep=args.keep,
    )


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="Run a local consortium: coordinator and participants "
        "as separate processes, FedDGM on CIFAR-10 mini.",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default="feddgm",
        help="FedDGM (default; FedAvg runs beside it for comparison) or FedAvg.",
    )
    p.add_argument(
        "--rounds", type=int, default=None, help="Rounds (default 2 for FedDGM, 3 for FedAvg)."
    )
    p.add_argument("--participants", type=int, default=4, help="Participants (default 4).")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="Folder for keys, configs, state and logs (kept); default a temp folder.",
    )
    p.add_argument("--keep", action="store_true", help="Keep the temporary folder afterwards.")
    p.set_defaults(handler=_run)


__all__ = ["ProcessGroup", "free_port", "run_demo", "write_consortium"]
