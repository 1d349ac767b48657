"""Keys, roster and ZAP authentication: who may connect and whose signatures count.

See ``keys`` for the key-folder layout, ``roster`` for ``roster.toml``, ``consortium`` for the
operations behind ``latentfl keys``, and ``zap`` for the authenticator the coordinator runs on
its CURVE server socket.
"""

from latentfl.platform.crypto.consortium import (
    add_operator,
    add_participant,
    create_identity,
    init_consortium,
    revoke_operator,
    revoke_participant,
)
from latentfl.platform.crypto.keys import (
    COORDINATOR_ID,
    Identity,
    check_participant_id,
    curve_fingerprint,
    curve_key_from_text,
    load_identity,
    load_public_keys,
)
from latentfl.platform.crypto.roster import (
    ROSTER_FILE,
    Roster,
    RosterEntry,
    load_roster,
    save_roster,
)
from latentfl.platform.crypto.signing import (
    SIGNATURE_BYTES,
    sign,
    verify,
    verify_key_from_hex,
    verify_key_to_hex,
)
from latentfl.platform.crypto.zap import (
    RosterAuthenticator,
    make_curve_client,
    make_curve_server,
    peer_user_id,
    start_authenticator,
)

__all__ = [
    "COORDINATOR_ID",
    "ROSTER_FILE",
    "SIGNATURE_BYTES",
    "Identity",
    "Roster",
    "RosterAuthenticator",
    "RosterEntry",
    "add_operator",
    "add_participant",
    "check_participant_id",
    "create_identity",
    "curve_fingerprint",
    "curve_key_from_text",
    "init_consortium",
    "load_identity",
    "load_public_keys",
    "load_roster",
    "make_curve_client",
    "make_curve_server",
    "peer_user_id",
    "revoke_operator",
    "revoke_participant",
    "save_roster",
    "sign",
    "start_authenticator",
    "verify",
    "verify_key_from_hex",
    "verify_key_to_hex",
]
