"""The participant's decisions driven message by message, without a socket: what a site answers
each coordinator message with, and what time alone makes it send."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from daemon_helpers import SESSION, local_parts, make_consortium, tiny_dataset
from latentfl.config import load_config
from latentfl.errors import Reason, RefusedError
from latentfl.log import get_logger
from latentfl.models import model_manifest
from latentfl.platform.participant import ParticipantConfig
from latentfl.platform.participant.connection import load_enrolment
from latentfl.platform.participant.session import ParticipantSession
from latentfl.platform.protocol import (
    GATED_TASK_META,
    Kind,
    Message,
    encode,
    parse_header,
    unpack_tensors,
)
from latentfl.platform.wire.payloads import encode_task
from latentfl.strategies import Aggregation, ModelSpec, Task
from latentfl.training import TrainConfig

SPEC = ModelSpec("convnet", options={"width": 4, "depth": 1})
TRAIN = TrainConfig(epochs=1, batch_size=16, lr=0.05, max_steps=2)


@pytest.fixture(scope="module")
def data():
    return local_parts(tiny_dataset(60, 10), 1)[0]


def _session(tmp_path, data, **overrides) -> ParticipantSession:
    consortium = make_consortium(tmp_path, ["p00"])
    config = consortium.participant_config("p00", **{"device": "cpu", **overrides})
    return ParticipantSession(config, load_enrolment(config), data, get_logger("participant"))


def _from_coordinator(kind: Kind, round: int, payload: bytes = b"", **meta) -> Message:
    """A message as the session gets it from the agent's verifier (the signer is not checked
    here: the verifier did that)."""
    frames = encode(kind, session=SESSION, round=round, sender="coordinator",
                    signing_key=Ed25519PrivateKey.generate(), payload=payload, meta=meta)
    return Message(parse_header(frames[0]), frames[2])


def _task(round: int, aggregation: Aggregation = Aggregation.PLAIN, *, train=None,
          spec: ModelSpec = SPEC, normalised: bool = False, method: str | None = "fedavg"
          ) -> Message:
    model = spec.build()
    config = TRAIN if train is None else TrainConfig(**train)
    task = Task(round, dict(model.state_dict()), config, aggregation, normalised, method)
    payload, meta = encode_task(task, spec, model_manifest(model).digest, GATED_TASK_META)
    return _from_coordinator(Kind.TASK, round, payload, **meta)


def _upload(session: ParticipantSession, deadline_s: float = 60.0):
    """Step the session until its training ends; what it sends then."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        out = [o for o in session.step(time.time()) if o.kind is not Kind.HEARTBEAT]
        if out:
            return out
        time.sleep(0.02)
    raise AssertionError(f"no upload within {deadline_s}s")


def test_a_task_is_trained_uploaded_resent_and_acknowledged(tmp_path, data):
    """A TASK becomes an UPDATE of the task's tensors; unacknowledged it is sent again with the
    same payload; its ACK ends the re-sends and marks the round done."""
    session = _session(tmp_path, data, ack_timeout=1.0)
    assert [o.kind for o in session.connected(time.time())] == [Kind.HELLO]
    assert session.on_message(_task(1), time.time()) == []  # training runs in a thread
    (update,) = _upload(session)
    assert update.kind is Kind.UPDATE and update.round == 1
    assert set(unpack_tensors(update.payload)) == set(SPEC.build().state_dict())
    (again,) = [o for o in session.step(time.time() + 2.0) if o.kind is Kind.UPDATE]
    assert again.payload == update.payload
    ack = _from_coordinator(Kind.ACK, 1, sha256=session.pending.digest)
    assert session.on_message(ack, time.time()) == []
    assert session.pending is None and session.done_round == 1
    assert session.on_message(_task(1), time.time()) == []  # a done round is not trained again


def test_an_upload_carries_the_digest_its_ack_is_matched_with(tmp_path, data):
    """The upload's Outgoing carries the payload's SHA-256 computed once for the ACK match, the
    envelope signs that digest, and the coordinator's ACK of it is taken."""
    session = _session(tmp_path, data)
    session.on_message(_task(1), time.time())
    (update,) = _upload(session)
    digest = hashlib.sha256(update.payload).hexdigest()
    assert update.payload_sha256 == session.pending.digest == digest
    frames = encode(update.kind, session=SESSION, round=1, sender="p00",
                    signing_key=Ed25519PrivateKey.generate(), payload=update.payload,
                    meta=update.meta, payload_sha256=update.payload_sha256)
    assert parse_header(frames[0]).payload_sha256 == digest
    ack = _from_coordinator(Kind.ACK, 1, sha256=parse_header(frames[0]).payload_sha256)
    assert session.on_message(ack, time.time()) == []
    assert session.pending is None and session.done_round == 1


def test_a_repeated_task_gets_the_pending_upload_again(tmp_path, data):
    """The coordinator that sends a round's TASK again (it lost the upload) gets the same
    payload back at once, without a second training."""
    session = _session(tmp_path, data)
    session.on_message(_task(1), time.time())
    (update,) = _upload(session)
    (again,) = session.on_message(_task(1), time.time())
    assert again.kind is Kind.UPDATE and again.payload == update.payload
    assert session.pending.attempts == 2


def test_a_task_the_site_policy_refuses_is_declined_naming_the_rule(tmp_path, data):
    """A plain task at a site that allows only secagg is declined before any training, with
    the policy rule as the reason, and the round counts as done."""
    session = _session(tmp_path, data, privacy={"policy": {"allowed_modes": ["secagg"]}})
    (decline,) = session.on_message(_task(3), time.time())
    assert decline.kind is Kind.DECLINE and decline.meta["reason"] == "mode_not_allowed"
    assert session.done_round == 3 and session.pending is None


def test_a_malformed_task_is_declined_as_malformed(tmp_path, data):
    """A TASK whose settings do not parse is declined 'malformed' with a sentence."""
    bad = _task(1)
    meta = {**bad.header.meta, "train": '{"epochs": -1}'}
    session = _session(tmp_path, data)
    (decline,) = session.on_message(_from_coordinator(Kind.TASK, 1, bad.payload, **meta),
                                    time.time())
    assert decline.kind is Kind.DECLINE and decline.meta["reason"] == Reason.MALFORMED
    assert "TASK settings are refused" in decline.meta["detail"]


def test_a_final_reject_drops_the_pending_upload(tmp_path, data):
    """A REJECT of the pending upload whose reason re-sending cannot cure stops the re-sends;
    one that names another round does not."""
    session = _session(tmp_path, data)
    session.on_message(_task(1), time.time())
    _upload(session)
    other = _from_coordinator(Kind.REJECT, 1, reason="late", detail="closed",
                              refused_kind="UPDATE", refused_round=2)
    session.on_message(other, time.time())
    assert session.pending is not None
    late = _from_coordinator(Kind.REJECT, 1, reason="late", detail="closed",
                             refused_kind="UPDATE", refused_round=1)
    session.on_message(late, time.time())
    assert session.pending is None


def test_a_reject_of_this_participant_for_good_ends_the_session(tmp_path, data):
    """A REJECT saying this participant is unknown raises RefusedError with the reason."""
    session = _session(tmp_path, data)
    reject = _from_coordinator(Kind.REJECT, 0, reason="unknown-sender", detail="revoked",
                               refused_kind="HEARTBEAT", refused_round=0)
    with pytest.raises(RefusedError) as refused:
        session.on_message(reject, time.time())
    assert refused.value.reason is Reason.UNKNOWN_SENDER


def test_a_restarted_coordinator_gets_a_new_hello(tmp_path, data):
    """A heartbeat with another boot id than the last one is answered with HELLO."""
    session = _session(tmp_path, data)
    assert session.on_message(_from_coordinator(Kind.HEARTBEAT, 0, boot="a" * 16,
                                                phase="waiting"), time.time()) == []
    (hello,) = session.on_message(_from_coordinator(Kind.HEARTBEAT, 0, boot="b" * 16,
                                                    phase="waiting"), time.time())
    assert hello.kind is Kind.HELLO


def test_heartbeats_follow_the_configured_interval(tmp_path, data):
    """Time alone makes a heartbeat due once per heartbeat_interval, carrying the done round."""
    session = _session(tmp_path, data, heartbeat_interval=5.0)
    start = time.time()
    session.connected(start)
    assert session.step(start + 1.0) == []
    (beat,) = session.step(start + 5.5)
    assert beat.kind is Kind.HEARTBEAT and beat.round == 0
    assert session.step(start + 6.0) == []


def test_the_finished_session_says_bye(tmp_path, data):
    """STATUS finished ends the session with a BYE when the site exits when finished."""
    session = _session(tmp_path, data, exit_when_finished=True)
    (bye,) = session.on_message(_from_coordinator(Kind.STATUS, 4, phase="finished"), time.time())
    assert bye.kind is Kind.BYE and bye.round == 4 and session.finished


def test_a_task_with_an_unknown_meta_key_is_declined_naming_it(tmp_path, data):
    """A TASK whose meta holds a key the protocol does not define is declined 'malformed',
    and the DECLINE's sentence names the key."""
    good = _task(2)
    session = _session(tmp_path, data)
    (decline,) = session.on_message(
        _from_coordinator(Kind.TASK, 2, good.payload, **good.header.meta, priority=1),
        time.time())
    assert decline.kind is Kind.DECLINE and decline.meta["reason"] == Reason.MALFORMED
    assert "'priority'" in decline.meta["detail"] and session.pending is None


def test_a_malformed_control_message_is_ignored(tmp_path, data):
    """An ACK or REJECT whose meta the protocol does not define changes nothing."""
    session = _session(tmp_path, data)
    session.on_message(_task(1), time.time())
    _upload(session)
    digest = session.pending.digest
    assert session.on_message(_from_coordinator(Kind.ACK, 1, sha256=digest, extra=1),
                              time.time()) == []
    assert session.on_message(_from_coordinator(Kind.REJECT, 1, reason="late"),
                              time.time()) == []
    assert session.pending is not None and session.pending.digest == digest


STRICT = Path(__file__).resolve().parents[1] / "examples" / "participant-strict-hospital.toml"


@pytest.mark.parametrize(("train", "spec", "rule"), [
    ({"epochs": 5}, SPEC, "training_out_of_bounds"),
    ({"lr": 0.5}, SPEC, "training_out_of_bounds"),
    ({"batch_size": 8}, SPEC, "training_out_of_bounds"),
    ({"prox_mu": 0.0}, ModelSpec("resnet18", options={}), "model_not_allowed"),
])
def test_a_task_outside_the_sites_approval_is_declined_naming_the_rule(tmp_path, data, train,
                                                                       spec, rule):
    """The strict hospital example's [policy.tasks] declines a TASK with too many epochs, too
    large a learning rate, too small a batch or an unapproved model, naming the rule, before
    any training."""
    policy = load_config(STRICT, ParticipantConfig).policy
    session = _session(tmp_path, data, policy=dataclasses.asdict(policy))
    ok = {"epochs": 1, "batch_size": 32, "lr": 0.05, "max_steps": 2}
    (decline,) = session.on_message(_task(1, train={**ok, **train}, spec=spec), time.time())
    assert decline.kind is Kind.DECLINE and decline.meta["reason"] == rule
    assert "[policy.tasks]" in decline.meta["detail"] and session.pending is None


@pytest.mark.parametrize("method", ["feddgm", None], ids=["feddgm", "not-named"])
def test_a_method_the_site_did_not_approve_is_declined_naming_the_rule(tmp_path, data,
                                                                       method):
    """The strict hospital example runs only FedAvg, FedProx and DynaFed: a FedDGM TASK, or
    one from a coordinator that does not name its method, is declined method_not_allowed."""
    policy = load_config(STRICT, ParticipantConfig).policy
    session = _session(tmp_path, data, policy=dataclasses.asdict(policy))
    ok = {"epochs": 1, "batch_size": 32, "lr": 0.05, "max_steps": 2}
    (decline,) = session.on_message(_task(1, train=ok, method=method), time.time())
    assert decline.meta["reason"] == "method_not_allowed"
    detail = decline.meta["detail"]
    assert ("method 'feddgm'" if method else "a method it does not name") in detail
    assert "this site accepts fedavg, fedprox, dynafed (the site's [policy.tasks])" in detail


def test_rounds_past_the_sites_limit_and_other_methods_are_declined(tmp_path, data):
    """max_rounds declines a TASK of a later round; local_methods declines FedNova's
    normalised update; a TASK within every bound is trained."""
    session = _session(tmp_path, data, policy={"tasks": {"max_rounds": 2,
                                                         "local_methods": ["plain"]}})
    (decline,) = session.on_message(_task(1, normalised=True), time.time())
    assert decline.meta["reason"] == "method_not_allowed"
    (decline,) = session.on_message(_task(3), time.time())
    assert decline.meta["reason"] == "rounds_exceeded"
    session = _session(tmp_path / "ok", data, policy={"tasks": {"max_rounds": 2}})
    assert session.on_message(_task(2), time.time()) == []
    assert _upload(session)[0].kind is Kind.UPDATE


def test_each_step_of_a_round_is_logged_with_a_summary_sentence(tmp_path, data):
    """Task received, training started, trained, sent (with its digest) and acknowledged are
    each one event with a short sentence naming the round, as the coordinator's lines are."""
    session = _session(tmp_path, data)
    with capture_logs() as logs:
        session.on_message(_task(1), time.time())
        (update,) = _upload(session)
        session.on_message(_from_coordinator(Kind.ACK, 1, sha256=session.pending.digest),
                           time.time())
    summaries = {e["event"]: e.get("summary", "") for e in logs}
    for event in ("task_received", "training_started", "trained", "update_sent",
                  "update_acknowledged"):
        assert summaries[event].startswith("round 1: ") and len(summaries[event]) < 120, event
    assert hashlib.sha256(update.payload).hexdigest()[:12] in summaries["update_sent"]
