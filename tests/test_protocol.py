"""The signed envelope, its refusal reasons in order, the durable replay guard, the payload codec."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import stat
import time
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import latentfl
from latentfl.errors import ProtocolError, StateError
from latentfl.platform.protocol import (
    FROM_COORDINATOR,
    FROM_OPERATOR,
    FROM_PARTICIPANT,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    TO_OPERATOR,
    Kind,
    Reason,
    ReplayGuard,
    Verifier,
    decode,
    encode,
    pack_json,
    pack_tensors,
    peek_header,
    unpack_json,
    unpack_tensors,
)
from latentfl.platform.wire.audit_request import parse_command, parse_request

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
PAYLOAD = b"x" * 1000


def message(**overrides):
    options = dict(
        session="s1", round=2, sender="site-a", signing_key=KEY, payload=PAYLOAD,
        meta={"num_examples": 50, "epsilon": 1.25, "reason": None},
    )
    options.update(overrides)
    return encode(options.pop("kind", Kind.UPDATE), **options)


def check(frames, guard=None, **overrides):
    options = dict(
        user_id="site-a", verify_key=KEY.public_key(), session="s1", expected_round=2,
        replay=guard if guard is not None else ReplayGuard(None), max_bytes=1 << 20,
    )
    options.update(overrides)
    return decode(frames, **options)


def refused(reason, frames, **overrides):
    with pytest.raises(ProtocolError) as info:
        check(frames, **overrides)
    assert info.value.reason is Reason(reason), str(info.value)
    return info.value


def signed(obj, payload=PAYLOAD, key=KEY):
    """Frames for an arbitrary header object, validly signed (to reach checks past the signature)."""
    raw = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return [raw, key.sign(raw), payload]


def header_obj(frames):
    return json.loads(frames[0])


# --- the envelope ---------------------------------------------------------------------------


def test_round_trip_and_canonical_header():
    """A message decodes to its fields; the header is canonical JSON signed as sent."""
    frames = message()
    assert len(frames) == 3 and len(frames[1]) == 64
    obj = header_obj(frames)
    assert frames[0] == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    assert obj["payload_sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    KEY.public_key().verify(frames[1], frames[0])  # independent check with cryptography
    msg = check(frames)
    h = msg.header
    assert (h.version, h.kind, h.session, h.round, h.sender) == (
        PROTOCOL_VERSION, Kind.UPDATE, "s1", 2, "site-a"
    )
    assert h.meta == {"num_examples": 50, "epsilon": 1.25, "reason": None}
    assert len(h.nonce) == 32 and abs(h.timestamp - time.time()) < 5
    assert msg.payload == PAYLOAD and msg.raw_header == frames[0]
    assert peek_header(frames) == h


def test_every_message_has_a_fresh_nonce():
    """Two encodings of the same content carry different nonces."""
    assert header_obj(message())["nonce"] != header_obj(message())["nonce"]


def test_encode_refuses_bad_fields():
    """encode refuses ids, sessions and meta that could not be decoded."""
    for bad in (
        {"sender": "bad id"}, {"session": ""}, {"round": -1},
        {"meta": {"x": float("nan")}}, {"meta": {"CamelCase": 1}}, {"meta": {"x": [1]}},
    ):
        with pytest.raises(ValueError):
            message(**bad)


@pytest.mark.parametrize("count", [0, 1, 2, 4])
def test_wrong_frame_count_is_refused(count):
    """Anything but three frames is refused with 'frames'."""
    frames = (message() + [b"extra"])[:count]
    refused("frames", frames)


def test_signature_frame_of_wrong_size_is_refused():
    """A signature frame that is not 64 bytes is refused with 'frames'."""
    frames = message()
    refused("frames", [frames[0], frames[1][:63], frames[2]])


def test_oversized_message_and_header_are_refused():
    """A message over max_bytes or a header over MAX_HEADER_BYTES is refused with 'too-large'."""
    frames = message(payload=b"y" * 5000)
    refused("too-large", frames, max_bytes=4000)
    big = [b"{" + b" " * MAX_HEADER_BYTES + b"}", b"s" * 64, b""]
    refused("too-large", big)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe",
        b"[1,2,3]",
        b'{"kind":"UPDATE"}',
        b'{"a":1,"a":2}',
        b'{"x":NaN}',
        b'{"x":' + b"[" * 4000 + b"]" * 4000 + b"}",
    ],
)
def test_malformed_header_is_refused(raw):
    """Headers that are not a strict JSON object with the protocol's keys are 'malformed'."""
    refused("malformed", [raw[:MAX_HEADER_BYTES], KEY.sign(raw[:MAX_HEADER_BYTES]), b""])


@pytest.mark.parametrize(
    "edit",
    [
        lambda o: o.update(extra=1),
        lambda o: o.update(kind="EXECUTE"),
        lambda o: o.update(round=True),
        lambda o: o.update(round="2"),
        lambda o: o.update(timestamp=int(o["timestamp"])),
        lambda o: o.update(nonce="ABCD" * 8),
        lambda o: o.update(payload_len=-1),
        lambda o: o.update(meta={"nested": {"a": 1}}),
        lambda o: o.update(sender="../../etc"),
    ],
)
def test_header_with_wrong_fields_is_malformed(edit):
    """Headers with an unknown key or a field of the wrong type or form are 'malformed'."""
    obj = header_obj(message())
    edit(obj)
    refused("malformed", signed(obj))


def test_non_canonical_header_is_malformed():
    """A header with spaces or unsorted keys is 'malformed' even when validly signed."""
    obj = header_obj(message())
    raw = json.dumps(obj, indent=1).encode()
    refused("malformed", [raw, KEY.sign(raw), PAYLOAD])


def test_sender_must_equal_authenticated_peer():
    """A header sender other than the ZAP User-Id is refused with 'sender-mismatch'."""
    frames = message()
    refused("sender-mismatch", frames, user_id="site-b")
    refused("sender-mismatch", frames, user_id=None)


def test_bad_signature_is_refused():
    """A signature by another key, or a header changed after signing, is 'bad-signature'."""
    frames = message()
    refused("bad-signature", frames, verify_key=OTHER.public_key())
    flipped = bytes([frames[1][0] ^ 1]) + frames[1][1:]
    refused("bad-signature", [frames[0], flipped, frames[2]])
    obj = header_obj(frames)
    obj["round"] = 3
    raw = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    refused("bad-signature", [raw, frames[1], frames[2]], expected_round=3)


def test_unsupported_version_is_refused():
    """A validly signed header of another protocol version is refused with 'version'."""
    obj = header_obj(message())
    obj["version"] = PROTOCOL_VERSION + 1
    refused("version", signed(obj))


def test_wrong_session_and_round_are_refused():
    """Another session is 'wrong-session'; another round is 'wrong-round'; None skips."""
    refused("wrong-session", message(session="s0"))
    refused("wrong-round", message(round=1))
    assert check(message(round=7), expected_round=None).header.round == 7
    assert check(message(session="other"), session=None).header.session == "other"


def test_replay_is_refused_in_memory():
    """The same frames accepted once are refused the second time with 'replay'."""
    guard = ReplayGuard(None)
    frames = message()
    check(frames, guard=guard)
    refused("replay", frames, replay=guard)
    check(message(), guard=guard)  # a new encoding of the same content is a new message


def test_replay_is_refused_after_reloading_guard_from_disk(tmp_path):
    """A nonce recorded before a restart is still refused after the guard is reloaded."""
    path = tmp_path / "nonces.log"
    guard = ReplayGuard(path)
    frames = message()
    check(frames, guard=guard)
    guard.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reloaded = ReplayGuard(path)
    refused("replay", frames, replay=reloaded)
    other_sender = message(sender="site-b")
    check(other_sender, guard=reloaded, user_id="site-b")
    reloaded.close()


def test_stale_timestamps_are_refused():
    """A message outside the clock-skew window, in the past or future, is 'stale'."""
    now = time.time()
    refused("stale", message(), now=now + 301)
    refused("stale", message(), now=now - 301)
    assert check(message(), now=now + 200).header.round == 2
    refused("stale", message(), now=now + 61, clock_skew_s=60)


def test_payload_hash_and_length_are_checked():
    """A payload changed or cut after signing is 'bad-hash'."""
    frames = message()
    refused("bad-hash", [frames[0], frames[1], b"y" + PAYLOAD[1:]])
    refused("bad-hash", [frames[0], frames[1], PAYLOAD[:-1]])


def test_a_precomputed_payload_digest_is_signed_as_given_and_still_checked(monkeypatch):
    """encode takes the caller's digest without hashing again (an upload hashes once); the
    receiver checks the payload against it all the same, so a wrong one is 'bad-hash'."""
    digest = hashlib.sha256(PAYLOAD).hexdigest()

    def no_hash(*args, **kwargs):
        raise AssertionError("encode hashed a payload whose digest it was given")

    with monkeypatch.context() as m:
        m.setattr("latentfl.platform.protocol._header.hashlib.sha256", no_hash)
        frames = message(payload_sha256=digest)
    assert header_obj(frames)["payload_sha256"] == digest
    assert check(frames).payload == PAYLOAD
    wrong = hashlib.sha256(b"y" + PAYLOAD[1:]).hexdigest()
    refused("bad-hash", message(payload_sha256=wrong))


def test_checks_run_in_the_design_order():
    """When several things are wrong, the earliest check in DESIGN.md's order names the reason."""
    frames = message(round=9, session="zz")
    # wrong sender beats bad signature beats wrong session/round
    refused("sender-mismatch", frames, user_id="site-b", verify_key=OTHER.public_key())
    refused("bad-signature", frames, verify_key=OTHER.public_key())
    refused("wrong-session", frames)
    # the timestamp is checked before the nonce: a replayed stale message is reported as stale,
    # and a stale message leaves no nonce; the nonce of a refused round is not used either
    guard = ReplayGuard(None)
    good = message()
    check(good, guard=guard)
    refused("stale", good, replay=guard, now=time.time() + 1000)
    refused("replay", good, replay=guard)
    future = message()
    refused("stale", future, replay=guard, now=time.time() - 1000)
    assert guard.remembered == 1
    stale_new = message()
    refused("wrong-round", stale_new, replay=guard, expected_round=5)
    check(stale_new, guard=guard)


def test_verifier_uses_roster_keys_and_drops_revoked():
    """Verifier accepts enrolled signers only; update_keys removes a revoked one."""
    verifier = Verifier({"site-a": KEY.public_key()}, session="s1", replay=ReplayGuard(None))
    assert verifier.verify(message(), user_id="site-a", expected_round=2).header.sender == "site-a"
    with pytest.raises(ProtocolError) as info:
        verifier.verify(message(sender="site-b"), user_id="site-b")
    assert info.value.reason == "unknown-sender"
    verifier.update_keys({})
    with pytest.raises(ProtocolError) as info:
        verifier.verify(message(), user_id="site-a")
    assert info.value.reason == "unknown-sender"


def test_replay_window_must_cover_clock_skew():
    """A guard that forgets nonces sooner than the timestamp window allows is a setup error."""
    with pytest.raises(ValueError, match="shorter"):
        check(message(), replay=ReplayGuard(None, window_s=10), clock_skew_s=300)


# --- the replay guard file ------------------------------------------------------------------


def test_replay_guard_prunes_expired_entries_and_survives_torn_tail(tmp_path):
    """Expired nonces are dropped at load, a torn last line is ignored, others are kept."""
    path = tmp_path / "nonces.log"
    now = time.time()
    path.write_text(f"{now - 1000!r} site-a {'0' * 32}\n{now!r} site-a {'1' * 32}\n1234.5 site-")
    guard = ReplayGuard(path, window_s=300)
    assert guard.remembered == 1
    assert guard.seen_or_add("site-a", "1" * 32, now)
    assert not guard.seen_or_add("site-a", "0" * 32, now)
    guard.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(line.count(" ") == 2 for line in lines)


def test_replay_guard_refuses_corrupt_file(tmp_path):
    """A corrupt line inside the file is a StateError, not a silent reset."""
    path = tmp_path / "nonces.log"
    path.write_text(f"garbage\n{time.time()!r} site-a {'1' * 32}\n")
    with pytest.raises(StateError, match="line 1"):
        ReplayGuard(path)


# --- payload codec --------------------------------------------------------------------------


def tensors():
    return {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "fc.bias": torch.zeros(10, dtype=torch.float64),
        "steps": torch.tensor([3], dtype=torch.int64),
    }


def test_tensor_round_trip_is_exact():
    """pack/unpack keeps names, dtypes, shapes and values bit for bit."""
    original = tensors()
    back = unpack_tensors(pack_tensors(original))
    assert set(back) == set(original)
    for name, t in original.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_tensors_are_refused(value):
    """A NaN or infinite value anywhere is refused with 'non-finite'."""
    bad = tensors()
    bad["conv.weight"][1, 2, 0, 1] = value
    with pytest.raises(ProtocolError) as info:
        unpack_tensors(pack_tensors(bad))
    assert info.value.reason == "non-finite" and "conv.weight" in str(info.value)


def test_garbage_and_oversized_payloads_are_refused():
    """Bytes that are not safetensors are 'malformed'; too many bytes are 'too-large'."""
    for data in (b"", b"\x00" * 16, b"\xff" * 8 + b"{}", pack_tensors(tensors())[:-5]):
        with pytest.raises(ProtocolError) as info:
            unpack_tensors(data)
        assert info.value.reason == "malformed"
    with pytest.raises(ProtocolError) as info:
        unpack_tensors(pack_tensors(tensors()), max_bytes=100)
    assert info.value.reason == "too-large"


def test_payload_checked_against_model_manifest():
    """Weights of the wrong shape, missing or extra tensors are refused with 'manifest'."""
    from latentfl.models import model_manifest, state_to_tensors

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    manifest = model_manifest(model)
    good = state_to_tensors(model)
    assert set(unpack_tensors(pack_tensors(good), manifest)) == set(good)
    wrong_shape = dict(good, **{"0.weight": torch.zeros(3, 5)})
    missing = {k: v for k, v in good.items() if k != "1.bias"}
    extra = dict(good, surprise=torch.zeros(1))
    wrong_dtype = dict(good, **{"1.bias": torch.zeros(2, dtype=torch.float64)})
    for bad in (wrong_shape, missing, extra, wrong_dtype):
        with pytest.raises(ProtocolError) as info:
            unpack_tensors(pack_tensors(bad), manifest)
        assert info.value.reason == "manifest"


def test_json_payloads_are_strict():
    """JSON payloads round-trip canonically; non-objects, duplicates, NaN, oversize are refused."""
    data = pack_json({"b": 1, "a": [1, 2], "c": {"d": "e"}})
    assert data == b'{"a":[1,2],"b":1,"c":{"d":"e"}}'
    assert unpack_json(data) == {"a": [1, 2], "b": 1, "c": {"d": "e"}}
    for bad, reason in (
        (b"[1]", "malformed"), (b'{"a":1,"a":1}', "malformed"), (b'{"a":Infinity}', "malformed"),
        (b"{", "malformed"), (b'{"a":"' + b"x" * 200 + b'"}', "too-large"),
    ):
        with pytest.raises(ProtocolError) as info:
            unpack_json(bad, max_bytes=100)
        assert info.value.reason == reason


def test_kinds_cover_the_protocol():
    """The message kinds the daemons need all exist, valued by their wire names, each sent by
    one side (HEARTBEAT by both)."""
    names = {"HELLO", "TASK", "UPDATE", "ENCRYPTED_UPDATE", "DECRYPT_TASK", "AGGREGATE",
             "DECLINE", "ACK", "REJECT", "HEARTBEAT", "STATUS", "BYE", "FETCH_SYNTHETIC",
             "SYNTHETIC", "AUDIT_REPORT", "AUDIT_REQUEST", "AUDIT_DECLINE"}
    names |= {"SECAGG_KEYS", "SECAGG_KEY_LIST", "SECAGG_SHARES", "SECAGG_SHARE_INBOX",
              "MASKED_UPDATE", "SECAGG_SURVIVORS", "SECAGG_SIGNATURE", "SECAGG_UNMASK",
              "SECAGG_REVEAL"}  # secagg mode
    admin = {"ADMIN_STATUS", "ADMIN_PAUSE", "ADMIN_RESUME", "ADMIN_ABORT_ROUND", "ADMIN_REMOVE",
             "ADMIN_READMIT", "ADMIN_JOURNAL", "ADMIN_REQUEST_AUDIT", "ADMIN_RESULT"}
    assert {k.value for k in Kind} == names | admin
    assert Kind("TASK") is Kind.TASK and Kind.TASK == "TASK"
    assert set(Kind) == FROM_PARTICIPANT | FROM_COORDINATOR | FROM_OPERATOR | TO_OPERATOR
    assert {Kind.HEARTBEAT} == FROM_PARTICIPANT & FROM_COORDINATOR
    assert not FROM_OPERATOR & (FROM_PARTICIPANT | FROM_COORDINATOR | TO_OPERATOR)


def test_a_kind_from_the_wrong_side_is_refused_last():
    """A participant's verifier refuses an UPDATE ('unexpected-kind'), after every envelope
    check: a replayed one is still a replay."""
    guard = ReplayGuard(None)
    update = message()
    refused("unexpected-kind", update, replay=guard, accepts=FROM_COORDINATOR)
    refused("replay", update, replay=guard, accepts=FROM_COORDINATOR)
    assert check(message(kind=Kind.DECRYPT_TASK), accepts=FROM_COORDINATOR).header.kind is (
        Kind.DECRYPT_TASK)
    refused("unexpected-kind", message(kind=Kind.TASK), accepts=FROM_PARTICIPANT)
    refused("unexpected-kind", message(kind=Kind.ADMIN_PAUSE), accepts=FROM_PARTICIPANT)
    refused("unexpected-kind", message(kind=Kind.UPDATE), accepts=FROM_OPERATOR)


def test_reasons_are_one_spelling_with_a_meaning_and_finality():
    """Every refusal reason is lowercase-hyphenated, explained, and says if a re-send can help."""
    for reason in Reason:
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", reason.value) and reason.meaning, reason
        assert str(reason) == reason.value and Reason.parse(reason.value) is reason
    assert Reason.LATE.final and Reason.BAD_CIPHERTEXT.final and Reason.INTERNAL.final
    assert not (Reason.REPLAY.final or Reason.STALE.final or Reason.BAD_SIGNATURE.final)
    assert Reason.parse("budget_exceeded") is None  # a site-policy rule, not a protocol reason


def test_every_refusal_in_the_sources_names_a_reason_member():
    """No ProtocolError in src/ is raised with a loose string for its reason."""
    root = Path(latentfl.__file__).parent
    loose = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "ProtocolError"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                loose.append(f"{path.relative_to(root)}:{node.lineno}")
    assert loose == []


def test_peek_header_never_raises(tmp_path: Path):
    """peek_header returns None for junk and a header for a well-formed but unverified message."""
    assert peek_header([]) is None
    assert peek_header([b"junk", b"", b""]) is None
    assert peek_header(message(signing_key=OTHER)).sender == "site-a"


def test_replay_guard_compacts_expired_lines_while_running(tmp_path, monkeypatch):
    """Once most lines have expired, the file is rewritten with only the live ones."""
    from latentfl.platform.protocol import _replay

    monkeypatch.setattr(_replay, "_COMPACT_EVERY", 8)
    path = tmp_path / "nonces.log"
    guard = ReplayGuard(path, window_s=300, fsync=False)
    now = time.time()
    for i in range(7):
        assert not guard.seen_or_add("site-a", f"{i:032x}", now - 1000)
    assert len(path.read_text().splitlines()) == 7
    assert not guard.seen_or_add("site-b", "f" * 32, now)  # 8th add: prune and compact
    assert path.read_text().splitlines() == [f"{now!r} site-b {'f' * 32}"]
    assert guard.seen_or_add("site-b", "f" * 32, now)
    assert not guard.seen_or_add("site-c", "e" * 32, now)
    guard.close()
    assert ReplayGuard(path).remembered == 2


def test_tensor_count_is_bounded_before_decoding(monkeypatch):
    """Payloads declaring too many tensors are refused from the header, before allocation."""
    from latentfl.platform.protocol import _codec

    monkeypatch.setattr(_codec, "MAX_TENSORS", 3)
    many = {f"t{i}": torch.zeros(1) for i in range(4)}
    with pytest.raises(ProtocolError) as info:
        unpack_tensors(pack_tensors(many))
    assert info.value.reason == "too-large"
    lying = (10**6).to_bytes(8, "little") + b"{}"
    with pytest.raises(ProtocolError) as info:
        unpack_tensors(lying)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize("obj", [
    {"audit": {"": ""}, "options": {}},           # an unhashable audit name (found by fuzzing)
    {"audit": ["dp-sgd"], "options": {}},
    {"audit": "dp-sgd", "options": {"epochs": [1]}},
    {"audit": "dp-sgd", "options": {"lr": True}},
])
def test_audit_request_of_the_wrong_shape_is_malformed(obj):
    with pytest.raises(ProtocolError, match="audit request"):
        parse_command(pack_json(obj))
    with pytest.raises(ProtocolError, match="AUDIT_REQUEST"):
        parse_request(pack_json({**obj, "request": "0" * 16}))
