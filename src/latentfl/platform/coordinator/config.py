"""The coordinator daemon's config schema (``latentfl coordinator --config FILE``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from latentfl.config import DataSpec, option
from latentfl.errors import ConfigError
from latentfl.platform.coordinator.distributed import DistributedConfig
from latentfl.privacy.ckks import SecureAggregationConfig
from latentfl.strategies import StrategyConfig, strategy_class
from latentfl.strategies.registry import SERVER_ONLY, Method


def aggregate_only_methods() -> list[str]:
    """Methods that declare they need only the aggregate, so may run under ckks or secagg."""
    return [m for m in get_args(Method) if strategy_class(m).needs_only_aggregates]


@dataclass(frozen=True)
class CoordinatorConfig:
    """One federated session run by the coordinator daemon."""

    session: str = option(help="Session id; bound into every message header, so messages of "
                               "another session are refused.")
    key_dir: Path = option(help="The coordinator's key folder made by `latentfl keys init` "
                                "(its CURVE and signing secret keys).")
    roster: Path = option(help="The roster TOML enrolling the participants' public keys.")
    state_dir: Path = option(help="Folder for checkpoints, accepted updates, the journal and "
                                  "status.json (created if missing).")
    bind: str = option("tcp://127.0.0.1:7700", help="ZeroMQ endpoint the ROUTER socket binds.")
    rounds: int = option(3, help="Number of rounds to run; the daemon exits after the last.",
                         min=1)
    seed: int = option(0, help="Seed of the initial model and of participant sampling.")
    min_participants: int = option(2, help="Participants that must be online before a round "
                                           "starts; `latentfl coordinator` refuses to start "
                                           "when the roster enrols fewer.", min=1)
    fraction: float = option(1.0, help="Share of online participants sampled each round.",
                             min=0.0, max=1.0, min_exclusive=True)
    quorum: float = option(1.0, help="Share of a round's participants whose updates close the "
                                     "round early.", min=0.0, max=1.0, min_exclusive=True)
    min_updates: int = option(1, help="Fewest updates a round is aggregated with, in every "
                                      "mode (also after a removal or revocation); with fewer "
                                      "at the deadline the round is planned again.", min=1)
    round_deadline: float = option(600.0, help="Seconds a round waits for updates.", min=0.0,
                                   min_exclusive=True)
    heartbeat_timeout: float = option(30.0, help="Seconds of silence after which a participant "
                                                 "is marked offline.", min=0.0,
                                      min_exclusive=True)
    max_message_bytes: int = option(256 * 2**20, help="Largest message accepted (bytes); "
                                                      "larger ones are dropped by ZeroMQ.",
                                    min=1024)
    test_data: DataSpec | None = option(None, help="Dataset spec whose test split evaluates "
                                                   "the global model after each round (none = "
                                                   "skip); a relative path in it is relative "
                                                   "to this file's folder.")
    max_test: int = option(0, help="Evaluate on at most this many test images (0 = all).",
                           min=0)
    device: str = option("auto", help="Device for aggregation and evaluation: auto, cpu, "
                                      "cuda[:N].")
    roster_poll: float = option(1.0, help="Seconds between checks of the roster file for "
                                          "changes (SIGHUP reloads at once).", min=0.0,
                                min_exclusive=True)
    linger_s: float = option(0.0, help="Seconds the daemon keeps serving after the last round "
                                       "(participants fetch their synthetic sets for audits, "
                                       "docs/audits.md); 0 = exit at once.", min=0.0)
    group_commit: bool = option(True, help="Make the updates that arrive together durable "
                                           "together (one fsync of the journal, replay log and "
                                           "folder per group; ACKs after it); false: one by one.")
    strategy: StrategyConfig = option(StrategyConfig(), help="The federated method.")
    aggregation: SecureAggregationConfig = option(
        SecureAggregationConfig(), help="Plain, CKKS (encrypted) or secagg (masked) aggregation of "
                                        "updates.")
    distributed: DistributedConfig | None = option(
        None, help="Distil each round on a torchrun worker group (docs/deployment.md); without "
                   "the section the daemon distils in its own process.")
    ckks_context: Path | None = option(None, help="The CKKS *public* context file (default: "
                                                  "KEY_DIR/ckks_public.bin, written by "
                                                  "`latentfl privacy ckks-keys`); ckks only.")

    def problems(self) -> list[str]:
        out = []
        if not self.bind.startswith(("tcp://", "ipc://")):
            out.append(f"bind = {self.bind!r}; expected tcp://HOST:PORT or ipc://PATH.")
        if not self.session or len(self.session) > 128:
            out.append(f"session = {self.session!r}; expected 1 to 128 characters.")
        if self.strategy.method in SERVER_ONLY:
            out.append(f"strategy.method = {self.strategy.method!r} is a baseline the server runs "
                       "alone (latentfl simulate or experiment); a coordinator needs a federated "
                       "method.")
        mode = self.aggregation.mode
        if mode in ("ckks", "secagg"):
            if not strategy_class(self.strategy.method).needs_only_aggregates:
                out.append(f"aggregation.mode = {mode!r} with strategy.method = "
                           f"{self.strategy.method!r}: that method needs each participant's own "
                           f"weights, which {mode} hides; use one of "
                           f"{', '.join(aggregate_only_methods())} or mode = 'plain' (with "
                           "DP-SGD at the participants).")
            if not self.strategy.weighted:
                out.append(f"aggregation.mode = {mode!r} needs strategy.weighted = true (each "
                           "participant hides its update times its example count).")
            robust = self.strategy.robust
            if robust.enabled and not (robust.rule == "norm_bound" and robust.clip_norm > 0):
                out.append(f"aggregation.mode = {mode!r} hides each update, so strategy.robust."
                           f"rule = {robust.rule!r} cannot run; use rule = 'norm_bound' with a "
                           "clip_norm (honest participants clip before masking) or mode = "
                           "'plain'.")
        if self.min_updates < self.strategy.robust.minimum_updates():
            out.append(f"min_updates = {self.min_updates} is below the "
                       f"{self.strategy.robust.minimum_updates()} updates strategy.robust.rule = "
                       f"{self.strategy.robust.rule!r} with f = {self.strategy.robust.f} needs; "
                       "raise min_updates or lower f.")
        return out


def check_quorum(config: CoordinatorConfig, enrolled: int, roster: Path) -> None:
    """Refuse (ConfigError) a session whose rounds could never start or close with the
    ``enrolled`` participants the roster holds: it would wait forever."""
    for key, value, never in (("min_participants", config.min_participants, "start"),
                              ("min_updates", config.min_updates, "close")):
        if value > enrolled:
            raise ConfigError(f"{key} = {value} but roster {roster} enrols {enrolled} "
                              f"participant(s), so no round could ever {never}; expected at "
                              f"most {enrolled} (enrol more participants or lower {key}).")


__all__ = ["CoordinatorConfig", "aggregate_only_methods", "check_quorum"]
