"""CKKS secure aggregation: public coordinator context, weighted sums, sealed secret contexts."""

from __future__ import annotations

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
    cohort_weight,
    create_context,
    decrypt_aggregate,
    encrypt_update,
    load_context,
    open_secret_context,
    public_context_bytes,
    seal_secret_context,
    secret_context_bytes,
    sum_ciphertexts,
)

LENGTH = 5000  # two chunks of 4096 slots, the last one partial
MAX_BYTES = 400_000


@pytest.fixture(scope="module")
def contexts():
    """A secret context (participants) and its public twin (coordinator), via bytes."""
    ctx = create_context()
    secret = load_context(secret_context_bytes(ctx), private=True)
    public = load_context(public_context_bytes(ctx), private=False)
    return secret, public


def _updates(n: int) -> tuple[list[torch.Tensor], list[float]]:
    gen = torch.Generator().manual_seed(7)
    flats = [torch.randn(LENGTH, generator=gen) * 0.05 for _ in range(n)]
    weights = [500.0, 1200.0, 300.0][:n]
    return flats, weights


def test_public_context_cannot_decrypt(contexts):
    """The coordinator's context has no secret key: decrypting under it raises."""
    secret, public = contexts
    assert not public.is_private() and public.is_public()
    blobs = encrypt_update(secret, torch.ones(10), 1.0)
    with pytest.raises(SecurityError, match="no secret key"):
        decrypt_aggregate(public, blobs, 10)
    import tenseal as ts

    with pytest.raises(ValueError):
        ts.ckks_vector_from(public, blobs[0]).decrypt()
    with pytest.raises(SecurityError, match="holds a secret key"):
        load_context(secret_context_bytes(secret), private=False)


def test_encrypted_weighted_sum_equals_plaintext_weighted_mean(contexts):
    """Decrypting the coordinator's sum of 3 weighted updates gives the weighted mean (1e-5)."""
    secret, public = contexts
    flats, weights = _updates(3)
    uploads = [encrypt_update(secret, f, w) for f, w in zip(flats, weights, strict=True)]
    count = ciphertext_count(LENGTH, public)
    assert count == 2
    for blobs in uploads:
        check_ciphertexts(public, blobs, count, MAX_BYTES)
    total = sum_ciphertexts(public, uploads, min_cohort=2)
    mean = decrypt_aggregate(secret, total, LENGTH, total_weight=sum(weights))
    expected = sum(w * f for f, w in zip(flats, weights, strict=True)) / sum(weights)
    assert mean.shape == (LENGTH,)
    assert torch.allclose(mean, expected, atol=1e-5, rtol=0)


def test_dropped_participant_renormalises_over_those_who_answered(contexts):
    """With one participant missing, the sum covers the others and their weights renormalise."""
    secret, public = contexts
    flats, weights = _updates(3)
    planned = {"a": weights[0], "b": weights[1], "c": weights[2]}
    answered = ["a", "c"]  # "b" dropped out
    uploads = [
        encrypt_update(secret, flats[0], planned["a"]),
        encrypt_update(secret, flats[2], planned["c"]),
    ]
    total = sum_ciphertexts(public, uploads, min_cohort=2)
    mean = decrypt_aggregate(
        secret, total, LENGTH, total_weight=cohort_weight(planned, answered, min_cohort=2)
    )
    expected = (planned["a"] * flats[0] + planned["c"] * flats[2]) / (planned["a"] + planned["c"])
    assert torch.allclose(mean, expected, atol=1e-5, rtol=0)


def test_minimum_cohort_is_enforced(contexts):
    """A sum of fewer than min_cohort updates is refused; min_cohort below 2 is a config error."""
    secret, public = contexts
    one = [encrypt_update(secret, torch.ones(10), 1.0)]
    with pytest.raises(PrivacyError) as err:
        sum_ciphertexts(public, one, min_cohort=2)
    assert err.value.rule == "min_cohort"
    with pytest.raises(PrivacyError):
        cohort_weight({"a": 1.0, "b": 1.0, "c": 1.0}, ["a", "b"], min_cohort=3)
    with pytest.raises(ConfigError, match="min_cohort"):
        sum_ciphertexts(public, one + one, min_cohort=1)


def test_coordinator_refuses_secret_context_and_bad_ciphertexts(contexts):
    """Summing with a secret context, or wrong count, size or bytes, is refused."""
    secret, public = contexts
    blobs = encrypt_update(secret, torch.ones(LENGTH), 2.0)
    with pytest.raises(SecurityError):
        sum_ciphertexts(secret, [blobs, blobs])
    with pytest.raises(ProtocolError, match="expected 3") as err:
        check_ciphertexts(public, blobs, 3, MAX_BYTES)
    assert err.value.reason is Reason.BAD_CIPHERTEXT
    with pytest.raises(ProtocolError, match="bytes"):
        check_ciphertexts(public, blobs, 2, 1000)
    with pytest.raises(ProtocolError, match="parsed"):
        check_ciphertexts(public, [blobs[0], b"\x00" * 500], 2, MAX_BYTES)
    short_first = encrypt_update(secret, torch.ones(100), 1.0) + blobs[1:]
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
    flats = [torch.linspace(-1, 1, 300), torch.linspace(1, -1, 300)]
    uploads = [encrypt_update(alice, flats[0], 1.0), encrypt_update(bob, flats[1], 3.0)]
    total = sum_ciphertexts(coordinator, uploads)
    mean = decrypt_aggregate(bob, total, 300, total_weight=4.0)
    assert torch.allclose(mean, (flats[0] + 3 * flats[1]) / 4, atol=1e-5, rtol=0)
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
    blobs = encrypt_update(secret, torch.ones(LENGTH), 1.0)
    back = ciphertexts_from_tensors(load(save(ciphertexts_to_tensors(blobs))))
    assert back == blobs
    check_ciphertexts(public, back, 2, MAX_BYTES)
    with pytest.raises(ProtocolError, match="named"):
        ciphertexts_from_tensors({"ckks/00001": torch.zeros(3, dtype=torch.uint8)})
