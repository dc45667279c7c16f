"""The five numbers of OpenAI's ADM evaluator: IS, FID, sFID, precision, recall.

Every DiT caching paper reports what guided-diffusion's ``evaluations/evaluator.py`` prints.
This module reimplements its formulas on feature arrays (the network that makes the
features lives in :mod:`goc_utils.evaluation.metrics.features`):

- **FID / sFID**: Frechet distance between Gaussians ``(mu, sigma)``; ``mu`` the mean and
  ``sigma`` ``np.cov(rowvar=False)`` (unbiased, N-1) of the activations. ``sqrtm`` of
  ``sigma1 @ sigma2`` by scipy; if it is not finite, ``eps = 1e-6`` is added to both diagonals
  and it is retried; an imaginary part above 1e-3 on the diagonal is an error, a smaller one is
  dropped. sFID is the same distance on the spatial features.
- **Inception Score**: softmax of the logits, splits of 5,000 samples, ``exp(mean KL(p(y|x) || p(y)))``
  per split, mean over splits.
- **Precision / recall** (Kynkaanniemi et al. 2019, k = 3): each set's k-NN radius per point is the
  squared distance to its k-th nearest neighbour in the same set (the point itself is the 0-th);
  precision = share of samples inside some reference ball, recall = share of references inside some
  sample ball. Distances are squared Euclidean ``max(|u|^2 - 2 u.v + |v|^2, 0)`` computed in blocks;
  like the evaluator, inputs and distances are rounded to float16 and the float32 computation is used
  when the half-precision one overflows (a distance or a squared norm beyond float16's range).

How close to the evaluator. Side by side with ``evaluator.py``'s own code on identical activations,
FID and IS agree to 1e-7. Precision and recall differ by 0.03-0.44 percentage points: the evaluator
runs *every* TF op of the distance (squares, sums, matmul) in float16, this module rounds only the
inputs and the distances and accumulates in float32. Ours is the closer one to float64 arithmetic;
published numbers come from the evaluator's. ``precision="float32"`` (``goc fid --pr-precision
float32``) turns the rounding off. An Inception Score whose probabilities underflow to 0 is NaN, as
the evaluator returns it (``0 * log 0``), with a warning line saying why.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg

from goc_utils.errors import GocError, InvalidArgumentError
from goc_utils.evaluation.metrics.paired import PairedDifference, paired_bootstrap

PR_NEAREST_K = 3
"""The k of precision / recall's k-nearest-neighbour radii (the ADM evaluator's)."""
MIN_SAMPLES = PR_NEAREST_K + 1
"""The fewest images a scored batch may hold: a radius needs k other images."""


class MetricError(GocError, ValueError):
    """Features that cannot give a metric (NaN, too few samples, mismatched dimensions)."""


@dataclass
class FIDStatistics:
    """Gaussian fit of a feature set: ``mu`` ``(D,)`` and ``sigma`` ``(D, D)``, float64."""

    mu: np.ndarray
    sigma: np.ndarray

    def frechet_distance(self, other: FIDStatistics, eps: float = 1e-6) -> float:
        """``|mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr(sqrtm(s1 s2))`` with the evaluator's fallbacks."""
        mu1, mu2 = np.atleast_1d(self.mu), np.atleast_1d(other.mu)
        s1, s2 = np.atleast_2d(self.sigma), np.atleast_2d(other.sigma)
        if mu1.ndim != 1 or mu1.shape != mu2.shape or not s1.shape == s2.shape == mu1.shape * 2:
            raise MetricError(
                f"feature statistics of different sizes: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs "
                f"{s2.shape}; both must be mu (D,) and sigma (D, D) from the same feature extractor"
            )
        diff = mu1 - mu2
        covmean = linalg.sqrtm(s1.dot(s2))
        if not np.isfinite(covmean).all():
            warnings.warn(f"FID: singular covariance product; adding {eps} to the diagonals", stacklevel=2)
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise MetricError(
                    f"FID: sqrtm has an imaginary component of {np.max(np.abs(covmean.imag)):.3g}; "
                    "the covariances are degenerate (too few samples for the feature dimension?)"
                )
            covmean = covmean.real
        return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def check_features(features: np.ndarray, name: str = "features", min_count: int = 2) -> np.ndarray:
    """Features as a finite 2-D float array with at least ``min_count`` rows, else a one-line error."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise MetricError(f"{name} must be 2-D (samples, dims); got shape {features.shape}")
    if len(features) < min_count:
        raise MetricError(f"{name}: {len(features)} samples; this metric needs at least {min_count}")
    if not np.isfinite(features).all():
        bad = int((~np.isfinite(features)).any(axis=1).sum())
        raise MetricError(f"{name}: {bad} sample(s) have NaN or infinite features; check the images / extractor")
    return features


def compute_statistics(features: np.ndarray) -> FIDStatistics:
    """Mean and unbiased covariance of ``(N, D)`` features, as the evaluator computes them."""
    features = check_features(features, min_count=2)
    return FIDStatistics(np.mean(features, axis=0, dtype=np.float64), np.cov(features, rowvar=False))


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """IS of ``(N, classes)`` logits: splits of ``split_size``, mean of ``exp(E_x KL(p(y|x) || p(y)))``."""
    logits = check_features(logits, "logits", min_count=1)
    probs = torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=1).numpy()
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start : start + split_size]
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    score = float(np.mean(scores))
    if np.isnan(score):
        zeros = int((probs == 0).sum())
        print(
            f"warning: Inception Score is NaN: {zeros} class probabilities underflow to 0 in float32 "
            "(0 * log 0; the ADM evaluator gives NaN too)",
            file=sys.stderr,
        )
    return score


def fid_bootstrap_std(features: np.ndarray, ref: FIDStatistics, resamples: int = 20, seed: int = 0) -> float:
    """Spread of FID from the finite sample: std over ``resamples`` bootstrap draws of the sample features.

    Not part of the ADM evaluator; it says which FID differences a table of this size can resolve.
    Methods sampled from the same noise are positively correlated, so their differences are
    better resolved than this per-method spread suggests.
    """
    if resamples < 2:
        raise InvalidArgumentError(f"a bootstrap spread needs >= 2 resamples (got {resamples})")
    features = check_features(features, min_count=2)
    rng = np.random.default_rng(seed)
    values = [
        compute_statistics(features[rng.integers(0, len(features), len(features))]).frechet_distance(ref)
        for _ in range(resamples)
    ]
    return float(np.std(values, ddof=1))


class FrechetToReference:
    """Frechet distances of many feature sets to one fixed reference, fast: with ``R = sqrtm(sigma_ref)`` (symmetric,
    computed once), ``tr sqrtm(sigma sigma_ref) = sum sqrt(eig(R sigma R))``, a symmetric eigenproblem instead of a
    general ``sqrtm`` (about 10x faster for 256-d features). Used for bootstrap resamples; reported FIDs come from
    :meth:`FIDStatistics.frechet_distance`, the evaluator's formula (the two agree to about 1e-9 relative)."""

    def __init__(self, ref: FIDStatistics) -> None:
        values, vectors = np.linalg.eigh(np.atleast_2d(ref.sigma))
        self.root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
        self.mu, self.trace = np.atleast_1d(ref.mu), float(np.trace(np.atleast_2d(ref.sigma)))

    def __call__(self, features: np.ndarray) -> float:
        stats = compute_statistics(features)
        product = np.linalg.eigvalsh(self.root @ np.atleast_2d(stats.sigma) @ self.root)
        covmean = float(np.sum(np.sqrt(np.clip(product, 0, None))))
        diff = np.atleast_1d(stats.mu) - self.mu
        return float(diff @ diff + np.trace(np.atleast_2d(stats.sigma)) + self.trace - 2 * covmean)


def paired_fid_difference(
    features_a: np.ndarray, features_b: np.ndarray, ref: FIDStatistics, resamples: int = 200, seed: int = 0
) -> PairedDifference:
    """FID of two methods sampled from the same noise (``(N, D)`` pool features each, image i of A and of B from
    the same noise) against ``ref``, and the paired bootstrap spread of ``FID(A) - FID(B)``: each resample draws one
    set of image indices for both methods, so the sampling noise they share cancels and differences far inside
    either method's own :func:`fid_bootstrap_std` can be resolved. Negative: A is closer to the reference. The FIDs
    reported are the evaluator's (:meth:`FIDStatistics.frechet_distance`); the resamples use
    :class:`FrechetToReference`."""
    a, b = check_features(features_a, "features A", 2), check_features(features_b, "features B", 2)
    if a.shape != b.shape:
        raise MetricError(f"paired FID needs features of the same shape (got {a.shape} and {b.shape}); sample both "
                          "methods with the same --num-samples and seed")  # fmt: skip
    fast = FrechetToReference(ref)
    _, _, std = paired_bootstrap(lambda index: (fast(a[index]), fast(b[index])), len(a), resamples, seed)
    fid_a, fid_b = (compute_statistics(x).frechet_distance(ref) for x in (a, b))
    return PairedDifference("FID", "", fid_a, fid_b, fid_a - fid_b, std, len(a), resamples)


def pairwise_sq_distances(u: np.ndarray, v: np.ndarray, precision: str = "float16", device="cpu") -> np.ndarray:
    """Squared Euclidean distances ``(len(u), len(v))`` float32, clamped at 0 (computed on ``device``).

    ``precision="float16"`` follows the ADM evaluator: inputs and result in half precision
    (accumulation in float32), falling back to float32 when a value overflows.
    """
    if precision not in ("float16", "float32"):
        raise InvalidArgumentError(f"precision must be float16 or float32 (got {precision!r})")

    def distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        norm_a = (a * a).sum(1, keepdim=True)
        norm_b = (b * b).sum(1, keepdim=True).T
        return torch.clamp(norm_a - 2 * a @ b.T + norm_b, min=0.0)

    a32 = torch.from_numpy(np.asarray(u, dtype=np.float32)).to(device)
    b32 = torch.from_numpy(np.asarray(v, dtype=np.float32)).to(device)
    if precision == "float16":
        a16, b16 = a32.half().float(), b32.half().float()
        half = distances(a16, b16).half()
        norms = torch.cat([(a16 * a16).sum(1), (b16 * b16).sum(1)]).half()  # the evaluator's squared norms
        if torch.isfinite(half).all() and torch.isfinite(norms).all() and torch.isfinite(a16).all():
            if torch.isfinite(b16).all():
                return half.float().cpu().numpy()
    return distances(a32, b32).cpu().numpy()


def manifold_radii(
    features: np.ndarray, k: int = PR_NEAREST_K, batch_size: int = 10000, precision: str = "float16", device="cpu"
) -> np.ndarray:
    """Squared distance of each point to its k-th nearest neighbour in the same set ``(N,)``."""
    features = check_features(features, min_count=k + 1)
    radii = np.empty(len(features), dtype=np.float32)
    for start in range(0, len(features), batch_size):
        rows = features[start : start + batch_size]
        block = np.concatenate(
            [
                pairwise_sq_distances(rows, features[c : c + batch_size], precision, device)
                for c in range(0, len(features), batch_size)
            ],
            axis=1,
        )
        radii[start : start + len(rows)] = np.partition(block, k, axis=1)[:, k]
    return radii


def precision_recall(
    ref: np.ndarray,
    sample: np.ndarray,
    k: int = PR_NEAREST_K,
    batch_size: int = 10000,
    precision: str = "float16",
    device="cpu",
) -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds) of ``sample`` against ``ref``.

    Precision: share of samples within the k-NN ball of at least one reference point.
    Recall: share of references within the k-NN ball of at least one sample.
    """
    ref = check_features(ref, "reference features", min_count=k + 1)
    sample = check_features(sample, "sample features", min_count=k + 1)
    if ref.shape[1] != sample.shape[1]:
        raise MetricError(f"reference features have {ref.shape[1]} dims, samples {sample.shape[1]}: use one extractor")
    ref_radii = manifold_radii(ref, k, batch_size, precision, device)
    sample_radii = manifold_radii(sample, k, batch_size, precision, device)
    sample_in = np.zeros(len(sample), dtype=bool)
    ref_in = np.zeros(len(ref), dtype=bool)
    for r in range(0, len(ref), batch_size):
        for s in range(0, len(sample), batch_size):
            d = pairwise_sq_distances(ref[r : r + batch_size], sample[s : s + batch_size], precision, device)
            ref_in[r : r + batch_size] |= (d <= sample_radii[None, s : s + batch_size]).any(axis=1)
            sample_in[s : s + batch_size] |= (d <= ref_radii[r : r + batch_size, None]).any(axis=0)
    return float(sample_in.mean()), float(ref_in.mean())


__all__ = [
    "FIDStatistics",
    "FrechetToReference",
    "MetricError",
    "check_features",
    "compute_statistics",
    "fid_bootstrap_std",
    "paired_fid_difference",
    "inception_score",
    "manifold_radii",
    "pairwise_sq_distances",
    "precision_recall",
]
