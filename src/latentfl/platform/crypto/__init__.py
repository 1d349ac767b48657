"""Keys, roster and ZAP authentication: who may connect and whose signatures count.

See ``keys`` for the key-folder layout, ``roster`` for ``roster.toml`` and ``zap`` for the
authenticator the coordinator runs on its CURVE server socket.
"""

from latentfl.platform.crypto.keys import (
    COORDINATOR_ID,
    Identity,
    check_participant_id,
    curve_key_from_text,
    load_identity,
)
from latentfl.platform.crypto.roster import (
    ROSTER_FILE,
    Roster,
    RosterEntry,
    add_participant,
    init_consortium,
    load_roster,
    revoke_participant,
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
    "add_participant",
    "check_participant_id",
    "curve_key_from_text",
    "init_consortium",
    "load_identity",
    "load_roster",
    "make_curve_client",
    "make_curve_server",
    "peer_user_id",
    "revoke_participant",
    "sign",
    "start_authenticator",
    "verify",
    "verify_key_from_hex",
    "verify_key_to_hex",
]
