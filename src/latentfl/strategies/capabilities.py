"""What only some methods do, as small capability protocols a runner checks for.

The :class:`~latentfl.strategies.Strategy` port holds only what every method does (the round
loop, checkpoints, the evaluation model). A runner that can use more asks with ``isinstance``:

- :class:`MakesSyntheticSets`: the method derives a synthetic set from each participant
  (FedDGM); audits and demos read them;
- :class:`UsesDistiller`: the method distils per round and can run that through the runner's
  worker group (the coordinator's ``torch.distributed`` group);
- :class:`FixesInputStats`: the method fixes the channel mean/std its evaluation model's inputs
  are normalised with (otherwise they are the data's own);
- :class:`SetsAside`: the method may set updates aside (a robust rule, FedDGM's upload
  screening); the runner journals and shows them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from latentfl.strategies.base import SyntheticImages
from latentfl.strategies.robust import SetAside


@runtime_checkable
class MakesSyntheticSets(Protocol):
    """A method that derives a synthetic set from each participant's update."""

    def synthetic_sets(self) -> Mapping[str, SyntheticImages]:
        """The set derived from each participant in the last aggregated round, by id."""
        ...


@runtime_checkable
class UsesDistiller(Protocol):
    """A method whose per-round distillation a runner may route through its own workers."""

    def use_distiller(self, distiller: Callable[..., Any]) -> None:
        """Run the method's per-round distillation through ``distiller``
        (a :class:`~latentfl.distill.jobs.Distiller`)."""
        ...


@runtime_checkable
class FixesInputStats(Protocol):
    """A method that fixes how its evaluation model's inputs are normalised."""

    def evaluation_input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The channel (mean, std) the evaluation model's inputs are normalised with."""
        ...


@runtime_checkable
class SetsAside(Protocol):
    """A method that may leave out or bound some of a round's updates, and says which."""

    def set_aside(self) -> tuple[SetAside, ...]:
        """The updates the last aggregated round set aside, each with the rule, its score and
        the threshold it crossed; empty when none was or the round ran on an aggregate."""
        ...


def set_aside_of(strategy: object) -> tuple[SetAside, ...]:
    """What the strategy's last round set aside; empty for a method that sets nothing aside."""
    return strategy.set_aside() if isinstance(strategy, SetsAside) else ()


def synthetic_sets_of(strategy: object) -> Mapping[str, SyntheticImages]:
    """The strategy's synthetic sets by participant; empty for a method that makes none."""
    return strategy.synthetic_sets() if isinstance(strategy, MakesSyntheticSets) else {}


def input_stats_of(strategy: object) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) the strategy fixes for its evaluation inputs; None when it fixes none."""
    return strategy.evaluation_input_stats() if isinstance(strategy, FixesInputStats) else None


__all__ = ["FixesInputStats", "MakesSyntheticSets", "SetsAside", "UsesDistiller",
           "input_stats_of", "set_aside_of", "synthetic_sets_of"]
