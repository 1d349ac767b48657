"""CKKS as the transport of secagg's masked words: the coordinator sums ciphertexts it cannot read.

Roles. Every participant holds the *secret* context (all share one key pair, handed out
encrypted to each participant's enrolled key by :mod:`latentfl.privacy.key_sealing`). The
coordinator holds only the *public* context: it checks and sums ciphertexts and never decrypts;
:func:`sum_ciphertexts` refuses a context with a secret key.

What is encrypted. Not an update: its masked words. A participant masks its quantised,
weighted update in Z / 2^64 exactly as in ``secagg`` (:meth:`SecAggClient.mask`), splits every
uint64 word into two 32-bit limbs (lo, hi: integers in [0, 2^32), exact as float64) and
encrypts the limb vector, two slots per value, in chunks of ``slots = poly_modulus_degree / 2``
(:func:`encrypt_masked`). Each limb is one-time-pad uniform, so ANY ciphertext, single or
summed, decrypts to uniform noise: whoever decrypts learns nothing, not even the aggregate. The
decryptor rounds the decrypted limb sums to integers (:func:`decrypt_limb_sums`) and the
coordinator joins them back into the masked sum modulo 2^64 (:func:`join_limbs`), which it
unmasks with secagg's shares.

Precision. Limb sums of a cohort of n stay below n * 2^32, exact in float64; CKKS (N = 8192,
[60, 40, 60] bits, scale 2^40) decrypts them with an error that grows with their magnitude.
Measured worst distance to the nearest integer (``benchmarks/secure_aggregation.py
--precision``): 0.00024 for a real sum of 1024 uploads; for ciphertexts of values as large as a
sum of n can be, 0.0078 at n = 2^12, 0.125 at 2^16, 0.375 at 2^17. :data:`MAX_COHORT` = 2^12
keeps a 32x margin below the 0.25 the decryptor accepts (:data:`ROUNDING_TOLERANCE`).
No multiplication happens under encryption, so one level is plenty and no Galois keys are made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from latentfl.config import option
from latentfl.errors import ConfigError, PrivacyError, ProtocolError, Reason, SecurityError
from latentfl.privacy.modes import Aggregation
from latentfl.privacy.secagg.client import SecAggClient
from latentfl.privacy.secagg.consistency import Certificate
from latentfl.privacy.secagg.fixedpoint import DEFAULT_CLIP

DEFAULT_POLY_MODULUS_DEGREE = 8192
DEFAULT_COEFF_MOD_BIT_SIZES: tuple[int, ...] = (60, 40, 60)
DEFAULT_SCALE = 2.0**40
#: A serialised N=8192 ciphertext is about 235 kB; this bound leaves room and refuses junk.
DEFAULT_MAX_CIPHERTEXT_BYTES = 400_000
CIPHERTEXT_PREFIX = "ckks/"
LIMB_BITS = 32
LIMBS_PER_WORD = 2
#: Largest cohort a ckks sum may cover: limb sums stay decryptable to the nearest integer with
#: a 32x margin (see the module docstring for the measurements).
MAX_COHORT = 2**12
#: Farthest a decrypted limb sum may be from an integer before the decryptor refuses it.
ROUNDING_TOLERANCE = 0.25
_LIMB_MASK = np.uint64(2**LIMB_BITS - 1)


@dataclass(frozen=True)
class SecureAggregationConfig:
    """How updates are aggregated (``[aggregation]``): in the clear, under CKKS, or masked."""

    mode: Aggregation = option(
        Aggregation.PLAIN, help="'secagg': participants mask their updates and the coordinator unmasks only "
        "the sum; 'ckks': the same masked exchange with the masked words CKKS-encrypted, so the "
        "coordinator sums ciphertexts and one participant decrypts only masked limb sums "
        "(docs/privacy.md)."
    )
    min_cohort: int = option(
        2, help="Fewest updates an encrypted or masked sum may cover (>= 2; with fewer the round "
        "is planned again).", min=2
    )
    clip: float = option(
        DEFAULT_CLIP, help="secagg and ckks: each weight is clipped to [-clip, clip] before fixed-point "
        "encoding (30 fractional bits, sums modulo 2^64).", min=0.0, min_exclusive=True
    )
    phase_deadline: float = option(
        30.0, help="secagg and ckks: seconds each key, share and unmask exchange waits for slow "
        "participants before going on without them.", min=0.0, min_exclusive=True
    )
    max_ciphertext_bytes: int = option(
        DEFAULT_MAX_CIPHERTEXT_BYTES, help="Largest serialised ciphertext accepted.", min=1
    )
    decrypt_deadline: float = option(
        60.0,
        help="ckks: seconds the designated participant has to return the decrypted limb sums "
        "before the next one is asked.",
        min=0.0,
        min_exclusive=True,
    )


def create_context(
    poly_modulus_degree: int = DEFAULT_POLY_MODULUS_DEGREE,
    coeff_mod_bit_sizes: Sequence[int] = DEFAULT_COEFF_MOD_BIT_SIZES,
    scale: float = DEFAULT_SCALE,
) -> Any:
    """A fresh secret CKKS context (``tenseal.Context``) with public and relinearisation keys."""
    import tenseal as ts

    if poly_modulus_degree & (poly_modulus_degree - 1) or poly_modulus_degree < 1024:
        raise ConfigError(
            f"poly_modulus_degree = {poly_modulus_degree}; expected a power of two >= 1024."
        )
    try:
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=poly_modulus_degree,
            coeff_mod_bit_sizes=list(coeff_mod_bit_sizes),
        )
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"CKKS parameters N = {poly_modulus_degree}, modulus bits "
            f"{list(coeff_mod_bit_sizes)} are refused by SEAL ({exc}); the default is "
            "N = 8192 with [60, 40, 60]."
        ) from None
    ctx.global_scale = float(scale)
    return ctx


def secret_context_bytes(ctx: Any) -> bytes:
    """The secret context serialised with its secret key (for participants only)."""
    require_private(ctx, "serialising the secret context")
    return ctx.serialize(save_secret_key=True)


def public_context_bytes(ctx: Any) -> bytes:
    """The context without its secret key: what the coordinator gets."""
    public = ctx.copy()
    public.make_context_public()
    return public.serialize()


def load_context(data: bytes, *, private: bool) -> Any:
    """Parse a serialised context; SecurityError unless it is secret (or public) as expected."""
    import tenseal as ts

    try:
        ctx = ts.context_from(bytes(data))
    except Exception as exc:  # noqa: BLE001 - TenSEAL raises several types on bad bytes
        raise SecurityError(
            f"CKKS context cannot be parsed ({exc}); expected TenSEAL bytes."
        ) from None
    if private:
        require_private(ctx, "loading a participant's context")
    else:
        require_public(ctx, "loading the coordinator's context")
    return ctx


def require_public(ctx: Any, where: str) -> None:
    """Fail closed if ``ctx`` holds a secret key where only the public context may be."""
    if ctx.is_private() or ctx.has_secret_key():
        raise SecurityError(
            f"{where}: the CKKS context holds a secret key; the coordinator must have only the "
            "public context (DIR/coordinator/ckks_public.bin from `latentfl privacy ckks-keys`)."
        )


def require_private(ctx: Any, where: str) -> None:
    if not ctx.is_private():
        raise SecurityError(
            f"{where}: the CKKS context has no secret key; expected a participant's secret context."
        )


def slot_count(ctx: Any) -> int:
    """Values one ciphertext carries: poly_modulus_degree / 2."""
    parms = ctx.seal_context().data.key_context_data().parms()
    return int(parms.poly_modulus_degree()) // 2


def ciphertext_count(length: int, ctx: Any) -> int:
    """Ciphertexts an update of ``length`` values takes."""
    return math.ceil(length / slot_count(ctx))


def split_limbs(masked: np.ndarray) -> np.ndarray:
    """uint64 words as float64 limbs ``[lo_0, hi_0, lo_1, hi_1, ...]``, each in [0, 2^32)."""
    words = np.asarray(masked, dtype=np.uint64)
    limbs = np.empty(LIMBS_PER_WORD * words.size, dtype=np.float64)
    limbs[0::2] = words & _LIMB_MASK
    limbs[1::2] = words >> np.uint64(LIMB_BITS)
    return limbs


def join_limbs(limb_sums: np.ndarray) -> np.ndarray:
    """The uint64 sum modulo 2^64 of words whose limbs summed to ``limb_sums`` (int64, >= 0):
    ``hi_sum * 2^32 + lo_sum``, wrapping."""
    sums = np.asarray(limb_sums, dtype=np.int64).view(np.uint64)
    return sums[0::2] + (sums[1::2] << np.uint64(LIMB_BITS))


def encrypt_masked(ctx: Any, masked: np.ndarray) -> list[bytes]:
    """A masked upload's limbs encrypted in slot-sized chunks, each a serialised CKKSVector."""
    import tenseal as ts

    if masked.dtype != np.uint64 or masked.ndim != 1 or masked.size == 0:
        raise ConfigError(f"masked update is {masked.dtype} of shape {masked.shape}; expected a "
                          "non-empty 1-D uint64 array.")
    limbs = split_limbs(masked)
    slots = slot_count(ctx)
    return [ts.ckks_vector(ctx, limbs[i : i + slots].tolist()).serialize()
            for i in range(0, limbs.size, slots)]


def check_cohort_size(cohort: int) -> None:
    """ConfigError unless a ckks sum of ``cohort`` uploads decrypts exactly (<= MAX_COHORT)."""
    if cohort > MAX_COHORT:
        raise ConfigError(
            f"a ckks sum of {cohort} participants' uploads is refused; its limb sums decrypt to "
            f"integers exactly only up to {MAX_COHORT} participants (use mode = 'secagg', which "
            "has no such bound)."
        )


def check_ciphertexts(
    public_ctx: Any, blobs: Sequence[bytes], expected_count: int, max_bytes: int
) -> None:
    """Refuse a peer's ciphertexts (ProtocolError 'bad_ciphertext') unless well-formed.

    Checks the count, each blob's size, that it parses under ``public_ctx``, and that it is one
    fresh, non-transparent ciphertext at the context's first level and global scale holding a
    full chunk (the last may be shorter). Never decrypts.
    """
    if len(blobs) != expected_count:
        raise _bad(f"{len(blobs)} ciphertexts arrived; expected {expected_count}")
    slots = slot_count(public_ctx)
    first_parms = list(public_ctx.seal_context().data.first_parms_id())
    for i, blob in enumerate(blobs):
        if len(blob) > max_bytes:
            raise _bad(f"ciphertext {i} has {len(blob)} bytes; expected at most {max_bytes}")
        vec = _parse(public_ctx, blob, i)
        cts = vec.ciphertext()
        size = vec.size()
        ok_size = size == slots if i < expected_count - 1 else 0 < size <= slots
        if not ok_size:
            raise _bad(f"ciphertext {i} holds {size} values; expected {slots} per full chunk")
        if len(cts) != 1 or cts[0].size() != 2 or cts[0].is_transparent():
            raise _bad(f"ciphertext {i} is not one fresh two-part ciphertext")
        if list(cts[0].parms_id()) != first_parms or cts[0].scale != public_ctx.global_scale:
            raise _bad(f"ciphertext {i} is at another level or scale than the context's")


def sum_ciphertexts(
    public_ctx: Any, updates: Sequence[Sequence[bytes]], *, min_cohort: int = 2
) -> list[bytes]:
    """Chunk-wise sum of the participants' ciphertexts (coordinator side; never decrypts).

    Refuses a secret context (SecurityError) and a cohort smaller than ``min_cohort``
    (PrivacyError 'min_cohort'), since a "sum" of one update is that participant's update.
    """
    require_public(public_ctx, "summing ciphertexts")
    check_min_cohort(len(updates), min_cohort)
    counts = {len(u) for u in updates}
    if len(counts) != 1:
        raise _bad(f"updates have different ciphertext counts {sorted(counts)}; expected one")
    total = []
    for chunk in range(counts.pop()):
        acc = _parse(public_ctx, updates[0][chunk], chunk)
        for update in updates[1:]:
            try:
                acc += _parse(public_ctx, update[chunk], chunk)
            except ValueError as exc:
                raise _bad(f"ciphertext {chunk} cannot be added ({exc})") from None
        total.append(acc.serialize())
    return total


def decrypt_limb_sums(secret_ctx: Any, blobs: Sequence[bytes], length: int, *,
                      cohort: int) -> np.ndarray:
    """Decrypt a sum of ``cohort`` masked uploads of ``length`` words: its ``2 * length`` limb
    sums rounded to integers (int64). ProtocolError 'bad-ciphertext' when a value is farther
    than ROUNDING_TOLERANCE from an integer or outside [0, cohort * (2^32 - 1)]: then it is not
    such a sum, or CKKS lost the precision to carry it."""
    require_private(secret_ctx, "decrypting a masked sum")
    if not 2 <= cohort <= MAX_COHORT:
        raise _bad(f"the sum is said to cover {cohort} uploads; expected 2 to {MAX_COHORT}")
    expected = ciphertext_count(LIMBS_PER_WORD * length, secret_ctx)
    if len(blobs) != expected:
        raise _bad(f"the sum has {len(blobs)} ciphertexts; expected {expected} for {length} words")
    values = np.concatenate([np.asarray(_parse(secret_ctx, blob, i).decrypt(), dtype=np.float64)
                             for i, blob in enumerate(blobs)])[: LIMBS_PER_WORD * length]
    nearest = np.rint(values)
    # the refusals name no decrypted value, no position and no distance: they travel to the
    # coordinator in a DECLINE and into logs
    if not np.all(np.abs(values - nearest) <= ROUNDING_TOLERANCE):
        raise _bad(f"a decrypted limb sum is not within {ROUNDING_TOLERANCE} of an integer "
                   "(CKKS precision lost, or not a sum of masked uploads)")
    top = cohort * float(2**LIMB_BITS - 1)
    if nearest.min() < 0 or nearest.max() > top:
        raise _bad(f"a decrypted limb sum lies outside [0, {top:.0f}], the range of a sum of "
                   f"{cohort} uploads")
    return nearest.astype(np.int64)


def decrypt_certified(client: SecAggClient, secret_ctx: Any, blobs: Sequence[bytes],
                      length: int, certificate: Certificate) -> np.ndarray:
    """The one decryption a participant grants an attempt: only after it signed the attempt's
    survivor set, only on that set's certificate, once (``client.certify_decrypt``), for a sum
    of exactly the certified survivors. PrivacyError when the client refuses."""
    cohort = client.certify_decrypt(certificate)
    return decrypt_limb_sums(secret_ctx, blobs, length, cohort=cohort)


def check_min_cohort(answered: int, min_cohort: int) -> None:
    """PrivacyError 'min_cohort' unless at least ``min_cohort`` (>= 2) updates are summed."""
    if min_cohort < 2:
        raise ConfigError(
            f"min_cohort = {min_cohort}; expected >= 2, since a sum of one ciphertext is an "
            "individual update."
        )
    if answered < min_cohort:
        raise PrivacyError(
            "min_cohort",
            f"only {answered} participants answered; encrypted aggregation needs at least "
            f"{min_cohort} so no individual update can be recovered.",
        )


def ciphertexts_to_tensors(blobs: Sequence[bytes]) -> dict[str, torch.Tensor]:
    """Ciphertexts as uint8 tensors named ``ckks/00000``, ... for a safetensors payload."""
    return {
        f"{CIPHERTEXT_PREFIX}{i:05d}": torch.frombuffer(bytearray(b), dtype=torch.uint8)
        for i, b in enumerate(blobs)
    }


def ciphertexts_from_tensors(tensors: Mapping[str, torch.Tensor]) -> list[bytes]:
    """The ciphertexts of a payload made by :func:`ciphertexts_to_tensors`, in order."""
    names = sorted(tensors)
    expected = [f"{CIPHERTEXT_PREFIX}{i:05d}" for i in range(len(names))]
    if names != expected:
        shown = ", ".join(names[:3])
        raise _bad(f"payload tensors are named {shown}...; expected {CIPHERTEXT_PREFIX}00000 on")
    out = []
    for name in names:
        t = tensors[name]
        if t.dtype != torch.uint8 or t.dim() != 1:
            raise _bad(
                f"payload tensor {name} is {t.dtype} of shape {tuple(t.shape)}; expected 1-D uint8"
            )
        out.append(t.numpy().tobytes())
    return out


def _parse(ctx: Any, blob: bytes, index: int) -> Any:
    import tenseal as ts

    try:
        return ts.ckks_vector_from(ctx, bytes(blob))
    except Exception as exc:  # noqa: BLE001 - TenSEAL raises several types on bad bytes
        raise _bad(f"ciphertext {index} cannot be parsed under the context ({exc})") from None


def _bad(sentence: str) -> ProtocolError:
    return ProtocolError(Reason.BAD_CIPHERTEXT, sentence + ".")


__all__ = [
    "CIPHERTEXT_PREFIX",
    "DEFAULT_COEFF_MOD_BIT_SIZES",
    "DEFAULT_MAX_CIPHERTEXT_BYTES",
    "DEFAULT_POLY_MODULUS_DEGREE",
    "DEFAULT_SCALE",
    "LIMBS_PER_WORD",
    "LIMB_BITS",
    "MAX_COHORT",
    "ROUNDING_TOLERANCE",
    "SecureAggregationConfig",
    "check_ciphertexts",
    "check_cohort_size",
    "check_min_cohort",
    "ciphertext_count",
    "ciphertexts_from_tensors",
    "ciphertexts_to_tensors",
    "create_context",
    "decrypt_certified",
    "decrypt_limb_sums",
    "encrypt_masked",
    "join_limbs",
    "load_context",
    "public_context_bytes",
    "require_private",
    "require_public",
    "secret_context_bytes",
    "slot_count",
    "split_limbs",
    "sum_ciphertexts",
]
