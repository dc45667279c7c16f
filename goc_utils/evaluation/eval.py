"""``goc eval-sample`` and ``goc eval``: many samples per method -> the paper's results table.

For each method string (``none``, ``fora-50+goc``, ``l2c:ROUTER@0.1+goc:w=0.8``, ...) the
sampler writes ``<out>/<method>/samples.npz`` resumably (:func:`goc_utils.evaluation.sampling.sample_to_npz`);
then every batch is scored against the reference batch with the ADM metrics, compared with
the un-cached run of the same noise (PSNR / SSIM), and timed; one table row per method lands in
``results.csv`` and ``results.md``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import statistics
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from goc_utils import paths
from goc_utils.cache.method import AUTO, CacheMethod, split_methods
from goc_utils.cache.run import Resources, RunShape
from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.evaluation.bench import time_engines
from goc_utils.evaluation.metrics.adm import fid_bootstrap_std
from goc_utils.evaluation.metrics.batches import batch_info, check_same_size, read_labels
from goc_utils.evaluation.metrics.evaluate import reference_features, score_features
from goc_utils.evaluation.metrics.features import extract_cached
from goc_utils.evaluation.metrics.fidelity import file_fidelity
from goc_utils.evaluation.sampling import Distributed, NpzRun, sample_to_npz
from goc_utils.evaluation.tables import csv_text, markdown_table
from goc_utils.files import atomic_write_text, read_csv_rows, state_dict_sha256
from goc_utils.integrations.diffusers.peers import (
    CALIBRATION_SAMPLES,
    Method,
    PeerMethod,
    is_peer,
    make_runner,
    parse_peer,
    resolve_any,
)
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
        compile: our methods' model calls as compiled graphs (:mod:`goc_utils.cache.compiled`; equal to eager to
            float tolerance, so ``run.json`` records it and a run is not resumed across the two).
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
    compile: bool = False

    def manifest(self, method: Method, inputs: dict[str, str] | None = None) -> dict:
        """``run.json``: what must match for a rerun to resume (the sample count may grow). ``inputs``: the
        contents the run read (:func:`input_digests`), recorded as ``inputs`` so that a file changed in place
        between two parts of a run is refused; runs recorded before it resume without it."""
        ignored = ("router", "thres", "priors", "tcc_pack", "backend", "tf32", "compile")
        record = {k: v for k, v in asdict(self).items() if k not in ignored}
        if inputs:
            record["inputs"] = dict(inputs)
        if self.backend != "native":  # native runs keep the manifests they had before backends existed
            record["backend"] = self.backend
        if self.tf32 is not None:  # CUDA only: CPU runs keep their manifests (and bytes)
            record["tf32"] = self.tf32
        if self.compile:  # eager runs keep the manifests they had before compiling existed
            record["compile"] = True
        record["method"] = method.text
        if isinstance(method, PeerMethod):  # another library's cache: diffusers_* or cachedit_* options
            options = method.options
            record.update({f"{method.library}_{k}": list(v) if isinstance(v, tuple) else v for k, v in options.items()})
            return record
        record.update({f"schedule_{k}": _portable(v) for k, v in method.schedule_options.items()})
        written, config = method.method.compensator_options, method.config
        record.update({f"compensator_{k}": v for k, v in written.items()})
        if hasattr(config, "coupling"):  # runs from before the published block coupling are not resumed silently
            record["goc_coupling"] = config.coupling
        if AUTO in written.values():  # what "auto" resolved to
            weight, steps = np.asarray(config.weight, dtype=float), config.correction_steps
            record["resolved_weight"] = round(float(weight), 6) if weight.ndim == 0 else weight.round(6).tolist()
            record["resolved_correction_steps"] = None if steps is None else list(steps)
        return record

    def resolve(self, model, texts: Sequence[str]) -> list[Method]:
        """Every method of ``texts``, resolved once for ``steps``-step runs of ``model`` with this run's router,
        threshold, priors (loaded once, only if a method asks for ``auto``) and TCC packs."""
        priors = functools.cache(functools.partial(priors_for_run, self.model, model, self.steps, self.cfg_scale,
                                                   self.priors))  # fmt: skip
        resources = Resources(self.router, self.thres, priors, self.model, self.cfg_scale, self.tcc_pack)
        run = RunShape.of(model, self.steps)
        return [resolve_any(text, run, resources) for text in texts]


_MODULE_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def module_sha256(module: torch.nn.Module) -> str:
    """:func:`~goc_utils.files.state_dict_sha256` of a module's weights, computed once per module and state
    (a weight written in place since is seen by its tensor's version counter, and hashed again)."""
    state = module.state_dict()
    key = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
    known = _MODULE_DIGESTS.get(module)
    if known is None or known[0] != key:
        known = (key, state_dict_sha256(state))
        _MODULE_DIGESTS[module] = known
    return known[1]


def _sha256_text(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def input_digests(model: torch.nn.Module, method: Method, vae=None) -> dict[str, str]:
    """sha256 of the contents a run reads besides its settings, for ``run.json`` (:meth:`EvalSettings.manifest`):
    the DiT's weights, the VAE's weights and config, the schedule the method resolved to (an L2C router's
    decisions), and every resolved resource of its compensator that has a ``digest`` (a TCC pack). A file
    changed in place (retrained weights, a refitted pack or router) changes them, and a resumed run refuses it.

    Example:
        >>> from goc_utils.cache import Resources, RunShape, resolve_method
        >>> from goc_utils.model.checkpoints import load_model
        >>> model = load_model("tiny-digits")
        >>> method = resolve_method("fora-50", RunShape.of(model, 20), Resources())
        >>> sorted(input_digests(model, method))
        ['schedule', 'weights']
    """
    digests = {"weights": module_sha256(model)}
    if vae is not None:
        config = json.dumps(dict(getattr(vae, "config", {})), sort_keys=True, default=str)
        digests["vae"] = _sha256_text(module_sha256(vae), config)
    if not isinstance(method, PeerMethod):  # another library's cache has no schedule of ours
        mask = np.ascontiguousarray(method.schedule.mask, dtype=bool)
        digests["schedule"] = _sha256_text(str(mask.shape), mask.tobytes().hex())
        for key, value in method.compensator_options.items():
            if callable(getattr(value, "digest", None)):
                digests[f"compensator_{key}"] = value.digest()
    return digests


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
    """Comma-separated method strings, each checked for what its text alone can say (unknown names and options
    fail here, before any loading or sampling; resources are checked when the methods are resolved:
    :meth:`EvalSettings.resolve`).

    A part made of digits continues the previous method's step list (``fora-50+goc:steps=3,5,7``).
    ``single``: exactly one method (``goc eval-sample --method``). ``steps`` / ``cfg_scales``: the runs'
    settings, which diffusers' caches are checked against (:func:`~goc_utils.integrations.diffusers.peers.parse_peer`).
    """
    methods = split_methods(text)  # no empty list, empty item or repeated method
    if single and len(methods) > 1:
        try:
            _check_text(text, steps, cfg_scales)  # its own error names what is wrong in it
        except InvalidArgumentError:
            if not all(_parses(m) for m in methods):
                raise
        raise InvalidArgumentError("--method takes one method; use `goc eval --methods a,b,...` for several")
    for m in methods:
        _check_text(m, steps, cfg_scales)
    return methods


def _check_text(text: str, steps: int | None = None, cfg_scales: Sequence[float] = ()) -> None:
    if is_peer(text):
        for cfg in cfg_scales or [None]:
            parse_peer(text, steps, cfg)
    else:
        CacheMethod.parse(text)


def _parses(text: str) -> bool:
    try:
        _check_text(text)
        return True
    except InvalidArgumentError:
        return False


def eval_sample(
    model: DiT,
    settings: EvalSettings,
    method: str | Method,
    out_dir: str | Path,
    num_samples: int,
    vae=None,
    dist: Distributed | None = None,
    progress: bool = True,
) -> Path:
    """Sample ``num_samples`` images of one method (text, or resolved by :meth:`EvalSettings.resolve`) into
    ``out_dir/samples.npz`` (resumable)."""
    (method,) = settings.resolve(model, [method]) if isinstance(method, str) else (method,)
    runner = make_runner(model, method, _calibration(model, settings), settings.compile)
    runner.prepare()  # MagCache's calibration, before any sampling
    manifest = settings.manifest(method, input_digests(model, method, vae))
    run = NpzRun(num_samples, settings.per_device_batch, manifest, settings.seed, settings.steps, settings.sampler,
                 settings.cfg_scale)  # fmt: skip
    return sample_to_npz(model, out_dir, run, runner.forward, vae, dist, progress)


def _calibration(model, settings: EvalSettings) -> Callable[[Callable], None]:
    """MagCache's calibration: one un-cached run of fixed samples of the run's seed."""

    def run(forward) -> None:
        labels, noise = per_sample_inputs(model, range(CALIBRATION_SAMPLES), settings.seed)
        generate(model, labels, steps=settings.steps, sampler=settings.sampler, cfg_scale=settings.cfg_scale,
                 forward=forward, noise=noise)  # fmt: skip

    return run


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
    """Rows of a ``results.csv`` with numbers parsed (empty cells -> None); one line for a cell that is no number."""
    fix = "re-run goc eval (or git checkout the table)"
    rows = []
    for line, raw in enumerate(read_csv_rows(path, "results table", fix), 2):
        row: dict = {}
        for k, v in raw.items():
            try:
                row[k] = None if v == "" else v if k == "method" else int(v) if k == "samples" else float(v)
            except ValueError:
                raise InvalidArgumentError(
                    f"results table {shorten(path)!r} line {line}: {k} {shorten(v, 40)!r} is not a number; {fix}"
                ) from None
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Scoring:
    """How ``goc eval`` scores its samples.

    Attributes:
        ref_path: the reference batch. extractor: the feature extractor
            (:func:`~goc_utils.evaluation.metrics.features.build_extractor`; None on ranks other than 0).
        latency_batch: images per timed batch; latency_repeats: timed runs per method.
        fid_bootstrap: > 1 adds the bootstrap spread of each FID (that many resamples).
    """

    ref_path: str | Path
    extractor: object
    latency_batch: int = 8
    latency_repeats: int = 3
    fid_bootstrap: int = 0


def score_methods(
    model: DiT,
    settings: EvalSettings,
    methods: Sequence[Method],
    samples: dict[str, Path],
    scoring: Scoring,
    latency: dict[str, float],
    progress: bool = True,
) -> list[ResultRow]:
    """Metrics, fidelity to ``none``, MACs and latency for each method's ``samples.npz``."""
    ref_path, extractor = scoring.ref_path, scoring.extractor
    ref = reference_features(ref_path, extractor, progress)
    macs = model_macs(model)
    rows = []
    for method in methods:
        text = method.text
        check_same_size(batch_info(ref_path), batch_info(samples[text]))
        feats = extract_cached(samples[text], extractor, progress=progress)
        labels = read_labels(samples[text]) if extractor.judges_classes else None
        scores = score_features(ref, feats, labels, extractor.device)
        first = range(min(settings.per_device_batch, scores.samples))  # diffusers' caches: counted on shard 0
        labels_0, noise_0 = per_sample_inputs(model, first, settings.seed)
        runner = make_runner(model, method, calibration=_calibration(model, settings))
        cost = runner.cost(macs, lambda forward: generate(
            model, labels_0, steps=settings.steps, sampler=settings.sampler, cfg_scale=settings.cfg_scale,
            forward=forward, noise=noise_0.to(next(model.parameters()).device)))  # fmt: skip
        fidelity = file_fidelity(samples["none"], samples[text], device=extractor.device) if "none" in samples else None
        bootstrap = scoring.fid_bootstrap
        rows.append(
            ResultRow(
                method=text,
                cfg_scale=settings.cfg_scale,
                samples=scores.samples,
                inception_score=scores.inception_score,
                fid=scores.fid,
                fid_std=fid_bootstrap_std(feats.pool, ref.stats, bootstrap) if bootstrap > 1 else None,
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
    methods: Sequence[str | Method],
    num_samples: int,
    out_dir: str | Path,
    scoring: Scoring,
    vae=None,
    dist: Distributed | None = None,
    progress: bool = True,
) -> list[ResultRow] | None:
    """Sample every method (text, resolved here once, or resolved by :meth:`EvalSettings.resolve`) into
    ``out_dir/<method>/samples.npz`` and score them (rows on rank 0, None elsewhere)."""
    dist = dist or Distributed()
    out_dir = Path(out_dir)
    texts = [m for m in methods if isinstance(m, str)]
    found = dict(zip(texts, settings.resolve(model, texts), strict=True))
    methods = [found[m] if isinstance(m, str) else m for m in methods]
    if "none" not in (m.text for m in methods):
        methods_timed = [*settings.resolve(model, ["none"]), *methods]
    else:
        methods_timed = sorted(methods, key=lambda m: m.text != "none")
    samples = {}
    for method in methods:
        samples[method.text] = eval_sample(
            model, settings, method, out_dir / method_folder(method.text), num_samples, vae, dist, progress
        )
    if dist.rank != 0:
        return None
    labels, noise = per_sample_inputs(model, range(scoring.latency_batch), settings.seed)
    calibration = _calibration(model, settings)
    runners = {m.text: make_runner(model, m, calibration, settings.compile) for m in methods_timed}
    times, _ = time_engines(model, runners, (labels, noise), settings, scoring.latency_repeats, progress=progress)
    latency = {text: statistics.median(values) for text, values in times.items()}
    return score_methods(model, settings, methods, samples, scoring, latency, progress)


__all__ = [
    "TABLE_METHODS",
    "EvalSettings",
    "ResultRow",
    "Distributed",
    "Scoring",
    "init_distributed",
    "NpzRun",
    "run_eval",
    "eval_sample",
    "format_results",
    "method_folder",
    "parse_methods",
    "read_results",
    "score_methods",
    "write_results",
]
