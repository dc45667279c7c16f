"""``goc priors`` (block-feature statistics of un-cached sampling), ``goc inflections`` (automatic GOC) and
``goc tcc-pack`` (TCC's calibrated maps from same-noise un-cached and cached sampling)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from goc_utils.cache import build_schedule
from goc_utils.cache.l2c import default_router
from goc_utils.cache.options import parse_int_list
from goc_utils.cache.tcc import POOLINGS, PUBLISHED_ALPHA, SVD_DRIVERS, VARIANTS, default_pack_path
from goc_utils.cli.common import (
    add_model_arguments,
    add_router_arguments,
    add_sampling_arguments,
    add_threads_argument,
    check_writable,
    number,
    weight,
)
from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.files import input_file, output_lock
from goc_utils.model.checkpoints import load_model, resolve_device
from goc_utils.model.sampler import parse_classes
from goc_utils.priors.auto import GRANULARITIES, auto_goc
from goc_utils.priors.extraction import extract_priors
from goc_utils.priors.stats import GRAM_SOURCES, MISSING, PriorsError, PriorStats, default_priors_path
from goc_utils.priors.tcc_fit import fit_tcc_pack


def _model_and_classes(args: argparse.Namespace, device: str):
    """The model of ``--model`` / ``--ckpt`` in eval mode, no gradients, ``--threads`` set, and the ``--classes``."""
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, args.ckpt, args.image_size, device)
    return model, list(range(model.num_classes)) if args.classes == "all" else parse_classes(args.classes)


def cmd_priors(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if args.merge:
        if out is None:
            raise InvalidArgumentError("--merge needs --out PATH for the merged file")
        check_writable(out, "--out")
        shards = [input_file(p, "--merge file", MISSING, error=PriorsError) for p in args.merge]
        for i, shard in enumerate(shards):
            twin = next((other for other in shards[:i] if os.path.samefile(other, shard)), None)
            if twin is not None:
                raise InvalidArgumentError(
                    f"--merge lists the file {shorten(twin)!r} twice"
                    + ("" if str(twin) == str(shard) else f" (also as {shorten(shard)!r})")
                    + "; each shard once, or its samples would be counted twice"
                )
        with output_lock(out):
            stats = PriorStats.load(shards[0])
            for other in shards[1:]:
                stats.merge(PriorStats.load(other))
            stats.save(out)
        print(f"merged {len(args.merge)} files ({stats.count} samples) -> {out}")
        return 0
    out = check_writable(out or default_priors_path(args.model, args.steps, args.cfg_scale), "--out")
    if args.per_class < 1:
        raise InvalidArgumentError(f"--per-class must be >= 1 (got {args.per_class})")
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
    p.add_argument("--classes", default="all", help="all | 0-99 | 3,5 (default all)")
    p.add_argument("--per-class", type=int, default=1, help="samples (seeds 0..K-1) per class (default 1)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per sampling batch (default 16)")
    p.add_argument("--out", default=None, help="priors file (default data/priors/<model>_ddim<steps>_cfg<cfg>...)")
    p.add_argument("--merge", nargs="+", default=None, metavar="FILE", help="merge shard files into --out instead")
    p.add_argument(
        "--checkpoint-seconds",
        type=number,
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
    p.add_argument("priors", help="priors file from `goc priors`")
    p.add_argument("--schedule", choices=["fora-25", "fora-50", "l2c"], default="fora-50", help="host schedule")
    add_router_arguments(p)
    p.add_argument("--weight", type=weight, default=None, help="w, or auto (least squares); default the paper's")
    p.add_argument(
        "--source",
        choices=list(GRAM_SOURCES),
        default=None,
        help="replay on the per-sample trajectories (default when the file has them) or on the class-averaged "
        "mean trajectory (the paper's prior knowledge)",
    )
    p.add_argument(
        "--granularity",
        choices=list(GRANULARITIES),
        default="global",
        help="auto weight: one w, one per step, or one per unit (default global)",
    )
    p.add_argument(
        "--coupling",
        choices=["block", "unit"],
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
        started = time.perf_counter()
        pack = fit_tcc_pack(
            model,
            args.model,
            args.host,
            classes,
            args.per_class,
            steps=args.steps,
            cfg_scale=args.cfg_scale,
            seed=args.seed,
            targets=args.target_steps,
            alpha=args.alpha,
            pooling=args.pooling,
            variant=args.variant,
            svd=args.svd,
            batch_size=args.batch_size,
            router=args.router or default_router(args.model, args.steps),
            thres=args.router_thres,
        )
        pack.save(out)
    ranks = pack.rank.flatten().tolist()
    print(
        f"TCC pack for {args.host} ({args.model}, DDIM-{args.steps}, cfg {args.cfg_scale:g}, {args.pooling} pooling, "
        f"{pack.samples} samples) at steps {','.join(map(str, pack.targets))}; rank of M {min(ranks)}..{max(ranks)} "
        f"of {pack.hidden}; {time.perf_counter() - started:.1f} s -> {out}"
    )
    return 0


def add_tcc_pack(p: argparse.ArgumentParser) -> None:
    """Fit TCC's calibrated maps for a host schedule from same-noise un-cached and cached sampling (streaming;
    targets in order, each replayed with the earlier corrections)."""
    add_model_arguments(p, vae=False)
    add_sampling_arguments(p, cfg_scale=1.5, seed_help="noise seed of the fit (default 1: not the eval noise, 0)")
    p.set_defaults(seed=1)
    p.add_argument("--host", default="fora-50", help="host schedule: fora-50, fora-25, l2c, ... (default fora-50)")
    add_router_arguments(p, help_extra=" (default: the tiny tier's committed router)")
    p.add_argument("--classes", default="all", help="all | 0-99 | 3,5 (default all)")
    p.add_argument("--per-class", type=int, default=32, help="samples per class (default 32; published: 100)")
    p.add_argument(
        "--target-steps",
        type=parse_int_list,
        default=None,
        help="corrected steps, e.g. 1,3,5,7 (default: the host's reuse steps in 1..7, the published DDIM-20 window)",
    )
    p.add_argument(
        "--alpha", type=number, default=PUBLISHED_ALPHA, help="strength of earlier targets' corrections in the replay"
    )
    p.add_argument("--pooling", choices=POOLINGS, default="class", help="fit points (default class, as published)")
    p.add_argument("--variant", choices=VARIANTS, default="full", help="map family (default full: similarity)")
    p.add_argument("--svd", choices=SVD_DRIVERS, default="gesdd", help="LAPACK driver of the Procrustes SVD")
    p.add_argument("--batch-size", type=int, default=64, help="samples per sampling batch (default 64)")
    p.add_argument(
        "--out",
        default=None,
        help="pack file (default data/tcc/<model>_ddim<steps>_cfg<cfg>_<host>[_<pooling>].safetensors)",
    )
    add_threads_argument(p)
    p.set_defaults(func=cmd_tcc_pack)
