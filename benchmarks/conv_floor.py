"""The convolutions one unrolled step of trajectory matching cannot avoid, timed on a CPU.

A full unroll of ConvNet-3 differentiates every inner step's gradient, so each step runs, per
3x3 convolution layer: in the inner step the forward, the weight gradient and (past the image
layer) the input gradient; in the outer pass the two forward convolutions and the input and
weight gradients of the backward's backward, and the input and weight gradients of the forward
once more. That is 9 convolution calls per layer and 6 for the image layer (it has no input
gradient in the inner step, nor a weight term from one in the outer pass), in the channels-last
layout, with the image layer's input gradient through ``fold`` and under the engine's heap
settings, as the CPU engine (``latentfl.distill._fused_convnet``) runs them. Their summed time is a floor for the engine's
seconds per step, whatever it does with the rest; divide it by the MTT reference's seconds per
step (``mtt_side_by_side.py`` divided by ``--steps``) for the best ratio this arithmetic allows.

    OMP_NUM_THREADS=1 python benchmarks/conv_floor.py --width 128 --batch 100
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from latentfl.distill._allocator import engine_heap

_conv_backward = torch.ops.aten.convolution_backward.default


def _best_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best * 1e3


def layer_times(batch: int, c_in: int, c_out: int, size: int, repeats: int) -> dict[str, float]:
    """Milliseconds of one forward, weight-gradient and input-gradient call at these sizes."""
    cl = torch.channels_last
    x = torch.randn(batch, c_in, size, size).contiguous(memory_format=cl)
    g = torch.randn(batch, c_out, size, size).contiguous(memory_format=cl)
    w, b = torch.randn(c_out, c_in, 3, 3), torch.randn(c_out)
    args = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)

    def input_grad():
        if c_in > 4:  # the engine's rule: narrow inputs go through a matrix product and fold
            return _conv_backward(g, x, w, None, *args, [True, False, False])
        cols = torch.matmul(w.reshape(c_out, -1).t(),
                            g.permute(0, 2, 3, 1).reshape(batch, -1, c_out).transpose(1, 2))
        return F.fold(cols, (size, size), 3, padding=1)

    return {"forward": _best_ms(lambda: F.conv2d(x, w, b, padding=1), repeats),
            "weight grad": _best_ms(lambda: (_conv_backward(g, x, w, None, *args,
                                                            [False, True, False]),
                                             g.sum((0, 2, 3))), repeats),
            "input grad": _best_ms(input_grad, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    a = parser.parse_args()
    layers = [(3, a.width, 32), (a.width, a.width, 16), (a.width, a.width, 8)]
    print(f"# conv_floor: ConvNet-3 width {a.width}, batch {a.batch}, 32x32, channels-last, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| layer | forward ms | weight grad ms | input grad ms | calls per step "
          "(fwd / wgrad / igrad) | ms per step |")
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    total = 0.0
    for i, (c_in, c_out, size) in enumerate(layers):
        with engine_heap():  # the engine's heap: outputs reuse freed memory, as in an unroll
            t = layer_times(a.batch, c_in, c_out, size, a.repeats)
        calls = (2, 2, 2) if i == 0 else (3, 3, 3)
        step = sum(n * t[k] for n, k in zip(calls, t, strict=True))
        total += step
        print(f"| {i + 1}: {c_in} -> {c_out} at {size}x{size} | {t['forward']:.1f} | "
              f"{t['weight grad']:.1f} | {t['input grad']:.1f} | {' / '.join(map(str, calls))} "
              f"| {step:.0f} |")
    print(f"\nconvolutions per unrolled step: {total / 1e3:.3f} s")


if __name__ == "__main__":
    main()
