"""Control messages are types: each encodes to the meta its decoder reads back, and every
decoder refuses a meta key the protocol does not define, naming it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon_helpers import RawClient, Running, make_consortium
from latentfl.errors import ProtocolError, Reason
from latentfl.models import model_manifest
from latentfl.platform.coordinator import Coordinator, read_journal
from latentfl.platform.protocol import (
    Ack,
    Decline,
    Heartbeat,
    Kind,
    Message,
    Reject,
    TaskOptions,
    UpdateForm,
    encode,
    pack_json,
    parse_header,
)
from latentfl.platform.wire.hello import accepted_task_meta, decode_hello, encode_hello
from latentfl.platform.wire.payloads import decode_task, decode_update, encode_task, encode_update
from latentfl.privacy import Aggregation, PolicyRule
from latentfl.strategies import ModelSpec, Task, Update
from latentfl.training import TrainConfig

SPEC = ModelSpec("convnet", options={"width": 4, "depth": 1})
SRC = Path(__file__).resolve().parent.parent / "src" / "latentfl"


def _message(kind: Kind, payload: bytes = b"", **meta) -> Message:
    frames = encode(kind, session="s", round=1, sender="p00",
                    signing_key=Ed25519PrivateKey.generate(), payload=payload, meta=meta)
    return Message(parse_header(frames[0]), frames[2])


def _options() -> TaskOptions:
    return TaskOptions(TrainConfig(epochs=2), SPEC, Aggregation.SECAGG,
                       model_manifest(SPEC.build()).digest, UpdateForm.NORMALISED,
                       secagg='{"attempt":"0123456789abcdef"}', method="dynafed")


@pytest.mark.parametrize("message", [
    Reject(Reason.LATE, "round 3 closed", Kind.UPDATE, 3), Reject(Reason.MALFORMED, "bad"),
    Decline(Reason.TRAINING_FAILED, "out of memory"),
    Decline(PolicyRule.BUDGET_EXCEEDED, "epsilon 9 > 8"),
    Ack("ab" * 32), Ack(request="0123456789abcdef"), Ack("cd" * 32, "0123456789abcdef"),
    Heartbeat(), Heartbeat("00ff00ff00ff00ff", "collecting"), _options(),
], ids=lambda m: type(m).__name__)
def test_each_control_message_decodes_to_what_was_encoded(message):
    """from_meta(meta()) gives back the same message, for every control message type."""
    assert type(message).from_meta(message.meta()) == message


@pytest.mark.parametrize("message", [
    Reject(Reason.LATE, "x", Kind.UPDATE, 3), Decline(Reason.TRAINING_FAILED, "x"),
    Ack("ab" * 32), Heartbeat("00ff00ff00ff00ff", "waiting"), _options(),
], ids=lambda m: type(m).__name__)
def test_an_unknown_meta_key_is_refused_naming_it(message):
    """A key the kind does not define is refused 'malformed', and the sentence names it."""
    with pytest.raises(ProtocolError, match="'encrypted'") as refused:
        type(message).from_meta({**message.meta(), "encrypted": True})
    assert refused.value.reason is Reason.MALFORMED


def test_a_decline_reason_outside_the_closed_union_is_refused():
    """A DECLINE reason that is neither a protocol Reason nor a privacy rule is malformed."""
    with pytest.raises(ProtocolError, match="is not one this protocol defines"):
        Decline.from_meta({"reason": "because", "detail": "x"})
    assert Decline.from_meta({"reason": "secagg_certificate", "detail": "x"}).reason \
        is PolicyRule.SECAGG_CERTIFICATE


def test_every_privacy_rule_raised_is_a_policy_rule():
    """Each rule a PrivacyError names in the sources is a PolicyRule (so a DECLINE of it
    can be encoded)."""
    raised = set()
    for path in SRC.rglob("*.py"):
        raised |= set(re.findall(r'PrivacyError\(\s*"([a-z_]+)"', path.read_text()))
    assert raised and raised <= {r.value for r in PolicyRule}


def test_an_update_or_task_with_an_unknown_meta_key_is_refused():
    """UPDATE, MASKED_UPDATE and TASK meta with a key the protocol does not define (the old
    `encrypted: true`, an `attempt` on a plain update) are refused 'malformed' naming it."""
    weights = dict(SPEC.build().state_dict())
    payload, meta = encode_update(Update("p00", 1, weights, num_examples=5, num_steps=1))
    manifest = model_manifest(SPEC.build())
    assert decode_update(_message(Kind.UPDATE, payload, **meta), manifest, max_bytes=2**24)
    for kind, extra in ((Kind.UPDATE, {"encrypted": True}), (Kind.UPDATE, {"attempt": "a"}),
                        (Kind.MASKED_UPDATE, {"attempt": "0" * 16, "normalised": False})):
        key = next(k for k in extra if kind is Kind.UPDATE or k != "attempt")
        with pytest.raises(ProtocolError, match=f"'{key}'") as refused:
            decode_update(_message(kind, payload, **meta, **extra), None, max_bytes=2**24)
        assert refused.value.reason is Reason.MALFORMED
    task_payload, task_meta = encode_task(Task(1, weights, TrainConfig()), SPEC, manifest.digest)
    task, _ = decode_task(_message(Kind.TASK, task_payload, **task_meta), max_bytes=2**24)
    assert torch.equal(task.weights[next(iter(weights))], weights[next(iter(weights))])
    with pytest.raises(ProtocolError, match="'normalised'"):
        decode_task(_message(Kind.TASK, task_payload, **task_meta, normalised=True),
                    max_bytes=2**24)


def test_the_normalised_update_travels_as_a_typed_option():
    """FedNova's normalised update is the TASK option update = 'normalised', read back as
    Task.normalised_update."""
    weights = dict(SPEC.build().state_dict())
    digest = model_manifest(SPEC.build()).digest
    payload, meta = encode_task(Task(1, weights, TrainConfig(), normalised_update=True), SPEC,
                                digest)
    assert meta["update"] == "normalised" and "normalised" not in meta
    task, _ = decode_task(_message(Kind.TASK, payload, **meta), max_bytes=2**24)
    assert task.normalised_update


@pytest.fixture
def served(tmp_path):
    consortium = make_consortium(tmp_path, ["p00", "p01"])
    config = consortium.coordinator_config(min_participants=1, rounds=1)
    coord = Running(Coordinator(config))
    client = RawClient(consortium, consortium.identity("p00"))
    try:
        client.send(client.frames(Kind.HELLO, 0, pack_json({"num_examples": 50})))
        task = client.recv(kind=Kind.TASK)
        assert task is not None
        yield config, client, task
    finally:
        client.close()
        coord.stop()


def test_the_coordinator_refuses_an_update_and_a_decline_with_an_unknown_meta_key(served):
    """Over real CURVE: an UPDATE answering the TASK and a DECLINE, each with a meta key the
    protocol does not define, get a REJECT 'malformed' naming the key, and are journaled."""
    config, client, task = served
    _, meta = encode_update(Update("p00", 1, {}, num_examples=50, num_steps=1))
    client.send(client.frames(Kind.UPDATE, 1, task.payload, {**meta, "encrypted": True}))
    client.send(client.frames(Kind.DECLINE, 1, meta={
        **Decline(Reason.TRAINING_FAILED, "x").meta(), "retry_in": 5}))
    for key in ("encrypted", "retry_in"):
        reject = Reject.from_meta(client.recv(kind=Kind.REJECT).header.meta)
        assert reject.reason is Reason.MALFORMED and f"'{key}'" in reject.detail
    refused = [e for e in read_journal(config.state_dir / "journal.jsonl")
               if e["event"] == "refused"]
    assert [e["reason"] for e in refused[-2:]] == ["malformed", "malformed"]


@pytest.mark.parametrize("method", ["", "FedAvg", "x" * 33, 7, None, "fed avg"])
def test_a_task_method_that_is_not_a_bounded_name_is_refused(method):
    """TASK meta `method` must be a short lower-case name; anything else is malformed."""
    with pytest.raises(ProtocolError, match="TASK method is") as refused:
        TaskOptions.from_meta({**_options().meta(), "method": method})
    assert refused.value.reason is Reason.MALFORMED


def test_the_task_method_goes_only_to_an_agent_whose_hello_lists_it():
    """A gated TASK key is left out for an agent that did not say it decodes it (an older
    agent's strict decoder would refuse the TASK), and included, then decoded, for one that
    did."""
    task = Task(1, {}, TrainConfig(), method="feddgm")
    digest = model_manifest(SPEC.build()).digest
    assert "method" not in encode_task(task, SPEC, digest)[1]
    hello = decode_hello(encode_hello({"num_examples": 5}, max_epsilon=None))
    meta = encode_task(task, SPEC, digest, accepted_task_meta(hello))[1]
    assert TaskOptions.from_meta(meta).method == "feddgm"


@pytest.mark.parametrize("budget", [0, -1.0, True, "8", 1e7, [8.0]])
def test_a_hello_budget_out_of_bounds_is_refused(budget):
    """HELLO max_epsilon is null or a finite number in (0, 1e6]; anything else is malformed
    (JSON has no NaN or infinity, so the bound also covers them)."""
    with pytest.raises(ProtocolError, match="HELLO max_epsilon is") as refused:
        decode_hello(pack_json({"num_examples": 5, "max_epsilon": budget}))
    assert refused.value.reason is Reason.MALFORMED


def test_a_hello_says_whether_it_states_a_budget():
    """An older agent's HELLO (no max_epsilon key) states none; null is "no budget set"."""
    old = decode_hello(pack_json({"num_examples": 5, "class_counts": [2, 3]}))
    assert (old.budget_stated, old.max_epsilon, old.task_meta) == (False, None, frozenset())
    none = decode_hello(encode_hello({"num_examples": 5}, max_epsilon=None))
    assert (none.budget_stated, none.max_epsilon) == (True, None)
    assert decode_hello(encode_hello({"num_examples": 5}, max_epsilon=8)).max_epsilon == 8.0
    with pytest.raises(ProtocolError, match="HELLO task_meta is"):
        decode_hello(pack_json({"task_meta": ["method", "Bad Key"]}))
