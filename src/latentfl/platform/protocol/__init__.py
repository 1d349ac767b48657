"""The wire protocol shared by both daemons: message kinds, the signed envelope, payload codec.

It owns no socket. A message is three frames ``[header JSON, Ed25519 signature, payload]``;
``encode`` builds them, ``decode`` / ``Verifier.verify`` check them in the order DESIGN.md gives
and raise ``ProtocolError(reason, sentence)``; the ``reason`` code goes back in a REJECT.
"""

from latentfl.platform.protocol._codec import (
    DEFAULT_MAX_JSON_BYTES,
    pack_json,
    pack_tensors,
    unpack_json,
    unpack_tensors,
)
from latentfl.platform.protocol._header import (
    DEFAULT_CLOCK_SKEW_S,
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    Header,
    Kind,
    Message,
    encode,
    parse_header,
    peek_header,
)
from latentfl.platform.protocol._json import canonical_json
from latentfl.platform.protocol._replay import ReplayGuard
from latentfl.platform.protocol._verify import Verifier, decode

REASONS: dict[str, str] = {
    "frames": "wrong number of frames, or a signature frame of the wrong size",
    "too-large": "message, header or payload over its size limit",
    "malformed": "header or payload is not strict, well-formed data",
    "sender-mismatch": "header sender is not the authenticated (ZAP User-Id) peer",
    "unknown-sender": "sender is not an active participant of the roster",
    "bad-signature": "Ed25519 signature of the header does not verify",
    "version": "unsupported protocol version",
    "wrong-session": "message belongs to another session",
    "wrong-round": "message belongs to another round",
    "replay": "(sender, nonce) was already used",
    "stale": "timestamp outside the allowed clock-skew window",
    "bad-hash": "payload length or SHA-256 differs from the signed header",
    "non-finite": "a tensor holds NaN or infinite values",
    "manifest": "tensor names, shapes or dtypes do not fit the model manifest",
    "no-synthetic": "the latest checkpoint holds no synthetic set derived from the sender",
}
"""Every refusal code ``decode`` and the payload codec raise, with its meaning."""

__all__ = [
    "DEFAULT_CLOCK_SKEW_S",
    "DEFAULT_MAX_JSON_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_HEADER_BYTES",
    "PROTOCOL_VERSION",
    "REASONS",
    "Header",
    "Kind",
    "Message",
    "ReplayGuard",
    "Verifier",
    "canonical_json",
    "decode",
    "encode",
    "pack_json",
    "pack_tensors",
    "parse_header",
    "peek_header",
    "unpack_json",
    "unpack_tensors",
]
