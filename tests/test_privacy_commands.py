"""`latentfl privacy plan` and `latentfl privacy ledger` print what an operator needs."""

from __future__ import annotations

import re

import pytest

from latentfl.cli import main
from latentfl.privacy import PrivacyLedger, epsilon_for


def test_plan_prints_noise_and_epsilon_per_round_within_target(capsys):
    """The plan prints one row per round, growing, the last at or under the target."""
    code = main(
        [
            "privacy",
            "plan",
            "--examples",
            "1000",
            "--batch",
            "50",
            "--epochs",
            "1",
            "--rounds",
            "4",
            "--epsilon",
            "3",
            "--delta",
            "1e-5",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    sigma = float(re.search(r"noise multiplier: ([0-9.]+)", out).group(1))
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([0-9.]+)$", out, flags=re.M)
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
    assert [int(r[1]) for r in rows] == [20, 40, 60, 80]
    eps = [float(r[2]) for r in rows]
    assert eps == sorted(eps) and eps[-1] <= 3.0
    assert eps[-1] == pytest.approx(epsilon_for(sigma, 1 / 20, 80, 1e-5), abs=2e-3)


def test_plan_with_model_prints_ckks_cost(capsys):
    """With --model the plan adds the ciphertext count and bytes of one encrypted update:
    two 32-bit limbs per masked word, 4096 slots per ciphertext."""
    code = main(
        [
            "privacy",
            "plan",
            "--examples",
            "500",
            "--batch",
            "50",
            "--rounds",
            "1",
            "--noise-multiplier",
            "1.0",
            "--model",
            "convnet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "320,010 parameters" in out
    assert re.search(r"ciphertexts: 157$", out, flags=re.M)  # ceil(2 * 320,010 / 4096)
    assert "encryption time" in out


def test_plan_reports_every_bad_option_before_printing_anything(capsys):
    """An unknown model and a bad delta are named together; no table is printed first."""
    code = main(["privacy", "plan", "--examples", "1700", "--batch", "64", "--rounds", "5",
                 "--epsilon", "8", "--delta", "1.5", "--model", "resnet9000"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "--delta 1.5" in captured.err and "--model 'resnet9000'" in captured.err


def test_plan_warns_when_delta_is_not_well_below_one_over_examples(capsys):
    """delta 0.01 with 1,700 examples prints the plan with a warning naming a safer delta."""
    code = main(["privacy", "plan", "--examples", "1700", "--batch", "64", "--rounds", "2",
                 "--epsilon", "8", "--delta", "0.01"])
    captured = capsys.readouterr()
    assert code == 0 and "noise multiplier" in captured.out
    assert "warning: delta 0.01 is not well below 1/examples" in captured.err
    assert "e.g. 1e-05" in captured.err
    main(["privacy", "plan", "--examples", "1700", "--batch", "64", "--rounds", "2",
          "--epsilon", "8", "--delta", "1e-5"])
    assert "warning" not in capsys.readouterr().err


def test_ledger_command_prints_rows_and_total(tmp_path, capsys):
    """`privacy ledger` prints each round's row and the spent epsilon; exit 4 when missing."""
    ledger = PrivacyLedger.open(tmp_path, delta=1e-5)
    ledger.start_round(1, noise_multiplier=1.0, sample_rate=0.1, max_grad_norm=1.0)
    for _ in range(5):
        ledger.record_step()
    ledger.record_weight_noise(1, noise_multiplier=10.0, clip_norm=2.0)
    assert PrivacyLedger.load(tmp_path).rows[0].epsilon_after == pytest.approx(
        epsilon_for(1.0, 0.1, 5, 1e-5)
    )
    assert main(["privacy", "ledger", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+1\s+dp-sgd\s+5\s", out, flags=re.M)
    assert re.search(r"^\s+1\s+weight-noise\s+1\s", out, flags=re.M)
    assert f"epsilon {ledger.epsilon():.4f}" in out
    assert main(["privacy", "ledger", "--state-dir", str(tmp_path / "none")]) == 4
