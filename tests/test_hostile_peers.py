"""A hostile enrolled peer: a raw pyzmq client with p00's real CURVE and Ed25519 keys sends
crafted messages over real CURVE on 127.0.0.1. Each is refused with its reason, journaled, and
the coordinator still answers a heartbeat afterwards."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import secrets
import struct
import time

import pytest
import torch
import zmq
from safetensors.torch import save as st_save

from daemon_helpers import RawClient, Running, make_consortium
from latentfl.platform.coordinator import Coordinator, read_journal
from latentfl.platform.coordinator.refusals import RefusalCoalescer
from latentfl.platform.crypto import Identity, curve_fingerprint, load_identity
from latentfl.platform.protocol import Kind, canonical_json, pack_json, unpack_tensors
from latentfl.platform.supervisor import wait_until
from latentfl.platform.wire.payloads import encode_update
from latentfl.strategies import Update

IDS = ["p00", "p01"]
CANARY = "/tmp/latentfl-hostile-canary"


class _Explodes:
    """Unpickling this would create CANARY: nothing from the network may ever be unpickled."""

    def __reduce__(self):
        return (open, (CANARY, "w"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One coordinator (every refusal journaled) and a raw client holding a TASK's weights."""
    consortium = make_consortium(tmp_path_factory.mktemp("hostile"), IDS)
    config = consortium.coordinator_config(min_participants=1, rounds=1,
                                           max_message_bytes=2**20)
    daemon = Coordinator(config)
    daemon.refusals = RefusalCoalescer(burst=10**9)  # the suite reads every refusal's line
    coord = Running(daemon)
    client = Hostile(consortium, consortium.identity("p00"))
    client.send(client.frames(Kind.HELLO, 0, pack_json({"num_examples": 50})))
    task = client.recv(kind=Kind.TASK)
    assert task is not None
    yield consortium, config, client, unpack_tensors(task.payload)
    client.close()
    coord.stop()


class Hostile(RawClient):
    """The raw client, knowing the consortium's key folders (to sign with another's key)."""

    def __init__(self, consortium, identity: Identity) -> None:
        super().__init__(consortium, identity)
        self.consortium = consortium

    def key_of(self, pid: str):
        return load_identity(self.consortium.keys / "participants" / pid).signing_key


def _header(client: RawClient, **changes) -> dict:
    """A well-formed HEARTBEAT header from p00 with an empty payload, fields replaced."""
    return {"version": 1, "kind": "HEARTBEAT", "session": client.session, "round": 1,
            "sender": client.identity.id, "nonce": secrets.token_hex(16),
            "timestamp": time.time(), "meta": {}, "payload_len": 0,
            "payload_sha256": hashlib.sha256(b"").hexdigest(), **changes}


def _sign(client: RawClient, header: dict, key=None) -> list[bytes]:
    """Frames of ``header`` as canonical JSON, signed by p00's key or ``key``."""
    return _signed_raw(client, canonical_json(header), key)


def _signed_raw(client: RawClient, raw: bytes, key=None) -> list[bytes]:
    """Frames of header bytes ``raw`` (anything at all), signed by p00's key or ``key``."""
    return [raw, (key or client.identity.signing_key).sign(raw), b""]


def _update(client, weights, round=1, **meta_changes) -> list[bytes]:
    """An UPDATE of ``weights`` whose meta fields are replaced, signed as p00 (built by hand:
    the project's encoder refuses values the protocol does not allow)."""
    payload, meta = encode_update(Update("p00", round, weights, num_examples=50, num_steps=2))
    header = _header(client, kind="UPDATE", round=round, meta={**meta, **meta_changes},
                     payload_len=len(payload), payload_sha256=hashlib.sha256(payload).hexdigest())
    return [*_sign(client, header)[:2], payload]


def _tensors(client, tensors: dict, round=1) -> list[bytes]:
    _, meta = encode_update(Update("p00", round, {}, num_examples=50, num_steps=2))
    return client.frames(Kind.UPDATE, round, st_save(tensors), meta)


def _raw_payload(client, payload: bytes) -> list[bytes]:
    _, meta = encode_update(Update("p00", 1, {}, num_examples=50, num_steps=2))
    return client.frames(Kind.UPDATE, 1, payload, meta)


def _retyped(weights, dtype):
    return {n: t.to(dtype) for n, t in weights.items()}


def _safetensors_header(weights, change) -> bytes:
    """A safetensors payload whose JSON header ``change`` rewrote (data left as it was)."""
    data = st_save(weights)
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    change(header)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + size:]


def _torch_save(weights) -> bytes:
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    return buffer.getvalue()


def _first(weights):
    return next(iter(weights))


# (id, expected reason, frames(client, weights))
CASES = [
    # identity and signature
    ("signed-by-another-key", "bad-signature",
     lambda c, w: c.frames(Kind.HEARTBEAT, 1, signing_key=c.key_of("p01"))),
    ("zero-signature", "bad-signature",
     lambda c, w: [c.frames(Kind.HEARTBEAT, 1)[0], b"\0" * 64, b""]),
    ("short-signature", "frames", lambda c, w: [c.frames(Kind.HEARTBEAT, 1)[0], b"\0" * 63, b""]),
    ("claims-another-sender", "sender-mismatch",
     lambda c, w: _sign(c, _header(c, sender="p01"), key=c.key_of("p01"))),
    # session, round, time
    ("wrong-session", "wrong-session", lambda c, w: _sign(c, _header(c, session="other"))),
    ("version-2", "version", lambda c, w: _sign(c, _header(c, version=2))),
    ("update-for-round-7", "wrong-round", lambda c, w: _update(c, w, round=7)),
    ("an-hour-old", "stale", lambda c, w: _sign(c, _header(c, timestamp=time.time() - 3600.0))),
    ("far-future", "stale", lambda c, w: _sign(c, _header(c, timestamp=4.0e9))),
    # envelope and JSON abuse
    ("two-frames", "frames", lambda c, w: c.frames(Kind.HEARTBEAT, 1)[:2]),
    ("four-frames", "frames", lambda c, w: [*c.frames(Kind.HEARTBEAT, 1), b""]),
    ("header-not-json", "malformed", lambda c, w: _signed_raw(c, b"\x80not json")),
    ("header-not-canonical", "malformed",
     lambda c, w: _signed_raw(c, json.dumps(_header(c)).encode())),
    ("header-duplicate-key", "malformed",
     lambda c, w: _signed_raw(c, canonical_json(_header(c))[:-1] + b',"round":2}')),
    ("header-extra-key", "malformed", lambda c, w: _sign(c, _header(c, extra=1))),
    ("round-2^60", "malformed", lambda c, w: _sign(c, _header(c, round=2**60))),
    ("round-negative", "malformed", lambda c, w: _sign(c, _header(c, round=-1))),
    ("timestamp-1e400", "malformed", lambda c, w: _signed_raw(c, canonical_json(
        _header(c)).replace(b'"timestamp":', b'"timestamp":1e400,"x":'))),
    ("meta-int-10^30", "malformed", lambda c, w: _sign(c, _header(c, meta={"n": 10**30}))),
    ("meta-lone-surrogate", "malformed", lambda c, w: _sign(c, _header(c, meta={"s": "\ud800"}))),
    ("meta-nested", "malformed", lambda c, w: _sign(c, _header(c, meta={"o": {"a": 1}}))),
    ("header-9000-bytes", "too-large",
     lambda c, w: _sign(c, _header(c, meta={"s": "x" * 1000, **{f"k{i}": "y" * 1000
                                                                 for i in range(8)}}))),
    ("payload-swapped-after-signing", "bad-hash",
     lambda c, w: [*c.frames(Kind.HEARTBEAT, 1, b"abc")[:2], b"abd"]),
    ("coordinator-kind", "unexpected-kind", lambda c, w: c.frames(Kind.TASK, 1)),
    ("hello-absurd-integer", "malformed",
     lambda c, w: c.frames(Kind.HELLO, 0, b'{"num_examples":' + b"9" * 40 + b"}")),
    ("hello-float-overflow", "malformed",
     lambda c, w: c.frames(Kind.HELLO, 0, b'{"num_examples":1e999}')),
    ("hello-deep-nesting", "malformed",
     lambda c, w: c.frames(Kind.HELLO, 0, b'{"a":' + b"[" * 200 + b"]" * 200 + b"}")),
    ("hello-huge-array", "malformed",
     lambda c, w: c.frames(Kind.HELLO, 0, pack_json({"a": list(range(10000))}))),
    ("hello-bad-utf8", "malformed", lambda c, w: c.frames(Kind.HELLO, 0, b'{"a":"\xff"}')),
    ("hello-lone-surrogate", "malformed",
     lambda c, w: c.frames(Kind.HELLO, 0, b'{"a":"\\udc00"}')),
    ("hello-long-string", "malformed",
     lambda c, w: c.frames(Kind.HELLO, 0, pack_json({"a": "x" * 20000}))),
    ("hello-not-an-object", "malformed", lambda c, w: c.frames(Kind.HELLO, 0, b"[1,2]")),
    ("update-num-examples-2^60", "malformed", lambda c, w: _update(c, w, num_examples=2**60)),
    ("update-num-examples-0", "malformed", lambda c, w: _update(c, w, num_examples=0)),
    ("update-metrics-overflow", "malformed", lambda c, w: _update(c, w, metrics='{"l":1e999}')),
    ("update-metrics-string", "malformed", lambda c, w: _update(c, w, metrics='{"l":"x"}')),
    # payload abuse
    *[(f"dtype-{d}", "manifest", lambda c, w, d=d: _tensors(c, _retyped(w, getattr(torch, d))))
      for d in ("float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
                "bool", "float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64",
                "complex64")],
    ("nan", "non-finite",
     lambda c, w: _tensors(c, {**w, _first(w): torch.full_like(w[_first(w)], math.nan)})),
    ("inf", "non-finite",
     lambda c, w: _tensors(c, {**w, _first(w): torch.full_like(w[_first(w)], math.inf)})),
    ("missing-tensor", "manifest",
     lambda c, w: _tensors(c, {n: t for n, t in w.items() if n != _first(w)})),
    ("extra-tensor", "manifest", lambda c, w: _tensors(c, {**w, "extra": torch.zeros(2)})),
    ("renamed-tensor", "manifest", lambda c, w: _tensors(
        c, {("other" if n == _first(w) else n): t for n, t in w.items()})),
    ("wrong-shape", "manifest", lambda c, w: _tensors(c, {**w, _first(w): torch.zeros(3, 3)})),
    ("no-tensors", "manifest", lambda c, w: _tensors(c, {})),
    ("pickle", "malformed", lambda c, w: _raw_payload(c, pickle.dumps(_Explodes()))),
    ("torch-save", "malformed", lambda c, w: _raw_payload(c, _torch_save(w))),
    ("empty-payload", "malformed", lambda c, w: _raw_payload(c, b"")),
    ("header-size-lies", "malformed",
     lambda c, w: _raw_payload(c, struct.pack("<Q", 2**62) + b"{}")),
    ("offsets-past-the-end", "malformed", lambda c, w: _raw_payload(c, _safetensors_header(
        w, lambda h: h[_first(w)].update(data_offsets=[0, 2**40])))),
    ("dtype-unknown-code", "manifest", lambda c, w: _raw_payload(c, _safetensors_header(
        w, lambda h: h[_first(w)].update(dtype="F4")))),
    ("over-the-size-limit", "too-large", lambda c, w: _raw_payload(c, b"\0" * (2**20 + 16))),
]


@pytest.mark.parametrize(("case", "reason", "make"), CASES, ids=[c[0] for c in CASES])
def test_hostile_message_is_refused_journaled_and_service_continues(served, case, reason, make):
    """The crafted message gets a REJECT naming the reason and a journal line, and the
    coordinator then answers a heartbeat."""
    _, config, client, weights = served
    client.send(make(client, weights))
    reject = client.recv(kind=Kind.REJECT)
    assert reject is not None, f"{case}: no REJECT"
    assert reject.header.meta["reason"] == reason, reject.header.meta
    refused = [e for e in read_journal(config.state_dir / "journal.jsonl")
               if e["event"] == "refused"]
    assert refused[-1]["reason"] == reason and refused[-1]["peer"] == "p00"
    client.send(client.frames(Kind.HEARTBEAT, 1))
    assert client.recv(kind=Kind.HEARTBEAT) is not None, f"{case}: no answer afterwards"


def test_replay_and_stale_messages_leave_the_replay_log_as_they_should(served):
    """A replay is refused; a message refused as stale leaves no nonce in the replay log."""
    _, config, client, _ = served
    frames = client.frames(Kind.HEARTBEAT, 1)
    client.send(frames)
    assert client.recv(kind=Kind.HEARTBEAT) is not None
    client.send(frames)
    assert client.recv(kind=Kind.REJECT).header.meta["reason"] == "replay"
    future = _sign(client, _header(client, timestamp=4.0e9))
    client.send(future)
    assert client.recv(kind=Kind.REJECT).header.meta["reason"] == "stale"
    nonce = json.loads(future[0])["nonce"]
    log = (config.state_dir / "replay.log").read_text()
    assert json.loads(frames[0])["nonce"] in log and nonce not in log


def test_pickle_payload_is_never_unpickled(served):
    """The pickle case above did not run its payload's code."""
    assert not os.path.exists(CANARY)


def test_unenrolled_key_is_journaled_as_zap_refused(served):
    """A CURVE key nobody enrolled is refused at the handshake and journaled with its
    fingerprint and no participant id."""
    consortium, config, _, _ = served
    public, secret = zmq.curve_keypair()
    own = consortium.identity("p00")
    stranger = Identity("p00", public, secret, own.signing_key, own.verify_key)
    client = RawClient(consortium, stranger)
    try:
        client.send(client.frames(Kind.HEARTBEAT, 1))
        wait_until(lambda: any(e["event"] == "zap_refused" for e in read_journal(
            config.state_dir / "journal.jsonl")), 10, "the zap_refused line")
    finally:
        client.close()
    line = next(e for e in read_journal(config.state_dir / "journal.jsonl")
                if e["event"] == "zap_refused")
    assert line["fingerprint"] == curve_fingerprint(public) and line["participant"] is None


def test_a_flood_of_refusals_is_coalesced_in_the_journal(tmp_path):
    """Hundreds of refusals for one (peer, reason) cost a few journal lines and one count line;
    every one is still answered."""
    consortium = make_consortium(tmp_path, IDS)
    config = consortium.coordinator_config(min_participants=5)
    coord = Running(Coordinator(config))
    client = RawClient(consortium, consortium.identity("p00"))
    flood = 300
    try:
        for _ in range(flood):
            client.send(_sign(client, _header(client, session="other")))
        answered = sum(client.recv(kind=Kind.REJECT) is not None for _ in range(flood))
        client.send(client.frames(Kind.HEARTBEAT, 0))
        assert client.recv(kind=Kind.HEARTBEAT) is not None
    finally:
        client.close()
        coord.stop()
    assert answered == flood
    lines = [e for e in read_journal(config.state_dir / "journal.jsonl")
             if e["event"] == "refused" and e["reason"] == "wrong-session"]
    assert len(lines) <= 4 + flood // 100  # a burst per interval, plus the count lines
    assert sum(e["count"] for e in lines) == flood
    assert any("more refusals from p00: wrong-session" in e.get("detail", "") for e in lines)
