"""Split a dataset's samples among clients: iid, Dirichlet label skew (two ways), or class shards.

:class:`PartitionConfig` is the config section that names a partition (the simulator's, and a
participant's share of one in demos and tests).

Every scheme is a pure function of (labels, num_clients, options, seed): the same inputs give the
same index arrays. Each returned array is sorted and the arrays are disjoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from latentfl.config import option
from latentfl.errors import ConfigError, DataError

Scheme = Literal["iid", "dirichlet", "dirichlet_per_client", "shards"]
PARTITION_SCHEMES: tuple[str, ...] = get_args(Scheme)
DIRICHLET_SCHEMES = ("dirichlet", "dirichlet_per_client")
DIRICHLET_MAX_TRIES = 1000


def _iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(len(labels)), num_clients))


def _dirichlet_draw(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """One draw: per class, shares p ~ Dir(alpha * 1_K), zeroed for clients holding >= N/K."""
    cap = len(labels) / num_clients
    sizes = np.zeros(num_clients, dtype=np.int64)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        shares = np.where(sizes < cap, shares, 0.0)
        total = shares.sum()
        # With a tiny alpha every open client's share can underflow to zero: split evenly then.
        shares = shares / total if total > 0 else (sizes < cap) / np.count_nonzero(sizes < cap)
        cuts = (np.cumsum(shares) * len(members)).astype(np.int64)[:-1]
        for client, chunk in enumerate(np.split(members, cuts)):
            parts[client].append(chunk)
            sizes[client] += len(chunk)
    return [np.concatenate(p) for p in parts]


def _dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    for _ in range(DIRICHLET_MAX_TRIES):
        parts = _dirichlet_draw(labels, num_clients, alpha, rng)
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise DataError(
        f"no Dirichlet draw with alpha={alpha} gave all {num_clients} clients at least "
        f"{min_size} samples in {DIRICHLET_MAX_TRIES} tries; expected a larger alpha, "
        "a smaller min_size or fewer clients"
    )


def _dirichlet_per_client(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Each client draws its class mix q ~ Dir(alpha * 1_n) and takes N/K samples by it.

    Clients fill in turn: a client draws its remaining count from q restricted to the classes that
    still have samples (all remaining classes by size when q puts no mass on any of them), so
    every client gets its full share and the last clients take what is left.
    """
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    left = np.array([len(pool) for pool in pools])
    used = np.zeros(len(classes), dtype=np.int64)
    sizes = [len(chunk) for chunk in np.array_split(np.arange(len(labels)), num_clients)]
    parts = []
    for size in sizes:
        mix = np.nan_to_num(rng.dirichlet(np.full(len(classes), alpha)))
        take = np.zeros(len(classes), dtype=np.int64)
        while take.sum() < size:
            open_ = left - take
            weights = np.where(open_ > 0, mix, 0.0)
            weights = weights if weights.sum() > 0 else open_.astype(float)
            draw = rng.multinomial(size - take.sum(), weights / weights.sum())
            take += np.minimum(draw, open_)
        parts.append(np.concatenate(
            [pools[c][used[c]:used[c] + take[c]] for c in range(len(classes))]))
        used += take
        left -= take
    return parts


def _shards(
    labels: np.ndarray, num_clients: int, classes_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Client i holds classes order[(i*c + j) % n] for j < c; holders split a class evenly."""
    classes = np.unique(labels)
    if classes_per_client > len(classes):
        raise ConfigError(
            f"classes_per_client is {classes_per_client}; expected at most the {len(classes)} "
            "classes present in the labels"
        )
    order = rng.permutation(classes)
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for client in range(num_clients):
        for j in range(classes_per_client):
            holders[int(order[(client * classes_per_client + j) % len(classes)])].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label, owners in holders.items():
        if not owners:
            continue
        members = rng.permutation(np.flatnonzero(labels == label))
        for client, chunk in zip(owners, np.array_split(members, len(owners)), strict=True):
            parts[client].append(chunk)
    return [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]


def partition(
    labels: np.ndarray,
    num_clients: int,
    scheme: Scheme,
    *,
    seed: int,
    alpha: float = 0.5,
    min_size: int = 10,
    classes_per_client: int = 2,
) -> list[np.ndarray]:
    """Index arrays into ``labels``, one per client, deterministic for ``seed``.

    ``iid``: a random permutation cut into near-equal parts. ``dirichlet``: each class split over
    clients by shares ~ Dir(alpha), redrawn until every client holds ``min_size`` samples
    (DataError after DIRICHLET_MAX_TRIES draws). ``dirichlet_per_client``: each client's class mix
    ~ Dir(alpha), equal sizes, so it works for any alpha and many clients. ``shards``: each client
    holds ``classes_per_client`` classes.
    Invalid options raise ConfigError; labels that cannot be split so raise DataError.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"labels are {labels.dtype} of shape {labels.shape}; expected 1-D integers")
    if scheme not in PARTITION_SCHEMES:
        raise ConfigError(
            f"partition scheme is '{scheme}'; expected one of {', '.join(PARTITION_SCHEMES)}"
        )
    if num_clients < 1:
        raise ConfigError(f"number of clients is {num_clients}; expected at least 1")
    if num_clients > len(labels):
        raise DataError(f"{len(labels)} samples cannot be split among {num_clients} clients")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = _iid(labels, num_clients, rng)
    elif scheme in DIRICHLET_SCHEMES:
        if not alpha > 0:
            raise ConfigError(f"alpha is {alpha}; expected a positive concentration")
        if min_size < 0:
            raise ConfigError(f"min_size is {min_size}; expected 0 or more")
        if num_clients * min_size > len(labels):
            raise DataError(
                f"{num_clients} clients x min_size {min_size} needs {num_clients * min_size} "
                f"samples; the dataset has {len(labels)}, so lower --min-size or use fewer clients"
            )
        if scheme == "dirichlet":
            parts = _dirichlet(labels, num_clients, alpha, min_size, rng)
        else:
            parts = _dirichlet_per_client(labels, num_clients, alpha, rng)
    else:
        if classes_per_client < 1:
            raise ConfigError(f"classes_per_client is {classes_per_client}; expected at least 1")
        parts = _shards(labels, num_clients, classes_per_client, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """A (clients, classes) table of how many samples of each class each client holds."""
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


@dataclass(frozen=True)
class PartitionConfig:
    """How the training split is divided among participants."""

    scheme: Scheme = option(
        "dirichlet", help="Partition scheme: iid, dirichlet (each class split over participants), "
        "dirichlet_per_client (each participant's class mix drawn) or shards."
    )
    alpha: float = option(
        0.5, help="Dirichlet concentration (smaller = more skewed).", min=0.0, min_exclusive=True
    )
    min_size: int = option(
        10, help="Minimum examples per participant (dirichlet; redrawn until met).", min=1
    )
    classes_per_client: int = option(2, help="Classes per participant (shards).", min=1)
    seed: int = option(0, help="Seed of the partition.")

    def split(self, labels, clients: int) -> list:
        """Index arrays, one per client, of this partition of ``labels`` (deterministic)."""
        return partition(labels, clients, self.scheme, seed=self.seed, alpha=self.alpha,
                         min_size=self.min_size, classes_per_client=self.classes_per_client)



__all__ = [
    "DIRICHLET_MAX_TRIES",
    "DIRICHLET_SCHEMES",
    "PARTITION_SCHEMES",
    "PartitionConfig",
    "Scheme",
    "class_counts",
    "partition",
]
