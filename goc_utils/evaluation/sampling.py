"""Batch sampling: noise as DiT's ``sample.py`` draws it, guidance, decoding, npz output.

``generate`` is the one entry point used by the CLI, the notebooks and (later) the cache
engine: the model call goes through a ``forward(x, t, y, step=s)`` function whose default
is the plain model, so a cache engine plugs in without touching the sampler.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from goc_utils.datasets import to_uint8
from goc_utils.errors import InvalidArgumentError
from goc_utils.files import atomic_write_text, write_npz, write_npz_stream
from goc_utils.model.diffusion import NUM_TRAIN_TIMESTEPS, cfg_denoiser, create_diffusion
from goc_utils.model.dit import DiT
from goc_utils.model.vae import decode_latents


@dataclass
class SampleResult:
    """What a sampling run returns.

    Attributes:
        final: model-space samples ``(N, C, H, W)`` float32 before decoding (latents for
            VAE presets), the conditional half of the CFG batch.
        images: uint8 ``(N, H, W, 3 or 1)`` images (the ADM evaluator's batch format).
        labels: ``(N,)`` int64 class labels.
    """

    final: torch.Tensor
    images: np.ndarray
    labels: np.ndarray


def plain_forward(model: DiT) -> Callable[..., torch.Tensor]:
    """``forward(x, t, y, step=s)`` that ignores the step: the un-cached model."""

    def forward(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        return model(x, t, y)

    return forward


def check_sampling_args(
    model: DiT, labels: Sequence[int], steps: int, cfg_scale: float, model_name: str = "this model"
) -> None:
    """Raise one-line errors for labels out of range, steps < 1 and a negative / NaN cfg scale."""
    if len(labels) == 0:
        raise InvalidArgumentError("no class labels given; pass e.g. --classes 0,1,2")
    bad = [c for c in labels if not 0 <= int(c) < model.num_classes]
    if bad:
        raise InvalidArgumentError(
            f"class id {bad[0]} is out of range for {model_name}; use 0..{model.num_classes - 1}"
        )
    if not 1 <= int(steps) <= NUM_TRAIN_TIMESTEPS:
        raise InvalidArgumentError(f"steps must be in 1..{NUM_TRAIN_TIMESTEPS} (got {steps})")
    if not cfg_scale >= 0:  # also catches NaN
        raise InvalidArgumentError(f"cfg scale must be a number >= 0 (got {cfg_scale}); 1.0 disables guidance")


def draw_noise(model: DiT, n: int, seed: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """DiT's ``sample.py`` noise: ``torch.manual_seed(seed)`` then one ``randn(n, C, H, W)``."""
    torch.manual_seed(seed)
    return torch.randn(n, model.in_channels, model.input_size, model.input_size, device=device)


def generate(
    model: DiT,
    labels: Sequence[int],
    seed: int = 0,
    steps: int | str = 20,
    sampler: str = "ddim",
    cfg_scale: float = 4.0,
    vae=None,
    forward: Callable[..., torch.Tensor] | None = None,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    noise: torch.Tensor | None = None,
) -> SampleResult:
    """Sample one image per label, reproducibly.

    Noise is drawn first (seed, then one ``randn`` for all labels), then the reverse chain
    runs with DiT's classifier-free guidance when ``cfg_scale != 1`` (batch ``[z, z]``,
    labels ``[y, null]``) and the plain model otherwise. ``steps`` is a respacing spec
    (``20``, ``"ddim20"``, ``"250"``). ``forward(x, t, y, step=s)`` replaces the model
    call (cache engines); ``callback(s, x)`` sees the batch after every step. ``noise``
    ``(N, C, H, W)`` replaces the seeded draw (per-sample seeding by the caller).

    Example:
        >>> from goc_utils.model.dit import load_model
        >>> result = generate(load_model("tiny-digits"), [3, 5], seed=0, steps=10)
        >>> result.images.shape
        (2, 8, 8, 1)
    """
    diffusion = create_diffusion(steps, learn_sigma=model.learn_sigma)  # rejects steps < 1
    check_sampling_args(model, labels, diffusion.num_timesteps, cfg_scale)
    device = next(model.parameters()).device
    if noise is None:
        noise = draw_noise(model, len(labels), seed, device)
    elif tuple(noise.shape) != (len(labels), model.in_channels, model.input_size, model.input_size):
        raise InvalidArgumentError(f"noise has shape {tuple(noise.shape)}; expected one (C, H, W) draw per label")
    y = torch.tensor([int(c) for c in labels], device=device, dtype=torch.long)
    forward = forward or plain_forward(model)
    if cfg_scale != 1.0:
        z = torch.cat([noise, noise], dim=0)
        y = torch.cat([y, torch.full_like(y, model.null_class)], dim=0)
        denoiser = cfg_denoiser(forward, cfg_scale, model.in_channels)
    else:
        z, denoiser = noise, forward
    with torch.no_grad():
        out = diffusion.sample_loop(denoiser, z, y, sampler=sampler, progress=progress, callback=callback)
    final = out[: len(labels)].float()
    if vae is not None:
        pixels = decode_latents(vae, final.to(next(vae.parameters()).device, next(vae.parameters()).dtype))
    else:
        pixels = final
    return SampleResult(final=final.cpu(), images=to_uint8(pixels.float()), labels=np.asarray(labels, dtype=np.int64))


def parse_classes(text: str) -> list[int]:
    """``"207,360"`` or ``"0-9"`` -> class ids (one-line error when malformed)."""
    classes: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                classes.extend(range(int(lo), int(hi) + 1))
            elif part:
                classes.append(int(part))
        except ValueError:
            raise InvalidArgumentError(f"malformed class list {text!r}; use e.g. 3,5,7 or 0-9") from None
    if not classes:
        raise InvalidArgumentError(f"empty class list {text!r}; use e.g. 3,5,7 or 0-9")
    return classes


def class_labels(classes: Sequence[int], per_class: int = 1) -> list[int]:
    """``[c0]*K + [c1]*K + ...``: K samples per class, grouped by class."""
    if per_class < 1:
        raise InvalidArgumentError(f"--per-class must be >= 1 (got {per_class})")
    return [int(c) for c in classes for _ in range(per_class)]


def save_samples_npz(path: str | Path, result: SampleResult) -> Path:
    """Save ``arr_0`` (uint8 NHWC), ``labels`` and ``final`` (float32 model-space samples)."""
    return write_npz(path, arr_0=result.images, labels=result.labels, final=result.final.numpy().astype(np.float32))


# --------------------------------------------------------------------------------------
# Sampling at scale: per-sample seeds, atomic shards, resume, torchrun
# --------------------------------------------------------------------------------------

MANIFEST_NAME = "run.json"
SHARDS_DIR = "shards"
SAMPLES_NAME = "samples.npz"


def sample_seed(seed: int, index: int) -> int:
    """The generator seed of sample ``index`` of a run with ``seed`` (63-bit, from numpy's SeedSequence)."""
    high, low = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    return (int(high) << 31) | (int(low) >> 1)


def per_sample_inputs(model: DiT, indices: Sequence[int], seed: int) -> tuple[list[int], torch.Tensor]:
    """Class label and noise of each sample index, each from its own generator.

    Sample ``i`` draws its label uniformly over the classes (as DiT's ``sample_ddp.py`` does)
    and then its noise ``(C, H, W)`` from ``torch.Generator().manual_seed(sample_seed(seed, i))``,
    so a sample does not depend on the batch it lands in or on the number of processes.
    """
    labels, noise = [], []
    for index in indices:
        g = torch.Generator().manual_seed(sample_seed(seed, index))
        labels.append(int(torch.randint(model.num_classes, (1,), generator=g)))
        noise.append(torch.randn(model.in_channels, model.input_size, model.input_size, generator=g))
    return labels, torch.stack(noise)


def shard_ranges(num_samples: int, batch: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: consecutive chunks of ``batch`` sample indices (the last may be short)."""
    if num_samples < 1:
        raise InvalidArgumentError(f"--num-samples must be >= 1 (got {num_samples})")
    if batch < 1:
        raise InvalidArgumentError(f"--per-device-batch must be >= 1 (got {batch})")
    return [(start, min(start + batch, num_samples)) for start in range(0, num_samples, batch)]


def _shard_path(out_dir: Path, start: int) -> Path:
    return out_dir / SHARDS_DIR / f"{start:08d}.npz"


def _shard_complete(path: Path, count: int) -> bool:
    """A shard exists, loads and holds ``count`` images and labels (a torn or foreign file does not count)."""
    try:
        with np.load(path) as data:
            return len(data["arr_0"]) == count and len(data["arr_1"]) == count
    except Exception:  # noqa: BLE001 - anything unreadable is simply redone
        return False


def check_manifest(out_dir: Path, manifest: dict, num_samples: int | None = None) -> None:
    """Write ``run.json`` on first use; on a rerun, refuse settings that differ from the stored ones.

    A finished run also records ``samples`` (count and sha256 of ``samples.npz``); asking it for fewer
    samples than it holds is refused (a finished file is never shrunk).
    """
    path = out_dir / MANIFEST_NAME
    if path.exists():
        stored = json.loads(path.read_text())
        diff = [k for k in sorted(set(stored) | set(manifest)) if k != RESULT_KEY and stored.get(k) != manifest.get(k)]
        if diff:
            k = diff[0]
            raise InvalidArgumentError(
                f"{out_dir} holds a run with {k}={stored.get(k)!r} (this one: {manifest.get(k)!r}); "
                "rerun with the same settings to resume, or choose a new --out"
            )
        finished = stored.get(RESULT_KEY) or {}
        if num_samples is not None and num_samples < finished.get("count", 0):
            raise InvalidArgumentError(
                f"{out_dir} holds a finished run of {finished['count']} samples; --num-samples {num_samples} would "
                f"shrink it: rerun with --num-samples {finished['count']} or more, or choose a new --out"
            )
        return
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


RESULT_KEY = "samples"
"""``run.json`` entry written when ``samples.npz`` is complete: ``{"count": N, "sha256": ...}``."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record_samples(out_dir: Path, count: int) -> None:
    path = out_dir / MANIFEST_NAME
    stored = json.loads(path.read_text())
    stored[RESULT_KEY] = {"count": count, "sha256": file_sha256(out_dir / SAMPLES_NAME)}
    atomic_write_text(path, json.dumps(stored, indent=2, sort_keys=True) + "\n")


@contextmanager
def run_lock(out_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold ``out_dir/.lock`` (one sampling process per folder); a second one stops with one line."""
    if not enabled:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidArgumentError(
                f"another process is sampling into {out_dir}; wait for it to finish or choose another --out"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


LOCK_NAME = ".lock"


def merge_shards(out_dir: Path, ranges: list[tuple[int, int]]) -> Path:
    """Concatenate the shards in index order into ``samples.npz`` (``arr_0`` images, ``arr_1`` labels)."""
    first = np.load(_shard_path(out_dir, ranges[0][0]))["arr_0"]
    total = ranges[-1][1]

    def chunks(key: str) -> Iterator[np.ndarray]:
        for start, _ in ranges:
            with np.load(_shard_path(out_dir, start)) as data:
                yield data[key]

    return write_npz_stream(
        out_dir / SAMPLES_NAME,
        {
            "arr_0": ((total, *first.shape[1:]), np.uint8, chunks("arr_0")),
            "arr_1": ((total,), np.int64, chunks("arr_1")),
        },
    )


def sample_to_npz(
    model: DiT,
    out_dir: str | Path,
    num_samples: int,
    batch: int,
    manifest: dict,
    seed: int = 0,
    steps: int = 20,
    sampler: str = "ddim",
    cfg_scale: float = 1.5,
    vae=None,
    forward: Callable[..., torch.Tensor] | None = None,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
    progress: bool = True,
) -> Path:
    """Sample ``num_samples`` images into ``out_dir/samples.npz``, resumably, on one or many processes.

    Work is cut into chunks of ``batch`` consecutive sample indices; chunk ``j`` runs on rank
    ``j % world`` and lands in ``out_dir/shards/<start>.npz`` (written to a temporary name, then
    renamed). A rerun skips complete shards, so an interrupted run (even ``kill -9``) resumes
    and ends with the same bytes as an uninterrupted one. Rank 0 merges the shards at the end.
    ``manifest`` (model, method, seed, ...) is stored as ``run.json``; resuming with other
    settings is refused.
    """
    out_dir = Path(out_dir)
    ranges = shard_ranges(num_samples, batch)
    barrier = barrier or (lambda: None)
    with run_lock(out_dir, enabled=rank == 0):
        if rank == 0:
            check_manifest(out_dir, manifest, num_samples)
        barrier()
        if rank != 0:
            check_manifest(out_dir, manifest, num_samples)
        return _sample_shards(
            model, out_dir, ranges, seed, steps, sampler, cfg_scale, vae, forward, rank, world, barrier, progress
        )


def _sample_shards(
    model, out_dir, ranges, seed, steps, sampler, cfg_scale, vae, forward, rank, world, barrier, progress
) -> Path:
    (out_dir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    mine = [r for j, r in enumerate(ranges) if j % world == rank]
    todo = [r for r in mine if not _shard_complete(_shard_path(out_dir, r[0]), r[1] - r[0])]
    done = sum(b - a for a, b in mine) - sum(b - a for a, b in todo)
    with tqdm(
        total=sum(b - a for a, b in mine),
        initial=done,
        desc=f"sampling {out_dir.name}",
        unit="img",
        disable=not progress or rank != 0,
    ) as bar:
        for start, stop in todo:
            labels, noise = per_sample_inputs(model, range(start, stop), seed)
            device = next(model.parameters()).device
            result = generate(
                model,
                labels,
                steps=steps,
                sampler=sampler,
                cfg_scale=cfg_scale,
                vae=vae,
                forward=forward,
                noise=noise.to(device),
            )
            write_npz(_shard_path(out_dir, start), arr_0=result.images, arr_1=result.labels)
            bar.update(stop - start)
    barrier()
    if rank == 0 and not _merged_is_current(out_dir, ranges):
        merge_shards(out_dir, ranges)
        _record_samples(out_dir, ranges[-1][1])
    barrier()
    return out_dir / SAMPLES_NAME


def _merged_is_current(out_dir: Path, ranges: list[tuple[int, int]]) -> bool:
    """``samples.npz`` holds exactly these shards and none is newer (a finished run is not rewritten)."""
    merged = out_dir / SAMPLES_NAME
    if not merged.is_file():
        return False
    try:
        with np.load(merged) as data:
            if len(data["arr_1"]) != ranges[-1][1]:
                return False
    except Exception:  # noqa: BLE001 - unreadable: merge again
        return False
    newest = max(_shard_path(out_dir, start).stat().st_mtime_ns for start, _ in ranges)
    if merged.stat().st_mtime_ns < newest:
        return False
    recorded = json.loads((out_dir / MANIFEST_NAME).read_text()).get(RESULT_KEY) or {}
    if recorded.get("count") == ranges[-1][1] and recorded.get("sha256") == file_sha256(merged):
        return True
    if recorded.get("sha256"):
        print(f"{merged} does not match its sha256 in run.json; rebuilding it from the shards", file=sys.stderr)
    return False
