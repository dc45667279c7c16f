"""Prior knowledge for GOC: streaming block-feature statistics of un-cached sampling, and their file.

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

The statistics are gathered by :func:`goc_utils.priors.extraction.extract_priors`; this module holds them, their
file (every header field and tensor checked when read, before anything is allocated) and merging of shards.

**Analysis** of a file: step x step similarity matrices of the mean features and the direction
consistency of their gradients (below); the GOC replay is :mod:`goc_utils.priors.replay`, the
inflection steps and least-squares w :mod:`goc_utils.priors.auto`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from goc_utils import paths
from goc_utils.cache.schedule import MAX_STEPS, CacheSchedule
from goc_utils.errors import GocError, InvalidArgumentError, first_line, shorten
from goc_utils.files import atomic_save_safetensors, check_memory, input_file
from goc_utils.model.dit import DiT
from goc_utils.priors.auto import AutoGOC, auto_goc

KINDS = ("attention", "mlp", "block")
"""Feature kinds recorded per block: the two cacheable units and the block output."""

PRIORS_FORMAT = "goc-priors/1"

SAFETENSORS_HEADER_LIMIT = 100_000_000
"""Bytes a safetensors header may hold (the format's own limit); a priors file's header lists every sample's class
and seed, which bounds the samples one file can hold."""

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
        seen = set(zip(self.classes, self.seeds, strict=True))
        repeated = [pair for pair in zip(other.classes, other.seeds, strict=True) if pair in seen]
        if repeated:
            raise PriorsError(
                f"cannot merge: {len(repeated)} of the {other.count} samples to add are already counted (e.g. class "
                f"{repeated[0][0]}, seed {repeated[0][1]}); merge shards of disjoint --classes or seeds"
            )
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
    def load(cls, path: str | Path, fix: str | None = None, what: str = "priors file") -> PriorStats:
        """Read a priors file: one-line :class:`PriorsError` when it is not a regular file, not a goc priors file,
        or its header and tensors disagree (see :func:`read_priors_file`). ``fix`` replaces the advice."""
        return read_priors_file(path, what, fix)[0]


RECREATE = "recreate it with `goc priors`"
MISSING = "create it with `goc priors --out FILE` or pass another priors file"
MAX_SEED = 2**63 - 1


def read_priors_file(path: str | Path, what: str = "priors file", fix: str | None = None) -> tuple[PriorStats, dict]:
    """``(statistics, the file's metadata)``, every part checked before anything big is allocated.

    The one check of a priors file (what ``goc inflections``, ``goc priors --merge``, an ``OUT.partial`` resume and
    ``goc:auto`` read): a regular file (:func:`input_file`), a safetensors file whose ``goc_priors`` header is a JSON
    object with every field of its type and range (``count`` samples = ``len(classes)`` = ``len(seeds)``), exactly
    the tensors :data:`STAT_NAMES` of the shapes the header implies, that fit in memory, with finite values.
    """
    path = input_file(path, what, fix or MISSING, error=PriorsError)
    fix = fix or RECREATE

    def bad(reason: str) -> PriorsError:
        return PriorsError(f"{what} {shorten(path)!r} {reason}; {fix}")

    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            found = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - truncated / foreign file
        raise bad(f"is corrupt or not a goc priors file ({first_line(exc, 100)})") from None
    header = _check_header(metadata, bad)
    expected = _tensor_shapes(header)
    if header["gram_count"] == 0 and "sum_gram" not in found:
        del expected["sum_gram"]  # files from before ``gram`` was recorded
    for name, (shape, dtype) in found.items():
        if name not in expected:
            raise bad(f"holds a tensor {shorten(name)!r} that no priors file has")
        if shape != expected[name]:
            raise bad(
                f"has tensor {name} of shape {shape}, but its header (steps {header['steps']}, depth "
                f"{header['depth']}, tokens {header['tokens']}, hidden {header['hidden']}) needs {expected[name]}"
            )
        if dtype not in ("F16", "F32", "F64"):
            raise bad(f"has tensor {name} of dtype {dtype}; priors are float64 sums")
    missing = [name for name in expected if name not in found]
    if missing:
        raise bad(f"lacks the tensor(s) {', '.join(missing)}")
    nbytes = sum(8 * int(np.prod(shape)) for shape in expected.values())
    check_memory(nbytes, f"{what} {shorten(path)!r}", "use a machine with more memory")
    stats = PriorStats(*(header[k] for k in ("model", "steps", "cfg_scale", "depth", "tokens", "hidden")),
                       header["classes"], header["seeds"])  # fmt: skip
    stats.count, stats.gram_count = header["count"], header["gram_count"]
    with safe_open(str(path), "pt") as f:
        for name in expected:
            value = f.get_tensor(name).numpy().astype(np.float64, copy=False)
            if not np.isfinite(value).all():
                raise bad(f"holds NaN or infinite values in {name}")
            setattr(stats, name, value)
    return stats, metadata


def is_integer(value: object) -> bool:
    """An ``int`` that is not a ``bool`` (JSON ``true`` is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_header(metadata: dict, bad) -> dict:
    """The ``goc_priors`` header as a dict of checked fields (``gram_count`` defaults to 0), else ``bad(reason)``."""
    if "goc_priors" not in metadata:
        raise bad("has no goc priors header (not a goc priors file)")
    try:
        header = json.loads(metadata["goc_priors"])
    except ValueError as exc:
        raise bad(f"has a header that is not JSON ({first_line(exc, 80)})") from None
    if not isinstance(header, dict):
        raise bad(f"has a header that is a JSON {type(header).__name__}, not an object")
    if header.get("format") != PRIORS_FORMAT:
        raise bad(f"has format {shorten(header.get('format'))!r}, expected {PRIORS_FORMAT}")
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise bad(f"is incomplete: its header lacks {', '.join(missing)}")
    header.setdefault("gram_count", 0)
    count = header["count"]
    rules = {
        "model": (lambda v: isinstance(v, str) and v != "", "a preset name"),
        "steps": (lambda v: is_integer(v) and 1 <= v <= MAX_STEPS, f"an integer in 1..{MAX_STEPS}"),
        "cfg_scale": (
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v), "a finite number"
        ),
        "depth": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
        "tokens": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
        "hidden": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
        "count": (lambda v: is_integer(v) and v >= 1, "an integer >= 1 (the samples it holds)"),
        "gram_count": (
            lambda v: is_integer(v) and 0 <= v <= (count if is_integer(count) else 0),
            "an integer in 0..count",
        ),
        "classes": (
            lambda v: isinstance(v, list) and len(v) == count and all(is_integer(c) and c >= 0 for c in v),
            f"a list of {shorten(count)} class ids >= 0 (one per sample)",
        ),
        "seeds": (
            lambda v: isinstance(v, list) and len(v) == count and all(is_integer(c) and 0 <= c <= MAX_SEED for c in v),
            f"a list of {shorten(count)} seeds in 0..2**63-1 (one per sample)",
        ),
    }
    for key, (valid, rule) in rules.items():
        if not valid(header[key]):
            raise bad(f"has header field {key} = {shorten(json.dumps(header[key]))}, which must be {rule}")
    return header


def _tensor_shapes(header: dict) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a priors file with this (checked) header."""
    steps, depth = header["steps"], header["depth"]
    scalar = (steps, depth, len(KINDS))
    shapes = {name: scalar for name in STAT_NAMES}
    shapes["sum_feature"] = scalar + (header["tokens"], header["hidden"])
    shapes["sum_gram"] = (steps, steps, depth, 2)
    return shapes


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
    check_compatible(run, stats.header(), f"use priors {shorten(path)!r}")
    return stats


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
