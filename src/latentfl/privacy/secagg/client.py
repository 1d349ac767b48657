"""A participant's side of one secure-aggregation attempt, socket-free, one-shot per phase.

Phases, each a method called exactly once per attempt, in order: :meth:`SecAggClient.share_keys`
(check every relayed advert against the roster, fix the transcript and the neighbour graph, seal
shares of its seeds to each neighbour), :meth:`~SecAggClient.receive_shares` (the shares sealed
to it: their senders are the neighbours it masks with), :meth:`~SecAggClient.mask` (its
quantised, weighted update plus the self mask and the pairwise masks),
:meth:`~SecAggClient.acknowledge` (the coordinator acked the upload),
:meth:`~SecAggClient.sign_survivors` (the consistency round),
:meth:`~SecAggClient.reveal` (shares for the coordinator's unmasking, against a certificate) and,
in ckks mode, :meth:`~SecAggClient.certify_decrypt` (at most once). :meth:`advertise` may be
asked again (it reveals nothing new).

The rules that keep an *active* coordinator from an individual update (docs/privacy.md, the
threat table; :mod:`~latentfl.privacy.secagg.consistency` for the bound):

- every phase runs once; a second key list, inbox, survivor set, unmask or decrypt request is
  refused, recorded in :attr:`SecAggClient.refusals`, and aborts the attempt (from then on every
  request is refused): a second split of the same secrets under a smaller key list would lower
  the threshold;
- floors at every phase: the key list and the survivor set must hold at least
  ``max(task min_cohort, site min_cohort)`` participants, the inbox at least a threshold of
  holders (else the upload would carry too few pairwise masks), the survivor set at least a
  threshold of the key list and at most the site's largest dropped fraction missing;
- it signs a survivor set only when it is in it, every neighbour the set calls a survivor did
  send it a share (else its inbox was a lie), and enough of its masking partners survive;
- reveal only after its own upload was acknowledged, only against a certificate of at least
  ``t`` valid signatures from distinct survivors of its key list on the very set it signed, and
  then a *signing* survivor's self-seed share (so a survivor whose own check failed keeps its
  self mask) or a dropped owner's mask-key share; a survivor that did not sign gets nothing
  revealed, and the attempt cannot be unmasked without it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from latentfl.errors import PrivacyError, ProtocolError, SecurityError
from latentfl.privacy.rules import PolicyRule
from latentfl.privacy.secagg.consistency import (
    Certificate,
    sign_survivors,
    transcript,
    valid_signers,
)
from latentfl.privacy.secagg.fixedpoint import DEFAULT_CLIP, quantise
from latentfl.privacy.secagg.keys import (
    Advert,
    RoundKeys,
    Share,
    open_share,
    seal_share,
    split_secrets,
    threshold,
    verify_adverts,
)
from latentfl.privacy.secagg.masks import neighbours, pairwise_mask, pairwise_seed, self_mask

SecretKind = Literal["self", "mask"]
Phase = Literal["keys", "shared", "inbox", "masked", "acked", "signed", "revealed", "aborted"]


@dataclass(frozen=True)
class RoundParams:
    """What every party of a round agrees on (sent in the TASK, bound into every signature)."""

    session: str
    round: int
    min_cohort: int = 2
    clip: float = DEFAULT_CLIP


@dataclass(frozen=True)
class SiteFloors:
    """Limits of the site's own policy that no TASK can lower (``[privacy.policy]``)."""

    min_cohort: int = 2
    max_dropped_fraction: float = 0.34


@dataclass(frozen=True)
class Revealed:
    """One share a holder reveals: of an owner's self seed ("self") or mask key ("mask")."""

    owner: str
    kind: SecretKind
    index: int
    parts: tuple[bytes, ...]


class SecAggClient:
    """One participant, one attempt (see the module docstring)."""

    def __init__(self, pid: str, params: RoundParams, *, signing_key: Ed25519PrivateKey,
                 verify_keys: Mapping[str, Ed25519PublicKey],
                 floors: SiteFloors = SiteFloors()) -> None:
        self.pid = pid
        self.params = params
        self.floor = max(params.min_cohort, floors.min_cohort)
        self.max_dropped_fraction = floors.max_dropped_fraction
        self.signing_key = signing_key
        self.verify_keys = dict(verify_keys)
        self.keys = RoundKeys()
        self.own_advert = self.keys.advert(pid, signing_key, session=params.session,
                                           round=params.round)
        self.phase: Phase = "keys"
        self.refusals: list[PolicyRule] = []  # the rule of every refused request, in order
        self.adverts: dict[str, Advert] = {}
        self.transcript = b""
        self.graph: dict[str, list[str]] = {}
        self.neighbours: list[str] = []
        self.held: dict[str, Share] = {}
        self.mask_peers: list[str] | None = None
        self.signed: tuple[str, ...] | None = None
        self.decrypted = False

    def advertise(self) -> Advert:
        """This attempt's public keys, signed with the enrolled Ed25519 key."""
        return self.own_advert

    def share_keys(self, adverts: Sequence[Advert]) -> dict[str, bytes]:
        """Check the relayed key list, then seal a share of our seeds to each neighbour."""
        self._step("keys", "a key list")
        p = self.params
        try:
            checked = verify_adverts(adverts, self.verify_keys, session=p.session, round=p.round)
        except SecurityError:
            self._abort(PolicyRule.SECAGG_BAD_KEY_LIST)
            raise
        if checked.get(self.pid) != self.own_advert:
            self._abort(PolicyRule.SECAGG_BAD_KEY_LIST)
            raise SecurityError(f"the relayed key list does not hold {self.pid}'s own advert; "
                                "expected the keys it signed, unaltered.")
        if len(checked) < self.floor:
            self._refuse(PolicyRule.MIN_COHORT, f"the key list holds {len(checked)} participants; this "
                                       f"site takes part only with at least {self.floor}.")
        self.adverts = checked
        self.transcript = transcript(list(checked.values()), session=p.session, round=p.round)
        self.graph = neighbours(list(checked), seed=self.transcript)
        self.neighbours = self.graph[self.pid]
        holders = self._holders(self.pid)
        sealed = {}
        for holder, share in zip(holders, split_secrets(self.keys, len(holders)), strict=True):
            if holder == self.pid:
                self.held[self.pid] = share
            else:
                sealed[holder] = seal_share(share, self.keys, checked[holder], sender=self.pid,
                                            transcript=self.transcript)
        self.phase = "shared"
        return sealed

    def receive_shares(self, sealed: Mapping[str, bytes]) -> None:
        """Open the shares our neighbours sealed to us; those neighbours are the ones we mask
        with (the others dropped before sharing). Too few of them aborts the attempt."""
        self._step("shared", "a share inbox")
        needed = threshold(len(self._holders(self.pid))) - 1
        if len(sealed) < needed:
            self._refuse(PolicyRule.SECAGG_INBOX_SHORT, f"the share inbox holds {len(sealed)} "
                                               f"neighbours; {self.pid} masks only with at "
                                               f"least {needed}.")
        for owner, blob in sealed.items():
            if owner not in self.neighbours:
                self._refuse(PolicyRule.SECAGG_BAD_INBOX, f"a share from {owner!r} was relayed to "
                                                 f"{self.pid}, which is not its neighbour.")
            try:
                share = open_share(blob, self.keys, self.adverts[owner], recipient=self.pid,
                                   transcript=self.transcript)
            except ProtocolError:
                self._abort(PolicyRule.SECAGG_BAD_INBOX)
                raise
            expected = self._holders(owner).index(self.pid) + 1
            if share.index != expected:
                self._refuse(PolicyRule.SECAGG_BAD_INBOX, f"the share from {owner!r} has index "
                                                  f"{share.index}; expected {expected}.")
            self.held[owner] = share
        self.mask_peers = sorted(sealed)
        self.phase = "inbox"

    def mask(self, values: np.ndarray, weight: int) -> np.ndarray:
        """The masked upload: ``weight * fixed(values)`` + self mask +/- pairwise masks."""
        self._step("inbox", "a masked upload")
        assert self.mask_peers is not None
        p = self.params
        y = quantise(values, weight, p.clip)
        y += self_mask(self.keys.self_seed, y.size)
        for peer in self.mask_peers:
            seed = pairwise_seed(self.keys.mask_secret,
                                 X25519PublicKey.from_public_bytes(self.adverts[peer].mask_public),
                                 session=p.session, round=p.round, pair=(self.pid, peer))
            y += pairwise_mask(seed, y.size, own=self.pid, peer=peer)
        self.phase = "masked"
        return y

    def acknowledge(self) -> None:
        """The coordinator acknowledged our masked upload: it may now ask us to sign."""
        self._step("masked", "an acknowledgement")
        self.phase = "acked"

    def sign_survivors(self, survivors: Collection[str]) -> bytes:
        """Our signature of the survivor set (the consistency round), after the floors."""
        if self.phase == "masked":
            self._refuse(PolicyRule.SECAGG_NOT_ACKNOWLEDGED, f"{self.pid} is asked to sign survivors "
                                                    "before its own upload was acknowledged.")
        self._step("acked", "a survivor set")
        alive = set(survivors)
        if len(alive) != len(survivors) or not alive <= set(self.adverts):
            self._refuse(PolicyRule.SECAGG_BAD_SURVIVORS, "the survivor set repeats ids or names "
                                                 "participants outside the key list.")
        if self.pid not in alive:
            self._refuse(PolicyRule.SECAGG_NOT_SURVIVOR, f"{self.pid} is asked to sign a survivor set "
                                                "it is not part of.")
        n, needed = len(self.adverts), max(self.floor, threshold(len(self.adverts)))
        if len(alive) < needed:
            self._refuse(PolicyRule.MIN_COHORT, f"the survivor set holds {len(alive)} of {n}; "
                                       f"{self.pid} signs only sets of at least {needed}.")
        assert self.mask_peers is not None
        hidden = sorted(alive & (set(self.neighbours) - set(self.mask_peers)))
        if hidden:
            self._refuse(PolicyRule.SECAGG_CONTRADICTION, f"{hidden[:3]} are called survivors but sent "
                                                 f"{self.pid} no share; its inbox said they "
                                                 "dropped before sharing.")
        partners = threshold(len(self._holders(self.pid))) - 1
        if len(alive & set(self.mask_peers)) < partners:
            self._refuse(PolicyRule.SECAGG_INBOX_SHORT, f"fewer than {partners} of {self.pid}'s masking "
                                               "partners survived; its mask would be too thin.")
        if (n - len(alive)) / n > self.max_dropped_fraction:
            self._refuse(PolicyRule.SECAGG_TOO_MANY_DROPPED, f"{n - len(alive)} of {n} dropped; this "
                                                    "site helps recover at most a fraction "
                                                    f"{self.max_dropped_fraction:.3g}.")
        self.signed = tuple(sorted(alive))
        self.phase = "signed"
        p = self.params
        return sign_survivors(self.signing_key, self.signed, session=p.session, round=p.round,
                              transcript=self.transcript)

    def reveal(self, certificate: Certificate) -> list[Revealed]:
        """Shares for unmasking against a certified survivor set: survivors' self seeds,
        dropped owners' mask keys (PrivacyError, nothing revealed, when a rule is broken)."""
        if self.phase in ("masked", "acked"):
            self._refuse(PolicyRule.SECAGG_NOT_ACKNOWLEDGED if self.phase == "masked" else
                         "secagg_not_signed", f"{self.pid} is asked to unmask before its "
                                              "upload was acknowledged and it signed survivors.")
        self._step("signed", "an unmask request")
        signers = self._check_certificate(certificate)
        alive = set(certificate.survivors)
        out = []
        for owner, share in sorted(self.held.items()):
            if owner in signers:
                out.append(Revealed(owner, "self", share.index, (share.self_seed,)))
            elif owner not in alive:
                out.append(Revealed(owner, "mask", share.index, share.mask_key))
        self.phase = "revealed"
        return out

    def certify_decrypt(self, certificate: Certificate) -> int:
        """ckks: allow the one decryption of this attempt's aggregate; the cohort it covers.
        Only after signing, only on the certified set we signed, only once."""
        if self.phase == "aborted":
            self._refuse(PolicyRule.SECAGG_ABORTED, f"{self.pid} aborted this attempt; it decrypts "
                                           "nothing for it.")
        if self.decrypted:
            self._refuse(PolicyRule.SECAGG_REPEATED, f"{self.pid} already decrypted this attempt's "
                                            "aggregate; it decrypts once.")
        if self.phase not in ("signed", "revealed"):
            self._refuse(PolicyRule.SECAGG_NOT_SIGNED, f"{self.pid} decrypts only after it signed this "
                                              "attempt's survivor set.")
        self._check_certificate(certificate)
        self.decrypted = True
        return len(certificate.survivors)

    # -- the rules ------------------------------------------------------------------------
    def _check_certificate(self, certificate: Certificate) -> set[str]:
        """The valid signers, after the checks: the set we signed, at least t of them."""
        if certificate.survivors != self.signed:
            self._refuse(PolicyRule.SECAGG_CONTRADICTION, "the certified survivor set differs from "
                                                 f"the one {self.pid} signed.")
        p, needed = self.params, threshold(len(self.adverts))
        signers = valid_signers(certificate, members=self.adverts, verify_keys=self.verify_keys,
                                session=p.session, round=p.round, transcript=self.transcript)
        if len(signers) < needed:
            self._refuse(PolicyRule.SECAGG_CERTIFICATE, f"the survivor set carries {len(signers)} valid "
                                               f"signatures of survivors; {self.pid} needs "
                                               f"{needed}.")
        return signers

    def _holders(self, owner: str) -> list[str]:
        return sorted([owner, *self.graph[owner]])

    def _step(self, phase: Phase, what: str) -> None:
        """Refuse (and abort) unless the attempt is in ``phase``: each phase runs once."""
        if self.phase == "aborted":
            self._refuse(PolicyRule.SECAGG_ABORTED, f"{self.pid} aborted this attempt; {what} for it is "
                                           "refused.")
        if self.phase != phase:
            order = ("keys", "shared", "inbox", "masked", "acked", "signed", "revealed")
            rule = (PolicyRule.SECAGG_REPEATED if order.index(self.phase) > order.index(phase)
                    else PolicyRule.SECAGG_OUT_OF_ORDER)
            self._refuse(rule, f"{what} arrived in {self.pid}'s {self.phase} phase; each "
                               "phase runs once per attempt, in order.")

    def _abort(self, rule: PolicyRule) -> None:
        self.refusals.append(rule)
        self.phase = "aborted"

    def _refuse(self, rule: PolicyRule, sentence: str) -> None:
        """Record the refusal, abort the attempt, raise PrivacyError(rule)."""
        self._abort(rule)
        raise PrivacyError(rule, sentence)


__all__ = ["Phase", "Revealed", "RoundParams", "SecAggClient", "SecretKind", "SiteFloors"]
