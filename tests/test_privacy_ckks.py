"""ckks without sockets: secagg's masked words as CKKS limbs, public coordinator context, sealed
secret contexts; parties in one process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentfl.errors import ConfigError, PrivacyError, ProtocolError, Reason, SecurityError
from latentfl.platform.crypto import init_consortium, load_identity
from latentfl.platform.crypto.ckks_keys import (
    PUBLIC_CONTEXT_FILE,
    SEALED_CONTEXT_FILE,
    load_coordinator_context,
    load_participant_context,
    write_ckks_keys,
)
from latentfl.privacy import (
    check_ciphertexts,
    ciphertext_count,
    create_context,
    decrypt_limb_sums,
    encrypt_masked,
    join_limbs,
    load_context,
    open_secret_context,
    public_context_bytes,
    seal_secret_context,
    secret_context_bytes,
    sum_ciphertexts,
)
from latentfl.privacy.ckks import MAX_COHORT, check_cohort_size, split_limbs
from latentfl.privacy.secagg import MAX_ERROR, dequantise
from secagg_helpers import make_parties, share_all, unmask_phase

LENGTH = 2500  # 5000 limbs: two ciphertexts of 4096 slots, the last one partial
MAX_BYTES = 400_000
# chi-square with 15 degrees of freedom exceeds this with probability 1e-5 under uniformity
CHI2_15_CRITICAL = 50.49


@pytest.fixture(scope="module")
def contexts():
    """A secret context (participants) and its public twin (coordinator), via bytes."""
    ctx = create_context()
    secret = load_context(secret_context_bytes(ctx), private=True)
    public = load_context(public_context_bytes(ctx), private=False)
    return secret, public


def masked_round(n: int, secret, public, *, after_sharing=(), seed: int = 0, inputs=None):
    """One ckks round in one process: secagg's exchange, the masked words encrypted as limbs,
    the coordinator summing ciphertexts and recording survivors it cannot read; ``inputs``
    replaces some sites' random updates. Returns (server, encrypted sum, inputs, weights, each
    uploader's ciphertexts)."""
    rng = np.random.default_rng(seed)
    ids = [f"site-{i:03d}" for i in range(n)]
    clients, server = make_parties(ids, LENGTH)
    inputs = {pid: rng.normal(0.0, 0.05, LENGTH) for pid in ids} | (inputs or {})
    weights = {pid: int(rng.integers(1, 500)) for pid in ids}
    share_all(clients, server)
    uploads = {}
    for pid in ids:
        if pid not in after_sharing:
            uploads[pid] = encrypt_masked(secret, clients[pid].mask(inputs[pid], weights[pid]))
            check_ciphertexts(public, uploads[pid], ciphertext_count(2 * LENGTH, public),
                              MAX_BYTES)
            server.add_survivor(pid)
    unmask_phase(clients, server)
    total = sum_ciphertexts(public, [uploads[p] for p in server.survivors], min_cohort=2)
    return server, total, inputs, weights, uploads


def unmasked_mean(server, total, secret) -> np.ndarray:
    """What the decryptor returns (limb sums) turned by the coordinator into the mean."""
    sums = decrypt_limb_sums(secret, total, LENGTH, cohort=len(server.survivors))
    return server.unmask(join_limbs(sums))


def chi_square_uniform(u: np.ndarray, bins: int = 16) -> float:
    """Pearson's statistic of ``u`` (values in [0, 1)) against the uniform distribution."""
    counts = np.bincount(np.minimum((u * bins).astype(int), bins - 1), minlength=bins)
    expected = u.size / bins
    return float(((counts - expected) ** 2 / expected).sum())


def weighted_mean(inputs, weights, ids):
    total = sum(weights[p] for p in ids)
    return sum(weights[p] * np.clip(inputs[p], -64, 64) for p in ids) / total, total


def test_public_context_cannot_decrypt(contexts):
    """The coordinator's context has no secret key: decrypting under it raises."""
    secret, public = contexts
    assert not public.is_private() and public.is_public()
    blobs = encrypt_masked(secret, np.arange(10, dtype=np.uint64))
    with pytest.raises(SecurityError, match="no secret key"):
        decrypt_limb_sums(public, blobs + blobs, 10, cohort=2)
    import tenseal as ts

    with pytest.raises(ValueError):
        ts.ckks_vector_from(public, blobs[0]).decrypt()
    with pytest.raises(SecurityError, match="holds a secret key"):
        load_context(secret_context_bytes(secret), private=False)


def test_limbs_split_and_join_modulo_2_64():
    """Words split into exact 32-bit limbs; summed limbs join to the word sum modulo 2^64."""
    rng = np.random.default_rng(3)
    words = [rng.integers(0, 2**64, 1000, dtype=np.uint64, endpoint=False) for _ in range(5)]
    words[0][:3] = [0, 2**64 - 1, 2**32]
    limbs = [split_limbs(w) for w in words]
    assert all(((x >= 0) & (x < 2**32) & (x == np.rint(x))).all() for x in limbs)
    sums = np.sum([x.astype(np.int64) for x in limbs], axis=0)
    expected = np.zeros(1000, dtype=np.uint64)
    for w in words:
        expected += w
    assert np.array_equal(join_limbs(sums), expected)


def test_cohort_sum_decrypts_and_unmasks_to_the_weighted_mean(contexts):
    """Four sites: the decrypted limb sums round exactly, and the unmasked sum decodes to the
    plaintext weighted mean within the quantisation error alone (CKKS adds nothing)."""
    secret, public = contexts
    server, total, inputs, weights, _ = masked_round(4, secret, public)
    mean, total_weight = weighted_mean(inputs, weights, server.survivors)
    got = dequantise(unmasked_mean(server, total, secret), total_weight)
    assert np.abs(got - mean).max() <= MAX_ERROR


def test_dropout_after_sharing_before_upload_is_recovered(contexts):
    """A site that shared its seeds and never uploaded is unmasked through its mask key."""
    secret, public = contexts
    server, total, inputs, weights, _ = masked_round(5, secret, public,
                                                     after_sharing=("site-002",))
    assert server.dropped == ["site-002"]
    mean, total_weight = weighted_mean(inputs, weights, server.survivors)
    got = dequantise(unmasked_mean(server, total, secret), total_weight)
    assert np.abs(got - mean).max() <= MAX_ERROR


def test_a_single_ciphertext_decrypts_to_noise_independent_of_the_update(contexts):
    """The decrypt oracle is closed: one site's ciphertext, decrypted with the secret context
    as if it were a sum, gives limbs uniform on [0, 2^32) and uncorrelated with its update,
    for an update of zeros and one of large values alike."""
    secret, public = contexts
    limbs, updates = [], []
    rng = np.random.default_rng(5)
    for update in (np.zeros(LENGTH), 30.0 * np.sign(rng.normal(size=LENGTH))):
        _, _, _, _, uploads = masked_round(3, secret, public, inputs={"site-000": update})
        sums = decrypt_limb_sums(secret, uploads["site-000"], LENGTH, cohort=2)  # the lie
        assert sums.shape == (2 * LENGTH,)
        limbs.append(sums / 2.0**32)
        updates.append(np.repeat(update, 2))
    for u in limbs:
        assert chi_square_uniform(u) < CHI2_15_CRITICAL
    both, update = np.concatenate(limbs), np.concatenate(updates)
    assert abs(np.corrcoef(both, update)[0, 1]) < 0.05  # 10,000 pairs: noise |r| ~ 0.01
    assert abs(both.mean() - 0.5) < 0.02


def test_decryptor_refuses_what_cannot_be_a_sum_of_the_cohort(contexts):
    """Limb sums that do not round to integers, or exceed cohort * (2^32 - 1), are refused
    with a sentence that holds no decrypted value (it goes back to the coordinator)."""
    secret, _ = contexts
    import tenseal as ts

    half = [ts.ckks_vector(secret, [0.5] * 8).serialize()]
    with pytest.raises(ProtocolError, match="within 0.25 of an integer") as err:
        decrypt_limb_sums(secret, half, 4, cohort=2)
    assert err.value.reason is Reason.BAD_CIPHERTEXT and "0.5" not in str(err.value)
    big = [ts.ckks_vector(secret, [3.0 * 2**32] * 8).serialize()]
    with pytest.raises(ProtocolError, match="the range of a sum of 2 uploads") as err:
        decrypt_limb_sums(secret, big, 4, cohort=2)
    assert "12884901" not in str(err.value)  # 3 * 2^32 = 12884901888
    with pytest.raises(ProtocolError, match="expected 2 to"):
        decrypt_limb_sums(secret, half, 4, cohort=1)


def test_minimum_and_maximum_cohort_are_enforced(contexts):
    """A sum of fewer than min_cohort uploads is refused, min_cohort below 2 is a config
    error, and a cohort above MAX_COHORT is refused before anything is summed."""
    secret, public = contexts
    one = [encrypt_masked(secret, np.arange(10, dtype=np.uint64))]
    with pytest.raises(PrivacyError) as err:
        sum_ciphertexts(public, one, min_cohort=2)
    assert err.value.rule == "min_cohort"
    with pytest.raises(ConfigError, match="min_cohort"):
        sum_ciphertexts(public, one + one, min_cohort=1)
    check_cohort_size(MAX_COHORT)
    with pytest.raises(ConfigError, match=f"only up to {MAX_COHORT}"):
        check_cohort_size(MAX_COHORT + 1)


def test_coordinator_refuses_secret_context_and_bad_ciphertexts(contexts):
    """Summing with a secret context, or wrong count, size or bytes, is refused."""
    secret, public = contexts
    blobs = encrypt_masked(secret, np.arange(LENGTH, dtype=np.uint64))
    assert len(blobs) == 2
    with pytest.raises(SecurityError):
        sum_ciphertexts(secret, [blobs, blobs])
    with pytest.raises(ProtocolError, match="expected 3") as err:
        check_ciphertexts(public, blobs, 3, MAX_BYTES)
    assert err.value.reason is Reason.BAD_CIPHERTEXT
    with pytest.raises(ProtocolError, match="bytes"):
        check_ciphertexts(public, blobs, 2, 1000)
    with pytest.raises(ProtocolError, match="parsed"):
        check_ciphertexts(public, [blobs[0], b"\x00" * 500], 2, MAX_BYTES)
    short_first = encrypt_masked(secret, np.arange(50, dtype=np.uint64)) + blobs[1:]
    with pytest.raises(ProtocolError, match="values"):
        check_ciphertexts(public, short_first, 2, MAX_BYTES)


def test_secret_context_opens_only_for_its_participant(tmp_path):
    """A sealed secret context opens with its participant's CURVE key, for no one else."""
    init_consortium(tmp_path, ["alice", "bob"])
    alice = load_identity(tmp_path / "participants" / "alice")
    bob = load_identity(tmp_path / "participants" / "bob")
    sealed = seal_secret_context(
        b"secret ctx", participant_id="alice", curve_public=alice.curve_public
    )
    assert (
        open_secret_context(sealed, participant_id="alice", curve_secret=alice.curve_secret)
        == b"secret ctx"
    )
    with pytest.raises(SecurityError, match="does not open"):
        open_secret_context(sealed, participant_id="bob", curve_secret=bob.curve_secret)
    with pytest.raises(SecurityError, match="does not open"):
        open_secret_context(sealed, participant_id="bob", curve_secret=alice.curve_secret)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SecurityError):
        open_secret_context(tampered, participant_id="alice", curve_secret=alice.curve_secret)


def test_ckks_key_files_give_coordinator_public_and_participants_secret(tmp_path):
    """`privacy ckks-keys` files: the coordinator's context is public, each sealed one opens."""
    from latentfl.cli import main

    init_consortium(tmp_path, ["alice", "bob"])
    assert main(["privacy", "ckks-keys", str(tmp_path)]) == 0
    coordinator = load_coordinator_context(tmp_path / "coordinator")
    assert not coordinator.is_private()
    alice = load_participant_context(tmp_path / "participants" / "alice")
    bob = load_participant_context(tmp_path / "participants" / "bob")
    assert alice.is_private() and bob.is_private()
    assert (tmp_path / "participants" / "bob" / SEALED_CONTEXT_FILE).stat().st_mode & 0o077 == 0
    assert not (tmp_path / "coordinator" / SEALED_CONTEXT_FILE).exists()
    assert (tmp_path / "coordinator" / PUBLIC_CONTEXT_FILE).exists()
    # alice's ciphertexts, summed by the coordinator, are read by bob: one consortium key
    words = [np.arange(300, dtype=np.uint64) * np.uint64(2**40), np.full(300, 2**64 - 1,
                                                                         dtype=np.uint64)]
    uploads = [encrypt_masked(alice, words[0]), encrypt_masked(bob, words[1])]
    total = sum_ciphertexts(coordinator, uploads)
    assert np.array_equal(join_limbs(decrypt_limb_sums(bob, total, 300, cohort=2)),
                          words[0] + words[1])
    with pytest.raises(ConfigError, match="--force"):
        write_ckks_keys(tmp_path)


def test_secure_aggregation_config_refuses_cohort_of_one():
    """min_cohort below 2 is refused by the [aggregation] schema."""
    from latentfl.config import from_dict
    from latentfl.privacy import SecureAggregationConfig

    assert from_dict(SecureAggregationConfig, {"mode": "ckks"}).min_cohort == 2
    with pytest.raises(ConfigError, match="min_cohort"):
        from_dict(SecureAggregationConfig, {"mode": "ckks", "min_cohort": 1})


def test_ciphertexts_travel_in_safetensors_payload(contexts):
    """Ciphertexts survive a safetensors round trip; misnamed tensors are refused."""
    from safetensors.torch import load, save

    from latentfl.privacy import ciphertexts_from_tensors, ciphertexts_to_tensors

    secret, public = contexts
    blobs = encrypt_masked(secret, np.arange(LENGTH, dtype=np.uint64))
    back = ciphertexts_from_tensors(load(save(ciphertexts_to_tensors(blobs))))
    assert back == blobs
    check_ciphertexts(public, back, 2, MAX_BYTES)
    with pytest.raises(ProtocolError, match="named"):
        ciphertexts_from_tensors({"ckks/00001": torch.zeros(3, dtype=torch.uint8)})
