"""Coverage-guided fuzz targets (atheris) for everything the coordinator decodes from a peer.

Each target feeds bytes to one decoding path and fails on any exception other than the
ProtocolError refusal that path is allowed to raise (a crash there would stop the daemon):

    envelope      header bytes + payload, signed by an enrolled key, through the Verifier
    update        an UPDATE whose meta JSON and payload are fuzzed, correctly enveloped, decoded
                  against a model manifest (the meta, the safetensors header, dtypes, values)
    tensors       a safetensors payload against the manifest
    hello         a HELLO's JSON summary (data summary, the site's budget, the TASK keys it reads)
    audit_report  an AUDIT_REPORT's JSON aggregates (a synthetic or a one-run DP audit's)
    audit_request an operator's ADMIN_REQUEST_AUDIT payload (the coordinator's parser) and an
                  AUDIT_REQUEST payload (the agent's parser); the first byte picks which
    task          a TASK's train/model meta JSON and payload, as a participant decodes it

Run one: ``python tests/fuzz_protocol.py TARGET [CORPUS_DIR] -max_total_time=60`` (extra
arguments go to libFuzzer). ``python tests/fuzz_protocol.py --write-seeds`` rewrites the small
seed corpus in ``tests/fuzz_corpus/TARGET/`` from real messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["latentfl"]):
    import torch
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from latentfl.audits.shareable import DP_RESULT_KEYS, DP_SETTINGS_KEYS
    from latentfl.errors import ProtocolError
    from latentfl.models import model_manifest
    from latentfl.platform.coordinator.audits.service import validate_aggregates
    from latentfl.platform.protocol import (
        Kind,
        ReplayGuard,
        Verifier,
        canonical_json,
        pack_json,
        unpack_tensors,
    )
    from latentfl.platform.wire.audit_request import (
        AuditRequest,
        encode_command,
        encode_request,
        parse_command,
        parse_request,
    )
    from latentfl.platform.wire.hello import decode_hello, encode_hello
    from latentfl.platform.wire.payloads import (
        decode_task,
        decode_update,
        encode_task,
        encode_update,
    )
    from latentfl.strategies import ModelSpec, Task, Update
    from latentfl.training import TrainConfig

CORPUS = Path(__file__).parent / "fuzz_corpus"
SENDER = "p00"
SESSION = "fuzz"
MAX_BYTES = 1 << 20
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SPEC = ModelSpec("convnet", 10, (3, 8, 8), {"width": 4, "depth": 1})
MANIFEST = model_manifest(SPEC.build())
FOREVER = 1e18  # clock skew and replay window: any timestamp is current, so fuzzing goes on


def _verifier() -> Verifier:
    return Verifier({SENDER: KEY.public_key()}, session=SESSION, clock_skew_s=FOREVER,
                    replay=ReplayGuard(window_s=FOREVER), max_bytes=MAX_BYTES)


def _envelope(kind: Kind, meta: object, payload: bytes) -> list[bytes]:
    """Frames of a correctly signed message whose meta is whatever the fuzzer made."""
    header = {"version": 1, "kind": kind.value, "session": SESSION, "round": 1,
              "sender": SENDER, "nonce": "0" * 32, "timestamp": 1.0e9,
              "payload_len": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest(),
              "meta": meta}
    raw = canonical_json(header)
    return [raw, KEY.sign(raw), payload]


def _split(data: bytes) -> tuple[bytes, bytes]:
    """Two byte strings from one input: a 2-byte length, then the first, then the rest."""
    n = int.from_bytes(data[:2].ljust(2, b"\0"), "little")
    return data[2:2 + n], data[2 + n:]


def _meta(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return {}


def envelope(data: bytes) -> None:
    header, payload = _split(data)
    _verifier().verify([header, KEY.sign(header), payload], user_id=SENDER)


def update(data: bytes) -> None:
    meta, payload = _split(data)
    try:
        frames = _envelope(Kind.UPDATE, _meta(meta), payload)
    except ValueError:  # json.dumps refused a NaN the fuzzer wrote: not a wire message
        return
    decode_update(_verifier().verify(frames, user_id=SENDER), MANIFEST, max_bytes=MAX_BYTES)


def tensors(data: bytes) -> None:
    unpack_tensors(data, MANIFEST, MAX_BYTES)


def hello(data: bytes) -> None:
    decode_hello(data)


def audit_report(data: bytes) -> None:
    validate_aggregates(data)


def audit_request(data: bytes) -> None:
    if not data:
        return
    (parse_command if data[0] % 2 else parse_request)(data[1:])


def task(data: bytes) -> None:
    meta, payload = _split(data)
    try:
        frames = _envelope(Kind.TASK, _meta(meta), payload)
    except ValueError:
        return
    verifier = Verifier({SENDER: KEY.public_key()}, session=SESSION, clock_skew_s=FOREVER,
                        replay=ReplayGuard(window_s=FOREVER), max_bytes=MAX_BYTES)
    decode_task(verifier.verify(frames, user_id=SENDER), max_bytes=MAX_BYTES)


TARGETS = {f.__name__: f for f in (envelope, update, tensors, hello, audit_report,
                                    audit_request, task)}


def _join(first: bytes, rest: bytes) -> bytes:
    return len(first).to_bytes(2, "little") + first + rest


def seeds() -> dict[str, list[bytes]]:
    """Real messages of each kind, the starting points of the fuzzer."""
    weights = {n: torch.zeros(s, dtype=getattr(torch, d)) for n, s, d in MANIFEST.entries}
    payload, meta = encode_update(Update(SENDER, 1, weights, num_examples=5, num_steps=1,
                                         metrics={"loss": 0.5}, class_counts=(1, 2, 2)))
    task_payload, task_meta = encode_task(Task(1, weights, TrainConfig(), method="feddgm"),
                                          SPEC, MANIFEST.digest, accepted={"method"})
    header = _envelope(Kind.HEARTBEAT, {}, b"")[0]
    report = {"kind": "synthetic-audit", "flagged": False, "sizes": {"train": 10},
              "verdicts": [{"metric": "nn_share", "status": "pass", "title": "t", "value": "v",
                            "p_value": 0.5, "alpha": 0.05, "numbers": {"share": 0.5}}]}
    dp_report = {
        "kind": "dp-audit", "flagged": False, "sizes": {"canaries": 20, "training_examples": 64},
        "result": {**{k: 1 for k in DP_RESULT_KEYS + DP_SETTINGS_KEYS}, "claimed_epsilon": None},
        "verdicts": [{"metric": "dp_one_run", "status": "inconclusive", "title": "t",
                      "value": "v", "p_value": None, "alpha": 0.05,
                      "numbers": {"epsilon_lower_bound": 0.1, "canaries_needed": 900}}]}
    options = {"canaries": 20, "epochs": 1, "lr": 0.1}
    return {
        "envelope": [_join(header, b""), _join(b"{}", b"x")],
        "update": [_join(canonical_json(meta), payload)],
        "tensors": [payload, b"\x02\0\0\0\0\0\0\0{}"],
        "hello": [pack_json({"num_examples": 50, "classes": [1, 2]}),
                  encode_hello({"num_examples": 50, "class_counts": [20, 30]}, max_epsilon=8.0)],
        "audit_report": [pack_json(report), pack_json(dp_report)],
        "audit_request": [b"\x01" + encode_command("dp-sgd", options),
                          b"\x00" + encode_request(AuditRequest("0123456789abcdef", "dp-sgd",
                                                                 options))],
        "task": [_join(canonical_json(task_meta), task_payload)],
    }


def write_seeds() -> None:
    for name, items in seeds().items():
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(items):
            (folder / f"seed-{i}").write_bytes(item)


def run(target: str, args: list[str]) -> None:
    decode = TARGETS[target]

    def one_input(data: bytes) -> None:
        with contextlib.suppress(ProtocolError):  # a refusal: REJECT, and the daemon goes on
            decode(data)

    atheris.Setup([sys.argv[0], *args], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-seeds"]:
        write_seeds()
    elif len(sys.argv) > 1 and sys.argv[1] in TARGETS:
        run(sys.argv[1], sys.argv[2:])
    else:
        sys.exit(f"usage: {sys.argv[0]} --write-seeds | TARGET [CORPUS] [libFuzzer options]; "
                 f"TARGET is one of {sorted(TARGETS)}")
