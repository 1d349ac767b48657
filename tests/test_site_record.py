"""The site's own record through real daemons: what it shows, and its check against the
coordinator's journal (agreeing, tampered with, or contradicted)."""

from __future__ import annotations

import json

import pytest

from daemon_helpers import Running, local_parts, make_consortium, tiny_dataset
from latentfl.cli import main
from latentfl.config import write_config
from latentfl.exitcodes import ExitCode
from latentfl.platform.coordinator import Coordinator, read_journal
from latentfl.platform.participant import Agent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished round of a one-site session; the site's config file and the coordinator's
    journal."""
    root = tmp_path_factory.mktemp("record")
    consortium = make_consortium(root, ["p00"])
    config = consortium.coordinator_config(min_participants=1, rounds=1)
    site = consortium.participant_config("p00", state_dir=root / "p00-state")
    coord = Running(Coordinator(config))
    agent = Running(Agent(site, data=local_parts(tiny_dataset(n_train=60), 1)[0]))
    try:
        assert coord.join(120) == 0
        assert agent.join(60) == 0
    finally:
        agent.stop()
        coord.stop()
    return write_config(root / "p00.toml", site), site.state_dir, config.state_dir / "journal.jsonl"


def test_the_log_shows_the_task_the_decision_the_upload_and_its_ack(run, capsys):
    """`participant log` lists the TASK, its acceptance, the UPDATE sent with its digest and
    the ACK, and says the chain is intact."""
    path, state, journal = run
    assert main(["participant", "log", "--config", str(path)]) == ExitCode.OK
    out = capsys.readouterr().out
    events = [line.split()[3] for line in out.splitlines()[:-1]]
    assert events == ["task", "accepted", "sent", "acknowledged"]
    (upload,) = [e for e in read_journal(journal)
                 if e["event"] == "accepted" and e.get("kind") == "UPDATE"]
    assert upload["sha256"][:16] in out and "chain intact" in out.splitlines()[-1]


def test_verify_agrees_with_the_coordinators_journal(run, capsys):
    """`participant verify` against the coordinator's journal finds the acknowledged upload
    there with the same SHA-256 and exits 0."""
    path, _, journal = run
    code = main(["participant", "verify", "--config", str(path), "--journal-export",
                 str(journal)])
    assert code == ExitCode.OK, capsys.readouterr()
    assert "agree: 1 acknowledged upload(s)" in capsys.readouterr().out


def test_verify_names_an_upload_the_coordinator_claims_but_the_site_never_sent(run, tmp_path,
                                                                               capsys):
    """A journal export recording a second update from this site, which it never sent, is a
    mismatch naming the round: exit 4."""
    path, _, journal = run
    entries = read_journal(journal)
    (upload,) = [e for e in entries if e["event"] == "accepted" and e.get("kind") == "UPDATE"]
    forged = tmp_path / "export.jsonl"
    forged.write_text("".join(json.dumps(e) + "\n" for e in
                              [*entries, {**upload, "round": 2, "sha256": "ab" * 32}]))
    code = main(["participant", "verify", "--config", str(path), "--journal-export",
                 str(forged)])
    out = capsys.readouterr().out
    assert code == ExitCode.STATE
    assert "round 2: the coordinator's journal records UPDATE from p00" in out
    assert "never sent" in out


def test_a_tampered_record_is_refused_naming_the_line(run, tmp_path, capsys):
    """Editing one entry of the site's record (the epsilon of an upload) breaks its chain:
    `participant log` exits 4 naming the line."""
    path, state, _ = run
    record = state / "record.jsonl"
    original = record.read_text()
    lines = original.splitlines(keepends=True)
    sent = next(i for i, line in enumerate(lines) if '"event":"sent"' in line)
    entry = json.loads(lines[sent])
    entry["bytes"] += 1
    lines[sent] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    record.write_text("".join(lines))
    try:
        assert main(["participant", "log", "--config", str(path)]) == ExitCode.STATE
        assert f"line {sent + 1}" in capsys.readouterr().err
    finally:
        record.write_text(original)
