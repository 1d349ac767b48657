"""The coordinator's side of ``secagg`` and ``ckks`` secure aggregation, as a socket-free
state machine.

This drives one round's exchange of :mod:`latentfl.privacy.secagg` through its phases, each
ending when every expected participant answered or ``aggregation.phase_deadline`` passed:

    keys     TASKs are out; signed SECAGG_KEYS arrive -> SECAGG_KEY_LIST to each advertiser
             (past the deadline only once min_cohort advertised: until then the round's own
             deadline decides)
    shares   SECAGG_SHARES arrive -> SECAGG_SHARE_INBOX to each participant that shared
    uploads  masked uploads arrive through the intake (stored, acked); the round closes as
             usual (quorum, deadline) -> SECAGG_SURVIVORS (the survivor set) to each survivor
    consistency  each survivor's SECAGG_SIGNATURE of the set arrives; once every survivor
             signed -> SECAGG_UNMASK with the certificate (the set and all signatures) to each
             survivor: holders reveal only against it (latentfl.privacy.secagg.consistency)
    unmask   SECAGG_REVEALs arrive; once a threshold of holders answered for every secret and
             the masked sum is in, the sum is unmasked and decoded into the weighted mean that
             ``Strategy.accept_aggregate`` gets: the only plaintext the coordinator ever holds

The two modes differ only in how the masked words travel. ``secagg``: in the clear, as
MASKED_UPDATEs, and the coordinator adds them up. ``ckks``: CKKS-encrypted, as
ENCRYPTED_UPDATEs; an :class:`~latentfl.platform.coordinator.ckks_sum.EncryptedSum` sums the
ciphertexts once the survivor set is certified and has one survivor decrypt the sum's limbs
(AGGREGATE; it decrypts only for the certificate it received), while the unmask phase runs; the
round is unmasked once both are in.

Any phase that ends with fewer than ``min_cohort`` parties, a survivor that does not sign by
the deadline (its self mask could not be removed), or an unmask phase whose deadline passes
without enough shares, abandons the round (journal ``secagg_abandoned`` with the reason;
the round is planned again under a fresh attempt id, hence fresh keys). The secagg state is kept
in memory only: a restarted coordinator abandons the round in progress the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from latentfl.errors import LatentFLError, PrivacyError, ProtocolError, Reason, SecurityError
from latentfl.log import get_logger
from latentfl.models import ModelManifest, state_length, unflatten_state
from latentfl.platform.coordinator.ckks_sum import EncryptedSum
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.coordinator.journal import Journal
from latentfl.platform.protocol import Kind, Message, Outgoing
from latentfl.platform.wire.secagg import (
    attempt_of,
    check_masked,
    decode_advert,
    decode_reveal,
    decode_sealed,
    decode_signature,
    encode_key_list,
    encode_params,
    encode_sealed,
    encode_survivors,
    encode_unmask,
    masked_vector,
)
from latentfl.privacy.ckks import check_cohort_size, ciphertexts_from_tensors
from latentfl.privacy.secagg import (
    MAX_PARTICIPANTS,
    RoundParams,
    SecAggServer,
    check_capacity,
    dequantise,
)
from latentfl.strategies import Update

Phase = Literal["idle", "keys", "shares", "uploads", "consistency", "unmask"]


class MaskedAggregation:
    """secagg (or ckks) state of the coordinator for the round in progress (see the module
    docstring)."""

    def __init__(self, config: CoordinatorConfig, manifest: ModelManifest, *, journal: Journal,
                 verify_keys: Callable[[], Mapping[str, Ed25519PublicKey]],
                 encrypted: EncryptedSum | None = None) -> None:
        """``encrypted``: the CKKS layer of ``ckks`` mode (None: ``secagg``, words in the clear).
        ConfigError in ckks mode when more participants are enrolled than a sum may cover."""
        self.encrypted = encrypted
        if encrypted is not None:
            check_cohort_size(len(verify_keys()))
        self.config = config.aggregation
        self.session = config.session
        self.manifest = manifest
        self.length = state_length(manifest)
        self.journal = journal
        self.verify_keys = verify_keys
        self.log = get_logger("secagg", session=config.session)
        self.phase: Phase = "idle"
        self.round = 0
        self.attempt = ""
        self.server: SecAggServer | None = None
        self.expected: set[str] = set()
        self.phase_started = 0.0
        self.weights: dict[str, int] = {}
        self.failure: str | None = None  # why the round must be abandoned, once
        self.result: Update | None = None
        self.unmasked: tuple[int, str] | None = None  # (round, attempt) of the last unmasked sum
        self.ciphertexts: dict[str, list[bytes]] = {}  # ckks: the survivors' uploads

    # -- round lifecycle ------------------------------------------------------------------
    def open(self, round: int, plan: list[str], now: float) -> None:
        """Start the exchange of a newly planned round under a fresh attempt id."""
        self.round, self.attempt = round, os.urandom(8).hex()
        params = RoundParams(f"{self.session}/{self.attempt}", round, self.config.min_cohort,
                             self.config.clip)
        self.server = SecAggServer(params, self.verify_keys(), self.length)
        self.expected, self.weights = set(plan), {}
        self.failure, self.result = None, None
        self._enter("keys", now)
        self.journal.append("secagg_opened", round=round, attempt=self.attempt, plan=plan,
                            min_cohort=params.min_cohort, clip=params.clip,
                            encrypted=self.encrypted is not None)
        if len(plan) > MAX_PARTICIPANTS:
            self._fail(f"a masked round is planned for at most {MAX_PARTICIPANTS} participants "
                       f"(each receives a key list and a certificate of the whole cohort); "
                       f"{len(plan)} were selected.")
        elif self.encrypted is not None:
            try:  # the roster may have grown since the start
                check_cohort_size(len(plan))
            except LatentFLError as exc:
                self._fail(str(exc))

    def task_meta(self) -> dict[str, str]:
        """The TASK meta entry that carries this attempt's parameters."""
        assert self.server is not None
        return encode_params(self.attempt, self.server.params)

    def holds(self, round: int) -> bool:
        """Whether an exchange for ``round`` is under way (False after a restart)."""
        return self.server is not None and self.round == round

    def reset(self) -> None:
        """Forget the exchange (the round was abandoned or closed)."""
        self.server, self.phase, self.expected = None, "idle", set()
        self.ciphertexts = {}
        if self.encrypted is not None:
            self.encrypted.reset()

    @property
    def unmasking(self) -> bool:
        """The round closed and the survivors are signing or revealing."""
        return self.phase in ("consistency", "unmask")

    # -- messages -------------------------------------------------------------------------
    def receive(self, message: Message, now: float) -> list[Outgoing]:
        """A verified SECAGG_KEYS, SECAGG_SHARES, SECAGG_SIGNATURE or SECAGG_REVEAL; the
        outbox of the phase it completes, if any. ProtocolError to refuse it."""
        header, pid = message.header, message.header.sender
        if header.kind is Kind.SECAGG_REVEAL and self.unmasked == (header.round,
                                                                   attempt_of(message)):
            self.journal.append("accepted", kind=header.kind.value, peer=pid,
                                round=header.round, unused=True)  # the sum was already unmasked
            return []
        server = self._current(message)
        try:
            if header.kind is Kind.SECAGG_KEYS and self.phase == "keys":
                server.add_advert(decode_advert(message))
            elif header.kind is Kind.SECAGG_SHARES and self.phase == "shares":
                server.add_shares(pid, decode_sealed(message))
            elif header.kind is Kind.SECAGG_SIGNATURE and self.phase == "consistency":
                server.add_signature(pid, decode_signature(message))
            elif header.kind is Kind.SECAGG_REVEAL and self.phase == "unmask":
                server.add_reveal(pid, decode_reveal(message))
            else:
                raise ProtocolError(Reason.LATE, f"{header.kind.value} from {pid} arrived in "
                                                 f"the secagg {self.phase} phase.")
        except SecurityError as exc:
            raise ProtocolError(Reason.BAD_SIGNATURE, str(exc)) from None
        self.journal.append("accepted", kind=header.kind.value, peer=pid, round=header.round,
                            attempt=self.attempt)
        return self.step(now, answered=pid)

    def add_upload(self, message: Message, tensors: Mapping[str, torch.Tensor],
                   num_examples: int) -> None:
        """Count a masked upload (its words, or its ciphertexts) as a survivor's
        (ProtocolError to refuse it)."""
        self.check_upload(message, tensors)
        pid = message.header.sender
        if self.encrypted is not None:
            self.server.add_survivor(pid)
        else:
            self.server.add_masked(pid, masked_vector(tensors))
        self.weights[pid] = num_examples

    def check_upload(self, message: Message, tensors: Mapping[str, torch.Tensor]) -> None:
        """ProtocolError unless :meth:`add_upload` would take this upload now: ciphertexts
        that fit the public context (ckks; never decrypted), or masked words of the right
        shape (secagg), from a participant that shared its seeds."""
        server, pid = self._current(message), message.header.sender
        if self.phase != "uploads":
            raise ProtocolError(Reason.LATE, f"a masked update from {pid} arrived in the "
                                             f"secagg {self.phase} phase.")
        if self.encrypted is not None:
            self.encrypted.check_upload(ciphertexts_from_tensors(tensors))
            server.check_upload(pid)
        else:
            check_masked(tensors, self.length)
            server.check_masked(pid, masked_vector(tensors))

    def receive_aggregate(self, message: Message, now: float) -> list[Outgoing]:
        """The decryptor's AGGREGATE (ckks): its ACK; unmasks once the shares are in too."""
        if self.encrypted is None:
            raise ProtocolError(Reason.WRONG_MODE, "an AGGREGATE was sent but this session does "
                                                   "not use ckks.")
        ack, arrived = self.encrypted.receive(message)
        return ack + (self.step(now) if arrived else [])

    # -- time and completed phases --------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When the phase in progress passes its deadline, or a ckks decryptor's time is up
        (None with no exchange in progress)."""
        if self.server is None or self.failure is not None or self.phase == "idle":
            return None
        times = [self.phase_started + self.config.phase_deadline]
        if self.phase == "unmask" and self.encrypted is not None:
            times.append(self.encrypted.next_deadline())
        return min(t for t in times if t is not None)

    def step(self, now: float, answered: str | None = None,
             online: Sequence[str] | None = None) -> list[Outgoing]:
        """Close the key or share phase once all answered or the deadline passed; in the
        unmask phase ask a decryptor (ckks; only when told who is ``online``), give up past the
        deadline without enough shares, unmask once the shares and the masked sum are in."""
        server = self.server
        if server is None or self.failure is not None:
            return []
        if answered is not None:
            self.expected.discard(answered)
        late = now - self.phase_started >= self.config.phase_deadline
        try:
            # keys: the participants' policy checks run first, so a slow start waits for
            # min_cohort adverts until the round deadline instead of abandoning the round
            if self.phase == "keys" and (not self.expected or late and len(server.adverts)
                                         >= server.params.min_cohort):
                return self._send_key_list(server, now)
            if self.phase == "shares" and (not self.expected or late):
                return self._send_inboxes(server, now)
            if self.phase == "consistency" and (not self.expected or late):
                return self._send_certificate(server, now)
            if self.phase == "unmask":
                encrypted = self.encrypted
                asks = [] if encrypted is None or online is None else encrypted.step(online, now)
                if server.ready() and (encrypted is None or encrypted.masked_sum is not None):
                    self._unmask(server)
                elif late and not server.ready():
                    raise PrivacyError("secagg_threshold", "too few survivors revealed shares "
                                                           "before the phase deadline.")
                return asks
        except LatentFLError as exc:
            self._fail(str(exc))
        return []

    def close(self, updates: Mapping[str, Update], now: float) -> list[Outgoing]:
        """The round closed with the masked uploads accepted: ask the survivors to unmask."""
        server = self.server
        if server is None or self.phase != "uploads":
            self._fail(f"the round closed in the secagg {self.phase} phase, before any upload.")
            return []
        try:
            survivors, dropped = server.close_uploads()
            check_capacity(sum(self.weights[p] for p in survivors), self.config.clip)
            if self.encrypted is not None:
                self.ciphertexts = {p: ciphertexts_from_tensors(updates[p].weights)
                                    for p in survivors}
        except LatentFLError as exc:
            self._fail(str(exc))
            return []
        self.expected = set(survivors)
        self._enter("consistency", now)
        self.journal.append("secagg_survivors", round=self.round, attempt=self.attempt,
                            survivors=survivors, dropped=dropped)
        payload = encode_survivors(survivors)
        return [self._out(pid, Kind.SECAGG_SURVIVORS, payload) for pid in survivors]

    # -- the phases, one by one -----------------------------------------------------------
    def _send_key_list(self, server: SecAggServer, now: float) -> list[Outgoing]:
        adverts = server.close_adverts()
        self.expected = {a.pid for a in adverts}
        self._enter("shares", now)
        self.journal.append("secagg_keys", round=self.round, attempt=self.attempt,
                            advertised=sorted(self.expected))
        payload = encode_key_list(adverts)
        return [self._out(a.pid, Kind.SECAGG_KEY_LIST, payload) for a in adverts]

    def _send_inboxes(self, server: SecAggServer, now: float) -> list[Outgoing]:
        inboxes = server.close_shares()
        self.expected = set()
        self._enter("uploads", now)
        self.journal.append("secagg_shares", round=self.round, attempt=self.attempt,
                            shared=sorted(inboxes))
        return [self._out(pid, Kind.SECAGG_SHARE_INBOX, encode_sealed(sealed))
                for pid, sealed in sorted(inboxes.items())]

    def _send_certificate(self, server: SecAggServer, now: float) -> list[Outgoing]:
        certificate = server.certificate()  # PrivacyError when a survivor did not sign
        if self.encrypted is not None:
            self.encrypted.start(self.round, self.attempt, self.ciphertexts)
            self.ciphertexts = {}
        self.expected = set(server.survivors)
        self._enter("unmask", now)
        self.journal.append("secagg_unmask_requested", round=self.round, attempt=self.attempt,
                            survivors=server.survivors, dropped=server.dropped,
                            signatures=len(certificate.signatures))
        payload = encode_unmask(certificate)
        return [self._out(pid, Kind.SECAGG_UNMASK, payload) for pid in server.survivors]

    def _unmask(self, server: SecAggServer) -> None:
        total_weight = sum(self.weights[p] for p in server.survivors)
        masked_sum = (server.masked_sum() if self.encrypted is None
                      else self.encrypted.masked_sum)
        mean = dequantise(server.unmask(masked_sum), total_weight)
        weights = unflatten_state(torch.from_numpy(mean.astype(np.float32)), self.manifest)
        self.manifest.check(weights)
        self.result = Update("coordinator", self.round, weights, num_examples=total_weight,
                             num_steps=0)
        self.unmasked = (self.round, self.attempt)
        self.journal.append("secagg_unmasked", round=self.round, attempt=self.attempt,
                            covers=server.survivors, dropped=server.dropped,
                            total_weight=total_weight)
        self.log.info("secagg_unmasked", round=self.round, covers=len(server.survivors),
                      dropped=len(server.dropped))
        self.phase = "idle"

    def _current(self, message: Message) -> SecAggServer:
        header = message.header
        if self.server is None or header.round != self.round \
                or attempt_of(message) != self.attempt:
            raise ProtocolError(Reason.LATE, f"{header.kind.value} from {header.sender} is for "
                                             "a secagg exchange no longer under way.")
        return self.server

    def _enter(self, phase: Phase, now: float) -> None:
        self.phase, self.phase_started = phase, now
        self.log.info("secagg_phase", round=self.round, phase=phase)

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self.journal.append("secagg_abandoned", round=self.round, attempt=self.attempt,
                            phase=self.phase, reason=reason[:500])
        self.log.warning("secagg_abandoned", round=self.round, phase=self.phase, reason=reason)
        self.phase = "idle"

    def _out(self, pid: str, kind: Kind, payload: bytes) -> Outgoing:
        return Outgoing(pid, kind, self.round, payload, {"attempt": self.attempt})


__all__ = ["MaskedAggregation"]
