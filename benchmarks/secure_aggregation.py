"""Secure aggregation cost: bytes per participant and seconds per party, plain / secagg / ckks.

For cohorts of 10, 50 and 100 participants and one update of ``--length`` values (default
320,010: ConvNet-3 width 128, the registry's default surrogate), each party is simulated in
this one process with the code the daemons run:

- plain: the UPDATE payload (float32 safetensors) each participant sends; the coordinator's
  weighted mean.
- secagg: :class:`latentfl.privacy.secagg.SecAggClient` / ``SecAggServer`` through all five
  exchanges, with the payload encoders of ``latentfl.platform.wire.secagg``; bytes are
  what a participant sends plus what it receives (key list, share inbox, survivor set, the
  certificate with the unmask request). The notes give what the consistency round adds per
  participant: the survivor set it signs, its signature, and the signatures the certificate
  carries beyond a plain survivor list, in bytes and as a share of the total.
  Participant seconds are its own work summed over the phases (mean over participants);
  coordinator seconds cover relaying and unmasking. Run once with nobody dropping and once with
  10% dropping after sharing (their pairwise masks are rebuilt from shares).
- ckks: secagg's exchange as above with each masked upload CKKS-encrypted as 32-bit limbs
  (TenSEAL N=8192, the default context; two slots per word). Encryption is timed once and its
  ciphertexts are reused for every participant (each still masks its own words); the
  coordinator checks every upload and sums the survivors' ciphertexts; one survivor decrypts
  the sum's limbs (notes: its seconds and the bytes it receives and sends); the coordinator
  joins them and unmasks.

``--precision`` instead measures how far decrypted limb sums land from the nearest integer (the
decryptor refuses beyond 0.25): real sums of n fresh ciphertexts of uniform limbs up to
n = 1024, and for larger n fresh ciphertexts of integers as large as such a sum can be
(CKKS's error grows with the magnitude, not with the count of additions).

    python benchmarks/secure_aggregation.py --length 320010 --cohorts 10 50 100
    python benchmarks/secure_aggregation.py --precision
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from latentfl.platform.protocol import pack_tensors
from latentfl.platform.wire.payloads import encode_decrypt_task, encode_limb_sums
from latentfl.platform.wire.secagg import (
    encode_advert,
    encode_key_list,
    encode_reveal,
    encode_sealed,
    encode_signature,
    encode_survivors,
    encode_unmask,
    masked_tensors,
)
from latentfl.privacy.ckks import (
    LIMB_BITS,
    LIMBS_PER_WORD,
    check_ciphertexts,
    ciphertext_count,
    ciphertexts_to_tensors,
    create_context,
    decrypt_limb_sums,
    encrypt_masked,
    join_limbs,
    load_context,
    public_context_bytes,
    sum_ciphertexts,
)
from latentfl.privacy.secagg import RoundParams, SecAggClient, SecAggServer, degree


def _plain(n: int, length: int) -> dict:
    rng = np.random.default_rng(0)
    update = torch.from_numpy(rng.normal(size=length).astype(np.float32))
    started = time.perf_counter()
    payload = pack_tensors({"w": update})
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    total = torch.zeros(length, dtype=torch.float64)
    for _ in range(n):
        total += 100.0 * update.double()
    mean = total / (100.0 * n)
    assert mean.shape == (length,)
    return {"bytes": len(payload), "participant_s": encode_s,
            "coordinator_s": time.perf_counter() - started}


def _masked(n: int, length: int, drop_share: float, *, ckks: bool = False) -> dict:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if ckks:
        secret = create_context()
        public = load_context(public_context_bytes(secret), private=False)
        count = ciphertext_count(LIMBS_PER_WORD * length, public)
        blobs, encrypt_s = None, 0.0

    ids = [f"site-{i:03d}" for i in range(n)]
    signing = {p: Ed25519PrivateKey.generate() for p in ids}
    verify = {p: k.public_key() for p, k in signing.items()}
    params = RoundParams("bench", 1, min_cohort=2)
    rng = np.random.default_rng(0)
    inputs = {p: rng.normal(size=length) for p in ids}
    spent = dict.fromkeys(ids, 0.0)
    sent = dict.fromkeys(ids, 0)
    received = dict.fromkeys(ids, 0)
    coordinator_s = 0.0

    def timed(pid, fn, *args, **kwargs):
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        spent[pid] += time.perf_counter() - started
        return out

    started = time.perf_counter()
    server = SecAggServer(params, verify, length)
    coordinator_s += time.perf_counter() - started
    clients = {p: timed(p, SecAggClient, p, params, signing_key=signing[p], verify_keys=verify)
               for p in ids}
    for p, c in clients.items():
        advert = timed(p, c.advertise)
        sent[p] += len(encode_advert(advert))
        started = time.perf_counter()
        server.add_advert(advert)
        coordinator_s += time.perf_counter() - started
    started = time.perf_counter()
    key_list = server.close_adverts()
    key_bytes = len(encode_key_list(key_list))
    coordinator_s += time.perf_counter() - started
    for p, c in clients.items():
        received[p] += key_bytes
        sealed = timed(p, c.share_keys, key_list)
        sent[p] += len(encode_sealed(sealed))
        started = time.perf_counter()
        server.add_shares(p, sealed)
        coordinator_s += time.perf_counter() - started
    started = time.perf_counter()
    inboxes = server.close_shares()
    coordinator_s += time.perf_counter() - started
    dropped = set(ids[:: max(1, round(1 / drop_share))][: int(n * drop_share)]) \
        if drop_share else set()
    for p, sealed in inboxes.items():
        received[p] += len(encode_sealed(sealed))
        timed(p, clients[p].receive_shares, sealed)
    for p in ids:
        if p in dropped:
            continue
        masked = timed(p, clients[p].mask, inputs[p], 100)
        if not ckks:
            sent[p] += len(pack_tensors(masked_tensors(masked)))
            started = time.perf_counter()
            server.add_masked(p, masked)
            coordinator_s += time.perf_counter() - started
            continue
        if blobs is None:
            started = time.perf_counter()
            blobs = encrypt_masked(secret, masked)
            encrypt_s = time.perf_counter() - started
        spent[p] += encrypt_s
        sent[p] += len(pack_tensors(ciphertexts_to_tensors(blobs)))
        started = time.perf_counter()
        check_ciphertexts(public, blobs, count, 400_000)
        server.add_survivor(p)
        coordinator_s += time.perf_counter() - started
    started = time.perf_counter()
    survivors, _ = server.close_uploads()
    asked = len(encode_survivors(survivors))
    coordinator_s += time.perf_counter() - started
    consistency = asked
    for p in survivors:
        received[p] += asked
        timed(p, clients[p].acknowledge)
        signature = timed(p, clients[p].sign_survivors, survivors)
        sent[p] += len(encode_signature(signature))
        started = time.perf_counter()
        server.add_signature(p, signature)
        coordinator_s += time.perf_counter() - started
    consistency += len(encode_signature(signature))
    started = time.perf_counter()
    certificate = server.certificate()
    request = len(encode_unmask(certificate))
    coordinator_s += time.perf_counter() - started
    consistency += request - asked  # the signatures; a survivor list was sent before too
    for p in survivors:
        received[p] += request
        revealed = timed(p, clients[p].reveal, certificate)
        sent[p] += len(encode_reveal(revealed))
        started = time.perf_counter()
        server.add_reveal(p, revealed)
        coordinator_s += time.perf_counter() - started
    notes = f"degree {degree(n)}"
    started = time.perf_counter()
    if ckks:
        total = sum_ciphertexts(public, [blobs] * len(survivors), min_cohort=2)
        task = len(encode_decrypt_task(total, length=length, cohort=len(survivors))[0])
        coordinator_s += time.perf_counter() - started
        decrypt_started = time.perf_counter()
        sums = decrypt_limb_sums(secret, total, length, cohort=len(survivors))
        decrypt_s = time.perf_counter() - decrypt_started
        answer = len(encode_limb_sums(sums, cohort=len(survivors))[0])
        notes += f"; decryptor {decrypt_s:.2f} s, +{task + answer:,} bytes"
        started = time.perf_counter()
        masked_sum = join_limbs(sums)
    else:
        masked_sum = server.masked_sum()
    total = server.unmask(masked_sum)
    coordinator_s += time.perf_counter() - started
    assert total.shape == (length,)
    alive = [p for p in ids if p not in dropped]
    per_participant = np.mean([sent[p] + received[p] for p in alive])
    notes += f"; consistency +{consistency:,} bytes ({100 * consistency / per_participant:.2f}%)"
    return {"bytes": int(per_participant),
            "participant_s": float(np.mean([spent[p] for p in alive])),
            "coordinator_s": coordinator_s, "notes": notes}


def _precision(cohorts: list[int], slots: int = 4096) -> None:
    """Worst distance of decrypted limb sums to the nearest integer, per cohort size."""
    import tenseal as ts

    ctx = create_context()
    rng = np.random.default_rng(0)
    top = 2**LIMB_BITS - 1
    print(f"{'n':>7}  {'how':<38}{'worst distance':>16}")
    for n in cohorts:
        if n <= 1024:
            how, acc, exact = f"sum of {n} ciphertexts", None, np.zeros(slots, dtype=np.int64)
            for _ in range(n):
                limbs = rng.integers(0, top, slots, dtype=np.int64, endpoint=True)
                limbs[:8] = top  # the largest limbs too
                exact += limbs
                vec = ts.ckks_vector(ctx, limbs.astype(np.float64).tolist())
                acc = vec if acc is None else acc + vec
            worst = float(np.abs(np.asarray(acc.decrypt()) - exact).max())
        else:
            how, worst = "3 ciphertexts of values up to n(2^32-1)", 0.0
            for _ in range(3):
                exact = rng.integers(0, n * top, slots, dtype=np.int64, endpoint=True)
                exact[:8] = n * top
                vec = ts.ckks_vector(ctx, exact.astype(np.float64).tolist())
                vec += ts.ckks_vector(ctx, [0.0] * slots)
                worst = max(worst, float(np.abs(np.asarray(vec.decrypt()) - exact).max()))
        print(f"{n:>7}  {how:<38}{worst:>16.6f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=320_010)
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--skip-ckks", action="store_true")
    parser.add_argument("--precision", action="store_true",
                        help="measure the limb sums' distance to integers instead")
    args = parser.parse_args()
    if args.precision:
        _precision([2, 16, 128, 1024, 2**12, 2**13, 2**14, 2**15, 2**16, 2**17])
        return
    print(f"update of {args.length} values; bytes = sent + received per participant")
    print(f"{'mode':<16}{'n':>5}{'bytes/participant':>20}{'participant s':>15}"
          f"{'coordinator s':>15}  notes")
    for n in args.cohorts:
        rows = [("plain", _plain(n, args.length)),
                ("secagg", _masked(n, args.length, 0.0)),
                ("secagg 10% drop", _masked(n, args.length, 0.1))]
        if not args.skip_ckks:
            rows += [("ckks", _masked(n, args.length, 0.0, ckks=True)),
                     ("ckks 10% drop", _masked(n, args.length, 0.1, ckks=True))]
        for mode, r in rows:
            print(f"{mode:<16}{n:>5}{r['bytes']:>20,}{r['participant_s']:>15.3f}"
                  f"{r['coordinator_s']:>15.3f}  {r.get('notes', '')}", flush=True)


if __name__ == "__main__":
    main()
