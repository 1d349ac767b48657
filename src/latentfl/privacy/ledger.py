"""The participant's privacy ledger: what it has spent, kept on disk so it is never forgotten.

The ledger holds the accountant's state (Opacus's history of ``(noise_multiplier, sample_rate,
steps)``) and one row per round of training or weight noising. It is saved atomically (temp
file, fsync, rename, fsync of the folder) when a round starts, at most ``save_interval_s``
after any recorded step, and whenever :meth:`PrivacyLedger.save` is called (the DP-SGD wrap
calls it when training ends, before anything is uploaded). A participant that restarts reloads
what it had spent, and epsilons keep growing from there. (Saving after every step would cost
an fsync and an RDP evaluation, about 45 ms on a 2-core box, per step.)

Mechanisms compose in one Rényi accountant: a DP-SGD step at noise ``sigma`` and sample rate
``q`` is the entry ``(sigma, q, 1)``; a noised weight upload at noise multiplier ``sigma``
(clip ``C``, noise std ``sigma * C``, sensitivity ``2C``) is the Gaussian mechanism entry
``(sigma / 2, 1.0, 1)`` (see :mod:`latentfl.privacy.weight_noise`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from latentfl.durable import write_atomic
from latentfl.errors import ConfigError, PrivacyError, StateError
from latentfl.privacy.accounting import (
    ACCOUNTANTS,
    AccountantName,
    HistoryEntry,
    epsilon_of_history,
)

Mechanism = Literal["dp-sgd", "weight-noise"]
LEDGER_FILE = "privacy_ledger.json"
_VERSION = 1


@dataclass(frozen=True)
class LedgerRow:
    """One round's spending by one mechanism; ``epsilon_after`` is the total after it."""

    round: int
    mechanism: str
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    epsilon_after: float


class PrivacyLedger:
    """The spending of one participant at one delta, persisted in its state directory."""

    def __init__(
        self,
        path: Path,
        *,
        delta: float,
        accountant: AccountantName = "rdp",
        save_interval_s: float = 1.0,
    ) -> None:
        if accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant = {accountant!r}; expected one of {ACCOUNTANTS}.")
        if not 0.0 < delta < 1.0:
            raise ConfigError(f"delta = {delta}; expected a value in (0, 1).")
        self.path = Path(path)
        self.delta = float(delta)
        self.accountant: AccountantName = accountant
        self._history: list[list] = []  # [noise, sample_rate, steps], merged like Opacus's
        self._rows: list[dict] = []
        self._open: dict | None = None  # the row steps are being recorded into
        self.save_interval_s = float(save_interval_s)
        self._saved_at = -math.inf

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(
        cls, state_dir: str | Path, *, delta: float, accountant: AccountantName = "rdp"
    ) -> PrivacyLedger:
        """Load the ledger in ``state_dir``, or start an empty one there (saved on first use).

        Refuses a ledger kept at another delta or with another accountant: its epsilons would
        not be comparable with the site's budget.
        """
        path = Path(state_dir) / LEDGER_FILE
        if not path.exists():
            return cls(path, delta=delta, accountant=accountant)
        ledger = cls.load(state_dir)
        if not math.isclose(ledger.delta, delta, rel_tol=1e-12):
            raise ConfigError(
                f"privacy ledger {path} is kept at delta = {ledger.delta}, the config says "
                f"delta = {delta}; keep the site's delta fixed for the life of the ledger."
            )
        if ledger.accountant != accountant:
            raise ConfigError(
                f"privacy ledger {path} uses accountant {ledger.accountant!r}, the config says "
                f"{accountant!r}; keep one accountant for the life of the ledger."
            )
        return ledger

    @classmethod
    def load(cls, state_dir: str | Path) -> PrivacyLedger:
        """Load an existing ledger; StateError if it is missing or corrupt."""
        path = Path(state_dir) / LEDGER_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StateError(f"privacy ledger {path} does not exist; expected one there.") from None
        except (OSError, ValueError) as exc:
            raise StateError(f"privacy ledger {path} cannot be read: {exc}.") from None
        try:
            if data["version"] != _VERSION:
                raise ValueError(f"version {data['version']}, expected {_VERSION}")
            ledger = cls(path, delta=float(data["delta"]), accountant=data["accountant"])
            ledger._history = [[float(s), float(q), int(k)] for s, q, k in data["history"]]
            ledger._rows = [asdict(LedgerRow(**row)) for row in data["rows"]]
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise StateError(f"privacy ledger {path} is corrupt: {exc}.") from None
        if sum(k for _, _, k in ledger._history) != sum(r["steps"] for r in ledger._rows):
            raise StateError(
                f"privacy ledger {path} is corrupt: its accountant history and its rows "
                "count different numbers of steps."
            )
        return ledger

    # -- reading -------------------------------------------------------------------------
    @property
    def history(self) -> list[HistoryEntry]:
        """The accountant's state: Opacus-style ``(noise_multiplier, sample_rate, steps)``."""
        return [(s, q, k) for s, q, k in self._history]

    @property
    def rows(self) -> tuple[LedgerRow, ...]:
        return tuple(LedgerRow(**row) for row in self._rows)

    @property
    def total_steps(self) -> int:
        """DP-SGD steps recorded so far (weight-noise uploads not counted)."""
        return sum(r["steps"] for r in self._rows if r["mechanism"] == "dp-sgd")

    def epsilon(self) -> float:
        """Epsilon spent so far at the ledger's delta."""
        return epsilon_of_history(self.history, self.delta, self.accountant)

    def epsilon_if(self, extra: list[HistoryEntry]) -> float:
        """Epsilon the ledger would report after spending ``extra`` entries more."""
        return epsilon_of_history(self.history + list(extra), self.delta, self.accountant)

    def report(self) -> dict[str, float | int | str]:
        """What an UPDATE's signed header carries: the spending so far and the last DP setting.

        Keys: epsilon, delta, accountant, dp_steps, and (when any DP-SGD row exists)
        noise_multiplier, sample_rate, max_grad_norm of the latest one.
        """
        out: dict[str, float | int | str] = {
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "accountant": self.accountant,
            "dp_steps": self.total_steps,
        }
        dp_rows = [r for r in self._rows if r["mechanism"] == "dp-sgd"]
        if dp_rows:
            last = dp_rows[-1]
            out.update(
                noise_multiplier=last["noise_multiplier"],
                sample_rate=last["sample_rate"],
                max_grad_norm=last["max_grad_norm"],
            )
        return out

    # -- spending ------------------------------------------------------------------------
    def start_round(
        self,
        round_: int,
        *,
        noise_multiplier: float,
        sample_rate: float,
        max_grad_norm: float,
    ) -> None:
        """Open a DP-SGD row for ``round_``; :meth:`record_step` then adds steps to it.

        A round trained twice (say, retried after a restart) gets two rows: both spent.
        """
        if not noise_multiplier > 0 or not 0 < sample_rate <= 1 or not max_grad_norm > 0:
            raise PrivacyError(
                "bad_parameters",
                f"DP-SGD parameters noise_multiplier = {noise_multiplier}, sample_rate = "
                f"{sample_rate}, max_grad_norm = {max_grad_norm}; expected noise > 0, "
                "0 < sample_rate <= 1 and max_grad_norm > 0.",
            )
        self._close_open_row()
        self._open = _row(round_, "dp-sgd", 0, sample_rate, noise_multiplier, max_grad_norm)
        self._rows.append(self._open)
        self.save()

    def record_step(self) -> None:
        """Account one DP-SGD step in the open round (saved within ``save_interval_s``)."""
        if self._open is None:
            raise StateError("a DP-SGD step was taken with no open round; call start_round first.")
        self._open["steps"] += 1
        self._append_history(self._open["noise_multiplier"], self._open["sample_rate"])
        if time.monotonic() - self._saved_at >= self.save_interval_s:
            self.save()

    def record_weight_noise(
        self, round_: int, *, noise_multiplier: float, clip_norm: float
    ) -> LedgerRow:
        """Account one noised weight upload (Gaussian mechanism, sensitivity 2 * clip_norm)."""
        if not noise_multiplier > 0 or not clip_norm > 0:
            raise PrivacyError(
                "bad_parameters",
                f"weight noise noise_multiplier = {noise_multiplier}, clip_norm = {clip_norm}; "
                "expected both > 0.",
            )
        self._close_open_row()
        row = _row(round_, "weight-noise", 1, 1.0, noise_multiplier, clip_norm)
        self._rows.append(row)
        self._append_history(noise_multiplier / 2.0, 1.0)
        self.save()
        return LedgerRow(**row)

    def save(self) -> None:
        """Write the ledger atomically: temp file in the same folder, fsync, rename, fsync dir."""
        epsilon = self.epsilon()
        for row in self._rows:
            if row is self._open or row["epsilon_after"] is None:
                row["epsilon_after"] = epsilon
        payload = {
            "version": _VERSION,
            "delta": self.delta,
            "accountant": self.accountant,
            "history": self._history,
            "rows": self._rows,
        }
        write_atomic(self.path, json.dumps(payload, indent=1), mode=0o600)  # site-private
        self._saved_at = time.monotonic()

    def _close_open_row(self) -> None:
        # A closed row keeps the epsilon reached when it closed.
        if self._open is not None:
            self._open["epsilon_after"] = self.epsilon()
            self._open = None

    def _append_history(self, noise: float, sample_rate: float) -> None:
        # Merge consecutive identical entries, as Opacus's RDPAccountant.step does.
        if self._history and self._history[-1][0] == noise and self._history[-1][1] == sample_rate:
            self._history[-1][2] += 1
        else:
            self._history.append([float(noise), float(sample_rate), 1])


def _row(round_, mechanism, steps, sample_rate, noise, clip) -> dict:
    return {
        "round": int(round_),
        "mechanism": mechanism,
        "steps": int(steps),
        "sample_rate": float(sample_rate),
        "noise_multiplier": float(noise),
        "max_grad_norm": float(clip),
        "epsilon_after": None,
    }


__all__ = ["LEDGER_FILE", "LedgerRow", "Mechanism", "PrivacyLedger"]
