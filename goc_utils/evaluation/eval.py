"""``goc eval-sample`` and ``goc eval``: many samples per method -> the paper's results table.

For each method string (``none``, ``fora-50+goc``, ``l2c:ROUTER@0.1+goc:w=0.8``, ...) the
sampler writes ``<out>/<method>/samples.npz`` resumably (:func:`goc_utils.evaluation.sampling.sample_to_npz`);
then every batch is scored against the reference batch with the ADM metrics, compared with
the un-cached run of the same noise (PSNR / SSIM), and timed; one table row per method lands in
``results.csv`` and ``results.md``.
"""

from __future__ import annotations

import csv
import os
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from goc_utils import paths
from goc_utils.cache.method import CacheMethod, split_methods
from goc_utils.cache.tcc import PackSource
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.bench import engine_cost, make_engine, time_engines
from goc_utils.evaluation.metrics.adm import fid_bootstrap_std
from goc_utils.evaluation.metrics.batches import batch_info, check_same_size, read_labels
from goc_utils.evaluation.metrics.evaluate import reference_features, score_features
from goc_utils.evaluation.metrics.features import extract_cached
from goc_utils.evaluation.metrics.fidelity import file_fidelity
from goc_utils.evaluation.sampling import sample_to_npz
from goc_utils.evaluation.tables import csv_text, markdown_table
from goc_utils.files import atomic_write_text
from goc_utils.integrations.diffusers.peers import HookRunner, is_peer, parse_peer
from goc_utils.model.dit import DiT
from goc_utils.model.macs import model_macs
from goc_utils.model.sampler import generate, per_sample_inputs
from goc_utils.priors.stats import priors_for_run

TABLE_METHODS = ("none", "fora-25", "fora-25+goc", "fora-50", "fora-50+goc", "l2c", "l2c+goc")
"""The paper's comparison: each host schedule with plain reuse and with GOC."""


@dataclass
class EvalSettings:
    """Everything that fixes the samples of a method (stored as ``run.json`` next to them).

    Attributes:
        model: preset name. ckpt: DiT weights (None = the preset's committed weights).
        image_size: pixels (None = preset default). vae: latent presets' VAE (``ema`` | ``mse`` | path | hub id).
        steps: sampling steps. sampler: ``ddim`` | ``ddpm``. cfg_scale: guidance (1.5 for FID, as DiT).
        seed: run seed; sample i uses ``sample_seed(seed, i)``.
        per_device_batch: images per forward chunk (also the shard size).
        router, thres: default Learning-to-Cache router and threshold for ``l2c`` methods.
        priors: priors file for ``goc:auto`` (None = the default path for model / steps / cfg).
        tcc_pack: TCC pack for ``+tcc`` methods (None = the default pack of the method's host, model, steps, cfg).
        backend: ``native`` (our ``DiT``) or ``diffusers`` (the same weights as a ``DiTTransformer2DModel``,
            methods through :mod:`goc_utils.integrations.diffusers.hooks`; also runs ``diffusers:*`` caches).
        tf32: TF32 matmuls on CUDA as :func:`~goc_utils.model.sampler.set_tf32` applied them (True as published,
            False for strict fp32); None on the CPU, where there is no TF32 (then ``run.json`` has no entry).
    """

    model: str = "tiny-digits"
    ckpt: str | None = None
    image_size: int | None = None
    vae: str = "ema"
    steps: int = 20
    sampler: str = "ddim"
    cfg_scale: float = 1.5
    seed: int = 0
    per_device_batch: int = 250
    router: str | None = None
    thres: float = 0.1
    priors: str | None = None
    tcc_pack: str | None = None
    backend: str = "native"
    tf32: bool | None = None

    def manifest(self, method: CacheMethod | None, text: str) -> dict:
        """``run.json``: what must match for a rerun to resume (the sample count may grow)."""
        ignored = ("router", "thres", "priors", "tcc_pack", "backend", "tf32")
        record = {k: v for k, v in asdict(self).items() if k not in ignored}
        if self.backend != "native":  # native runs keep the manifests they had before backends existed
            record["backend"] = self.backend
        if self.tf32 is not None:  # CUDA only: CPU runs keep their manifests (and bytes)
            record["tf32"] = self.tf32
        record["method"] = text
        if method is None:  # another library's cache: diffusers_* or cachedit_* options
            name, options = parse_peer(text)
            library = text.strip().split(":")[0]
            record.update({f"{library}_{k}": list(v) if isinstance(v, tuple) else v for k, v in options.items()})
            return record
        record.update({f"schedule_{k}": _portable(v) for k, v in method.schedule_options.items()})
        record.update({f"compensator_{k}": v for k, v in method.compensator_options.items()})
        return record


def _portable(value):
    """Paths inside the project as relative paths, so a clone elsewhere resumes the same run."""
    if isinstance(value, str) and Path(value).is_absolute():
        try:
            return str(Path(value).resolve().relative_to(paths.PROJECT_ROOT))
        except ValueError:
            return value
    return value


def method_folder(text: str) -> str:
    """A folder name for a method string: ``l2c:data/r.pt@0.1+goc:w=0.8`` -> ``l2c-data_r.pt@0.1+goc-w=0.8``."""
    return re.sub(r"[^A-Za-z0-9_.@+=-]", "_", text.replace(":", "-").replace("/", "_"))


def parse_methods(
    text: str, single: bool = False, steps: int | None = None, cfg_scales: Sequence[float] = ()
) -> list[str]:
    """Comma-separated method strings, checked one by one (unknown names fail here, before any sampling).

    A part made of digits continues the previous method's step list (``fora-50+goc:steps=3,5,7``).
    ``single``: exactly one method (``goc eval-sample --method``). ``steps`` / ``cfg_scales``: the runs'
    settings, which diffusers' caches are checked against (:func:`~goc_utils.integrations.diffusers.peers.parse_peer`).
    """
    methods = split_methods(text)  # no empty list, empty item or repeated method
    if single and len(methods) > 1:
        try:
            CacheMethod.parse(text, router="router.pt")  # its own error names what is wrong in it
        except InvalidArgumentError:
            if not all(_parses(m) for m in methods):
                raise
        raise InvalidArgumentError("--method takes one method; use `goc eval --methods a,b,...` for several")
    for m in methods:
        if is_peer(m):
            for cfg in cfg_scales or [None]:
                parse_peer(m, steps, cfg)
        else:
            CacheMethod.parse(m, router="router.pt")
    return methods


def _parses(text: str) -> bool:
    try:
        parse_peer(text) if is_peer(text) else CacheMethod.parse(text, router="router.pt")
        return True
    except InvalidArgumentError:
        return False


def build_engine(model: DiT, settings: EvalSettings, text: str):
    """The parsed method (None for diffusers' caches) and what samples it on ``model``: a cache engine, or a
    :class:`~goc_utils.integrations.diffusers.peers.HookRunner` on the diffusers backend
    (priors loaded for ``goc:auto``, TCC packs found for ``+tcc``)."""
    if is_peer(text):
        method, priors = None, None
    else:
        method = CacheMethod.parse(text, router=settings.router, thres=settings.thres)
        priors = None
        if method.needs_priors:
            priors = priors_for_run(settings.model, model, settings.steps, settings.cfg_scale, settings.priors)
    packs = PackSource(settings.model, settings.cfg_scale, settings.tcc_pack)
    engine = make_engine(model, text, settings.steps, settings.router, settings.thres, priors, settings.cfg_scale,
                         settings.sampler, settings.seed, packs)  # fmt: skip
    return method, engine


def eval_sample(
    model: DiT,
    settings: EvalSettings,
    text: str,
    out_dir: str | Path,
    num_samples: int,
    vae=None,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
    progress: bool = True,
) -> Path:
    """Sample ``num_samples`` images of one method into ``out_dir/samples.npz`` (resumable)."""
    method, engine = build_engine(model, settings, text)
    manifest = settings.manifest(method, text)
    if isinstance(engine, HookRunner):
        engine.prepare()  # MagCache's calibration, before any sampling
    config = getattr(engine.compensator, "config", None)
    if hasattr(config, "coupling"):  # runs from before the published block coupling are not resumed silently
        manifest["goc_coupling"] = config.coupling
    if "auto" in manifest.values() and config is not None:  # record what "auto" resolved to
        weight = np.asarray(config.weight, dtype=float)
        manifest["resolved_weight"] = round(float(weight), 6) if weight.ndim == 0 else weight.round(6).tolist()
        manifest["resolved_correction_steps"] = (
            None if config.correction_steps is None else list(config.correction_steps)
        )
    return sample_to_npz(
        model,
        out_dir,
        num_samples,
        settings.per_device_batch,
        manifest,
        seed=settings.seed,
        steps=settings.steps,
        sampler=settings.sampler,
        cfg_scale=settings.cfg_scale,
        vae=vae,
        forward=engine.forward,
        rank=rank,
        world=world,
        barrier=barrier,
        progress=progress,
    )


@dataclass
class ResultRow:
    """One method's line of the results table."""

    method: str
    cfg_scale: float
    samples: int
    inception_score: float
    fid: float
    fid_std: float | None
    sfid: float
    precision: float
    recall: float
    cache_ratio: float
    cache_ratio_macs: float
    macs_speedup: float
    latency_s: float
    measured_speedup: float
    psnr_vs_none: float | None
    ssim_vs_none: float | None
    agreement: float | None


DECIMALS = {
    "inception_score": 2,
    "fid": 2,
    "fid_std": 2,
    "sfid": 2,
    "precision": 3,
    "recall": 3,
    "agreement": 3,
    "cache_ratio": 3,
    "cache_ratio_macs": 3,
    "macs_speedup": 3,
    "latency_s": 4,
    "measured_speedup": 3,
    "psnr_vs_none": 1,
    "ssim_vs_none": 4,
}
"""Decimals kept per column: what the measurement supports (FID resolves ~1 with 2,000 samples; float
arithmetic differs across CPUs in the 5th-6th digit), so that another machine writes the same table bytes."""

COLUMNS = {
    "method": ("method", "{}"),
    "cfg_scale": ("cfg", "{:g}"),
    "samples": ("samples", "{}"),
    "inception_score": ("IS", "{:.2f}"),
    "fid": ("FID", "{:.2f}"),
    "fid_std": ("FID bootstrap std", "{:.2f}"),
    "sfid": ("sFID", "{:.2f}"),
    "precision": ("precision", "{:.3f}"),
    "recall": ("recall", "{:.3f}"),
    "agreement": ("class agreement", "{:.3f}"),
    "cache_ratio": ("cached units", "{:.1%}"),
    "macs_speedup": ("MACs speedup", "{:.3f}x"),
    "latency_s": ("latency s/batch", "{:.4f}"),
    "measured_speedup": ("measured speedup", "{:.3f}x"),
    "psnr_vs_none": ("PSNR vs none dB", "{:.1f}"),
    "ssim_vs_none": ("SSIM vs none", "{:.4f}"),
}


def rounded(row: ResultRow) -> ResultRow:
    """The row with every measured number rounded to :data:`DECIMALS` (infinite values kept)."""
    values = {}
    for key, decimals in DECIMALS.items():
        value = getattr(row, key)
        if isinstance(value, float) and np.isfinite(value):
            values[key] = round(value, decimals) + 0.0  # + 0.0: no "-0.0"
    return replace(row, **values)


def _csv_cell(key: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not np.isfinite(value):
            return "inf" if value > 0 else str(value)
        return f"{value:.{DECIMALS[key]}f}" if key in DECIMALS else f"{value:g}"
    return str(value)


def _cell(value, fmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not np.isfinite(value):
        return "inf" if value > 0 else str(value)
    return fmt.format(value)


TIMING_COLUMNS = ("latency_s", "measured_speedup")
"""Columns that vary from run to run (wall-clock time); everything else is deterministic on CPU."""


def format_results(rows: Sequence[ResultRow], timing: bool = True) -> str:
    """Markdown table of the results (precision / recall as fractions, like the evaluator prints them).

    ``timing=False`` leaves out the wall-clock columns, so the table is byte-reproducible.
    """
    optional = ("agreement", "fid_std")
    keys = [k for k in COLUMNS if k not in optional or any(getattr(r, k) is not None for r in rows)]
    keys = [k for k in keys if timing or k not in TIMING_COLUMNS]
    return markdown_table([{COLUMNS[k][0]: _cell(getattr(row, k), COLUMNS[k][1]) for k in keys} for row in rows])


def write_results(
    rows: Sequence[ResultRow], out_dir: str | Path, name: str = "results", timing: bool = True
) -> tuple[Path, Path]:
    """``<name>.csv`` and ``<name>.md`` in ``out_dir``, numbers rounded to :data:`DECIMALS`.

    ``timing=False`` leaves out the wall-clock columns (a byte-reproducible table).
    """
    rows = [rounded(r) for r in rows]
    fields = [k for k in asdict(rows[0]) if timing or k not in TIMING_COLUMNS]
    csv_rows = [{k: _csv_cell(k, v) for k, v in asdict(row).items() if k in fields} for row in rows]
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / f"{name}.csv", csv_text(csv_rows))
    md_path = atomic_write_text(out_dir / f"{name}.md", format_results(rows, timing))
    return out_dir / f"{name}.csv", md_path


def read_results(path: str | Path) -> list[dict]:
    """Rows of a ``results.csv`` with numbers parsed (empty cells -> None)."""
    rows = []
    with Path(path).open() as f:
        for raw in csv.DictReader(f):
            row: dict = {}
            for k, v in raw.items():
                if v == "":
                    row[k] = None
                elif k == "method":
                    row[k] = v
                else:
                    row[k] = int(v) if k == "samples" else float(v)
            rows.append(row)
    return rows


def score_methods(
    model: DiT,
    settings: EvalSettings,
    methods: Sequence[str],
    samples: dict[str, Path],
    ref_path: str | Path,
    extractor,
    latency: dict[str, float],
    progress: bool = True,
    fid_bootstrap: int = 0,
) -> list[ResultRow]:
    """Metrics, fidelity to ``none``, MACs and latency for each method's ``samples.npz``.

    ``fid_bootstrap`` > 1 adds the bootstrap spread of each FID (that many resamples).
    """
    ref = reference_features(ref_path, extractor, progress)
    macs = model_macs(model)
    rows = []
    for text in methods:
        check_same_size(batch_info(ref_path), batch_info(samples[text]))
        feats = extract_cached(samples[text], extractor, progress=progress)
        labels = read_labels(samples[text]) if extractor.judges_classes else None
        scores = score_features(ref, feats, labels, extractor.device)
        method, engine = build_engine(model, settings, text)
        first = range(min(settings.per_device_batch, scores.samples))  # diffusers' caches: counted on shard 0
        labels_0, noise_0 = per_sample_inputs(model, first, settings.seed)
        cost = engine_cost(engine, macs, lambda forward: generate(
            model, labels_0, steps=settings.steps, sampler=settings.sampler, cfg_scale=settings.cfg_scale,
            forward=forward, noise=noise_0.to(next(model.parameters()).device)))  # fmt: skip
        fidelity = file_fidelity(samples["none"], samples[text], device=extractor.device) if "none" in samples else None
        rows.append(
            ResultRow(
                method=text,
                cfg_scale=settings.cfg_scale,
                samples=scores.samples,
                inception_score=scores.inception_score,
                fid=scores.fid,
                fid_std=fid_bootstrap_std(feats.pool, ref.stats, fid_bootstrap) if fid_bootstrap > 1 else None,
                sfid=scores.sfid,
                precision=scores.precision,
                recall=scores.recall,
                cache_ratio=cost["cache_ratio"],
                cache_ratio_macs=cost["cache_ratio_macs"],
                macs_speedup=cost["macs_speedup"],
                latency_s=latency[text],
                measured_speedup=latency.get("none", latency[text]) / latency[text],
                psnr_vs_none=None if fidelity is None else fidelity[0],
                ssim_vs_none=None if fidelity is None else fidelity[1],
                agreement=scores.agreement,
            )
        )
    return rows


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    barrier: Callable[[], None] = lambda: None

    def close(self) -> None:
        if self.world > 1:
            torch_dist.destroy_process_group()


def init_distributed(device: str) -> Distributed:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1 (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed(device=device)
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    torch_dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(torch_dist.get_rank(), world, device, torch_dist.barrier)


def run_eval(
    model: DiT,
    settings: EvalSettings,
    methods: Sequence[str],
    num_samples: int,
    out_dir: str | Path,
    ref_path: str | Path,
    extractor,
    vae=None,
    latency_batch: int = 8,
    latency_repeats: int = 3,
    dist: Distributed | None = None,
    progress: bool = True,
    fid_bootstrap: int = 0,
) -> list[ResultRow] | None:
    """Sample every method into ``out_dir/<method>/samples.npz`` and score them (rows on rank 0, None elsewhere)."""
    dist = dist or Distributed()
    out_dir = Path(out_dir)
    samples = {}
    for text in methods:
        samples[text] = eval_sample(
            model, settings, text, out_dir / method_folder(text), num_samples, vae, dist.rank, dist.world,
            dist.barrier, progress,
        )  # fmt: skip
    if dist.rank != 0:
        return None
    timed = list(dict.fromkeys(["none", *methods]))
    labels, noise = per_sample_inputs(model, range(latency_batch), settings.seed)
    engines = {text: build_engine(model, settings, text)[1] for text in timed}
    times, _ = time_engines(model, engines, labels, noise, settings.steps, settings.cfg_scale, settings.sampler,
                            repeats=latency_repeats, progress=progress)  # fmt: skip
    latency = {text: statistics.median(values) for text, values in times.items()}
    return score_methods(model, settings, methods, samples, ref_path, extractor, latency, progress, fid_bootstrap)


__all__ = [
    "TABLE_METHODS",
    "EvalSettings",
    "ResultRow",
    "Distributed",
    "build_engine",
    "init_distributed",
    "run_eval",
    "eval_sample",
    "format_results",
    "method_folder",
    "parse_methods",
    "read_results",
    "score_methods",
    "write_results",
]
