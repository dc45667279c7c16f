"""``goc fid``: the ADM evaluator's report for a reference batch and a sample batch.

:func:`evaluate_batches` streams both ``.npz`` files through one feature extractor and returns
IS, FID, sFID, precision and recall (plus, when the samples carry labels and the extractor is
a classifier over the same classes, the class agreement). Reference statistics stored in the
file (``mu``, ``sigma``, ``mu_s``, ``sigma_s``) are used as the evaluator uses them.
:func:`make_reference_batch` writes such a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from goc_utils.evaluation.metrics.adm import (
    FIDStatistics,
    MetricError,
    compute_statistics,
    inception_score,
    precision_recall,
)
from goc_utils.evaluation.metrics.batches import (
    BatchFileError,
    batch_features,
    batch_info,
    check_same_size,
    read_labels,
    read_statistics,
)
from goc_utils.evaluation.metrics.features import FeatureExtractor, Features, extract
from goc_utils.files import write_npz


@dataclass
class ReferenceFeatures:
    """What a reference batch contributes: pool features (precision / recall) and both Gaussians."""

    pool: np.ndarray
    stats: FIDStatistics
    spatial_stats: FIDStatistics


@dataclass
class EvalResult:
    """The evaluator's five numbers (precision / recall as fractions) and optional class agreement."""

    inception_score: float
    fid: float
    sfid: float
    precision: float
    recall: float
    samples: int
    agreement: float | None = None

    def report(self) -> str:
        """The evaluator's printout."""
        lines = [
            f"Inception Score: {self.inception_score}",
            f"FID: {self.fid}",
            f"sFID: {self.sfid}",
            f"Precision: {self.precision}",
            f"Recall: {self.recall}",
        ]
        if self.agreement is not None:
            lines.append(f"Class agreement: {self.agreement}")
        return "\n".join(lines)


def reference_features(path: str | Path, extractor: FeatureExtractor, progress: bool = True) -> ReferenceFeatures:
    """Pool features of a reference batch and its statistics (stored ones when present)."""
    feats = extract(path, extractor, progress=progress)
    stored = read_statistics(path)
    if stored is not None:
        made_by = batch_features(path)
        if made_by is not None and made_by != extractor.name:
            raise BatchFileError(
                f"{Path(path).name} stores {made_by} statistics but the {extractor.name} extractor was chosen; "
                f"use --features {made_by}"
            )
        if stored["mu"].shape[0] != feats.pool.shape[1]:
            raise BatchFileError(
                f"{Path(path).name} stores {stored['mu'].shape[0]}-d statistics but the {extractor.name} extractor "
                f"gives {feats.pool.shape[1]}-d features; choose the extractor the reference was made with"
            )
        return ReferenceFeatures(
            feats.pool, FIDStatistics(stored["mu"], stored["sigma"]), FIDStatistics(stored["mu_s"], stored["sigma_s"])
        )
    return ReferenceFeatures(feats.pool, compute_statistics(feats.pool), compute_statistics(feats.spatial))


def score_features(
    ref: ReferenceFeatures,
    sample: Features,
    labels: np.ndarray | None = None,
    device="cpu",
    pr_precision: str = "float16",
) -> EvalResult:
    """The five metrics of sample features against a reference (k-NN distances computed on ``device``,
    ``pr_precision``: see :func:`~goc_utils.evaluation.metrics.adm.pairwise_sq_distances`)."""
    prec, rec = precision_recall(ref.pool, sample.pool, precision=pr_precision, device=device)
    agreement = None
    if labels is not None:
        if len(labels) != len(sample.logits) or not 0 <= labels.min(initial=0) <= labels.max(initial=0) < len(
            sample.logits[0]
        ):
            raise MetricError(
                f"{len(labels)} class labels in {labels.min(initial=0)}..{labels.max(initial=0)} for "
                f"{len(sample.logits)} samples of a {sample.logits.shape[1]}-class judge; labels must be one per "
                f"sample in 0..{sample.logits.shape[1] - 1}"
            )
        agreement = float(np.mean(sample.logits.argmax(1) == labels))
    return EvalResult(
        inception_score=inception_score(sample.logits),
        fid=compute_statistics(sample.pool).frechet_distance(ref.stats),
        sfid=compute_statistics(sample.spatial).frechet_distance(ref.spatial_stats),
        precision=prec,
        recall=rec,
        samples=len(sample.pool),
        agreement=agreement,
    )


def evaluate_batches(
    ref_path: str | Path,
    sample_path: str | Path,
    extractor: FeatureExtractor,
    progress: bool = True,
    pr_precision: str = "float16",
) -> EvalResult:
    """IS, FID, sFID, precision, recall of ``sample_path`` against ``ref_path`` (both ADM ``.npz``)."""
    check_same_size(batch_info(ref_path), batch_info(sample_path))
    ref = reference_features(ref_path, extractor, progress)
    labels = read_labels(sample_path) if extractor.judges_classes else None
    sample = extract(sample_path, extractor, progress=progress)
    return score_features(ref, sample, labels, extractor.device, pr_precision)


def make_reference_batch(
    images: np.ndarray, out: str | Path, extractor: FeatureExtractor, labels: np.ndarray | None = None
) -> Path:
    """Write an ADM reference batch: ``arr_0`` plus ``mu``, ``sigma``, ``mu_s``, ``sigma_s`` (and labels)."""
    feats = extractor(images)
    pool, spatial = compute_statistics(feats.pool), compute_statistics(feats.spatial)
    arrays = {"arr_0": images, "mu": pool.mu, "sigma": pool.sigma, "mu_s": spatial.mu, "sigma_s": spatial.sigma}
    if labels is not None:
        arrays["arr_1"] = np.asarray(labels, dtype=np.int64)
    arrays["features"] = np.array(extractor.name)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return write_npz(out, **arrays)


__all__ = [
    "EvalResult",
    "ReferenceFeatures",
    "evaluate_batches",
    "make_reference_batch",
    "reference_features",
    "score_features",
]
