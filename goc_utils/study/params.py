"""The study's parameters (every notebook's ``parameters`` cell, checked: :class:`StudyParams`) and what they
resolve to: the model, its VAE, the priors of the run.

Each notebook imports its helpers from its own module, ``goc_utils.study.nbNN_<name>`` (plus
:mod:`~goc_utils.study.viz` and :mod:`goc_utils.paths`); the tiny tiers' reports are in
:mod:`~goc_utils.study.tier_report`."""

from __future__ import annotations

from dataclasses import dataclass, fields

from goc_utils.errors import InvalidArgumentError
from goc_utils.model.checkpoints import load_model, resolve_device
from goc_utils.model.presets import check_preset, preset_info
from goc_utils.model.sampler import parse_classes
from goc_utils.model.vae import load_vae, vae_spec
from goc_utils.priors.extraction import extract_priors
from goc_utils.priors.stats import PriorsError, PriorStats, check_compatible, default_priors_path


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

    @property
    def latent(self) -> bool:
        """True for latent presets (``tiny-fashion``, ``DiT-XL/2``): samples are decoded by a VAE."""
        return preset_info(self.model).latent

    def load_vae(self):
        """The VAE for latent presets (checked against the model's DiT), None for pixel presets."""
        return load_vae(self.vae_spec, self.torch_device, self.model) if self.latent else None

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

