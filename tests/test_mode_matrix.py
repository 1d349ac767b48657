"""One source of truth in every aggregation mode: a short consortium in plain, secagg and ckks
mode, with and without DP-SGD; status (text, JSON, HTML) and the consortium report count what
the journal holds and report the epsilon each site's own ledger spent."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from daemon_helpers import Running, local_parts, make_consortium, run_to_the_end, tiny_dataset
from latentfl.platform.cli.report import consortium_entries
from latentfl.platform.coordinator import (
    Coordinator,
    collect_status,
    render_html,
    render_text,
)
from latentfl.platform.crypto.ckks_keys import write_ckks_keys
from latentfl.platform.participant import Agent
from latentfl.platform.protocol import UPDATE_KINDS
from latentfl.privacy import PrivacyLedger

IDS = ["p00", "p01"]
MODES = {"plain": {"mode": "plain"},
         "secagg": {"mode": "secagg", "min_cohort": 2, "phase_deadline": 20.0},
         "ckks": {"mode": "ckks", "min_cohort": 2, "decrypt_deadline": 1.0,
                  "phase_deadline": 20.0}}
UPLOADS = {k.value for k in UPDATE_KINDS}


@pytest.fixture(scope="module")
def parts():
    return local_parts(tiny_dataset(n_train=120), 2)


@pytest.mark.parametrize("dp", [False, True], ids=["no_dp", "dp_sgd"])
@pytest.mark.parametrize("mode", list(MODES))
def test_status_and_report_agree_with_the_journal_and_the_ledgers(tmp_path, parts, mode, dp):
    """After one round, each site's accepted updates in status (text, JSON, HTML) and in the
    report equal the uploads the journal accepted from it, and with DP-SGD the report's epsilon
    is the one the site's own ledger holds."""
    consortium = make_consortium(tmp_path, IDS)
    if mode == "ckks":
        write_ckks_keys(consortium.keys)
    config = consortium.coordinator_config(aggregation=MODES[mode], rounds=1,
                                           min_participants=2)
    privacy = {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0}} if dp else {}
    coord = Running(Coordinator(config))
    journal = run_to_the_end(coord, _agents(consortium, parts, privacy, tmp_path),
                             config.state_dir / "journal.jsonl", 240)
    uploads = Counter(e["peer"] for e in journal if e["event"] == "accepted"
                      and e.get("kind") in UPLOADS and not e.get("resent"))
    assert sorted(uploads) == IDS and set(uploads.values()) == {1}
    status = collect_status(config)
    again = json.loads(json.dumps(status))  # what `status --json` prints
    text = render_text(status)
    html = render_html(status)
    entries = {e.participant: e for e in consortium_entries(config)[0]}
    assert status["rounds_done"] == 1 and status["history"][0]["accepted"] == len(IDS)
    for pid in IDS:
        assert status["participants"][pid]["accepted"] == uploads[pid]
        assert again["participants"][pid]["accepted"] == uploads[pid]
        (row,) = [line for line in text if line.startswith(pid)]
        assert row.split()[-4] == str(uploads[pid])  # accepted, refused, declined, set aside
        assert f"<td>{uploads[pid]}</td>" in html
        assert entries[pid].updates == uploads[pid]
        assert entries[pid].aggregation_mode == mode
        if dp:
            ledger = PrivacyLedger.open(tmp_path / f"{pid}-state", delta=1e-5)
            assert entries[pid].ledger["epsilon"] == pytest.approx(ledger.report()["epsilon"])
        else:
            assert entries[pid].ledger is None


def _agents(consortium, parts, privacy, root) -> list[Running]:
    """Both sites' agents, each with its own state folder (its ledger) and ``privacy``."""
    return [Running(Agent(consortium.participant_config(
        pid, state_dir=root / f"{pid}-state", privacy=privacy), data=parts[i]))
        for i, pid in enumerate(IDS)]
