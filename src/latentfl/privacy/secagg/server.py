"""The coordinator's arithmetic of one secure-aggregation round, socket-free.

It relays what it cannot read and learns only the sum. Sets, as in Bonawitz et al. (2017):
``advertised`` (U1) the participants whose signed keys it relayed, ``shared`` (U2) those who
sealed shares to their neighbours, ``survivors`` (U3) those whose masked upload arrived;
``dropped`` = U2 - U3. Before anything is revealed the survivors sign U3 (the consistency round,
:mod:`~latentfl.privacy.secagg.consistency`): :meth:`add_signature` keeps each signature and
:meth:`certificate` hands the set and every survivor's signature to the holders, who reveal
only against it. The masked words travel either in the clear (secagg: :meth:`add_masked`
keeps them, :meth:`masked_sum` adds them up) or under CKKS (ckks: :meth:`add_survivor` records
an upload whose words the coordinator cannot see, and the masked sum comes back from the
decryptor). :meth:`SecAggServer.unmask` takes that masked sum and removes each survivor's self mask (its seed
rebuilt from a threshold of holders' shares) and each survivor's pairwise masks with dropped
peers (the dropped peer's mask key rebuilt the same way, checked against its signed advert);
pairwise masks between survivors cancel in the sum. Every phase refuses to go on with fewer
than ``min_cohort`` parties (PrivacyError 'min_cohort'): the round is abandoned, never
unmasked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from latentfl.errors import PrivacyError, ProtocolError, Reason
from latentfl.privacy.secagg.client import Revealed, RoundParams
from latentfl.privacy.secagg.consistency import Certificate, transcript, valid_signers
from latentfl.privacy.secagg.keys import (
    Advert,
    combine_mask_key,
    combine_seed,
    threshold,
    verify_adverts,
)
from latentfl.privacy.secagg.masks import neighbours, pairwise_mask, pairwise_seed, self_mask


class SecAggServer:
    """The coordinator's state for one round (see the module docstring)."""

    def __init__(self, params: RoundParams, verify_keys: Mapping[str, Ed25519PublicKey],
                 length: int) -> None:
        self.params = params
        self.verify_keys = dict(verify_keys)
        self.length = length
        self.adverts: dict[str, Advert] = {}
        self.graph: dict[str, list[str]] = {}
        self.sealed: dict[str, dict[str, bytes]] = {}
        self.masked: dict[str, np.ndarray] = {}  # secagg's masked words, by uploader
        self.uploaded: set[str] = set()
        self.survivors: list[str] = []
        self.dropped: list[str] = []
        self.transcript = b""
        self.signatures: dict[str, bytes] = {}
        self.certified: Certificate | None = None
        self.shares: dict[str, dict[int, tuple[bytes, ...]]] = {}

    # -- phase 1: keys --------------------------------------------------------------------
    def add_advert(self, advert: Advert) -> None:
        """Keep a participant's signed keys (SecurityError if the signature fails)."""
        if self.graph:
            raise ProtocolError(Reason.LATE, f"keys of {advert.pid} arrived after the key "
                                             "list was sent.")
        verify_adverts([advert], self.verify_keys, session=self.params.session,
                       round=self.params.round)
        self.adverts[advert.pid] = advert

    def close_adverts(self) -> list[Advert]:
        """Fix U1 and the neighbour graph; the key list every advertiser gets."""
        self._require(len(self.adverts), "advertised keys")
        key_list = [self.adverts[p] for p in sorted(self.adverts)]
        self.transcript = transcript(key_list, session=self.params.session,
                                     round=self.params.round)
        self.graph = neighbours(list(self.adverts), seed=self.transcript)
        return key_list

    # -- phase 2: shares ------------------------------------------------------------------
    def add_shares(self, owner: str, sealed: Mapping[str, bytes]) -> None:
        """Keep ``owner``'s sealed shares, one for each of its neighbours."""
        if owner not in self.graph or self.survivors or self.uploaded:
            raise ProtocolError(Reason.LATE, f"shares of {owner} are not awaited now.")
        if set(sealed) != set(self.graph[owner]):
            raise ProtocolError(Reason.MALFORMED, f"{owner} sealed shares for "
                                                  f"{sorted(sealed)[:5]}...; expected one per "
                                                  "neighbour.")
        self.sealed[owner] = dict(sealed)

    def close_shares(self) -> dict[str, dict[str, bytes]]:
        """Fix U2; the shares to deliver to each member of U2, by sender."""
        self._require(len(self.sealed), "shared their seeds")
        return {holder: {owner: blobs[holder] for owner, blobs in self.sealed.items()
                         if holder in blobs}
                for holder in self.sealed}

    # -- phase 3: masked uploads ----------------------------------------------------------
    def add_masked(self, pid: str, vector: np.ndarray) -> None:
        """Keep a masked upload of a member of U2 (its words in the clear: secagg)."""
        self.check_masked(pid, vector)
        self.masked[pid] = vector
        self.uploaded.add(pid)

    def add_survivor(self, pid: str) -> None:
        """Record that a member of U2 uploaded words the coordinator cannot see (ckks)."""
        self.check_upload(pid)
        self.uploaded.add(pid)

    def check_upload(self, pid: str) -> None:
        """ProtocolError unless an upload from ``pid`` is awaited now."""
        if pid not in self.sealed or self.survivors:
            raise ProtocolError(Reason.NOT_IN_ROUND, f"a masked upload from {pid} is not "
                                                     "awaited now.")

    def check_masked(self, pid: str, vector: np.ndarray) -> None:
        """ProtocolError unless :meth:`add_masked` would keep this upload now."""
        self.check_upload(pid)
        if vector.dtype != np.uint64 or vector.shape != (self.length,):
            raise ProtocolError(Reason.MANIFEST, f"masked upload of {pid} is {vector.dtype} of "
                                                 f"shape {vector.shape}; expected uint64 of "
                                                 f"({self.length},).")

    def close_uploads(self) -> tuple[list[str], list[str]]:
        """Fix U3: (survivors, dropped) to send every survivor."""
        self._require(len(self.uploaded), "uploaded a masked update")
        self.survivors = sorted(self.uploaded)
        self.dropped = sorted(set(self.sealed) - self.uploaded)
        return self.survivors, self.dropped

    # -- phase 4: the consistency round ---------------------------------------------------
    def add_signature(self, pid: str, signature: bytes) -> None:
        """Keep a survivor's signature of the survivor set (ProtocolError unless it verifies)."""
        if pid not in self.survivors or self.certified is not None:
            raise ProtocolError(Reason.NOT_IN_ROUND, f"a survivor signature from {pid} is not "
                                                     "awaited now.")
        p = self.params
        probe = Certificate(tuple(self.survivors), {pid: signature})
        if not valid_signers(probe, members=self.adverts, verify_keys=self.verify_keys,
                             session=p.session, round=p.round, transcript=self.transcript):
            raise ProtocolError(Reason.BAD_SIGNATURE, f"{pid}'s signature of the survivor set "
                                                      "does not verify.")
        self.signatures[pid] = signature

    def certificate(self) -> Certificate:
        """The survivor set with every survivor's signature (PrivacyError 'secagg_unsigned'
        when one is missing: its self mask could not be removed, so the round is abandoned)."""
        missing = sorted(set(self.survivors) - set(self.signatures))
        if missing:
            raise PrivacyError("secagg_unsigned", f"{len(missing)} survivors ({missing[:3]}) did "
                                                  "not sign the survivor set; their self masks "
                                                  "cannot be removed, so the round is abandoned.")
        self.certified = Certificate(tuple(self.survivors), dict(self.signatures))
        return self.certified

    # -- phase 5: unmasking ---------------------------------------------------------------
    def add_reveal(self, holder: str, revealed: Sequence[Revealed]) -> None:
        """Keep a survivor's shares; each must be of the kind its owner's fate calls for."""
        if holder not in self.survivors or self.certified is None:
            raise ProtocolError(Reason.NOT_IN_ROUND, f"{holder} is not a survivor asked to "
                                                     "unmask.")
        kinds = {u: "self" for u in self.survivors} | {u: "mask" for u in self.dropped}
        for r in revealed:
            if kinds.get(r.owner) != r.kind or holder not in self._holders(r.owner):
                raise ProtocolError(Reason.MALFORMED, f"{holder} revealed a {r.kind} share of "
                                                      f"{r.owner}, which was not asked for.")
            self.shares.setdefault(r.owner, {})[r.index] = r.parts

    def ready(self) -> bool:
        """Enough shares arrived to rebuild every secret the unmasking needs."""
        return bool(self.survivors) and all(
            len(self.shares.get(u, {})) >= threshold(len(self._holders(u)))
            for u in [*self.survivors, *self.dropped])

    def masked_sum(self) -> np.ndarray:
        """The survivors' masked words added up modulo 2^64 (secagg, where they are in the
        clear)."""
        total = np.zeros(self.length, dtype=np.uint64)
        for u in self.survivors:
            total += self.masked[u]
        return total

    def unmask(self, masked_sum: np.ndarray) -> np.ndarray:
        """The sum of the survivors' quantised, weighted updates (uint64), from the sum of
        their masked words (:meth:`masked_sum`, or the decrypted one under ckks)."""
        if not self.ready():
            raise PrivacyError("secagg_threshold", "too few holders revealed shares to unmask "
                                                   "the sum; the round is abandoned.")
        if masked_sum.dtype != np.uint64 or masked_sum.shape != (self.length,):
            raise ProtocolError(Reason.MANIFEST, f"the masked sum is {masked_sum.dtype} of shape "
                                                 f"{masked_sum.shape}; expected uint64 of "
                                                 f"({self.length},).")
        p = self.params
        total = masked_sum.copy()
        for u in self.survivors:
            total -= self_mask(combine_seed(self._pick(u)), self.length)
        for v in self.dropped:
            secret = combine_mask_key([(i, (lo, hi)) for i, (lo, hi) in self._pick(v)])
            if secret.public_key().public_bytes_raw() != self.adverts[v].mask_public:
                raise ProtocolError(Reason.MALFORMED, f"the revealed shares of {v} do not "
                                                      "rebuild the mask key it advertised.")
            for u in self.graph[v]:
                if u in self.uploaded:  # survivor u added its mask with v; take it out
                    seed = pairwise_seed(secret, X25519PublicKey.from_public_bytes(
                        self.adverts[u].mask_public), session=p.session, round=p.round,
                        pair=(u, v))
                    total -= pairwise_mask(seed, self.length, own=u, peer=v)
        return total

    def _holders(self, owner: str) -> list[str]:
        return sorted([owner, *self.graph.get(owner, [])])

    def _pick(self, owner: str) -> list[tuple[int, tuple[bytes, ...]]]:
        chosen = sorted(self.shares[owner].items())[:threshold(len(self._holders(owner)))]
        return [(i, parts if len(parts) > 1 else parts[0]) for i, parts in chosen]

    def _require(self, count: int, what: str) -> None:
        if count < self.params.min_cohort:
            raise PrivacyError("min_cohort", f"only {count} participants {what}; secure "
                                             f"aggregation needs {self.params.min_cohort}, so "
                                             "the round is abandoned, never unmasked.")


__all__ = ["SecAggServer"]
