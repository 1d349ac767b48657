"""Audit files, reports and commands: self-contained HTML, JSON twins, CLI end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from latentfl.audits import (
    ConsortiumEntry,
    ReportScope,
    load_model_file,
    load_synthetic,
    render_consortium_report,
    save_model_file,
    save_synthetic,
    shareable_aggregates,
)
from latentfl.audits.model_file import ModelSpec
from latentfl.cli import main
from latentfl.data import load_dataset
from latentfl.errors import DataError, ModelError
from latentfl.models import build_model

EXTERNAL = re.compile(r"""(https?:)?//[a-z0-9]|\burl\(|<script|<link""", re.IGNORECASE)


def _assert_self_contained(html: str) -> None:
    for src in re.findall(r'src="([^"]*)"', html):
        assert src.startswith("data:image/png;base64,")
    text = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]*"', "", html)
    assert not EXTERNAL.search(text), EXTERNAL.search(text).group(0)


@pytest.fixture(scope="module")
def private_npz(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """An npz dataset of 16x16 cifar10-mini images: 200 train (T), 400 test (H)."""
    ds = load_dataset("builtin:cifar10-mini")
    pick = np.random.default_rng(0).choice(len(ds.train), 600, replace=False)
    x = ds.train.x[pick].astype(np.float32).reshape(600, 16, 2, 16, 2, 3).mean(axis=(2, 4))
    x = x.round().astype(np.uint8)
    y = ds.train.y[pick]
    path = tmp_path_factory.mktemp("data") / "private.npz"
    np.savez(path, x=x[:200], y=y[:200], x_test=x[200:], y_test=y[200:])
    return path, x[:200]


def test_synthetic_file_round_trip_and_float_form(tmp_path: Path) -> None:
    """uint8 sets round-trip exactly; normalised float sets come back as the same pixels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(6)
    save_synthetic(tmp_path / "s.safetensors", images, labels, {"round": 3})
    back = load_synthetic(tmp_path / "s.safetensors")
    assert np.array_equal(back.images, images) and np.array_equal(back.labels, labels)
    assert back.meta == {"round": 3}
    from safetensors.torch import save_file

    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    unit = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    normalised = ((unit - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).contiguous()
    save_file({"images": normalised, "labels": torch.from_numpy(labels), "mean": mean,
               "std": std}, str(tmp_path / "f.safetensors"))
    assert np.array_equal(load_synthetic(tmp_path / "f.safetensors").images, images)
    save_file({"images": normalised}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(DataError, match="labels"):
        load_synthetic(tmp_path / "bad.safetensors")


def test_model_file_round_trip(tmp_path: Path) -> None:
    """A saved model file rebuilds the same network with the same outputs and DP claim."""
    torch.manual_seed(0)
    model = build_model("convnet", 10, (3, 16, 16), width=8, depth=2)
    spec = ModelSpec("convnet", 10, (3, 16, 16), {"width": 8, "depth": 2}, (0.5,) * 3,
                     (0.25,) * 3, dp_epsilon=2.0, dp_delta=1e-5)
    save_model_file(tmp_path / "m.safetensors", model, spec)
    loaded, spec2 = load_model_file(tmp_path / "m.safetensors")
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(model.eval()(x), loaded(x))
    assert spec2 == spec
    (tmp_path / "m.safetensors.json").write_text('{"model": "convnet"}')
    with pytest.raises(ModelError, match="sidecar"):
        load_model_file(tmp_path / "m.safetensors")


def test_audit_synthetic_command_writes_self_contained_report(private_npz, tmp_path) -> None:
    """`latentfl audit synthetic` flags a leaky set; the HTML is self-contained, verdicts first."""
    spec_path, train = private_npz
    rng = np.random.default_rng(1)
    exact = train[:5]
    noised = np.clip(exact.astype(np.int16) + rng.normal(0, 4, exact.shape).round(), 0, 255)
    save_synthetic(tmp_path / "leaky.safetensors",
                   np.concatenate([exact, noised.astype(np.uint8)]), np.zeros(10, np.int64))
    out = tmp_path / "report"
    code = main(["audit", "synthetic", "--synthetic", str(tmp_path / "leaky.safetensors"),
                 "--private", f"npz:{spec_path}", "--out", str(out)])
    assert code == 0
    html = (out / "synthetic_audit.html").read_text()
    _assert_self_contained(html)
    assert "LEAK SUSPECTED" in html
    assert html.index('<table class="v">') < html.index('class="grid"') < html.index('"plot"')
    report = json.loads((out / "synthetic_audit.json").read_text())
    assert report["flagged"] is True
    shared = shareable_aggregates(report)
    assert "per_synthetic_image" not in shared and "data:image" not in json.dumps(shared)
    assert {v["metric"] for v in shared["verdicts"] if v["status"] == "flag"} >= {
        "pixel_nn", "extraction_ratio", "nn_share"}


def test_audit_model_command_checks_dp_claim(private_npz, tmp_path) -> None:
    """`latentfl audit model` runs all attacks and reports a DP check for the claimed epsilon."""
    spec_path, _ = private_npz
    torch.manual_seed(0)
    model = build_model("convnet", 10, (3, 16, 16), width=8, depth=2)
    ds = load_dataset(f"npz:{spec_path}")
    save_model_file(tmp_path / "m.safetensors", model,
                    ModelSpec("convnet", 10, (3, 16, 16), {"width": 8, "depth": 2},
                              ds.mean, ds.std, dp_epsilon=1.0, dp_delta=1e-5))
    out = tmp_path / "model_report"
    code = main(["audit", "model", "--model", str(tmp_path / "m.safetensors"),
                 "--members", f"npz:{spec_path}", "--nonmembers", f"npz:{spec_path}",
                 "--out", str(out), "--references", "1", "--ref-epochs", "1",
                 "--max-examples", "100", "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "model_audit.json").read_text())
    assert [a["name"] for a in report["attacks"]] == ["LOSS", "LiRA (offline)", "RMIA (offline)"]
    assert all(a["dp_check"]["epsilon"] == 1.0 for a in report["attacks"])
    html = (out / "model_audit.html").read_text()
    _assert_self_contained(html)
    assert html.index('<table class="v">') < html.index('"plot"')


def test_consortium_report_lists_flags_first(tmp_path: Path) -> None:
    """The consortium report puts participants with flags (no DP, flagged audit) at the top."""
    clean = {"kind": "synthetic-audit", "flagged": False,
             "verdicts": [{"metric": "pixel_nn", "title": "Near-copies by pixels",
                           "value": "0 of 50", "status": "pass"}]}
    leaky = {"kind": "synthetic-audit", "flagged": True,
             "verdicts": [{"metric": "pixel_nn", "title": "Near-copies by pixels",
                           "value": "9 of 50", "status": "flag"}]}
    entries = [
        ConsortiumEntry("hospital-a", "FedDGM", {"epsilon": 2.1, "delta": 1e-5},
                        {"synthetic-audit": clean}, budget=8.0, budget_stated=True),
        ConsortiumEntry("hospital-b", "FedDGM", {"epsilon": 3.0, "delta": 1e-5},
                        {"synthetic-audit": leaky}),
        ConsortiumEntry("bank-c", "FedAvg + CKKS", None, {}),
    ]
    html_path, json_path = render_consortium_report(entries, tmp_path)
    html = html_path.read_text()
    _assert_self_contained(html)
    assert "2 of 3 participants have flags" in html
    assert html.index("hospital-b") < html.index("<table")
    report = json.loads(json_path.read_text())
    assert report["flagged"] == ["hospital-b", "bank-c"]


def test_consortium_report_rounds_ledger_numbers_and_names_its_scope(tmp_path: Path) -> None:
    """Ledger numbers are shown to meaningful precision; the scope line names the session."""
    ledger = {"epsilon": 2.718281828, "delta": 1e-5, "noise_multiplier": 0.7611083984375,
              "max_grad_norm": 1.0, "sample_rate": 0.0376470588, "steps": 54.0, "round": 3}
    scope = ReportScope("hospitals-2026", rounds_done=3, rounds_planned=8,
                        generated=1796419200.0)
    html_path, json_path = render_consortium_report(
        [ConsortiumEntry("hospital-a", "plain", ledger, updates=3)], tmp_path, scope=scope)
    html = html_path.read_text()
    assert ("epsilon 2.72, delta 1e-05, 54 DP-SGD steps, noise multiplier 0.761, clip norm 1, "
            "sample rate 0.0376, as of round 3") in html
    assert "0.7611083984375" not in html
    assert "session hospitals-2026: rounds 1 to 3 of 8 planned; generated 2026-12-04" in html
    assert json.loads(json_path.read_text())["scope"]["rounds_planned"] == 8


def test_consortium_report_shows_each_sites_own_budget_beside_what_it_spent(
        tmp_path: Path) -> None:
    """"budget X, spent Y" per site in the HTML and JSON; "no budget set" for a site without
    one, "budget not reported" for an agent that never said; spending past it is a flag."""
    from latentfl.audits.consortium import budget_line, entry_flags

    ledger = {"epsilon": 4.781, "delta": 1e-5}
    entries = [ConsortiumEntry("site-a", "secagg", ledger, updates=3, budget=8.0,
                               budget_stated=True),
               ConsortiumEntry("site-b", "secagg", ledger, updates=3, budget_stated=True),
               ConsortiumEntry("site-c", "secagg", None, updates=0),
               ConsortiumEntry("site-d", "secagg", ledger, updates=3, budget=2.0,
                               budget_stated=True)]
    assert [budget_line(e) for e in entries] == [
        "budget 8.00, spent 4.78", "no budget set, spent 4.78",
        "budget not reported, spent nothing", "budget 2.00, spent 4.78"]
    assert entry_flags(entries[3]) == ["spent epsilon 4.78 exceeds its budget 2.00"]
    assert entry_flags(entries[0]) == []
    html_path, json_path = render_consortium_report(entries, tmp_path)
    html = html_path.read_text()
    assert "budget 8.00, spent 4.78" in html and "no budget set, spent 4.78" in html
    by_id = {p["participant"]: p for p in json.loads(json_path.read_text())["participants"]}
    assert (by_id["site-a"]["budget"], by_id["site-a"]["budget_stated"]) == (8.0, True)
    assert (by_id["site-c"]["budget"], by_id["site-c"]["budget_stated"]) == (None, False)
