"""Work the agent runs beside its socket loop (local training, requested audits)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


def run_in_daemon_thread(fn: Callable[[], Any], name: str,
                         on_done: Callable[[], None] | None = None) -> Future:
    """``fn()`` in a daemon thread, its outcome in a Future: a stopping agent need not wait
    for local work to finish (nothing of a cut-short round or audit is ever sent).
    ``on_done()`` is called once the outcome is set (the agent's wake-up)."""
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


__all__ = ["run_in_daemon_thread"]
