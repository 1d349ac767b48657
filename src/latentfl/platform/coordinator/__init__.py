"""The coordinator daemon and the socket-free parts it dispatches to.

``daemon`` (receive, verify, dispatch, send) and ``router`` (the socket) own the I/O; ``rounds``
(the round state machine), ``conductor`` (opening and closing rounds in time), ``intake``
(accepting updates), ``secagg_exchange`` (the secagg exchange of secagg and ckks rounds),
``ckks_sum`` (the ckks ciphertext layer), ``aggregation_worker`` (the thread that aggregates),
``audits`` (operators' requests, shared reports and their schema), ``peers``, ``refusals`` (journaling refusals at a bounded rate), ``store``,
``journal`` and ``status`` decide and remember; ``status_view`` renders the status for people.
"""

from latentfl.platform.coordinator.config import CoordinatorConfig, check_quorum
from latentfl.platform.coordinator.daemon import Coordinator
from latentfl.platform.coordinator.journal import (
    Journal,
    read_journal,
    verify_against_checkpoint,
    verify_journal,
)
from latentfl.platform.coordinator.rounds import RoundRecord, Rounds
from latentfl.platform.coordinator.status import collect_status, daemon_running
from latentfl.platform.coordinator.status_view import render_html, render_text
from latentfl.platform.coordinator.store import StateStore

__all__ = [
    "Coordinator",
    "CoordinatorConfig",
    "Journal",
    "RoundRecord",
    "Rounds",
    "StateStore",
    "check_quorum",
    "collect_status",
    "daemon_running",
    "read_journal",
    "render_html",
    "render_text",
    "verify_against_checkpoint",
    "verify_journal",
]
