"""The secure-aggregation core (latentfl.privacy.secagg) without sockets: parties in one process."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

import secagg_helpers
from latentfl.errors import ConfigError, PrivacyError, SecurityError
from latentfl.privacy.secagg import (
    MAX_ERROR,
    Advert,
    SecAggClient,
    check_capacity,
    degree,
    dequantise,
    neighbours,
    quantise,
)
from latentfl.privacy.secagg.keys import combine_mask_key
from latentfl.privacy.secagg.masks import pairwise_mask, pairwise_seed, self_mask

LENGTH = 64


def make_parties(n: int, *, min_cohort: int = 2, round: int = 1):
    return secagg_helpers.make_parties([f"site-{i:03d}" for i in range(n)], LENGTH,
                                       min_cohort=min_cohort, round=round)


def run_round(n: int, *, before_keys=(), after_keys=(), after_sharing=(), after_signing=(),
              min_cohort: int = 2, seed: int = 0):
    """Run one round where the named parties drop at the named phase; (server, inputs, weights)."""
    rng = np.random.default_rng(seed)
    clients, server = make_parties(n, min_cohort=min_cohort)
    inputs = {pid: rng.normal(0.0, 1.0, LENGTH) for pid in clients}
    weights = {pid: int(rng.integers(1, 500)) for pid in clients}
    for pid, c in clients.items():
        if pid not in before_keys:
            server.add_advert(c.advertise())
    key_list = server.close_adverts()
    for pid in server.adverts:
        if pid not in after_keys:
            server.add_shares(pid, clients[pid].share_keys(key_list))
    for holder, sealed in server.close_shares().items():
        clients[holder].receive_shares(sealed)
    for pid in server.sealed:
        if pid not in after_sharing:
            server.add_masked(pid, clients[pid].mask(inputs[pid], weights[pid]))
    secagg_helpers.unmask_phase(clients, server, silent=after_signing)
    return server, inputs, weights


def weighted_mean(inputs, weights, ids):
    total = sum(weights[p] for p in ids)
    return sum(weights[p] * inputs[p] for p in ids) / total, total


def test_sum_equals_weighted_mean_within_quantisation_error():
    """With everyone present, the unmasked sum decodes to the weighted mean within 2^-31."""
    server, inputs, weights = run_round(5)
    mean, total = weighted_mean(inputs, weights, server.survivors)
    assert np.abs(dequantise(server.unmask(server.masked_sum()), total) - mean).max() <= MAX_ERROR


@pytest.mark.parametrize("phase", ["before_keys", "after_keys", "after_sharing", "after_signing"])
def test_dropouts_at_each_phase_are_recovered(phase):
    """Two of seven parties drop at any phase and the survivors' weighted mean is still exact."""
    server, inputs, weights = run_round(7, **{phase: ("site-001", "site-004")})
    expected_in = [p for p in inputs if phase == "after_signing" or p not in ("site-001", "site-004")]
    assert server.survivors == expected_in
    mean, total = weighted_mean(inputs, weights, server.survivors)
    assert np.abs(dequantise(server.unmask(server.masked_sum()), total) - mean).max() <= MAX_ERROR


def test_sparse_graph_with_dropouts_recovers():
    """A 40-party round uses a log-degree graph and survives drops after sharing and signing."""
    assert degree(40) < 39
    server, inputs, weights = run_round(40, after_sharing=("site-003", "site-017"),
                                        after_signing=("site-020", "site-031"))
    mean, total = weighted_mean(inputs, weights, server.survivors)
    assert np.abs(dequantise(server.unmask(server.masked_sum()), total) - mean).max() <= MAX_ERROR


def test_too_few_holders_refuse_to_unmask():
    """When fewer than a threshold of holders reveal, the server cannot and does not unmask."""
    server, *_ = run_round(5, after_signing=("site-000", "site-001"))
    assert not server.ready()
    with pytest.raises(PrivacyError, match="abandoned"):
        server.unmask(server.masked_sum())


def test_below_min_cohort_is_abandoned_not_unmasked():
    """A round whose uploads fall below min_cohort raises instead of fixing the survivor set."""
    with pytest.raises(PrivacyError, match="min_cohort|needs 3"):
        run_round(4, after_sharing=("site-000", "site-001"), min_cohort=3)


def test_holder_reveals_by_the_certified_set_once():
    """Against a certificate a holder reveals survivors' self seeds and the dropped owner's mask
    key, one share per owner, and refuses a second unmask request."""
    clients, server = make_parties(4)
    secagg_helpers.share_all(clients, server)
    for pid in ["site-001", "site-002", "site-003"]:
        server.add_masked(pid, clients[pid].mask(np.zeros(LENGTH), 1))
    secagg_helpers.unmask_phase(clients, server, silent=["site-001"])
    holder = clients["site-001"]
    revealed = holder.reveal(server.certified)
    assert {(r.owner, r.kind) for r in revealed} == {
        ("site-000", "mask"), ("site-001", "self"), ("site-002", "self"), ("site-003", "self")}
    with pytest.raises(PrivacyError, match="runs once"):
        holder.reveal(server.certified)
    assert holder.refusals == ["secagg_repeated"]


def test_substituted_keys_are_refused():
    """A coordinator that swaps a participant's advertised keys for its own is detected."""
    clients, server = make_parties(3)
    adverts = [c.advertise() for c in clients.values()]
    forged_keys = SecAggClient("site-001", clients["site-001"].params,
                               signing_key=Ed25519PrivateKey.generate(),
                               verify_keys={}).advertise()
    adverts[1] = Advert("site-001", forged_keys.share_public, forged_keys.mask_public,
                        forged_keys.signature)
    with pytest.raises(SecurityError, match="does not verify"):
        clients["site-000"].share_keys(adverts)


def curious_estimate(x: np.ndarray, *, also_self_seed: bool) -> np.ndarray:
    """What a coordinator gets for one participant when it claims that participant dropped
    (so its holders reveal its mask key) although its upload arrived."""
    clients, server = make_parties(4)
    secagg_helpers.share_all(clients, server)
    target = "site-000"
    upload = clients[target].mask(x, 1)  # kept aside: the coordinator pretends it never came
    others = ["site-001", "site-002", "site-003"]
    for pid in others:
        server.add_masked(pid, clients[pid].mask(np.zeros(LENGTH), 1))
    secagg_helpers.unmask_phase(clients, server)
    # rebuild the target's pairwise masks from its revealed key: what is left is its upload
    # minus pairwise masks, i.e. its fixed-point update plus its self mask
    secret = combine_mask_key(server._pick(target))
    residual = upload.copy()
    for peer in others:
        seed = pairwise_seed(secret, X25519PublicKey.from_public_bytes(
            server.adverts[peer].mask_public), session="s", round=1, pair=(target, peer))
        residual -= pairwise_mask(seed, LENGTH, own=target, peer=peer)
    if also_self_seed:  # what a holder breaking the never-both rule would add
        residual -= self_mask(clients[target].keys.self_seed, LENGTH)
    return dequantise(residual, 1)


def test_curious_coordinator_gets_nothing_usable_about_one_participant():
    """Unmasking a single participant by lying about its dropout yields values independent of
    its update; only a holder breaking the never-both rule would hand it over."""
    rng = np.random.default_rng(1)
    xs, estimates = [], []
    for _ in range(12):
        x = rng.normal(0.0, 1.0, LENGTH)
        xs.append(x)
        estimates.append(curious_estimate(x, also_self_seed=False))
    xs, est = np.concatenate(xs), np.concatenate(estimates)
    assert abs(np.corrcoef(xs, est)[0, 1]) < 0.15  # 768 pairs: |r| of noise is ~0.04
    assert np.abs(est).mean() > 1e6  # uniform 64-bit words, nowhere near weights
    x = rng.normal(0.0, 1.0, LENGTH)
    assert np.abs(curious_estimate(x, also_self_seed=True) - x).max() <= 2 * MAX_ERROR


def test_graph_is_symmetric_log_degree():
    """The neighbour graph is complete for small cohorts and symmetric with log degree beyond."""
    assert neighbours(["a", "b", "c"], seed=b"s")["a"] == ["b", "c"]
    ids = [f"p{i}" for i in range(100)]
    graph = neighbours(ids, seed=b"s")
    assert {len(v) for v in graph.values()} == {degree(100)} and degree(100) <= 22
    assert all(u in graph[v] for u in ids for v in graph[u])
    assert graph == neighbours(list(reversed(ids)), seed=b"s")
    assert graph != neighbours(ids, seed=b"t")


def test_fixed_point_clips_and_refuses_overflow():
    """Quantisation clips to the bound, round-trips within 2^-31 and refuses a sum that
    could overflow 2^63."""
    q = quantise(np.array([0.5, -1000.0, 1e-10]), 3, 64.0)
    assert np.allclose(dequantise(q, 3), [0.5, -64.0, 0.0], atol=MAX_ERROR, rtol=0)
    check_capacity(2**26, 64.0)
    with pytest.raises(ConfigError, match="overflows"):
        check_capacity(2**27, 64.0)
