"""The wire protocol shared by both daemons: message kinds, the signed envelope, payload codec.

It owns no socket. A message is three frames ``[header JSON, Ed25519 signature, payload]``;
``encode`` builds them, ``decode`` / ``Verifier.verify`` check them in the order DESIGN.md gives
and raise ``ProtocolError(reason, sentence)``; the reason goes back in a REJECT.

The vocabulary is closed: :class:`Kind` names every message (an encrypted update, a decrypted
aggregate, a decrypt task and a declined task are kinds of their own, not flags in ``meta``),
``FROM_PARTICIPANT`` / ``FROM_COORDINATOR`` / ``FROM_OPERATOR`` say which party may send which
(the verifier refuses the rest as ``unexpected-kind``), and :class:`Reason` names every refusal, with its meaning and
whether re-sending can ever succeed (``Reason.final``). Control messages are types too
(:class:`Reject`, :class:`Decline`, :class:`Ack`, :class:`Heartbeat`, the TASK's
:class:`TaskOptions`), each with one encoder and one strict decoder that refuses a meta key its
kind does not define.
"""

from latentfl.errors import Reason
from latentfl.platform.protocol._codec import (
    DEFAULT_MAX_JSON_BYTES,
    pack_json,
    pack_tensors,
    unpack_json,
    unpack_tensors,
)
from latentfl.platform.protocol._control import (
    MAX_DETAIL,
    Ack,
    Decline,
    DeclineReason,
    Heartbeat,
    Reject,
    check_meta_keys,
)
from latentfl.platform.protocol._header import (
    DEFAULT_CLOCK_SKEW_S,
    DEFAULT_MAX_MESSAGE_BYTES,
    FROM_COORDINATOR,
    FROM_OPERATOR,
    FROM_PARTICIPANT,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    TO_OPERATOR,
    UPDATE_KINDS,
    Header,
    Kind,
    Message,
    Outgoing,
    encode,
    parse_header,
    peek_header,
)
from latentfl.platform.protocol._json import canonical_json
from latentfl.platform.protocol._replay import ReplayGuard
from latentfl.platform.protocol._task import GATED_TASK_META, TaskOptions, UpdateForm
from latentfl.platform.protocol._verify import Verifier, decode

__all__ = [
    "DEFAULT_CLOCK_SKEW_S",
    "DEFAULT_MAX_JSON_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FROM_COORDINATOR",
    "FROM_OPERATOR",
    "FROM_PARTICIPANT",
    "GATED_TASK_META",
    "MAX_DETAIL",
    "MAX_HEADER_BYTES",
    "PROTOCOL_VERSION",
    "TO_OPERATOR",
    "UPDATE_KINDS",
    "Ack",
    "Decline",
    "DeclineReason",
    "Header",
    "Heartbeat",
    "Kind",
    "Message",
    "Outgoing",
    "Reason",
    "Reject",
    "ReplayGuard",
    "TaskOptions",
    "UpdateForm",
    "Verifier",
    "canonical_json",
    "check_meta_keys",
    "decode",
    "encode",
    "pack_json",
    "pack_tensors",
    "parse_header",
    "peek_header",
    "unpack_json",
    "unpack_tensors",
]
