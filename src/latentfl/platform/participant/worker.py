"""Work the agent runs beside its socket loop (local training, requested audits).

A stopping agent must not leave the interpreter while a training thread is inside torch: the
process then dies in native code (SIGABRT "exception not rethrown", SIGSEGV) instead of
exiting with its code. So local training checks a stop flag between batches, and inside a
batch before each layer's forward and as each parameter's gradient arrives, since one DP-SGD
step on a CPU can take more than a second (:func:`stop_between_batches`); the agent joins it
before it exits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any


class Stopped(Exception):
    """Local work cut short because the agent is stopping (nothing of it is sent)."""


def run_in_daemon_thread(fn: Callable[[], Any], name: str,
                         on_done: Callable[[], None] | None = None) -> Future:
    """``fn()`` in a daemon thread, its outcome in a Future (the loop polls it); ``on_done()``
    is called once the outcome is set (the agent's wake-up)."""
    future: Future = Future()
    if on_done is not None:
        future.add_done_callback(lambda _: on_done())

    def work() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the agent's loop
            future.set_exception(exc)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future


class _StopBetweenBatches:
    """A data loader that raises :class:`Stopped` before the next batch once ``stop`` is set."""

    def __init__(self, loader: Any, stop: threading.Event) -> None:
        self.loader = loader
        self.stop = stop

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if self.stop.is_set():
                raise Stopped("local training stopped between batches: the agent is stopping.")
            yield batch


def _stop_inside_batches(model: Any, stop: threading.Event) -> None:
    """Raise :class:`Stopped` once ``stop`` is set, before any layer's forward and as any
    parameter's gradient is computed (an exception in a hook ends ``backward()`` with it).
    Hooks on tensors, not full backward hooks on modules: those wrap a layer's output, which
    an in-place activation after it may not modify."""

    def check(*_: Any) -> None:
        if stop.is_set():
            raise Stopped("local training stopped inside a batch: the agent is stopping.")

    for module in model.modules():
        if next(module.children(), None) is None:  # the leaves do the work
            module.register_forward_pre_hook(check)
    for param in model.parameters():
        if param.requires_grad:
            param.register_hook(check)


def stop_between_batches(wrap: Callable | None, stop: threading.Event) -> Callable:
    """A ``train`` wrap that applies ``wrap`` (DP-SGD or none), then makes the loader check
    ``stop`` between batches and the model inside them (the model is built for this one
    task, so its hooks go with it)."""

    def wrapped(model: Any, optimizer: Any, loader: Any) -> tuple[Any, Any, Any]:
        _stop_inside_batches(model, stop)
        if wrap is not None:
            model, optimizer, loader = wrap(model, optimizer, loader)
        return model, optimizer, _StopBetweenBatches(loader, stop)

    return wrapped


__all__ = ["Stopped", "run_in_daemon_thread", "stop_between_batches"]
