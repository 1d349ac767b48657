"""The synthetic-data audit: does a synthetic set reveal the private training set T?

Run at the participant, on its own data: T (images that trained the weights the synthetic set
was distilled from) and a holdout H of the same distribution that never trained anything.
Every threshold is calibrated on H, so a set that is merely "realistic" does not raise a flag:
a flag needs synthetic images that are closer to T than H-images are, more often than chance
allows. Six tests run; each is done at level ``alpha / 6`` (Bonferroni), so a clean set of
images that behave like unseen real ones raises any flag with probability at most about ``alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from latentfl.audits import distances as dist
from latentfl.audits.roc import RocCurve, auc, roc_curve, tpr_at_fpr
from latentfl.audits.stats import binomial_sf, rank_tail
from latentfl.audits.verdict import Verdict, decide
from latentfl.seeding import derive_seed

RATIO_NEIGHBOURS = 50
SSIM_CANDIDATES = 16
CALIBRATION_QUANTILE = 0.001
NUM_TESTS = 6
SMALL_SET = 200        # fewer training or holdout images than this: the report warns
SMALL_SYNTHETIC = 20


@dataclass(frozen=True)
class Measurements:
    """Per-image nearest-neighbour results of one candidate set (synthetic, or the baseline)."""

    pixel_t: np.ndarray      # RMS distance to the nearest image of T
    pixel_h: np.ndarray      # ... of H
    index_t: np.ndarray      # index in T of that nearest image
    index_h: np.ndarray
    ssim_t: np.ndarray       # 1 - SSIM to the most similar image of T (among pixel candidates)
    ssim_h: np.ndarray
    feature_t: np.ndarray    # cosine distance of encoder features to the nearest image of T
    feature_h: np.ndarray
    ratio: np.ndarray        # d(NN1 in T) / (0.5 * mean d(NN1..NN50 in T))
    nearest_in_t: np.ndarray  # bool: NN among equal-size subsets of T and H lies in T
    proximity_t: np.ndarray  # per image of T: distance to the nearest candidate
    proximity_h: np.ndarray  # per image of H: distance to the nearest candidate


@dataclass(frozen=True)
class Calibration:
    """Holdout images measured exactly like synthetic ones (each left out of H): the clean
    reference every threshold comes from."""

    pixel_t: np.ndarray
    pixel_h: np.ndarray
    ssim_t: np.ndarray
    ssim_h: np.ndarray
    feature_t: np.ndarray
    feature_h: np.ndarray
    ratio: np.ndarray


@dataclass(frozen=True)
class SyntheticAudit:
    verdicts: list[Verdict]
    synthetic: Measurements
    baseline: Measurements
    calibration: Calibration
    proximity_roc: RocCurve
    baseline_roc: RocCurve
    sizes: dict[str, int]
    encoder: str
    alpha: float
    warnings: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return any(v.flagged for v in self.verdicts)


class _Reference:
    """T and H as tensors and features, plus the subsets used by the share test."""

    def __init__(self, private: np.ndarray, holdout: np.ndarray,
                 encoder: dist.FeatureEncoder, seed: int) -> None:
        self.t = dist.to_unit_float(private)
        self.h = dist.to_unit_float(holdout)
        self.encoder = encoder
        self.ft = encoder.features(self.t)
        self.fh = encoder.features(self.h)
        rng = np.random.default_rng(seed)
        size = min(len(self.t), len(self.h))
        self.t_eq = torch.from_numpy(np.sort(rng.choice(len(self.t), size, replace=False)))
        self.h_eq = torch.from_numpy(np.sort(rng.choice(len(self.h), size, replace=False)))

    def near_t(self, x: torch.Tensor, fx: torch.Tensor
               ) -> tuple[dist.Neighbours, dist.Neighbours, dist.Neighbours, np.ndarray]:
        """Pixel top-k, SSIM and feature neighbours of ``x`` in T, and the ratio r."""
        px = dist.pixel_neighbours(x, self.t, max(RATIO_NEIGHBOURS, SSIM_CANDIDATES))
        ss = dist.ssim_neighbours(x, self.t, px.indices[:, :SSIM_CANDIDATES])
        ft = dist.cosine_neighbours(fx, self.ft, 1)
        k = min(RATIO_NEIGHBOURS, px.distances.shape[1])
        mean_k = px.distances[:, :k].mean(axis=1)
        ratio = np.where(mean_k > 0, px.distances[:, 0] / np.maximum(0.5 * mean_k, 1e-12), 1.0)
        return px, ss, ft, ratio


def _drop_self(nb: dist.Neighbours) -> dist.Neighbours:
    """Remove each query's own entry from neighbours of H in H (leave-one-out)."""
    own = np.arange(nb.indices.shape[0])[:, None]
    is_self = nb.indices == own
    # where the image itself is not listed (exact duplicates tie), drop the farthest instead
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    k = nb.indices.shape[1] - 1
    return dist.Neighbours(nb.distances[keep].reshape(-1, k), nb.indices[keep].reshape(-1, k))


def _calibrate(ref: _Reference) -> Calibration:
    px, ss, ft, ratio = ref.near_t(ref.h, ref.fh)
    px_h = _drop_self(dist.pixel_neighbours(ref.h, ref.h, SSIM_CANDIDATES + 1))
    ss_h = dist.ssim_neighbours(ref.h, ref.h, px_h.indices)
    ft_h = _drop_self(dist.cosine_neighbours(ref.fh, ref.fh, 2))
    return Calibration(px.distances[:, 0], px_h.distances[:, 0], ss.distances[:, 0],
                       ss_h.distances[:, 0], ft.distances[:, 0], ft_h.distances[:, 0], ratio)


def _measure(ref: _Reference, candidates: np.ndarray) -> Measurements:
    """Nearest-neighbour results of uint8 NHWC ``candidates`` against T and H."""
    x = dist.to_unit_float(candidates)
    fx = ref.encoder.features(x)
    px_t, ss_t, ft_t, ratio = ref.near_t(x, fx)
    px_h = dist.pixel_neighbours(x, ref.h, SSIM_CANDIDATES)
    ss_h = dist.ssim_neighbours(x, ref.h, px_h.indices)
    ft_h = dist.cosine_neighbours(fx, ref.fh, 1)
    share_t = dist.pixel_neighbours(x, ref.t[ref.t_eq], 1).distances[:, 0]
    share_h = dist.pixel_neighbours(x, ref.h[ref.h_eq], 1).distances[:, 0]
    return Measurements(
        pixel_t=px_t.distances[:, 0], pixel_h=px_h.distances[:, 0],
        index_t=px_t.indices[:, 0], index_h=px_h.indices[:, 0],
        ssim_t=ss_t.distances[:, 0], ssim_h=ss_h.distances[:, 0],
        feature_t=ft_t.distances[:, 0], feature_h=ft_h.distances[:, 0],
        ratio=ratio, nearest_in_t=share_t < share_h,
        proximity_t=dist.pixel_neighbours(ref.t, x, 1).distances[:, 0],
        proximity_h=dist.pixel_neighbours(ref.h, x, 1).distances[:, 0],
    )


def relative_closeness(d_t: np.ndarray, d_h: np.ndarray) -> np.ndarray:
    """d(nearest in T) / d(nearest in H): 1 when T and H are equally near, 0 for a copy of T.

    Dividing by the image's own distance to H makes the statistic scale-free, so an atypical
    image (a blurry class mean sits close to everything) is not mistaken for a copy.
    """
    return np.where(d_h > 0, d_t / np.maximum(d_h, 1e-300), np.where(d_t > 0, np.inf, 1.0))


def _quantile_test(title: str, metric: str, unit: str, syn: tuple[np.ndarray, np.ndarray],
                   base: tuple[np.ndarray, np.ndarray], holdout: tuple[np.ndarray, np.ndarray],
                   alpha: float, explanation: str) -> Verdict:
    """Count candidates whose closeness ratio is below what only 1% of holdout images reach.

    The threshold q is the r-th smallest holdout ratio with r = floor(0.01 |H|) + 1; a clean
    image, exchangeable with the holdout ones, falls below q with probability r / (|H| + 1);
    the count is tested against Binomial(n, r / (|H| + 1)).
    """
    values = relative_closeness(*syn)
    base_values = relative_closeness(*base)
    hold = relative_closeness(*holdout)
    n_h = hold.size
    r = int(np.floor(CALIBRATION_QUANTILE * n_h)) + 1
    q = float(np.sort(hold)[r - 1])
    p0 = r / (n_h + 1)
    k = int((values < q).sum())
    kb = int((base_values < q).sum())
    p = binomial_sf(k, values.size, p0)
    return Verdict(
        metric=metric, title=title,
        value=f"{k} of {values.size} synthetic images (expected by chance: {p0 * values.size:.2g})",
        threshold=f"{unit} to nearest training image < {q:.3f} x that to nearest holdout image",
        calibration=f"{r - 1} of {n_h} holdout images are this much closer to a training image",
        status=decide(p, alpha), baseline=f"{kb} of {base_values.size}", p_value=p, alpha=alpha,
        explanation=explanation,
        numbers={"count": k, "n": int(values.size), "threshold_ratio": q, "null_rate": p0,
                 "baseline_count": kb, "median_distance_t": float(np.median(syn[0])),
                 "median_distance_h": float(np.median(syn[1]))},
    )


def _verdicts(syn: Measurements, base: Measurements, cal: Calibration, alpha: float,
              syn_roc: RocCurve, base_roc: RocCurve, sizes: dict[str, int]) -> list[Verdict]:
    a = alpha / NUM_TESTS
    out = [
        _quantile_test("Near-copies by pixels", "pixel_nn", "RMS pixel distance",
                       (syn.pixel_t, syn.pixel_h), (base.pixel_t, base.pixel_h),
                       (cal.pixel_t, cal.pixel_h), a,
                       "Synthetic images that are nearly pixel-identical to one of your training "
                       "images, closer than almost any unseen image of yours gets."),
        _quantile_test("Near-copies by structure (SSIM)", "ssim_nn", "1 - SSIM",
                       (syn.ssim_t, syn.ssim_h), (base.ssim_t, base.ssim_h),
                       (cal.ssim_t, cal.ssim_h), a,
                       "Same question judged by structural similarity, which forgives small "
                       "shifts in brightness and contrast."),
        _quantile_test("Near-copies by content (features)", "feature_nn", "cosine distance",
                       (syn.feature_t, syn.feature_h), (base.feature_t, base.feature_h),
                       (cal.feature_t, cal.feature_h), a,
                       "Same question in the feature space of a fixed network: same content, "
                       "possibly different pixels."),
    ]
    # r < 1 alone also fires on atypical images (a blurry mean next to one smooth photo), so an
    # image counts as extracted only if it is also a pixel near-copy by the holdout threshold.
    q = out[0].numbers["threshold_ratio"]

    def extracted(m: Measurements | Calibration) -> np.ndarray:
        return (m.ratio < 1) & (relative_closeness(m.pixel_t, m.pixel_h) < q)

    n_h = cal.ratio.size
    c_h = int(extracted(cal).sum())
    p0 = (c_h + 1) / (n_h + 1)
    k = int(extracted(syn).sum())
    p = binomial_sf(k, syn.ratio.size, p0)
    out.append(Verdict(
        metric="extraction_ratio", title="Extracted images (distance ratio r < 1)",
        value=f"{k} of {syn.ratio.size} synthetic images (expected by chance: "
              f"{p0 * syn.ratio.size:.2g})",
        threshold="r < 1 and a pixel near-copy",
        calibration=f"{c_h} of {n_h} holdout images meet both (and {int((cal.ratio < 1).sum())} "
                    "have r < 1)",
        status=decide(p, a), baseline=f"{int(extracted(base).sum())} of {base.ratio.size}",
        p_value=p, alpha=a,
        explanation="r compares the nearest training image with the typical nearby ones; r < 1 "
                    "means one training image stands out as a copy (Carlini et al. 2023).",
        numbers={"count": k, "n": int(syn.ratio.size), "null_rate": p0,
                 "count_ratio_below_1": int((syn.ratio < 1).sum()),
                 "min_ratio": float(syn.ratio.min())}))
    k = int(syn.nearest_in_t.sum())
    n = syn.nearest_in_t.size
    p = binomial_sf(k, n, 0.5)
    out.append(Verdict(
        metric="nn_share", title="Nearest image is a training image",
        value=f"{k} of {n} ({100 * k / n:.0f}%)",
        threshold="significantly above 50%",
        calibration=f"{sizes['share_subset']} training vs {sizes['share_subset']} holdout images "
                    f"(seeded subsample of {sizes['private']} and {sizes['holdout']} to equal "
                    "size), so 50% is chance",
        status=decide(p, a),
        baseline=f"{int(base.nearest_in_t.sum())} of {base.nearest_in_t.size}",
        p_value=p, alpha=a,
        explanation="If the synthetic set were unrelated to your training images, its nearest "
                    "neighbours would split evenly between training and holdout images (when "
                    "the holdout is drawn like the training data).",
        numbers={"count": k, "n": n, "share": k / n,
                 "baseline_share": float(base.nearest_in_t.mean())}))
    # members closer to some synthetic image than the closest holdout image is
    k = int((syn.proximity_t < syn.proximity_h.min()).sum())
    p = rank_tail(k, syn.proximity_t.size, syn.proximity_h.size, 1)
    op = tpr_at_fpr(syn_roc, 0.01)
    base_op = tpr_at_fpr(base_roc, 0.01)
    syn_auc = auc(-syn.proximity_t, -syn.proximity_h)
    expected = syn.proximity_t.size / (syn.proximity_h.size + 1)
    out.append(Verdict(
        metric="proximity_mia", title="Membership inference from the synthetic set",
        value=f"AUC {syn_auc:.3f}, TPR {100 * op.tpr:.1f}% at FPR {100 * op.fpr:.1f}%; "
              f"{k} training images closer than every holdout image (chance: {expected:.1f})",
        threshold="more training images closer to a synthetic image than every holdout image "
                  "than chance gives",
        calibration=f"closest of {syn.proximity_h.size} holdout images to any synthetic image; "
                    f"{syn.proximity_t.size} training images (exact test for unequal sizes)",
        status=decide(p, a),
        baseline=f"AUC {auc(-base.proximity_t, -base.proximity_h):.3f}, "
                 f"TPR {100 * base_op.tpr:.1f}%",
        p_value=p, alpha=a,
        explanation="An attacker holding the synthetic set guesses 'member' for your images "
                    "that are close to a synthetic one. AUC 0.5 and TPR near FPR mean no edge.",
        numbers={"auc": syn_auc, "tpr_at_1pct_fpr": op.tpr, "fpr": op.fpr, "exposed": k,
                 "baseline_auc": auc(-base.proximity_t, -base.proximity_h),
                 "baseline_tpr_at_1pct_fpr": base_op.tpr}))
    return out


def audit_synthetic(synthetic: np.ndarray, private: np.ndarray, holdout: np.ndarray, *,
                    encoder: dist.FeatureEncoder, seed: int = 0,
                    alpha: float = 0.05) -> SyntheticAudit:
    """Audit uint8 NHWC ``synthetic`` images against ``private`` (T) and ``holdout`` (H).

    The naive baseline is the same number of random images of T, measured the same way: what
    sharing real training images instead of synthetic ones would show.
    """
    shapes = {synthetic.shape[1:], private.shape[1:], holdout.shape[1:]}
    if len(shapes) != 1:
        raise ValueError(f"synthetic, private and holdout images differ in shape: "
                         f"{sorted(shapes)}; expected one (H, W, C)")
    if len(synthetic) < 1:
        raise ValueError("the synthetic set is empty; expected at least one image")
    if len(holdout) < 2 or len(private) < 2:
        raise ValueError(f"need at least 2 private and 2 holdout images, got {len(private)} and "
                         f"{len(holdout)}")
    ref = _Reference(private, holdout, encoder, seed)
    cal = _calibrate(ref)
    syn = _measure(ref, synthetic)
    rng = np.random.default_rng(derive_seed(seed, "baseline"))
    n_base = min(len(synthetic), len(private))
    base = _measure(ref, private[np.sort(rng.choice(len(private), n_base, replace=False))])
    syn_roc = roc_curve(-syn.proximity_t, -syn.proximity_h)
    base_roc = roc_curve(-base.proximity_t, -base.proximity_h)
    sizes = {"synthetic": len(synthetic), "private": len(private), "holdout": len(holdout),
             "share_subset": int(ref.t_eq.numel()), "baseline": n_base}
    return SyntheticAudit(
        verdicts=_verdicts(syn, base, cal, alpha, syn_roc, base_roc, sizes),
        synthetic=syn, baseline=base, calibration=cal, proximity_roc=syn_roc,
        baseline_roc=base_roc, sizes=sizes, encoder=encoder.description, alpha=alpha,
        warnings=size_warnings(sizes),
    )


def size_warnings(sizes: dict[str, int]) -> list[str]:
    """Plain sentences on the samples behind the figures: small ones, and unequal T and H."""
    out = []
    if min(sizes["private"], sizes["holdout"]) < SMALL_SET:
        out.append(f"Small sample: {sizes['private']} training and {sizes['holdout']} holdout "
                   f"images (fewer than {SMALL_SET}); the near-copy thresholds rest on few "
                   "holdout images and a pass says little.")
    if sizes["synthetic"] < SMALL_SYNTHETIC:
        out.append(f"Only {sizes['synthetic']} synthetic images: the share and membership "
                   "checks can only see a broad leak.")
    if sizes["private"] != sizes["holdout"]:
        out.append(f"Unequal sizes ({sizes['private']} training, {sizes['holdout']} holdout): "
                   f"the nearest-image share uses a seeded subsample of {sizes['share_subset']} "
                   "of each, so 50% stays chance; the near-copy checks read their thresholds "
                   "off the holdout and the membership check uses an exact test for unequal "
                   "sizes.")
    return out


__all__ = ["Calibration", "Measurements", "SyntheticAudit", "audit_synthetic",
           "relative_closeness", "size_warnings"]
