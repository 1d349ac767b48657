"""The one-run DP audit: its bound against a mechanism of known epsilon, and real Opacus runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from latentfl.audits.dp_audit import DPTraining, one_run_dp_audit
from latentfl.audits.dp_command import DPAuditOptions, audit_dp_sgd
from latentfl.audits.one_run import best_guesses, correct_guess_tail, epsilon_lower_bound
from latentfl.cli import main
from latentfl.data import load_dataset, to_tensors
from latentfl.models import build_model
from latentfl.privacy.accounting import epsilon_for
from latentfl.privacy.dp_sgd import DPSGDConfig
from latentfl.training import TrainConfig

CANARIES = 200


def test_all_correct_bound_matches_closed_form() -> None:
    """r right of r guesses proves the eps with p^r = beta, p = e^eps / (1 + e^eps)."""
    p = 0.05 ** (1 / 100)
    assert epsilon_lower_bound(100, 100, beta=0.05) == pytest.approx(math.log(p / (1 - p)),
                                                                     rel=1e-6)
    assert epsilon_lower_bound(50, 100, beta=0.05) == 0.0


def test_delta_only_weakens_the_bound() -> None:
    """A positive delta raises the tail bound, so the proven epsilon can only drop."""
    for correct in (60, 80, 100):
        plain = epsilon_lower_bound(correct, 100, beta=0.05)
        with_delta = epsilon_lower_bound(correct, 100, beta=0.05, delta=1e-4, canaries=200)
        assert with_delta <= plain
        assert correct_guess_tail(correct, 100, 1.0, delta=1e-4, canaries=200) >= \
            correct_guess_tail(correct, 100, 1.0)


def test_bound_exceeds_true_epsilon_at_most_beta_of_the_time() -> None:
    """Randomised response at exactly eps = 1: the 95% bound exceeds 1 in <= 5% of 400 runs."""
    rng = np.random.default_rng(0)
    eps, runs, m = 1.0, 400, 500
    p_right = math.exp(eps) / (1 + math.exp(eps))
    over = 0
    for _ in range(runs):
        included = rng.random(m) < 0.5
        # the best an eps-DP release allows: a score that points the right way w.p. p_right
        sign = np.where(rng.random(m) < p_right, 1.0, -1.0) * np.where(included, 1.0, -1.0)
        scores = sign * rng.random(m)
        over += best_guesses(scores, included, beta=0.05, delta=0.0)["epsilon"] > eps
    assert over <= 0.05 * runs
    # and the bound is not vacuous: at eps = 1 with 500 canaries it proves something
    assert best_guesses(scores, included, beta=0.05, delta=0.0)["epsilon"] > 0.3


@pytest.fixture(scope="module")
def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    """300 cifar10-mini images at 8x8: a tiny private set for real DP-SGD runs."""
    ds = load_dataset("builtin:cifar10-mini")
    x = ds.train.x[:300].astype(np.float32).reshape(-1, 8, 4, 8, 4, 3).mean(axis=(2, 4))
    images = type(ds.train)(x.round().astype(np.uint8), ds.train.y[:300], ds.train.classes)
    return to_tensors(images, ds.mean, ds.std)


def _build() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", 10, (3, 8, 8), width=16, depth=1)


CONFIG = TrainConfig(epochs=20, batch_size=64, lr=0.1, momentum=0.9, seed=0)


def _audit(data, training: DPTraining, claimed: float | None = None):
    x, y = data
    return one_run_dp_audit(x, y, build=_build, config=CONFIG, training=training,
                            num_classes=10, canaries=CANARIES, claimed_epsilon=claimed)


@pytest.mark.slow
def test_without_dp_the_bound_is_large_and_a_fabricated_claim_is_caught(tiny_data) -> None:
    """No noise: canaries are memorised, the bound is large and a claim of eps 1 is VIOLATED."""
    examples = len(tiny_data[0]) + CANARIES // 2
    claim = epsilon_for(4.0, CONFIG.batch_size / examples,
                        CONFIG.epochs * math.ceil(examples / CONFIG.batch_size), 1e-5)
    audit = _audit(tiny_data, DPTraining(None), claimed=claim)
    print(f"\nno noise, claim {claim:.2f}: bound {audit.epsilon_lower_bound:.2f} "
          f"({audit.correct}/{audit.guesses})")
    assert audit.epsilon_lower_bound > 2.0
    assert audit.flagged and audit.verdicts[0].status == "flag"


@pytest.mark.slow
@pytest.mark.parametrize("target", [1.0, 8.0])
def test_real_dp_sgd_stays_below_its_claim(tiny_data, target) -> None:
    """Opacus DP-SGD at eps 1 and 8: the bound stays below the accountant's epsilon."""
    examples = len(tiny_data[0]) + CANARIES // 2
    from latentfl.privacy.accounting import noise_multiplier_for

    sigma = noise_multiplier_for(target, 1e-5, CONFIG.batch_size / examples,
                                 CONFIG.epochs * math.ceil(examples / CONFIG.batch_size))
    audit = _audit(tiny_data, DPTraining(sigma))
    print(f"\neps {target}: accountant {audit.accountant_epsilon:.2f}, bound "
          f"{audit.epsilon_lower_bound:.2f} ({audit.correct}/{audit.guesses}), "
          f"{audit.verdicts[0].status}")
    # sigma was sized for the expected number of included canaries; the drawn number differs
    assert 0.5 * target <= audit.accountant_epsilon <= 1.05 * target
    assert audit.epsilon_lower_bound < audit.accountant_epsilon
    assert not audit.flagged


def test_cli_writes_an_aggregate_only_dp_report(tmp_path) -> None:
    """`latentfl audit dp-sgd` writes HTML and JSON with counts and epsilons, no per-canary data."""
    code = main(["audit", "dp-sgd", "--data", "builtin:cifar10-mini", "--noise-multiplier", "1.0",
                 "--canaries", "40", "--epochs", "1", "--max-examples", "64", "--width", "4",
                 "--depth", "1", "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "dp_audit.json").read_text())
    assert report["kind"] == "dp-audit" and report["sizes"]["canaries"] == 40
    assert report["result"]["accountant_epsilon"] > 0
    assert set(report) == {"kind", "flagged", "warnings", "context", "sizes", "result",
                           "verdicts"}
    html = (tmp_path / "dp_audit.html").read_text()
    assert "DP-SGD audit" in html and "Only 40 canaries" in html


def test_participant_runs_the_dp_audit_locally_from_its_config(tmp_path) -> None:
    """`participant audit-dp` reads the site's data and [privacy.dp_sgd], writes to STATE/audits."""
    config = tmp_path / "p00.toml"
    config.write_text(f"""
session = "s"
key_dir = "{tmp_path / 'keys'}"
roster = "{tmp_path / 'roster.toml'}"
coordinator = "tcp://127.0.0.1:1"
data = "builtin:cifar10-mini"
state_dir = "{tmp_path / 'state'}"

[partition]
clients = 50
index = 0

[privacy.dp_sgd]
enabled = true
noise_multiplier = 2.0
""")
    code = main(["participant", "audit-dp", "--config", str(config), "--canaries", "40",
                 "--epochs", "1", "--width", "4", "--depth", "1"])
    assert code == 0
    report = json.loads((tmp_path / "state" / "audits" / "dp_audit.json").read_text())
    assert report["result"]["noise_multiplier"] == 2.0
    assert 0 < report["sizes"]["training_examples"] < 5000  # the site's part, not the whole set


def test_audit_dp_sgd_says_what_it_trains_before_the_slow_part():
    """`audit dp-sgd` logs one line with a sentence (examples, canaries, epochs, noise) before
    it trains, so a user does not stare at a silent terminal."""
    x, y = torch.randn(40, 3, 8, 8), torch.arange(40) % 2
    options = DPAuditOptions(canaries=4, epochs=1, batch_size=8, width=4, depth=1)
    with capture_logs() as logs:
        audit_dp_sgd(x, y, num_classes=2, options=options, delta=1e-5, device="cpu",
                     dp=DPSGDConfig(enabled=True, noise_multiplier=1.0))
    (line,) = [e for e in logs if e["event"] == "dp_audit_training"]
    assert line["summary"].startswith("training one model on 40 examples and 4 canaries for "
                                      "1 epoch(s) with noise 1.000")
