"""Local training throughput: P participants one after another vs together in one vmapped step.

Each of P participants holds ``steps * batch`` random 3x32x32 images and trains one epoch of
SGD (momentum 0.9, augmentation on) of a ConvNet (default width 128, depth 3, instance norm)
from its own starting weights: sequentially with ``latentfl.training.train``, and all together
with ``latentfl.training_batched.train_many`` (what the simulator's ``local_training =
"batched"`` runs). The table gives participant-steps per second (P x steps / wall time of the
whole call, data-order set-up included) after one untimed warm-up call of each.

    python benchmarks/local_training.py --device cpu --participants 1 10 40 --steps 5
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device: torch.device, count: int, steps: int, batch: int, width: int) -> dict:
    from latentfl.models import build_model, load_tensors_, state_to_tensors
    from latentfl.training import TrainConfig, train
    from latentfl.training_batched import train_many

    torch.manual_seed(0)

    def build():
        return build_model("convnet", 10, (3, 32, 32), width=width)

    starts = [state_to_tensors(build()) for _ in range(count)]
    data = [(torch.randn(steps * batch, 3, 32, 32), torch.randint(0, 10, (steps * batch,)))
            for _ in range(count)]
    base = TrainConfig(batch_size=batch, lr=0.01, momentum=0.9, augment=True)
    configs = [replace(base, seed=i) for i in range(count)]

    def sequential() -> None:
        for start, (x, y), config in zip(starts, data, configs, strict=True):
            model = build()
            load_tensors_(model, start)
            train(model, x, y, config, device=device)

    def batched() -> None:
        train_many(build(), starts, data, configs, device=device)

    row = {"participants": count}
    for name, run in (("sequential", sequential), ("batched", batched)):
        run()  # warm-up: allocator, kernels, first-call overheads
        _sync(device)
        started = time.perf_counter()
        run()
        _sync(device)
        row[name] = count * steps / (time.perf_counter() - started)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu).")
    parser.add_argument("--participants", type=int, nargs="+", default=[1, 10, 40])
    parser.add_argument("--steps", type=int, default=5, help="Optimizer steps per participant.")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=128, help="ConvNet width (channels).")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, ConvNet-3 width {args.width}, 32x32, batch {args.batch}, "
          f"{args.steps} steps per participant")
    print(f"{'participants':>12}  {'sequential':>12}  {'batched':>12}  {'speed-up':>8}")
    for count in args.participants:
        row = measure(device, count, args.steps, args.batch, args.width)
        print(f"{count:>12}  {row['sequential']:>12.1f}  {row['batched']:>12.1f}  "
              f"{row['batched'] / row['sequential']:>7.2f}x", flush=True)
    print("(participant-steps per second)")


if __name__ == "__main__":
    main()
