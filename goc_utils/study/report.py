"""Results reports that write themselves: ``figures/README.md`` (tiny-fashion) and ``figures/tiny-digits/README.md``
from the committed CSVs beside them (``goc report``, ``make report``).

A report is a function of its folder's CSVs and of the figure and table files present, nothing else, so the same
CSVs give the same bytes. Each section draws on one or more CSVs and is left out when they are missing. Numbers are
copied as the CSV writes them (text, never re-rounded), and every table or paragraph that holds numbers is preceded
by a line ``<!-- numbers: figures/05_eval.csv -->`` naming its CSVs (paths from the repository root, comma
separated), so that a test can find each number in them.

Example:
    >>> text = build_report("tiny-digits")  # figures/tiny-digits/README.md as make report writes it
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from goc_utils import paths
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.tables import markdown_table
from goc_utils.files import atomic_write_text, read_csv_rows
from goc_utils.study.viz import peer_label

REPORT_NAME = "README.md"
MACHINE_TIMINGS = "_latency"
"""Stem suffix of the tables of this machine's timings (``05_fid_table_latency.md``): git-ignored
(``figures/*_latency.*``), so the report never links them."""
"""The report's file name in its figures folder."""


@dataclass(frozen=True)
class Tier:
    """What a report says about its model beyond its CSVs.

    Attributes:
        title: the report's first heading.
        intro: one paragraph: what the tier is and where the other tier's report lives (no numbers).
        prefix: the name part of the tier's own files, ``00_<prefix>_samples.png`` / ``00_<prefix>_agreement.csv``.
        features: what FID is measured with and against, as a phrase.
        suffix: the suffix of the tier's make targets (``make eval<suffix>``): ``""`` or ``"-tiny"``.
        tier_target: the make target that writes the ``00_`` files.
        eval_table: the results table's name (``05_eval`` or ``05_eval_tiny``).
    """

    title: str
    intro: str
    prefix: str
    features: str
    suffix: str
    tier_target: str
    eval_table: str


TIERS: dict[str, Tier] = {
    "tiny-fashion": Tier(
        title="tiny-fashion: the study's results",
        intro="The results of the study on **tiny-fashion**, the embedded latent DiT trained on Fashion-MNIST with "
        "its own VAE and judge: `DiT-XL/2`'s pipeline in miniature and the study's default tier (the [main "
        "README](../README.md) says how to run it; tiny-digits' results: [tiny-digits/README.md]"
        "(tiny-digits/README.md)).",
        prefix="fashion",
        features="the judge's features against the Fashion-MNIST test images",
        suffix="",
        tier_target="make fashion-report",
        eval_table="05_eval",
    ),
    "tiny-digits": Tier(
        title="tiny-digits: the study's results on the pixel-space tier",
        intro="The results of the study on **tiny-digits**, the embedded pixel-space DiT trained on scikit-learn's "
        "digits: the study's first tier and the fast fixture of the tests (the study's default tier is "
        "tiny-fashion: [its results](../README.md)).",
        prefix="tiny",
        features="the digits classifier's features against the real digits",
        suffix="-tiny",
        tier_target="make study-tiny",
        eval_table="05_eval_tiny",
    ),
}
"""The models that have a report, by name."""

PAIRED = (
    "Both methods of a row sample the same per-sample noise. The paired spread (std) is the bootstrap standard "
    "deviation of the difference A - B, the same images resampled for both methods, and a difference is resolved "
    "when it exceeds twice its paired spread. PSNR is against the un-cached samples of the same noise (fidelity: "
    "how closely a cache reproduces the model), FID against the real images (quality)."
)
"""What a verdicts table's columns mean (said once per report, before its first verdicts table)."""


def tier(model: str) -> Tier:
    """The :class:`Tier` of ``model``, or one line naming the models that have a report."""
    if model not in TIERS:
        raise InvalidArgumentError(f"no results report for model {model!r}; choose one of {', '.join(TIERS)}")
    return TIERS[model]


def method_label(method: str) -> str:
    """How a report names a method: ours as typed, in code (`` `fora-50+goc:auto` ``); diffusers' and cache-dit's
    caches by library and :func:`~goc_utils.study.viz.peer_label` (``cache-dit dbcache F1B0 threshold=0.17 warmup=4
    +foca``)."""
    if method.startswith("diffusers:"):
        return "diffusers " + peer_label(method)
    if method.startswith("cachedit:"):
        return "cache-dit " + peer_label(method)
    return f"`{method}`"


class _Row(dict):
    """A CSV row whose missing column is one line naming the file, not a ``KeyError``."""

    def __init__(self, row: dict[str, str], path: Path, fix: str) -> None:
        super().__init__(row)
        self.path, self.fix = path, fix

    def __missing__(self, column: str) -> str:
        raise InvalidArgumentError(f"results table {str(self.path)!r} has no column {column!r}; {self.fix}")


class _Folder:
    """A figures folder as the sections read it: its CSVs as text rows, its files, and the numbers markers."""

    def __init__(self, model: str, folder: Path) -> None:
        self.tier = tier(model)
        self.folder = folder
        self.committed = paths.model_figures_dir(model).relative_to(paths.PROJECT_ROOT)

    def rows(self, name: str) -> list[dict[str, str]] | None:
        """The rows of ``<name>.csv`` as written (text cells), or None when the folder has no such CSV."""
        path = self.folder / f"{name}.csv"
        if not path.is_file():
            return None
        fix = "regenerate it (goc notebooks) or git checkout it"
        return [_Row(row, path, fix) for row in read_csv_rows(path, "results table", fix)]

    def label(self, method: str) -> str:
        """:func:`method_label`, and for a ``+tcc`` method the rank of its pack's maps (from ``00_tcc_packs.csv``):
        ``fora-50+tcc`` (rank 9 of 128)."""
        host, plus, compensator = method.partition("+")
        packs = self.rows("00_tcc_packs")
        if not plus or not compensator.startswith("tcc") or packs is None:
            return method_label(method)
        pooling = next((o.split("=")[1] for o in compensator.split(":") if o.startswith("pooling=")), "class")
        ranks = {(r["rank of M"], r["width"]) for r in packs if r["host"] == host and r["pooling"] == pooling}
        if len(ranks) != 1:
            return method_label(method)
        rank, width = ranks.pop()
        return f"{method_label(method)} (rank {rank} of {width})"

    def tcc_marker(self, name: str, methods: Sequence[str]) -> str:
        """:meth:`marker` of ``name``, naming ``00_tcc_packs`` too where a ``+tcc`` label quotes its rank."""
        ranked = self.has("00_tcc_packs.csv") and any("+tcc" in m for m in methods)
        return self.marker(name, "00_tcc_packs") if ranked else self.marker(name)

    def section(self, heading: str, name: str, sentence: str, table: Sequence[dict], image: str = "",
                alt: str = "") -> list[str]:  # fmt: skip
        """A heading, one sentence about ``name``'s table, the table (each under its numbers marker), and a figure."""
        return [
            heading,
            f"{self.marker(name)}\n{sentence}",
            f"{self.marker(name)}\n{markdown_table(table).rstrip()}",
            *(self.image(image, alt) if image else []),
        ]

    def has(self, file: str) -> bool:
        return (self.folder / file).is_file()

    def marker(self, *names: str) -> str:
        """``<!-- numbers: figures/<name>.csv, ... -->``: the CSVs of the next block, where they are committed."""
        return "<!-- numbers: " + ", ".join((self.committed / f"{n}.csv").as_posix() for n in names) + " -->"

    def image(self, file: str, alt: str, caption: str = "") -> list[str]:
        """A figure and its italic caption, or nothing when the file is missing."""
        if not self.has(file):
            return []
        return [f"![{alt}]({file})"] + ([f"*{caption}*"] if caption else [])

    def link(self, file: str) -> str:
        return f"[`{file}`]({file})" if self.has(file) else f"`{file}`"


def _distinct(rows: Sequence[dict[str, str]], key: str) -> str:
    """The values of column ``key`` in order of first appearance, joined by " and "."""
    return " and ".join(dict.fromkeys(r[key] for r in rows))


def _signed(value: str, std: str, resolved: str, unit: str = "") -> str:
    """``+11.32 dB (0.07)``, with ``, not resolved`` when the verdict says no."""
    return f"{value}{unit} ({std})" + ("" if resolved == "yes" else ", not resolved")


def _header(f: _Folder) -> list[str]:
    targets = [f"`make study{f.tier.suffix}`", f"`{f.tier.tier_target}`", f"`make eval{f.tier.suffix}`",
               f"`make peers{f.tier.suffix}`", f"`make ablations{f.tier.suffix}`"]  # fmt: skip
    unique = list(dict.fromkeys(targets))
    return [
        f"# {f.tier.title}",
        f"{f.tier.intro} This file is written from the CSVs beside it by `goc report`, which "
        f"{', '.join(unique[:-1])} and {unique[-1]} run when they finish (`make report` alone takes seconds): "
        "change `goc_utils/study/report.py`, not this file.",
    ]


def _tier_section(f: _Folder) -> list[str]:
    agreement, report = f.rows(f"00_{f.tier.prefix}_agreement"), f.rows(f"00_{f.tier.prefix}_tier")
    if agreement is None and report is None:
        return []
    blocks = [f"## The tier (`{f.tier.tier_target}`)"]
    blocks += f.image(f"00_{f.tier.prefix}_samples.png", "samples",
                      "Un-cached samples of the embedded DiT, one row per class.")  # fmt: skip
    if agreement is not None:
        cells = "; ".join(f"{r['agreement']} at cfg {r['cfg_scale']} ({r['samples']} samples)" for r in agreement)
        blocks.append(
            f"{f.marker(f'00_{f.tier.prefix}_agreement')}\nShare of un-cached samples that the tier's judge assigns "
            f"to their conditioning label: {cells} ({f.link(f'00_{f.tier.prefix}_agreement.md')})."
        )
    if report is not None:
        blocks.append(f"What the tier reaches ({f.link(f'00_{f.tier.prefix}_tier.md')}):")
        blocks.append(f"{f.marker(f'00_{f.tier.prefix}_tier')}\n{markdown_table(report).rstrip()}")
    return blocks + f.image("00_fashion_vae.png", "VAE reconstructions", "Test images, each above its "
                            "reconstruction by the tier's VAE.")  # fmt: skip


def _verdicts(f: _Folder, name: str, heading: str, pairs: str, define: bool) -> list[str]:
    """A verdicts section: ``heading``, one sentence (with :data:`PAIRED` first when ``define``) and the table:
    each pair's differences A - B with their paired spread in brackets, per cfg."""
    rows = f.rows(name)
    if rows is None:
        return []
    pairs_by_cfg: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:  # one line per pair, two columns per cfg
        line = pairs_by_cfg.setdefault((r["A"], r["B"]), {"A": f.label(r["A"]), "B": f.label(r["B"])})
        line[f"PSNR A - B, cfg {r['cfg']}"] = _signed(r["PSNR A-B dB"], r["PSNR std"], r["PSNR resolved"], " dB")
        line[f"FID A - B, cfg {r['cfg']}"] = _signed(r["FID A-B"], r["FID std"], r["FID resolved"])
    columns = list(dict.fromkeys(k for line in pairs_by_cfg.values() for k in line))
    table = [{k: line.get(k, "") for k in columns} for line in pairs_by_cfg.values()]
    return [
        heading,
        f"{f.marker(name)}\n{PAIRED + ' ' if define else ''}{pairs}, {_distinct(rows, 'samples')} samples per method, "
        f"cfg {_distinct(rows, 'cfg')} (`goc verdicts`; {f.link(f'{name}.md')} adds each side's PSNR and FID):",
        f"{f.tcc_marker(name, [r[k] for r in rows for k in ('A', 'B')])}\n{markdown_table(table).rstrip()}",
    ]


def _main_verdicts(f: _Folder) -> list[str]:
    heading = f"## The main comparisons (`make eval{f.tier.suffix}`)"
    return _verdicts(f, "05_verdicts", heading, "Pairs of methods of the results table below", define=True)


def _results(f: _Folder) -> list[str]:
    name = f.tier.eval_table
    rows = f.rows(name)
    if rows is None:
        return []
    cfgs = list(dict.fromkeys(r["cfg_scale"] for r in rows))
    by_method: dict[str, dict[str, str]] = {}
    for r in rows:
        line = by_method.setdefault(r["method"], {"method": f.label(r["method"]),
                                                  "MACs speedup": f"{r['macs_speedup']}x"})  # fmt: skip
        line[f"FID (std), cfg {r['cfg_scale']}"] = f"{r['fid']} ({r['fid_std']})"
        line[f"PSNR vs none, cfg {r['cfg_scale']}"] = f"{r['psnr_vs_none']} dB"
    header = ["method", "MACs speedup"] + [f"{k}, cfg {c}" for c in cfgs for k in ("FID (std)", "PSNR vs none")]
    table = [{k: line.get(k, "") for k in header} for line in by_method.values()]
    return [
        f"## The results table (`make eval{f.tier.suffix}`)",
        f"{f.marker(name)}\n`goc eval` samples {_distinct(rows, 'samples')} images per method at cfg "
        f"{_distinct(rows, 'cfg_scale')} with per-sample seeds, so that every method sees the same noise; FID "
        f"(bootstrap std) on {f.tier.features}, PSNR against the un-cached samples of the same noise. The full table "
        f"adds IS, sFID, precision, recall, SSIM, class agreement and latency: {f.link(f'{name}.md')}.",
        f"{f.tcc_marker(name, list(by_method))}\n{markdown_table(table).rstrip()}",
    ]


def _quality_speed(f: _Folder) -> list[str]:
    if not f.has("05_fid_vs_speedup.png"):
        return []
    rows = f.rows("05_fid_table")
    what = "FID (bootstrap std as error bars) and PSNR against the un-cached samples vs the MACs speedup, from notebook"
    caption = f"*{what} `05_fid_tables`' own run.*"
    if rows is not None:
        setting = f"{_distinct(rows, 'samples')} samples per method, cfg {_distinct(rows, 'cfg_scale')}"
        table = f.link("05_fid_table.md")
        caption = f"{f.marker('05_fid_table')}\n*{what} `05_fid_tables`' own run: {setting} ({table}).*"
    heading = f"## Quality against speed (`make study{f.tier.suffix}`)"
    return [heading, "![quality vs speed](05_fid_vs_speedup.png)", caption]


def _same_noise(f: _Folder) -> list[str]:
    rows = f.rows("04_methods")
    if rows is None:
        return []
    table = [{**r, "method": method_label(r["method"])} for r in rows]
    return [
        f"## Same noise, every method (`make study{f.tier.suffix}`)",
        "One noise per class sampled under every method (notebook `04_fora_l2c_goc`): the share of cached units "
        "and MACs, the speedup in MACs and the RMSE of the final sample against the un-cached run of the same "
        "noise. A handful of samples: the results table above, on many, decides.",
        f"{f.marker('04_methods')}\n{markdown_table(table).rstrip()}",
    ]


def _peers(f: _Folder) -> list[str]:
    rows = f.rows("07_diffusers_peers")
    if rows is None:
        return []
    table = [{"method": f.label(r["method"]), "MACs speedup (measured)": f"{r['macs_speedup']}x",
              "FID (bootstrap std)": f"{r['fid']} ({r['fid_std']})", "PSNR vs un-cached": f"{r['psnr_vs_none']} dB",
              "latency speedup (CPU)": f"{r['measured_speedup']}x"} for r in rows]  # fmt: skip
    caption = "FID and PSNR against the un-cached samples vs the measured MACs speedup, for every row below."
    return [
        f"## The peers table (`make peers{f.tier.suffix}`)",
        *f.image("07_diffusers_peers.png", "diffusers peers", caption),
        f"{f.marker('07_diffusers_peers')}\nOur methods, diffusers' caches and cache-dit's DBCache on the same "
        f"transformer through diffusers (`--backend diffusers`), cfg {_distinct(rows, 'cfg_scale')}, "
        f"{_distinct(rows, 'samples')} samples per method with the same per-sample noise; FID on {f.tier.features} "
        "(it depends on the sample count: compare rows of one table only). The MACs speedup is measured from the "
        "units each cache computed, the latency speedup from timing one batch on a CPU. Full table: "
        f"{f.link('07_diffusers_peers.md')}.",
        f"{f.tcc_marker('07_diffusers_peers', [r['method'] for r in rows])}\n{markdown_table(table).rstrip()}",
    ]


def _peer_verdicts(f: _Folder) -> list[str]:
    heading = f"### The peers' paired verdicts (`make peers{f.tier.suffix}`)"
    pairs = f"The pairs that `make peers{f.tier.suffix}` compares"
    return _verdicts(f, "07_verdicts", heading, pairs, define=f.rows("05_verdicts") is None)


def _tcc_packs(f: _Folder) -> list[str]:
    rows = f.rows("00_tcc_packs")
    if rows is None:
        return []
    sentence = (
        "The committed packs of the `+tcc` rows above (`goc tcc-packs`): TCC's maps fitted per target step and unit "
        "from same-noise un-cached and cached runs. `class` pooling is the published DiT scripts' fit (one point per "
        "class: with fewer classes than the width, M is rank-deficient and R is mostly the SVD's choice, so "
        "trace(R)/D is far below the identity's); `sample` pooling is the published PixArt / ToCa collector's (one "
        "point per sample: full rank); `token` pooling is ours. Where the alpha was chosen on held-out noise "
        "(`tcc-pack --alpha` with several values), its held-out PSNR against the un-cached images is listed per "
        "alpha, next to plain reuse's."
    )
    return f.section("## The TCC packs (`make tcc-packs`)", "00_tcc_packs", sentence, rows)


def _setting(f: _Folder, name: str) -> str:
    rows = f.rows(name) or []
    return f"{_distinct(rows, 'samples')} samples per point, cfg {_distinct(rows, 'cfg_scale')}"


def _weight_sweep(f: _Folder) -> list[str]:
    rows = f.rows("08_weight_sweep")
    if rows is None:
        return []
    grid: dict[str, dict[str, str]] = {}
    hosts: list[str] = []
    for r in rows:
        host, goc, option = r["method"].partition("+goc")
        if not goc:
            continue
        w = {"": "the paper's w", ":w=auto": "least-squares w (`:w=auto`)"}.get(option, option.removeprefix(":w="))
        hosts += [] if host in hosts else [host]
        grid.setdefault(w, {"w": w})[f"`{host}+goc`"] = f"{r['psnr_vs_none']} dB"
    table = [{"w": line["w"], **{f"`{h}+goc`": line.get(f"`{h}+goc`", "") for h in hosts}} for line in grid.values()]
    sentence = (
        "PSNR against the un-cached samples as GOC's w varies at the published correction steps, "
        f"{_setting(f, '08_weight_sweep')} ({f.link('08_weight_sweep.md')}):"
    )
    return f.section("### The weight w", "08_weight_sweep", sentence, table, "08_weight_sweep.png",
                     "PSNR against GOC's w")  # fmt: skip


def _inflections(f: _Folder) -> list[str]:
    rows = f.rows("08_inflections")
    if rows is None:
        return []
    variants: dict[str, list[tuple[set[int], str]]] = {}
    base: dict[str, str] = {}
    for r in rows:
        host, goc, option = r["method"].partition("+goc")
        if option.startswith(":steps="):
            steps = {int(s) for s in option.removeprefix(":steps=").split(",")}
            variants.setdefault(host, []).append((steps, r["psnr_vs_none"]))
        elif goc and not option:
            base[host] = r["psnr_vs_none"]
    lines: dict[str, dict[str, str]] = {"published": {"correction steps": "the published ones"}}
    for host, runs in variants.items():  # each run leaves out one published step or adds one skipped step
        published = {s for steps, _ in runs for s in steps if sum(s in other for other, _ in runs) > len(runs) / 2}
        lines["published"][f"`{host}+goc`"] = f"{base[host]} dB" if host in base else ""
        for steps, psnr in runs:
            key = ", ".join(
                [f"without {s}" for s in sorted(published - steps)] + [f"with {s}" for s in sorted(steps - published)]
            )
            lines.setdefault(key, {"correction steps": key})[f"`{host}+goc`"] = f"{psnr} dB"
    columns = ["correction steps"] + [f"`{host}+goc`" for host in variants]
    table = [{k: line.get(k, "") for k in columns} for line in lines.values()]
    sentence = (
        "PSNR against the un-cached samples with GOC at the paper's w when one published correction step is left "
        f"out or one skipped step is added, {_setting(f, '08_inflections')} ({f.link('08_inflections.md')}):"
    )
    return f.section("### Inflection steps, measured", "08_inflections", sentence, table, "08_inflections.png",
                     "PSNR change when a published step is left out or a skipped step added")  # fmt: skip


def _cache_ratio(f: _Folder) -> list[str]:
    rows = f.rows("08_cache_ratio")
    if rows is None:
        return []
    compensators = {"": "plain reuse", "+goc": "`+goc`", "+goc:auto": "`+goc:auto`", "+taylor": "`+taylor`"}
    lines: dict[str, dict[str, str]] = {}
    for r in rows:
        host, plus, comp = r["method"].partition("+")
        if host == "none":
            continue
        line = lines.setdefault(host, {"host": method_label(host), "reused share of MACs": r["cache_ratio_macs"]})
        line[compensators.get(plus + comp, method_label(plus + comp))] = (
            f"{r['psnr_vs_none']} dB / {r['fid']} ({r['fid_std']})"
        )
    columns = list(dict.fromkeys(k for line in lines.values() for k in line))
    table = [{k: line.get(k, "") for k in columns} for line in lines.values()]
    none = next((r for r in rows if r["method"] == "none"), None)
    reference = "" if none is None else f"; the un-cached FID is {none['fid']} ({none['fid_std']})"
    sentence = (
        "Plain reuse and its compensators as reuse grows (FORA at three intervals, the L2C router at three "
        f"thresholds), {_setting(f, '08_cache_ratio')}; each cell is PSNR against the un-cached samples / FID "
        f"(bootstrap std){reference} ({f.link('08_cache_ratio.md')}):"
    )
    return f.section("### Cache ratio", "08_cache_ratio", sentence, table, "08_cache_ratio.png",
                     "FID and PSNR against the share of reused MACs")  # fmt: skip


def _replay(f: _Folder) -> list[str]:
    if f.rows("08_replay_vs_measured") is None:
        return []
    return [
        "### Does the priors replay predict the samples?",
        "The error that the replay of GOC on the priors predicts for each configuration of the ablations, against "
        f"the PSNR measured on its samples ({f.link('08_replay_vs_measured.md')}); the figure gives Spearman's rank "
        "correlation.",
        *f.image("08_replay_vs_measured.png", "predicted against measured error"),
    ]


def _ablations(f: _Folder) -> list[str]:
    parts = [*_weight_sweep(f), *_inflections(f), *_cache_ratio(f), *_replay(f)]
    if not parts:
        return []
    return [
        f"## The ablations (`make ablations{f.tier.suffix}`)",
        "The paper's claims tested one by one on sampled images (notebook `08_ablations`), each point a `goc eval` "
        "run with the same per-sample noise.",
        *parts,
    ]


def _index(f: _Folder) -> list[str]:
    files = sorted(p.name for p in f.folder.iterdir()
                   if p.suffix in (".png", ".md") and p.name != REPORT_NAME and not p.name.startswith(".")
                   and not p.stem.endswith(MACHINE_TIMINGS))  # fmt: skip
    groups: dict[str, list[str]] = {}
    for name in files:
        groups.setdefault(name[:2] if name[:2].isdigit() else "other", []).append(f"[`{name}`]({name})")
    return [
        "## Every figure and table",
        "\n".join(f"- `{key}`: {', '.join(links)}" for key, links in groups.items()),
    ] if groups else []  # fmt: skip


SECTIONS: tuple[Callable[[_Folder], list[str]], ...] = (
    _tier_section, _main_verdicts, _results, _quality_speed, _same_noise, _peers, _peer_verdicts, _tcc_packs,
    _ablations, _index,
)  # fmt: skip
"""The report's sections in order; each returns its markdown blocks, none when its CSVs are missing."""

CSV_NAMES = ("00_fashion_agreement", "00_fashion_tier", "00_tiny_agreement", "04_methods", "05_verdicts", "05_eval",
             "05_eval_tiny", "05_fid_table", "07_diffusers_peers", "07_verdicts", "08_weight_sweep", "08_inflections",
             "08_cache_ratio", "08_replay_vs_measured", "00_tcc_packs")  # fmt: skip
"""Every CSV a report reads."""


def build_report(model: str, figures_dir: str | Path | None = None) -> str:
    """The results report of ``model`` from the CSVs in ``figures_dir`` (default: its committed figures,
    :func:`goc_utils.paths.model_figures_dir`): markdown text, the same bytes for the same folder contents.

    Raises :class:`InvalidArgumentError` when the folder holds none of the CSVs a report reads.
    """
    folder = Path(figures_dir) if figures_dir is not None else paths.model_figures_dir(model)
    f = _Folder(model, folder)
    if not any(f.has(f"{name}.csv") for name in CSV_NAMES):
        raise InvalidArgumentError(
            f"{str(folder)!r} holds none of the result tables of a report ({', '.join(CSV_NAMES[:3])}, ...); "
            f"make them first (make study{f.tier.suffix}, make eval{f.tier.suffix}) or name the folder that has them"
        )
    blocks = _header(f)
    for section in SECTIONS:
        blocks += section(f)
    return "\n\n".join(blocks) + "\n"


def write_report(model: str, figures_dir: str | Path | None = None) -> Path:
    """Write :func:`build_report` to ``<figures_dir>/README.md`` atomically and return its path."""
    folder = Path(figures_dir) if figures_dir is not None else paths.model_figures_dir(model)
    return atomic_write_text(folder / REPORT_NAME, build_report(model, folder))
