"""The operator role without sockets: roster tables, key commands, the verifier's role check,
the journal tail, and what pause and abort-round do to the rounds."""

from __future__ import annotations

import json

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon_helpers import STRATEGY
from latentfl.cli import main
from latentfl.config import from_dict
from latentfl.errors import ConfigError, ProtocolError, SecurityError
from latentfl.models import model_manifest
from latentfl.platform.coordinator import CoordinatorConfig, Rounds, StateStore
from latentfl.platform.coordinator.conductor import RoundConductor
from latentfl.platform.coordinator.journal import Journal, read_journal, tail_journal
from latentfl.platform.coordinator.roster_watch import RosterWatcher
from latentfl.platform.crypto import (
    ROSTER_FILE,
    add_operator,
    add_participant,
    init_consortium,
    load_identity,
    load_roster,
    revoke_operator,
)
from latentfl.platform.crypto.roster import roster_to_toml
from latentfl.platform.protocol import Kind, ReplayGuard, Verifier, encode
from latentfl.strategies import Update, build_strategy


@pytest.fixture
def consortium(tmp_path):
    directory = tmp_path / "keys"
    return directory, init_consortium(directory, ["site-a", "site-b"], ["alice"])


def test_operators_are_enrolled_in_their_own_table(consortium):
    """init --operators writes operators/<id>/ and [[operators]]; operators are no participants."""
    directory, roster = consortium
    assert roster.active_ids() == ["site-a", "site-b"]
    assert roster.active_operator_ids() == ["alice"]
    assert set(roster.operator_keys()) == {"alice"} and "alice" not in roster.verify_keys()
    assert load_identity(directory / "operators" / "alice").id == "alice"
    assert "[[operators]]" in (directory / ROSTER_FILE).read_text()
    assert load_roster(directory / ROSTER_FILE) == roster
    entry = roster.operators["alice"]
    assert roster.by_curve_key(entry.curve_public) == entry


def test_a_roster_without_operators_still_loads(tmp_path):
    """Rosters written before the operator role (no [[operators]]) load unchanged."""
    roster = init_consortium(tmp_path / "k", ["site-a"])
    assert "operators" not in (tmp_path / "k" / ROSTER_FILE).read_text()
    assert load_roster(tmp_path / "k" / ROSTER_FILE).operators == {} == roster.operators


def test_an_id_is_one_party_across_roles(consortium, tmp_path):
    """An id enrolled as participant cannot also be an operator (in a file, by init or by add)."""
    directory, _ = consortium
    path = directory / ROSTER_FILE
    text = path.read_text()
    path.write_text(text.replace('id = "alice"', 'id = "site-a"'))
    with pytest.raises(SecurityError, match="also as participant"):
        load_roster(path)
    path.write_text(text)
    with pytest.raises(ConfigError, match="'site-b' is enrolled as participant"):
        add_operator(directory, "site-b")
    with pytest.raises(ConfigError, match="'alice' is enrolled as operator"):
        add_participant(directory, "alice")
    assert not (directory / "participants" / "alice").exists()
    with pytest.raises(ConfigError, match="more than once"):
        init_consortium(tmp_path / "other", ["x"], ["x"])
    with pytest.raises(ConfigError, match="operator id 'coordinator' is reserved"):
        add_operator(directory, "coordinator")


def test_revoking_an_operator_is_seen_by_the_roster_watcher(consortium):
    """A revoked operator is reported like a revoked participant (the coordinator drops
    connections); re-adding it rotates its keys."""
    directory, roster = consortium
    watcher = RosterWatcher(directory / ROSTER_FILE, roster)
    old = roster.operators["alice"].curve_public
    assert revoke_operator(directory, "alice").operator_keys() == {}
    assert watcher.poll().revoked == ["alice"]
    rotated = add_operator(directory, "alice")
    assert rotated.operators["alice"].active and rotated.operators["alice"].curve_public != old


def test_keys_cli_enrols_lists_and_revokes_operators(tmp_path, capsys):
    """`keys init --operators`, `keys add --operator`, `keys list` and `keys revoke` handle
    operators; revoke finds the role by id."""
    directory = tmp_path / "k"
    assert main(["keys", "init", "--dir", str(directory), "--participants", "h1",
                 "--operators", "ops"]) == 0
    assert main(["keys", "add", str(directory), "ops2", "--operator"]) == 0
    assert (directory / "operators" / "ops2" / "sign.key_secret").exists()
    assert main(["keys", "revoke", str(directory), "ops2"]) == 0
    assert main(["keys", "list", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "revoked operator 'ops2'" in out
    assert "revoked  (operator)" in out and "active  (operator)" in out
    roster = load_roster(directory / ROSTER_FILE)
    assert roster.active_operator_ids() == ["ops"] and roster.active_ids() == ["h1"]


def _message(sender: str, key: Ed25519PrivateKey, kind: Kind) -> list[bytes]:
    return encode(kind, session="s", round=0, sender=sender, signing_key=key)


def test_the_verifier_limits_each_signer_to_its_roles_kinds(tmp_path):
    """Verifier.of_roster lets participants send participant kinds only and operators admin
    kinds only; a roster reload applies to both roles."""
    directory = tmp_path / "k"
    init_consortium(directory, ["site-a"], ["alice"])
    roster = load_roster(directory / ROSTER_FILE)
    site = load_identity(directory / "participants" / "site-a").signing_key
    alice = load_identity(directory / "operators" / "alice").signing_key
    verifier = Verifier.of_roster(roster, session="s", replay=ReplayGuard(None))

    def reason(sender, key, kind):
        try:
            verifier.verify(_message(sender, key, kind), user_id=sender)
        except ProtocolError as exc:
            return exc.reason
        return "accepted"

    assert reason("site-a", site, Kind.UPDATE) == "accepted"
    assert reason("site-a", site, Kind.ADMIN_PAUSE) == "unexpected-kind"
    assert reason("alice", alice, Kind.ADMIN_PAUSE) == "accepted"
    assert reason("alice", alice, Kind.HELLO) == "unexpected-kind"
    assert reason("alice", site, Kind.ADMIN_PAUSE) == "bad-signature"
    verifier.update_roster(revoke_operator(directory, "alice"))
    assert reason("alice", alice, Kind.ADMIN_STATUS) == "unknown-sender"


def test_roster_text_round_trips_with_operators(consortium):
    """The canonical TOML of a roster with operators loads back to the same roster."""
    directory, roster = consortium
    assert roster_to_toml(load_roster(directory / ROSTER_FILE)) == roster_to_toml(roster)


@pytest.mark.parametrize("count", [1, 3, 49, 50, 80])
def test_journal_tail_is_the_end_of_the_journal(tmp_path, count):
    """tail_journal returns the last N entries in order, reading back in small blocks, and
    leaves out a line still being written."""
    journal = Journal(tmp_path / "journal.jsonl")
    for i in range(50):
        journal.append("accepted", kind="HEARTBEAT", peer=f"p{i:02d}", detail="x" * (i % 7))
    journal.close()
    everything = read_journal(tmp_path / "journal.jsonl")
    assert tail_journal(tmp_path / "journal.jsonl", count, block=97) == everything[-count:]
    with (tmp_path / "journal.jsonl").open("ab") as fh:
        fh.write(json.dumps({"seq": 50})[:5].encode())  # a torn last line
    assert tail_journal(tmp_path / "journal.jsonl", 2, block=97) == everything[-2:]


def _conductor(tmp_path, **overrides) -> RoundConductor:
    config = from_dict(CoordinatorConfig, {
        "session": "s", "key_dir": "k", "roster": "r", "state_dir": str(tmp_path / "state"),
        "rounds": 3, "min_participants": 2, "round_deadline": 100.0, "strategy": STRATEGY,
        **overrides})
    rounds = Rounds(config, build_strategy(config.strategy), StateStore(config.state_dir))
    rounds.resume()
    manifest = model_manifest(config.strategy.model.build())
    return RoundConductor(config, rounds, Journal(tmp_path / "journal.jsonl"), manifest, None)


def _update(rounds: Rounds, pid: str) -> Update:
    weights = {k: v + 1.0 for k, v in rounds.strategy.global_weights().items()}
    return Update(pid, rounds.round, weights, num_examples=10, num_steps=1)


def test_paused_conductor_opens_and_closes_nothing_and_its_deadline_stands_still(tmp_path):
    """Paused: no round opens, a collecting one neither closes nor is abandoned past its
    deadline; resumed: the deadline has moved by the time spent paused."""
    conductor = _conductor(tmp_path, min_updates=2)
    rounds = conductor.rounds
    conductor.pause(now=0.0)
    assert conductor.step(["a", "b"], now=1.0) == [] and rounds.phase == "waiting"
    conductor.resume(now=5.0)
    assert len(conductor.step(["a", "b"], now=5.0)) == 2 and rounds.phase == "collecting"
    conductor.pause(now=6.0)
    rounds.accept(_update(rounds, "a"), "d-a")  # an update for a task sent is still taken
    assert conductor.step(["a", "b"], now=500.0) == [] and rounds.phase == "collecting"
    conductor.resume(now=600.0)  # 594 s paused: the deadline is now 5 + 100 + 594
    assert rounds.due(["a", "b"], now=698.0) == "" and rounds.updates.keys() == {"a"}
    assert rounds.due(["a", "b"], now=700.0) == "replan"


def test_abort_skips_the_round_and_keeps_its_accepted_updates(tmp_path):
    """An aborted round aggregates nothing, checkpoints the unchanged state with an aborted
    record naming its accepted updates, keeps their files, and a restart resumes after it."""
    conductor = _conductor(tmp_path)
    rounds = conductor.rounds
    with pytest.raises(ValueError, match="only a collecting round"):
        conductor.abort()
    conductor.step(["a", "b"], now=0.0)
    rounds.accept(_update(rounds, "a"), "d-a")
    record = conductor.abort()
    assert (record.round, record.accepted, record.aborted) == (1, ["a"], True)
    assert (rounds.round, rounds.phase) == (2, "waiting")
    store = StateStore(tmp_path / "state")
    before, after = store.load_checkpoint(0).tensors, store.load_checkpoint(1).tensors
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (store.round_dir(1) / "updates" / "a.safetensors").exists()
    again = _conductor(tmp_path).rounds
    assert again.round == 2 and again.history[-1].aborted and again.history[-1].accepted == ["a"]
    assert [o.round for o in conductor.step(["a", "b"], now=1.0)] == [2, 2]
