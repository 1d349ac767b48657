"""A participant's side of one secure-aggregation round, socket-free.

Phases, each a method, in order: :meth:`SecAggClient.advertise` (signed round keys),
:meth:`~SecAggClient.share_keys` (check every relayed advert against the roster, build the
neighbour graph, seal shares of its seeds to each neighbour), :meth:`~SecAggClient.receive_shares`
(the shares sealed to it: their senders are the neighbours it masks with),
:meth:`~SecAggClient.mask` (its quantised, weighted update plus the self mask and the pairwise
masks), :meth:`~SecAggClient.reveal` (shares for the coordinator's unmasking).

The holder's rules in :meth:`~SecAggClient.reveal` are what keep a curious coordinator from an
individual update: it reveals a *survivor*'s self-seed share or a *dropped* peer's mask-key
share, never both for one peer in a round, and nothing at all when the survivors are fewer than
``min_cohort`` or when it is not itself among them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from latentfl.errors import PrivacyError, ProtocolError, Reason, SecurityError
from latentfl.privacy.secagg.fixedpoint import DEFAULT_CLIP, quantise
from latentfl.privacy.secagg.keys import (
    Advert,
    RoundKeys,
    Share,
    open_share,
    seal_share,
    split_secrets,
    verify_adverts,
)
from latentfl.privacy.secagg.masks import neighbours, pairwise_mask, pairwise_seed, self_mask

SecretKind = Literal["self", "mask"]


@dataclass(frozen=True)
class RoundParams:
    """What every party of a round agrees on (sent in the TASK, bound into every signature)."""

    session: str
    round: int
    min_cohort: int = 2
    clip: float = DEFAULT_CLIP


@dataclass(frozen=True)
class Revealed:
    """One share a holder reveals: of an owner's self seed ("self") or mask key ("mask")."""

    owner: str
    kind: SecretKind
    index: int
    parts: tuple[bytes, ...]


class SecAggClient:
    """One participant, one round (see the module docstring)."""

    def __init__(self, pid: str, params: RoundParams, *, signing_key: Ed25519PrivateKey,
                 verify_keys: Mapping[str, Ed25519PublicKey]) -> None:
        self.pid = pid
        self.params = params
        self.signing_key = signing_key
        self.verify_keys = dict(verify_keys)
        self.keys = RoundKeys()
        self.own_advert = self.keys.advert(pid, signing_key, session=params.session,
                                           round=params.round)
        self.adverts: dict[str, Advert] = {}
        self.neighbours: list[str] = []
        self.held: dict[str, Share] = {}
        self.mask_peers: list[str] | None = None
        self.revealed: dict[str, SecretKind] = {}

    def advertise(self) -> Advert:
        """This round's public keys, signed with the enrolled Ed25519 key."""
        return self.own_advert

    def share_keys(self, adverts: Sequence[Advert]) -> dict[str, bytes]:
        """Check the relayed adverts, then seal a share of our seeds to each neighbour."""
        p = self.params
        self.adverts = verify_adverts(adverts, self.verify_keys, session=p.session, round=p.round)
        if self.adverts.get(self.pid) != self.own_advert:
            raise SecurityError(f"the relayed key list does not hold {self.pid}'s own advert; "
                                "expected the keys it signed, unaltered.")
        if len(self.adverts) < p.min_cohort:
            raise PrivacyError("min_cohort", f"only {len(self.adverts)} participants advertised "
                                             f"keys; secure aggregation needs {p.min_cohort}.")
        self.neighbours = neighbours(list(self.adverts), session=p.session,
                                     round=p.round)[self.pid]
        holders = sorted([self.pid, *self.neighbours])
        sealed = {}
        for holder, share in zip(holders, split_secrets(self.keys, len(holders)), strict=True):
            if holder == self.pid:
                self.held[self.pid] = share
            else:
                sealed[holder] = seal_share(share, self.keys, self.adverts[holder],
                                            sender=self.pid, session=p.session, round=p.round)
        return sealed

    def receive_shares(self, sealed: Mapping[str, bytes]) -> None:
        """Open the shares our neighbours sealed to us; those neighbours are the ones we mask
        with (the others dropped before sharing)."""
        p = self.params
        for owner, blob in sealed.items():
            if owner not in self.neighbours or owner == self.pid:
                raise ProtocolError(Reason.MALFORMED, f"a share from {owner!r} was relayed to "
                                                      f"{self.pid}, which is not its neighbour.")
            share = open_share(blob, self.keys, self.adverts[owner], recipient=self.pid,
                               session=p.session, round=p.round)
            expected = sorted([owner, *neighbours(list(self.adverts), session=p.session,
                                                  round=p.round)[owner]]).index(self.pid) + 1
            if share.index != expected:
                raise ProtocolError(Reason.MALFORMED, f"the share from {owner!r} has index "
                                                      f"{share.index}; expected {expected}.")
            self.held[owner] = share
        self.mask_peers = sorted(sealed)

    def mask(self, values: np.ndarray, weight: int) -> np.ndarray:
        """The masked upload: ``weight * fixed(values)`` + self mask +/- pairwise masks."""
        if self.mask_peers is None:
            raise ProtocolError(Reason.MALFORMED, "asked to mask before the round's shares "
                                                  "arrived.")
        p = self.params
        y = quantise(values, weight, p.clip)
        y += self_mask(self.keys.self_seed, y.size)
        for peer in self.mask_peers:
            seed = pairwise_seed(self.keys.mask_secret,
                                 X25519PublicKey.from_public_bytes(self.adverts[peer].mask_public),
                                 session=p.session, round=p.round, pair=(self.pid, peer))
            y += pairwise_mask(seed, y.size, own=self.pid, peer=peer)
        return y

    def reveal(self, survivors: Collection[str], dropped: Collection[str]) -> list[Revealed]:
        """Shares for unmasking: survivors' self seeds, dropped peers' mask keys, never both
        for one peer; PrivacyError (nothing revealed) when the request breaks a rule."""
        alive, gone = set(survivors), set(dropped)
        if alive & gone:
            raise PrivacyError("secagg_both", f"{sorted(alive & gone)} are listed as survivors "
                                              "and as dropped; a holder never reveals both.")
        if self.pid not in alive:
            raise PrivacyError("secagg_not_survivor", f"{self.pid} is asked to unmask a sum it "
                                                      "is not part of.")
        if len(alive) < self.params.min_cohort:
            raise PrivacyError("min_cohort", f"the sum would cover {len(alive)} participants; "
                                             f"unmasking needs at least {self.params.min_cohort}.")
        unknown = (alive | gone) - set(self.adverts)
        if unknown:
            raise ProtocolError(Reason.MALFORMED, f"unmask request names {sorted(unknown)}, who "
                                                  "advertised no keys this round.")
        wanted: dict[str, SecretKind] = {u: "self" for u in alive if u in self.held}
        wanted |= {u: "mask" for u in gone if u in self.held}
        clash = sorted(u for u, kind in wanted.items() if self.revealed.get(u, kind) != kind)
        if clash:
            raise PrivacyError("secagg_both", f"{self.pid} already revealed the other secret "
                                              f"of {clash} this round; it never reveals both.")
        self.revealed |= wanted
        out = []
        for owner, kind in sorted(wanted.items()):
            share = self.held[owner]
            parts = (share.self_seed,) if kind == "self" else share.mask_key
            out.append(Revealed(owner, kind, share.index, parts))
        return out


__all__ = ["Revealed", "RoundParams", "SecAggClient", "SecretKind"]
