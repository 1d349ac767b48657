"""The coordinator's round state machine: plan, collect, aggregate, evaluate, checkpoint.

It owns no socket and no clock: the daemon feeds it the online participants, accepted
updates and the time, and sends the tasks it returns. Phases of round ``r``::

    waiting     fewer than min_participants online; nothing sent
    collecting  plan written (STATE/rounds/r/plan.json), tasks sent, updates arriving
    aggregating quorum reached, deadline passed or every missing participant offline:
                aggregate -> evaluate -> checkpoint r (later updates are 'late'), then
                round r+1 starts waiting
    finished    all configured rounds done

An operator may abort a collecting round (``latentfl admin abort-round``): it is skipped, not
re-run. Nothing is aggregated, the strategy stays as checkpoint r-1 left it, checkpoint r records
that (a history entry with ``aborted = True`` and the updates it had accepted), and round r+1
follows. The accepted update files stay in STATE/rounds/r/updates; the agents, which never take
a task for a round they already delivered, simply get round r+1's.

Everything needed to resume is on disk before it is acted on: the plan before any TASK, each
update before its ACK, the checkpoint before the next round's plan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from latentfl.data import evaluation_tensors, load_dataset
from latentfl.device import resolve_device
from latentfl.errors import ConfigError, ProtocolError, Reason
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.coordinator.status import no_run_yet
from latentfl.platform.coordinator.store import Checkpoint, StateStore
from latentfl.platform.protocol import pack_tensors
from latentfl.strategies import (
    Aggregation,
    Strategy,
    SyntheticImages,
    Task,
    Update,
    build_strategy,
    select_participants,
    set_aside_of,
    synthetic_sets_of,
)
from latentfl.training import evaluate

Phase = Literal["waiting", "collecting", "aggregating", "finished"]
Evaluator = Callable[[Strategy], dict[str, float]]


@dataclass
class RoundRecord:
    """A finished round, as shown in status and the demo's table."""

    round: int
    participants: list[str]
    accepted: list[str]
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    aborted: bool = False  # skipped by an operator: nothing was aggregated
    #: updates the strategy set aside (robust rule, FedDGM screening), as SetAside.as_dict()
    set_aside: list[dict] = field(default_factory=list)


class Rounds:
    """Round bookkeeping for one session; see the module docstring for the phases."""

    def __init__(self, config: CoordinatorConfig, strategy: Strategy, store: StateStore, *,
                 evaluate: Evaluator | None = None,
                 journal_anchor: Callable[[], dict] | None = None) -> None:
        self.config = config
        #: the journal's length and head hash, recorded in every checkpoint (journal.py)
        self.journal_anchor = journal_anchor
        self.strategy = strategy
        self.store = store
        self.evaluate = evaluate
        self.round = 1
        self.phase: Phase = "waiting"
        self.plan: list[str] = []
        self.tasks: dict[str, Task] = {}
        self.updates: dict[str, Update] = {}
        self.digests: dict[str, str] = {}
        #: (round, participant) -> digest of the last closed round's updates: a re-send still
        #: in flight when it closed (an ACK lost, a coordinator restart) is acked, not "late"
        self.closed_digests: dict[tuple[int, str], str] = {}
        self.started_at = 0.0
        # after a restart, participants need a moment to reconnect before counting as stalled
        self.grace_until = 0.0
        self.history: list[RoundRecord] = []
        #: (round, synthetic sets) of the latest checkpoint, for the audit service; replaced
        #: as a whole (by the aggregation thread), so a reader sees one round's sets
        self.synthetic: tuple[int, Mapping[str, SyntheticImages]] = (0, {})

    # -- start-up -------------------------------------------------------------------------
    def resume(self) -> None:
        """Load the last checkpoint (or initialise round 0) and the round in progress."""
        latest = self.store.latest_round()
        if latest is None:
            self.strategy.initialize(self.config.seed)
            tensors, meta = self.strategy.state_dict()
            self.store.save_checkpoint(0, tensors, {"strategy": meta, "round": 0,
                                                    **self._anchor()})
            latest = 0
        else:
            ckpt = self.store.load_checkpoint(latest)
            restore(self.strategy, ckpt, self.config.seed)
            self.history = [RoundRecord(**h) for h in ckpt.meta.get("history", [])]
        self.synthetic = (latest, dict(synthetic_sets_of(self.strategy)))
        self.round = latest + 1
        if self.round > self.config.rounds:
            self.phase = "finished"
            return
        plan = self.store.load_plan(self.round)
        if plan is not None:
            self._open(plan, time.time())
            self.grace_until = time.time() + self.config.heartbeat_timeout
            for update, digest in self.store.load_updates(self.round):
                if update.participant not in self.tasks:  # dropped (revoked) after it was saved
                    continue
                self.updates[update.participant] = update
                self.digests[update.participant] = digest

    # -- planning -------------------------------------------------------------------------
    def maybe_start(self, online: Sequence[str], now: float) -> dict[str, Task]:
        """Open the next round if enough participants are online; return tasks to send."""
        if self.phase != "waiting" or len(online) < self.config.min_participants:
            return {}
        chosen = select_participants(sorted(online), self.config.fraction,
                                     seed=self.config.seed, round=self.round)
        self.store.save_plan(self.round, chosen)
        return self._open(chosen, now)

    def _open(self, plan: list[str], now: float) -> dict[str, Task]:
        self.plan = list(plan)
        mode = Aggregation(self.config.aggregation.mode)
        # The site's agent checks the mode and the method against its own policies (e.g.
        # "encrypted only", "no FedDGM: it distils our uploads").
        self.tasks = {pid: replace(task, aggregation=mode, method=self.config.strategy.method)
                      for pid, task in self.strategy.configure_round(self.round,
                                                                     self.plan).items()}
        self.updates, self.digests = {}, {}
        self.phase = "collecting"
        self.started_at = now
        return dict(self.tasks)

    def pending(self) -> list[str]:
        """Participants of the round whose update has not been accepted yet."""
        return [p for p in self.plan if p not in self.updates]

    # -- updates --------------------------------------------------------------------------
    def check_update(self, pid: str, round: int, digest: str) -> bool:
        """Raise ProtocolError if an UPDATE may not be accepted; True if it is a re-send.

        A re-send (same participant, round and payload hash as an accepted update, also while
        the round aggregates or after it closed) is acked again and not counted twice.
        """
        if self.phase in ("collecting", "aggregating") and round == self.round \
                and pid in self.updates:
            if self.digests.get(pid) == digest:
                return True
            raise ProtocolError(Reason.DUPLICATE, f"{pid} already delivered a different update for "
                                                  f"round {round}.")
        if self.closed_digests.get((round, pid)) == digest:
            return True  # a re-send still in flight when its round closed: acked again
        if self.phase != "collecting" or round < self.round:
            raise ProtocolError(
                Reason.LATE,
                f"update from {pid} for round {round} arrived after the "
                f"round closed (now round {self.round}, {self.phase}).",
            )
        if round != self.round:
            raise ProtocolError(Reason.WRONG_ROUND, f"update from {pid} is for round {round}; the "
                                                    f"round in progress is {self.round}.")
        if pid not in self.tasks:
            raise ProtocolError(
                Reason.NOT_IN_ROUND, f"{pid} was not given a task in round {round}."
            )
        return False

    def accept(self, update: Update, digest: str,
               record: Callable[[], object] | None = None) -> None:
        """:meth:`accept_group` of one update that came in no message (its tensors packed
        as its payload)."""
        self.accept_group([(update, digest, pack_tensors(update.weights))], record)

    def accept_group(self, items: Sequence[tuple[Update, str, bytes]],
                     record: Callable[[], object] | None = None) -> None:
        """Persist updates (each with its payload's SHA-256 and the payload as received), made
        durable together, let ``record`` journal them durably, and only then count them.
        Nothing is half-accepted: if saving or ``record`` fails, the files are removed again
        and the error propagates."""
        updates = [update for update, _, _ in items]
        try:
            self.store.save_updates(list(items))
            if record is not None:
                record()
        except BaseException:
            self.store.discard_updates(updates)
            raise
        for update, digest, _ in items:
            self.updates[update.participant] = update
            self.digests[update.participant] = digest

    def drop(self, pids: Iterable[str]) -> None:
        """Take participants out of the round (revoked, or declined their task): they leave
        the plan, the quorum is counted without them and their updates are not used."""
        gone = set(pids) & set(self.plan)
        if not gone or self.phase != "collecting":  # a closed round keeps what it accepted
            return
        self.plan = [p for p in self.plan if p not in gone]
        for pid in gone:
            self.tasks.pop(pid, None)
            self.updates.pop(pid, None)
            self.digests.pop(pid, None)
        self.store.save_plan(self.round, self.plan)

    # -- closing --------------------------------------------------------------------------
    def quorum(self) -> int:
        return max(1, math.ceil(self.config.quorum * len(self.plan) - 1e-9))

    def fewest_updates(self) -> int:
        """The fewest updates a round is aggregated with, in every mode: ``min_updates``, and
        in ckks or secagg mode also ``min_cohort`` (a smaller encrypted or masked sum would be
        too close to one participant's). A round that shrank below it (a participant removed,
        revoked or declining) is not aggregated early; it waits for its deadline and is
        planned again."""
        fewest = self.config.min_updates
        if self.config.aggregation.mode in ("ckks", "secagg"):
            fewest = max(fewest, self.config.aggregation.min_cohort)
        return fewest

    def due(self, online: Iterable[str], now: float) -> Literal["close", "replan", ""]:
        """Whether the round should close now, be planned again, or keep collecting."""
        if self.phase != "collecting":
            return ""
        got = len(self.updates)
        fewest = self.fewest_updates()
        if self.plan and got >= self.quorum() and got >= fewest:
            return "close"
        online_set = set(online)
        stalled = (not any(p in online_set for p in self.pending())
                   and now >= self.grace_until)
        if now - self.started_at >= self.config.round_deadline or stalled:
            if got >= fewest:
                return "close"
            if now - self.started_at >= self.config.round_deadline or not self.plan:
                return "replan"
        return ""

    def next_deadline(self) -> float | None:
        """When :meth:`due` may next answer differently with time alone: the round's deadline,
        or the end of the grace after a restart (None while not collecting)."""
        if self.phase != "collecting":
            return None
        return min(self.started_at + self.config.round_deadline,
                   max(self.grace_until, self.started_at))

    def hold(self, seconds: float) -> None:
        """Move the round's deadline ``seconds`` later (the time the session was paused)."""
        if self.phase == "collecting":
            self.started_at += seconds

    def replan(self) -> None:
        """Give up a round that got too few updates; it is planned again when enough are online."""
        self.phase = "waiting"
        self.plan, self.tasks, self.updates, self.digests = [], {}, {}, {}

    def close(self) -> RoundRecord:
        """Close the round in one go (the daemon runs :meth:`aggregate` in a thread instead)."""
        self.begin_close()
        return self.finish_close(self.aggregate())

    def begin_close(self) -> None:
        """Stop accepting updates for this round: from now on they are 'late'."""
        self.phase = "aggregating"

    def aggregate(self, aggregate: Update | None = None) -> RoundRecord:
        """Aggregate the accepted updates (in participant order), evaluate, checkpoint.

        With ``aggregate`` (ckks or secagg mode: the unmasked weighted mean of the
        accepted updates, ``num_examples`` their total) the strategy gets that alone, via ``accept_aggregate``.
        Touches only the strategy and the checkpoint files, so it may run in a worker thread
        while the daemon keeps answering heartbeats; :meth:`finish_close` then moves on.
        """
        accepted = sorted(self.updates)
        if aggregate is None:
            metrics = dict(self.strategy.aggregate_round(self.round,
                                                         [self.updates[p] for p in accepted]))
        else:
            metrics = {"participants": float(len(accepted)),
                       **self.strategy.accept_aggregate(
                           self.round, aggregate.weights, aggregate.num_examples,
                           steps=[(self.updates[p].num_examples, self.updates[p].num_steps)
                                  for p in accepted])}
        if self.evaluate is not None:
            metrics.update(self.evaluate(self.strategy))
        record = RoundRecord(self.round, list(self.plan), accepted,
                             time.time() - self.started_at,
                             {k: float(v) for k, v in metrics.items()},
                             set_aside=[s.as_dict() for s in set_aside_of(self.strategy)])
        self._checkpoint(record)
        self.synthetic = (self.round, dict(synthetic_sets_of(self.strategy)))
        return record

    def abort(self) -> RoundRecord:
        """Skip the collecting (or waiting) round (see the module docstring): checkpoint it
        unchanged, with
        an aborted record naming the updates it had accepted, and move to the next round."""
        if self.phase not in ("collecting", "waiting"):
            raise ValueError(f"round {self.round} is {self.phase}; only a collecting or waiting "
                             "round can be aborted")
        record = RoundRecord(self.round, list(self.plan), sorted(self.updates),
                             time.time() - self.started_at, aborted=True)
        self._checkpoint(record)
        return self.finish_close(record)

    def _checkpoint(self, record: RoundRecord) -> None:
        """Write the strategy's state as round ``record.round``'s checkpoint, with the history."""
        tensors, meta = self.strategy.state_dict()
        self.store.save_checkpoint(record.round, tensors, {
            "round": record.round, "strategy": meta,
            "history": [vars(h) for h in [*self.history, record]], **self._anchor(),
        })

    def _anchor(self) -> dict[str, dict]:
        return {"journal": self.journal_anchor()} if self.journal_anchor is not None else {}

    def finish_close(self, record: RoundRecord) -> RoundRecord:
        """Record the closed round and move to the next one (or to finished)."""
        self.history.append(record)
        self.closed_digests = {(record.round, pid): d for pid, d in self.digests.items()}
        self.round += 1
        self.plan, self.tasks, self.updates, self.digests = [], {}, {}, {}
        self.phase = "finished" if self.round > self.config.rounds else "waiting"
        return record


def restore(strategy: Strategy, checkpoint: Checkpoint, seed: int) -> None:
    """Put ``strategy`` in the state ``checkpoint`` holds."""
    strategy.initialize(seed)  # builds the models (FedDGM) to load into
    strategy.load_state_dict(checkpoint.tensors, checkpoint.meta.get("strategy", {}))


def load_strategy(config: CoordinatorConfig,
                  round: int | None = None) -> tuple[Checkpoint, Strategy]:
    """The checkpoint of ``round`` (default: the latest) and the session's strategy restored
    from it."""
    if not (config.state_dir / "latest.json").exists():
        raise no_run_yet(config.state_dir)
    store = StateStore(config.state_dir)
    checkpoint = store.load_checkpoint(store.latest_round() if round is None else round)
    strategy = build_strategy(config.strategy)
    restore(strategy, checkpoint, config.seed)
    return checkpoint, strategy


def make_evaluator(config: CoordinatorConfig) -> Evaluator | None:
    """A function strategy -> {accuracy, loss} on the configured test split, or None."""
    if config.test_data is None:
        return None
    test = evaluation_tensors(load_dataset(config.test_data), config.max_test)
    if test is None:
        raise ConfigError(f"test_data = {config.test_data!r} has no test split; expected a "
                          "dataset with one.")
    x, y = test
    device = resolve_device(config.device)

    def run(strategy: Strategy) -> dict[str, float]:
        result = evaluate(strategy.evaluation_model(), x, y, device=device)
        return {"accuracy": float(result.accuracy), "loss": float(result.loss)}

    return run


__all__ = ["Phase", "RoundRecord", "Rounds", "load_strategy", "make_evaluator", "restore"]
