"""The consistency round: survivors sign the survivor set before any holder reveals a share.

Why. Without it a coordinator can tell each share holder a different story about who survived
(holder h hears "T survived" while holder h' hears "T dropped") and collect T's self seed from
some holders and the mask keys of T's neighbours from others: each holder obeys "never both for
one owner", yet together they hand over T's update. Bonawitz et al. (CCS 2017, the
active-adversary protocol, round ConsistencyCheck) close this: every survivor signs the survivor
set it was given, and a holder reveals only after seeing at least ``t`` valid signatures on the
*identical* set.

What is signed. :func:`survivors_message`: a domain tag, the session (which names the attempt),
the round, the *transcript* (:func:`transcript`, SHA-256 of the signed key list the signer
accepted) and the sorted survivor ids. A signature therefore cannot be replayed into another
attempt, round or key list, and signers who were shown different key lists cannot certify one
set together.

The bound. An honest participant signs one survivor set per attempt (the client refuses a
second). Two different sets each certified by ``t`` signers from one key list of ``n`` share
only corrupt signers, so they need ``n - c + 2c >= 2t`` where ``c`` participants collude with
the coordinator. With ``t = floor(2n/3) + 1`` (:func:`latentfl.privacy.secagg.keys.threshold`)
at most one set is ever certified while ``c <= 2t - n - 1`` (about n/3), and then every honest
holder reveals a survivor's self seed and a dropped owner's mask key for the *same* partition,
so the coordinator never holds both secrets of an honest participant unless ``t`` holders of it
collude (``c >= t``). The sum it unmasks then covers every honest survivor of that set; for it
to hide each one, at least two honest participants must be in it, so the colluders must also
stay below ``t - 1`` (each honest participant signs only if at least ``t - 1`` of its masking
partners are in the set, so one of them is honest and its mask key stays hidden).

With the sparse graph of SecAgg+ (Bell et al., CCS 2020) the certificate stays global (``t`` of
the whole key list), so the single-partition argument is unchanged; the share threshold and the
partner count are those of a neighbourhood of ``k + 1`` holders, ``t_k = threshold(k + 1)``.
Bell et al. bound the colluders in a neighbourhood with high probability over a random graph;
here the coordinator picks which adverts enter the key list (and colluders can re-roll theirs),
so it can re-draw the graph as often as it likes and that probabilistic bound does not survive
grinding. We state only the deterministic one: fewer than ``t_k - 1`` colluders in all.
:func:`tolerated_colluders` is the smallest of the three; docs/privacy.md tabulates it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from latentfl.errors import ProtocolError, Reason
from latentfl.privacy.secagg.keys import Advert, threshold, unhex
from latentfl.privacy.secagg.masks import degree

_TRANSCRIPT = b"latentfl/secagg/v2/key-list"
_SURVIVORS = b"latentfl/secagg/v2/survivors"


def _framed(*fields: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def transcript(adverts: Sequence[Advert], *, session: str, round: int) -> bytes:
    """SHA-256 of the signed key list (adverts in id order) bound to session and round."""
    h = hashlib.sha256(_framed(_TRANSCRIPT, session.encode(), str(round).encode()))
    for a in sorted(adverts, key=lambda a: a.pid):
        h.update(_framed(a.pid.encode(), a.share_public, a.mask_public, a.signature))
    return h.digest()


def survivors_message(survivors: Collection[str], *, session: str, round: int,
                      transcript: bytes) -> bytes:
    """What a survivor signs: the domain, session, round, transcript and the sorted set."""
    return _framed(_SURVIVORS, session.encode(), str(round).encode(), transcript,
                   *(p.encode() for p in sorted(survivors)))


def sign_survivors(signing_key: Ed25519PrivateKey, survivors: Collection[str], *, session: str,
                   round: int, transcript: bytes) -> bytes:
    """This participant's Ed25519 signature of the survivor set."""
    return signing_key.sign(survivors_message(survivors, session=session, round=round,
                                              transcript=transcript))


@dataclass(frozen=True)
class Certificate:
    """A survivor set and the survivors' signatures of it, as the coordinator forwards them."""

    survivors: tuple[str, ...]
    signatures: Mapping[str, bytes]

    def to_json(self) -> dict[str, object]:
        return {"survivors": sorted(self.survivors),
                "signatures": {p: s.hex() for p, s in sorted(self.signatures.items())}}

    @classmethod
    def from_json(cls, data: object) -> Certificate:
        """Parse a forwarded certificate; ProtocolError 'malformed' unless well-formed."""
        if not isinstance(data, dict) or set(data) != {"survivors", "signatures"}:
            raise ProtocolError(Reason.MALFORMED, "survivor certificate is not an object with "
                                                  "survivors and signatures.")
        survivors, signatures = data["survivors"], data["signatures"]
        if not (isinstance(survivors, list) and all(isinstance(p, str) for p in survivors)
                and len(set(survivors)) == len(survivors) and isinstance(signatures, dict)):
            raise ProtocolError(Reason.MALFORMED, "survivor certificate needs a list of distinct "
                                                  "ids and an object of signatures.")
        try:
            sigs = {str(p): unhex(s, 64) for p, s in signatures.items()}
        except ValueError as exc:
            raise ProtocolError(Reason.MALFORMED, f"survivor certificate signature: {exc}.") \
                from None
        return cls(tuple(sorted(survivors)), sigs)


def valid_signers(certificate: Certificate, *, members: Collection[str],
                  verify_keys: Mapping[str, Ed25519PublicKey], session: str, round: int,
                  transcript: bytes) -> set[str]:
    """The distinct survivors in ``members`` (the key list) whose enrolled key signed the set."""
    message = survivors_message(certificate.survivors, session=session, round=round,
                                transcript=transcript)
    alive, listed = set(certificate.survivors), set(members)
    out = set()
    for pid, signature in certificate.signatures.items():
        key = verify_keys.get(pid)
        if pid not in alive or pid not in listed or key is None:
            continue
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        out.add(pid)
    return out


def tolerated_colluders(n: int) -> int:
    """Participants that may collude with an active coordinator in a key list of ``n`` while
    no honest update can be isolated: ``min(2t - n - 1, t - 2, t_k - 2)`` with
    ``t = threshold(n)`` and ``t_k = threshold(degree(n) + 1)`` (equal to ``t`` for the
    complete graph)."""
    t, t_k = threshold(n), threshold(degree(n) + 1)
    return max(0, min(2 * t - n - 1, t - 2, t_k - 2))


__all__ = [
    "Certificate",
    "sign_survivors",
    "survivors_message",
    "tolerated_colluders",
    "transcript",
    "valid_signers",
]
