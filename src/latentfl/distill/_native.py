"""The CPU engine's C loops (``_cpu_kernels.c``), compiled at first use.

The norm block's eager form runs 8-25 PyTorch kernels per function, each a pass over activations
of tens of MB; the C loops take two or three. The image layer's input gradient (3 input
channels) is a skinny matrix product and a ``fold`` eagerly, one pass over the output gradient
in C. The loops are compiled once per process with the system's C compiler into a private
temporary directory and loaded with ctypes (ctypes releases the GIL while they run): nothing is
cached on disk, so there is no stale or foreign library to trust, and it costs under a second.
Where there is no compiler, the build fails, or ``LATENTFL_NATIVE=0`` is set, :func:`cpu_kernels`
returns None and the engine keeps its eager path (the same math).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

from latentfl.log import get_logger

__all__ = ["CpuKernels", "cpu_kernels"]

_SOURCE = Path(__file__).with_name("_cpu_kernels.c")
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_lock = threading.Lock()
_loaded: list[CpuKernels | None] = []


class CpuKernels:
    """The loops, for contiguous channels-last float32/float64 CPU tensors."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._fns = {(name, dtype): getattr(lib, f"{name}_{suffix}")
                     for name in ("block_forward", "block_backward", "block_double_backward",
                                  "image_input_grad")
                     for dtype, suffix in _SUFFIX.items()}
        for fn in self._fns.values():
            fn.restype = ctypes.c_int

    @staticmethod
    def accepts(*tensors: Tensor) -> bool:
        """Whether the loops take these: contiguous CPU tensors of one supported dtype."""
        dtype = tensors[0].dtype
        return dtype in _SUFFIX and all(
            x.device.type == "cpu" and x.dtype == dtype and x.is_contiguous() for x in tensors)

    def _call(self, name: str, tensors: list[Tensor], sizes: tuple[int, ...],
              outputs: list[Tensor], eps: float | None = None) -> None:
        args = [ctypes.c_void_p(t.data_ptr()) for t in tensors]
        if eps is not None:
            args.append(ctypes.c_double(eps))
        args += [ctypes.c_long(s) for s in sizes]
        args += [ctypes.c_void_p(t.data_ptr()) for t in outputs]
        status = self._fns[(name, tensors[0].dtype)](*args)
        if status == 1:
            raise MemoryError(f"the CPU kernel {name} could not allocate its scratch space.")
        if status != 0:
            raise ValueError(f"the CPU kernel {name} does not take sizes {sizes}.")

    def block_forward(self, y: Tensor, gamma: Tensor, beta: Tensor, eps: float, shape):
        """``y (N, L, C)`` -> ``xhat (N, L, C), rstd (N, C), out (N, H/2, W/2, C)``."""
        n, h, w, c = shape
        xhat, rstd, out = torch.empty_like(y), y.new_empty(n, c), y.new_empty(n, h // 2, w // 2, c)
        self._call("block_forward", [y, gamma, beta], (n, h, w, c), [xhat, rstd, out], eps)
        return xhat, rstd, out

    def block_backward(self, g_out: Tensor, xhat: Tensor, gamma: Tensor, beta: Tensor,
                       rstd: Tensor):
        """``g_out (N, H/2, W/2, C)`` -> ``u (N, L, C), s_u (N, C), s_ux (N, C), gy (N, L, C)``."""
        n, h2, w2, c = g_out.shape
        u, gy = torch.empty_like(xhat), torch.empty_like(xhat)
        s_u, s_ux = torch.empty_like(rstd), torch.empty_like(rstd)
        self._call("block_backward", [g_out, xhat, gamma, beta, rstd], (n, 2 * h2, 2 * w2, c),
                   [u, s_u, s_ux, gy])
        return u, s_u, s_ux, gy

    def block_double_backward(self, c_gy, c_gg, c_gb, gamma, beta, xhat, rstd, u, s_u, s_ux,
                              shape):
        """-> ``d_gout (N, H/2, W/2, C), d_y (N, L, C), d_gamma (C)``."""
        n, h, w, c = shape
        d_gout, d_y = xhat.new_empty(n, h // 2, w // 2, c), torch.empty_like(xhat)
        d_gamma = torch.empty_like(gamma)
        self._call("block_double_backward",
                   [c_gy, c_gg, c_gb, gamma, beta, xhat, rstd, u, s_u, s_ux], (n, h, w, c),
                   [d_gout, d_y, d_gamma])
        return d_gout, d_y, d_gamma

    def takes_image_grad(self, g_out: Tensor, w: Tensor) -> bool:
        """Whether :meth:`image_input_grad` takes these: at most 3 input channels (RGB), a width
        that is a multiple of 4, contiguous tensors of one supported dtype."""
        return w.shape[1] <= 3 and g_out.shape[2] % 4 == 0 and self.accepts(g_out, w)

    def image_input_grad(self, g_out: Tensor, w: Tensor) -> Tensor:
        """The input gradient ``(N, H, W, C_in)`` of a 3x3, padding-1 convolution, from
        ``g_out (N, H, W, C_out)`` and ``w (C_out, C_in, 3, 3)`` (:meth:`takes_image_grad`)."""
        n, h, w_px, c_out = g_out.shape
        out = g_out.new_empty(n, h, w_px, w.shape[1])
        self._call("image_input_grad", [g_out, w], (n, h, w_px, c_out, w.shape[1]), [out])
        return out


def _build() -> CpuKernels | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    reason = "no C compiler (cc or $CC)"
    if compiler is not None:
        try:
            with tempfile.TemporaryDirectory(prefix="latentfl-native-") as tmp:
                lib = Path(tmp) / "cpu_kernels.so"
                for flags in (["-O3", "-march=native", "-fno-trapping-math"], ["-O3"]):
                    cmd = [compiler, *flags, "-fPIC", "-shared", "-o", str(lib), str(_SOURCE),
                           "-lm"]
                    try:
                        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
                        return CpuKernels(ctypes.CDLL(str(lib)))  # mapped: the file may go
                    except (subprocess.SubprocessError, AttributeError) as err:
                        reason = f"{' '.join(cmd)} failed: {err}"
        except OSError as err:  # no temporary folder, an unrunnable compiler, an unloadable .so
            reason = str(err)
    get_logger("latentfl.distill").info("native_kernels_unavailable", reason=reason,
                                        fallback="PyTorch kernels, same math")
    return None


def cpu_kernels() -> CpuKernels | None:
    """The compiled loops, built on the first call of the process, or None (the eager path):
    no compiler, a failed build, or ``LATENTFL_NATIVE=0`` in the environment now."""
    if os.environ.get("LATENTFL_NATIVE", "1") == "0":
        return None
    with _lock:
        if not _loaded:
            _loaded.append(_build())
        return _loaded[0]
