"""TCC, Trajectory-Consistent Calibration (arXiv 2605.24870): a calibrated map for reused units.

Where GOC extrapolates a reused unit from its own history, TCC carries the stale output ``B`` (the
raw branch output, before the gate, that the host schedule reuses) onto the fresh one with a
similarity transform fitted offline, per target step and unit, from paired un-cached (A) and cached
(B) runs of the same noise (the *pack*, :class:`TCCPack`)::

    corr = mu_a + s * ((B - mu_b) @ R)        (per token; R orthogonal D x D, s a scalar)
    out  = B + alpha * (corr - B)

Only reused units at the pack's target steps are corrected (the published DDIM-20 window: steps
1, 3, 5, 7, i.e. its reverse steps 18, 16, 14, 12), every block, both branches; both halves of the
classifier-free-guidance batch get the same map. The corrected output replaces the unit's stored
value (a schedule that reuses it again reuses the corrected one, as the published code does).

**The fit** (:class:`SimilarityStats`, :func:`fit_similarity`): points ``a_i``, ``b_i`` in R^D, their
means ``mu_a``, ``mu_b``, ``M = (B - mu_b)^T (A - mu_a) = U S V^T``, ``R = U V^T``,
``s = <A_c, B_c R> / |B_c R|^2`` (variants ``scale_shift``: R = I; ``shift_only``: R = I, s = 1).
The published points (``pooling="class"``) are one mean per class (over its samples and tokens).

**Rank caveat.** With C class means, ``M`` has rank at most C - 1. When the width D exceeds that
(every tiny tier: 10 classes, D = 128; DiT-XL/2: 1,000 classes, D = 1,152), the singular vectors of
the zero singular values are whatever the SVD returns, and so is ``R`` on that null space: a stale
output component outside the span of the class means is rotated arbitrarily. ``pooling="sample"``
(one point per sample: its token mean, as the published PixArt / ToCa collector fits) and
``pooling="token"`` (every token a point, ours) give many more points than D, so ``M`` has full rank
and ``R`` is determined by the data.
``svd="gesvd"`` fits with another LAPACK driver, to measure how much the arbitrary part matters.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.linalg
import torch
from safetensors import safe_open

from goc_utils import paths
from goc_utils.cache.compensator import Compensator, UnitKey, register_compensator
from goc_utils.cache.run import MethodContext, RunShape
from goc_utils.errors import GocError, InvalidArgumentError, first_line, shorten
from goc_utils.files import atomic_save_safetensors, input_file, state_dict_sha256

TCC_FORMAT = "goc-tcc-pack/1"
VARIANTS = ("full", "scale_shift", "shift_only")
"""Map families: similarity (rotation + scale + shift, published main), scale + shift, shift only."""
POOLINGS = ("class", "sample", "token")
"""Fit points: ``class``: one mean per class over its samples and tokens (the DiT scripts' collector in its default
``tokenpool`` mode); ``sample``: one token mean per sample (the PixArt / ToCa collector, ``TokenPoolCollector``: one
token-pooled point per prompt); ``token``: every token a point (ours). ``sample`` and ``token`` reach full rank once
the points outnumber the width (see the module docstring). The DiT collector's ``classpool`` (one point per class and
token position) and ``mixed`` modes are not offered."""
SVD_DRIVERS = ("gesdd", "gesvd")
"""LAPACK drivers for the Procrustes SVD: ``gesdd`` (torch's default), ``gesvd`` (scipy)."""
PUBLISHED_WINDOW = (1, 7)
"""Steps (ours, s = 0 noisiest) of the published DDIM-20 window: reverse steps 18..12."""
PUBLISHED_ALPHA = 1.75
"""The correction strength of the published DiT FORA / L2C scripts."""


PACK_FLOATS = ("R", "s", "mu_a", "mu_b")
"""A pack's float tensors (the maps); ``rank`` and ``host_mask`` hold integers."""


class TCCPackError(GocError):
    """A TCC pack that is missing, corrupt, or fitted for another model / steps / cfg / host."""


@dataclass
class TCCPack:
    """The fitted maps of one host schedule: per target step, block and unit ``(R, s, mu_a, mu_b)``.

    Attributes:
        model: preset name; steps: sampling steps N; cfg_scale: guidance scale of the fit.
        host: the host schedule's method string (``fora-50``, ``l2c``); host_mask: its ``(steps, depth, 2)``
            recompute mask (a run must match it exactly).
        targets: the corrected steps, ascending. R ``(K, depth, 2, D, D)``, s ``(K, depth, 2)``,
            mu_a / mu_b ``(K, depth, 2, D)`` float32, K = len(targets); rank ``(K, depth, 2)``: numerical rank of M.
        variant, pooling, svd: how it was fitted; fit_alpha: the alpha of the trajectory-consistent replay;
            samples / classes / seed: the fit's samples; alpha_choice: how fit_alpha was chosen on held-out noise
            (``holdout_seed``, ``holdout_samples``, ``psnr_db`` per alpha, the host's ``host_psnr_db``), or empty.
    """

    model: str
    steps: int
    cfg_scale: float
    host: str
    host_mask: np.ndarray
    targets: list[int]
    R: torch.Tensor
    s: torch.Tensor
    mu_a: torch.Tensor
    mu_b: torch.Tensor
    rank: torch.Tensor
    variant: str = "full"
    pooling: str = "class"
    svd: str = "gesdd"
    fit_alpha: float = PUBLISHED_ALPHA
    samples: int = 0
    classes: list[int] = field(default_factory=list)
    seed: int = 0
    alpha_choice: dict = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return int(self.host_mask.shape[1])

    @property
    def hidden(self) -> int:
        return int(self.mu_a.shape[-1])

    def trace_ratio(self) -> torch.Tensor:
        """``trace(R) / D`` of every map ``(K, depth, 2)``: 1 for the identity; near 0 where R is mostly the SVD's
        free choice (a rank-deficient fit)."""
        return torch.diagonal(self.R, dim1=-2, dim2=-1).sum(-1) / self.hidden

    def index(self, step: int) -> int | None:
        """Position of ``step`` in :attr:`targets`, or None when the pack does not correct it."""
        return self.targets.index(step) if step in self.targets else None

    def digest(self) -> str:
        """sha256 of the pack's contents (header and tensors): what a run that used it records
        (:func:`~goc_utils.evaluation.eval.input_digests`), so that a pack refitted in place is noticed."""
        tensors = {"R": self.R, "s": self.s, "mu_a": self.mu_a, "mu_b": self.mu_b, "rank": self.rank,
                   "host_mask": torch.from_numpy(np.ascontiguousarray(self.host_mask))}  # fmt: skip
        header = json.dumps(self.header(), sort_keys=True, default=str)
        return hashlib.sha256(f"{header}\n{state_dict_sha256(tensors)}".encode()).hexdigest()

    def header(self) -> dict:
        return {
            "format": TCC_FORMAT,
            "model": self.model,
            "steps": self.steps,
            "cfg_scale": self.cfg_scale,
            "host": self.host,
            "targets": list(self.targets),
            "depth": self.depth,
            "hidden": self.hidden,
            "variant": self.variant,
            "pooling": self.pooling,
            "svd": self.svd,
            "fit_alpha": self.fit_alpha,
            "samples": self.samples,
            "classes": list(self.classes),
            "seed": self.seed,
        } | ({"alpha_choice": self.alpha_choice} if self.alpha_choice else {})

    def save(self, path: str | Path) -> Path:
        """One safetensors file: the float32 maps, the host mask and a JSON header (written atomically)."""
        tensors = {
            "R": self.R, "s": self.s, "mu_a": self.mu_a, "mu_b": self.mu_b, "rank": self.rank,
            "host_mask": torch.from_numpy(self.host_mask.astype(np.uint8)),
        }  # fmt: skip
        return atomic_save_safetensors(tensors, Path(path), {"goc_tcc": json.dumps(self.header())})

    @classmethod
    def load(cls, path: str | Path) -> TCCPack:
        """Read a pack: one-line :class:`TCCPackError` when it is not a regular file, not a TCC pack, a header field
        has another type or range than :meth:`_check_header` allows, or its tensors' shapes disagree with the
        header (K = len(targets), depth, width)."""
        path = input_file(path, "TCC pack", f"fit one with `goc tcc-pack` ({FIT_HINT})", error=TCCPackError)

        def bad(reason: str) -> TCCPackError:
            return TCCPackError(f"TCC pack {shorten(path)!r} {reason}; refit it with `goc tcc-pack`")

        try:
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            header = json.loads(metadata["goc_tcc"])
        except Exception as exc:  # noqa: BLE001 - truncated / foreign file
            raise bad(f"is corrupt or not a TCC pack ({first_line(exc, 100)})") from None
        if not isinstance(header, dict) or header.get("format") != TCC_FORMAT:
            raise bad(f"has no {TCC_FORMAT} header")
        cls._check_header(header, bad)
        k, depth, hidden = len(header["targets"]), header["depth"], header["hidden"]
        expected = {
            "R": (k, depth, 2, hidden, hidden), "s": (k, depth, 2), "mu_a": (k, depth, 2, hidden),
            "mu_b": (k, depth, 2, hidden), "rank": (k, depth, 2), "host_mask": (header["steps"], depth, 2),
        }  # fmt: skip
        missing = [name for name in expected if name not in tensors]
        if missing:
            raise bad(f"lacks the tensor(s) {', '.join(missing)}")
        found = {name: tuple(tensors[name].shape) for name in expected}
        for name, shape in expected.items():
            if found[name] != shape:
                raise bad(f"has tensor {name} of shape {found[name]}, but its header needs {shape}")
        for name in expected:
            if tensors[name].is_floating_point() != (name in PACK_FLOATS):
                kind = "floats" if name in PACK_FLOATS else "integers"
                raise bad(f"has tensor {name} of dtype {tensors[name].dtype}, but a pack's {name} holds {kind}")
        if not all(torch.isfinite(tensors[n]).all() for n in PACK_FLOATS):
            raise bad("holds NaN or infinite values")
        if not ((tensors["host_mask"] == 0) | (tensors["host_mask"] == 1)).all():
            raise bad("has a host_mask with values other than 0 (reuse) and 1 (recompute)")
        if not ((tensors["rank"] >= 0) & (tensors["rank"] <= hidden)).all():
            raise bad(f"has a rank outside 0..{hidden} (its width)")
        return cls(
            header["model"], header["steps"], header["cfg_scale"], header["host"],
            tensors["host_mask"].numpy().astype(bool), [int(t) for t in header["targets"]],
            tensors["R"].float(), tensors["s"].float(), tensors["mu_a"].float(), tensors["mu_b"].float(),
            tensors["rank"], header["variant"], header["pooling"], header["svd"], header["fit_alpha"],
            header["samples"], header["classes"], header["seed"], header.get("alpha_choice") or {},
        )  # fmt: skip

    @staticmethod
    def _check_header(header: dict, bad) -> None:
        """Every field of a pack's header of its type and range (the one check, before its tensors are compared
        with it), else ``bad(reason)`` naming the first field that is missing or wrong."""

        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value: object) -> bool:  # finite, not a bool, fits a float
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            try:
                return bool(np.isfinite(float(value)))
            except OverflowError:
                return False

        steps = header.get("steps")
        rules = {
            "model": (lambda v: isinstance(v, str) and v != "", "a preset name"),
            "steps": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
            "cfg_scale": (lambda v: is_number(v) and v >= 0, "a finite number >= 0"),
            "host": (lambda v: isinstance(v, str) and v != "", "a host schedule's method string"),
            "targets": (
                lambda v: isinstance(v, list) and len(v) >= 1 and all(is_int(t) and 0 <= t < steps for t in v)
                and v == sorted(set(v)),
                f"a non-empty ascending list of distinct steps in 0..{shorten(steps, 20)}-1",
            ),
            "depth": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
            "hidden": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
            "variant": (lambda v: v in VARIANTS, f"one of {', '.join(VARIANTS)}"),
            "pooling": (lambda v: v in POOLINGS, f"one of {', '.join(POOLINGS)}"),
            "svd": (lambda v: v in SVD_DRIVERS, f"one of {', '.join(SVD_DRIVERS)}"),
            "fit_alpha": (is_number, "a finite number"),
            "samples": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
            "classes": (lambda v: isinstance(v, list) and all(is_int(c) and c >= 0 for c in v), "a list of class ids"),
            "seed": (lambda v: is_int(v) and 0 <= v < 2**63, "a seed in 0..2**63-1"),
        }  # fmt: skip
        missing = [key for key in rules if key not in header]
        if missing:
            raise bad(f"is incomplete: its header lacks {', '.join(missing)}")
        rules["alpha_choice"] = (  # optional: how fit_alpha was chosen on held-out noise
            lambda v: isinstance(v, dict) and (not v or (
                is_int(v.get("holdout_seed")) and is_int(v.get("holdout_samples"))
                and is_number(v.get("host_psnr_db")) and isinstance(v.get("psnr_db"), dict)
                and all(isinstance(a, str) and is_number(x) for a, x in v["psnr_db"].items()))),
            "an object of holdout_seed, holdout_samples, host_psnr_db and psnr_db (alpha -> dB)",
        )  # fmt: skip
        for key, (valid, rule) in rules.items():
            if key in header and not valid(header[key]):
                raise bad(f"has header field {key} = {shorten(json.dumps(header[key]), 60)}, which must be {rule}")

    def check_run(self, mask: np.ndarray, run: RunShape, path: object = "pack", model: str | None = None,
                  cfg_scale: float | None = None, pooling: str | None = None) -> None:  # fmt: skip
        """One line when this pack does not fit a run (``mask``: its host's recompute mask): another model, step
        count, cfg, width, host schedule or pooling (None: not checked)."""
        steps, depth, hidden = run.steps, run.depth, run.hidden
        fix = f"fit one for this run with `goc tcc-pack` ({FIT_HINT})"
        where = f"TCC pack {shorten(path)!r}"
        if pooling is not None and pooling != self.pooling:
            raise TCCPackError(f"{where} was fitted with pooling {self.pooling!r}, not {pooling!r}; {fix}")
        if model is not None and model != self.model:
            raise TCCPackError(f"{where} was fitted for model {self.model!r}, not {model!r}; {fix}")
        if steps != self.steps:
            raise TCCPackError(f"{where} was fitted for {self.steps} steps, not {steps}; {fix}")
        if cfg_scale is not None and float(cfg_scale) != float(self.cfg_scale):
            raise TCCPackError(f"{where} was fitted at cfg {self.cfg_scale:g}, not {cfg_scale:g}; {fix}")
        if depth != self.depth or (hidden is not None and hidden != self.hidden):
            raise TCCPackError(
                f"{where} was fitted for depth {self.depth} and width {self.hidden}, not {depth} and {hidden}; {fix}"
            )
        if mask.shape != self.host_mask.shape or not np.array_equal(mask, self.host_mask):
            raise TCCPackError(
                f"{where} was fitted for host {self.host!r}, which reuses other units than this run; {fix}"
            )


FIT_HINT = "--model M --host fora-50 --steps N --cfg-scale C"


def default_pack_path(model: str, steps: int, cfg_scale: float, host: str, pooling: str = "class") -> Path:
    """``data/tcc/<model>_ddim<steps>_cfg<cfg>_<host>[_<pooling>].safetensors``: where a run looks for its pack
    (no suffix for the published class pooling)."""
    slug = model.replace("/", "-")
    suffix = "" if pooling == "class" else f"_{pooling}"
    return paths.DATA_DIR / "tcc" / f"{slug}_ddim{steps}_cfg{cfg_scale:g}_{host}{suffix}.safetensors"


def _span(low: float, high: float, spec: str) -> str:
    """``"9"`` when ``low == high``, else ``"0.042 to 0.098"``."""
    return format(low, spec) if format(low, spec) == format(high, spec) else f"{low:{spec}} to {high:{spec}}"


def pack_summary(pack: TCCPack, name: str) -> dict[str, object]:
    """One row of the committed packs' table (``goc tcc-packs``): what was fitted, the rank of its maps, how far R is
    from the identity (``trace(R) / D``, min-max over the maps) and how its alpha was chosen."""
    ranks, traces = pack.rank.flatten(), pack.trace_ratio().flatten()
    choice = pack.alpha_choice
    grid = choice.get("psnr_db", {})
    return {
        "pack": name, "host": pack.host, "cfg": f"{pack.cfg_scale:g}", "pooling": pack.pooling,
        "samples": pack.samples, "width": pack.hidden, "rank of M": _span(int(ranks.min()), int(ranks.max()), "d"),
        "trace(R)/D": _span(float(traces.min()), float(traces.max()), ".3f"), "alpha": f"{pack.fit_alpha:g}",
        "held-out PSNR dB by alpha": " / ".join(f"{a}: {v:.2f}" for a, v in grid.items()),
        "held-out PSNR dB of the host": "" if not choice else f"{choice['host_psnr_db']:.2f}",
    }  # fmt: skip


# --------------------------------------------------------------------------------------
# The fit
# --------------------------------------------------------------------------------------


class SimilarityStats:
    """Streaming sums of paired points ``a``, ``b`` of one (step, block, unit), in float64.

    ``pooling="class"`` keeps per-class sums (C x D each) and fits on the class means;
    ``"sample"`` / ``"token"`` keep the moments ``n``, ``sum a``, ``sum b``, ``sum b^T a`` (D x D) and
    ``sum |b|^2``, so memory does not grow with the number of samples.
    """

    def __init__(self, hidden: int, pooling: str = "class", classes: int = 0) -> None:
        if pooling not in POOLINGS:
            raise InvalidArgumentError(f"TCC pooling must be one of {', '.join(POOLINGS)} (got {pooling!r})")
        self.pooling, self.hidden = pooling, hidden
        if pooling == "class":
            self.class_a = np.zeros((classes, hidden))
            self.class_b = np.zeros((classes, hidden))
            self.class_n = np.zeros(classes)
        else:
            self.n, self.sum_a, self.sum_b = 0, np.zeros(hidden), np.zeros(hidden)
            self.cross, self.sq_b = np.zeros((hidden, hidden)), 0.0

    def add(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``a`` (un-cached) and ``b`` (cached) ``(N, T, D)`` of the same noise, ``labels (N,)``."""
        a64, b64 = a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64)
        if self.pooling == "class":
            idx = labels.to("cpu").long()
            tokens = a64.shape[1]
            np.add.at(self.class_a, idx.numpy(), a64.sum(1).numpy())
            np.add.at(self.class_b, idx.numpy(), b64.sum(1).numpy())
            np.add.at(self.class_n, idx.numpy(), tokens)
            return
        pa, pb = (a64.mean(1), b64.mean(1)) if self.pooling == "sample" else (a64.flatten(0, 1), b64.flatten(0, 1))
        self.n += pa.shape[0]
        self.sum_a += pa.sum(0).numpy()
        self.sum_b += pb.sum(0).numpy()
        self.cross += (pb.T @ pa).numpy()
        self.sq_b += float((pb * pb).sum())

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """``(mu_a, mu_b, M = B_c^T A_c, |B_c|^2)`` of the points."""
        if self.pooling == "class":
            seen = self.class_n > 0
            if not seen.any():
                raise InvalidArgumentError("a TCC fit needs at least one sample")
            pa = self.class_a[seen] / self.class_n[seen, None]
            pb = self.class_b[seen] / self.class_n[seen, None]
            mu_a, mu_b = pa.mean(0), pb.mean(0)
            bc = pb - mu_b
            return mu_a, mu_b, bc.T @ (pa - mu_a), float((bc * bc).sum())
        if self.n == 0:
            raise InvalidArgumentError("a TCC fit needs at least one sample")
        mu_a, mu_b = self.sum_a / self.n, self.sum_b / self.n
        cross = self.cross - self.n * np.outer(mu_b, mu_a)
        return mu_a, mu_b, cross, self.sq_b - self.n * float(mu_b @ mu_b)


def orthogonal_procrustes(m: np.ndarray, svd: str = "gesdd") -> tuple[np.ndarray, int]:
    """``(R = U V^T, numerical rank of M)`` for ``M = U S V^T`` with the given LAPACK driver.

    R maximises ``trace(R^T M)`` over orthogonal matrices; on the null space of M any orthogonal
    completion does, and the driver decides which one comes back.
    """
    if svd not in SVD_DRIVERS:
        raise InvalidArgumentError(f"TCC svd driver must be one of {', '.join(SVD_DRIVERS)} (got {svd!r})")
    u, sv, vh = scipy.linalg.svd(m, full_matrices=False, lapack_driver=svd)
    tol = sv.max(initial=0.0) * max(m.shape) * np.finfo(np.float64).eps
    return u @ vh, int((sv > tol).sum())


def fit_similarity(stats: SimilarityStats, variant: str = "full", svd: str = "gesdd") -> dict[str, np.ndarray]:
    """The map of one unit: ``R (D, D)``, ``s``, ``mu_a``, ``mu_b`` (D,) and ``rank`` (of M) from its statistics.

    ``s = <A_c, B_c R> / (|B_c R|^2 + 1e-12) = trace(R^T M) / (|B_c|^2 + 1e-12)`` (R orthogonal).
    """
    if variant not in VARIANTS:
        raise InvalidArgumentError(f"TCC variant must be one of {', '.join(VARIANTS)} (got {variant!r})")
    mu_a, mu_b, m, sq_b = stats.moments()
    eye = np.eye(len(mu_a))
    if variant == "full":
        r, rank = orthogonal_procrustes(m, svd)
    else:
        r, rank = eye, int(np.linalg.matrix_rank(m)) if m.any() else 0
    s = 1.0 if variant == "shift_only" else float((r * m).sum() / (sq_b + 1e-12))
    return {"R": r, "s": np.float64(s), "mu_a": mu_a, "mu_b": mu_b, "rank": np.int64(rank)}


# --------------------------------------------------------------------------------------
# The compensator
# --------------------------------------------------------------------------------------


@dataclass
class TCCConfig:
    """Options of the TCC compensator.

    Attributes:
        alpha: correction strength: ``out = B + alpha * (corr - B)``; 1 is the fitted map itself, and ``alpha <= 0``
            corrects nothing (the host's plain reuse), as the published sampler treats it. Default None: the alpha
            the pack was fitted with (its trajectory-consistent replay); another positive alpha is refused unless
            ``any_alpha`` is set. The published DiT FORA / L2C scripts use 1.75.
        any_alpha: use ``alpha`` although the pack was fitted at another one (method strings: ``tcc:any_alpha``).
            Default False.
        pack: the fitted maps: a :class:`TCCPack`, a pack file (method strings: ``tcc:pack=FILE``), or None: the
            run's default pack for its model, steps, cfg and host (``data/tcc/...``, found when the method is
            resolved: :func:`resolve_pack`).
        pooling: the fit's points the pack must have been fitted with: ``"class"`` (the published DiT scripts),
            ``"sample"`` (the published PixArt / ToCa collector) or ``"token"`` (``tcc:pooling=sample`` picks the
            default pack ``..._<host>_sample``); None (default): the class-pooled pack by default, any pooling for
            an explicit ``pack``.
    """

    alpha: float | None = None
    any_alpha: bool = False
    pack: TCCPack | Path | str | None = None
    pooling: str | None = None

    FLAGS: ClassVar[dict[str, dict]] = {"any_alpha": {"any_alpha": True}}

    def __post_init__(self) -> None:
        if self.alpha is not None:
            if not np.isfinite(float(self.alpha)):
                raise InvalidArgumentError(f"TCC alpha must be a finite number (got {self.alpha})")
            self.alpha = float(self.alpha)
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise InvalidArgumentError(f"TCC pooling must be one of {', '.join(POOLINGS)} (got {self.pooling!r})")


def resolve_pack(options: dict, context: MethodContext) -> dict:
    """TCC's options for one run: its pack loaded (``tcc:pack=FILE``, else the resources' pack file, else the
    default pack of the run's model, steps, cfg and host, :func:`default_pack_path`) and checked against the run
    (model, steps, cfg, width, the host's reuse pattern, pooling)."""
    options, resources, run = dict(options), context.resources, context.run
    path, pooling = options.get("pack"), options.get("pooling")
    if isinstance(path, TCCPack):
        return options
    if path is None and resources.pack is None and (resources.model is None or resources.cfg_scale is None):
        raise TCCPackError(
            f"{context.label!r} needs a TCC pack: pass tcc:pack=FILE or --tcc-pack FILE, or give the run's model and "
            "cfg (goc sample / eval / bench do: they find data/tcc/<model>_ddim<steps>_cfg<cfg>_<host>.safetensors); "
            "fit one with `goc tcc-pack`"
        )
    path = path or resources.pack
    if path is None:
        path = default_pack_path(resources.model, run.steps, resources.cfg_scale, context.host, pooling or "class")
    pack = TCCPack.load(path)
    pack.check_run(context.schedule.mask, run, path, resources.model, resources.cfg_scale, pooling)
    options["pack"] = pack
    return options


@register_compensator("tcc", TCCConfig, resolve_pack)
class TCCCompensator(Compensator):
    """Reuse, calibrated by the pack's similarity transform at its target steps.

    Example:
        >>> from goc_utils.cache import Resources, RunShape, resolve_method
        >>> from goc_utils.model.checkpoints import load_model
        >>> model = load_model("tiny-digits")
        >>> run = Resources(model="tiny-digits", cfg_scale=1.5)
        >>> resolve_method("fora-50+tcc", RunShape.of(model, 20), run).engine(model).compensator.name
        'tcc'
    """

    name = "tcc"

    def __init__(self, config: TCCConfig | None = None) -> None:
        super().__init__()
        self.config = config or TCCConfig()
        if not isinstance(self.config.pack, TCCPack):
            raise InvalidArgumentError(
                "the TCC compensator needs a loaded pack: resolve its method for the run (resolve_method, which "
                "finds the run's pack) or pass TCCConfig(pack=TCCPack.load(FILE))"
            )
        self.pack: TCCPack = self.config.pack
        fit, alpha = float(self.pack.fit_alpha), self.config.alpha
        if alpha is not None and alpha > 0 and alpha != fit and not self.config.any_alpha:
            raise TCCPackError(
                f"this TCC pack was fitted at alpha {fit:g} (its replay applies the earlier targets' maps at that "
                f"alpha), not {alpha:g}: refit it with `goc tcc-pack --alpha {alpha:g}`, or write tcc:any_alpha to "
                "use it anyway"
            )
        self.alpha: float = fit if alpha is None else alpha
        """The correction strength of this run; ``<= 0`` corrects nothing."""
        self._on: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    def computed(self, key: UnitKey, step: int, value: torch.Tensor) -> None:
        self.state[key] = [value]

    def extra_macs(self, schedule, tokens: int) -> int:
        """``tokens * D^2`` per corrected unit (the ``(B - mu_b) @ R`` matmul) per image and run."""
        corrected = sum(int((~schedule.mask[s]).sum()) for s in self.pack.targets if self.alpha > 0)
        return corrected * tokens * self.pack.hidden**2

    def _maps(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The pack's tensors on ``like``'s device and dtype (moved once per run device)."""
        where = (like.device, like.dtype)
        if where not in self._on:
            p = self.pack
            self._on[where] = tuple(t.to(like.device, like.dtype) for t in (p.R, p.s, p.mu_a, p.mu_b))
        return self._on[where]

    def reuse(self, key: UnitKey, step: int) -> torch.Tensor:
        stale = self.state[key][-1]
        k = self.pack.index(step)
        if k is None or self.alpha <= 0:
            return stale
        r, s, mu_a, mu_b = (t[k, key[0], key[1]] for t in self._maps(stale))
        corr = mu_a + s * ((stale - mu_b) @ r)
        out = stale + self.alpha * (corr - stale)
        self.note_correction(step, key)
        self.state[key] = [out]
        return out
