"""The VAEs of the latent presets: Stable Diffusion's (``sd-vae-ft-ema`` / ``-mse``) for DiT's presets,
the project's own ``data/tiny_fashion_vae`` for ``tiny-fashion``.

All are diffusers ``AutoencoderKL`` folders loaded through one path (``from_pretrained`` on a local
folder or a hub id). The latent scale is each VAE's ``config.scaling_factor`` (sd-vae's config
says 0.18215), never a constant. Nothing is downloaded when ``HF_HUB_OFFLINE=1``; without a local
copy and without network the error names the folder to put the files in.
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch

from goc_utils import paths
from goc_utils.errors import VAEError, first_line, shorten
from goc_utils.model.diffusers_format import pipeline_vae_folder
from goc_utils.model.presets import create_model, preset_info

VAE_HUB_IDS = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}

SD_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512), "sample_size": 256, "scaling_factor": 0.18215,
}  # fmt: skip
"""``AutoencoderKL`` arguments of ``sd-vae-ft-ema`` / ``-mse`` (DiT-XL/2's VAE): random-weight stand-ins of that
shape for benchmarks and tests (``AutoencoderKL(**SD_VAE_CONFIG)``)."""


def local_vae_dir(hub_id: str) -> Path:
    """Where the project looks for a hand-placed copy of a hub VAE: ``data/vae/<name>``."""
    return paths.DATA_DIR / "vae" / hub_id.rsplit("/", 1)[-1]


def _looks_like_path(spec: str) -> bool:
    """A filesystem path rather than a hub id (``org/name``)."""
    return spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") > 1


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within ``timeout`` seconds."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def vae_spec(spec: str | None, ckpt: str | Path | None = None, preset: str | None = None) -> str:
    """The VAE to load: ``spec`` if given, else a diffusers pipeline's ``vae/`` (``--ckpt`` a pipeline
    folder such as ``facebook/DiT-XL-2-256``), else the preset's VAE (``PresetInfo.vae``: the committed
    folder for ``tiny-fashion``), else ``"ema"``."""
    if spec:
        return spec
    folder = pipeline_vae_folder(ckpt)
    if folder is not None:
        return str(folder)
    return (preset_info(preset).vae if preset else None) or "ema"


def latent_scale(vae, what: str = "the VAE") -> float:
    """The VAE's latent scale from its config: latents are ``scale * encode(x)``, decoded from ``latents / scale``.
    ``what`` names the VAE in the error (``"VAE 'data/vae'"``)."""
    scale = getattr(vae.config, "scaling_factor", None)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < math.inf:
        raise VAEError(
            f"the config of {what} has no finite positive scaling_factor (found {shorten(repr(scale), 40)}); put the "
            "number in its config.json"
        )
    return float(scale)


def vae_factor(vae) -> int:
    """Pixels per latent cell along a side: ``2 ** (len(block_out_channels) - 1)`` (8 for sd-vae, 4 for the tier's)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def check_vae_fits(vae, preset: str, spec: str = "the VAE") -> None:
    """One line (:class:`VAEError`) unless ``vae`` decodes the latents of ``preset``'s DiT into its images: as many
    latent channels as the DiT's ``in_channels``, the preset's downsampling factor (another factor gives images of
    another size than the DiT's ``input_size`` stands for) and a finite positive ``scaling_factor``. The DiT is
    built on the meta device (no memory, no weights); its latents have the same shape at every image size."""
    with torch.device("meta"):
        dit = create_model(preset)
    name, info = repr(shorten(spec)), preset_info(preset)
    fix = "pass the VAE it was trained with (--vae)"
    try:
        channels, factor = int(vae.config.latent_channels), vae_factor(vae)
    except (AttributeError, TypeError, ValueError) as exc:
        reason = first_line(exc, 80)
        raise VAEError(f"VAE {name}'s config lacks latent_channels or block_out_channels ({reason}); {fix}") from None
    if channels != dit.in_channels:
        raise VAEError(
            f"VAE {name} has {channels} latent channels, but {preset}'s DiT makes {dit.in_channels}: it cannot decode "
            f"its samples; {fix}"
        )
    if factor != info.vae_factor:
        side, image = dit.input_size, dit.input_size * info.vae_factor
        raise VAEError(
            f"VAE {name} upsamples by {factor}, but {preset}'s DiT makes {side}x{side} latents of {image}x{image} "
            f"images (factor {info.vae_factor}): its samples would be {side * factor}x{side * factor}; {fix}"
        )
    latent_scale(vae, f"VAE {name}")


def load_vae(spec: str = "ema", device: str | torch.device = "cpu", preset: str | None = None):
    """Load a VAE from ``"ema"`` / ``"mse"``, a local folder or a hub id; eval mode on ``device``. With ``preset``,
    checked against that preset's DiT once, here, before anything is sampled (:func:`check_vae_fits`).

    Lookup order for a hub id: ``data/vae/<name>/``, the Hugging Face cache, then the hub
    (unless ``HF_HUB_OFFLINE=1``).

    Example:
        >>> from goc_utils.paths import DATA_DIR
        >>> vae = load_vae(str(DATA_DIR / "tiny_fashion_vae"))  # a local diffusers AutoencoderKL folder
        >>> vae.config.latent_channels, vae.config.scaling_factor
        (4, 0.39263)
    """
    vae = _read_vae(spec, device)
    if preset is not None:
        check_vae_fits(vae, preset, spec)
    return vae


def _read_vae(spec: str, device: str | torch.device):
    from diffusers import AutoencoderKL  # lazy: heavy, and only latent presets (DiT-XL/2) need it
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    hub_id = VAE_HUB_IDS.get(spec, spec)
    as_path = Path(hub_id).expanduser()
    if not as_path.exists() and _looks_like_path(hub_id):
        raise VAEError(f"VAE folder {str(as_path)!r} does not exist; pass --vae ema|mse, a diffusers folder or hub id")
    if as_path.exists():
        if not (as_path / "config.json").is_file():
            raise VAEError(
                f"VAE folder {str(as_path)!r} has no config.json; it must hold a diffusers AutoencoderKL "
                "(config.json + diffusion_pytorch_model.safetensors)"
            )
        if not any(as_path.glob("diffusion_pytorch_model*.safetensors")):
            pickles = sorted(p.name for p in as_path.glob("*.bin"))
            held = f" (it holds {pickles[0]}: pickles are never loaded)" if pickles else ""
            raise VAEError(
                f"VAE folder {str(as_path)!r} has no diffusion_pytorch_model.safetensors{held}; save the VAE with "
                "diffusers' save_pretrained (safetensors) or pass --vae ema|mse"
            )
        try:
            with warnings.catch_warnings():  # our line says what failed; the library's warnings are not repeated
                warnings.simplefilter("ignore")
                vae, loading = AutoencoderKL.from_pretrained(
                    str(as_path), use_safetensors=True, output_loading_info=True
                )
        except Exception as exc:  # noqa: BLE001 - report any reader failure in one line
            raise VAEError(f"cannot load the VAE in {str(as_path)!r}: {first_line(exc)}") from None
        _check_weights(vae, loading, as_path)
        return vae.to(device).eval()
    local = local_vae_dir(hub_id)
    if (local / "config.json").is_file():
        return _read_vae(str(local), device)
    folder = str(local.relative_to(paths.PROJECT_ROOT)) if local.is_relative_to(paths.PROJECT_ROOT) else str(local)
    advice = (
        f"download it where there is network (hf download {hub_id} --local-dir {folder}) "
        f"and put the files in {folder}/ or pass --vae PATH"
    )
    if "/" not in hub_id:
        raise VAEError(f"VAE {spec!r} is neither 'ema', 'mse', a folder nor a hub id; {advice}")
    try:
        vae = AutoencoderKL.from_pretrained(hub_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the cache: try the hub below
        if _offline():
            raise VAEError(f"VAE {hub_id!r} is not available offline (HF_HUB_OFFLINE=1); {advice}") from None
        if not _hub_reachable():  # fail in one line now rather than after the hub client's retries
            raise VAEError(f"VAE {hub_id!r} is not cached here and the hub is unreachable; {advice}") from None
        try:
            vae = AutoencoderKL.from_pretrained(hub_id)
        except Exception:  # noqa: BLE001 - network failures come in many types
            raise VAEError(
                f"cannot fetch VAE {hub_id!r} (no local copy and the hub is unreachable); {advice}"
            ) from None
    return vae.to(device).eval()


def _check_weights(vae, loading: dict, folder: Path) -> None:
    """One line when a VAE folder's weights are not those its ``config.json`` describes (diffusers would fill what
    is missing with random values and drop what it does not know, saying so only in its log) or hold NaN or infinite
    values."""
    fix = "pass a diffusers AutoencoderKL folder as save_pretrained writes it (config.json and its weights)"
    kinds = {"missing_keys": "missing", "unexpected_keys": "unknown", "mismatched_keys": "mis-shaped"}
    wrong = {what: list(loading.get(key) or []) for key, what in kinds.items()}
    if any(wrong.values()):
        found = ", ".join(f"{len(keys)} {what}" for what, keys in wrong.items() if keys)
        first = next(keys[0] for keys in wrong.values() if keys)
        first = first[0] if isinstance(first, tuple) else first  # mis-shaped keys come with their shapes
        raise VAEError(
            f"VAE folder {shorten(folder)!r} does not hold the weights its config.json describes ({found} weights, "
            f"e.g. {shorten(first, 60)}); {fix}"
        )
    bad = next((name for name, value in vae.state_dict().items() if not torch.isfinite(value).all()), None)
    if bad is not None:
        raise VAEError(f"VAE folder {shorten(folder)!r} holds NaN or infinite values in {bad}; {fix}")


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """``(N, 4, h, w)`` scaled latents -> images ``(N, C, f h, f w)`` in ~[-1, 1] (C = 3, f = 8 for sd-vae;
    C = 1, f = 4 for the tiny-fashion VAE), decoded in batches."""
    scale = latent_scale(vae)
    outs = [vae.decode(chunk / scale).sample for chunk in torch.split(latents, batch_size)]
    return torch.cat(outs, dim=0)
