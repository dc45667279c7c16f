"""The tiny tiers' reports (``goc tiny-report``, the first step of ``make study``): samples, judge agreement,
the VAE's reconstructions and FID at two sample counts (``figures/00_<tier>_*``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from goc_utils import paths
from goc_utils.datasets import from_uint8, load_fashion_mnist, load_fashion_tensors, to_uint8
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.eval import EvalSettings, eval_sample
from goc_utils.evaluation.metrics.adm import fid_bootstrap_std
from goc_utils.evaluation.metrics.batches import batch_info, read_labels
from goc_utils.evaluation.metrics.evaluate import reference_features, score_features
from goc_utils.evaluation.metrics.features import Features, build_extractor, default_reference, extract_cached
from goc_utils.evaluation.metrics.judges import predicted_classes, reference_images
from goc_utils.evaluation.sampling import check_space
from goc_utils.evaluation.tables import write_table
from goc_utils.files import check_memory
from goc_utils.model.checkpoints import load_model
from goc_utils.model.judges import load_fashion_classifier
from goc_utils.model.presets import preset_info
from goc_utils.model.sampler import class_labels, generate, image_shape
from goc_utils.model.vae import latent_scale, load_vae, vae_spec
from goc_utils.study.viz import save_labelled_grid
from goc_utils.training.judges import classifier_accuracy
from goc_utils.training.vae import reconstruction_psnr


@dataclass
class AgreementRow:
    """One line of the tiny-digits quality table."""

    cfg_scale: float
    samples: int
    agreement: float
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds


REPORT_NAMES = {"tiny-digits": "tiny", "tiny-fashion": "fashion"}
"""Figure prefix of each tiny tier's report: ``figures/00_<prefix>_*``."""


def report_inputs(
    preset: str, per_class: int | None = None, ckpt: str | Path | None = None
) -> tuple[torch.nn.Module, object | None, int]:
    """``(model, VAE or None, per_class)`` of a :func:`tiny_report`, every one checked before anything is written:
    the tier, the weights, the VAE against the DiT and the memory of one batch of ``per_class`` samples per class
    (its images, noise and chain state; one line naming ``--per-class``)."""
    if preset not in REPORT_NAMES:
        raise InvalidArgumentError(f"the report covers the tiny tiers ({', '.join(REPORT_NAMES)}); got {preset!r}")
    per_class = per_class or (100 if preset == "tiny-fashion" else 50)
    model = load_model(preset, ckpt)
    vae = load_vae(vae_spec(None, ckpt, preset), preset=preset) if preset_info(preset).latent else None
    height, width, channels = image_shape(model, vae)
    n = model.num_classes * per_class
    check_memory(n * (height * width * channels + 24 * model.in_channels * model.input_size**2),
                 f"--per-class {per_class} ({n:,} images)", "sample fewer per class")  # fmt: skip
    return model, vae, per_class


def tiny_report(
    preset: str = "tiny-digits",
    per_class: int | None = None,
    cfg_scales: tuple[float, ...] = (1.5, 4.0),
    steps: int = 20,
    seed: int = 0,
    grid_per_class: int = 10,
    ckpt: str | Path | None = None,
    out_dir: Path | None = None,
) -> list[AgreementRow]:
    """Sample a tiny tier per cfg scale, judge the samples with its classifier, write figures.

    ``per_class`` defaults to 50 (tiny-digits) / 100 (tiny-fashion). Writes ``00_<prefix>_samples.png/.pdf``
    (``grid_per_class`` samples per class at the largest cfg scale, one row per class, misjudged samples
    marked) and ``00_<prefix>_agreement.md/.csv`` to ``out_dir`` (default ``figures/``), prefix ``tiny`` for
    tiny-digits and ``fashion`` for tiny-fashion. Returns one :class:`AgreementRow` per scale.
    """
    torch.set_grad_enabled(False)
    model, vae, per_class = report_inputs(preset, per_class, ckpt)
    prefix = REPORT_NAMES[preset]
    out_dir = Path(out_dir or paths.FIGURES_DIR)
    labels = class_labels(range(model.num_classes), per_class)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, grid_source = [], None
    for cfg in tqdm(cfg_scales, desc=f"{preset} report"):
        started = time.perf_counter()
        result = generate(model, labels, seed=seed, steps=steps, cfg_scale=cfg, vae=vae)
        seconds = time.perf_counter() - started
        predicted = predicted_classes(result.images, preset)
        rows.append(AgreementRow(cfg, len(labels), float(np.mean(predicted == result.labels)), seconds))
        if cfg == max(cfg_scales):
            grid_source = (result, predicted)
    result, predicted = grid_source
    pick = np.concatenate(
        [np.arange(c * per_class, c * per_class + min(grid_per_class, per_class)) for c in range(model.num_classes)]
    )
    best = rows[cfg_scales.index(max(cfg_scales))]
    what = "digit" if preset == "tiny-digits" else "class"
    save_labelled_grid(
        result.images[pick],
        result.labels[pick],
        out_dir / f"00_{prefix}_samples.png",
        nrow=min(grid_per_class, per_class),
        title=f"{preset}, DDIM-{steps}, cfg {best.cfg_scale:g}: one row per {what} "
        f"(classifier agreement {100 * best.agreement:.1f}%)",
        predicted=predicted[pick],
    )
    write_table(
        [{"cfg scale": f"{r.cfg_scale:g}", "samples": r.samples, "classifier agreement": f"{100 * r.agreement:.1f}%"}
         for r in rows],
        f"00_{prefix}_agreement",
        out_dir,
        csv_rows=[{"cfg_scale": f"{r.cfg_scale:g}", "samples": r.samples, "agreement": f"{r.agreement:.4f}"}
                  for r in rows],
    )  # fmt: skip
    return rows


def fashion_vae_figure(vae, per_class: int = 2, out_dir: Path | None = None) -> Path:
    """Test images (the first ``per_class`` of each class, one per column) each above its VAE reconstruction:
    ``00_fashion_vae``, rows alternating original / ``decode(encode(x))``."""
    images, labels = reference_images("tiny-fashion")
    rows = []
    for k in range(per_class):
        pick = np.array([np.flatnonzero(labels == c)[k] for c in range(10)])
        with torch.no_grad():
            recon = to_uint8(vae.decode(vae.encode(from_uint8(images[pick])).latent_dist.mean).sample)
        rows += [images[pick], recon]
    out = Path(out_dir or paths.FIGURES_DIR) / "00_fashion_vae.png"
    return save_labelled_grid(
        np.concatenate(rows), np.zeros(20 * per_class, dtype=int), out, nrow=10,
        title="tiny-fashion VAE (32x32 -> 8x8x4 -> 32x32): test images, each above its reconstruction",
    )  # fmt: skip


FID_BATCH = 250
"""Images per forward and per shard of the tier's un-cached FID samples."""

FASHION_SAMPLES_DIR = paths.RUNS_DIR / "report" / "tiny-fashion"
"""Where :func:`fashion_tier_report` keeps its un-cached samples."""


def check_fashion_tier_report(fid_samples: Sequence[int], samples_dir: Path | None = None) -> None:
    """Before anything is written: one line when an input of :func:`fashion_tier_report` is missing or unfit (the
    test images, the tier's VAE, the judge, the reference batch) or when the samples of the largest of
    ``fid_samples`` would not fit the disk under ``samples_dir`` or this machine's memory (naming ``--fid-samples``)."""
    load_fashion_mnist("test")
    vae = load_vae(vae_spec(None, None, "tiny-fashion"), preset="tiny-fashion")
    load_fashion_classifier()
    batch_info(default_reference("fashion"))
    side, n = preset_info("tiny-fashion").default_image_size, max(fid_samples)
    shape = (side, side, int(vae.config.out_channels))
    check_space(Path(samples_dir or FASHION_SAMPLES_DIR), n, FID_BATCH, shape, what=f"--fid-samples {n:,}")


def fashion_tier_report(
    fid_samples: Sequence[int] = (2000, 5000),
    fid_bootstrap: int = 20,
    samples_dir: Path | None = None,
    out_dir: Path | None = None,
    ckpt: str | Path | None = None,
) -> dict:
    """The tiny-fashion tier measured: VAE, judge, un-cached FID; writes ``figures/00_fashion_tier.md|csv``.

    - VAE: its config's ``scaling_factor`` and the reconstruction PSNR on the 10,000 test images
      (``decode(posterior mean)``; 32x32 and the 28x28 garment area), plus :func:`fashion_vae_figure`.
    - Judge: top-1 accuracy on the 10,000 test images.
    - Un-cached DDIM-20 samples at cfg 1.5 against the test set (judge features), at each of ``fid_samples``
      sample counts (the first n of one run: samples are seeded one by one), with FID's bootstrap spread
      (``fid_bootstrap`` resamples). Samples are kept in ``samples_dir`` (default ``runs/report/tiny-fashion``);
      a rerun only re-scores them.
    """
    out_dir = Path(out_dir or paths.FIGURES_DIR)
    samples_dir = Path(samples_dir or FASHION_SAMPLES_DIR)
    check_fashion_tier_report(fid_samples, samples_dir)
    torch.set_grad_enabled(False)
    vae = load_vae(vae_spec(None, None, "tiny-fashion"), preset="tiny-fashion")
    test_x, test_y = load_fashion_tensors("test")
    recon = reconstruction_psnr(vae, test_x)
    fashion_vae_figure(vae, out_dir=out_dir)
    accuracy = classifier_accuracy(load_fashion_classifier(), test_x, test_y)
    model = load_model("tiny-fashion", ckpt)
    extractor = build_extractor("fashion")
    rows = [
        {"quantity": "VAE scaling_factor (1 / std of the training latents)", "value": f"{latent_scale(vae):.5g}"},
        {"quantity": "VAE reconstruction PSNR, 10,000 test images, 32x32 (dB)", "value": f"{recon['psnr_32']:.2f}"},
        {"quantity": "VAE reconstruction PSNR, 28x28 garment area (dB)", "value": f"{recon['psnr_28']:.2f}"},
        {"quantity": "judge accuracy, 10,000 test images", "value": f"{100 * accuracy:.1f}%"},
    ]
    settings = EvalSettings(model="tiny-fashion", ckpt=None if ckpt is None else str(ckpt), cfg_scale=1.5,
                            vae=vae_spec(None, None, "tiny-fashion"), per_device_batch=FID_BATCH)  # fmt: skip
    npz = eval_sample(model, settings, "none", samples_dir, max(fid_samples), vae)  # per-sample seeds: nested subsets
    ref = reference_features(default_reference("fashion"), extractor)
    feats, labels = extract_cached(npz, extractor), read_labels(npz)
    for n in sorted(fid_samples):
        sub = Features(feats.pool[:n], feats.spatial[:n], feats.logits[:n])
        r = score_features(ref, sub, labels[:n])
        spread = fid_bootstrap_std(sub.pool, ref.stats, fid_bootstrap)
        rows += [
            {"quantity": f"FID vs the 10,000 test images, un-cached, cfg 1.5, {n:,} samples (+- bootstrap std, "
                         f"{fid_bootstrap} resamples)", "value": f"{r.fid:.2f} +- {spread:.2f}"},
            {"quantity": f"sFID / IS / precision / recall, {n:,} samples",
             "value": f"{r.sfid:.2f} / {r.inception_score:.2f} / {r.precision:.3f} / {r.recall:.3f}"},
            {"quantity": f"judge agreement at cfg 1.5, {n:,} samples", "value": f"{100 * r.agreement:.1f}%"},
        ]  # fmt: skip
    write_table(rows, "00_fashion_tier", out_dir)
    return {r["quantity"]: r["value"] for r in rows}
