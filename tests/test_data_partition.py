"""Client partitioners: iid, Dirichlet label skew (per class, per client) and class shards."""

from __future__ import annotations

import numpy as np
import pytest

from latentfl.data import class_counts, partition
from latentfl.data.partition import DIRICHLET_MAX_TRIES
from latentfl.errors import ConfigError, DataError

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 10 balanced classes


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert joined.dtype == np.int64
    assert np.array_equal(np.sort(joined), np.arange(n))
    assert all(np.array_equal(p, np.sort(p)) for p in parts)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "dirichlet_per_client", "shards"])
def test_same_seed_same_partition(scheme: str) -> None:
    """Every scheme is a function of the seed: equal seeds agree, different seeds differ."""
    a = partition(LABELS, 7, scheme, seed=3, alpha=0.3)
    b = partition(LABELS, 7, scheme, seed=3, alpha=0.3)
    c = partition(LABELS, 7, scheme, seed=4, alpha=0.3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    _assert_disjoint_cover(a, len(LABELS))


def test_iid_sizes_are_balanced() -> None:
    """iid gives every client N/K samples (+-1) drawn without regard to the label."""
    parts = partition(LABELS, 3, "iid", seed=0)
    assert sorted(len(p) for p in parts) == [333, 333, 334]
    counts = class_counts(LABELS, parts, 10)
    assert counts.min() > 10  # every client sees every class


def test_dirichlet_respects_min_size_and_skews_with_small_alpha() -> None:
    """Dirichlet meets min_size; small alpha concentrates classes, huge alpha looks iid."""
    skewed = partition(LABELS, 10, "dirichlet", seed=0, alpha=0.1, min_size=20)
    assert min(len(p) for p in skewed) >= 20
    _assert_disjoint_cover(skewed, len(LABELS))
    flat = partition(LABELS, 10, "dirichlet", seed=0, alpha=1e6)
    share = class_counts(LABELS, skewed, 10) / 100
    flat_share = class_counts(LABELS, flat, 10) / 100
    assert share.max(axis=0).mean() > 0.5  # some client holds most of each class
    np.testing.assert_allclose(flat_share, 0.1, atol=0.02)


def test_dirichlet_zero_share_for_full_clients() -> None:
    """A client holding >= N/K samples gets nothing from later classes, so sizes stay bounded."""
    labels = np.repeat(np.arange(50), 20)
    for seed in range(5):
        parts = partition(labels, 5, "dirichlet", seed=seed, alpha=0.05, min_size=1)
        # a client can pass the N/K = 200 cap only with the class that crossed it (20 samples)
        assert max(len(p) for p in parts) < 200 + 20


def test_dirichlet_per_client_splits_tiny_alpha_over_many_clients() -> None:
    """Per-client Dirichlet gives 80 clients equal shares at alpha 0.01, most from one class."""
    labels = np.repeat(np.arange(10), 500)
    parts = partition(labels, 80, "dirichlet_per_client", seed=0, alpha=0.01)
    _assert_disjoint_cover(parts, len(labels))
    assert sorted({len(p) for p in parts}) == [62, 63]
    counts = class_counts(labels, parts, 10)
    dominant = counts.max(axis=1) / counts.sum(axis=1)
    assert np.median(dominant) == 1.0  # the typical client holds a single class
    flat = partition(labels, 10, "dirichlet_per_client", seed=0, alpha=1e6)
    # with a huge alpha each client's mix is near uniform: ~50 of each class (multinomial noise)
    assert (class_counts(labels, flat, 10)[:5] > 25).all()


def test_dirichlet_per_client_refuses_impossible_min_size() -> None:
    """min_size above N/K is refused before any drawing, naming the sample count."""
    with pytest.raises(DataError, match="needs 2000 samples"):
        partition(LABELS, 10, "dirichlet_per_client", seed=0, alpha=0.1, min_size=200)


def test_dirichlet_gives_up_with_clear_error() -> None:
    """An infeasible min_size fails at once; an unlucky one fails after the bounded tries."""
    with pytest.raises(DataError, match="needs 1100 samples"):
        partition(LABELS, 10, "dirichlet", seed=0, min_size=110)
    one_class = np.zeros(40, dtype=np.int64)
    with pytest.raises(DataError, match=f"in {DIRICHLET_MAX_TRIES} tries"):
        partition(one_class, 4, "dirichlet", seed=0, alpha=0.01, min_size=10)


def test_shards_give_each_client_its_classes() -> None:
    """shards: each client holds exactly classes_per_client classes, spread evenly over classes."""
    parts = partition(LABELS, 10, "shards", seed=1, classes_per_client=3)
    counts = class_counts(LABELS, parts, 10)
    assert ((counts > 0).sum(axis=1) == 3).all()
    assert ((counts > 0).sum(axis=0) == 3).all()  # 10 clients x 3 = 30 slots over 10 classes
    _assert_disjoint_cover(parts, len(LABELS))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"scheme": "zipf"}, ConfigError, "expected one of iid, dirichlet, dirichlet_per_client, shards"),
        ({"num_clients": 0}, ConfigError, "at least 1"),
        ({"num_clients": 2000}, DataError, "cannot be split among 2000 clients"),
        ({"scheme": "dirichlet", "alpha": 0.0}, ConfigError, "alpha is 0.0"),
        ({"scheme": "shards", "classes_per_client": 11}, ConfigError, "at most the 10 classes"),
    ],
)
def test_invalid_options(kwargs: dict, error: type[Exception], message: str) -> None:
    """Bad options are one-sentence errors naming the value and what was expected."""
    args = {"num_clients": 4, "scheme": "iid"} | kwargs
    with pytest.raises(error, match=message):
        partition(LABELS, args.pop("num_clients"), args.pop("scheme"), seed=0, **args)
