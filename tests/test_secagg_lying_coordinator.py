"""A coordinator that lies, driving real participant secagg/ckks clients without sockets.

Each test plays one deviation of issue 24 against honest :class:`SecAggClient` objects and
asserts two things: the honest participants refuse (with the rule named in their own record),
and the adversary's best reconstruction of the target's update, from everything it collected
(uploads, revealed shares, the colluders' memory), is no better than an honest round gives it:
uniform 64-bit noise, errors of order 1e9, where a recovery has error 4.7e-10. Against the code
before the consistency round every one of the four recoveries of the issue reached 4.6e-10.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from latentfl.errors import PrivacyError, ProtocolError, SecurityError
from latentfl.privacy import PlannedTask, PrivacyLedger, SitePolicy, check_task
from latentfl.privacy.ckks import create_context, decrypt_certified, encrypt_masked, join_limbs
from latentfl.privacy.secagg import Certificate, SiteFloors, dequantise, threshold
from latentfl.privacy.secagg import keys as secagg_keys
from latentfl.privacy.secagg.consistency import sign_survivors, tolerated_colluders
from latentfl.privacy.secagg.keys import combine_mask_key, combine_seed
from latentfl.privacy.secagg.masks import pairwise_mask, pairwise_seed, self_mask
from secagg_helpers import make_parties

LENGTH = 32
TARGET = "site-000"
RECOVERED = 1e-6  # a recovery is within 2^-31; noise is ~1e9
REFUSED = (PrivacyError, ProtocolError, SecurityError)


class LyingCoordinator:
    """The coordinator's side played by an adversary: it relays what it likes to real clients
    and keeps every share, upload and signature it gets, plus the colluders' whole memory."""

    def __init__(self, n: int, *, colluders: Iterable[str] = (), session: str = "s",
                 signing: dict | None = None, floors: SiteFloors | None = None,
                 seed: int = 0) -> None:
        self.ids = [f"site-{i:03d}" for i in range(n)]
        self.clients, _ = make_parties(self.ids, LENGTH, session=session, signing=signing,
                                       floors=floors)
        self.colluders = set(colluders)
        rng = np.random.default_rng(seed)
        self.inputs = {p: rng.normal(0.0, 1.0, LENGTH) for p in self.ids}
        self.key_list = [self.clients[p].advertise() for p in self.ids]
        self.sealed: dict[str, dict[str, bytes]] = {}
        self.uploads: dict[str, np.ndarray] = {}
        self.signatures: dict[str, dict[tuple[str, ...], bytes]] = {}
        self.self_shares: dict[str, dict[int, bytes]] = {}
        self.mask_shares: dict[str, dict[int, tuple[bytes, bytes]]] = {}
        self.refused: dict[str, Exception] = {}

    # -- driving the clients --------------------------------------------------------------
    def ask(self, pid: str, fn, *args):
        """Call a client; a refusal is recorded, not raised."""
        try:
            return fn(*args)
        except REFUSED as exc:
            self.refused[pid] = exc
            return None

    def share(self, key_lists: dict[str, Sequence] | None = None) -> None:
        for p in self.ids:
            sealed = self.ask(p, self.clients[p].share_keys, (key_lists or {}).get(p, self.key_list))
            if sealed is not None:
                self.sealed[p] = sealed

    def deliver(self, inboxes: dict[str, dict[str, bytes]] | None = None) -> None:
        for h in self.sealed:
            honest = {o: s[h] for o, s in self.sealed.items() if h in s}
            self.ask(h, self.clients[h].receive_shares, (inboxes or {}).get(h, honest))

    def upload(self, ack: bool = True) -> None:
        for p in self.ids:
            c = self.clients[p]
            if c.phase == "inbox":
                self.uploads[p] = c.mask(self.inputs[p], 1)
                if ack:
                    c.acknowledge()
        self.steal_colluders()

    def sign(self, sets: dict[str, Sequence[str]]) -> None:
        """Ask each participant to sign the set chosen for it; colluders sign every set."""
        for p, s in sets.items():
            if p in self.colluders:
                continue
            sig = self.ask(p, self.clients[p].sign_survivors, s)
            if sig is not None:
                self.signatures.setdefault(p, {})[tuple(sorted(s))] = sig

    def certificate(self, survivors: Sequence[str]) -> Certificate:
        """The most signatures the adversary has on ``survivors`` (colluders sign anything)."""
        key = tuple(sorted(survivors))
        sigs = {p: by_set[key] for p, by_set in self.signatures.items() if key in by_set}
        c0 = self.clients[self.ids[0]]
        for p in self.colluders & set(survivors):
            c = self.clients[p]
            sigs[p] = sign_survivors(c.signing_key, key, session=c0.params.session,
                                     round=c0.params.round, transcript=c.transcript)
        return Certificate(key, sigs)

    def unmask(self, holder: str, survivors: Sequence[str]) -> None:
        if holder in self.colluders:
            return
        revealed = self.ask(holder, self.clients[holder].reveal, self.certificate(survivors))
        for r in revealed or []:
            if r.kind == "self":
                self.self_shares.setdefault(r.owner, {})[r.index] = r.parts[0]
            else:
                self.mask_shares.setdefault(r.owner, {})[r.index] = r.parts

    def steal_colluders(self) -> None:
        """A colluder hands over every share it holds, both halves."""
        for p in self.colluders:
            for owner, share in self.clients[p].held.items():
                self.self_shares.setdefault(owner, {})[share.index] = share.self_seed
                self.mask_shares.setdefault(owner, {})[share.index] = share.mask_key

    # -- the adversary's best reconstruction ------------------------------------------------
    def _seed(self, owner: str) -> bytes | None:
        shares = sorted(self.self_shares.get(owner, {}).items())
        t = threshold(len(self._holders(owner)))
        return combine_seed(shares[:t]) if len(shares) >= t else None

    def _mask_key(self, owner: str):
        if owner in self.colluders:
            return self.clients[owner].keys.mask_secret
        shares = sorted(self.mask_shares.get(owner, {}).items())
        t = threshold(len(self._holders(owner)))
        if len(shares) < t:
            return None
        key = combine_mask_key(shares[:t])
        advert = self.clients[owner].own_advert
        return key if key.public_key().public_bytes_raw() == advert.mask_public else None

    def _holders(self, owner: str) -> list[str]:
        graph = self.clients[TARGET].graph or self.clients[owner].graph
        return sorted([owner, *graph.get(owner, [])])

    def estimate(self, target: str = TARGET) -> np.ndarray:
        """The adversary's best estimate of ``target``'s update from all it collected."""
        c = self.clients[target]
        y = self.uploads[target].copy()
        seed = self._seed(target)
        if seed is not None:
            y -= self_mask(seed, LENGTH)
        own_key = self._mask_key(target)
        for v in c.mask_peers or []:
            v_pub = X25519PublicKey.from_public_bytes(self.clients[v].own_advert.mask_public)
            t_pub = X25519PublicKey.from_public_bytes(c.own_advert.mask_public)
            v_key = self._mask_key(v)
            if own_key is not None:
                pair = pairwise_seed(own_key, v_pub, session=c.params.session,
                                     round=c.params.round, pair=(target, v))
            elif v_key is not None:
                pair = pairwise_seed(v_key, t_pub, session=c.params.session,
                                     round=c.params.round, pair=(target, v))
            else:
                continue
            y -= pairwise_mask(pair, LENGTH, own=target, peer=v)
        return dequantise(y, 1)

    def error(self, target: str = TARGET) -> float:
        return float(np.abs(self.estimate(target) - self.inputs[target]).max())

    def rules(self, pid: str) -> list[str]:
        return self.clients[pid].refusals


def uploaded(n: int, **kwargs) -> LyingCoordinator:
    """An adversary that ran the key, share and upload phases honestly."""
    adv = LyingCoordinator(n, **kwargs)
    adv.share()
    adv.deliver()
    adv.upload()
    return adv


def signed(n: int) -> LyingCoordinator:
    """An adversary that ran the phases honestly up to every participant signing the true
    survivor set."""
    adv = uploaded(n)
    adv.sign({p: adv.ids for p in adv.ids})
    return adv


def honest_baseline(n: int) -> LyingCoordinator:
    """An honest round: everyone shares, uploads, signs the true set and reveals."""
    adv = signed(n)
    for h in adv.ids:
        adv.unmask(h, adv.ids)
    return adv


def test_an_honest_round_gives_the_coordinator_no_single_update():
    """The baseline: after an honest consistency round and unmasking, the target's update is
    still hidden (error of noise), and no participant refused anything."""
    adv = honest_baseline(5)
    assert not adv.refused
    assert adv.error() > 1e3


@pytest.mark.parametrize("n", [5, 8, 16, 40])
def test_per_holder_survivor_lists_are_refused(n):
    """Recovery 1: each holder is told a different survivor set ({T, h} padded to the
    threshold); no set gathers t signatures, so no holder reveals and the target stays hidden."""
    adv = uploaded(n)
    t = threshold(n)
    sets = {}
    for h in adv.ids:
        pad = [p for p in adv.ids if p not in (TARGET, h)][: t - 2]
        sets[h] = sorted({TARGET, h, *pad})
    adv.sign(sets)
    for h in adv.ids:
        adv.unmask(h, sets[h])
    assert not adv.self_shares and not adv.mask_shares  # no holder revealed anything
    assert set(adv.refused) == set(adv.ids)
    assert any("secagg_certificate" in adv.rules(h) for h in adv.ids) or n == 40
    assert adv.error() > 1e3


def test_empty_and_short_inboxes_are_refused():
    """Recoveries 2 and 4's first step: a target given an empty (or one-share) inbox aborts and
    never uploads, so there is no thinly masked word to unmask."""
    for inbox in ({}, "one"):
        adv = LyingCoordinator(5)
        adv.share()
        honest = {o: s[TARGET] for o, s in adv.sealed.items() if TARGET in s}
        given = {} if inbox == {} else dict(list(honest.items())[:1])
        adv.deliver({TARGET: given})
        adv.upload()
        assert adv.rules(TARGET) == ["secagg_inbox_short"]
        assert TARGET not in adv.uploads
        with pytest.raises(PrivacyError, match="aborted"):
            adv.clients[TARGET].mask(adv.inputs[TARGET], 1)


def test_repeated_and_differing_key_lists_are_refused():
    """Recovery 3: a second key list (the same, or a smaller one that would lower the
    threshold) is refused and aborts; nothing is split or sealed a second time."""
    for second in ("same", "smaller"):
        adv = LyingCoordinator(7)
        adv.share()
        target = adv.clients[TARGET]
        again = adv.key_list if second == "same" else adv.key_list[:3]
        assert adv.ask(TARGET, target.share_keys, again) is None
        assert adv.rules(TARGET) == ["secagg_repeated"]
        assert target.phase == "aborted"
        adv.deliver()
        assert adv.rules(TARGET)[-1] == "secagg_aborted"


def test_repeated_inbox_and_survivor_set_are_refused():
    """A second inbox, a second survivor set and a second unmask request are each refused and
    recorded; the signer never signs two sets of one attempt."""
    adv = LyingCoordinator(5)
    adv.share()
    adv.deliver()
    c = adv.clients["site-001"]
    inbox = {o: s["site-001"] for o, s in adv.sealed.items() if "site-001" in s}
    assert adv.ask("site-001", c.receive_shares, inbox) is None
    assert adv.rules("site-001") == ["secagg_repeated"]

    adv = signed(5)
    c = adv.clients["site-002"]
    assert adv.ask("site-002", c.sign_survivors, adv.ids[1:]) is None
    assert adv.rules("site-002") == ["secagg_repeated"]
    adv2 = honest_baseline(5)
    c = adv2.clients["site-003"]
    assert adv2.ask("site-003", c.reveal, adv2.certificate(adv2.ids)) is None
    assert adv2.rules("site-003") == ["secagg_repeated"]


def test_different_key_lists_per_participant_cannot_be_combined():
    """Key lists that differ between participants give different transcripts: shares sealed
    under one do not open under the other, so the inbox is refused."""
    adv = LyingCoordinator(6)
    smaller = [a for a in adv.key_list if a.pid != "site-005"]
    adv.share({p: smaller for p in adv.ids if p != TARGET and p != "site-005"})
    adv.deliver()
    assert adv.rules(TARGET) == ["secagg_bad_inbox"]
    assert any(adv.rules(h) == ["secagg_bad_inbox"] for h in adv.ids if h != TARGET)


def test_replays_from_an_earlier_attempt_are_refused():
    """A key list, sealed shares or a certificate from an earlier attempt do not verify in the
    new one (every signature and AEAD key binds the attempt)."""
    old = honest_baseline(5)
    enrolled = {p: old.clients[p].signing_key for p in old.ids}
    new = LyingCoordinator(5, session="s/attempt-2", signing=enrolled)
    with pytest.raises(SecurityError, match="does not verify"):
        new.clients[TARGET].share_keys(old.key_list)
    new = LyingCoordinator(5, session="s/attempt-3", signing=enrolled)
    new.share()
    old_inbox = {o: s[TARGET] for o, s in old.sealed.items() if TARGET in s}
    new.deliver({TARGET: old_inbox})
    assert new.rules(TARGET) == ["secagg_bad_inbox"]
    new = LyingCoordinator(5, session="s/attempt-4", signing=enrolled)
    new.share()
    new.deliver()
    new.upload()
    new.sign({p: new.ids for p in new.ids})
    replayed = Certificate(tuple(old.ids), {p: s[tuple(old.ids)] for p, s in
                                            old.signatures.items()})
    assert new.ask("site-001", new.clients["site-001"].reveal, replayed) is None
    assert new.rules("site-001") == ["secagg_certificate"]


def test_cohort_shrinking_is_refused_at_every_phase():
    """Key lists and survivor sets below the site's floor or the threshold are refused, as is
    a TASK whose min_cohort is below the site policy."""
    adv = LyingCoordinator(6, floors=SiteFloors(min_cohort=4))
    adv.share({p: adv.key_list[:3] for p in adv.ids[:3]})
    assert adv.rules(TARGET) == ["min_cohort"]
    adv = uploaded(6)
    adv.sign({p: adv.ids[:3] for p in adv.ids[:3]})  # 3 of 6: below t = 5
    assert all(adv.rules(p) == ["min_cohort"] for p in adv.ids[:3])
    policy = SitePolicy(min_cohort=5)
    ledger = PrivacyLedger(Path("privacy_ledger.json"), delta=policy.delta)
    with pytest.raises(PrivacyError) as err:
        check_task(policy, ledger, PlannedTask("secagg", None, 0.1, 0, min_cohort=2))
    assert err.value.rule == "cohort_below_floor"


def test_a_site_signs_only_within_its_dropped_fraction():
    """A site whose policy helps recover at most 10% dropped refuses a set missing 2 of 10."""
    adv = LyingCoordinator(10, floors=SiteFloors(max_dropped_fraction=0.1))
    adv.share()
    adv.deliver()
    adv.upload()
    adv.sign({TARGET: adv.ids[:8]})
    assert adv.rules(TARGET) == ["secagg_too_many_dropped"]


def test_unmask_or_sign_before_the_upload_is_acknowledged_is_refused():
    """A holder asked to sign or reveal before its own upload was acked refuses."""
    adv = LyingCoordinator(5)
    adv.share()
    adv.deliver()
    adv.upload(ack=False)
    assert adv.ask(TARGET, adv.clients[TARGET].reveal, Certificate(tuple(adv.ids), {})) is None
    assert adv.rules(TARGET) == ["secagg_not_acknowledged"]
    assert adv.ask("site-001", adv.clients["site-001"].sign_survivors, adv.ids) is None
    assert adv.rules("site-001") == ["secagg_not_acknowledged"]


def test_a_survivor_left_out_keeps_its_self_mask():
    """Calling the target dropped although it uploaded yields its mask key but not its self
    seed: the estimate is still noise."""
    adv = uploaded(7)
    others = adv.ids[1:]
    adv.sign({p: others for p in others})
    for h in others:
        adv.unmask(h, others)
    assert adv._mask_key(TARGET) is not None and adv._seed(TARGET) is None
    assert adv.error() > 1e3


@pytest.mark.parametrize("n", [7, 10])
def test_colluders_up_to_the_bound_cannot_split_the_holders(n):
    """With c = tolerated_colluders(n) participants colluding, the two-set split (one set that
    reveals the target's self seed, one that reveals its partners' mask keys) cannot certify
    both sets; with one colluder more it can, so the stated bound is the real one."""
    t, c = threshold(n), tolerated_colluders(n)
    for colluding, recovered in ((c, False), (c + 1, True)):
        colluders = [f"site-{n - 1 - i:03d}" for i in range(colluding)]
        adv = LyingCoordinator(n, colluders=colluders)
        adv.share()
        adv.deliver()
        adv.upload()
        honest = [p for p in adv.ids if p not in colluders]
        # set A: the target, colluders and enough honest to reach t; set B: everyone else
        room = max(t - 1 - colluding, 0)
        set_a = sorted({TARGET, *colluders, *honest[1:1 + room]})
        set_b = sorted({*colluders, *(p for p in honest if p not in set_a)})
        adv.sign({p: set_a for p in set_a} | {p: set_b for p in set_b})
        for h in set_a:
            adv.unmask(h, set_a)
        for h in set_b:
            adv.unmask(h, set_b)
        adv.steal_colluders()
        assert (adv.error() < RECOVERED) is recovered, (colluding, set_a, set_b)


def test_aead_key_nonce_pairs_are_never_reused(monkeypatch):
    """Across phases, attempts and rounds, every share sealed uses a fresh (key, nonce) pair,
    and a refused second key list seals nothing."""
    used: list[tuple[bytes, bytes]] = []
    real = secagg_keys.ChaCha20Poly1305

    class Recording:
        def __init__(self, key: bytes) -> None:
            self.key, self.inner = key, real(key)

        def encrypt(self, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
            used.append((self.key, nonce))
            return self.inner.encrypt(nonce, data, aad)

        def decrypt(self, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
            return self.inner.decrypt(nonce, data, aad)

    monkeypatch.setattr(secagg_keys, "ChaCha20Poly1305", Recording)
    for session in ("s/a1", "s/a2"):
        for round_ in (1, 2):
            clients, server = make_parties([f"p{i}" for i in range(5)], LENGTH, round=round_,
                                           session=session)
            for c in clients.values():
                server.add_advert(c.advertise())
            key_list = server.close_adverts()
            for pid, c in clients.items():
                server.add_shares(pid, c.share_keys(key_list))
            with pytest.raises(PrivacyError):
                clients["p0"].share_keys(key_list)
    assert len(used) == 2 * 2 * 5 * 4
    assert len(set(used)) == len(used)


def test_ckks_decryptor_answers_only_a_certified_aggregate_once():
    """A decrypt request for one upload before signing, without a valid certificate, or a
    second time, is refused; and no refusal or log line carries a decrypted value."""
    ctx = create_context()
    adv = uploaded(5)
    decryptor = adv.clients["site-001"]
    one = encrypt_masked(ctx, adv.uploads[TARGET])
    with pytest.raises(PrivacyError, match="only after it signed"):
        decrypt_certified(decryptor, ctx, one, LENGTH, adv.certificate(adv.ids))
    adv = signed(5)
    decryptor = adv.clients["site-001"]
    with pytest.raises(PrivacyError, match="valid signatures"):
        decrypt_certified(decryptor, ctx, one, LENGTH, Certificate(tuple(adv.ids), {}))
    adv = signed(5)
    decryptor = adv.clients["site-001"]
    words = sum(adv.uploads.values())
    cert = adv.certificate(adv.ids)
    sums = decrypt_certified(decryptor, ctx, encrypt_masked(ctx, words), LENGTH, cert)
    assert np.array_equal(join_limbs(sums), words)
    with pytest.raises(PrivacyError, match="decrypts once"):
        decrypt_certified(decryptor, ctx, one, LENGTH, cert)
    assert decryptor.refusals == ["secagg_repeated"]


def test_no_decrypted_value_appears_in_a_refusal_or_log():
    """A ciphertext that decrypts to a telltale value is refused with a sentence, and neither
    the error nor any log line names the value (the old refusal echoed it)."""
    import tenseal as ts

    ctx = create_context()
    adv = signed(5)
    telltale = [ts.ckks_vector(ctx, [1234.5] * 64).serialize()]
    with structlog.testing.capture_logs() as logs, pytest.raises(ProtocolError) as err:
        decrypt_certified(adv.clients["site-002"], ctx, telltale, 32,
                          adv.certificate(adv.ids))
    text = str(err.value) + repr(err.value) + repr(logs)
    assert "1234" not in text
