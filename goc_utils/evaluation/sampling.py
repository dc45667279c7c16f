"""Sampling at scale into npz files: per-sample seeds, atomic shards, resume, a lock per folder, torchrun.

The sampler itself (noise as DiT's ``sample.py`` draws it, guidance, decoding) is
:func:`goc_utils.model.sampler.generate`; this module runs it over many samples so that a stopped
run resumes to the same bytes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from tqdm.auto import tqdm

from goc_utils.errors import InvalidArgumentError, first_line, shorten
from goc_utils.files import (
    atomic_write_text,
    check_disk,
    check_memory,
    exclusive_lock,
    file_sha256,
    input_file,
    write_npz,
    write_npz_stream,
)
from goc_utils.model.dit import DiT
from goc_utils.model.sampler import SampleResult, generate, image_shape, per_sample_inputs


def save_samples_npz(path: str | Path, result: SampleResult) -> Path:
    """Save ``arr_0`` (uint8 NHWC), ``labels`` and ``final`` (float32 model-space samples)."""
    return write_npz(path, arr_0=result.images, labels=result.labels, final=result.final.numpy().astype(np.float32))


MANIFEST_NAME = "run.json"
SHARDS_DIR = "shards"
SAMPLES_NAME = "samples.npz"


def shard_ranges(num_samples: int, batch: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: consecutive chunks of ``batch`` sample indices (the last may be short)."""
    if num_samples < 1:
        raise InvalidArgumentError(f"--num-samples must be >= 1 (got {num_samples})")
    if batch < 1:
        raise InvalidArgumentError(f"--per-device-batch must be >= 1 (got {batch})")
    return [(start, min(start + batch, num_samples)) for start in range(0, num_samples, batch)]


def check_space(
    out_dir: Path, num_samples: int, batch: int, shape: tuple[int, int, int], runs: int = 1, what: str | None = None
) -> None:
    """Before any sampling: one line when ``runs`` runs of ``num_samples`` images of ``shape`` ``(H, W, C)`` would
    write more than the free disk under ``out_dir`` (shards plus ``samples.npz``, less the npz files already
    there), or when the merge of one run would need more memory than the machine has (its labels, read whole,
    and its index of shards of ``batch`` images)."""
    what = what or f"--num-samples {num_samples}"
    label = np.dtype(np.int64).itemsize
    per_sample = int(np.prod(shape)) + label  # image + label
    done = sum(f.stat().st_size for f in out_dir.rglob("*.npz") if f.is_file()) if out_dir.is_dir() else 0
    check_disk(out_dir, 2 * runs * num_samples * per_sample - done, what, "sample fewer images or free space")
    shards = -(-num_samples // max(batch, 1))
    check_memory(num_samples * label + shards * 200, what, "sample fewer images per run")  # ~200 B per shard entry


def _shard_path(out_dir: Path, start: int) -> Path:
    return out_dir / SHARDS_DIR / f"{start:08d}.npz"


def _shard_complete(path: Path, count: int) -> bool:
    """A shard exists, loads and holds ``count`` images and labels (a torn or foreign file does not count)."""
    try:
        with np.load(path) as data:
            return len(data["arr_0"]) == count and len(data["arr_1"]) == count
    except Exception:  # noqa: BLE001 - anything unreadable is simply redone
        return False


MAX_MANIFEST_BYTES = 1 << 20
"""A ``run.json`` is a few hundred bytes; anything beyond a MiB is not one."""


def read_manifest(out_dir: Path) -> dict:
    """The stored ``run.json`` of ``out_dir`` as a dict, else one line saying what it is instead (a folder, a
    device, not JSON, not an object, a damaged ``samples`` entry) and how to start over."""
    path = out_dir / MANIFEST_NAME
    fix = f"its shards cannot be checked without it: delete {out_dir} to sample again, or choose a new --out"
    input_file(path, "run manifest", fix, max_bytes=MAX_MANIFEST_BYTES)
    name = repr(shorten(path))
    try:
        text = path.read_text()
        stored = json.loads(text) if text.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgumentError(f"run manifest {name} is not valid JSON ({first_line(exc)}); {fix}") from None
    except OSError as exc:
        raise InvalidArgumentError(f"run manifest {name} cannot be read ({exc.strerror}); {fix}") from None
    if not text.strip():
        raise InvalidArgumentError(f"run manifest {name} is empty; {fix}")
    if not isinstance(stored, dict):
        kind = {list: "a list", str: "a string", type(None): "null"}.get(type(stored), "a number")
        raise InvalidArgumentError(f"run manifest {name} holds {kind}, not a JSON object of settings; {fix}")
    finished = stored.get(RESULT_KEY)
    if finished is not None and not (
        isinstance(finished, dict)
        and isinstance(finished.get("count"), int)
        and finished["count"] >= 0
        and isinstance(finished.get("sha256"), str)
    ):
        raise InvalidArgumentError(
            f"run manifest {name}: its {RESULT_KEY!r} entry {shorten(finished)} is not "
            '{"count": N, "sha256": "..."}; ' + fix
        )
    return stored


def check_manifest(out_dir: Path, manifest: dict, num_samples: int | None = None) -> None:
    """Write ``run.json`` on first use; on a rerun, refuse settings that differ from the stored ones.

    A finished run also records ``samples`` (count and sha256 of ``samples.npz``); asking it for fewer
    samples than it holds is refused (a finished file is never shrunk). A damaged ``run.json`` is refused
    with one line (:func:`read_manifest`).
    """
    path = out_dir / MANIFEST_NAME
    if path.exists() or path.is_symlink():
        stored = read_manifest(out_dir)
        keys = sorted((set(stored) | set(manifest)) - {RESULT_KEY, INPUTS_KEY})
        diff = [k for k in keys if stored.get(k) != manifest.get(k)]
        if diff:
            k = diff[0]
            raise InvalidArgumentError(
                f"{out_dir} holds a run with {k}={stored.get(k)!r} (this one: {manifest.get(k)!r}); "
                "rerun with the same settings to resume, or choose a new --out"
            )
        _check_inputs(out_dir, stored.get(INPUTS_KEY), manifest.get(INPUTS_KEY))  # same settings, other contents
        finished = stored.get(RESULT_KEY) or {}
        if num_samples is not None and num_samples < finished.get("count", 0):
            raise InvalidArgumentError(
                f"{out_dir} holds a finished run of {finished['count']} samples; --num-samples {num_samples} would "
                f"shrink it: rerun with --num-samples {finished['count']} or more, or choose a new --out"
            )
        return
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


INPUTS_KEY = "inputs"
"""``run.json`` entry: sha256 of the contents the run read (weights, VAE, schedule, packs), compared on a rerun
where the stored run has it (runs recorded before it resume on their settings alone)."""


def _check_inputs(out_dir: Path, stored: dict | None, current: dict | None) -> None:
    """A rerun reads the contents the run was sampled with: every digest the stored run recorded must be equal."""
    if stored is None or current is None:
        return
    if not isinstance(stored, dict):
        raise InvalidArgumentError(f"{out_dir / MANIFEST_NAME} has inputs that are not a mapping; choose a new --out")
    for name in sorted(set(stored) | set(current)):
        was, now = stored.get(name), current.get(name)
        if was != now:
            was, now = (f"sha256 {str(v)[:12]}..." if v else "none" for v in (was, now))
            raise InvalidArgumentError(
                f"{out_dir} was sampled with {name} of {was}, this run has {now}: a file changed since the run's "
                "first part; restore it to resume, or choose a new --out"
            )


RESULT_KEY = "samples"
"""``run.json`` entry written when ``samples.npz`` is complete: ``{"count": N, "sha256": ...}``."""


def _record_samples(out_dir: Path, count: int) -> None:
    stored = read_manifest(out_dir)
    stored[RESULT_KEY] = {"count": count, "sha256": file_sha256(out_dir / SAMPLES_NAME)}
    atomic_write_text(out_dir / MANIFEST_NAME, json.dumps(stored, indent=2, sort_keys=True) + "\n")


@contextmanager
def run_lock(out_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold ``out_dir/.lock`` (one sampling process per folder); a second one stops with one line."""
    if not enabled:
        yield
        return
    busy = f"another process is sampling into {out_dir}; wait for it to finish or choose another --out"
    with exclusive_lock(out_dir / LOCK_NAME, busy):
        yield


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


@dataclass(frozen=True)
class NpzRun:
    """What one resumable sampling run into a folder draws.

    Attributes:
        num_samples: images (may grow on a rerun). batch: images per forward chunk and per shard.
        manifest: the settings that fix the samples (model, method, seed, ...), stored as ``run.json``.
        seed: sample ``i`` is drawn from :func:`~goc_utils.model.sampler.sample_seed` of ``(seed, i)``.
        steps, sampler, cfg_scale: as :func:`~goc_utils.model.sampler.generate` takes them.
    """

    num_samples: int
    batch: int
    manifest: dict
    seed: int = 0
    steps: int = 20
    sampler: str = "ddim"
    cfg_scale: float = 1.5


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


def sample_to_npz(
    model: DiT,
    out_dir: str | Path,
    run: NpzRun,
    forward: Callable[..., torch.Tensor] | None = None,
    vae=None,
    dist: Distributed | None = None,
    progress: bool = True,
) -> Path:
    """Sample ``run.num_samples`` images into ``out_dir/samples.npz``, resumably, on one or many processes.

    Work is cut into chunks of ``run.batch`` consecutive sample indices; chunk ``j`` runs on rank
    ``j % world`` and lands in ``out_dir/shards/<start>.npz`` (written to a temporary name, then
    renamed). A rerun skips complete shards, so an interrupted run (even ``kill -9``) resumes
    and ends with the same bytes as an uninterrupted one. Rank 0 merges the shards at the end.
    ``run.manifest`` (model, method, seed, ...) is stored as ``run.json``; resuming with other
    settings is refused. ``forward``: the method's (default: the un-cached model).
    """
    out_dir, dist = Path(out_dir), dist or Distributed()
    check_space(out_dir, run.num_samples, run.batch, image_shape(model, vae))
    shard_ranges(run.num_samples, run.batch)  # one line for a bad count or batch, before the lock
    with run_lock(out_dir, enabled=dist.rank == 0):
        if dist.rank == 0:
            check_manifest(out_dir, run.manifest, run.num_samples)
        dist.barrier()
        if dist.rank != 0:
            check_manifest(out_dir, run.manifest, run.num_samples)
        return _sample_shards(model, out_dir, run, forward, vae, dist, progress)


def _sample_shards(model, out_dir: Path, run: NpzRun, forward, vae, dist: Distributed, progress: bool) -> Path:
    ranges = shard_ranges(run.num_samples, run.batch)
    (out_dir / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    mine = [r for j, r in enumerate(ranges) if j % dist.world == dist.rank]
    todo = [r for r in mine if not _shard_complete(_shard_path(out_dir, r[0]), r[1] - r[0])]
    done = sum(b - a for a, b in mine) - sum(b - a for a, b in todo)
    with tqdm(
        total=sum(b - a for a, b in mine),
        initial=done,
        desc=f"sampling {out_dir.name}",
        unit="img",
        disable=not progress or dist.rank != 0,
    ) as bar:
        for start, stop in todo:
            labels, noise = per_sample_inputs(model, range(start, stop), run.seed)
            device = next(model.parameters()).device
            result = generate(
                model,
                labels,
                steps=run.steps,
                sampler=run.sampler,
                cfg_scale=run.cfg_scale,
                vae=vae,
                forward=forward,
                noise=noise.to(device),
            )
            write_npz(_shard_path(out_dir, start), arr_0=result.images, arr_1=result.labels)
            bar.update(stop - start)
    dist.barrier()
    if dist.rank == 0 and not _merged_is_current(out_dir, ranges):
        merge_shards(out_dir, ranges)
        _record_samples(out_dir, ranges[-1][1])
    dist.barrier()
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
    recorded = read_manifest(out_dir).get(RESULT_KEY) or {}
    if recorded.get("count") == ranges[-1][1] and recorded.get("sha256") == file_sha256(merged):
        return True
    if recorded.get("sha256"):
        print(f"{merged} does not match its sha256 in run.json; rebuilding it from the shards", file=sys.stderr)
    return False
