"""Notebook 07 (GOC in a diffusers pipeline): the diffusers DiT, the same noise with and without the hooks,
and the committed peers table."""

from __future__ import annotations

from pathlib import Path

from goc_utils import paths
from goc_utils.cache import Resources
from goc_utils.cache.l2c import default_router
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.eval import read_results
from goc_utils.evaluation.tables import show_table
from goc_utils.integrations.diffusers.hooks import DiffusersDiT, apply_cache, remove_cache
from goc_utils.integrations.diffusers.transformer import export_diffusers, load_transformer
from goc_utils.model.sampler import generate, parse_classes
from goc_utils.model.vae import load_vae, vae_spec
from goc_utils.priors.stats import PriorStats, default_priors_path
from goc_utils.study.params import StudyParams

__all__ = [  # what notebook 07 uses
    "PriorStats",
    "StudyParams",
    "default_priors_path",
    "diffusers_same_noise",
    "diffusers_transformer",
    "load_vae",
    "peers_rows",
    "show_table",
    "vae_spec",
]


PEERS_TABLE = "07_diffusers_peers"
"""The committed peers table of a model (``make peers``: figures/07_diffusers_peers.{csv,md} for tiny-fashion;
``make peers-tiny``: figures/tiny-digits/07_diffusers_peers.{csv,md})."""


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
    resources = Resources(router or default_router(p.model, p.steps), priors=priors, model=p.model,
                          cfg_scale=p.cfg_scale)  # fmt: skip
    apply_cache(transformer, method, p.steps, resources)
    try:
        results[method] = generate(wrapped, labels, **kwargs)
    finally:
        remove_cache(transformer)
    rmse = float(((results[method].final - results["none"].final) ** 2).mean().sqrt())
    return results, rmse


PEERS_TARGETS = {"tiny-fashion": "make peers", "tiny-digits": "make peers-tiny"}
"""The make target that builds each embedded model's committed peers table."""


def peers_rows(model: str = paths.STUDY_MODEL, path: str | Path | None = None) -> list[dict]:
    """The rows of ``model``'s committed peers table (:data:`PEERS_TABLE` in :func:`paths.model_figures_dir`), or
    of ``path``. A model without a table gives ``[]`` and one printed line saying so (DiT-XL/2: no table is
    committed); an embedded model's missing table is an error naming its make target."""
    path = Path(path) if path else paths.model_figures_dir(model) / f"{PEERS_TABLE}.csv"
    if not path.is_file():
        if model in PEERS_TARGETS:
            raise InvalidArgumentError(
                f"{str(path)!r} does not exist yet; make it with `{PEERS_TARGETS[model]}` (about 40 min)"
            )
        print(f"no peers table for {model} ({path}); it is made for the embedded models only")
        return []
    return read_results(path)
