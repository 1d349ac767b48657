"""``latentfl privacy``: plan a private run, read a site's ledger, make CKKS keys.

    latentfl privacy plan --examples 5000 --batch 64 --epochs 1 --rounds 20 --epsilon 8 \\
        --delta 1e-5 [--model convnet]
    latentfl privacy ledger --state-dir STATE | --config participant.toml
    latentfl privacy ckks-keys KEYDIR
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latentfl.config import load_config
from latentfl.errors import ConfigError
from latentfl.models import MODEL_NAMES, build_model
from latentfl.platform.crypto.ckks_keys import write_ckks_keys
from latentfl.platform.participant.config import ParticipantConfig
from latentfl.privacy.accounting import plan_dp_sgd
from latentfl.privacy.ckks import (
    LIMBS_PER_WORD,
    ciphertext_count,
    create_context,
    encrypt_masked,
    slot_count,
)
from latentfl.privacy.ledger import PrivacyLedger


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("privacy", help="DP budgets, privacy ledgers and CKKS keys.")
    sub = parser.add_subparsers(title="privacy commands", metavar="ACTION")

    def show_help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=show_help)

    plan = sub.add_parser("plan", help="Noise multiplier and epsilon per round before a run.")
    plan.add_argument("--examples", type=int, required=True, help="Local training examples.")
    plan.add_argument("--batch", type=int, required=True, help="Expected batch size.")
    plan.add_argument("--epochs", type=int, default=1, help="Local epochs per round.")
    plan.add_argument("--rounds", type=int, required=True, help="Planned rounds.")
    noise = plan.add_mutually_exclusive_group(required=True)
    noise.add_argument("--epsilon", type=float, help="Target epsilon after all rounds.")
    noise.add_argument("--noise-multiplier", type=float, help="A given noise multiplier.")
    plan.add_argument("--delta", type=float, default=1e-5,
                      help="Target delta; keep it well below 1/examples.")
    plan.add_argument("--max-steps", type=int, default=None,
                      help="Cap on steps per round (none: the epochs decide).")
    plan.add_argument("--accountant", choices=["rdp", "prv"], default="rdp",
                      help="Privacy accountant: Renyi DP or the PRV accountant (tighter).")
    plan.add_argument("--model", default=None, metavar="NAME",
                      help=f"Also print the CKKS cost of one update of this model "
                           f"({', '.join(MODEL_NAMES)}).")
    plan.add_argument("--num-classes", type=int, default=10,
                      help="Classes of the model's output layer (with --model).")
    plan.add_argument("--in-shape", default="3,32,32", help="C,H,W of the model input.")
    plan.set_defaults(handler=run_plan)

    ledger = sub.add_parser("ledger", help="Print a participant's privacy ledger.")
    where = ledger.add_mutually_exclusive_group(required=True)
    where.add_argument("--state-dir", type=Path, help="The participant's state directory.")
    where.add_argument(
        "--config", type=Path, help="The participant's config (its state_dir holds the ledger)."
    )
    ledger.set_defaults(handler=run_ledger)

    keys = sub.add_parser(
        "ckks-keys",
        help="CKKS context: public for the coordinator, "
        "secret sealed to each enrolled participant.",
    )
    keys.add_argument("key_dir", type=Path, help="Key folder made by `latentfl keys`.")
    keys.add_argument("--poly-modulus-degree", type=int, default=8192,
                      help="CKKS ring dimension N: slots per ciphertext are N/2.")
    keys.add_argument("--coeff-mod-bit-sizes", default="60,40,60",
                      help="Bit sizes of the coefficient modulus primes, comma-separated.")
    keys.add_argument("--scale-bits", type=int, default=40,
                      help="log2 of the encoding scale (precision of the encrypted values).")
    keys.add_argument("--force", action="store_true", help="Replace existing CKKS key files.")
    keys.set_defaults(handler=run_ckks_keys)


def plan_problems(args: argparse.Namespace) -> list[str]:
    """Every problem with ``privacy plan``'s options, so all are reported before any output."""
    out = []
    for flag, value, least in (("--examples", args.examples, 1), ("--batch", args.batch, 1),
                               ("--epochs", args.epochs, 1), ("--rounds", args.rounds, 1),
                               ("--num-classes", args.num_classes, 2)):
        if value < least:
            out.append(f"{flag} {value}; expected an integer >= {least}.")
    if args.max_steps is not None and args.max_steps < 1:
        out.append(f"--max-steps {args.max_steps}; expected an integer >= 1 or none.")
    if not 0.0 < args.delta < 1.0:
        out.append(f"--delta {args.delta:g}; expected a value in (0, 1), well below "
                   "1/examples.")
    for flag, value in (("--epsilon", args.epsilon), ("--noise-multiplier",
                                                      args.noise_multiplier)):
        if value is not None and not value > 0:
            out.append(f"{flag} {value:g}; expected a value > 0.")
    if args.model is not None and args.model not in MODEL_NAMES:
        out.append(f"--model {args.model!r}; expected one of {', '.join(MODEL_NAMES)}.")
    shape = args.in_shape.split(",")
    if len(shape) != 3 or not all(v.strip().isdigit() and int(v) > 0 for v in shape):
        out.append(f"--in-shape {args.in_shape!r}; expected C,H,W such as 3,32,32.")
    return out


def delta_warning(delta: float, examples: int) -> str | None:
    """A warning when ``delta`` is not well below 1/examples (the chance of a total leak of
    one record must be far smaller than picking any one record)."""
    if delta * examples < 0.1:
        return None
    return (f"delta {delta:g} is not well below 1/examples = {1 / examples:.2g}: with "
            f"{examples:,} examples a mechanism may publish about {delta * examples:.2g} "
            f"records outright and still meet (epsilon, delta); choose delta <= "
            f"{0.1 / examples:.1g}, e.g. {10 ** math.floor(math.log10(0.1 / examples)):g}.")


def run_plan(args: argparse.Namespace) -> int:
    problems = plan_problems(args)
    if problems:
        raise ConfigError("privacy plan: " + " ".join(problems))
    p = plan_dp_sgd(
        num_examples=args.examples,
        batch_size=args.batch,
        epochs=args.epochs,
        rounds=args.rounds,
        delta=args.delta,
        target_epsilon=args.epsilon,
        noise_multiplier=args.noise_multiplier,
        max_steps=args.max_steps,
        accountant=args.accountant,
    )
    model = None
    if args.model:  # built before printing, so a model that cannot take the shape fails first
        in_shape = tuple(_parse_ints(args.in_shape, "--in-shape"))
        model = build_model(args.model, args.num_classes, in_shape)
    if (warning := delta_warning(args.delta, args.examples)) is not None:
        print(f"latentfl: warning: {warning}", file=sys.stderr)
    how = (
        f"derived from target epsilon {args.epsilon} over all {p.rounds} rounds"
        if args.epsilon is not None
        else "given"
    )
    print(
        f"DP-SGD plan: {p.num_examples} examples, batch {p.batch_size}: sample rate "
        f"{p.sample_rate:.5g}, {p.steps_per_round} steps per round, {p.rounds} rounds "
        f"({p.total_steps} steps), delta {p.delta:g}, accountant {p.accountant}"
    )
    print(f"noise multiplier: {p.noise_multiplier:.4f} ({how})")
    print(f"{'round':>5}  {'steps':>7}  {'epsilon':>9}")
    for r, eps in enumerate(p.epsilons, start=1):
        print(f"{r:>5}  {r * p.steps_per_round:>7}  {eps:>9.3f}")
    if model is not None:
        _print_ckks_cost(args.model, model)
    return 0


def _print_ckks_cost(name: str, model: torch.nn.Module) -> None:
    length = sum(p.numel() for p in model.parameters())
    ctx = create_context()
    words = np.random.default_rng(0).integers(0, 2**64, slot_count(ctx) // LIMBS_PER_WORD,
                                              dtype=np.uint64)  # one ciphertext of masked words
    times, size = [], 0
    for _ in range(5):
        start = time.perf_counter()
        blob = encrypt_masked(ctx, words)[0]
        times.append(time.perf_counter() - start)
        size = len(blob)
    count = ciphertext_count(LIMBS_PER_WORD * length, ctx)
    per_chunk = statistics.median(times)
    print(
        f"CKKS cost of one {name} update ({length:,} parameters, masked words as 2 limbs each; "
        f"N=8192, {slot_count(ctx)} slots per ciphertext):"
    )
    print(f"  ciphertexts: {count}")
    print(f"  bytes: {count * size:,} ({count} x {size:,}; {count * size / 2**20:.1f} MiB)")
    print(
        f"  encryption time: {count * per_chunk:.2f} s ({count} x {per_chunk * 1e3:.1f} ms "
        "measured on this machine)"
    )


def run_ledger(args: argparse.Namespace) -> int:
    state_dir = args.state_dir
    if args.config is not None:
        config = load_config(args.config, ParticipantConfig)
        if config.state_dir is None:
            raise ConfigError(
                f"{args.config} sets no state_dir, so this participant keeps no privacy ledger; "
                "set state_dir (DP-SGD and max_epsilon require it)."
            )
        state_dir = config.state_dir
    ledger = PrivacyLedger.load(state_dir)
    print(f"privacy ledger {ledger.path} (accountant {ledger.accountant}, delta {ledger.delta:g})")
    print(
        f"{'round':>5}  {'mechanism':<12}  {'steps':>6}  {'sample_rate':>11}  "
        f"{'noise':>7}  {'clip':>6}  {'epsilon_after':>13}"
    )
    for row in ledger.rows:
        print(
            f"{row.round:>5}  {row.mechanism:<12}  {row.steps:>6}  {row.sample_rate:>11.5g}  "
            f"{row.noise_multiplier:>7.4g}  {row.max_grad_norm:>6.3g}  "
            f"{row.epsilon_after:>13.4f}"
        )
    print(
        f"spent: epsilon {ledger.epsilon():.4f} at delta {ledger.delta:g} over "
        f"{ledger.total_steps} DP-SGD steps and {len(ledger.rows)} rows"
    )
    return 0


def run_ckks_keys(args: argparse.Namespace) -> int:
    bits = _parse_ints(args.coeff_mod_bit_sizes, "--coeff-mod-bit-sizes")
    written = write_ckks_keys(
        args.key_dir,
        poly_modulus_degree=args.poly_modulus_degree,
        coeff_mod_bit_sizes=bits,
        scale=2.0**args.scale_bits,
        overwrite=args.force,
    )
    for party, path in written.items():
        print(f"{party}: {path}")
    print(
        f"CKKS context N={args.poly_modulus_degree}, modulus bits {bits}, scale "
        f"2^{args.scale_bits}: public context for the coordinator, secret context sealed to "
        f"{len(written) - 1} participants."
    )
    return 0


def _parse_ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} = {text!r}; expected integers separated by commas.") from None


__all__ = ["delta_warning", "plan_problems", "register", "run_ckks_keys", "run_ledger", "run_plan"]
