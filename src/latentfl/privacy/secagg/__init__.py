"""Secure aggregation with dropout recovery (Bonawitz et al. 2017; SecAgg+, Bell et al. 2020).

Socket-free: :class:`SecAggClient` is a participant's side of one round, :class:`SecAggServer`
the coordinator's; the daemons carry their messages. ``fixedpoint`` encodes updates in
Z / 2^64, ``masks`` expands seeds into masks and draws the neighbour graph, ``keys`` signs
round keys and shares seeds t-of-n, ``consistency`` is the signed survivor set that every
holder checks before it reveals. docs/privacy.md says what each party learns.
"""

from latentfl.privacy.secagg.client import (
    Revealed,
    RoundParams,
    SecAggClient,
    SecretKind,
    SiteFloors,
)
from latentfl.privacy.secagg.consistency import Certificate, tolerated_colluders
from latentfl.privacy.secagg.fixedpoint import (
    DEFAULT_CLIP,
    FRACTION_BITS,
    MAX_ERROR,
    MODULUS_BITS,
    check_capacity,
    dequantise,
    quantise,
)
from latentfl.privacy.secagg.keys import Advert, threshold
from latentfl.privacy.secagg.masks import degree, neighbours
from latentfl.privacy.secagg.server import SecAggServer

#: Largest cohort a masked round is planned for: the key list and the survivor certificate
#: each participant receives grow linearly (about 330 and 200 bytes per participant), and
#: above this the O(n^2) relaying dominates the round; the coordinator refuses to plan more.
MAX_PARTICIPANTS = 10_000

__all__ = [
    "DEFAULT_CLIP",
    "FRACTION_BITS",
    "MAX_ERROR",
    "MAX_PARTICIPANTS",
    "MODULUS_BITS",
    "Advert",
    "Certificate",
    "Revealed",
    "RoundParams",
    "SecAggClient",
    "SecAggServer",
    "SecretKind",
    "SiteFloors",
    "check_capacity",
    "degree",
    "dequantise",
    "neighbours",
    "quantise",
    "threshold",
    "tolerated_colluders",
]
