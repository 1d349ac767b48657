"""Parties of one secagg round in one process, for the socket-free secagg and ckks tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from latentfl.privacy.secagg import RoundParams, SecAggClient, SecAggServer, SiteFloors


def make_parties(ids: Sequence[str], length: int, *, min_cohort: int = 2, round: int = 1,
                 session: str = "s", signing: Mapping[str, Ed25519PrivateKey] | None = None,
                 floors: SiteFloors | None = None
                 ) -> tuple[dict[str, SecAggClient], SecAggServer]:
    """A client per id, each with its (by default fresh) signing key, and the server that
    knows their keys."""
    signing = dict(signing or {pid: Ed25519PrivateKey.generate() for pid in ids})
    verify = {pid: key.public_key() for pid, key in signing.items()}
    params = RoundParams(session=session, round=round, min_cohort=min_cohort)
    clients = {pid: SecAggClient(pid, params, signing_key=signing[pid], verify_keys=verify,
                                 floors=floors or SiteFloors()) for pid in ids}
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


def unmask_phase(clients: dict[str, SecAggClient], server: SecAggServer, *,
                 silent: Iterable[str] = (), unsigned: Iterable[str] = ()) -> None:
    """Close the uploads, run the consistency round (``unsigned`` survivors never sign) and
    collect the reveals of every survivor not ``silent``."""
    survivors, _ = server.close_uploads()
    unsigned = set(unsigned)
    for pid in survivors:
        clients[pid].acknowledge()
        if pid not in unsigned:
            server.add_signature(pid, clients[pid].sign_survivors(survivors))
    certificate = server.certificate()
    for pid in survivors:
        if pid not in set(silent) | unsigned:
            server.add_reveal(pid, clients[pid].reveal(certificate))
