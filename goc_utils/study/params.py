"""Study-level orchestration: small end-to-end jobs that notebooks and ``make study`` call."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from goc_utils import paths
from goc_utils.cache import CacheMethod, split_methods, without_router
from goc_utils.cache.l2c import default_router
from goc_utils.datasets import from_uint8, load_fashion_tensors, to_uint8
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.bench import same_noise_runs
from goc_utils.evaluation.eval import (
    EvalSettings,
    eval_sample,
    parse_methods,
    read_results,
    rounded,
    run_eval,
    write_results,
)
from goc_utils.evaluation.metrics.adm import fid_bootstrap_std
from goc_utils.evaluation.metrics.batches import batch_info, read_labels
from goc_utils.evaluation.metrics.evaluate import reference_features, score_features
from goc_utils.evaluation.metrics.features import (
    Features,
    build_extractor,
    default_features,
    default_reference,
    extract_cached,
)
from goc_utils.evaluation.metrics.judges import predicted_classes, reference_images
from goc_utils.evaluation.sampling import class_labels, generate, parse_classes
from goc_utils.evaluation.tables import show_table, write_table
from goc_utils.integrations.diffusers.hooks import DiffusersDiT, apply_cache, remove_cache
from goc_utils.integrations.diffusers.transformer import export_diffusers, load_transformer
from goc_utils.model.dit import check_preset, load_model, preset_info, resolve_device
from goc_utils.model.macs import model_macs, theoretical_speedup
from goc_utils.model.vae import latent_scale, load_vae, vae_spec
from goc_utils.priors.stats import (
    PriorsError,
    PriorStats,
    auto_goc,
    check_compatible,
    default_priors_path,
    extract_priors,
    unit_macs_weights,
)
from goc_utils.study.ablations import HOSTS
from goc_utils.study.viz import goc_simulation_plot, save_labelled_grid
from goc_utils.training.dit import classifier_accuracy, load_fashion_classifier
from goc_utils.training.vae import reconstruction_psnr

__all__ = [  # what the notebooks use
    "StudyParams",
    "fid_table",
    "goc_on_priors_figure",
    "inflection_table",
    "load_or_extract_priors",
    "method_table",
    "notebook_methods",
    "same_noise_runs",
    "show_table",
    "fashion_tier_report",
    "tiny_report",
    "write_table",
]


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
    if preset not in REPORT_NAMES:
        raise InvalidArgumentError(f"the report covers the tiny tiers ({', '.join(REPORT_NAMES)}); got {preset!r}")
    prefix = REPORT_NAMES[preset]
    per_class = per_class or (100 if preset == "tiny-fashion" else 50)
    out_dir = Path(out_dir or paths.FIGURES_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    model = load_model(preset, ckpt)
    vae = load_vae(vae_spec(None, ckpt, preset)) if preset_info(preset).latent else None
    labels = class_labels(range(model.num_classes), per_class)
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
    samples_dir = Path(samples_dir or paths.RUNS_DIR / "report" / "tiny-fashion")
    torch.set_grad_enabled(False)
    vae = load_vae(vae_spec(None, None, "tiny-fashion"))
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
                            vae=vae_spec(None, None, "tiny-fashion"), per_device_batch=250)  # fmt: skip
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


@dataclass
class StudyParams:
    """Parameters shared by the study notebooks (the ``parameters`` cell's values, checked).

    Attributes:
        model: preset name (``tiny-digits``, ``DiT-XL/2``, ...).
        ckpt: DiT weights; None = the preset's committed weights.
        vae: latent presets: ``ema`` | ``mse`` | folder | hub id; ``""`` = the preset's own VAE.
        image_size: pixels; None = the preset's default.
        steps: DDIM steps.
        cfg_scale: classifier-free guidance scale (>= 0).
        seed: noise seed.
        smoke: fast mode for CI (fewer samples).
        device: ``auto`` | ``cpu`` | ``cuda``.
    """

    model: str = "tiny-digits"
    ckpt: str | None = None
    vae: str = ""
    image_size: int | None = None
    steps: int = 20
    cfg_scale: float = 4.0
    seed: int = 0
    smoke: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        # notebook parameters use "" / 0 for "not given" (papermill cannot parse Optional annotations)
        if self.ckpt == "":
            self.ckpt = None
        if self.image_size == 0:
            self.image_size = None

        expected = {
            "model": str,
            "vae": str,
            "steps": int,
            "cfg_scale": (int, float),
            "seed": int,
            "smoke": bool,
            "device": str,
            "ckpt": (str, type(None)),
            "image_size": (int, type(None)),
        }
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, expected[f.name]) or (expected[f.name] is int and isinstance(value, bool)):
                raise InvalidArgumentError(
                    f"parameter {f.name}={value!r} has type {type(value).__name__}; expected {f.type}"
                )
        check_preset(self.model)  # steps and cfg_scale are checked where they are used (the sampler)

    @property
    def torch_device(self) -> str:
        return resolve_device(self.device)

    def load_model(self):
        """The DiT in eval mode on the chosen device."""
        return load_model(self.model, self.ckpt, self.image_size, self.torch_device)

    def load_vae(self):
        """The VAE for latent presets, None for pixel presets."""
        return load_vae(self.vae_spec, self.torch_device) if preset_info(self.model).latent else None

    @property
    def vae_spec(self) -> str:
        """The VAE this run uses (``vae``, else the checkpoint pipeline's, else the preset's)."""
        return vae_spec(self.vae or None, self.ckpt, self.model)


def load_or_extract_priors(p: StudyParams, classes: str = "all", per_class: int = 1, save: bool = True):
    """Priors of the run described by ``p``: the default file if it fits, else extracted now.

    Freshly extracted priors are saved to the default location only when no file is there
    (a committed file is never overwritten by a run over other classes).
    """
    path = default_priors_path(p.model, p.steps, p.cfg_scale)
    model = p.load_model()
    wanted = list(range(model.num_classes)) if classes == "all" else parse_classes(classes)
    if path.is_file():
        try:
            stats = PriorStats.load(path)
            check_compatible(
                {
                    "model": p.model,
                    "steps": p.steps,
                    "cfg_scale": p.cfg_scale,
                    "depth": model.depth,
                    "tokens": model.num_tokens,
                    "hidden": model.hidden_size,
                },
                stats.header(),
                "use priors",
            )
            if sorted(set(stats.classes)) == sorted(wanted) and stats.count == len(wanted) * per_class:
                return stats
        except PriorsError:
            pass
    stats = extract_priors(model, p.model, wanted, seeds=list(range(per_class)), steps=p.steps, cfg_scale=p.cfg_scale)
    if save and not path.exists():
        stats.save(path)
    return stats


def inflection_table(
    stats,
    schedules: Sequence[str] = ("fora-25", "fora-50", "l2c"),
    router: str | None = None,
    sources: Sequence[str] = ("samples", "mean"),
    coupling: str = "block",
):
    """Per host schedule and replayed trajectory: automatic correction steps and weight vs the paper's.

    ``sources``: ``samples`` (GOC replayed on every prior sample's own trajectory, the default
    rule) and ``mean`` (on the class-averaged trajectory, the paper's prior knowledge); ``samples``
    is skipped for files without per-sample statistics. Rows hold the predicted (MACs-weighted
    relative L2) error of plain reuse, of GOC with the paper's steps and w, and of GOC with the
    inflection-aware steps and least-squares w. Schedules needing a router are skipped without one.
    """
    rows = []
    for source in sources:
        if source == "samples" and not stats.has_gram:
            continue
        for name in without_router(list(schedules), router)[0]:
            schedule = CacheMethod.parse(name, router=router).build_schedule(stats.steps, stats.depth)
            auto = auto_goc(stats, schedule, source=source, coupling=coupling)
            rows.append(
                {
                    "schedule": name,
                    "replayed on": "per-sample trajectories" if source == "samples" else "class-mean trajectory",
                    "paper steps": ",".join(map(str, schedule.reference_correction_steps or ())),
                    "paper w": schedule.reference_weight,
                    "auto steps": ",".join(map(str, auto.steps)),
                    "inflections": ",".join(map(str, auto.inflections)),
                    "auto w": round(auto.weight, 3),
                    "error plain": round(auto.error_plain, 3),
                    "error paper GOC": round(auto.error_paper, 3),
                    "error auto GOC": round(auto.error_auto, 3),
                }
            )
    return rows


def goc_on_priors_figure(stats, schedule_name: str, router: str | None = None):
    """:func:`goc_utils.study.viz.goc_simulation_plot` for the automatic steps and weight of a host schedule."""
    schedule = CacheMethod.parse(schedule_name, router=router).build_schedule(stats.steps, stats.depth)
    auto = auto_goc(stats, schedule)
    return goc_simulation_plot(
        auto.probe_simulation,
        f"{schedule_name}: GOC on the prior trajectory, w = {auto.probe:.2f} (red: inflection steps)",
        unit_macs_weights(stats),
    )


def notebook_methods(methods: str, router: str | None, priors, smoke: bool = False) -> list[str]:
    """The method strings a notebook can run: those needing a router are dropped without one, ``auto``
    ones without priors; ``smoke`` keeps the fora-50 ones."""
    wanted = without_router(split_methods(methods), router)[0]
    wanted = [m for m in wanted if priors is not None or not CacheMethod.parse(m, router=router).needs_priors]
    return [m for m in wanted if "fora-50" in m] if smoke else wanted


def method_table(model, results: dict, errors: dict, steps: int, router: str | None = None) -> list[dict]:
    """Cache ratio (units, MACs), theoretical speedup and final RMSE vs no cache for each method."""
    macs = model_macs(model)
    rows = []
    for method in results:
        schedule = CacheMethod.parse(method, router=router).build_schedule(steps, model.depth)
        rows.append(
            {
                "method": method,
                "cached units": f"{100 * schedule.cache_ratio:.1f}%",
                "cached MACs": f"{100 * schedule.cache_ratio_macs(macs.units):.1f}%",
                "theoretical speedup": f"{theoretical_speedup(macs, schedule):.3f}x",
                "final RMSE vs none": f"{float(errors[method][-1]):#.3g}",
            }
        )
    return rows


def fid_table(
    p: StudyParams,
    methods: str,
    cfg_scales: str = "1.5",
    num_samples: int = 2000,
    per_device_batch: int = 250,
    router: str = "",
    ref_batch: str = "",
    features: str = "",
    inception_weights: str = "",
    samples_dir: str = "",
    latency_repeats: int = 3,
    fid_bootstrap: int = 20,
    name: str = "05_fid_table",
) -> list[dict]:
    """`goc eval` from a notebook: sample (resumably) and score every method, write ``figures/<name>.csv|md``.

    The table leaves out wall-clock columns (so ``make study`` reproduces it byte for byte);
    latencies go to ``figures/<name>_latency.csv|md``, which changes from run to run.

    Samples go to ``samples_dir`` (default ``runs/eval/<model>/cfg<c>/<method>/``), the folder
    ``make eval-tiny`` fills too, so a finished run is only re-scored. ``l2c`` methods are skipped
    when no router is given and none is committed for the model.
    """
    features = features or default_features(p.model)
    ref = ref_batch or str(default_reference(features) or "")
    if not ref:
        raise InvalidArgumentError(
            "parameter ref_batch is required with Inception features: the ADM reference batch "
            "VIRTUAL_imagenet256_labeled.npz (see the README section on DiT-XL/2)"
        )
    batch_info(ref)
    router_path = router or default_router(p.model, p.steps)
    wanted = without_router(parse_methods(methods), router_path)[0]
    scales = [float(c) for c in cfg_scales.split(",") if c.strip()]
    model, vae = p.load_model(), p.load_vae()
    extractor = build_extractor(features, p.torch_device, inception_weights or None)
    out = Path(samples_dir) if samples_dir else paths.RUNS_DIR / "eval" / p.model.replace("/", "-")
    rows = []
    for cfg in scales:
        settings = EvalSettings(
            model=p.model, ckpt=p.ckpt, image_size=p.image_size, vae=p.vae_spec, steps=p.steps, cfg_scale=cfg,
            seed=p.seed, per_device_batch=per_device_batch, router=router_path,
        )  # fmt: skip
        rows += run_eval(
            model, settings, wanted, num_samples, out / f"cfg{cfg:g}", ref, extractor, vae,
            latency_repeats=latency_repeats, fid_bootstrap=fid_bootstrap,
        )  # fmt: skip
    write_results(rows, paths.FIGURES_DIR, name, timing=False)  # byte-reproducible
    latency = [{"method": r.method, "cfg": r.cfg_scale, "MACs speedup": f"{r.macs_speedup:.3f}x",
                "latency s/batch": f"{r.latency_s:.4f}", "measured speedup": f"{r.measured_speedup:.3f}x"}
               for r in rows]  # fmt: skip
    write_table(latency, f"{name}_latency")
    return [asdict(rounded(r)) for r in rows]  # figures drawn from the committed (rounded) numbers


# --------------------------------------------------------------------------------------
# Notebook 07: GOC in a diffusers pipeline
# --------------------------------------------------------------------------------------

PEERS_TABLE = "07_diffusers_peers"
"""The committed peers table (``make peers-tiny``): figures/07_diffusers_peers.{csv,md}."""


def diffusers_transformer(p: StudyParams, folder: str = ""):
    """``(transformer, folder)``: a diffusers DiT from ``folder`` (a pipeline folder such as a local copy of
    ``facebook/DiT-XL-2-256``, or a ``transformer/`` folder), or the preset's weights exported once to
    ``runs/diffusers/<model>/`` (what ``goc export-diffusers`` writes)."""
    if not folder:
        target = paths.RUNS_DIR / "diffusers" / p.model.replace("/", "-")
        if not (target / "config.json").is_file():
            export_diffusers(p.load_model(), target)
        folder = str(target)
    return load_transformer(folder, p.torch_device), folder


def diffusers_same_noise(
    transformer, method: str, p: StudyParams, classes: str = "0-9", vae=None, router: str = "", priors=None
) -> tuple[dict, float]:
    """Sample the same noise on a diffusers DiT without a cache and under ``apply_cache(method)``:
    ``({"none": result, method: result}, RMSE of the final latents)``."""
    wrapped = DiffusersDiT(transformer)
    labels = parse_classes(classes)
    kwargs = dict(seed=p.seed, steps=p.steps, cfg_scale=p.cfg_scale, vae=vae)
    results = {"none": generate(wrapped, labels, **kwargs)}
    parsed = CacheMethod.parse(method, router=router or default_router(p.model, p.steps))
    apply_cache(transformer, parsed, p.steps, priors)
    try:
        results[method] = generate(wrapped, labels, **kwargs)
    finally:
        remove_cache(transformer)
    rmse = float(((results[method].final - results["none"].final) ** 2).mean().sqrt())
    return results, rmse


def peers_rows(path: str | Path | None = None) -> list[dict]:
    """The committed peers table's rows (``figures/07_diffusers_peers.csv``); one line says how to make it."""
    path = Path(path) if path else paths.PROJECT_ROOT / "figures" / f"{PEERS_TABLE}.csv"
    if not path.is_file():
        raise InvalidArgumentError(f"{str(path)!r} does not exist yet; make it with `make peers-tiny` (about 30 min)")
    return read_results(path)


# --------------------------------------------------------------------------------------
# Notebook 08: the paper's ablations measured on samples
# --------------------------------------------------------------------------------------


def ablation_eval(p: StudyParams, methods: Sequence[str], num_samples: int, out: Path, router: str = "",
                  fid_bootstrap: int = 0, per_device_batch: int = 250) -> list[dict]:  # fmt: skip
    """``goc eval`` of ``methods`` at ``p.cfg_scale`` into ``out`` (resumable), rows rounded as committed."""
    settings = EvalSettings(
        model=p.model, ckpt=p.ckpt, image_size=p.image_size, vae=p.vae_spec, steps=p.steps, cfg_scale=p.cfg_scale,
        seed=p.seed, per_device_batch=per_device_batch, router=router or default_router(p.model, p.steps),
    )  # fmt: skip
    features = default_features(p.model)
    extractor = build_extractor(features, p.torch_device)
    rows = run_eval(p.load_model(), settings, list(methods), num_samples, out, str(default_reference(features)),
                    extractor, p.load_vae(), latency_repeats=1, progress=True, fid_bootstrap=fid_bootstrap)  # fmt: skip
    return [asdict(rounded(r)) for r in rows]


def ablation_auto(p: StudyParams, stats, router: str = "") -> dict:
    """What ``goc:auto`` resolves to per ablation host: ``{host: {"steps", "weight", "weight_published_steps"}}``."""
    router = router or str(default_router(p.model, p.steps))
    model = p.load_model()
    out = {}
    for host in HOSTS:
        schedule = CacheMethod.parse(host, router=router).build_schedule(p.steps, model.depth)
        auto = auto_goc(stats, schedule)
        published = auto_goc(stats, schedule, steps=schedule.reference_correction_steps, weight="auto")
        out[host] = {
            "steps": auto.steps, "weight": float(auto.weight), "weight_published_steps": float(published.weight)
        }
    return out


def ablation_verdicts(weights: list[dict], inflections: list[dict], ratio: list[dict], auto: dict, runs) -> list[str]:
    """One sentence per ablation, computed from the measured rows."""
    by_w, by_step, rows = ({r["method"]: r for r in table} for table in (weights, inflections, ratio))
    lines = []
    for host, paper_w in HOSTS.items():
        grid = [(float(m.rsplit("=", 1)[1]), r["psnr_vs_none"]) for m, r in by_w.items()
                if m.startswith(f"{host}+goc:w=") and not m.endswith("auto")]  # fmt: skip
        best_w, best = max(grid, key=lambda x: x[1])
        ls = by_w.get(f"{host}+goc:w=auto", {}).get("psnr_vs_none", float("nan"))
        lines.append(
            f"w ({host}): best measured w on the grid = {best_w:g} ({best:.1f} dB); paper's w {paper_w} gives "
            f"{by_w[f'{host}+goc']['psnr_vs_none']:.1f} dB; least-squares w {auto[host]['weight_published_steps']:.2f} "
            f"gives {ls:.1f} dB"
        )
        base = by_step[f"{host}+goc"]["psnr_vs_none"]  # the same samples as the single-step changes
        hurt = [s for h, m, kind, s in runs if h == host and kind == "without" and by_step[m]["psnr_vs_none"] > base]
        helps = [s for h, m, kind, s in runs if h == host and kind == "with" and by_step[m]["psnr_vs_none"] > base]
        lines.append(
            f"inflections ({host}): published steps whose correction hurts (leaving it out raises PSNR): "
            f"{hurt or 'none'}; "
            f"skipped steps whose correction would help: {helps or 'none'}; goc:auto skips "
            f"{sorted(set(range(1, 20, 2)) - set(auto[host]['steps']))}"
        )
    for host in ("fora:interval=2", "fora:interval=3", "fora:interval=4", "l2c", "l2c@0.3", "l2c@0.5"):
        if host in rows:
            cells = ", ".join(
                f"{c or 'plain'} {rows[host + c]['psnr_vs_none']:.1f} dB / FID {rows[host + c]['fid']:.2f}"
                for c in ("", "+goc", "+goc:auto", "+taylor") if host + c in rows
            )  # fmt: skip
            lines.append(f"ratio ({host}, {100 * rows[host]['cache_ratio_macs']:.0f}% reused): {cells}")
    return lines
