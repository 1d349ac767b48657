"""The coordinator's [distributed] section: rounds distilled on a 2-rank gloo group on loopback."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from latentfl.config import from_dict
from latentfl.errors import ConfigError
from latentfl.models import model_manifest
from latentfl.platform.coordinator import CoordinatorConfig, Journal, Rounds, StateStore
from latentfl.platform.coordinator.conductor import RoundConductor
from latentfl.platform.coordinator.journal import read_journal
from latentfl.strategies import Update, build_strategy
from latentfl.torchrun import free_port

SMALL = {"name": "convnet", "num_classes": 4, "in_shape": [3, 8, 8],
         "options": {"width": 4, "depth": 1}}
FEDDGM = {
    "method": "feddgm", "model": SMALL,
    "local": {"epochs": 1, "batch_size": 8, "lr": 0.05},
    "feddgm": {"global_model": SMALL, "ipc": 1, "device": "cpu",
               "distill": {"iterations": 2, "steps": 2, "log_every": 0},
               "global_train": {"epochs": 1, "batch_size": 8},
               "surrogate_train": {"epochs": 1, "batch_size": 8}},
}


def close_one_round(state: Path, **distributed) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Open round 1 for two participants, accept their updates, close it through the conductor
    (the daemon's path); the checkpoint's tensors and the journal."""
    extra = {"distributed": distributed} if distributed else {}
    config = from_dict(CoordinatorConfig, {
        "session": "s", "key_dir": "k", "roster": "r", "state_dir": str(state), "rounds": 1,
        "min_participants": 2, "device": "cpu", "strategy": FEDDGM, **extra})
    store = StateStore(config.state_dir)
    rounds = Rounds(config, build_strategy(config.strategy), store)
    rounds.resume()
    journal = Journal(store.journal_path)
    conductor = RoundConductor(config, rounds, journal,
                               model_manifest(config.strategy.model.build()), None)
    conductor.step(["a", "b"], now=0.0)
    for i, pid in enumerate(["a", "b"]):
        gen = torch.Generator().manual_seed(i)
        weights = {k: v + 0.01 * torch.randn(v.shape, generator=gen)
                   for k, v in rounds.strategy.global_weights().items()}
        rounds.accept(Update(pid, 1, weights, num_examples=10, num_steps=1), f"d{i}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank has, so that local and group sets are bit-equal
    try:
        conductor.step(["a", "b"], now=1.0)  # quorum: the round closes, aggregation starts
        assert conductor.finish(wait=300.0) is not None
    finally:
        torch.set_num_threads(threads)
    journal.close()
    return store.load_checkpoint(1).tensors, read_journal(store.journal_path)


@pytest.fixture(scope="module")
def local_round(tmp_path_factory):
    """The round without a [distributed] section (the reference)."""
    return close_one_round(tmp_path_factory.mktemp("local") / "state")


def assert_same_checkpoint(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def events(journal: list[dict], prefix: str = "distill_") -> list[dict]:
    return [e for e in journal if e["event"].startswith(prefix)]


def test_two_ranks_give_the_checkpoint_of_one_process(tmp_path, local_round):
    """A round distilled on 2 local gloo ranks checkpoints exactly what local distillation does,
    and the journal says the group did it."""
    tensors, journal = close_one_round(tmp_path / "state", ranks_per_node=2, backend="gloo",
                                       endpoint=f"127.0.0.1:{free_port()}")
    assert_same_checkpoint(tensors, local_round[0])
    (done,) = events(journal)
    assert done["event"] == "distill_group_done" and done["round"] == 1
    assert done["attempt"] == 1 and done["ranks"] == 2 and done["participants"] == 2
    assert not events(local_round[1])


def kill_rank_one(root: Path, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL every worker-group rank 1 started under ``root`` (this test's processes only)."""
    while not stop.is_set():
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) in killed:
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
                environ = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if (b"latentfl.distill.group_worker" in cmdline and str(root).encode() in cmdline
                    and b"LOCAL_RANK=1" in environ):
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed.append(int(proc.name))
                except ProcessLookupError:
                    pass
        stop.wait(0.05)


def test_a_killed_rank_fails_the_attempt_then_the_round_falls_back(tmp_path, local_round):
    """Rank 1 killed in both attempts: two clear journal lines, then local distillation, and the
    round still checkpoints what it would have (no accepted update lost)."""
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_rank_one, args=(tmp_path, stop, killed), daemon=True)
    killer.start()
    try:
        tensors, journal = close_one_round(tmp_path / "state", ranks_per_node=2, backend="gloo",
                                           endpoint=f"127.0.0.1:{free_port()}")
    finally:
        stop.set()
        killer.join()
    assert len(killed) >= 2
    failed = events(journal)[:2]
    assert [e["event"] for e in failed] == ["distill_group_failed"] * 2
    assert [e["attempt"] for e in failed] == [1, 2]
    for e in failed:
        assert "worker group exited with status" in e["reason"] and Path(e["log"]).is_file()
        assert "rank 1" in e["reason"] and "SIGKILL" in e["reason"]  # which rank died, how
    fallback = events(journal)[2]
    assert fallback["event"] == "distill_fallback_local" and fallback["round"] == 1
    closed = events(journal, "round_closed")[0]
    assert closed["accepted"] == ["a", "b"]
    assert_same_checkpoint(tensors, local_round[0])


def test_a_node_that_never_joins_times_out_and_the_round_falls_back(tmp_path, local_round):
    """nodes = 2 with no second node: each attempt fails after rendezvous_timeout with a journal
    line saying so, and the round is distilled locally to the same checkpoint."""
    tensors, journal = close_one_round(tmp_path / "state", ranks_per_node=1, nodes=2,
                                       backend="gloo", rendezvous_timeout=1.0,
                                       endpoint=f"127.0.0.1:{free_port()}")
    failed, fallback = events(journal)[:2], events(journal)[2]
    assert [e["event"] for e in failed] == ["distill_group_failed"] * 2
    assert all("timed out" in e["reason"].lower() for e in failed)
    assert fallback["event"] == "distill_fallback_local"
    assert_same_checkpoint(tensors, local_round[0])


def test_a_bad_endpoint_is_a_config_error(tmp_path):
    """distributed.endpoint must be HOST:PORT; the error names the key and the expected form."""
    with pytest.raises(ConfigError, match="distributed.endpoint"):
        from_dict(CoordinatorConfig, {"session": "s", "key_dir": "k", "roster": "r",
                                      "state_dir": str(tmp_path), "strategy": FEDDGM,
                                      "distributed": {"endpoint": "localhost"}})
