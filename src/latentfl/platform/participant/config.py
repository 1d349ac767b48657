"""The participant agent's config schema (``latentfl participant --config FILE``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from latentfl.config import DataSpec, option
from latentfl.data import PartitionConfig
from latentfl.platform.participant.task_policy import SiteTaskPolicies
from latentfl.privacy.dp_sgd import DPSGDConfig
from latentfl.privacy.policy import SitePolicy


@dataclass(frozen=True)
class PartitionShare(PartitionConfig):
    """Take part ``index`` of a deterministic partition of the dataset's training split.

    For demos and tests, where every participant reads the same built-in set: the partition is
    computed exactly as ``latentfl simulate`` computes it, so both see the same local data.
    """

    clients: int = option(1, help="Number of parts the training split is divided into.", min=1)
    index: int = option(0, help="Which part this participant trains on (0-based).", min=0)

    def take(self, images):
        """This participant's part of ``images`` (an ImageSet)."""
        return images.subset(self.split(images.y, self.clients)[self.index])

    def problems(self) -> list[str]:
        if self.index >= self.clients:
            return [f"partition.index = {self.index}; expected a value below partition.clients "
                    f"= {self.clients}."]
        return []


@dataclass(frozen=True)
class WeightNoiseConfig:
    """Clip the uploaded update to a norm and add Gaussian noise (``[privacy.weight_noise]``)."""

    enabled: bool = option(False, help="Noise the update itself before upload.")
    clip_norm: float = option(1.0, help="L2 norm the update (trained minus received weights) "
                                        "is clipped to.", min=0.0, min_exclusive=True)
    noise_multiplier: float = option(1.0, help="Noise std / clip_norm.", min=0.0,
                                     min_exclusive=True)


@dataclass(frozen=True)
class PrivacyConfig:
    """This site's privacy: its own policy, enforced by its agent, and DP-SGD (docs/privacy.md)."""

    policy: SitePolicy = option(SitePolicy(), help="Rules a task must meet or it is refused.")
    dp_sgd: DPSGDConfig = option(DPSGDConfig(), help="Local training with DP-SGD (Opacus).")
    weight_noise: WeightNoiseConfig = option(WeightNoiseConfig(), help="Noise on the uploaded "
                                                                       "update (whole-dataset DP).")
    noise_seed: int | None = option(None, help="Seed of the DP noise, for reproducible "
                                               "experiments only (refused with secure_mode).")

    def problems(self) -> list[str]:
        if self.noise_seed is not None and self.dp_sgd.secure_mode:
            return ["privacy.noise_seed is set with privacy.dp_sgd.secure_mode = true; secure "
                    "noise is unseeded: remove noise_seed."]
        return []


@dataclass(frozen=True)
class AuditPolicy:
    """Audits this site runs when an operator asks through the coordinator (``[audit]``).

    The request carries bounded options only; the audit runs on the site's own data with its own
    ``[privacy.dp_sgd]`` settings, the full report stays in ``STATE_DIR/audits``, and only the
    aggregate numbers are sent (docs/audits.md).
    """

    dp_on_request: bool = option(False, help="Run the one-run DP audit when an operator "
                                             "requests it and share its aggregate numbers; "
                                             "false declines every request.")
    max_canaries: int = option(5000, help="Decline a requested DP audit with more canaries "
                                          "than this.", min=2)
    max_epochs: int = option(20, help="Decline a requested DP audit with more epochs than "
                                      "this.", min=1)


@dataclass(frozen=True)
class ParticipantConfig:
    """One institution's agent."""

    session: str = option(help="Session id of the coordinator's session.")
    key_dir: Path = option(help="This participant's key folder (DIR/participants/ID made by "
                                "`latentfl keys init`); its id is the one enrolled there.")
    roster: Path = option(help="A copy of the consortium roster; the coordinator's CURVE and "
                               "signing public keys in it are pinned.")
    coordinator: str = option(help="The coordinator's endpoint, e.g. tcp://fl.example.org:7700.")
    data: DataSpec = option(help="Dataset spec of this site's private training data; a "
                                 "relative path in it is relative to this file's folder.")
    partition: PartitionShare | None = option(None, help="Train on one part of a shared "
                                                         "dataset (demos and tests only).")
    share_class_counts: bool = option(True, help="Send the number of examples per class in "
                                                 "HELLO; false withholds them.")
    state_dir: Path | None = option(None, help="Folder for the agent's durable state (replay "
                                               "guard); none = memory only.")
    device: str = option("cpu", help="Device for local training: auto, cpu, cuda[:N].")
    heartbeat_interval: float = option(5.0, help="Seconds between heartbeats.", min=0.0,
                                       min_exclusive=True)
    ack_timeout: float = option(15.0, help="Seconds to wait for an ACK before re-sending an "
                                           "update.", min=0.0, min_exclusive=True)
    coordinator_timeout: float = option(30.0, help="Seconds of silence from the coordinator "
                                                   "after which the agent reconnects.", min=0.0,
                                        min_exclusive=True)
    max_backoff: float = option(30.0, help="Longest wait between reconnection attempts "
                                           "(seconds).", min=0.0, min_exclusive=True)
    max_message_bytes: int = option(256 * 2**20, help="Largest message accepted (bytes).",
                                    min=1024)
    exit_when_finished: bool = option(True, help="Exit when the coordinator says the session "
                                                 "is finished.")
    privacy: PrivacyConfig = option(PrivacyConfig(), help="Site policy and DP-SGD.")
    policy: SiteTaskPolicies = option(SiteTaskPolicies(), help="What this site agrees to run "
                                                               "(its approval of each TASK).")
    audit: AuditPolicy = option(AuditPolicy(), help="Audits run on an operator's request.")

    def problems(self) -> list[str]:
        out = []
        if not self.coordinator.startswith(("tcp://", "ipc://")):
            out.append(f"coordinator = {self.coordinator!r}; expected tcp://HOST:PORT.")
        p = self.privacy
        spends = p.dp_sgd.enabled or p.weight_noise.enabled or p.policy.max_epsilon is not None
        if spends and self.state_dir is None:
            out.append("privacy.dp_sgd, privacy.weight_noise or privacy.policy.max_epsilon is "
                       "set but state_dir is not: the privacy ledger must live on disk; set "
                       "state_dir.")
        if self.audit.dp_on_request and self.state_dir is None:
            out.append("audit.dp_on_request = true but state_dir is not set: requested audits "
                       "write their full report to STATE_DIR/audits; set state_dir.")
        return out


__all__ = ["AuditPolicy", "ParticipantConfig", "PartitionShare", "PrivacyConfig", "WeightNoiseConfig"]
