"""The coordinator daemon and the socket-free parts it dispatches to.

``daemon`` (receive, verify, dispatch, send) and ``router`` (the socket) own the I/O; ``rounds``
(the round state machine), ``conductor`` (opening and closing rounds in time), ``intake``
(accepting updates), ``secure`` (CKKS secure aggregation), ``aggregation`` (the worker thread),
``audit_service``, ``peers``, ``refusals`` (journaling refusals at a bounded rate), ``store``,
``journal`` and ``status`` decide and remember.
"""

from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.coordinator.daemon import Coordinator
from latentfl.platform.coordinator.journal import (
    Journal,
    read_journal,
    verify_against_checkpoint,
    verify_journal,
)
from latentfl.platform.coordinator.rounds import RoundRecord, Rounds
from latentfl.platform.coordinator.status import daemon_running, read_status, render_status
from latentfl.platform.coordinator.store import StateStore

__all__ = [
    "Coordinator",
    "CoordinatorConfig",
    "Journal",
    "RoundRecord",
    "Rounds",
    "StateStore",
    "daemon_running",
    "read_journal",
    "read_status",
    "render_status",
    "verify_against_checkpoint",
    "verify_journal",
]
