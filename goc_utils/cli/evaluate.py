"""``goc eval-sample``, ``goc fid``, ``goc eval``, ``goc compare`` and ``goc verdicts``: the ADM evaluation harness."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from goc_utils.cache.l2c import default_router
from goc_utils.cli.common import (
    add_backend_argument,
    add_device_argument,
    add_model_arguments,
    add_priors_argument,
    add_router_arguments,
    add_sampling_arguments,
    add_tcc_pack_argument,
    add_tf32_argument,
    add_threads_argument,
)
from goc_utils.cli.kinds import (
    Batch,
    Choice,
    Flag,
    InputPath,
    Integer,
    Kind,
    Method,
    Number,
    NumberList,
    OutputPath,
    Preset,
    Seed,
    add_option,
    check_writable,
)
from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.evaluation.eval import (
    TABLE_METHODS,
    EvalSettings,
    Scoring,
    eval_sample,
    format_results,
    init_distributed,
    parse_methods,
    run_eval,
    write_results,
)
from goc_utils.evaluation.metrics.adm import MIN_SAMPLES
from goc_utils.evaluation.metrics.batches import batch_features, batch_info, check_same_size
from goc_utils.evaluation.metrics.evaluate import evaluate_batches
from goc_utils.evaluation.metrics.features import (
    FEATURE_EXTRACTORS,
    build_extractor,
    default_features,
    default_reference,
)
from goc_utils.evaluation.metrics.fidelity import paired_psnr_difference
from goc_utils.evaluation.sampling import check_space
from goc_utils.evaluation.tables import markdown_table, write_table
from goc_utils.evaluation.verdicts import MAX_RESAMPLES, check_same_noise, verdict_rows
from goc_utils.integrations.diffusers.peers import diffusers_backend
from goc_utils.model.checkpoints import load_model, resolve_device
from goc_utils.model.presets import preset_info, smallest_image_shape
from goc_utils.model.sampler import image_shape, set_tf32
from goc_utils.model.vae import load_vae, vae_spec

METHOD_HELP = (
    "Method strings: schedule[:option...][+compensator[:option...]], e.g. none, fora-50, fora:interval=3, "
    "l2c (router from --router) or l2c:router=PATH:thres=0.1, each optionally +goc (the paper's w and steps; "
    "goc:w=0.8, goc:steps=auto, goc:auto = inflection-aware steps and least-squares w from priors, "
    "goc:coupling=unit) or +taylor (taylor:k=2). With --backend diffusers also diffusers' own caches: "
    "diffusers:taylorseer, diffusers:fbc, diffusers:magcache, diffusers:pab, diffusers:fastercache, options as "
    "their config fields (diffusers:fbc:threshold=0.05; ranges lo..hi), and cache-dit's DBCache (extra .[peers]): "
    "cachedit:dbcache:fn=1:bn=0:threshold=0.08:warmup=4[:calibrator=taylorseer|foca|dmd][:separate_cfg=true]."
)


BATCH_FIX = "make samples with `goc eval-sample` or pass a reference batch (.npz) as {flag}"
REF_BATCH = InputPath("batch file", BATCH_FIX, "npz")
INCEPTION_WEIGHTS = InputPath(
    "Inception weights", "pass {flag} PATH to weights-inception-2015-12-05-6726825d.pth", "torch"
)
ONE_METHOD = Method(lambda text: parse_methods(text, single=True))
METHODS = Method(parse_methods, several=True, example="none,fora-50")
CFG_LIST = NumberList(float, "cfg list", "1.5 or 1.5,4.0", minimum=0)
RESAMPLES = Integer(2, MAX_RESAMPLES)
TABLE = OutputPath(suffixes=(".csv", ".md"))


def samples_of(what: str) -> InputPath:
    """The samples of a method: an ADM batch .npz or a goc eval method folder holding ``samples.npz``."""
    return InputPath(
        what,
        "pass an ADM batch .npz or a goc eval method folder holding samples.npz",
        "npz",
        folder=None,
        holds="samples.npz",
    )


def _eval_settings(args: argparse.Namespace, cfg_scale: float) -> EvalSettings:
    return EvalSettings(
        model=args.model,
        ckpt=args.ckpt,
        image_size=args.image_size,
        vae=vae_spec(args.vae, args.ckpt, args.model),
        steps=args.steps,
        sampler=args.sampler,
        cfg_scale=cfg_scale,
        seed=args.seed,
        per_device_batch=args.per_device_batch,
        router=args.router or default_router(args.model, args.steps),
        thres=args.router_thres,
        priors=args.priors,
        tcc_pack=args.tcc_pack,
        backend=args.backend,
        compile=args.compile,
    )


def _load_for_eval(args: argparse.Namespace, settings: EvalSettings):
    """Model, VAE, process group and the settings with the effective TF32 for the sampling commands (CPU threads
    and TF32 applied before anything runs)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    dist = init_distributed(resolve_device(args.device))
    settings = replace(settings, tf32=set_tf32(dist.device, args.tf32))
    torch.set_grad_enabled(False)
    model = load_model(args.model, args.ckpt, args.image_size, dist.device)
    if args.backend == "diffusers":
        model = diffusers_backend(model)
    latent = preset_info(args.model).latent
    vae = load_vae(vae_spec(args.vae, args.ckpt, args.model), dist.device, args.model) if latent else None
    return model, vae, dist, settings


def _add_eval_sampling_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_sampling_arguments(p, cfg_scale=None, seed_help="run seed; sample i is seeded from (seed, i) (default 0)")
    add_option(
        p, "--num-samples", Integer(1, what="--num-samples"), default=50000, help="images per method (default 50000)"
    )
    add_option(
        p, "--per-device-batch", Batch("num_samples"), default=32, help="images per forward and per shard (default 32)"
    )
    add_option(p, "--sampler", Choice(["ddim", "ddpm"]), default="ddim", help="ddim (eta 0) or ddpm (default ddim)")
    add_router_arguments(p, help_extra=" (default: the tiny tier's committed router)")
    add_priors_argument(p)
    add_tcc_pack_argument(p)
    add_backend_argument(p)
    add_threads_argument(p)
    add_tf32_argument(p)
    add_option(
        p,
        "--compile",
        Flag(),
        help="run our methods' model calls as compiled graphs, one torch.compile graph per step pattern (equal to "
        "eager to float tolerance; recorded in run.json)",
    )


def cmd_eval_sample(args: argparse.Namespace) -> int:
    (method,) = parse_methods(args.method, single=True, steps=args.steps, cfg_scales=[args.cfg_scale])
    # --out was probed (its kind) and is created when sampling starts: a refusal leaves no folder behind
    shape, _ = smallest_image_shape(args.model, args.image_size)  # before loading; exact once loaded
    check_space(Path(args.out), args.num_samples, args.per_device_batch, shape)
    model, vae, dist, settings = _load_for_eval(args, _eval_settings(args, args.cfg_scale))
    (resolved,) = settings.resolve(model, [method])  # every resource found and checked, before any sampling
    started = time.perf_counter()
    path = eval_sample(model, settings, resolved, Path(args.out), args.num_samples, vae, dist)
    if dist.rank == 0:
        print(
            f"{args.num_samples} samples ({method}, cfg {settings.cfg_scale:g}) "
            f"in {time.perf_counter() - started:.1f} s -> {path}"
        )
    dist.close()
    return 0


def add_eval_sample(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Sample --num-samples images into OUT/samples.npz (arr_0 uint8 NHWC, arr_1 labels). Shards are "
        "written atomically to OUT/shards/; rerunning the same command resumes. Labels are uniform over the classes "
        "and every sample has its own seed, so the result does not depend on the number of processes. "
        "Multi-GPU: torchrun --nproc_per_node K -m goc_utils.cli eval-sample ... " + METHOD_HELP
    )
    _add_eval_sampling_arguments(p)
    add_option(p, "--method", ONE_METHOD, default="none", help="one method string (default none); see the description")
    add_option(p, "--cfg-scale", Number(0), default=1.5, help="guidance scale (default 1.5, DiT's FID setting)")
    add_option(
        p, "--out", OutputPath(folder=True), required=True,
        help="output folder (created; holds run.json, shards/, samples.npz)",
    )  # fmt: skip
    p.set_defaults(func=cmd_eval_sample)


def _add_feature_arguments(p: argparse.ArgumentParser, default: str | None, default_help: str) -> None:
    add_option(
        p,
        "--features",
        Choice(FEATURE_EXTRACTORS),
        default=default,
        help=f"feature extractor: inception (ImageNet, ADM evaluator), digits or fashion (the tiny tiers' judges) "
        f"(default: {default_help})",
    )
    add_option(
        p,
        "--inception-weights",
        INCEPTION_WEIGHTS,
        default=None,
        help="local weights-inception-2015-12-05-6726825d.pth (or set GOC_INCEPTION_WEIGHTS)",
    )


def cmd_fid(args: argparse.Namespace) -> int:
    check_same_size(batch_info(args.ref), batch_info(args.samples))  # from the headers, before loading features
    features = args.features or batch_features(args.ref) or "inception"
    extractor = build_extractor(features, resolve_device(args.device), args.inception_weights)
    print(evaluate_batches(args.ref, args.samples, extractor, pr_precision=args.pr_precision).report())
    return 0


def add_fid(p: argparse.ArgumentParser) -> None:
    """The ADM evaluator's numbers for two ADM-format batches (arr_0 uint8 NHWC)."""
    add_option(
        p, "ref", InputPath("batch file", BATCH_FIX, "npz"),
        help="reference batch, e.g. VIRTUAL_imagenet256_labeled.npz or data/reference/digits_ref.npz",
    )  # fmt: skip
    add_option(
        p, "samples", InputPath("batch file", BATCH_FIX, "npz"),
        help="sample batch (goc eval-sample's samples.npz)",
    )  # fmt: skip
    _add_feature_arguments(p, None, "the features the reference batch was made with, else inception")
    add_option(
        p,
        "--pr-precision",
        Choice(["float16", "float32"]),
        default="float16",
        help="k-NN distances of precision / recall: float16-rounded like the ADM evaluator (default) or float32",
    )
    add_device_argument(p)
    p.set_defaults(func=cmd_fid)


def cmd_eval(args: argparse.Namespace) -> int:
    if args.num_samples < MIN_SAMPLES:
        raise InvalidArgumentError(
            f"--num-samples {args.num_samples}: scoring needs at least {MIN_SAMPLES} samples per method "
            f"(precision / recall's nearest neighbours); give --num-samples {MIN_SAMPLES} or more"
        )
    methods = parse_methods(args.methods, steps=args.steps, cfg_scales=args.cfg_scale)
    features = args.features or default_features(args.model)
    ref = args.ref_batch or (str(default_reference(features) or "") or None)
    if ref is None:
        raise InvalidArgumentError(
            "--ref-batch is required for Inception features: the ADM reference batch, "
            "e.g. VIRTUAL_imagenet256_labeled.npz"
        )
    batch_info(ref)  # --out was probed (its kind): it is created when the first run starts sampling
    table = Path(args.table) if args.table else Path(args.out) / "results"
    for suffix in (".csv", ".md"):  # before any sampling: a table that cannot be written fails now
        check_writable(table.with_name(table.name + suffix), "--table")
    runs = f"--num-samples {args.num_samples} x {len(methods)} method(s) x {len(args.cfg_scale)} cfg scale(s)"
    space = (Path(args.out), args.num_samples, args.per_device_batch)
    count = len(methods) * len(args.cfg_scale)
    check_space(*space, smallest_image_shape(args.model, args.image_size)[0], count, runs)  # before loading
    model, vae, dist, settings = _load_for_eval(args, _eval_settings(args, args.cfg_scale[0]))
    check_space(*space, image_shape(model, vae), count, runs)  # the VAE's channels known
    runs = {cfg: replace(settings, cfg_scale=cfg) for cfg in args.cfg_scale}
    resolved = {cfg: run.resolve(model, methods) for cfg, run in runs.items()}  # all, before any sampling
    extractor = build_extractor(features, dist.device, args.inception_weights) if dist.rank == 0 else None
    scoring = Scoring(ref, extractor, args.latency_batch, args.latency_repeats, args.fid_bootstrap)
    rows = []
    for cfg, run in runs.items():
        out = Path(args.out) / f"cfg{cfg:g}"
        rows += run_eval(model, run, resolved[cfg], args.num_samples, out, scoring, vae, dist) or []
    if dist.rank == 0:
        csv_path, md_path = write_results(rows, table.parent, table.name)
        print(format_results(rows))
        print(f"-> {csv_path}, {md_path}")
    dist.close()
    return 0


def add_eval(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run goc eval-sample for each method and cfg scale (resumable, torchrun), then score every batch "
        "against the reference with the ADM metrics, compare with the un-cached samples of the same noise, time "
        "one batch per method and write OUT/results.csv and .md. " + METHOD_HELP
    )
    _add_eval_sampling_arguments(p)
    add_option(
        p, "--methods", METHODS, default=",".join(TABLE_METHODS),
        help=f"comma-separated (default {','.join(TABLE_METHODS)})",
    )  # fmt: skip
    add_option(p, "--cfg-scale", CFG_LIST, default=[1.5], help="guidance scale(s), e.g. 1.5,4.0 (default 1.5)")
    add_option(
        p,
        "--ref-batch",
        REF_BATCH,
        default=None,
        help="ADM reference npz (default for the tiny tiers: data/reference/digits_ref.npz, fashion_test_ref.npz)",
    )
    _add_feature_arguments(p, None, "digits for tiny-digits, fashion for tiny-fashion, else inception")
    add_option(p, "--latency-batch", Batch(), default=8, help="images per timed batch (default 8)")
    add_option(p, "--latency-repeats", Integer(1), default=3, help="timed runs per method (default 3)")
    add_option(
        p,
        "--fid-bootstrap",
        Integer(2, MAX_RESAMPLES, off=True),
        default=0,
        help="also report FID's bootstrap std over N >= 2 resamples (default 0: off)",
    )
    add_option(
        p, "--out", OutputPath(folder=True), required=True,
        help="folder for the samples (OUT/cfg<c>/<method>/) and results.*",
    )  # fmt: skip
    add_option(p, "--table", TABLE, default=None, help="path prefix of the table (default OUT/results -> .csv, .md)")
    p.set_defaults(func=cmd_eval)


def _samples_file(text: str) -> Path:
    """A batch file, or an eval folder (``OUT/cfg1.5/fora-50``) holding ``samples.npz``."""
    path = Path(text)
    return path / "samples.npz" if path.is_dir() else path


def _refuse_self_pair(flag: str, a: str, b: str, same: bool) -> None:
    """One line when the two sides of a comparison are one method (``verdicts``: the same method string; ``compare``:
    the same samples file)."""
    if same:
        raise InvalidArgumentError(
            f"{flag} {shorten(a, 60)} {shorten(b, 60)} compares a method with itself; pass two different methods"
        )


def _same_file(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and os.path.samefile(a, b)


def cmd_verdicts(args: argparse.Namespace) -> int:
    pairs = [tuple(pair) for pair in args.pair]
    for a, b in pairs:
        _refuse_self_pair("--pair", a, b, a == b)
    repeated = next((pair for i, pair in enumerate(pairs) if pair in pairs[:i] or pair[::-1] in pairs[:i]), None)
    if repeated is not None:
        raise InvalidArgumentError(f"--pair {' '.join(repeated)} is given twice; give each pair once")
    table = Path(args.table) if args.table else None
    if table is not None:  # both files of the table, probed before any work
        for suffix in (".csv", ".md"):
            check_writable(table.with_name(table.name + suffix), "--table")
    features = args.features or default_features(args.model)
    ref = args.ref_batch or default_reference(features)
    if ref is None:
        raise InvalidArgumentError("--ref-batch is required with Inception features (VIRTUAL_imagenet256_labeled.npz)")
    batch_info(ref)
    extractor = build_extractor(features, resolve_device(args.device), args.inception_weights)
    rows = verdict_rows(args.run, pairs, args.cfg_scale, extractor, ref, args.resamples, args.seed)
    if table is not None:
        write_table(rows, table.name, table.parent)
    print(markdown_table(rows), end="")
    return 0


def add_verdicts(p: argparse.ArgumentParser) -> None:
    """The study's verdicts from a goc eval run: for each --pair A B and cfg scale, the paired PSNR difference
    against the un-cached samples and the paired FID difference against the reference, each with its paired
    bootstrap std (the same images resampled for both methods) and whether it is resolved (beyond 2 std). Nothing
    is sampled: run goc eval with the methods first."""
    add_option(
        p, "run", InputPath("eval run", "pass RUN, a goc eval --out folder", folder=True),
        help="a goc eval --out folder (holding cfg1.5/<method>/samples.npz)",
    )  # fmt: skip
    add_option(p, "--pair", Kind(), nargs=2, action="append", required=True, metavar=("A", "B"),
               help="two method strings of the run; repeat for more pairs")  # fmt: skip
    add_option(p, "--model", Preset(), default="tiny-fashion", help="preset whose judge gives the features (default "
               "tiny-fashion)")  # fmt: skip
    add_option(p, "--cfg-scale", CFG_LIST, default=[1.5], help="comma-separated cfg scales of the run (default 1.5)")
    add_option(p, "--features", Choice(FEATURE_EXTRACTORS), default=None,
               help="feature extractor (default: the model's judge, inception for DiT)")  # fmt: skip
    add_option(
        p, "--ref-batch", REF_BATCH, default=None, help="reference npz (default: the features' committed reference)"
    )
    add_option(
        p, "--inception-weights", INCEPTION_WEIGHTS, default=None,
        help="local FID Inception weights (inception features)",
    )  # fmt: skip
    add_device_argument(p, "auto | cpu | cuda (default auto)")
    add_option(p, "--resamples", RESAMPLES, default=200, help="bootstrap resamples (default 200)")
    add_option(p, "--seed", Seed(), default=0, help="seed of the resampling (default 0)")
    add_option(p, "--table", TABLE, default=None, help="path prefix of the table to write (.csv and .md)")
    p.set_defaults(func=cmd_verdicts)


def cmd_compare(args: argparse.Namespace) -> int:
    a, b, reference = _samples_file(args.a), _samples_file(args.b), _samples_file(args.reference)
    _refuse_self_pair("compare", args.a, args.b, _same_file(a, b))
    for name, path in (("A", a), ("B", b)):
        if _same_file(path, reference):
            raise InvalidArgumentError(
                f"--reference {shorten(args.reference, 60)} is {name}'s samples too; pass the un-cached samples of the "
                "same noise"
            )
    check_same_noise({"A": a, "B": b, "--reference": reference})
    result = paired_psnr_difference(a, b, reference, resamples=args.resamples, seed=args.seed)
    print(result.report(args.a, args.b))
    return 0


def add_compare(p: argparse.ArgumentParser) -> None:
    """Which of two cached methods stays closer to the un-cached samples of the same noise, and whether the
    sample count resolves it: each method's PSNR against the reference batch and the paired bootstrap standard
    deviation of the difference (the same images resampled for both). A and B: samples.npz files or goc eval's
    method folders (OUT/cfg1.5/fora-50+goc)."""
    add_option(
        p, "a", samples_of("samples of A"), help="samples of method A (npz, or an eval folder holding samples.npz)"
    )
    add_option(p, "b", samples_of("samples of B"), help="samples of method B, same noise and count")
    add_option(
        p, "--reference", samples_of("--reference samples"), required=True,
        help="the un-cached samples of the same noise (e.g. OUT/cfg1.5/none)",
    )  # fmt: skip
    add_option(p, "--resamples", RESAMPLES, default=200, help="bootstrap resamples (default 200)")
    add_option(p, "--seed", Seed(), default=0, help="seed of the resampling (default 0)")
    p.set_defaults(func=cmd_compare)
