"""Privacy cost: DP-SGD step time and memory, CKKS encrypt / aggregate / decrypt per update.

DP-SGD part: ConvNet-3 (width 128, instance norm, 32x32 RGB, 10 classes, 320,010 parameters)
trained with ``latentfl.training.train`` at batch 64 and 256, plain and with DP-SGD
(``latentfl.privacy.make_private``, noise 1.0, clip 1.0, Poisson sampling). Each case runs in a
fresh process so its peak memory is its own: CUDA peak allocated bytes on a GPU, the process's
peak RSS on a CPU (which includes the ~0.3-0.5 GB of Python, torch and Opacus themselves). The
time per step is the median over the measured steps after one warm-up step, as wall time and
as the process's CPU time (steadier on a shared machine; equal to wall time on an idle one when
run with OMP_NUM_THREADS=1).

CKKS part: one update of 320,010 values (ConvNet-3), N=8192, [60, 40, 60] bits, scale 2^40, as
``ckks`` mode sends it: its secagg-masked words (uniform uint64, drawn here) as two 32-bit limbs
each; encryption at a participant, the coordinator's check + sum over 10 participants,
decryption of the sum's limbs at one participant; bytes per update; whether the joined sum
equals the words' sum modulo 2^64 exactly.

    python benchmarks/privacy_cost.py --device cpu --steps 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import tempfile
import time

import torch


def _dp_case(args: tuple[str, int, bool, int]) -> dict:
    device, batch, private, steps = args
    from latentfl.models import build_model
    from latentfl.privacy import PrivacyLedger, make_private
    from latentfl.training import TrainConfig, train

    torch.manual_seed(0)
    model = build_model("convnet", 10, (3, 32, 32))
    n = batch * (steps + 2)
    x = torch.randn(n, 3, 32, 32)
    y = torch.randint(0, 10, (n,))
    times: list[float] = []
    cpu_times: list[float] = []
    last = [time.perf_counter(), time.process_time()]

    # Forward-to-forward intervals: interval k is step k (forward, backward, clip, noise, update).
    # The first interval holds the setup and the second the warm-up step; both are dropped.
    def stamp(module, inputs, output) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        times.append(now - last[0])
        cpu_times.append(cpu - last[1])
        last[0], last[1] = now, cpu

    model.register_forward_hook(stamp)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    config = TrainConfig(epochs=1, batch_size=batch, lr=0.05, max_steps=steps + 2)
    with tempfile.TemporaryDirectory() as state:
        if private:
            ledger = PrivacyLedger.open(state, delta=1e-5)
            with make_private(
                ledger=ledger, round_=1, noise_multiplier=1.0, max_grad_norm=1.0
            ) as wrap:
                result = train(model, x, y, config, device=device, wrap=wrap)
        else:
            result = train(model, x, y, config, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "batch": batch,
        "dp": private,
        "steps": result.steps,
        "step_s": statistics.median(times[2:]),
        "cpu_s": statistics.median(cpu_times[2:]),
        "peak": peak,
    }


def bench_dp(device: str, batches: list[int], steps: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    rows = []
    for batch in batches:
        for private in (False, True):
            with ctx.Pool(1) as pool:
                rows.append(pool.map(_dp_case, [(device, batch, private, steps)])[0])
    return rows


def bench_ckks(length: int, participants: int) -> dict:
    import numpy as np

    from latentfl.privacy import (
        check_ciphertexts,
        ciphertext_count,
        create_context,
        decrypt_limb_sums,
        encrypt_masked,
        join_limbs,
        load_context,
        public_context_bytes,
        sum_ciphertexts,
    )

    secret = create_context()
    public = load_context(public_context_bytes(secret), private=False)
    rng = np.random.default_rng(0)
    words = [rng.integers(0, 2**64, length, dtype=np.uint64) for _ in range(participants)]
    start = time.perf_counter()
    uploads = [encrypt_masked(secret, w) for w in words]
    encrypt_s = (time.perf_counter() - start) / participants
    count = ciphertext_count(2 * length, public)
    start = time.perf_counter()
    for blobs in uploads:
        check_ciphertexts(public, blobs, count, 1 << 20)
    total = sum_ciphertexts(public, uploads, min_cohort=2)
    aggregate_s = time.perf_counter() - start
    start = time.perf_counter()
    sums = decrypt_limb_sums(secret, total, length, cohort=participants)
    decrypt_s = time.perf_counter() - start
    expected = np.zeros(length, dtype=np.uint64)
    for w in words:
        expected += w
    return {
        "length": length,
        "participants": participants,
        "ciphertexts": count,
        "bytes": sum(len(b) for b in uploads[0]),
        "encrypt_s": encrypt_s,
        "aggregate_s": aggregate_s,
        "decrypt_s": decrypt_s,
        "exact": bool(np.array_equal(join_limbs(sums), expected)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--steps", type=int, default=3, help="Measured steps per case.")
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--length", type=int, default=320_010)
    args = parser.parse_args()

    rows = bench_dp(args.device, [int(b) for b in args.batches.split(",")], args.steps)
    print(
        f"DP-SGD, ConvNet-3 (320,010 params), device {args.device}, median of "
        f"{args.steps} steps after warm-up"
    )
    print("| batch | DP-SGD | wall s / step | CPU s / step | slowdown (CPU) | peak memory (MiB) |")
    print("| ---: | :---: | ---: | ---: | ---: | ---: |")
    plain = {r["batch"]: r["cpu_s"] for r in rows if not r["dp"]}
    for r in rows:
        slow = r["cpu_s"] / plain[r["batch"]]
        print(
            f"| {r['batch']} | {'on' if r['dp'] else 'off'} | {r['step_s']:.3f} | "
            f"{r['cpu_s']:.3f} | {slow:.1f}x | {r['peak'] / 2**20:,.0f} |"
        )
    c = bench_ckks(args.length, args.participants)
    print()
    print(
        f"CKKS (N=8192, [60,40,60], scale 2^40), one update of {c['length']:,} values, "
        f"{c['participants']} participants"
    )
    print(
        "| ciphertexts / update | bytes / update | encrypt (s, one participant) | "
        f"check + sum of {c['participants']} (s, coordinator) | decrypt sum (s) | "
        "sum mod 2^64 exact |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {c['ciphertexts']} | {c['bytes']:,} ({c['bytes'] / 2**20:.1f} MiB) | "
        f"{c['encrypt_s']:.2f} | {c['aggregate_s']:.2f} | {c['decrypt_s']:.2f} | "
        f"{'yes' if c['exact'] else 'NO'} |"
    )


if __name__ == "__main__":
    main()
