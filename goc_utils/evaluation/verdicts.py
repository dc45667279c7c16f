"""The study's verdicts (``goc verdicts``): pairs of methods from a ``goc eval`` run compared on the same noise.

For each pair ``(A, B)`` and guidance scale: the paired PSNR difference against the un-cached samples of the same
noise (the fidelity verdict) and the paired FID difference against the reference batch (the quality verdict), each
with its paired bootstrap spread (:mod:`goc_utils.evaluation.metrics.paired`) and whether it is resolved (beyond
twice the spread). The samples and their cached features are the ones ``goc eval`` wrote: nothing is sampled here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.evaluation.eval import method_folder
from goc_utils.evaluation.metrics.adm import paired_fid_difference
from goc_utils.evaluation.metrics.evaluate import reference_features
from goc_utils.evaluation.metrics.features import FeatureExtractor, extract_cached
from goc_utils.evaluation.metrics.fidelity import paired_psnr_difference
from goc_utils.evaluation.sampling import MANIFEST_NAME, read_manifest

SAME_NOISE_KEYS = (
    "model", "ckpt", "image_size", "vae", "steps", "sampler", "cfg_scale", "seed", "inputs.weights", "inputs.vae",
)  # fmt: skip
"""The ``run.json`` settings that samples compared image by image must share: the same weights, noise and chain
(``inputs.*``: the contents' sha256, where both runs recorded them)."""


def _setting(manifest: Mapping, key: str):
    """``manifest[key]``, ``inputs.weights`` read as ``manifest["inputs"]["weights"]``; a missing entry is
    :data:`_MISSING`."""
    value = manifest
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()

MAX_RESAMPLES = 100_000
"""The most bootstrap resamples a verdict draws: a spread is settled long before (the default is 200)."""


def check_same_noise(samples: Mapping[str, Path]) -> None:
    """One line when the ``run.json`` manifests next to sample files (where present; ``{role: samples.npz}``)
    disagree on a setting of :data:`SAME_NOISE_KEYS`, naming the setting and the two roles: their images are not of
    the same noise and model, so a paired difference between them means nothing."""
    manifests = {
        role: read_manifest(path.parent)
        for role, path in samples.items()
        if (path.parent / MANIFEST_NAME).exists() or (path.parent / MANIFEST_NAME).is_symlink()
    }
    for key in SAME_NOISE_KEYS:
        found = [(role, _setting(manifest, key)) for role, manifest in manifests.items()]
        seen = [(role, value) for role, value in found if value is not _MISSING]
        lacking = next((role for role, value in found if value is _MISSING), None)
        if seen and lacking is not None and not key.startswith("inputs."):  # digests: only newer runs have them
            raise InvalidArgumentError(
                f"{lacking}'s run.json does not record {key}, which {seen[0][0]}'s records ({shorten(seen[0][1], 60)});"
                " compare samples of the same noise and model: sample them with goc eval-sample"
            )
        other = next(((role, value) for role, value in seen if json.dumps(value) != json.dumps(seen[0][1])), None)
        if other is not None:
            (role_a, value_a), (role_b, value_b) = seen[0], other
            raise InvalidArgumentError(
                f"{role_a} was sampled with {key}={shorten(value_a, 60)} but {role_b} with {key}={shorten(value_b, 60)}"
                " (their run.json); compare samples of the same noise and model: sample them with the same settings"
            )


def _samples(run: Path, cfg: float, method: str) -> Path:
    path = run / f"cfg{cfg:g}" / method_folder(method) / "samples.npz"
    if not path.is_file():
        raise InvalidArgumentError(
            f"no finished samples of {shorten(method, 80)!r} at cfg {cfg:g} in {shorten(str(run))} ({path.name} "
            "missing); run goc eval with this method first"
        )
    return path


def verdict_rows(
    run: str | Path,
    pairs: Sequence[tuple[str, str]],
    cfg_scales: Sequence[float],
    extractor: FeatureExtractor,
    ref_batch: str | Path,
    resamples: int = 200,
    seed: int = 0,
) -> list[dict]:
    """One row per pair and guidance scale: PSNR and FID of A and B, ``A - B`` and its paired spread, resolved or
    not. ``run`` is a ``goc eval --out`` folder holding ``cfg<c>/<method>/samples.npz`` and the un-cached ``none``.
    Every sample file is checked before anything is computed."""
    run = Path(run)
    for cfg in cfg_scales:
        methods = dict.fromkeys([m for pair in pairs for m in pair] + ["none"])
        check_same_noise({shorten(method, 60): _samples(run, cfg, method) for method in methods})
    ref = reference_features(ref_batch, extractor, progress=False).stats
    rows = []
    for cfg in cfg_scales:
        for a, b in pairs:
            path_a, path_b = _samples(run, cfg, a), _samples(run, cfg, b)
            psnr = paired_psnr_difference(path_a, path_b, _samples(run, cfg, "none"), resamples, seed)
            features = [extract_cached(p, extractor, progress=False).pool for p in (path_a, path_b)]
            fid = paired_fid_difference(*features, ref, resamples, seed)
            rows.append({
                "A": a, "B": b, "cfg": f"{cfg:g}", "samples": psnr.count,
                "PSNR A dB": f"{psnr.a:.2f}", "PSNR B dB": f"{psnr.b:.2f}",
                "PSNR A-B dB": f"{psnr.difference:+.2f}", "PSNR std": f"{psnr.std:.2f}",
                "PSNR resolved": "yes" if psnr.resolved else "no",
                "FID A": f"{fid.a:.2f}", "FID B": f"{fid.b:.2f}",
                "FID A-B": f"{fid.difference:+.2f}", "FID std": f"{fid.std:.2f}",
                "FID resolved": "yes" if fid.resolved else "no",
            })  # fmt: skip
    return rows


__all__ = ["MAX_RESAMPLES", "SAME_NOISE_KEYS", "check_same_noise", "verdict_rows"]
