"""What the ``goc`` commands share: the one-line-error parser, value types and flag groups.

Nothing here imports torch: ``goc --help`` builds its parser from this module alone.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.lists import number_list
from goc_utils.paths import link_problem

MAX_SEED = 2**63 - 1


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single line (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def number(text: str) -> float:
    """A finite float (``inf`` / ``nan`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def weight(text: str) -> float | str:
    """GOC's w: a number or ``auto``."""
    return "auto" if text.strip() == "auto" else number(text)


def seed(text: str) -> int:
    """A seed: an integer in 0 .. 2**63 - 1 (one rule for every command)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed {text!r} is not an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed {value} is outside 0..2**63-1")
    return value


def step_range(text: str) -> tuple[int, int | None]:
    """``"a:b"`` -> (a, b); ``"a:"`` -> (a, None)."""
    try:
        start, stop = text.split(":")
        return int(start or 0), (int(stop) if stop else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"malformed step range {text!r}; use a:b, e.g. 2:18") from None


def step_list(text: str) -> list[int] | str:
    """``"3,5,7,9"`` or ``auto``."""
    if text.strip() == "auto":
        return "auto"
    try:
        return number_list(text, int, "step list", "3,5,7,9 or auto")
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _blocked(path: Path) -> tuple[Path, str] | None:
    """The first of ``path``'s folders (outermost first) and ``path`` itself that is a symbolic link loop, a link to
    nothing or, for a folder, a file, with what it is; None when none is."""
    for part in [*reversed(path.parents), path]:
        problem = link_problem(part)
        if problem is None and part != path and part.exists() and not part.is_dir():
            problem = "is a file, not a folder"
        if problem is not None:
            return part, problem
    return None


def _refuse_blocked(path: Path, flag: str, fix: str) -> None:
    blocked = _blocked(path)
    if blocked is not None:
        part, problem = blocked
        where = "" if part == path else f": {shorten(part)!r}"
        raise InvalidArgumentError(f"{flag} {shorten(path)!r}{where} {problem}; {fix}")


def check_writable(path: Path, flag: str) -> Path:
    """Create the parent folder if needed and make sure a file can be written there."""
    path = path.expanduser()
    _refuse_blocked(path, flag, "choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgumentError(f"{flag} {str(path)!r}: cannot create its folder ({exc.strerror})") from None
    if path.is_dir():
        raise InvalidArgumentError(f"{flag} {str(path)!r} is a folder; give a file name")
    probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
    try:  # really create the file's temporary sibling: permissions alone do not tell (/proc, read-only mounts)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InvalidArgumentError(f"{flag} {str(path)!r} is not writable ({exc.strerror}); choose another") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise InvalidArgumentError(f"{flag} {str(path)!r} is not writable; choose another path")
    return path


def check_output_dir(path: Path, flag: str) -> Path:
    """A folder that exists or can be created, and where files can be written."""
    path = path.expanduser()
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"{flag} {str(path)!r} is a file; give a folder")
    _refuse_blocked(path, flag, "give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgumentError(f"{flag} {str(path)!r}: cannot create the folder ({exc.strerror})") from None
    check_writable(path / "run.json", flag)
    return path


# ----------------------------------------------------------------------------- flag groups


def add_model_arguments(p: argparse.ArgumentParser, vae: bool = True) -> None:
    """The flags every model-running command shares: preset, weights, VAE, image size, device."""
    p.add_argument(
        "--model", default="tiny-digits", help="preset: tiny-digits, tiny-fashion, DiT-XL/2, ... (default tiny-digits)"
    )
    p.add_argument(
        "--ckpt",
        default=None,
        help="DiT weights (.pt / train.py checkpoint / .safetensors / diffusers pipeline or transformer folder); "
        "default: the preset's committed weights (tiny-digits, tiny-fashion)",
    )
    if vae:
        p.add_argument(
            "--vae",
            default=None,
            help="latent presets: ema | mse | local folder | hub id (default: the pipeline's vae/ when --ckpt is a "
            "diffusers pipeline folder, else the preset's: data/tiny_fashion_vae for tiny-fashion, ema for DiT)",
        )
    p.add_argument(
        "--image-size", type=int, default=None, help="pixels (256 or 512 for DiT-XL/2; 8 tiny-digits; 32 tiny-fashion)"
    )
    add_device_argument(p)


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] (default auto)")


def add_sampling_arguments(
    p: argparse.ArgumentParser, cfg_scale: float | None = 4.0, seed_help: str | None = "noise seed (default 0)"
) -> None:
    """``--steps``, ``--cfg-scale`` (unless ``cfg_scale`` is None) and ``--seed`` (unless ``seed_help`` is None)."""
    p.add_argument("--steps", type=int, default=20, help="sampling steps after respacing (default 20)")
    if cfg_scale is not None:
        p.add_argument(
            "--cfg-scale", type=number, default=cfg_scale, help=f"classifier-free guidance scale (default {cfg_scale})"
        )
    if seed_help is not None:
        p.add_argument("--seed", type=seed, default=0, help=seed_help)


def add_router_arguments(p: argparse.ArgumentParser, thres_default: float | None = 0.1, help_extra: str = "") -> None:
    """``--router`` and ``--router-thres`` for the l2c schedule."""
    p.add_argument("--router", default=None, help="L2C router checkpoint for l2c methods" + help_extra)
    p.add_argument(
        "--router-thres", type=number, default=thres_default, help="l2c: recompute where score > T (default 0.1)"
    )


def add_backend_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=["native", "diffusers"],
        default="native",
        help="native: our DiT; diffusers: the same weights as a diffusers DiTTransformer2DModel, methods through "
        "goc_utils.integrations.diffusers.hooks (needed for diffusers:* caches) (default native)",
    )


def add_priors_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--priors", default=None, help="priors for goc:auto (default data/priors/<model>_ddim<steps>_cfg<cfg>...)"
    )


def add_tcc_pack_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tcc-pack",
        default=None,
        help="TCC pack for +tcc methods (default data/tcc/<model>_ddim<steps>_cfg<cfg>_<host>.safetensors)",
    )


def add_out_argument(p: argparse.ArgumentParser, help_text: str, default: str | None = None, required=False) -> None:
    p.add_argument("--out", default=default, required=required, help=help_text)


def at_least(minimum: int, off: bool = False):
    """An argparse type: an integer >= ``minimum`` (``type=at_least(1)``), or 0 for "off" when ``off`` is True (a
    bootstrap of one resample has no spread: ``at_least(2, off=True)``); else one line naming the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shorten(text)!r} is not an integer") from None
        if value < minimum and not (off and value == 0):
            rule = f"0 (off) or an integer >= {minimum}" if off else f"an integer >= {minimum}"
            raise argparse.ArgumentTypeError(f"must be {rule} (got {shorten(value)})")
        return value

    return parse


def add_threads_argument(p: argparse.ArgumentParser, default: int | None = None) -> None:
    p.add_argument(
        "--threads",
        type=at_least(1),
        default=default,
        help="torch CPU threads, >= 1 (default " + (f"{default})" if default else "torch's: one per core)"),
    )


def add_tf32_argument(p: argparse.ArgumentParser) -> None:
    """``--tf32`` / ``--no-tf32``: TF32 matmuls and convolutions on CUDA (see ``goc_utils.model.sampler.set_tf32``)."""
    p.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CUDA: TF32 matmuls and cuDNN convolutions, as DiT's sample.py / sample_ddp.py sampled the published "
        "FIDs (default on); --no-tf32 for strict fp32. No effect on CPU",
    )
