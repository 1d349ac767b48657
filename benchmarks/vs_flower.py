"""latentfl beside Flower 1.42.0's deployment engine on 127.0.0.1: FedAvg in the clear and under
secure aggregation, rounds 2-R.

Flower is installed by this script into its own virtual environment (``--flower-venv``, default
``.cache/vs-flower-venv``, git-ignored; never a dependency of latentfl). Its run: one
``flower-superlink``, one ``flower-supernode`` per participant, and the app in
``benchmarks/vs_flower_app`` submitted with ``flwr run``: FedAvg over every node, each node
returning the received array plus 0.001 (no training). ``insecure`` runs it without TLS;
``tls`` with TLS (a CA and a server certificate for 127.0.0.1 made here) and SuperNode
authentication (an ECDSA key per node, registered with ``flwr supernode register``): its
closest match to our CURVE and Ed25519 signatures.

latentfl's run: ``latentfl keys init``'s keys and roster (through LocalConsortium), a
coordinator and N agents as separate processes, plain FedAvg, ``epochs = 1, max_steps = 1,
batch_size = 8``, ``max_test = 100``; CURVE, signatures, the journal and checkpoints are always
on. Both send the same number of float32 values: ``small`` = 5,970 (ConvNet width 8, depth 2),
``large`` = 320,010 (ConvNet-3 width 128, 1.28 MB).

Secure aggregation (``--aggregation secagg``): Flower's ``SecAggPlusWorkflow`` (legacy FedAvg
in a ``DefaultWorkflow``, ``secaggplus_mod`` on the ClientApp, no timeout) against latentfl's
``aggregation.mode = "secagg"``, with Flower given latentfl's neighbourhood and threshold:
``num_shares`` = degree(N) + 1 shares per node, itself included (N at N <= 16, 15 at N = 20),
``reconstruction_threshold`` = floor(2 x num_shares / 3) + 1. A dropout (``--dropouts 1``):
in round 2 one participant's whole process tree is SIGKILLed after it sent its key shares and
before its masked upload (Flower: partition 0's ClientApp kills its SuperNode's process group
when the round's masked-vector request reaches it; latentfl: this script kills the agent whose
SECAGG_SHARES the coordinator journals first, before every share, hence any share inbox, is
in). Neither server has a phase deadline: each waits until its liveness rule marks the silent
participant offline, 60 s without a heartbeat on both (Flower: 2 x its fixed 30 s heartbeat
interval; latentfl: ``heartbeat_timeout = 60``), then unmasks from the survivors' shares;
later rounds run with N - 1. The participant columns are over the survivors.

The rows of one case run one after another, Flower and latentfl alternating, so they see
the same load. Columns, over rounds 2-R (from the end of round 1 to the end of round R):
seconds per round and the slowest round's seconds; CPU seconds per round of the server's
process tree (SuperLink with its SuperExec and ServerApp; the coordinator with its threads)
and of one participant's tree (mean over participants; SuperNode with its per-message
ClientApp processes); peak summed RSS of the server's and of the largest participant's tree;
TCP payload bytes per participant per round on the participant's connections to the server's
port (``ss``).

    python benchmarks/vs_flower.py --aggregation plain --participants 5 10 --sizes small large
    python benchmarks/vs_flower.py --aggregation secagg --security tls --dropouts 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _flower_setup import ensure_flower, make_node_keys, make_tls  # noqa: E402
from _meter import TreeMeter  # noqa: E402

from latentfl.errors import StateError  # noqa: E402
from latentfl.platform.coordinator import read_journal  # noqa: E402
from latentfl.platform.local import COORDINATOR, LocalConsortium, free_port  # noqa: E402
from latentfl.platform.supervisor import wait_until  # noqa: E402
from latentfl.privacy.secagg import degree, threshold  # noqa: E402
from latentfl.simulate import PartitionConfig  # noqa: E402

APP = Path(__file__).resolve().parent / "vs_flower_app"
SIZES = {"small": (5970, {"width": 8, "depth": 2}), "large": (320010, {"width": 128, "depth": 3})}
RUN_TIMEOUT_S = 900.0
DROP_ROUND = 2  # the first round measured
SILENCE_S = 60.0  # both mark a silent participant offline after this long (module docstring)


@dataclass
class Row:
    system: str
    security: str
    aggregation: str
    n: int
    dropped: int
    values: int
    s_per_round: float
    slowest_s: float
    server_cpu: float
    participant_cpu: float
    server_rss_mb: float
    participant_rss_mb: float
    wire_kb: float


def _window(meter: TreeMeter, ends: dict[int, float], rounds: int, survivors: list[str],
            system: str, security: str, aggregation: str, n: int, values: int) -> Row:
    """Rounds 2 to ``rounds``; participant columns over ``survivors`` (a dropped one is gone)."""
    t0, t1, per = ends[1], ends[rounds], rounds - 1
    cpu = [(meter.at(t1, p, "cpu") - meter.at(t0, p, "cpu")) / per for p in survivors]
    wire = [(meter.at(t1, p, "wire") - meter.at(t0, p, "wire")) / per for p in survivors]
    slowest = max(ends[r] - ends[r - 1] for r in range(2, rounds + 1))
    return Row(system, security, aggregation, n, n - len(survivors), values, (t1 - t0) / per,
               slowest, (meter.at(t1, "server", "cpu") - meter.at(t0, "server", "cpu")) / per,
               sum(cpu) / len(cpu), meter.peak_rss["server"] / 2**20,
               max(meter.peak_rss[p] for p in survivors) / 2**20,
               sum(wire) / len(wire) / 1e3)


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_flower(venv: Path, n: int, size: str, rounds: int, tls: bool, secagg: bool,
               dropout: bool, root: Path) -> Row:
    values = SIZES[size][0]
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "FLWR_HOME": str(root / "home"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    port = free_port()
    app = root / "app"
    shutil.copytree(APP, app)
    if secagg:  # the app's SecAgg+ ServerApp and ClientApp
        project = app / "pyproject.toml"
        project.write_text(project.read_text().replace('"vsbench_app:server"',
                                                       '"vsbench_app:secagg_server"')
                           .replace('"vsbench_app:client"', '"vsbench_app:secagg_client"'))
    (root / "home").mkdir()
    link = f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\n'
    server_args = ["flower-superlink", "--host", "127.0.0.1", "--port", str(port),
                   "--disable-runtime-dependency-installation"]
    if tls:
        ca, cert, key = make_tls(root / "tls")
        link += f'root-certificates = "{ca}"\n'
        server_args += ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert),
                        "--ssl-keyfile", str(key), "--enable-supernode-auth"]
    else:
        link += "insecure = true\n"
        server_args += ["--insecure"]
    (root / "home" / "config.toml").write_text(link)
    procs = [_start(server_args, root / "superlink.log", env)]
    try:
        wait_until(lambda: _listening(port), 120, "the SuperLink to listen")
        for i in range(n):
            node_args = ["flower-supernode", "--superlink", f"127.0.0.1:{port}",
                         "--port", str(free_port()), "--node-config", f"partition-id={i}"]
            if tls:
                private, public = make_node_keys(root / "nodes" / str(i))
                subprocess.run(["flwr", "supernode", "register", str(public), "bench"], env=env,
                               cwd=app, check=True, capture_output=True, timeout=120)
                node_args += ["--root-certificates", str(ca),
                              "--auth-supernode-private-key", str(private),
                              "--auth-supernode-public-key", str(public)]
            else:
                node_args += ["--insecure"]
            procs.append(_start(node_args, root / f"supernode-{i}.log", env))
        times = root / "times.txt"
        names = [f"p{i}" for i in range(n)]
        roots = {"server": procs[0].pid, **{p: proc.pid for p, proc in zip(names, procs[1:],
                                                                            strict=True)}}
        with TreeMeter(roots, port) as meter:
            holders = degree(n) + 1  # latentfl's neighbourhood (itself included) and threshold
            config = (f'nodes={n} values={values} num-rounds={rounds} timing-file="{times}" '
                      f'num-shares={holders} reconstruction-threshold={threshold(holders)} '
                      f'drop-round={DROP_ROUND if dropout else 0}')
            subprocess.run(["flwr", "run", str(app), "bench", "--run-config", config], env=env,
                           cwd=app, check=True, capture_output=True, timeout=300)
            wait_until(lambda: _ends(times).get(rounds) is not None, RUN_TIMEOUT_S,
                       f"Flower's round {rounds} (logs in {root})")
        if dropout and procs[1].poll() is None:
            raise StateError(f"Flower's partition 0 did not drop in round {DROP_ROUND}")
        return _window(meter, _ends(times), rounds, names[1:] if dropout else names, "Flower",
                       "TLS + node auth" if tls else "insecure",
                       "SecAgg+" if secagg else "plain", n, values)
    finally:
        _stop(procs)


def _ends(times: Path) -> dict[int, float]:
    try:
        lines = times.read_text().split("\n")
    except OSError:
        return {}
    return {int(p[1]): float(p[2]) for p in (line.split() for line in lines)
            if len(p) == 3 and p[0] == "end"}


def _listening(port: int) -> bool:
    out = subprocess.run(["ss", "-tlnH", f"( sport = :{port} )"], capture_output=True,
                         text=True, check=False).stdout
    return bool(out.strip())


def run_latentfl(n: int, size: str, rounds: int, secagg: bool, dropout: bool,
                 root: Path) -> Row:
    values, model = SIZES[size]
    coordinator = {
        "rounds": rounds, "device": "cpu", "max_test": 100, "heartbeat_timeout": SILENCE_S,
        "round_deadline": RUN_TIMEOUT_S, "min_participants": n - dropout,
        "strategy": {"method": "fedavg", "model": {"name": "convnet", "options": model},
                     "local": {"epochs": 1, "max_steps": 1, "batch_size": 8}},
    }
    if secagg:  # no phase deadline: as in Flower, only a participant marked offline is let go
        coordinator["aggregation"] = {"mode": "secagg", "phase_deadline": RUN_TIMEOUT_S}
    partition = PartitionConfig(scheme="iid", seed=0)
    with LocalConsortium(root, n, session="vs-flower", coordinator=coordinator,
                         partition=partition) as consortium, ThreadPoolExecutor(1) as pool:
        consortium.start()
        procs = consortium.supervisor.procs
        names = list(consortium.ids)
        roots = {"server": procs[COORDINATOR].pid, **{p: procs[p].pid for p in names}}
        port = int(consortium.endpoint.rsplit(":", 1)[1])
        done = threading.Event()
        victim = pool.submit(_kill_first_sharer, consortium, done) if dropout else None
        try:
            with TreeMeter(roots, port) as meter:
                wait_until(lambda: _closed(consortium).get(rounds) is not None, RUN_TIMEOUT_S,
                           f"latentfl's round {rounds} (logs in {root})")
        finally:
            done.set()
        ends = _closed(consortium)
        consortium.wait_finished(120)
        survivors = names
        if victim is not None:
            survivors = [p for p in names if p != victim.result()]
            _check_recovered(consortium, n, victim.result())
    return _window(meter, ends, rounds, survivors, "latentfl", "CURVE + Ed25519",
                   "secagg" if secagg else "plain", n, values)


def _kill_first_sharer(consortium: LocalConsortium, done: threading.Event) -> str | None:
    """SIGKILL the agent whose key shares the coordinator accepts first in round DROP_ROUND
    (it has shared; the others have not all shared yet, so no share inbox, hence no masked
    upload, has left the coordinator); its id (None if ``done`` is set before that)."""
    path = consortium.state_dir / "journal.jsonl"
    wait_until(lambda: path.exists() or done.is_set(), RUN_TIMEOUT_S, "the journal")
    with path.open("rb") as fh:
        while not done.is_set():
            line = fh.readline()
            if not line.endswith(b"\n"):  # nothing new, or a line being written
                fh.seek(-len(line), os.SEEK_CUR)
                time.sleep(0.001)
                continue
            entry = json.loads(line)
            if (entry.get("event"), entry.get("kind"), entry.get("round")) == (
                    "accepted", "SECAGG_SHARES", DROP_ROUND):
                consortium.supervisor.procs[entry["peer"]].kill()
                return entry["peer"]
    return None


def _check_recovered(consortium: LocalConsortium, n: int, victim: str) -> None:
    """Round DROP_ROUND opened with all ``n`` and was unmasked with ``victim`` dropped."""
    journal = read_journal(consortium.state_dir / "journal.jsonl")
    opened = [len(e["participants"]) for e in journal
              if e["event"] == "round_opened" and e["round"] == DROP_ROUND]
    dropped = [e["dropped"] for e in journal
               if e["event"] == "secagg_unmasked" and e["round"] == DROP_ROUND]
    if opened != [n] or dropped != [[victim]]:
        raise StateError(f"round {DROP_ROUND} opened with {opened} participants and was "
                         f"unmasked dropping {dropped}; expected [{n}] and [[{victim!r}]]")


def _closed(consortium: LocalConsortium) -> dict[int, float]:
    try:
        entries = read_journal(consortium.state_dir / "journal.jsonl")
    except (OSError, ValueError):
        return {}
    return {e["round"]: e["time"] for e in entries if e.get("event") == "round_closed"}


def print_table(rows: list[Row]) -> None:
    print("| platform | transport | aggregation | N | dropped | values | s / round | "
          "slowest round s | server CPU s / round | one participant CPU s / round | "
          "peak RSS server / participant (MB) | wire kB / participant / round |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        print(f"| {r.system} | {r.security} | {r.aggregation} | {r.n} | {r.dropped} | "
              f"{r.values:,} | {r.s_per_round:.3f} | {r.slowest_s:.3f} | {r.server_cpu:.3f} | "
              f"{r.participant_cpu:.3f} | {r.server_rss_mb:.0f} / {r.participant_rss_mb:.0f} | "
              f"{r.wire_kb:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, nargs="+", default=[5, 10, 20],
                        help="N of the plain rows.")
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["small", "large"],
                        help="Update sizes of the plain rows.")
    parser.add_argument("--security", nargs="+", choices=["insecure", "tls"],
                        default=["insecure", "tls"], help="Flower's transports to run.")
    parser.add_argument("--aggregation", nargs="+", choices=["plain", "secagg"],
                        default=["plain", "secagg"],
                        help="plain FedAvg; secagg: Flower's SecAgg+ against latentfl's secagg.")
    parser.add_argument("--secagg-participants", type=int, nargs="+", default=[10, 20],
                        help="N of the secagg rows.")
    parser.add_argument("--secagg-sizes", nargs="+", choices=sorted(SIZES), default=["small"],
                        help="Update sizes of the secagg rows.")
    parser.add_argument("--dropouts", type=int, nargs="+", choices=[0, 1], default=[0, 1],
                        help=f"secagg rows: participants that die in round {DROP_ROUND}.")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--flower-venv", type=Path, default=Path(".cache/vs-flower-venv"))
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 1 is left out)")
    cases = []  # (secagg, N, size, dropout)
    if "plain" in args.aggregation:
        cases += [(False, n, size, False) for n in args.participants for size in args.sizes]
    if "secagg" in args.aggregation:
        cases += [(True, n, size, bool(d)) for n in args.secagg_participants
                  for size in args.secagg_sizes for d in args.dropouts]
    venv = ensure_flower(args.flower_venv)
    rows: list[Row] = []
    for secagg, n, size, dropout in cases:
        for i, security in enumerate(args.security):
            with tempfile.TemporaryDirectory(prefix="vs-flower-") as tmp:
                rows.append(run_flower(venv, n, size, args.rounds, security == "tls", secagg,
                                       dropout, Path(tmp)))
            print_table(rows[-1:])
            if i == 0:  # latentfl between Flower's transports: the same load for all
                with tempfile.TemporaryDirectory(prefix="vs-latentfl-") as tmp:
                    rows.append(run_latentfl(n, size, args.rounds, secagg, dropout, Path(tmp)))
                print_table(rows[-1:])
            print(f"load average: {os.getloadavg()[0]:.1f} (1 min)", flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} "
          "CPUs\n")
    print_table(rows)


if __name__ == "__main__":
    main()
