"""Work the agent runs beside its socket loop (local training, requested audits).

A stopping agent must not leave the interpreter while a training thread is inside torch: the
process then dies in native code (SIGABRT "exception not rethrown", SIGSEGV) instead of
exiting with its code. So local training checks a stop flag between batches
(:func:`stop_between_batches`) and the agent joins it before it exits.
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


def stop_between_batches(wrap: Callable | None, stop: threading.Event) -> Callable:
    """A ``train`` wrap that applies ``wrap`` (DP-SGD or none), then makes the loader check
    ``stop`` between batches."""

    def wrapped(model: Any, optimizer: Any, loader: Any) -> tuple[Any, Any, Any]:
        if wrap is not None:
            model, optimizer, loader = wrap(model, optimizer, loader)
        return model, optimizer, _StopBetweenBatches(loader, stop)

    return wrapped


__all__ = ["Stopped", "run_in_daemon_thread", "stop_between_batches"]
