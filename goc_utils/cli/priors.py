"""``goc priors`` (block-feature statistics of un-cached sampling), ``goc inflections`` (automatic GOC) and
``goc tcc-pack`` (TCC's calibrated maps from same-noise un-cached and cached sampling)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from goc_utils.cache import CacheMethod, Resources, build_schedule
from goc_utils.cache.l2c import default_router
from goc_utils.cache.options import parse_int_list
from goc_utils.cache.tcc import (
    POOLINGS,
    PUBLISHED_ALPHA,
    SVD_DRIVERS,
    VARIANTS,
    TCCPack,
    default_pack_path,
    pack_summary,
)
from goc_utils.cli.common import (
    PRIORS,
    add_model_arguments,
    add_router_arguments,
    add_sampling_arguments,
    add_threads_argument,
)
from goc_utils.cli.kinds import (
    Batch,
    Choice,
    ClassList,
    InputFiles,
    Integer,
    Method,
    Number,
    NumberList,
    OutputPath,
    Preset,
    Seed,
    Weight,
    add_option,
    check_writable,
)
from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.evaluation.tables import markdown_table, write_table
from goc_utils.evaluation.tcc_alpha import HOLDOUT_SEED, Holdout, choose_tcc_alpha
from goc_utils.files import output_lock
from goc_utils.model.checkpoints import load_model, resolve_device
from goc_utils.model.presets import preset_info
from goc_utils.model.vae import load_vae, vae_spec
from goc_utils.priors.auto import GRANULARITIES, auto_goc
from goc_utils.priors.extraction import extract_priors
from goc_utils.priors.stats import GRAM_SOURCES, MISSING, PriorStats, default_priors_path
from goc_utils.priors.tcc_fit import TCCFit, fit_tcc_pack, host_method


def plain_schedule(text: str) -> CacheMethod:
    """``--host``: a method string without a compensator (the pack is fitted for the schedule's stale outputs)."""
    method = CacheMethod.parse(text)
    if method.compensator != "none":
        raise InvalidArgumentError(
            f"--host {shorten(text)!r} must be a plain schedule (fora-50, l2c, ...): the pack is fitted for its stale "
            "outputs"
        )
    return method


def _model_and_classes(args: argparse.Namespace, device: str):
    """The model of ``--model`` / ``--ckpt`` in eval mode, no gradients, ``--threads`` set, and the ``--classes``."""
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, args.ckpt, args.image_size, device)
    return model, list(range(model.num_classes)) if args.classes == "all" else args.classes


def cmd_priors(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if args.merge:
        if out is None:
            raise InvalidArgumentError("--merge needs --out PATH for the merged file")
        check_writable(out, "--out")
        shards = [Path(p) for p in args.merge]
        with output_lock(out):
            stats = PriorStats.load(shards[0])
            for other in shards[1:]:
                stats.merge(PriorStats.load(other))
            stats.save(out)
        print(f"merged {len(args.merge)} files ({stats.count} samples) -> {out}")
        return 0
    out = check_writable(out or default_priors_path(args.model, args.steps, args.cfg_scale), "--out")
    device = resolve_device(args.device)
    with output_lock(out):
        model, classes = _model_and_classes(args, device)
        started = time.perf_counter()
        checkpoint = out.with_name(out.name + ".partial")
        stats = extract_priors(
            model,
            args.model,
            classes,
            seeds=range(args.per_class),
            steps=args.steps,
            cfg_scale=args.cfg_scale,
            batch_size=args.batch_size,
            checkpoint=checkpoint,
            checkpoint_seconds=args.checkpoint_seconds,
        )
        stats.save(out)
        checkpoint.unlink(missing_ok=True)
    print(
        f"priors of {stats.count} samples ({args.model}, DDIM-{args.steps}, cfg {args.cfg_scale:g}) in "
        f"{time.perf_counter() - started:.1f} s -> {out}"
    )
    return 0


def add_priors(p: argparse.ArgumentParser) -> None:
    """Un-cached sampling per (class, seed), statistics accumulated on the fly."""
    add_model_arguments(p, vae=False)
    add_sampling_arguments(p, seed_help=None)
    add_option(p, "--classes", ClassList(everything=True), default="all", help="all | 0-99 | 3,5 (default all)")
    add_option(p, "--per-class", Integer(1), default=1, help="samples (seeds 0..K-1) per class (default 1)")
    add_option(p, "--batch-size", Batch(), default=16, help="samples per sampling batch (default 16)")
    add_option(
        p, "--out", OutputPath(), default=None, help="priors file (default data/priors/<model>_ddim<steps>_cfg<cfg>...)"
    )
    add_option(
        p, "--merge", InputFiles("--merge file", MISSING, "safetensors"), nargs="+", default=None, metavar="FILE",
        help="merge shard files into --out instead",
    )  # fmt: skip
    add_option(
        p,
        "--checkpoint-seconds",
        Number(0),
        default=300.0,
        help="save progress to OUT.partial at most this often; a rerun resumes from it (default 300)",
    )
    add_threads_argument(p)
    p.set_defaults(func=cmd_priors)


def cmd_inflections(args: argparse.Namespace) -> int:
    stats = PriorStats.load(args.priors)
    router = args.router or default_router(stats.model, stats.steps)  # the tiny tiers' committed routers
    options = {"router": router, "thres": args.router_thres} if args.schedule == "l2c" else {}
    schedule = build_schedule(args.schedule, stats.steps, stats.depth, **options)
    w = schedule.reference_weight if args.weight is None else args.weight
    auto = auto_goc(stats, schedule, "auto", w, args.coupling, args.granularity, args.source)
    print(
        f"priors: {stats.model}, DDIM-{stats.steps}, cfg {stats.cfg_scale:g}, {stats.count} samples; "
        f"schedule {schedule.name} (reuses at steps {schedule.reuse_steps()}); {auto.coupling} coupling; "
        "replayed on the "
        + ("per-sample trajectories" if auto.source == "samples" else "class-averaged mean trajectory")
    )
    print(f"correction steps: {','.join(map(str, auto.steps)) or '(none)'}")
    print(f"inflection steps (correction skipped): {','.join(map(str, auto.inflections)) or '(none)'}")
    if isinstance(auto.weight, np.ndarray):
        aw = auto.weight
        per_step = {s: round(float(aw[s][aw[s] != 0].mean()), 3) for s in auto.steps if (aw[s] != 0).any()}
        print(f"weight ({args.granularity}): mean per step {per_step}")
    else:
        print(f"weight: {auto.weight:.4f}" + (" (least squares)" if args.weight == "auto" else ""))
    plain = auto.error_plain
    print(
        f"predicted error (MACs-weighted relative L2, summed over reused units): plain reuse {plain:.3f} -> "
        f"GOC {auto.error_auto:.3f} ({_change(auto.error_auto, plain)})"
    )
    if schedule.reference_correction_steps is not None:
        print(
            f"paper's hand-set steps {','.join(map(str, schedule.reference_correction_steps))} with "
            f"w={schedule.reference_weight}: GOC {auto.error_paper:.3f} ({_change(auto.error_paper, plain)})"
        )
    return 0


def _change(error: float, plain: float) -> str:
    """``error`` relative to plain reuse's, as a signed percentage (a schedule that reuses nothing has no error)."""
    return f"{100 * (error / plain - 1):+.1f}%" if plain > 0 else "nothing is reused, so nothing to correct"


def add_inflections(p: argparse.ArgumentParser) -> None:
    """Replay GOC on the prior trajectory: correction steps, weight, predicted error."""
    add_option(p, "priors", PRIORS, help="priors file from `goc priors`")
    add_option(p, "--schedule", Choice(["fora-25", "fora-50", "l2c"]), default="fora-50", help="host schedule")
    add_router_arguments(p)
    add_option(p, "--weight", Weight(), default=None, help="w, or auto (least squares); default the paper's")
    add_option(
        p,
        "--source",
        Choice(GRAM_SOURCES),
        default=None,
        help="replay on the per-sample trajectories (default when the file has them) or on the class-averaged "
        "mean trajectory (the paper's prior knowledge)",
    )
    add_option(
        p,
        "--granularity",
        Choice(GRANULARITIES),
        default="global",
        help="auto weight: one w, one per step, or one per unit (default global)",
    )
    add_option(
        p,
        "--coupling",
        Choice(["block", "unit"]),
        default="block",
        help="GOC corrects a unit only when its whole block is reused (block, published) or each unit on its own",
    )
    p.set_defaults(func=cmd_inflections)


def cmd_tcc_pack(args: argparse.Namespace) -> int:
    host = args.host.split(":")[0].split("@")[0]
    out = args.out or default_pack_path(args.model, args.steps, args.cfg_scale, host, args.pooling)
    out = check_writable(Path(out), "--out")
    device = resolve_device(args.device)
    with output_lock(out):
        model, classes = _model_and_classes(args, device)
        fit = TCCFit(
            args.model, classes, args.per_class, args.steps, args.cfg_scale, args.seed, args.target_steps,
            args.alpha[0], args.pooling, args.variant, args.svd, args.batch_size,
        )  # fmt: skip
        resources = Resources(args.router or default_router(args.model, args.steps), args.router_thres)
        host = host_method(model, args.host, fit, resources)  # resolved once, before any fitting
        started = time.perf_counter()
        if len(args.alpha) == 1:
            pack = fit_tcc_pack(model, host, fit)
        else:
            info = preset_info(args.model)
            vae = load_vae(vae_spec(None, args.ckpt, args.model), device, args.model) if info.latent else None
            holdout = Holdout(args.holdout_per_class, args.holdout_seed)
            choice = choose_tcc_alpha(model, host, args.alpha, fit, vae=vae, holdout=holdout)
            held = len(classes) * args.holdout_per_class
            pack = replace(choice.pack, alpha_choice={
                "holdout_seed": args.holdout_seed, "holdout_samples": held, "host_psnr_db": round(choice.host_psnr, 2),
                "psnr_db": {f"{a:g}": round(v, 2) for a, v in choice.psnr.items()},
            })  # fmt: skip
            print(f"alpha on {held} held-out samples (noise seed {args.holdout_seed}), PSNR vs un-cached: "
                  + ", ".join(f"{a:g}: {v:.2f} dB" for a, v in choice.psnr.items())
                  + f" (plain {args.host}: {choice.host_psnr:.2f} dB); chosen {choice.alpha:g}")  # fmt: skip
        pack.save(out)
    ranks, traces = pack.rank.flatten(), pack.trace_ratio().flatten()
    print(
        f"TCC pack for {args.host} ({args.model}, DDIM-{args.steps}, cfg {args.cfg_scale:g}, {args.pooling} pooling, "
        f"{pack.samples} samples, alpha {pack.fit_alpha:g}) at steps {','.join(map(str, pack.targets))}; "
        f"rank of M {int(ranks.min())}..{int(ranks.max())} of {pack.hidden}, trace(R)/D "
        f"{float(traces.min()):.3f}..{float(traces.max()):.3f}; {time.perf_counter() - started:.1f} s -> {out}"
    )
    deficient = int((ranks < pack.hidden).sum())
    if deficient:
        print(
            f"goc tcc-pack: warning: M is below full rank ({pack.hidden}) in {deficient} of {len(ranks)} maps, so R is "
            "partly the SVD's choice there; fit more points than the width (--pooling sample with more samples than "
            "it, or --pooling token)",
            file=sys.stderr,
        )
    return 0


def cmd_tcc_packs(args: argparse.Namespace) -> int:
    slug = args.model.replace("/", "-")
    folder = default_pack_path(args.model, 20, 1.0, "x").parent
    files = sorted(folder.glob(f"{slug}_*.safetensors"))
    if not files:
        raise InvalidArgumentError(f"no TCC pack of {args.model} in {shorten(folder)}; fit one with `goc tcc-pack`")
    table = check_writable(Path(args.table + ".csv"), "--table") if args.table else None
    rows = [pack_summary(TCCPack.load(f), f.name) for f in files]
    print(markdown_table(rows), end="")
    if table is not None:
        print(f"-> {write_table(rows, table.stem, table.parent)}")
    return 0


def add_tcc_packs(p: argparse.ArgumentParser) -> None:
    """The committed TCC packs of a model (data/tcc/): host, cfg, pooling, samples, the rank of M, trace(R)/D and how
    alpha was chosen."""
    add_option(p, "--model", Preset(), default="tiny-fashion", help="preset whose packs to list (default tiny-fashion)")
    add_option(
        p, "--table", OutputPath(suffixes=(".csv", ".md")), default=None,
        help="also write PREFIX.csv and PREFIX.md (e.g. figures/00_tcc_packs)",
    )  # fmt: skip
    p.set_defaults(func=cmd_tcc_packs)


def add_tcc_pack(p: argparse.ArgumentParser) -> None:
    """Fit TCC's calibrated maps for a host schedule from same-noise un-cached and cached sampling (streaming;
    targets in order, each replayed with the earlier corrections)."""
    add_model_arguments(p, vae=False)
    add_sampling_arguments(p, cfg_scale=1.5, seed_help="noise seed of the fit (default 1: not the eval noise, 0)")
    p.set_defaults(seed=1)
    add_option(
        p, "--host", Method(plain_schedule), default="fora-50",
        help="host schedule: fora-50, fora-25, l2c, ... (default fora-50)",
    )  # fmt: skip
    add_router_arguments(p, help_extra=" (default: the tiny tier's committed router)")
    add_option(p, "--classes", ClassList(everything=True), default="all", help="all | 0-99 | 3,5 (default all)")
    add_option(p, "--per-class", Integer(1), default=32, help="samples per class (default 32; published: 100)")
    add_option(
        p,
        "--target-steps",
        NumberList(int, "step list", "1,3,5,7", minimum=0, read=parse_int_list),
        default=None,
        help="corrected steps, e.g. 1,3,5,7 (default: the host's reuse steps in 1..7, the published DDIM-20 window)",
    )
    add_option(
        p,
        "--alpha",
        NumberList(float, "--alpha", "1.75 or 0.25,0.5,1,1.75", minimum=0, above=True),
        default=[PUBLISHED_ALPHA],
        help="the alpha the pack is used with (its replay applies the earlier targets' maps at it; default 1.75, "
        "the published DiT scripts'); several (0.25,0.5,1,1.75): fit one pack per alpha and keep the best on "
        "held-out noise",
    )
    add_option(
        p,
        "--holdout-per-class",
        Integer(1),
        default=10,
        help="held-out samples per class that choose among several --alpha (default 10)",
    )
    add_option(
        p,
        "--holdout-seed",
        Seed(),
        default=HOLDOUT_SEED,
        help=f"noise seed of the held-out samples (default {HOLDOUT_SEED}: neither the fit's nor the evaluation's)",
    )
    add_option(
        p,
        "--pooling",
        Choice(POOLINGS),
        default="class",
        help="fit points: class (one mean per class: the published DiT scripts, the default), sample (one token "
        "mean per sample: the published PixArt / ToCa collector) or token (every token)",
    )
    add_option(p, "--variant", Choice(VARIANTS), default="full", help="map family (default full: similarity)")
    add_option(p, "--svd", Choice(SVD_DRIVERS), default="gesdd", help="LAPACK driver of the Procrustes SVD")
    add_option(p, "--batch-size", Batch(), default=64, help="samples per sampling batch (default 64)")
    add_option(
        p,
        "--out",
        OutputPath(),
        default=None,
        help="pack file (default data/tcc/<model>_ddim<steps>_cfg<cfg>_<host>[_<pooling>].safetensors)",
    )
    add_threads_argument(p)
    p.set_defaults(func=cmd_tcc_pack)
