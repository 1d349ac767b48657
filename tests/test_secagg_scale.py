"""A masked round's key list for 10,000 participants: encoded, parsed and used by a client."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from latentfl.platform.protocol import Kind, Message, encode, parse_header
from latentfl.platform.wire.secagg import (
    LIST_MAX_BYTES,
    decode_key_list,
    decode_survivors,
    decode_unmask,
    encode_key_list,
    encode_survivors,
    encode_unmask,
)
from latentfl.privacy.secagg import (
    MAX_PARTICIPANTS,
    Certificate,
    RoundParams,
    SecAggClient,
    degree,
)
from latentfl.privacy.secagg.keys import RoundKeys


def _message(kind: Kind, payload: bytes) -> Message:
    frames = encode(kind, session="s", round=1, sender="coordinator",
                    signing_key=Ed25519PrivateKey.generate(), payload=payload, meta={})
    return Message(parse_header(frames[0]), frames[2])


def test_survivor_set_and_certificate_of_max_participants_round_trip():
    """The survivor set and a certificate of 10,000 travel in chunks within the bound."""
    ids = [f"site-{i:05d}" for i in range(MAX_PARTICIPANTS)]
    certificate = Certificate(tuple(ids), {p: os.urandom(64) for p in ids})
    payload = encode_unmask(certificate)
    assert len(payload) <= LIST_MAX_BYTES
    assert decode_unmask(_message(Kind.SECAGG_UNMASK, payload)) == certificate
    assert decode_survivors(_message(Kind.SECAGG_SURVIVORS, encode_survivors(ids))) == ids


@pytest.mark.slow
def test_a_key_list_of_max_participants_parses_and_is_shared_over():
    """10,000 signed adverts fit the key list's bound, parse back, and a participant verifies
    them all and seals shares to its log-degree neighbourhood only."""
    params = RoundParams("s/0123456789abcdef", 1)
    signing = {f"site-{i:05d}": Ed25519PrivateKey.generate() for i in range(MAX_PARTICIPANTS)}
    adverts = [RoundKeys().advert(p, k, session=params.session, round=1)
               for p, k in signing.items()]
    me = "site-00042"
    client = SecAggClient(me, params, signing_key=signing[me],
                          verify_keys={p: k.public_key() for p, k in signing.items()})
    adverts[42] = client.advertise()
    payload = encode_key_list(adverts)
    assert len(payload) <= LIST_MAX_BYTES
    parsed = decode_key_list(_message(Kind.SECAGG_KEY_LIST, payload))
    assert parsed == adverts
    sealed = client.share_keys(parsed)
    assert len(sealed) == degree(MAX_PARTICIPANTS) == 40
