"""How a round's updates are combined: the one spelling of the aggregation modes.

The value is what configs, the TASK and the site's ``allowed_modes`` say; every part (the
strategies' runner, the site policy, the coordinator's config, the wire) uses this enum.
"""

from __future__ import annotations

from enum import StrEnum


class Aggregation(StrEnum):
    """How a round's updates are combined; the value is the config and wire spelling."""

    PLAIN = "plain"  # the runner sees each update
    CKKS = "ckks"  # secagg's masked updates, CKKS-encrypted; the runner unmasks only the sum
    SECAGG = "secagg"  # updates are masked; the runner unmasks only the survivors' sum

    @property
    def meaning(self) -> str:
        """What the coordinator sees in this mode, in plain words (reports, status)."""
        return {Aggregation.PLAIN: "the coordinator sees each site's update",
                Aggregation.SECAGG: "masked: the coordinator sees only the sum of the updates",
                Aggregation.CKKS: "encrypted and masked: the coordinator sees only the sum"
                }[self]

    @property
    def hidden(self) -> bool:
        """The coordinator never holds an individual update in this mode."""
        return self is not Aggregation.PLAIN


__all__ = ["Aggregation"]
