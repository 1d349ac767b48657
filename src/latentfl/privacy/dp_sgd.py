"""DP-SGD at the participant with Opacus, accounted in the participant's ledger.

One entry call, :func:`make_private`, returns the ``wrap`` that ``latentfl.training.train``
accepts. Used as a context manager it also removes Opacus's hooks from the model afterwards::

    with make_private(ledger=ledger, round_=r, noise_multiplier=1.1, max_grad_norm=1.0) as wrap:
        result = train(model, x, y, config, wrap=wrap)
    # ledger.rows[-1].steps == wrap.steps == result.steps

The wrap turns the loader into Opacus's Poisson-sampling loader (the sampling the accountant
assumes), the model into a per-sample-gradient module and the optimizer into a DPOptimizer, and
attaches a step hook that records every noised step in the ledger, so no caller can train
privately without the spending being counted. The ledger is saved at least once a second while
steps come in, and in full when the wrap is closed (the ``with`` block ends), before anything is
uploaded.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from latentfl.config import option
from latentfl.errors import ConfigError, ModelError
from latentfl.privacy.accounting import plan_dp_sgd
from latentfl.privacy.ledger import PrivacyLedger


@dataclass(frozen=True)
class DPSGDConfig:
    """DP-SGD at a participant (``[privacy.dp_sgd]``): give target_epsilon or noise_multiplier."""

    enabled: bool = option(False, help="Train locally with DP-SGD (Opacus).")
    target_epsilon: float | None = option(
        None,
        help="Epsilon to reach after all planned rounds; the noise is derived from it.",
        min=0.0,
        min_exclusive=True,
    )
    noise_multiplier: float | None = option(
        None,
        help="Noise std / max_grad_norm, when given directly instead of target_epsilon.",
        min=0.0,
        min_exclusive=True,
    )
    max_grad_norm: float = option(
        1.0, help="Per-example gradient clip (L2).", min=0.0, min_exclusive=True
    )
    planned_rounds: int = option(
        1, help="Rounds this site plans to train in; the whole run shares the budget.", min=1
    )
    max_physical_batch_size: int | None = option(
        None,
        help="Split large Poisson batches into chunks of at most this size (memory).",
        min=1,
    )
    secure_mode: bool = option(
        False, help="Cryptographically secure noise and sampling (needs torchcsprng)."
    )
    accountant: str = option("rdp", help="Privacy accountant: 'rdp' or 'prv'.")

    def problems(self) -> list[str]:
        out = []
        if self.enabled and (self.target_epsilon is None) == (self.noise_multiplier is None):
            out.append(
                "[privacy.dp_sgd] needs exactly one of 'target_epsilon' and 'noise_multiplier'; "
                f"got target_epsilon = {self.target_epsilon}, "
                f"noise_multiplier = {self.noise_multiplier}."
            )
        if self.accountant not in ("rdp", "prv"):
            out.append(f"'accountant' = {self.accountant!r}; expected 'rdp' or 'prv'.")
        if self.secure_mode and importlib.util.find_spec("torchcsprng") is None:
            out.append(
                "'secure_mode' = true needs the torchcsprng package (Opacus's secure noise and "
                "sampling), which is not installed; install it, or set secure_mode = false."
            )
        return out


def resolve_noise_multiplier(
    config: DPSGDConfig,
    *,
    num_examples: int,
    batch_size: int,
    epochs: int,
    delta: float,
    max_steps: int | None = None,
) -> float:
    """The noise multiplier for every round: given, or derived once for the whole planned run."""
    if config.noise_multiplier is not None:
        return float(config.noise_multiplier)
    plan = plan_dp_sgd(
        num_examples=num_examples,
        batch_size=batch_size,
        epochs=epochs,
        rounds=config.planned_rounds,
        delta=delta,
        target_epsilon=config.target_epsilon,
        max_steps=max_steps,
        accountant=config.accountant,  # type: ignore[arg-type]
    )
    return plan.noise_multiplier


def dp_compatible(model: nn.Module) -> nn.Module:
    """``model`` with layers DP-SGD cannot handle replaced (BatchNorm -> GroupNorm, ...).

    Call it right after building the model and before making the optimizer: the result may be a
    new module with new parameters. The coordinator must build the same architecture.
    """
    from opacus.validators import ModuleValidator

    if ModuleValidator.is_valid(model):
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixed = ModuleValidator.fix(model)
    ModuleValidator.validate(fixed, strict=True)
    return fixed


class DPWrap:
    """The ``wrap(model, optimizer, loader)`` for one round of DP-SGD; made by make_private."""

    def __init__(
        self,
        *,
        ledger: PrivacyLedger,
        round_: int,
        noise_multiplier: float,
        max_grad_norm: float,
        max_physical_batch_size: int | None,
        secure_mode: bool,
        noise_seed: int | None,
    ) -> None:
        self.ledger = ledger
        self.round = round_
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.max_physical_batch_size = max_physical_batch_size
        self.secure_mode = secure_mode
        self.noise_seed = noise_seed
        self.sample_rate: float | None = None
        self.steps = 0
        self._module = None

    def __call__(
        self, model: nn.Module, optimizer: Optimizer, loader: DataLoader
    ) -> tuple[nn.Module, Optimizer, DataLoader]:
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator

        if self._module is not None:
            raise ConfigError("a DP-SGD wrap was applied twice; make one per round of training.")
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ModelError(
                f"model cannot be trained with DP-SGD: {errors[0]}; call "
                "latentfl.privacy.dp_compatible(model) before building the optimizer."
            )
        if hasattr(model, "autograd_grad_sample_hooks"):
            raise ModelError(
                "model still carries DP-SGD hooks from an earlier round; use make_private(...) "
                "as a context manager so they are removed after training."
            )
        # Opacus's backward hooks on the first layer make torch warn on every step that the
        # input needs no gradient; that is expected here and says nothing to the user.
        warnings.filterwarnings(
            "ignore", message="Full backward hook is firing", category=UserWarning
        )
        engine = self._engine(PrivacyEngine)
        generator = None
        if not self.secure_mode and self.noise_seed is not None:
            generator = torch.Generator().manual_seed(self.noise_seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module, dp_optimizer, dp_loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.max_grad_norm,
                poisson_sampling=True,
                noise_generator=generator,
            )
        self._module = module
        self.sample_rate = 1.0 / len(loader)
        self.ledger.start_round(
            self.round,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            max_grad_norm=self.max_grad_norm,
        )
        # Replaces the engine's own accountant hook: the ledger is the one accountant.
        dp_optimizer.attach_step_hook(self._on_step)
        if self.max_physical_batch_size is not None:
            from opacus.utils.batch_memory_manager import wrap_data_loader

            dp_loader = wrap_data_loader(
                data_loader=dp_loader,
                max_batch_size=self.max_physical_batch_size,
                optimizer=dp_optimizer,
            )
        return module, dp_optimizer, dp_loader

    def _engine(self, engine_cls):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return engine_cls(accountant="rdp", secure_mode=self.secure_mode)
        except ImportError:
            raise ConfigError(
                "secure_mode = true needs the torchcsprng package (Opacus's cryptographically "
                "secure noise and sampling), which is not installed; install it, or set "
                "secure_mode = false for experiments."
            ) from None

    def _on_step(self, optimizer) -> None:
        # Called by the DPOptimizer after noise is added, once per logical (Poisson) batch.
        self.steps += 1
        self.ledger.record_step()

    def close(self) -> None:
        """Save the ledger and remove Opacus's hooks and per-sample gradients from the model."""
        if self._module is None:
            return
        self.ledger.save()
        if hasattr(self._module, "_close"):
            self._module._close()

    def __enter__(self) -> DPWrap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def import_opacus() -> None:
    """Import the Opacus modules DP-SGD uses (about 1.5 s), for a long-running process to call
    at start: a training thread's first wrap then spends no time in an import, which nothing can
    interrupt (an agent told to stop must end within 2 s)."""
    import opacus.utils.batch_memory_manager  # noqa: F401 - imported for its side effect
    import opacus.validators  # noqa: F401


def make_private(
    *,
    ledger: PrivacyLedger,
    round_: int,
    noise_multiplier: float,
    max_grad_norm: float,
    max_physical_batch_size: int | None = None,
    secure_mode: bool = False,
    noise_seed: int | None = None,
) -> DPWrap:
    """The wrap for one round of DP-SGD; every step it allows is recorded in ``ledger``.

    ``noise_seed`` makes the noise reproducible (tests, experiments); it is refused together
    with ``secure_mode``, whose point is unpredictable noise.
    """
    if secure_mode and noise_seed is not None:
        raise ConfigError("noise_seed was given with secure_mode = true; secure noise is unseeded.")
    if not noise_multiplier > 0 or not max_grad_norm > 0:
        raise ConfigError(
            f"noise_multiplier = {noise_multiplier}, max_grad_norm = {max_grad_norm}; "
            "expected both > 0."
        )
    return DPWrap(
        ledger=ledger,
        round_=round_,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        max_physical_batch_size=max_physical_batch_size,
        secure_mode=secure_mode,
        noise_seed=noise_seed,
    )


__all__ = [
    "DPSGDConfig",
    "DPWrap",
    "dp_compatible",
    "import_opacus",
    "make_private",
    "resolve_noise_multiplier",
]
