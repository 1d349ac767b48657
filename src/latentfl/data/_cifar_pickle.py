"""Read torchvision's CIFAR-10 python files without unpickling them.

The ``cifar-10-batches-py`` files are pickles of plain dicts holding lists, byte strings, ints and
one numpy array. Python's ``pickle`` would run whatever callables a file names, so instead this
module interprets the few opcodes such files use and *describes* the globals they name
(``numpy...._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``; ``numpy...._frombuffer`` under
protocol 5; ``_codecs.encode``, which Python 3 writes for byte strings under protocol 2) as data:
nothing is imported or called.
Any other opcode or global is refused with a DataError.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latentfl.errors import DataError

BATCH_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
REQUIRED_FILES = ("batches.meta", *BATCH_FILES, "test_batch")
_RECONSTRUCT = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}
_FROMBUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
_ALLOWED_GLOBALS = (
    _RECONSTRUCT | _FROMBUFFER | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
)


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass
class _DtypeStub:
    code: str
    byteorder: str = "|"


@dataclass
class _ArrayStub:
    array: np.ndarray | None = field(default=None)


_MARK = object()


class _Reader:
    """A stack machine for the plain-data subset of pickle protocols 0-5 (no STRING opcode)."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data = data
        self.pos = 0
        self.where = where
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}

    def fail(self, what: str) -> DataError:
        return DataError(
            f"{self.where}: {what} at byte {self.pos}; expected a CIFAR-10 batch file of plain data"
        )

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail("file ends early")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def line(self) -> bytes:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise self.fail("unterminated text argument")
        chunk = self.data[self.pos : end]
        self.pos = end + 1
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def pop_mark(self) -> list[Any]:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1 :]
                del self.stack[i:]
                return items
        raise self.fail("MARK missing")

    def pop(self) -> Any:
        if not self.stack or self.stack[-1] is _MARK:
            raise self.fail("stack underflow")
        return self.stack.pop()

    def run(self) -> Any:
        while True:
            op = self.take(1)
            handler = _OPS.get(op)
            if handler is None:
                raise self.fail(f"pickle opcode {op!r} is not allowed")
            if handler(self):
                return self.pop()


def _sized(width: int, kind: str) -> Callable[[_Reader], None]:
    """A handler for an opcode whose argument is a ``width``-byte length, then that many bytes."""

    def handler(r: _Reader) -> None:
        raw = r.take(r.uint(width))
        r.stack.append(raw.decode("utf-8") if kind == "str" else raw)

    return handler


def _text(value: Any) -> str:
    """A Python 2 ``str`` arrives as bytes; numpy's dtype codes and byte orders are ASCII."""
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _global(r: _Reader, module: str, name: str) -> None:
    if (module, name) not in _ALLOWED_GLOBALS:
        raise r.fail(f"global {module}.{name} is not allowed")
    r.stack.append(_Global(module, name))


def _reduce(r: _Reader) -> None:
    args, func = r.pop(), r.pop()
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        raise r.fail("REDUCE on something other than an allowed global")
    key = (func.module, func.name)
    if key in _RECONSTRUCT:
        r.stack.append(_ArrayStub())
    elif key in _FROMBUFFER and len(args) == 4:
        raw, dtype, shape, order = args
        r.stack.append(_ArrayStub(_array(r, shape, dtype, order == "F", raw)))
    elif key == ("numpy", "dtype") and args and isinstance(args[0], str | bytes):
        r.stack.append(_DtypeStub(_text(args[0])))
    elif key == ("_codecs", "encode") and len(args) == 2 and args[1] == "latin1":
        r.stack.append(str(args[0]).encode("latin1"))
    else:
        raise r.fail(f"REDUCE of {func.module}.{func.name} with arguments it does not take")


def _build(r: _Reader) -> None:
    state, target = r.pop(), r.stack[-1] if r.stack else None
    if isinstance(target, _DtypeStub) and isinstance(state, tuple) and len(state) > 1:
        target.byteorder = _text(state[1])
    elif isinstance(target, _ArrayStub) and isinstance(state, tuple) and len(state) == 5:
        target.array = _array(r, *state[1:])
    else:
        raise r.fail("BUILD of an object that is not a numpy array or dtype")


def _array(r: _Reader, shape: Any, dtype: Any, fortran: Any, raw: Any) -> np.ndarray:
    if not isinstance(dtype, _DtypeStub) or not isinstance(raw, bytes):
        raise r.fail("numpy array without a plain dtype and raw bytes")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise r.fail(f"numpy array with shape {shape!r}")
    kind = np.dtype(dtype.code)
    if kind.kind not in "biuf":
        raise r.fail(f"numpy array of dtype {dtype.code}")
    if dtype.byteorder in "<>":
        kind = kind.newbyteorder(dtype.byteorder)
    count = int(np.prod(shape)) if shape else 1
    if count * kind.itemsize != len(raw):
        raise r.fail(f"numpy array of shape {shape} with {len(raw)} data bytes")
    return np.frombuffer(raw, dtype=kind, count=count).reshape(shape, order="F" if fortran else "C")


def _setitems(r: _Reader, items: list[Any]) -> None:
    target = r.stack[-1] if r.stack else None
    if not isinstance(target, dict) or len(items) % 2:
        raise r.fail("SETITEMS on something that is not a dict")
    for key, value in zip(items[::2], items[1::2], strict=True):
        target[key] = value


def _appends(r: _Reader, items: list[Any]) -> None:
    target = r.stack[-1] if r.stack else None
    if not isinstance(target, list):
        raise r.fail("APPENDS on something that is not a list")
    target.extend(items)


def _text_int(r: _Reader) -> None:
    """INT: a decimal line; protocol 0-1 write the booleans as "00" and "01"."""
    text = r.line()
    if text in (b"00", b"01"):
        r.stack.append(text == b"01")
    else:
        r.stack.append(int(text))


_OPS: dict[bytes, Any] = {
    b"\x80": lambda r: r.take(1) and None,  # PROTO
    b"\x95": lambda r: r.take(8) and None,  # FRAME
    b".": lambda r: True,  # STOP
    b"(": lambda r: r.stack.append(_MARK),
    b"}": lambda r: r.stack.append({}),
    b"]": lambda r: r.stack.append([]),
    b")": lambda r: r.stack.append(()),
    b"d": lambda r: r.stack.append(dict(zip(*[iter(r.pop_mark())] * 2, strict=True))),
    b"l": lambda r: r.stack.append(r.pop_mark()),
    b"t": lambda r: r.stack.append(tuple(r.pop_mark())),
    b"\x85": lambda r: r.stack.append((r.pop(),)),
    b"\x86": lambda r: r.stack.append(tuple(reversed([r.pop(), r.pop()]))),
    b"\x87": lambda r: r.stack.append(tuple(reversed([r.pop(), r.pop(), r.pop()]))),
    b"s": lambda r: _setitems(r, list(reversed([r.pop(), r.pop()]))),
    b"u": lambda r: _setitems(r, r.pop_mark()),
    b"a": lambda r: _appends(r, [r.pop()]),
    b"e": lambda r: _appends(r, r.pop_mark()),
    b"p": lambda r: r.memo.__setitem__(int(r.line()), r.stack[-1]),
    b"q": lambda r: r.memo.__setitem__(r.uint(1), r.stack[-1]),
    b"r": lambda r: r.memo.__setitem__(r.uint(4), r.stack[-1]),
    b"\x94": lambda r: r.memo.__setitem__(len(r.memo), r.stack[-1]),
    b"g": lambda r: r.stack.append(r.memo[int(r.line())]),
    b"h": lambda r: r.stack.append(r.memo[r.uint(1)]),
    b"j": lambda r: r.stack.append(r.memo[r.uint(4)]),
    b"J": lambda r: r.stack.append(struct.unpack("<i", r.take(4))[0]),
    b"K": lambda r: r.stack.append(r.uint(1)),
    b"M": lambda r: r.stack.append(r.uint(2)),
    b"I": _text_int,
    b"\x8a": lambda r: r.stack.append(int.from_bytes(r.take(r.uint(1)), "little", signed=True)),
    b"\x8b": lambda r: r.stack.append(int.from_bytes(r.take(r.uint(4)), "little", signed=True)),
    b"L": lambda r: r.stack.append(int(r.line().rstrip(b"L"))),
    b"F": lambda r: r.stack.append(float(r.line())),
    b"V": lambda r: r.stack.append(r.line().decode("raw_unicode_escape")),
    b"G": lambda r: r.stack.append(struct.unpack(">d", r.take(8))[0]),
    b"N": lambda r: r.stack.append(None),
    b"\x88": lambda r: r.stack.append(True),
    b"\x89": lambda r: r.stack.append(False),
    b"T": _sized(4, "bytes"),  # BINSTRING (a Python 2 str: bytes here)
    b"U": _sized(1, "bytes"),  # SHORT_BINSTRING
    b"B": _sized(4, "bytes"),  # BINBYTES
    b"C": _sized(1, "bytes"),  # SHORT_BINBYTES
    b"\x8e": _sized(8, "bytes"),  # BINBYTES8
    b"\x96": _sized(8, "bytes"),  # BYTEARRAY8 (protocol 5 in-band buffer)
    b"\x98": lambda r: None,  # READONLY_BUFFER
    b"X": _sized(4, "str"),  # BINUNICODE
    b"\x8c": _sized(1, "str"),  # SHORT_BINUNICODE
    b"\x8d": _sized(8, "str"),  # BINUNICODE8
    b"c": lambda r: _global(r, r.line().decode("ascii"), r.line().decode("ascii")),
    b"\x93": lambda r: _global(r, *reversed([str(r.pop()), str(r.pop())])),
    b"R": _reduce,
    b"b": _build,
}


def _materialise(value: Any) -> Any:
    """Replace array stubs by their arrays and byte-string keys by text, recursively."""
    if isinstance(value, _ArrayStub):
        return value.array
    if isinstance(value, dict):
        return {
            (k.decode("latin1") if isinstance(k, bytes) else k): _materialise(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_materialise(v) for v in value]
    return value


def parse_plain_pickle(data: bytes, where: str) -> Any:
    """The plain data in pickle bytes ``data`` (``where`` names it in errors); never executes."""
    try:
        return _materialise(_Reader(data, where).run())
    except (KeyError, ValueError, TypeError, struct.error, RecursionError) as exc:
        raise DataError(
            f"{where}: malformed pickle data ({exc}); expected a CIFAR-10 batch file"
        ) from exc


__all__ = ["BATCH_FILES", "REQUIRED_FILES", "parse_plain_pickle"]
