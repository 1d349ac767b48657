"""A whole consortium on this machine: keys, roster, configs and daemon processes on 127.0.0.1.

:class:`LocalConsortium` is what the demo, the daemon tests and the ingest benchmark share. It
creates real CURVE and Ed25519 keys and the roster (``platform/crypto``), builds the coordinator's
and each participant's config as the config dataclasses (validated like a file is), writes them
as TOML through :func:`latentfl.config.write_config`, and runs the daemons as separate
``python -m latentfl`` processes through a :class:`~latentfl.platform.supervisor.Supervisor`::

    with LocalConsortium(tmp, 2, coordinator={"rounds": 1}) as consortium:
        consortium.start()
        assert consortium.wait_finished(timeout_s=120) == 0

Tests that run a daemon in a thread take the config objects directly
(:meth:`~LocalConsortium.coordinator_config`, :meth:`~LocalConsortium.participant_config`).
When a ``partition`` is given, participant ``i`` trains on part ``i`` of the shared dataset,
exactly as ``latentfl simulate`` splits it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from latentfl.config import from_dict, to_dict, write_config
from latentfl.data import PartitionConfig
from latentfl.errors import StateError
from latentfl.platform.admin_client import AdminConfig
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.coordinator.status import daemon_running
from latentfl.platform.crypto import Identity, init_consortium, load_identity
from latentfl.platform.crypto.consortium import OPERATORS_DIR
from latentfl.platform.participant.config import ParticipantConfig
from latentfl.platform.supervisor import Supervisor, wait_until
from latentfl.simulate import participant_ids

COORDINATOR = "coordinator"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalConsortium:
    """Keys, configs and daemon processes of one consortium under ``root`` (and keys for the
    ``operators`` named, who may steer it with ``latentfl admin``).

    ``coordinator`` and ``participant`` are config tables (keys as in the TOML files; values may
    be config dataclasses) laid over the connection settings every party needs; the overrides of
    :meth:`coordinator_config` and :meth:`participant_config` are laid over those.
    """

    def __init__(
        self,
        root: Path,
        participants: int | Sequence[str],
        *,
        session: str = "local",
        port: int | None = None,
        coordinator: Mapping[str, Any] | None = None,
        participant: Mapping[str, Any] | None = None,
        partition: PartitionConfig | None = None,
        operators: Sequence[str] = (),
    ) -> None:
        self.root = Path(root).resolve()
        self.ids = participant_ids(participants) if isinstance(participants, int) \
            else list(participants)
        self.session = session
        self.keys = self.root / "keys"
        self.roster = self.keys / "roster.toml"
        self.state_dir = self.root / "state"
        self.endpoint = f"tcp://127.0.0.1:{port or free_port()}"
        self.partition = partition
        self._coordinator = dict(coordinator or {})
        self._participant = dict(participant or {})
        self.operators = list(operators)
        init_consortium(self.keys, self.ids, self.operators)
        self.supervisor = Supervisor(self.root / "logs")

    def coordinator_config(self, **overrides: Any) -> CoordinatorConfig:
        """The coordinator's config: this consortium's keys and endpoint, then the overrides."""
        table = {
            "session": self.session, "bind": self.endpoint, "key_dir": self.keys / COORDINATOR,
            "roster": self.roster, "state_dir": self.state_dir,
            "min_participants": len(self.ids), **self._coordinator, **overrides,
        }
        return from_dict(CoordinatorConfig, to_dict(table), source="coordinator config")

    def participant_config(self, pid: str, **overrides: Any) -> ParticipantConfig:
        """Participant ``pid``'s config: its keys, the coordinator's endpoint, its data share."""
        table: dict[str, Any] = {
            "session": self.session, "coordinator": self.endpoint, "roster": self.roster,
            "key_dir": self.keys / "participants" / pid, "data": "builtin:cifar10-mini",
        }
        if self.partition is not None:
            table["partition"] = {**asdict(self.partition), "clients": len(self.ids),
                                  "index": self.ids.index(pid)}
        table.update({**self._participant, **overrides})
        return from_dict(ParticipantConfig, to_dict(table), source=f"{pid}'s config")

    def admin_config(self, oid: str, **overrides: Any) -> AdminConfig:
        """Operator ``oid``'s config for ``latentfl admin``: its keys, this consortium's
        endpoint and session."""
        table = {"session": self.session, "coordinator": self.endpoint, "roster": self.roster,
                 "key_dir": self.keys / OPERATORS_DIR / oid, **overrides}
        return from_dict(AdminConfig, to_dict(table), source=f"{oid}'s admin config")

    def identity(self, pid: str) -> Identity:
        """Participant ``pid``'s key pairs (for hand-driven clients)."""
        return load_identity(self.keys / "participants" / pid)

    def config_path(self, name: str) -> Path:
        """Where the TOML config of party ``name`` (``coordinator`` or an id) is written."""
        return self.root / f"{name}.toml"

    def start_coordinator(self, config: CoordinatorConfig | None = None, *,
                          ready_timeout_s: float = 60.0) -> None:
        """Write the coordinator's config, start its process, return once it is serving."""
        path = write_config(self.config_path(COORDINATOR), config or self.coordinator_config(),
                            comment=f"latentfl coordinator --config {self.config_path(COORDINATOR)}")
        proc = self.supervisor.start(COORDINATOR, [COORDINATOR, "--config", str(path)])
        pid_file = self.state_dir / "coordinator.pid"

        def serving() -> bool:
            if proc.poll() is not None:
                raise StateError(f"the coordinator exited with {proc.returncode} while starting; "
                                 f"the end of its log:\n{self.supervisor.tail(COORDINATOR)}")
            return daemon_running(pid_file) == proc.pid

        wait_until(serving, ready_timeout_s, "the coordinator to serve")

    def start_participant(self, pid: str, config: ParticipantConfig | None = None) -> None:
        """Write participant ``pid``'s config and start its process."""
        path = write_config(self.config_path(pid), config or self.participant_config(pid),
                            comment=f"latentfl participant --config {self.config_path(pid)}")
        self.supervisor.start(pid, ["participant", "--config", str(path)])

    def start(self) -> None:
        """Start the coordinator, then every participant, each with its default config."""
        self.start_coordinator()
        for pid in self.ids:
            self.start_participant(pid)

    def wait_finished(self, timeout_s: float, *, participants_s: float = 30.0) -> int:
        """Wait for the coordinator to finish its rounds, then up to ``participants_s`` for the
        participants it told so to exit; the coordinator's exit code (0 = every round ran)."""
        code = self.supervisor.wait(COORDINATOR, timeout_s)
        deadline = time.monotonic() + participants_s
        for proc in self.supervisor.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        return code

    def stop(self, grace_s: float = 10.0) -> dict[str, int]:
        """Stop every process (SIGTERM, then SIGKILL after ``grace_s``); their exit codes."""
        return self.supervisor.stop(grace_s)

    def __enter__(self) -> LocalConsortium:
        self.supervisor.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.supervisor.__exit__(*exc_info)


__all__ = ["LocalConsortium", "free_port"]
