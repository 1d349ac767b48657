"""Parties of one secagg round in one process, for the socket-free secagg and ckks tests."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from latentfl.privacy.secagg import RoundParams, SecAggClient, SecAggServer


def make_parties(ids: Sequence[str], length: int, *, min_cohort: int = 2, round: int = 1
                 ) -> tuple[dict[str, SecAggClient], SecAggServer]:
    """A client per id, each with a fresh signing key, and the server that knows their keys."""
    signing = {pid: Ed25519PrivateKey.generate() for pid in ids}
    verify = {pid: key.public_key() for pid, key in signing.items()}
    params = RoundParams(session="s", round=round, min_cohort=min_cohort)
    clients = {pid: SecAggClient(pid, params, signing_key=signing[pid], verify_keys=verify)
               for pid in ids}
    return clients, SecAggServer(params, verify, length)


def share_all(clients: dict[str, SecAggClient], server: SecAggServer) -> None:
    """Run the key and share phases with every client answering."""
    for c in clients.values():
        server.add_advert(c.advertise())
    key_list = server.close_adverts()
    for pid, c in clients.items():
        server.add_shares(pid, c.share_keys(key_list))
    for holder, sealed in server.close_shares().items():
        clients[holder].receive_shares(sealed)
