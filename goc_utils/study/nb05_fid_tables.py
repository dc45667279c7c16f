"""Notebook 05 (FID tables): ``goc eval`` from a notebook, written byte-reproducibly to ``figures/``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from goc_utils import paths
from goc_utils.cache import without_router
from goc_utils.cache.l2c import default_router
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.eval import EvalSettings, Scoring, parse_methods, rounded, run_eval, write_results
from goc_utils.evaluation.metrics.batches import batch_info
from goc_utils.evaluation.metrics.features import build_extractor, default_features, default_reference
from goc_utils.evaluation.tables import show_table, write_table
from goc_utils.files import read_csv_rows
from goc_utils.lists import number_list
from goc_utils.study.params import StudyParams

__all__ = [  # what notebook 05 uses
    "StudyParams",
    "committed_rows",
    "FidTable",
    "fid_table",
    "show_table",
]

SHARED_SAMPLES = 2000
"""The sample count of ``make eval`` (and of notebook 08's FID points): runs of this many samples per method live in
``runs/eval/<model>/`` and are shared; other counts get their own folder (:func:`default_samples_dir`)."""


def default_samples_dir(model: str, num_samples: int) -> Path:
    """``runs/eval/<model>/`` for :data:`SHARED_SAMPLES`, else ``runs/eval/<model>-n<num_samples>/`` (a finished run
    is never shrunk or grown under another count's settings)."""
    name = model.replace("/", "-")
    return paths.RUNS_DIR / "eval" / (name if num_samples == SHARED_SAMPLES else f"{name}-n{num_samples}")


def committed_rows(model: str, name: str) -> list[dict]:
    """Rows of a committed table of ``model`` (``figures/<name>.csv`` for tiny-fashion, ``figures/<model>/...``
    otherwise) as text cells, as written, or ``[]`` and one printed line when it was not made for this model."""
    path = paths.model_figures_dir(model) / f"{name}.csv"
    if not path.is_file():
        print(f"no {name} table for {model} ({path})")
        return []
    return read_csv_rows(path, "results table", "regenerate it (goc notebooks) or git checkout it")


@dataclass(frozen=True)
class FidTable:
    """What notebook 05's table runs (its parameters, as ``goc eval`` takes them).

    Attributes:
        methods: comma-separated method strings. cfg_scales: comma-separated guidance scales.
        num_samples: images per method; per_device_batch: images per forward and shard.
        router: the L2C router file (empty: the model's committed router; ``l2c`` methods are skipped without one).
        ref_batch / features / inception_weights: the reference batch and feature extractor (empty: the tier's).
        samples_dir: where the samples go (empty: :func:`default_samples_dir`). latency_repeats: timed runs per
        method. fid_bootstrap: resamples of FID's bootstrap spread. name: the table's file stem under ``figures/``.
    """

    methods: str
    cfg_scales: str = "1.5"
    num_samples: int = 2000
    per_device_batch: int = 250
    router: str = ""
    ref_batch: str = ""
    features: str = ""
    inception_weights: str = ""
    samples_dir: str = ""
    latency_repeats: int = 3
    fid_bootstrap: int = 20
    name: str = "05_fid_table"


def fid_table(p: StudyParams, t: FidTable) -> list[dict]:
    """`goc eval` from a notebook: sample (resumably) and score every method of ``t``, write
    ``figures/<t.name>.csv|md``.

    The table leaves out wall-clock columns (so ``make study`` reproduces it byte for byte);
    latencies go to ``figures/<name>_latency.csv|md``, which changes from run to run.

    Samples go to ``samples_dir`` (default :func:`default_samples_dir`: with 2,000 samples
    ``runs/eval/<model>/cfg<c>/<method>/``, the folder ``make eval`` fills too, so a finished run is only
    re-scored). ``l2c`` methods are skipped
    when no router is given and none is committed for the model.
    """
    features = t.features or default_features(p.model)
    ref = t.ref_batch or str(default_reference(features) or "")
    if not ref:
        raise InvalidArgumentError(
            "parameter ref_batch is required with Inception features: the ADM reference batch "
            "VIRTUAL_imagenet256_labeled.npz (see docs/dit-xl2.md)"
        )
    batch_info(ref)
    router_path = t.router or default_router(p.model, p.steps)
    wanted = without_router(parse_methods(t.methods), router_path)[0]
    scales = number_list(t.cfg_scales, float, "cfg list", "1.5 or 1.5,4.0")
    model, vae = p.load_model(), p.load_vae()
    extractor = build_extractor(features, p.torch_device, t.inception_weights or None)
    scoring = Scoring(ref, extractor, latency_repeats=t.latency_repeats, fid_bootstrap=t.fid_bootstrap)
    out = Path(t.samples_dir) if t.samples_dir else default_samples_dir(p.model, t.num_samples)
    rows = []
    for cfg in scales:
        settings = EvalSettings(
            model=p.model, ckpt=p.ckpt, image_size=p.image_size, vae=p.vae_spec, steps=p.steps, cfg_scale=cfg,
            seed=p.seed, per_device_batch=t.per_device_batch, router=router_path,
        )  # fmt: skip
        methods = settings.resolve(model, wanted)  # once, before any sampling
        rows += run_eval(model, settings, methods, t.num_samples, out / f"cfg{cfg:g}", scoring, vae)
    write_results(rows, paths.FIGURES_DIR, t.name, timing=False)  # byte-reproducible
    latency = [{"method": r.method, "cfg": r.cfg_scale, "MACs speedup": f"{r.macs_speedup:.3f}x",
                "latency s/batch": f"{r.latency_s:.4f}", "measured speedup": f"{r.measured_speedup:.3f}x"}
               for r in rows]  # fmt: skip
    write_table(latency, f"{t.name}_latency")
    return [asdict(rounded(r)) for r in rows]  # figures drawn from the committed (rounded) numbers
