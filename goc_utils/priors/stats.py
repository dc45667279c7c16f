"""Prior knowledge for GOC: streaming block-feature statistics of un-cached sampling.

**Extraction.** During un-cached sampling every block's attention-branch output, MLP-branch
output (both before gating) and block output hidden state is observed at every step (the
conditional half of the CFG batch). Statistics are accumulated on the fly, in float64, so
memory does not grow with the number of classes and no per-class file is written:

* ``mean``: per (step, block, kind) mean feature ``(T, D)`` (kind 0 = attention branch,
  1 = MLP branch, 2 = block output);
* ``abs_mean`` / ``l2``: per (step, block, kind) mean over samples of ``mean|x|`` and ``||x||_2``;
* ``adjacent_cos`` / ``adjacent_rel_l1``: per (step >= 1, block, kind) mean over samples of
  ``cos(x_s, x_{s-1})`` and ``||x_s - x_{s-1}||_1 / ||x_{s-1}||_1``;
* ``gram``: per (block, unit) of the two cacheable units, the steps x steps matrix of mean per-sample
  inner products ``E <x_s, x_t>``. Every GOC replay is a linear combination of a sample's own
  features, so this matrix gives its expected per-sample squared error exactly. Features with more
  than :data:`GRAM_DIM` numbers per sample are first sketched (a fixed Gaussian projection of the
  hidden dimension, unbiased for inner products), so the per-batch history it needs stays small.

The protocol defaults to the paper's: one sample per class, seed 0 (every class starts
from the same noise, as the reference script seeds each class run with 0), cfg 4.0,
DDIM-20, no cache. Runs can be split into class shards and merged.

**Analysis.** From a priors file: step x step similarity matrices of the mean features,
gradients ``g_s = F_s - F_{s-1}`` and their direction consistency ``cos(g_s, g_{s-1})``,
and a replay of GOC's queue for a schedule and weight w, which yields the inflection-aware
correction steps and a least-squares w (see :func:`inflection_steps` and
:func:`calibrate_weight`). The replay runs on the per-sample trajectories (``gram``, the
default) or, as the paper's "prior knowledge", on the class-averaged mean trajectory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from goc_utils import paths
from goc_utils.cache.engine import CacheEngine
from goc_utils.cache.goc import COUPLINGS
from goc_utils.cache.schedule import CacheSchedule, none_schedule
from goc_utils.errors import GocError, InvalidArgumentError, first_line
from goc_utils.evaluation.sampling import draw_noise, generate
from goc_utils.files import atomic_save_safetensors
from goc_utils.model.dit import DiT
from goc_utils.model.macs import branch_macs

KINDS = ("attention", "mlp", "block")
"""Feature kinds recorded per block: the two cacheable units and the block output."""

PRIORS_FORMAT = "goc-priors/1"

GRAM_DIM = 4096
"""Largest per-sample feature size (tokens x hidden) kept exactly for ``gram``; larger ones are sketched."""

GRAM_SOURCES = ("samples", "mean")


def sketch_features(x: torch.Tensor, limit: int = GRAM_DIM) -> torch.Tensor:
    """``(B, T, D)`` unit features -> ``(B, r)`` float32 on the CPU with ``E <S x, S y> = <x, y>``.

    Exact (``r = T * D``) when ``T * D <= limit``; otherwise each token's hidden vector is projected
    by one fixed Gaussian matrix ``(D, k) / sqrt(k)`` with ``k = max(1, limit // T)`` (seed 0, the same
    for every unit and run, so shards merge), giving ``r = T * k``.
    """
    tokens, hidden = x.shape[1], x.shape[2]
    if tokens * hidden <= limit:
        return x.detach().flatten(1).to("cpu", torch.float32, copy=True)  # no view of the unit output
    k = max(1, limit // tokens)
    generator = torch.Generator().manual_seed(0)
    projection = torch.randn(hidden, k, generator=generator, dtype=torch.float32) / k**0.5
    return (x.detach().float() @ projection.to(x.device)).flatten(1).to("cpu")


class PriorsError(GocError):
    """A priors file that is missing, corrupt, or made for another model / step count / cfg."""


HEADER_KEYS = ("model", "steps", "cfg_scale", "depth", "tokens", "hidden", "classes", "seeds", "count")
"""What a priors file's header must hold."""

STAT_NAMES = ("sum_feature", "sum_abs", "sum_l2", "sum_cos", "sum_rel_l1", "sum_gram")


@dataclass
class PriorStats:
    """Streaming accumulator of block-feature statistics (float64 sums; see module docstring).

    Attributes:
        model: preset name the features come from.
        steps: sampling steps N; cfg_scale: guidance scale; depth, tokens, hidden: model shape.
        classes, seeds: the (class, seed) pairs seen, in order.
    """

    model: str
    steps: int
    cfg_scale: float
    depth: int
    tokens: int
    hidden: int
    classes: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        shape = (self.steps, self.depth, len(KINDS))
        self.count = 0
        self.sum_feature = np.zeros(shape + (self.tokens, self.hidden), dtype=np.float64)
        self.sum_abs = np.zeros(shape, dtype=np.float64)
        self.sum_l2 = np.zeros(shape, dtype=np.float64)
        self.sum_cos = np.zeros(shape, dtype=np.float64)
        self.sum_rel_l1 = np.zeros(shape, dtype=np.float64)
        self.sum_gram = np.zeros((self.steps, self.steps, self.depth, 2), dtype=np.float64)
        self.gram_count = 0

    # ------------------------------------------------------------------ accumulation
    def add(self, step: int, block: int, kind: int, x: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        """Add a batch of features ``x (B, T, D)`` observed at ``step``.

        ``previous`` is what this call returned for the same (block, kind) at step - 1: a CPU
        float32 ``(B, T * D)`` copy (nothing extra stays on the accelerator; half the host
        memory of float64), upcast when the adjacent-step statistics are computed.
        """
        flat = x.detach().to("cpu").to(torch.float64).flatten(1)
        self.sum_feature[step, block, kind] += flat.sum(0).numpy().reshape(self.tokens, self.hidden)
        self.sum_abs[step, block, kind] += flat.abs().mean(1).sum().item()
        self.sum_l2[step, block, kind] += flat.norm(dim=1).sum().item()
        if previous is not None:
            previous = previous.to(torch.float64)
            self.sum_cos[step, block, kind] += torch.nn.functional.cosine_similarity(flat, previous, dim=1).sum().item()
            rel = (flat - previous).abs().sum(1) / previous.abs().sum(1).clamp_min(1e-12)
            self.sum_rel_l1[step, block, kind] += rel.sum().item()
        return flat.to(torch.float32)

    def add_gram(self, step: int, block: int, unit: int, sketch: torch.Tensor, history: list[torch.Tensor]) -> None:
        """Add ``sum_b <z_s[b], z_t[b]>`` for ``t <= step`` (``history`` = this batch's sketches of steps < s)."""
        z = sketch.to(torch.float64)
        for t, past in enumerate(history):
            value = float((z * past.to(torch.float64)).sum())
            self.sum_gram[step, t, block, unit] += value
            self.sum_gram[t, step, block, unit] += value
        self.sum_gram[step, step, block, unit] += float((z * z).sum())

    def merge(self, other: PriorStats) -> PriorStats:
        """Add another shard's statistics (same model, steps, cfg) into this one."""
        check_compatible(self.header(), other.header(), "merge")
        for name in STAT_NAMES:
            getattr(self, name).__iadd__(getattr(other, name))
        self.count += other.count
        self.gram_count += other.gram_count
        self.classes += other.classes
        self.seeds += other.seeds
        return self

    def auto_goc(self, schedule: CacheSchedule, steps="auto", weight="auto", coupling: str = "block") -> AutoGOC:
        """:func:`auto_goc` on these priors (what the cache engine calls to resolve GOC's ``"auto"`` options)."""
        return auto_goc(self, schedule, steps, weight, coupling)

    # ------------------------------------------------------------------ views
    @property
    def mean(self) -> np.ndarray:
        """Mean feature ``(steps, depth, 3, T, D)``."""
        return self.sum_feature / max(self.count, 1)

    @property
    def has_gram(self) -> bool:
        """Whether every sample contributed to ``gram`` (files from before it was recorded lack it)."""
        return self.count > 0 and self.gram_count == self.count

    def gram(self, source: str = "samples") -> np.ndarray:
        """Steps x steps inner products of the two units ``(steps, steps, depth, 2)``.

        ``samples``: mean over samples of ``<x_s, x_t>`` (what a replay's expected per-sample error
        needs); ``mean``: ``<m_s, m_t>`` of the class-averaged mean features (the paper's prior knowledge).
        """
        if source not in GRAM_SOURCES:
            raise InvalidArgumentError(f"unknown priors source {source!r}; choose samples or mean")
        if source == "samples":
            if not self.has_gram:
                raise PriorsError(
                    "this priors file has no per-sample statistics (made before they were recorded); "
                    "recreate it with `goc priors` or use the mean trajectory"
                )
            return self.sum_gram / self.count
        flat = self.mean[:, :, :2].reshape(self.steps, self.depth, 2, -1)
        return np.einsum("sbuk,tbuk->stbu", flat, flat)

    def scalar(self, name: str) -> np.ndarray:
        """Mean over samples of ``abs_mean``, ``l2``, ``adjacent_cos`` or ``adjacent_rel_l1`` ``(steps, depth, 3)``."""
        table = {
            "abs_mean": self.sum_abs,
            "l2": self.sum_l2,
            "adjacent_cos": self.sum_cos,
            "adjacent_rel_l1": self.sum_rel_l1,
        }
        if name not in table:
            raise InvalidArgumentError(f"unknown statistic {name!r}; choose one of: {', '.join(table)}")
        out = table[name] / max(self.count, 1)
        if name.startswith("adjacent"):
            out[0] = np.nan  # no previous step
        return out

    def header(self) -> dict:
        return {
            "format": PRIORS_FORMAT,
            "model": self.model,
            "steps": self.steps,
            "cfg_scale": self.cfg_scale,
            "depth": self.depth,
            "tokens": self.tokens,
            "hidden": self.hidden,
            "count": self.count,
            "gram_count": self.gram_count,
            "classes": self.classes,
            "seeds": self.seeds,
            "kinds": list(KINDS),
        }

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, resume: dict | None = None) -> Path:
        """One safetensors file: float64 sums + a JSON header (model, steps, cfg, classes, seeds, count).

        ``resume`` (checkpoints of an unfinished extraction) is stored in the header too.
        """
        tensors = {name: torch.from_numpy(getattr(self, name)) for name in STAT_NAMES}
        metadata = {"goc_priors": json.dumps(self.header())}
        if resume is not None:
            metadata["resume"] = json.dumps(resume)
        atomic_save_safetensors(tensors, Path(path), metadata)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> PriorStats:
        """Read a priors file (one-line :class:`PriorsError` when missing or corrupt)."""
        path = Path(path)
        if not path.is_file():
            raise PriorsError(f"priors file {str(path)!r} does not exist; create it with `goc priors --out {path}`")
        try:
            with safe_open(str(path), "pt") as f:
                header = json.loads((f.metadata() or {})["goc_priors"])
                tensors = {k: f.get_tensor(k).numpy() for k in f.keys()}
        except Exception as exc:  # noqa: BLE001 - truncated / foreign file
            raise PriorsError(
                f"priors file {str(path)!r} is corrupt or not a goc priors file ({first_line(exc, 100)}); "
                "recreate it with `goc priors`"
            ) from None
        if header.get("format") != PRIORS_FORMAT:
            raise PriorsError(
                f"priors file {str(path)!r} has format {header.get('format')!r}, expected {PRIORS_FORMAT}"
            )
        missing = [k for k in HEADER_KEYS if k not in header]
        if missing:
            raise PriorsError(
                f"priors file {str(path)!r}: its header lacks {', '.join(missing)}; recreate it with `goc priors`"
            )
        stats = cls(
            header["model"],
            header["steps"],
            header["cfg_scale"],
            header["depth"],
            header["tokens"],
            header["hidden"],
            list(header["classes"]),
            list(header["seeds"]),
        )
        stats.count = int(header["count"])
        stats.gram_count = int(header.get("gram_count", 0))
        for name, value in tensors.items():
            if getattr(stats, name).shape != value.shape:
                raise PriorsError(f"priors file {str(path)!r}: tensor {name} has shape {value.shape}, header disagrees")
            setattr(stats, name, value.astype(np.float64))
        return stats


def check_compatible(expected: dict, found: dict, what: str) -> None:
    """One-line error when two priors headers (or a run and a file) disagree on model, steps or cfg."""
    for key in ("model", "steps", "cfg_scale", "depth", "tokens", "hidden"):
        if expected.get(key) != found.get(key):
            raise PriorsError(
                f"cannot {what}: {key} {found.get(key)!r} (priors) != {expected.get(key)!r} (run); "
                f"extract priors for this run with `goc priors --model {expected.get('model')} --steps "
                f"{expected.get('steps')} --cfg-scale {expected.get('cfg_scale')}`"
            )


def default_priors_path(model: str, steps: int, cfg_scale: float) -> Path:
    """``data/priors/<model>_ddim<steps>_cfg<cfg>.safetensors``, where ``--goc-steps auto`` looks."""
    slug = model.replace("/", "-")
    return paths.DATA_DIR / "priors" / f"{slug}_ddim{steps}_cfg{cfg_scale:g}.safetensors"


def priors_for_run(model_name: str, model: DiT, steps: int, cfg_scale: float, path: str | Path | None = None):
    """Load the priors for a run (``path`` or the default location) and check they fit it."""
    path = Path(path) if path else default_priors_path(model_name, steps, cfg_scale)
    stats = PriorStats.load(path)
    run = {"model": model_name, "steps": steps, "cfg_scale": cfg_scale, "depth": model.depth}
    run.update(tokens=model.num_tokens, hidden=model.hidden_size)
    check_compatible(run, stats.header(), f"use priors {str(path)!r}")
    return stats


# --------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------


class PriorRecorder:
    """Feeds one sampling batch's features into :class:`PriorStats` as the sampler produces them.

    The cache engine reports every unit output (``observe``, its ``on_unit`` observer) and a forward
    hook on every block reports the block output; the recorder keeps, per (block, kind), the previous
    step's copy (for the adjacent-step statistics) and the batch's sketches so far (for ``gram``).
    Only the first ``n`` rows of a batch (the conditional half of the CFG batch) are recorded.
    """

    def __init__(self, stats: PriorStats) -> None:
        self.stats = stats
        self.reset(0)

    def reset(self, n: int) -> None:
        """Start a batch of ``n`` samples."""
        self.n, self.step = n, 0
        self.previous: dict[tuple[int, int], torch.Tensor] = {}
        self.history: dict[tuple[int, int], list[torch.Tensor]] = {}

    def observe(self, step: int, block: int, kind: int, value: torch.Tensor, computed: bool = True) -> None:
        """Record the features ``value (B, T, D)`` of ``kind`` (0 attention, 1 MLP, 2 block output) at ``step``."""
        self.step = step
        x = value[: self.n]
        key = (block, kind)
        self.previous[key] = self.stats.add(step, block, kind, x, self.previous.get(key) if step > 0 else None)
        if kind < 2:
            sketch = sketch_features(x)
            history = self.history.setdefault(key, [])
            self.stats.add_gram(step, block, kind, sketch, history)
            history.append(sketch)

    def block_hook(self, block: int):
        """A forward hook for ``model.blocks[block]`` recording its output at the current step."""
        return lambda module, inputs, output: self.observe(self.step, block, 2, output)

    def finish(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Count the batch's ``(class, seed)`` pairs in the statistics."""
        self.stats.count += len(pairs)
        self.stats.gram_count += len(pairs)
        self.stats.classes += [c for c, _ in pairs]
        self.stats.seeds += [s for _, s in pairs]


def extract_priors(
    model: DiT,
    model_name: str,
    classes: Sequence[int],
    seeds: Sequence[int] = (0,),
    steps: int = 20,
    cfg_scale: float = 4.0,
    batch_size: int = 16,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 300.0,
) -> PriorStats:
    """Un-cached sampling of every (class, seed) pair, accumulating :class:`PriorStats`.

    Each sample's noise is ``draw_noise(seed)`` for one image, so a sample does not depend
    on the batch it runs in: shards over classes merge to exactly one run.

    ``checkpoint``: a file where the statistics so far are saved (at most every ``checkpoint_seconds``,
    after a whole batch); a rerun with the same settings continues from it and ends with the same bytes
    as an uninterrupted run. The caller removes it once the result is saved.
    """
    bad = [c for c in classes if not 0 <= int(c) < model.num_classes]
    if bad:
        raise InvalidArgumentError(
            f"class id {bad[0]} is out of range for {model_name}; use 0..{model.num_classes - 1}"
        )
    if batch_size < 1:
        raise InvalidArgumentError(f"--batch-size must be >= 1 (got {batch_size})")
    pairs = [(int(c), int(s)) for s in seeds for c in classes]
    stats = PriorStats(model_name, steps, cfg_scale, model.depth, model.num_tokens, model.hidden_size)
    resume = {"pairs": pairs, "batch_size": batch_size, "done": 0}
    if checkpoint is not None and Path(checkpoint).is_file():
        stats, resume["done"] = _resume_priors(Path(checkpoint), stats, resume)
    device = next(model.parameters()).device
    recorder = PriorRecorder(stats)
    engine = CacheEngine(model, none_schedule(steps, model.depth))
    engine.on_unit = recorder.observe
    handles = [block.register_forward_hook(recorder.block_hook(i)) for i, block in enumerate(model.blocks)]
    try:
        batches = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
        saved = time.monotonic()
        for index in tqdm(
            range(resume["done"], len(batches)), desc=f"priors {model_name}", disable=not progress,
            initial=resume["done"], total=len(batches),
        ):  # fmt: skip
            batch = batches[index]
            noise = torch.cat([draw_noise(model, 1, seed, device) for _, seed in batch])
            recorder.reset(len(batch))
            labels = [c for c, _ in batch]
            generate(model, labels, steps=steps, cfg_scale=cfg_scale, forward=engine.forward, noise=noise)
            recorder.finish(batch)
            if checkpoint is not None and time.monotonic() - saved >= checkpoint_seconds and index + 1 < len(batches):
                stats.save(checkpoint, resume | {"done": index + 1})
                saved = time.monotonic()
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _resume_priors(path: Path, fresh: PriorStats, resume: dict) -> tuple[PriorStats, int]:
    """The statistics saved in a checkpoint and the number of batches they hold (one line if they do not fit)."""
    stats = PriorStats.load(path)
    with safe_open(str(path), "pt") as f:
        stored = json.loads((f.metadata() or {}).get("resume", "null"))
    if stored is None or {k: stored.get(k) for k in ("pairs", "batch_size")} != {
        "pairs": [list(p) for p in resume["pairs"]],
        "batch_size": resume["batch_size"],
    }:
        raise PriorsError(
            f"checkpoint {str(path)!r} is from an extraction with other classes, seeds or batch size; "
            "rerun with the same settings to resume, or delete it to start over"
        )
    check_compatible(fresh.header(), stats.header(), f"resume from {str(path)!r}")
    return stats, int(stored["done"])


# --------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb)) if na > 0 and nb > 0 else float("nan")


def step_similarity(stats: PriorStats, block: int, kind: int) -> np.ndarray:
    """Step x step cosine similarity ``(steps, steps)`` of the mean features of one block / kind."""
    feats = stats.mean[:, block, kind].reshape(stats.steps, -1)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    unit = feats / np.where(norms > 0, norms, 1)
    return unit @ unit.T


def gradient_consistency(stats: PriorStats) -> np.ndarray:
    """``cos(g_s, g_{s-1})`` with ``g_s = F_s - F_{s-1}`` on the mean features: ``(steps, depth, 3)``, NaN for s < 2."""
    mean = stats.mean
    out = np.full((stats.steps, stats.depth, len(KINDS)), np.nan)
    for s in range(2, stats.steps):
        for b in range(stats.depth):
            for k in range(len(KINDS)):
                out[s, b, k] = _cos(mean[s, b, k] - mean[s - 1, b, k], mean[s - 1, b, k] - mean[s - 2, b, k])
    return out


@dataclass
class Simulation:
    """GOC's queue replayed on the prior trajectories of the two units (see :func:`simulate_goc`).

    Attributes:
        reused: ``(steps, depth, 2)`` True where the schedule reuses the unit.
        error_plain: relative L2 error ``||F_s - used[s-1]|| / ||F_s||`` at reused units, NaN elsewhere
            (root mean square over samples relative to the root mean square of ``F_s`` for ``samples``).
        error_goc: the same for the GOC output ``used[s-1] + w (used[s-1] - used[s-2])`` (NaN when only
            one value is queued).
        corrected: ``(steps,)`` the correction decision used for the queue at each step.
    """

    reused: np.ndarray
    error_plain: np.ndarray
    error_goc: np.ndarray
    corrected: np.ndarray
    terms: dict = field(repr=False, default_factory=dict)
    weights: np.ndarray | None = field(repr=False, default=None)


def simulate_goc(
    stats: PriorStats,
    schedule: CacheSchedule,
    weight: float | np.ndarray = 1.2,
    correction_steps: Sequence[int] | None = None,
    decide: bool = False,
    unit_weights: tuple[float, float] = (1.0, 1.0),
    fit_step_weights: bool = False,
    source: str | None = None,
    coupling: str = "block",
) -> Simulation:
    """Replay GOC's queue on the prior trajectories of the attention / MLP units.

    Every value in the queue is a linear combination of the un-cached features ``F_t`` of
    the same sample, so the replay runs on coefficient vectors ``c`` (length = steps) and a
    squared error is ``c^T K c`` with ``K = stats.gram(source)``: with ``source="samples"``
    (default when the file has it) the mean per-sample squared error, with ``"mean"`` the error
    on the class-averaged mean trajectory (the paper's prior knowledge).

    ``weight``: a float, or an array ``(steps, depth, 2)``. With ``decide`` the correction
    at each reused step is chosen greedily, in step order, where it lowers the
    ``unit_weights``-weighted (e.g. MACs) sum of relative errors over the step's reused
    units given the queue so far; otherwise ``correction_steps`` (None = every reused step).
    ``coupling`` follows the compensator (:class:`~goc_utils.cache.goc.GOCConfig`): with ``"block"``
    (published) a reused unit is a correction candidate only when every unit of its block is reused
    at the step with two queued values; the others are reused plain (and queued). ``terms`` holds,
    per correction candidate (step, block, unit), the least-squares terms
    ``a = <F - P, P - Q> / ||F||^2`` and ``c = ||P - Q||^2 / ||F||^2`` used by :func:`calibrate_weight`.

    Example (two steps of one unit, then a reused step): with ``F_0 = (1, 0)``, ``F_1 = (1, 1)`` and
    ``F_2 = (1, 2)``, the queue at step 2 holds ``P = F_1`` and ``Q = F_0``; plain reuse errs by
    ``||F_2 - F_1|| / ||F_2|| = 1 / sqrt(5)``, GOC with w = 1 returns ``2 F_1 - F_0 = (1, 2) = F_2``
    exactly (error 0), and the least-squares terms are ``a = c = 1 / 5`` (so w* = 1). In coefficient
    space the queue values are ``P = e_1``, ``Q = e_0`` and the GOC output ``e_1 + w (e_1 - e_0)``.
    """
    schedule.check_fits(stats.steps, stats.depth)
    if coupling not in COUPLINGS:
        raise InvalidArgumentError(f"GOC coupling must be one of {', '.join(COUPLINGS)} (got {coupling!r})")
    source = source or ("samples" if stats.has_gram else "mean")
    gram = stats.gram(source)
    reused = ~schedule.mask
    steps, depth = stats.steps, stats.depth
    eye = np.eye(steps)
    w = np.broadcast_to(np.asarray(weight, dtype=np.float64), (steps, depth, 2)).copy()
    err_plain = np.full((steps, depth, 2), np.nan)
    err_goc = np.full((steps, depth, 2), np.nan)
    corrected = np.zeros(steps, dtype=bool)
    queue: dict[tuple[int, int], list[np.ndarray]] = {}
    terms: dict[tuple[int, int, int], tuple[float, float]] = {}
    uw = np.asarray(unit_weights, dtype=np.float64)
    wanted = None if correction_steps is None else {int(c) for c in correction_steps}
    for s in range(steps):
        candidates = {}
        for b in range(depth):
            block_ok = all(reused[s, b, u] and len(queue.get((b, u), ())) == 2 for u in range(2))
            for u in range(2):
                if not reused[s, b, u]:
                    continue
                k = gram[:, :, b, u]
                q = queue[(b, u)]
                norm2 = max(k[s, s], 1e-30)
                residual = eye[s] - q[-1]  # F_s - used[s-1]
                err_plain[s, b, u] = np.sqrt(max(residual @ k @ residual, 0.0) / norm2)
                if len(q) == 2 and (coupling == "unit" or block_ok):
                    diff = q[-1] - q[-2]
                    terms[(s, b, u)] = (float(residual @ k @ diff) / norm2, float(diff @ k @ diff) / norm2)
                    candidates[(b, u)] = (residual, diff, k, norm2)
        if fit_step_weights and candidates and (wanted is None or s in wanted):
            num = sum(uw[u] * terms[(s, b, u)][0] for (b, u) in candidates)
            den = sum(uw[u] * terms[(s, b, u)][1] for (b, u) in candidates)
            w[s] = num / den if den > 0 else 0.0
        for (b, u), (residual, diff, k, norm2) in list(candidates.items()):
            left = residual - w[s, b, u] * diff
            err_goc[s, b, u] = np.sqrt(max(left @ k @ left, 0.0) / norm2)
            candidates[(b, u)] = queue[(b, u)][-1] + w[s, b, u] * diff
        if candidates:
            if decide:
                gain = sum(uw[u] * (err_plain[s, b, u] - err_goc[s, b, u]) for (b, u) in candidates)
                corrected[s] = gain > 0
            else:
                corrected[s] = wanted is None or s in wanted
        for b in range(depth):
            for u in range(2):
                if reused[s, b, u]:
                    value = candidates[(b, u)] if corrected[s] and (b, u) in candidates else queue[(b, u)][-1]
                else:
                    value = eye[s]
                q = queue.setdefault((b, u), [])
                q.append(value)
                if len(q) > 2:
                    del q[0]
    return Simulation(reused, err_plain, err_goc, corrected, terms, w)


def weighted_error(sim: Simulation, unit_weights: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float]:
    """Total (plain, GOC-as-decided) error over reused units, weighted per unit kind."""
    uw = np.asarray(unit_weights)[None, None, :]
    plain = np.nansum(np.where(sim.reused, sim.error_plain, 0) * uw)
    used = np.where(sim.corrected[:, None, None] & ~np.isnan(sim.error_goc), sim.error_goc, sim.error_plain)
    return float(plain), float(np.nansum(np.where(sim.reused, used, 0) * uw))


def inflection_steps(
    stats: PriorStats,
    schedule: CacheSchedule,
    weight: float | np.ndarray = 1.2,
    unit_weights: tuple[float, float] = (1.0, 1.0),
    source: str | None = None,
    coupling: str = "block",
) -> tuple[list[int], list[int], Simulation]:
    """The inflection-aware rule: ``(correction steps, inflection steps, simulation)``.

    Replaying GOC on the prior trajectory in step order, a reused step is corrected where
    the correction lowers the MACs-weighted relative error of that step's correction
    candidates (the trajectory keeps its direction), and skipped otherwise: the skipped steps
    with correction candidates are the inflection steps. ``coupling``: see :func:`simulate_goc`.
    """
    sim = simulate_goc(
        stats, schedule, weight, decide=True, unit_weights=unit_weights, source=source, coupling=coupling
    )
    correctable = sorted({s for (s, _, _) in sim.terms})
    correct = [s for s in correctable if sim.corrected[s]]
    return correct, [s for s in correctable if not sim.corrected[s]], sim


def calibrate_weight(
    stats: PriorStats,
    schedule: CacheSchedule,
    correction_steps: Sequence[int] | None = None,
    granularity: str = "global",
    unit_weights: tuple[float, float] = (1.0, 1.0),
    initial: float = 1.0,
    iterations: int = 8,
    source: str | None = None,
    coupling: str = "block",
) -> float | np.ndarray:
    """Least-squares GOC weight on the prior trajectory.

    At a corrected unit with queue ``(P, Q)`` and target ``F`` the error
    ``||F - P - w (P - Q)||^2 / ||F||^2`` is quadratic in w, so the minimiser is
    ``w* = sum a / sum c`` (terms of :class:`Simulation`), summed over all corrected
    units (``global``), per step (``step``) or per unit (``unit``), weighted by
    ``unit_weights``. Because the queue holds corrected values, per-step weights are fitted
    sequentially in step order (exact), and global / per-unit weights by ``iterations``
    fixed-point rounds from ``initial`` on the queue the fitted weight produces.
    Returns a float (global) or an array ``(steps, depth, 2)`` (step / unit; 0 where nothing is corrected).
    ``source`` and ``coupling``: the trajectories replayed and which units GOC corrects (see :func:`simulate_goc`).
    """
    if granularity not in GRANULARITIES:
        raise InvalidArgumentError(f"granularity must be global, step or unit (got {granularity!r})")
    replay = {"source": source, "coupling": coupling}
    if granularity == "step":
        sim = simulate_goc(
            stats, schedule, 0.0, correction_steps, unit_weights=unit_weights, fit_step_weights=True, **replay
        )
        return np.where(sim.corrected[:, None, None], sim.weights, 0.0)
    weight: float | np.ndarray = initial
    for _ in range(iterations):
        sim = simulate_goc(stats, schedule, weight, correction_steps, **replay)
        steps_used = {s for s in range(stats.steps) if sim.corrected[s]}
        num = np.zeros((stats.steps, stats.depth, 2))
        den = np.zeros((stats.steps, stats.depth, 2))
        for (s, b, u), (a, c) in sim.terms.items():
            if s in steps_used:
                num[s, b, u] += unit_weights[u] * a
                den[s, b, u] += unit_weights[u] * c
        if granularity == "global":
            weight = float(num.sum() / den.sum()) if den.sum() > 0 else initial
        else:  # one w per unit, shared by its corrected steps
            per_unit = np.divide(num.sum(0), den.sum(0), out=np.zeros(num.shape[1:]), where=den.sum(0) > 0)
            weight = np.broadcast_to(per_unit, num.shape).copy()
    return weight


GRANULARITIES = ("global", "step", "unit")


def unit_macs_weights(stats: PriorStats) -> tuple[float, float]:
    """``(attention, MLP)`` branch MACs of the priors' model, normalised to the attention branch."""
    attention, mlp = branch_macs(stats.tokens, stats.hidden)
    return 1.0, mlp / attention


@dataclass
class AutoGOC:
    """What :func:`auto_goc` resolved, with the replay's predicted errors.

    Attributes:
        steps: the correction steps (inflection-aware, or the ones given).
        inflections: reused steps with correction candidates where the correction is skipped.
        weight: w (a float, or an array ``(steps, depth, 2)`` for ``step`` / ``unit`` granularity).
        probe: the w used to locate the inflections.
        error_plain, error_auto, error_paper: predicted error (MACs-weighted relative L2, summed over
            reused units) of plain reuse, of GOC with ``steps`` / ``weight``, and of GOC with the
            schedule's published steps and w (NaN when the schedule has no published steps).
        source: the trajectories replayed (``samples`` or ``mean``); coupling: as the compensator.
        probe_simulation: the replay that located the inflections (what the priors figure plots).
    """

    steps: list[int]
    inflections: list[int]
    weight: float | np.ndarray
    probe: float | np.ndarray
    error_plain: float
    error_auto: float
    error_paper: float
    source: str
    coupling: str
    probe_simulation: Simulation = field(repr=False)


def auto_goc(
    stats: PriorStats,
    schedule: CacheSchedule,
    steps: str | Sequence[int] | None = "auto",
    weight: str | float | np.ndarray = "auto",
    coupling: str = "block",
    granularity: str = "global",
    source: str | None = None,
) -> AutoGOC:
    """Automatic GOC from priors: inflection-aware correction steps and the least-squares weight.

    The one place where GOC's ``"auto"`` options are resolved (method strings ``+goc:auto``,
    ``goc inflections``, the study's tables and figures):

    1. the probe weight is ``weight`` when it is a number, else the global least-squares w over
       every reused step;
    2. ``steps="auto"``: replaying GOC with the probe in step order, a step is corrected where the
       correction lowers the predicted error (:func:`inflection_steps`); the skipped ones are the
       inflections. Otherwise the given steps (None = every reused step) are kept;
    3. ``weight="auto"``: the least-squares w over the chosen steps, at ``granularity``;
    4. the predicted errors of plain reuse, of the result, and of the schedule's published steps and w.

    Errors are MACs-weighted (an MLP branch counts by its MACs relative to an attention branch).

    Example:
        >>> stats = PriorStats.load("data/priors/tiny-digits_ddim20_cfg4.safetensors")
        >>> from goc_utils.cache import build_schedule
        >>> auto = auto_goc(stats, build_schedule("fora-50", 20, stats.depth))
        >>> auto.error_auto < auto.error_plain
        True
    """
    uw = unit_macs_weights(stats)
    source = source or ("samples" if stats.has_gram else "mean")
    replay = {"source": source, "coupling": coupling}
    if isinstance(weight, str):
        if weight != "auto":
            raise InvalidArgumentError(f"GOC weight must be a number or 'auto' (got {weight!r})")
        probe = calibrate_weight(stats, schedule, None, "global", uw, **replay)
    else:
        probe = weight
    if isinstance(steps, str):
        if steps != "auto":
            raise InvalidArgumentError(f"GOC correction steps must be a list of steps or 'auto' (got {steps!r})")
        chosen, inflections, probe_sim = inflection_steps(stats, schedule, probe, uw, **replay)
    else:
        chosen = None if steps is None else [int(s) for s in steps]
        inflections = []
        probe_sim = simulate_goc(stats, schedule, probe, chosen, **replay)
    final = calibrate_weight(stats, schedule, chosen, granularity, uw, **replay) if isinstance(weight, str) else probe
    plain, auto = weighted_error(simulate_goc(stats, schedule, final, chosen, **replay), uw)
    paper = float("nan")
    if schedule.reference_correction_steps is not None:
        sim = simulate_goc(stats, schedule, schedule.reference_weight, schedule.reference_correction_steps, **replay)
        paper = weighted_error(sim, uw)[1]
    steps_out = list(chosen) if chosen is not None else sorted({s for (s, _, _) in probe_sim.terms})
    return AutoGOC(steps_out, inflections, final, probe, plain, auto, paper, source, coupling, probe_sim)
