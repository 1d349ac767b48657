"""One way to derive a seed from another: :func:`derive_seed`.

Every random stream in latentfl that is not the configured seed itself (a round's selection, a
participant's local training, an unrolled step's augmentation, a reference model of an attack)
takes its seed from the configured one through this function, with a path naming the stream,
e.g. ``derive_seed(seed, "train", round, participant)``. Distinct paths give unrelated seeds, so
streams cannot collide the way ``seed + round`` and ``seed + 1`` do (round 1 of one stream is the
``+ 1`` of another), and the same path gives the same seed in every process and on every
platform: the hash is BLAKE2b, never Python's salted ``hash()``.
"""

from __future__ import annotations

import hashlib
import operator

__all__ = ["derive_seed"]


def derive_seed(base: int, *path: int | str, bits: int = 63) -> int:
    """A non-negative ``bits``-bit seed (at most 64) determined by ``base`` and the stream
    ``path``. A seed that travels in a protocol message asks for 53 bits, the integers the
    protocol's JSON carries exactly.

    Integers and strings are told apart (``1`` and ``"1"`` give different seeds) and each part is
    length-prefixed, so no two distinct paths hash the same bytes. The result fits torch's
    ``Generator.manual_seed``, numpy's ``default_rng`` and a signed 64-bit integer.
    """
    digest = hashlib.blake2b(digest_size=8, person=b"latentfl-seed")
    for part in (base, *path):
        if isinstance(part, str):
            tag, data = b"s", part.encode()
        else:
            tag, data = b"i", str(operator.index(part)).encode()  # numpy ints too; not floats
        digest.update(tag + len(data).to_bytes(4, "little") + data)
    if not 1 <= bits <= 64:
        raise ValueError(f"bits is {bits}; expected 1 to 64")
    return int.from_bytes(digest.digest(), "little") >> (64 - bits)
