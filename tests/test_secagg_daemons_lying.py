"""secagg through the daemons with a coordinator that lies: real sockets, CURVE, agents."""

from __future__ import annotations

from daemon_helpers import Running, local_parts, make_consortium, start_agents, tiny_dataset
from latentfl.platform.coordinator import Coordinator, read_journal
from latentfl.platform.coordinator.secagg_exchange import MaskedAggregation
from latentfl.platform.participant import Agent
from latentfl.platform.protocol import Kind
from latentfl.platform.supervisor import wait_until
from latentfl.platform.wire.secagg import decode_signature, encode_survivors, encode_unmask
from latentfl.privacy.secagg import Certificate, threshold

IDS = ["p00", "p01", "p02", "p03", "p04"]
TARGET = "p00"


class PerHolderLies(MaskedAggregation):
    """The real coordinator's secagg state with recovery 1 of issue 24 added: when the uploads
    close, each survivor h is told that the survivors are {T, h} padded to the threshold, and
    is then sent a certificate of that set with every signature the coordinator got on it."""

    def close(self, updates, now):
        honest = super().close(updates, now)
        survivors = self.server.survivors
        t = threshold(len(self.server.adverts))
        self.lies, self.signed = {}, {}
        for out in honest:
            pad = [p for p in survivors if p not in (TARGET, out.peer)][: t - 2]
            self.lies[out.peer] = tuple(sorted({TARGET, out.peer, *pad}))
        return [self._out(h, Kind.SECAGG_SURVIVORS, encode_survivors(s))
                for h, s in self.lies.items()]

    def receive(self, message, now):
        if message.header.kind is not Kind.SECAGG_SIGNATURE or self.phase != "consistency":
            return super().receive(message, now)
        self.signed[message.header.sender] = decode_signature(message)
        return self.step(now, answered=message.header.sender)

    def _send_certificate(self, server, now):
        """Instead of the one certificate: each holder gets the certificate of its own set."""
        self._enter("unmask", now)
        self.expected = set(self.lies)
        return [self._out(h, Kind.SECAGG_UNMASK, encode_unmask(Certificate(s, {
            p: sig for p, sig in self.signed.items() if self.lies.get(p) == s})))
            for h, s in self.lies.items()]


def refusals(journal) -> set[str]:
    """Who declined with a secagg rule: a certificate short of t signatures, or (the target,
    told a set one short of t) the floor."""
    return {e["peer"] for e in read_journal(journal) if e["event"] == "declined"
            and e["reason"] in ("secagg_certificate", "min_cohort")}


def test_agents_reveal_nothing_to_a_coordinator_telling_each_holder_another_survivor_set(
        tmp_path):
    """Five real agents sign the set each was told (the target refuses its short one), refuse
    every certificate (no set carries t signatures), DECLINE with the rule, and the round is
    abandoned without a single reveal."""
    consortium = make_consortium(tmp_path, IDS)
    config = consortium.coordinator_config(
        aggregation={"mode": "secagg", "min_cohort": 2, "phase_deadline": 4.0}, rounds=1,
        min_participants=5, round_deadline=30.0)
    coordinator = Coordinator(config)
    coordinator.conductor.masked.__class__ = PerHolderLies
    coord = Running(coordinator)
    agents = start_agents(consortium, local_parts(tiny_dataset(), 5), IDS)
    journal = config.state_dir / "journal.jsonl"
    try:
        wait_until(lambda: refusals(journal) == set(IDS), 90, "every agent refusing the lie")
        wait_until(lambda: any(e["event"] == "secagg_abandoned" for e in read_journal(journal)),
                   30, "abandonment")
    finally:
        coord.stop()
        [a.stop() for a in agents]
    entries = read_journal(journal)
    assert [e for e in entries if e.get("kind") == "SECAGG_REVEAL"] == []
    assert not any(e["event"] == "secagg_unmasked" for e in entries)
    abandoned = [e for e in entries if e["event"] == "secagg_abandoned"]
    assert abandoned[0]["phase"] == "unmask"


def test_a_task_below_the_sites_min_cohort_is_declined_with_the_rule(tmp_path):
    """A site whose policy floor is min_cohort = 4 declines a secagg TASK stating 2, naming
    the rule, before training."""
    consortium = make_consortium(tmp_path, IDS[:3])
    config = consortium.coordinator_config(
        aggregation={"mode": "secagg", "min_cohort": 2, "phase_deadline": 4.0}, rounds=1,
        min_participants=3, round_deadline=30.0)
    coord = Running(Coordinator(config))
    strict = consortium.participant_config(
        "p02", privacy={"policy": {"min_cohort": 4}})
    parts = local_parts(tiny_dataset(), 3)
    agents = start_agents(consortium, parts[:2], IDS[:2]) + [
        Running(Agent(strict, data=parts[2]))]
    journal = config.state_dir / "journal.jsonl"
    try:
        wait_until(lambda: any(e["event"] == "declined" and e["peer"] == "p02"
                               for e in read_journal(journal)), 60, "p02's refusal")
    finally:
        coord.stop()
        [a.stop() for a in agents]
    declined = [e for e in read_journal(journal) if e["event"] == "declined"
                and e["peer"] == "p02"]
    assert declined[0]["reason"] == "cohort_below_floor"
    assert "min_cohort >= 4" in declined[0]["detail"]
