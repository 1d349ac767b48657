"""The one-run DP audit on an operator's request: asked through the coordinator, run (or
declined) by the site's agent as its policy says, answered with aggregate numbers only."""

from __future__ import annotations

import io
import json
from contextlib import ExitStack, redirect_stdout
from dataclasses import fields

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon_helpers import (
    COORDINATOR,
    PARTICIPANT,
    SESSION,
    RawClient,
    Running,
    local_parts,
    tiny_dataset,
)
from latentfl.audits.dp_audit import DPAudit
from latentfl.audits.dp_command import DPAuditOptions
from latentfl.audits.report import dp_audit_json
from latentfl.audits.shareable import shareable_aggregates
from latentfl.audits.verdict import Verdict
from latentfl.cli import main
from latentfl.config import write_config
from latentfl.errors import ConfigError, ProtocolError
from latentfl.log import get_logger
from latentfl.platform.admin_client import AdminClient
from latentfl.platform.coordinator import Coordinator, read_journal, verify_journal
from latentfl.platform.local import LocalConsortium
from latentfl.platform.participant import Agent
from latentfl.platform.participant.audits.client import AuditClient
from latentfl.platform.participant.audits.requested import RequestedAudits
from latentfl.platform.protocol import Kind, Message, encode, pack_json, parse_header
from latentfl.platform.supervisor import wait_until
from latentfl.platform.wire.audit_request import (
    DP_OPTIONS,
    AuditRequest,
    encode_command,
    encode_request,
    parse_request,
)

IDS = ["p00", "p01", "p02"]
OPERATOR = "ops"
#: a tiny audited run: seconds on a CPU
OPTIONS = {"canaries": 20, "epochs": 1, "batch_size": 16, "width": 4, "depth": 1,
           "max_examples": 64}
DP = {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0}}


@pytest.fixture
def consortium(tmp_path):
    # three enrolled, at most one online: no round starts, the agent is idle between rounds
    return LocalConsortium(tmp_path, IDS, session=SESSION, operators=[OPERATOR],
                           coordinator=COORDINATOR, participant=PARTICIPANT)


@pytest.fixture
def stack():
    with ExitStack() as stack:
        yield stack


@pytest.fixture
def coordinator(consortium, stack):
    coord = Running(Coordinator(consortium.coordinator_config()))
    stack.callback(coord.stop)
    return coord


def _admin(consortium, stack) -> AdminClient:
    return stack.enter_context(AdminClient(consortium.admin_config(OPERATOR, timeout_s=10.0)))


def _agent(consortium, stack, tmp_path, **overrides) -> Running:
    config = consortium.participant_config("p00", state_dir=str(tmp_path / "p00"), privacy=DP,
                                           **overrides)
    agent = Running(Agent(config, data=local_parts(tiny_dataset(80, 10), 1)[0]))
    stack.callback(agent.stop)
    return agent


def _requests(consortium) -> dict[str, dict]:
    path = consortium.state_dir / "audit_requests.json"
    return {r["id"]: r for r in json.loads(path.read_text())["requests"]} if path.exists() else {}


def _events(consortium, name: str) -> list[dict]:
    return [e for e in read_journal(consortium.state_dir / "journal.jsonl") if e["event"] == name]


def _report(consortium, tmp_path) -> tuple[dict, str, str]:
    """`latentfl report`: its JSON, HTML and printed text."""
    cfg = write_config(tmp_path / "coordinator.toml", consortium.coordinator_config())
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["report", "--config", str(cfg), "--out", str(tmp_path / "rep")]) == 0
    report = json.loads((tmp_path / "rep" / "consortium_report.json").read_text())
    return report, (tmp_path / "rep" / "consortium_report.html").read_text(), out.getvalue()


def _lists(value, path="") -> list[str]:
    """Where ``value`` holds a list (the only place a per-canary series could hide)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _lists(v, f"{path}.{k}")]
    return [path] if isinstance(value, list) else []


def test_requested_dp_audit_runs_at_the_agent_and_only_aggregates_arrive(
        consortium, stack, coordinator, tmp_path):
    """A request reaches the allowing agent, which audits its own DP-SGD between rounds, keeps
    the full report and sends aggregates the coordinator stores, journals and reports."""
    _agent(consortium, stack, tmp_path, audit={"dp_on_request": True})
    admin = _admin(consortium, stack)
    request = admin.request_audit("p00", "dp-sgd", OPTIONS)
    assert request["state"] == "waiting" and request["options"] == OPTIONS
    stored = consortium.state_dir / "audits" / "dp-audit" / "p00.json"
    wait_until(stored.exists, 120, "the requested audit's aggregates")

    record = json.loads(stored.read_text())
    shared = record["aggregates"]
    assert record["request"] == request["id"] and shared["kind"] == "dp-audit"
    result = shared["result"]
    assert result["noise_multiplier"] == 1.0 and result["accountant_epsilon"] > 0  # the site's DP
    assert (result["canaries"], result["epochs"], result["batch_size"]) == (20, 1, 16)
    assert result["training_examples"] == 64 and 0 <= result["correct"] <= result["guesses"] <= 20
    assert _lists(shared) == [".verdicts"] and len(shared["verdicts"]) == 1  # no per-canary data
    assert shared["verdicts"][0]["status"] in ("pass", "inconclusive")
    assert "score" not in json.dumps(shared)
    local = tmp_path / "p00" / "audits" / f"request-{request['id']}"
    assert (local / "dp_audit.html").exists()
    assert json.loads((local / "dp_audit.json").read_text())["result"]["correct"] == result["correct"]

    wait_until(lambda: _requests(consortium)[request["id"]]["state"] == "answered", 10,
               "the request marked answered")
    assert [e["request"] for e in _events(consortium, "audit_requested")] == [request["id"]]
    assert [e["peer"] for e in _events(consortium, "audit_request_delivered")] == ["p00"]
    accepted = [e for e in _events(consortium, "accepted") if e.get("kind") == "AUDIT_REPORT"]
    assert [(e["peer"], e["request"], e["audit"]) for e in accepted] == \
        [("p00", request["id"], "dp-audit")]
    with pytest.raises(ConfigError, match="canaries"):  # out of bounds: never sent
        admin.request_audit("p01", "dp-sgd", {"canaries": 10**6})

    report, html, text = _report(consortium, tmp_path)
    by_id = {p["participant"]: p for p in report["participants"]}
    assert "dp-audit" in by_id["p00"]["audits"]
    assert "DP-SGD delivers its epsilon" in html and "answered" in html
    assert f"the audit run&#x27;s accountant: epsilon {result['accountant_epsilon']:.2f}" in html
    assert "p00: plain (the coordinator sees each site's update), 0 updates" in text and "dp-audit" in text


def test_a_site_whose_policy_forbids_it_declines_and_nothing_runs(
        consortium, stack, coordinator, tmp_path):
    """With the default policy the agent answers AUDIT_DECLINE; the coordinator journals the
    refusal and the report says so; no audit ran at the site and nothing was stored."""
    _agent(consortium, stack, tmp_path)  # [audit] dp_on_request defaults to false
    request = _admin(consortium, stack).request_audit("p00", "dp-sgd", OPTIONS)
    wait_until(lambda: _requests(consortium)[request["id"]]["state"] == "declined", 30,
               "the site's refusal")
    declined = _events(consortium, "audit_declined")
    assert [(e["peer"], e["request"], e["reason"]) for e in declined] == \
        [("p00", request["id"], "audit_not_allowed")]
    assert "dp_on_request = false" in declined[0]["detail"]
    assert not (tmp_path / "p00" / "audits").exists()  # nothing ran, nothing was written
    assert not (consortium.state_dir / "audits").exists()
    _, html, text = _report(consortium, tmp_path)
    assert "declined by the site (audit_not_allowed" in html and "audit_not_allowed" in text


def test_requests_are_delivered_until_answered_and_one_at_a_time(consortium, stack, coordinator):
    """The coordinator sends a request at the next contact and again on each HELLO until it is
    answered; a second request while one is unanswered is refused; unknown ids are refused."""
    admin = _admin(consortium, stack)
    request = admin.request_audit("p01", "dp-sgd", {"canaries": 50})
    with pytest.raises(ProtocolError) as twice:
        admin.request_audit("p01", "dp-sgd", {"canaries": 60})
    assert twice.value.reason == "bad-command"
    with pytest.raises(ProtocolError) as unknown:
        admin.request_audit("nobody", "dp-sgd", {})
    assert unknown.value.reason == "bad-command"
    with pytest.raises(ProtocolError) as raw:  # past the client's own check: the coordinator's
        admin.command(Kind.ADMIN_REQUEST_AUDIT, meta={"participant": "p01"},
                      payload=encode_command("dp-sgd", {"canaries": 1, "data": 1}))
    assert raw.value.reason == "malformed"

    site = RawClient(consortium, consortium.identity("p01"))
    stack.callback(site.close)
    for _ in range(2):  # delivered on contact, again on a reconnection's HELLO
        site.send(site.frames(Kind.HELLO, 0, payload=pack_json({"num_examples": 50})))
        delivered = site.recv(5, kind=Kind.AUDIT_REQUEST)
        assert delivered is not None
        assert parse_request(delivered.payload) == AuditRequest(request["id"], "dp-sgd",
                                                                {"canaries": 50})
    site.send(site.frames(Kind.AUDIT_DECLINE, 0, meta={"request": "0" * 16, "reason": "x"}))
    reject = site.recv(5, kind=Kind.REJECT)
    assert reject is not None and reject.header.meta["reason"] == "not-requested"
    site.send(site.frames(Kind.AUDIT_DECLINE, 0, meta={"request": request["id"],
                                                       "reason": "audit_failed", "detail": "x"}))
    ack = site.recv(5, kind=Kind.ACK)
    assert ack is not None and ack.header.meta == {"request": request["id"]}
    site.send(site.frames(Kind.HELLO, 0, payload=pack_json({"num_examples": 50})))
    assert site.recv(1.5, kind=Kind.AUDIT_REQUEST) is None  # answered: never sent again
    assert _requests(consortium)[request["id"]]["state"] == "declined"
    assert len(_events(consortium, "audit_request_delivered")) == 1  # the first delivery only


def _dp_aggregates(status: str = "inconclusive") -> dict:
    """The aggregates `participant audit-dp --share` sends, from a real DPAudit's report."""
    numbers = {"epsilon_lower_bound": 0.1, "max_provable": 0.9, "canaries": 20, "guesses": 6,
               "correct": 4, "delta": 1e-5, "claimed_epsilon": 3.0, "canaries_needed": 900}
    verdict = Verdict(metric="dp_one_run", title="DP-SGD delivers its epsilon (one-run audit)",
                      value="epsilon >= 0.10 proven", threshold="t", calibration="c",
                      status=status, alpha=0.05, numbers=numbers)
    audit = DPAudit(canaries=20, canaries_included=11, training_examples=64, guesses=6,
                    correct=4, epsilon_lower_bound=0.1, max_provable=0.9, confidence=0.95,
                    accountant_epsilon=3.0, claimed_epsilon=3.0, delta=1e-5,
                    noise_multiplier=1.0, steps=5, verdicts=[verdict])
    context = {"data": "npz:/site/private.npz", "model": "convnet", "epochs": 1,
               "batch_size": 16, "max_grad_norm": 1.0}
    return shareable_aggregates(dp_audit_json(audit, context))


def _with(**changes) -> bytes:
    return pack_json({**_dp_aggregates(), **changes})


def _verdict_with(**changes) -> bytes:
    agg = _dp_aggregates()
    return pack_json({**agg, "verdicts": [{**agg["verdicts"][0], **changes}]})


@pytest.mark.parametrize("payload", [
    _with(result={**_dp_aggregates()["result"], "scores": 0.5}),   # a key no DP result has
    _with(result={**_dp_aggregates()["result"], "canaries": [0.1, 0.9]}),  # a per-canary list
    _with(result={k: v for k, v in _dp_aggregates()["result"].items() if k != "correct"}),
    _with(sizes={"canaries": 20, "images": 64}),
    _with(context={"data": "npz:/site/private.npz"}),
    _verdict_with(numbers={"scores": 0.3}),
    _verdict_with(metric="nn_share"),
    _verdict_with(status="maybe"),
    _with(flagged=True),  # a flag the verdicts do not carry
    _with(verdicts=[_dp_aggregates()["verdicts"][0]] * 2),
])
def test_malformed_dp_reports_are_refused(consortium, coordinator, payload):
    """A DP report off its kind's own key set is refused 'malformed', journaled, not stored."""
    with (AuditClient(consortium.participant_config("p00"), timeout_s=10) as client,
          pytest.raises(ProtocolError) as refused):
        client.request(Kind.AUDIT_REPORT, payload=payload, reply=Kind.ACK)
    assert refused.value.reason == "malformed"
    assert not (consortium.state_dir / "audits").exists()
    assert any(e.get("kind") == "AUDIT_REPORT" and e.get("reason") == "malformed"
               for e in _events(consortium, "refused"))


def test_participant_audit_dp_share_sends_the_aggregates(consortium, coordinator, tmp_path):
    """`participant audit-dp --share` runs locally and shares a report the coordinator keeps;
    the valid shape (inconclusive included) is accepted; a report naming no request of the
    sender is refused 'not-requested'."""
    config = consortium.participant_config("p02", state_dir=str(tmp_path / "p02"), privacy=DP,
                                           partition={"clients": 50, "index": 0})
    cfg = write_config(tmp_path / "p02.toml", config)
    with redirect_stdout(io.StringIO()) as out:
        assert main(["participant", "audit-dp", "--config", str(cfg), "--share",
                     "--canaries", "20", "--epochs", "1", "--width", "4", "--depth", "1",
                     "--max-examples", "64", "--timeout", "10"]) == 0
    assert "shared the aggregate numbers" in out.getvalue()
    stored = json.loads((consortium.state_dir / "audits" / "dp-audit" / "p02.json").read_text())
    local = json.loads((tmp_path / "p02" / "audits" / "dp_audit.json").read_text())
    assert stored["request"] is None and stored["aggregates"] == shareable_aggregates(local)
    assert "context" not in stored["aggregates"]  # the site's data spec stays at the site

    with AuditClient(consortium.participant_config("p00"), timeout_s=10) as client:
        client.share(_dp_aggregates("inconclusive"))
    assert (consortium.state_dir / "audits" / "dp-audit" / "p00.json").exists()
    site = RawClient(consortium, consortium.identity("p01"))
    try:
        site.send(site.frames(Kind.AUDIT_REPORT, 0, payload=pack_json(_dp_aggregates()),
                              meta={"request": "0123456789abcdef"}))
        reject = site.recv(5, kind=Kind.REJECT)
    finally:
        site.close()
    assert reject is not None and reject.header.meta["reason"] == "not-requested"
    assert not (consortium.state_dir / "audits" / "dp-audit" / "p01.json").exists()
    assert verify_journal(consortium.state_dir / "journal.jsonl") > 0


def test_the_agent_checks_requests_as_strictly_as_the_coordinator():
    """Unknown audits, unknown options, options out of bounds or of the wrong type, extra keys
    and bad ids are refused 'malformed' by the agent's own parser."""
    good = AuditRequest("0123456789abcdef", "dp-sgd", {"canaries": 20, "lr": 1})
    assert parse_request(encode_request(good)) == good
    bad = [
        AuditRequest("0123456789abcdef", "synthetic", {}),
        AuditRequest("0123456789abcdef", "dp-sgd", {"path": 1}),
        AuditRequest("0123456789abcdef", "dp-sgd", {"canaries": 10**7}),
        AuditRequest("0123456789abcdef", "dp-sgd", {"epochs": 1.5}),
        AuditRequest("0123456789abcdef", "dp-sgd", {"epochs": True}),
        AuditRequest("0123456789abcdef", "dp-sgd", {"confidence": 1.0}),
        AuditRequest("../../etc", "dp-sgd", {}),
    ]
    for request in bad:
        with pytest.raises(ProtocolError) as refused:
            parse_request(encode_request(request))
        assert refused.value.reason == "malformed", request
    extra = pack_json({"request": good.id, "audit": "dp-sgd", "options": {}, "noise": 0})
    with pytest.raises(ProtocolError):
        parse_request(extra)
    assert set(DP_OPTIONS) <= {f.name for f in fields(DPAuditOptions)}  # each one has a meaning


def _request_message(request: AuditRequest):
    """AUDIT_REQUEST as the agent's verifier hands it over (real envelope, coordinator-signed)."""
    frames = encode(Kind.AUDIT_REQUEST, session=SESSION, round=0, sender="coordinator",
                    signing_key=Ed25519PrivateKey.generate(), payload=encode_request(request),
                    meta={"request": request.id})
    return Message(parse_header(frames[0]), frames[2])


def test_the_agent_audits_only_between_rounds_and_never_twice(consortium, tmp_path):
    """A request waits while local training runs, then runs in its own thread; delivered
    again once answered, it is answered from the report on disk, not run again."""
    config = consortium.participant_config("p00", state_dir=str(tmp_path / "p00"), privacy=DP,
                                           audit={"dp_on_request": True})
    audits = RequestedAudits(config, local_parts(tiny_dataset(80, 10), 1)[0],
                             get_logger("participant"))
    request = AuditRequest("00112233445566ff", "dp-sgd", OPTIONS)
    assert audits.receive(_request_message(request)) == []
    assert audits.receive(_request_message(request)) == []  # delivered twice: queued once
    assert audits.step(training=True) == [] and audits.running is None  # a round is training
    assert audits.step(training=False) == [] and audits.running is not None
    replies: list = []
    wait_until(lambda: replies.extend(audits.step(training=True)) or replies, 120,
               "the audit to finish")
    (kind, payload, meta), = replies
    assert kind is Kind.AUDIT_REPORT and meta == {"request": request.id}
    report = json.loads(payload)
    again = audits.receive(_request_message(request))  # the answer was lost: answer again
    assert again == [(Kind.AUDIT_REPORT, payload, meta)] and audits.running is None
    assert report["result"]["canaries"] == 20 and not audits.waiting

    too_large = AuditRequest("00112233445566aa", "dp-sgd", {"canaries": 6000})
    (kind, _, meta), = audits.receive(_request_message(too_large))
    assert kind is Kind.AUDIT_DECLINE and meta["reason"] == "audit_too_large"


def test_an_unanswered_request_survives_a_coordinator_restart(consortium, stack, tmp_path):
    """Requests are durable: a restarted coordinator still delivers one nobody answered."""
    first = Running(Coordinator(consortium.coordinator_config()))
    with AdminClient(consortium.admin_config(OPERATOR, timeout_s=10.0)) as admin:
        request = admin.request_audit("p02", "dp-sgd", {"epochs": 2})
    first.stop()
    second = Running(Coordinator(consortium.coordinator_config()))
    stack.callback(second.stop)
    site = RawClient(consortium, consortium.identity("p02"))
    stack.callback(site.close)
    site.send(site.frames(Kind.HELLO, 0, payload=pack_json({"num_examples": 50})))
    delivered = site.recv(5, kind=Kind.AUDIT_REQUEST)
    assert delivered is not None and parse_request(delivered.payload).id == request["id"]
    assert _requests(consortium)[request["id"]]["state"] == "delivered"
