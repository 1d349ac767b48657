"""Secure aggregation cost: bytes per participant and seconds per party, plain / secagg / ckks.

For cohorts of 10, 50 and 100 participants and one update of ``--length`` values (default
320,010: ConvNet-3 width 128, the registry's default surrogate), each party is simulated in
this one process with the code the daemons run:

- plain: the UPDATE payload (float32 safetensors) each participant sends; the coordinator's
  weighted mean.
- secagg: :class:`latentfl.privacy.secagg.SecAggClient` / ``SecAggServer`` through all four
  exchanges, with the payload encoders of ``latentfl.platform.secagg_payloads``; bytes are
  what a participant sends plus what it receives (key list, share inbox, unmask request).
  Participant seconds are its own work summed over the phases (mean over participants);
  coordinator seconds cover relaying and unmasking. Run once with nobody dropping and once with
  10% dropping after sharing (their pairwise masks are rebuilt from shares).
- ckks: TenSEAL N=8192 (the default context): one participant's encryption (timed once, its
  ciphertexts reused for every participant), the coordinator's checks and sum over the cohort,
  one participant's decryption of the sum.

    python benchmarks/secure_aggregation.py --length 320010 --cohorts 10 50 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from latentfl.platform.protocol import pack_tensors
from latentfl.platform.secagg_payloads import (
    encode_advert,
    encode_key_list,
    encode_reveal,
    encode_sealed,
    encode_unmask,
    masked_tensors,
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


def _secagg(n: int, length: int, drop_share: float) -> dict:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
        sent[p] += len(pack_tensors(masked_tensors(masked)))
        started = time.perf_counter()
        server.add_masked(p, masked)
        coordinator_s += time.perf_counter() - started
    started = time.perf_counter()
    survivors, gone = server.close_uploads()
    request = len(encode_unmask(survivors, gone))
    coordinator_s += time.perf_counter() - started
    for p in survivors:
        received[p] += request
        revealed = timed(p, clients[p].reveal, survivors, gone)
        sent[p] += len(encode_reveal(revealed))
        started = time.perf_counter()
        server.add_reveal(p, revealed)
        coordinator_s += time.perf_counter() - started
    started = time.perf_counter()
    total = server.unmask(server.masked_sum())
    coordinator_s += time.perf_counter() - started
    assert total.shape == (length,)
    alive = [p for p in ids if p not in dropped]
    return {"bytes": int(np.mean([sent[p] + received[p] for p in alive])),
            "participant_s": float(np.mean([spent[p] for p in alive])),
            "coordinator_s": coordinator_s, "degree": degree(n)}


def _ckks(n: int, length: int) -> dict:
    from latentfl.privacy.ckks import (
        check_ciphertexts,
        create_context,
        decrypt_aggregate,
        encrypt_update,
        load_context,
        public_context_bytes,
        sum_ciphertexts,
    )

    secret = create_context()
    public = load_context(public_context_bytes(secret), private=False)
    update = torch.from_numpy(np.random.default_rng(0).normal(size=length))
    started = time.perf_counter()
    blobs = encrypt_update(secret, update, weight=100.0)
    encrypt_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(n):
        check_ciphertexts(public, blobs, len(blobs), 400_000)
    total = sum_ciphertexts(public, [blobs] * n, min_cohort=2)
    coordinator_s = time.perf_counter() - started
    started = time.perf_counter()
    decrypt_aggregate(secret, total, length, total_weight=100.0 * n)
    decrypt_s = time.perf_counter() - started
    return {"bytes": sum(len(b) for b in blobs), "participant_s": encrypt_s,
            "coordinator_s": coordinator_s, "decrypt_s": decrypt_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=320_010)
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--skip-ckks", action="store_true")
    args = parser.parse_args()
    print(f"update of {args.length} values; bytes = sent + received per participant")
    print(f"{'mode':<16}{'n':>5}{'bytes/participant':>20}{'participant s':>15}"
          f"{'coordinator s':>15}  notes")
    for n in args.cohorts:
        rows = [("plain", _plain(n, args.length)),
                ("secagg", _secagg(n, args.length, 0.0)),
                ("secagg 10% drop", _secagg(n, args.length, 0.1))]
        if not args.skip_ckks:
            rows.append(("ckks", _ckks(n, args.length)))
        for mode, r in rows:
            notes = (f"degree {r['degree']}" if "degree" in r
                     else f"decrypt {r['decrypt_s']:.2f} s" if "decrypt_s" in r else "")
            print(f"{mode:<16}{n:>5}{r['bytes']:>20,}{r['participant_s']:>15.3f}"
                  f"{r['coordinator_s']:>15.3f}  {notes}", flush=True)


if __name__ == "__main__":
    main()
