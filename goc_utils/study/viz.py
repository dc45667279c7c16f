"""Plots and image grids of the study (matplotlib); every figure goes to ``figures/``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from PIL import Image

from goc_utils import paths
from goc_utils.files import atomic_write
from goc_utils.priors.stats import KINDS, gradient_consistency, step_similarity


def image_grid(images: np.ndarray, nrow: int, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` -> one uint8 ``(rows*(H+p)+p, nrow*(W+p)+p, C)`` grid, row-major."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    nrow = max(1, min(nrow, n))
    rows = -(-n // nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = images[i]
    return grid


def save_image_grid(images: np.ndarray, path: str | Path, nrow: int, upscale: int = 1, padding: int = 2) -> Path:
    """Save a uint8 image grid as PNG; ``upscale`` enlarges small images (nearest neighbour) first."""
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    grid = image_grid(images, nrow, padding=padding)
    path = Path(path)
    mode_image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    with atomic_write(path) as tmp:  # the format from the final name, not the temporary one
        mode_image.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path


def sample_grid_figure(
    images: np.ndarray,
    labels: Sequence[int],
    nrow: int,
    title: str | None = None,
    predicted: Sequence[int] | None = None,
):
    """A matplotlib figure of uint8 samples ``(N, H, W, C)``, read row by row.

    With ``predicted`` (a classifier's verdicts), a red ``label→prediction`` marks each
    sample whose predicted class differs from its label.
    """
    n = len(images)
    rows = -(-n // nrow)
    size = 0.6 if images.shape[1] <= 32 else 1.6
    fig, axes = plt.subplots(rows, nrow, figsize=(size * nrow + 0.4, (size + 0.06) * rows + (0.5 if title else 0.2)))
    axes = np.atleast_2d(axes)
    cmap = "gray" if images.shape[-1] == 1 else None
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        image = images[i, ..., 0] if images.shape[-1] == 1 else images[i]
        ax.imshow(image, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
        if predicted is not None and int(predicted[i]) != int(labels[i]):
            ax.set_title(f"{labels[i]}→{predicted[i]}", fontsize=6, color="crimson", pad=1)
    if title:
        fig.suptitle(title, fontsize=9)
    top = 1 - 0.35 / fig.get_size_inches()[1] if title else 1
    fig.tight_layout(pad=0.3, h_pad=0.6, rect=(0, 0, 1, top))
    return fig


def pipeline_figure(
    noise: np.ndarray,
    trajectory: Sequence[np.ndarray],
    images: np.ndarray,
    rows: Sequence[int],
    shown_steps: Sequence[int],
    title: str = "",
    decoded: bool = True,
):
    """What each stage of sampling does, one row per sample index in ``rows``: the noise ``x_T``, the model-space
    state after each step in ``shown_steps`` (1-based: after that many steps), and the decoded image.

    ``noise`` ``(N, C, h, w)``; ``trajectory[s]`` the state after step ``s + 1`` ``(N, C, h, w)`` (latents for
    VAE presets, pixels otherwise); ``images`` the uint8 ``(N, H, W, C)`` samples (``decoded``: by a VAE).
    Model-space panels show channel 0, scaled per panel to its 2nd-98th percentiles."""
    steps = len(trajectory)
    bad = [s for s in shown_steps if not 1 <= s <= steps]
    if bad:
        raise ValueError(f"shown_steps {bad} are outside 1..{steps}")
    columns = [("x_T (noise)", noise)] + [(f"after step {s}", trajectory[s - 1]) for s in shown_steps]
    channels = noise.shape[1]
    fig, axes = plt.subplots(len(rows), len(columns) + 1, figsize=(1.0 * (len(columns) + 1), 1.0 * len(rows) + 0.55))
    axes = np.atleast_2d(axes)
    for r, index in enumerate(rows):
        for c, (name, states) in enumerate(columns):
            low, high = np.percentile(states[index, 0], [2, 98])  # one stray value must not grey out the rest
            axes[r, c].imshow(states[index, 0], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            if r == 0:
                axes[r, c].set_title(name, fontsize=6)
        image = images[index]
        axes[r, -1].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255,
                           interpolation="nearest")
        if r == 0:
            axes[r, -1].set_title("VAE decode" if decoded else "image", fontsize=6)
    for ax in axes.flat:
        ax.set_axis_off()
    space = f"channel 0 of {channels}, {noise.shape[2]}x{noise.shape[3]}"
    fig.suptitle(f"{title} ({space})" if title else space, fontsize=8)
    height = fig.get_size_inches()[1]
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.55 / height, wspace=0.08, hspace=0.12)
    return fig


def save_figure(fig, name_or_path: str | Path, dpi: int = 150) -> Path:
    """Save ``fig`` as PNG and PDF (byte-reproducible): a bare name goes to ``figures/<name>.png|.pdf``."""
    path = Path(name_or_path)
    if path.suffix != ".png":
        path = paths.figure_path(str(name_or_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    fig.savefig(path.with_suffix(".pdf"), metadata={"CreationDate": None, "ModDate": None})  # same bytes each run
    return path


def save_labelled_grid(
    images: np.ndarray,
    labels: Sequence[int],
    path: str | Path,
    nrow: int,
    title: str | None = None,
    predicted: Sequence[int] | None = None,
) -> Path:
    """:func:`sample_grid_figure` saved as PNG + PDF and closed (for scripts)."""
    fig = sample_grid_figure(images, labels, nrow, title, predicted)
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def _block_step_heatmap(ax, values: np.ndarray, first_step: int, title: str, **style) -> None:
    """A (block, step) heatmap with steps ``first_step ..`` on x and blocks on y."""
    depth, count = values.shape
    sns.heatmap(
        values, ax=ax, xticklabels=list(range(first_step, first_step + count)), yticklabels=list(range(depth)), **style
    )
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step s (0 = noisiest)")
    ax.set_ylabel("block")
    ax.tick_params(labelsize=6)


def similarity_heatmaps(stats, statistic: str = "adjacent_cos", kinds: Sequence[int] = (0, 1, 2)):
    """Block x step heatmaps of an adjacent-step statistic, one panel per feature kind.

    ``statistic``: ``adjacent_cos`` (cosine similarity of a unit's output to the previous
    step's, averaged over samples) or ``adjacent_rel_l1`` (relative L1 change).
    """

    values = stats.scalar(statistic)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 0.18 * stats.depth + 1.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        _block_step_heatmap(
            ax, values[1:, :, kind].T, 1, f"{KINDS[kind]}: {statistic.replace('_', ' ')}", cmap="viridis"
        )
    fig.tight_layout()
    return fig


def step_similarity_matrices(stats, blocks: Sequence[int], kind: int = 2):
    """Step x step cosine similarity of the mean features for chosen blocks (one panel each)."""
    fig, axes = plt.subplots(1, len(blocks), figsize=(3.4 * len(blocks), 3.2), squeeze=False)
    for ax, block in zip(axes[0], blocks, strict=True):
        sns.heatmap(
            step_similarity(stats, block, kind),
            ax=ax,
            vmin=-1,
            vmax=1,
            cmap="RdBu_r",
            square=True,
            cbar=ax is axes[0][-1],
            xticklabels=4,
            yticklabels=4,
        )
        ax.set_title(f"block {block} {KINDS[kind]}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("step")
    fig.tight_layout()
    return fig


def goc_simulation_plot(sim, title: str = "", unit_weights: tuple[float, float] = (1.0, 1.0)):
    """Per reused step: MACs-weighted mean relative error of plain reuse vs GOC on the prior trajectory."""
    uw = np.broadcast_to(np.asarray(unit_weights, dtype=float), sim.reused.shape[1:])
    steps = [s for s in range(sim.reused.shape[0]) if sim.reused[s].any()]

    def weighted_mean(errors: np.ndarray, s: int) -> float:
        mask = sim.reused[s] & ~np.isnan(errors[s])
        return float((errors[s][mask] * uw[mask]).sum() / uw[mask].sum()) if mask.any() else np.nan

    plain = [weighted_mean(sim.error_plain, s) for s in steps]
    goc = [weighted_mean(sim.error_goc, s) for s in steps]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(steps, plain, "o-", label="plain reuse")
    ax.plot(steps, goc, "s-", label="GOC correction")
    skipped = [s for s in steps if not sim.corrected[s] and not np.isnan(goc[steps.index(s)])]
    for s in skipped:
        ax.axvline(s, color="crimson", alpha=0.3, lw=3)
    ax.set_xlabel("reused step s")
    ax.set_ylabel("relative error vs prior")
    ax.set_title(title or "GOC on the prior trajectory (red: inflection steps, correction skipped)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def change_magnitude_plot(stats):
    """Per step: mean (over blocks) relative L1 change of each feature kind vs the previous step."""
    values = stats.scalar("adjacent_rel_l1")
    fig, ax = plt.subplots(figsize=(6, 3))
    for kind, name in enumerate(KINDS):
        ax.plot(range(1, stats.steps), values[1:, :, kind].mean(1), "o-", label=name, ms=3)
    ax.set_xlabel("step s (0 = noisiest)")
    ax.set_ylabel("relative L1 change vs step s-1")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("How much block features move per step (mean over blocks)", fontsize=9)
    fig.tight_layout()
    return fig


def gradient_consistency_heatmap(stats, kind: int = 2):
    """Block x step heatmap of cos(g_s, g_{s-1}) of the mean trajectory (direction consistency)."""

    values = gradient_consistency(stats)[2:, :, kind].T
    fig, ax = plt.subplots(figsize=(6, 0.18 * stats.depth + 1.6))
    _block_step_heatmap(
        ax,
        values,
        2,
        f"{KINDS[kind]}: cos(g_s, g_(s-1)), g_s = F_s - F_(s-1) (blue: the trajectory turns)",
        vmin=-1,
        vmax=1,
        cmap="RdBu_r",
    )
    fig.tight_layout()
    return fig


def method_grid_figure(results: dict, title: str = ""):
    """Rows = methods, columns = samples: the same noise under every caching method."""
    methods = list(results)
    n = len(results[methods[0]].images)
    fig, axes = plt.subplots(len(methods), n, figsize=(0.7 * n + 1.6, 0.75 * len(methods) + 0.4), squeeze=False)
    for r, method in enumerate(methods):
        images = results[method].images
        for c in range(n):
            ax = axes[r][c]
            image = images[c, ..., 0] if images.shape[-1] == 1 else images[c]
            ax.imshow(image, cmap="gray" if images.shape[-1] == 1 else None, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(method, rotation=0, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    top = 1 - 0.35 / fig.get_size_inches()[1] if title else 1
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, top))
    return fig


def per_step_error_plot(errors: dict[str, np.ndarray]):
    """RMSE of each method's intermediate samples vs the un-cached run, per step."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for method, values in errors.items():
        if method == "none":
            continue
        style = "-" if "+" not in method else ("--" if "goc" in method else ":")
        # 3 significant digits: the plotted points do not move with CPU-dependent float differences
        values = [float(f"{v:.3g}") for v in np.asarray(values, dtype=float)]
        ax.plot(range(len(values)), values, style, marker="o", ms=2.5, label=method)
    ax.set_xlabel("step s (0 = noisiest)")
    ax.set_ylabel("RMSE vs un-cached x_s")
    ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=2)
    ax.set_title("Error along the sampling trajectory (same noise)", fontsize=9)
    fig.tight_layout()
    return fig


def quality_speed_figure(rows: Sequence[dict], metrics: Sequence[str] = ("fid", "psnr_vs_none")):
    """Quality vs MACs speedup, one line per compensator (plain reuse, GOC, ...) and one panel per metric.

    ``rows`` are result-table rows (dicts with ``method``, ``cfg_scale``, ``macs_speedup`` and the
    metrics); every line starts at the un-cached point, markers are labelled by host schedule.
    """
    labels = {"fid": "FID (lower is better)", "psnr_vs_none": "PSNR vs un-cached, dB (higher is better)"}
    cfgs = sorted({r["cfg_scale"] for r in rows})
    fig, axes = plt.subplots(len(cfgs), len(metrics), figsize=(4.2 * len(metrics), 3.1 * len(cfgs)), squeeze=False)
    for i, cfg in enumerate(cfgs):
        subset = [r for r in rows if r["cfg_scale"] == cfg]
        base = next((r for r in subset if r["method"] == "none"), None)
        lines: dict[str, list[dict]] = {}
        for r in subset:
            if r["method"] != "none":
                comp = r["method"].split("+", 1)[1] if "+" in r["method"] else "plain reuse"
                lines.setdefault(comp, []).append(r)
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for comp, points in lines.items():
                points = sorted(points, key=lambda r: r["macs_speedup"])
                if base is not None and metric != "psnr_vs_none":
                    points = [base, *points]
                xs = [p["macs_speedup"] for p in points]
                ys = [p[metric] for p in points]
                errors = [p.get("fid_std") or 0.0 for p in points] if metric == "fid" else None
                ax.errorbar(xs, ys, yerr=errors, marker="o", ms=4, capsize=2, lw=1, label=comp)
                for p in points:
                    if p["method"] != "none":
                        ax.annotate(p["method"].split("+")[0].split(":")[0], (p["macs_speedup"], p[metric]),
                                    fontsize=6, xytext=(3, 3), textcoords="offset points")  # fmt: skip
            if base is not None and metric != "psnr_vs_none":
                ax.axhline(base[metric], color="grey", lw=0.6, ls=":")
            ax.set_xlabel("theoretical speedup (MACs)")
            ax.set_ylabel(labels.get(metric, metric), fontsize=8)
            ax.set_title(f"cfg {cfg:g}, {subset[0]['samples']} samples per method", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def peer_label(method: str) -> str:
    """A short legend label: ``diffusers:fbc:threshold=0.05`` -> ``fbc threshold=0.05``,
    ``cachedit:dbcache:fn=1:bn=0:threshold=0.17:warmup=4:calibrator=foca`` -> ``dbcache F1B0 threshold=0.17
    warmup=4 +foca``."""
    if not method.startswith(("diffusers:", "cachedit:")):
        return method
    name, *options = method.split(":")[1:]
    short = {"cache_interval": "interval", "disable_cache_before_step": "from", "disable_cache_after_step": "until",
             "spatial_attention_block_skip_range": "skip", "unconditional_batch_skip_range": "uncond-skip",
             "max_skip_steps": "K", "retention_ratio": "keep"}  # fmt: skip
    values = dict(option.partition("=")[::2] for option in options)
    parts = []
    if "fn" in values or "bn" in values:  # cache-dit's own shorthand for the computed blocks: F<fn>B<bn>
        parts.append(f"F{values.pop('fn', '8')}B{values.pop('bn', '0')}")
    calibrator = values.pop("calibrator", "none")
    calibrator_options = [f"{key}={values.pop(key)}" for key in ("order", "history") if key in values]
    parts += [f"{short.get(key, key)}={value}" for key, value in values.items() if "timestep" not in key]
    if calibrator != "none":
        parts += [f"+{calibrator}", *calibrator_options]
    return " ".join([name, *parts])


FEATURES_LABEL = {"tiny-digits": "digits features", "tiny-fashion": "Fashion-MNIST judge features"}
"""How a figure names the FID features of each model (Inception features otherwise)."""


def peers_figure(rows: Sequence[dict], model: str = "tiny-digits"):
    """FID (bootstrap spread as error bars) and PSNR vs un-cached against the measured MACs speedup:
    our methods by compensator (filled markers, labelled by host), diffusers' and cache-dit's caches by name and
    calibrator (open markers); titled with ``model``."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    base = next((r for r in rows if r["method"] == "none"), None)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["method"] == "none":
            continue
        if r["method"].startswith(("diffusers:", "cachedit:")):
            library, name, *_ = r["method"].split(":")
            calibrator = next((o.split("=")[1] for o in r["method"].split(":") if o.startswith("calibrator=")), None)
            key = f"{library} {name}" + (f"+{calibrator}" if calibrator not in (None, "none") else "")
        else:
            key = "ours: " + (r["method"].split("+", 1)[1] if "+" in r["method"] else "plain reuse")
        groups.setdefault(key, []).append(r)
    markers = "osD^v<>Ph*X"
    for (key, points), marker in zip(sorted(groups.items()), markers * 3, strict=False):
        points = sorted(points, key=lambda r: r["macs_speedup"])
        xs = [q["macs_speedup"] for q in points]
        filled = None if key.startswith("ours") else "none"
        axes[0].errorbar(xs, [q["fid"] for q in points], yerr=[q.get("fid_std") or 0.0 for q in points],
                         marker=marker, ms=5, capsize=2, lw=0.8, ls="none", mfc=filled, label=key)
        axes[1].plot(xs, [q["psnr_vs_none"] for q in points], marker=marker, ms=5, ls="none", mfc=filled,
                     label=key)  # fmt: skip
        for q in points if key.startswith("ours") else ():  # peers: the legend and the x position name them
            axes[1].annotate(q["method"].split("+")[0], (q["macs_speedup"], q["psnr_vs_none"]), fontsize=5,
                             xytext=(3, 2), textcoords="offset points")  # fmt: skip
    if base is not None:
        axes[0].axhline(base["fid"], color="grey", lw=0.6, ls=":")
        top = 3 * base["fid"]  # a collapsed row (FID far above the un-cached one) would flatten every other point
        off = [r for r in rows if r["fid"] > top]
        if off:
            axes[0].set_ylim(0, top)
            for i, r in enumerate(sorted(off, key=lambda r: r["macs_speedup"])):
                axes[0].annotate(f"{r['method']}: FID {r['fid']:.1f} (off scale)", (r["macs_speedup"], top),
                                 xytext=(0, -10 - 8 * i), textcoords="offset points", fontsize=5, ha="center",
                                 arrowprops=dict(arrowstyle="->", lw=0.5))  # fmt: skip
    samples = rows[0]["samples"] if rows else 0
    axes[0].set_ylabel(f"FID, {FEATURES_LABEL.get(model, 'Inception features')} (lower is better)", fontsize=8)
    axes[1].set_ylabel("PSNR vs un-cached, dB (higher is better)", fontsize=8)
    for ax in axes:
        ax.set_xlabel("MACs speedup (measured from the units computed)", fontsize=8)
        ax.set_title(f"{model} through diffusers, cfg {rows[0]['cfg_scale']:g}, {samples} samples", fontsize=9)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=6, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 1))  # the legend below both panels hides no point
    return fig


def weight_sweep_figure(rows: Sequence[dict], paper: dict[str, float], auto: dict[str, float]):
    """PSNR vs un-cached against GOC's w, one line per host; the paper's w and the least-squares w marked."""
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    plain = {r["method"]: r for r in rows}
    for host, colour in zip(paper, ("#4c72b0", "#dd8452"), strict=False):
        points = sorted(
            (float(r["method"].rsplit("=", 1)[1]), r["psnr_vs_none"]) for r in rows
            if r["method"].startswith(f"{host}+goc:w=") and not r["method"].endswith("auto")
        )  # fmt: skip
        ax.plot([w for w, _ in points], [v for _, v in points], marker="o", ms=4, lw=1, color=colour, label=host)
        for w, text, marker in ((paper[host], "paper", "s"), (auto.get(host), "least-squares", "*")):
            key = f"{host}+goc" if text == "paper" else f"{host}+goc:w=auto"
            if w is not None and key in plain:
                ax.plot([w], [plain[key]["psnr_vs_none"]], marker=marker, ms=9 if marker == "*" else 7, ls="none",
                        color=colour, mec="black", label=f"{host}: {text} w = {w:.2f}")  # fmt: skip
    ax.set_xlabel("GOC weight w (published correction steps)")
    ax.set_ylabel("PSNR vs un-cached, dB")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def ratio_figure(rows: Sequence[dict], model: str = "tiny-digits"):
    """FID (bootstrap spread) and PSNR against the share of reused MACs, per host family and compensator; the FID
    axis names ``model``'s features."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8))
    base = next((r for r in rows if r["method"] == "none"), None)
    styles = {"plain reuse": "o", "goc": "s", "goc:auto": "*", "taylor": "^"}
    for family, ls in (("fora", "-"), ("l2c", "--")):
        for comp, marker in styles.items():
            points = sorted(
                (r for r in rows if r["method"].startswith(family)
                 and (r["method"].split("+", 1)[1] if "+" in r["method"] else "plain reuse") == comp),
                key=lambda r: r["cache_ratio_macs"],
            )  # fmt: skip
            if not points:
                continue
            xs = [100 * r["cache_ratio_macs"] for r in points]
            axes[0].errorbar(xs, [r["fid"] for r in points], yerr=[r.get("fid_std") or 0 for r in points],
                             marker=marker, ls=ls, lw=0.8, ms=5, capsize=2, label=f"{family} {comp}")  # fmt: skip
            axes[1].plot(xs, [r["psnr_vs_none"] for r in points], marker=marker, ls=ls, lw=0.8, ms=5,
                         label=f"{family} {comp}")  # fmt: skip
    if base is not None:
        axes[0].axhline(base["fid"], color="grey", lw=0.6, ls=":")
    axes[0].set_ylabel(f"FID, {FEATURES_LABEL.get(model, 'Inception features')}")
    axes[1].set_ylabel("PSNR vs un-cached, dB")
    for ax in axes:
        ax.set_xlabel("reused share of branch MACs, %")
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def inflection_figure(rows: Sequence[dict], runs: Sequence[tuple[str, str, str, int]], base: dict[str, float]):
    """PSNR change when each published correction step is left out (or a skipped step added), per host."""
    hosts = list(dict.fromkeys(h for h, *_ in runs))
    fig, axes = plt.subplots(1, len(hosts), figsize=(5 * len(hosts), 3.2), squeeze=False)
    by_method = {r["method"]: r for r in rows}
    for ax, host in zip(axes[0], hosts, strict=True):
        items = [(step, kind, by_method[m]["psnr_vs_none"] - base[host]) for h, m, kind, step in runs
                 if h == host and m in by_method]  # fmt: skip
        colours = ["#c44e52" if d > 0 else "#55a868" for _, _, d in items]
        ax.bar(range(len(items)), [d for *_, d in items], color=colours)
        ax.set_xticks(range(len(items)), [f"{'-' if k == 'without' else '+'}{s}" for s, k, _ in items], fontsize=7)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"{host}+goc: step left out (-) or added (+)", fontsize=8)
        ax.set_ylabel("PSNR change vs published steps, dB", fontsize=7)
    fig.tight_layout()
    return fig


def replay_scatter(predicted: dict, rows: Sequence[dict], rho: float):
    """Predicted error (priors replay) against the measured MSE vs un-cached, log-log, with Spearman's rho."""
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    for r in rows:
        value = predicted.get(r["method"])
        if value is None or not np.isfinite(r["psnr_vs_none"]):
            continue
        colour = "#4c72b0" if r["method"].startswith("fora") else "#dd8452"
        ax.scatter(value, 10 ** (-r["psnr_vs_none"] / 10), s=14, color=colour)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted error (priors replay)")
    ax.set_ylabel("measured MSE vs un-cached (from PSNR)")
    ax.set_title(f"Spearman rho = {rho:.2f} (blue FORA, orange L2C)", fontsize=9)
    fig.tight_layout()
    return fig
