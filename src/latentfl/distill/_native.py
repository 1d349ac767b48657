"""The C loops of the CPU engine's norm block (``_norm_block.c``), compiled at first use.

The eager block runs 8-25 PyTorch kernels per function, each a pass over activations of tens of
MB; the C loops take two or three. They are compiled once per process with the system's C
compiler into a private temporary directory and loaded with ctypes: nothing is cached on disk,
so there is no stale or foreign library to trust, and it costs under a second. Where there is no
compiler, the build fails, or ``LATENTFL_NATIVE=0`` is set, :func:`norm_block` returns None and
the engine keeps its eager path (the same math).
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

__all__ = ["NormBlock", "norm_block"]

_SOURCE = Path(__file__).with_name("_norm_block.c")
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_lock = threading.Lock()
_loaded: list[NormBlock | None] = []


class NormBlock:
    """The three loops, for contiguous channels-last float32/float64 CPU tensors."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._fns = {(name, dtype): getattr(lib, f"block_{name}_{suffix}")
                     for name in ("forward", "backward", "double_backward")
                     for dtype, suffix in _SUFFIX.items()}
        for fn in self._fns.values():
            fn.restype = ctypes.c_int

    @staticmethod
    def accepts(*tensors: Tensor) -> bool:
        t = tensors[0]
        return t.device.type == "cpu" and t.dtype in _SUFFIX and all(
            x.dtype == t.dtype and x.is_contiguous() for x in tensors)

    def _call(self, name: str, tensors: list[Tensor], sizes: tuple[int, ...],
              outputs: list[Tensor], eps: float | None = None) -> None:
        args = [ctypes.c_void_p(t.data_ptr()) for t in tensors]
        if eps is not None:
            args.append(ctypes.c_double(eps))
        args += [ctypes.c_long(s) for s in sizes]
        args += [ctypes.c_void_p(t.data_ptr()) for t in outputs]
        if self._fns[(name, tensors[0].dtype)](*args) != 0:
            raise MemoryError(f"the norm block's {name} loop could not allocate its scratch "
                              "space.")

    def forward(self, y: Tensor, gamma: Tensor, beta: Tensor, eps: float, shape):
        """``y (N, L, C)`` -> ``xhat (N, L, C), rstd (N, C), act (N, H, W, C), out (N, H/2, W/2, C)``."""
        n, h, w, c = shape
        xhat, act = torch.empty_like(y), y.new_empty(n, h, w, c)
        rstd, out = y.new_empty(n, c), y.new_empty(n, h // 2, w // 2, c)
        self._call("forward", [y, gamma, beta], (n, h, w, c), [xhat, rstd, act, out], eps)
        return xhat, rstd, act, out

    def backward(self, g_out: Tensor, act: Tensor, xhat: Tensor, gamma: Tensor, rstd: Tensor):
        """-> ``u (N, L, C), s_u (N, C), s_ux (N, C), gy (N, L, C)``."""
        n, h, w, c = act.shape
        u, gy = torch.empty_like(xhat), torch.empty_like(xhat)
        s_u, s_ux = torch.empty_like(rstd), torch.empty_like(rstd)
        self._call("backward", [g_out, act, xhat, gamma, rstd], (n, h, w, c), [u, s_u, s_ux, gy])
        return u, s_u, s_ux, gy

    def double_backward(self, c_gy, c_gg, c_gb, gamma, xhat, rstd, act, u, s_u, s_ux):
        """-> ``d_gout (N, H/2, W/2, C), d_y (N, L, C), d_gamma (C)``."""
        n, h, w, c = act.shape
        d_gout, d_y = act.new_empty(n, h // 2, w // 2, c), torch.empty_like(xhat)
        d_gamma = torch.empty_like(gamma)
        self._call("double_backward", [c_gy, c_gg, c_gb, gamma, xhat, rstd, act, u, s_u, s_ux],
                   (n, h, w, c), [d_gout, d_y, d_gamma])
        return d_gout, d_y, d_gamma


def _build() -> NormBlock | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    reason = "no C compiler (cc or $CC)"
    if compiler is not None:
        try:
            with tempfile.TemporaryDirectory(prefix="latentfl-native-") as tmp:
                lib = Path(tmp) / "norm_block.so"
                for flags in (["-O3", "-march=native", "-fno-trapping-math"], ["-O3"]):
                    cmd = [compiler, *flags, "-fPIC", "-shared", "-o", str(lib), str(_SOURCE),
                           "-lm"]
                    try:
                        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
                        return NormBlock(ctypes.CDLL(str(lib)))  # mapped: the file may go
                    except (subprocess.SubprocessError, AttributeError) as err:
                        reason = f"{' '.join(cmd)} failed: {err}"
        except OSError as err:  # no temporary folder, an unrunnable compiler, an unloadable .so
            reason = str(err)
    get_logger("latentfl.distill").info("native_norm_block_unavailable", reason=reason,
                                        fallback="PyTorch kernels, same math")
    return None


def norm_block() -> NormBlock | None:
    """The compiled loops, built on the first call of the process, or None (the eager path):
    no compiler, a failed build, or ``LATENTFL_NATIVE=0`` in the environment now."""
    if os.environ.get("LATENTFL_NATIVE", "1") == "0":
        return None
    with _lock:
        if not _loaded:
            _loaded.append(_build())
        return _loaded[0]
