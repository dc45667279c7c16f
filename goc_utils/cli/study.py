"""``goc tiny-report``, ``goc notebooks``, ``goc bench`` and ``goc report``: the study's reports and benchmarks."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch

from goc_utils import paths
from goc_utils.cache import Resources, RunShape, split_methods, without_router
from goc_utils.cache.l2c import default_router
from goc_utils.cli.common import (
    CHECKPOINT,
    add_backend_argument,
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
    Items,
    Method,
    NumberList,
    OutputPath,
    add_option,
    check_output_dir,
)
from goc_utils.errors import GocError, InvalidArgumentError
from goc_utils.evaluation.bench import DEFAULT_METHODS, BenchSetup, format_table, rows_as_dicts, run_bench
from goc_utils.evaluation.eval import parse_methods
from goc_utils.integrations.diffusers.peers import diffusers_backend, is_peer, parse_peer, resolve_any
from goc_utils.model.checkpoints import load_model, resolve_device
from goc_utils.model.presets import check_preset, create_model
from goc_utils.model.sampler import set_tf32
from goc_utils.priors.stats import priors_for_run
from goc_utils.study.notebooks import (
    DEFAULT_PRESET,
    PRESETS,
    check_parameters,
    figures_dir_for,
    for_selection,
    load_params_file,
    naming_params_file,
    preset_model,
    run_notebooks,
    smoke_mode,
    study_notebooks,
)
from goc_utils.study.report import REPORT_NAME, TIERS, build_report, write_report
from goc_utils.study.tier_report import check_fashion_tier_report, fashion_tier_report, report_inputs, tiny_report

FID_SAMPLES = [2000, 5000]
"""``tiny-report``'s default ``--fid-samples`` (tiny-fashion)."""


def cmd_tiny_report(args: argparse.Namespace) -> int:
    if args.fid_samples is not None and args.model != "tiny-fashion":
        raise InvalidArgumentError(f"--fid-samples is for tiny-fashion's tier report; {args.model} has none: drop it")
    counts = FID_SAMPLES if args.fid_samples is None else args.fid_samples
    report_inputs(args.model, args.per_class, args.ckpt)  # every input checked before a folder is made
    if args.model == "tiny-fashion":  # and its tier report's, before the samples' figures are written
        check_fashion_tier_report(counts)
    out_dir = Path(args.out_dir) if args.out_dir else paths.default_figures_dir(args.model)
    out_dir = check_output_dir(out_dir, "--out-dir")
    rows = tiny_report(args.model, per_class=args.per_class, steps=args.steps, seed=args.seed, ckpt=args.ckpt,
                       out_dir=out_dir)  # fmt: skip
    for r in rows:
        print(
            f"cfg {r.cfg_scale:g}: classifier agreement {100 * r.agreement:.1f}% on {r.samples} samples "
            f"({r.images_per_second:.0f} images/s)"
        )
    if args.model == "tiny-fashion":
        report = fashion_tier_report(counts, ckpt=args.ckpt, out_dir=out_dir)
        for quantity, value in report.items():
            print(f"{quantity}: {value}")
    return 0


def add_tiny_report(p: argparse.ArgumentParser) -> None:
    """Sample a tiny tier at cfg 1.5 and 4.0 and judge the samples with its classifier: writes
    figures/tiny-digits/00_tiny_samples.png and 00_tiny_agreement.md (tiny-digits) or figures/00_fashion_*
    (tiny-fashion)."""
    add_option(
        p, "--model", Choice(["tiny-digits", "tiny-fashion"]), default="tiny-digits", help="tier (default tiny-digits)"
    )
    add_option(
        p, "--per-class", Integer(1), default=None,
        help="samples per class and cfg scale (tiny-digits 50, tiny-fashion 100)",
    )  # fmt: skip
    add_sampling_arguments(p, cfg_scale=None)
    add_option(p, "--ckpt", CHECKPOINT, default=None, help="weights (default: the tier's committed EMA weights)")
    add_option(
        p,
        "--fid-samples",
        NumberList(int, "--fid-samples list", "2000,5000", minimum=2),
        default=None,
        help="tiny-fashion: un-cached FID at these sample counts, cfg 1.5, with bootstrap spread (default 2000,5000)",
    )
    add_option(
        p, "--out-dir", OutputPath(folder=True), default=None,
        help="output folder (default: the model's figures, figures/ or figures/tiny-digits/)",
    )  # fmt: skip
    p.set_defaults(func=cmd_tiny_report)


PARAMETER_OPTIONS: dict[str, str] = {
    **{name: f"sample --{name.replace('_', '-')}" for name in ("model", "ckpt", "vae", "image_size", "device")},
    **{name: f"sample --{name.replace('_', '-')}" for name in ("steps", "cfg_scale", "seed", "classes", "per_class")},
    "router": "sample --router",
    "method": "sample --method",
    "methods": "eval --methods",
    "num_samples": "eval-sample --num-samples",
    "fidelity_samples": "eval-sample --num-samples",
    "fid_samples": "eval --num-samples",
    "per_device_batch": "eval --per-device-batch",
    "ref_batch": "eval --ref-batch",
    "features": "eval --features",
    "inception_weights": "eval --inception-weights",
    "samples_dir": "eval --out",
    "diffusers_dir": "sample --ckpt",
}
"""A notebook parameter -> the ``goc`` option of the same meaning, whose kind checks the parameter's value as it
checks the option's (one validator per kind of input). ``""`` and ``0`` are the notebooks' "default" and pass."""


def check_parameter_kinds(params: dict, model: str) -> None:
    """One line for a ``--params`` value that its option's kind refuses (``steps: 10**400``, ``seed: -1``,
    ``device: tpu``, a missing ``ckpt``), or that the options checked together refuse (``image_size`` against the
    model, a ``per_device_batch`` beyond memory), before any notebook starts."""
    from goc_utils.cli import build_parser
    from goc_utils.cli.kinds import check_together

    given = {name: value for name, value in params.items() if name in PARAMETER_OPTIONS}
    parser = build_parser(sorted({PARAMETER_OPTIONS[name].split()[0] for name in given}))
    choices = parser._subparsers._group_actions[0].choices
    together: dict[str, argparse.Namespace] = {}
    for name, value in given.items():
        command, flag = PARAMETER_OPTIONS[name].split()
        action = next(a for a in choices[command]._actions if flag in a.option_strings)
        if value in ("", 0) or isinstance(value, bool):  # the notebooks' "default"
            continue
        try:
            parsed = action.kind.parse(str(value))
            action.kind.check_action(action, parsed)
        except (GocError, argparse.ArgumentTypeError) as exc:
            message = str(exc).removeprefix(f"argument {flag}: ")
            raise InvalidArgumentError(f"parameter {name!r}: {message} (as {flag} of goc {command})") from None
        setattr(together.setdefault(command, argparse.Namespace(model=model)), action.dest, parsed)
    for command, args in together.items():
        try:
            check_together(args, choices[command]._actions)
        except GocError as exc:
            names = [name for name in given if PARAMETER_OPTIONS[name].split()[0] == command and name != "model"]
            raise InvalidArgumentError(f"parameter {' / '.join(names)}: {exc} (as options of goc {command})") from None


def cmd_notebooks(args: argparse.Namespace) -> int:
    only = args.only
    params = load_params_file(args.params)
    with naming_params_file(args.params):
        smoke = smoke_mode(args.smoke, params)  # --smoke or smoke: true in --params: figures follow what runs
        model = preset_model(args.preset, params)
        check_preset(model)  # before any folder is made (the notebooks would refuse it only once running)
    notebooks = study_notebooks(only, include_long=smoke)
    with naming_params_file(args.params):
        check_parameters(for_selection(params, notebooks), notebooks)
        check_parameter_kinds(params, model)
    figures = check_output_dir(figures_dir_for(smoke, args.figures_dir, model), "--figures-dir")
    started = time.perf_counter()
    done = run_notebooks(args.preset, args.smoke, params, only, figures_dir=figures)
    for path, seconds in done:
        print(f"{path.name}: {seconds:.1f} s -> {path}")
    print(f"{len(done)} notebooks in {time.perf_counter() - started:.1f} s; figures in {figures}")
    return 0


def add_notebooks(p: argparse.ArgumentParser) -> None:
    """Execute notebooks/NN_*.ipynb in order; executed copies go to runs/notebooks/."""
    add_option(
        p,
        "--preset",
        Choice(PRESETS),
        default=DEFAULT_PRESET,
        help="fashion (the default: embedded latent tiny-fashion + its VAE; figures/), tiny (embedded tiny-digits; "
        "figures/tiny-digits/) or xl (DiT-XL/2; figures/DiT-XL-2/)",
    )
    add_option(p, "--smoke", Flag(), help="fast mode (few samples), as in the tests")
    add_option(
        p, "--params", InputPath("params file", "pass {flag} FILE.yaml"), default=None,
        help="YAML file of parameter overrides (e.g. ckpt and vae for xl)",
    )  # fmt: skip
    add_option(
        p,
        "--only",
        Items("--only list", "notebook number", "01,03", pattern=r"\d\d", normalize=lambda number: number.zfill(2)),
        default=None,
        help="comma-separated notebook numbers, e.g. 01,03 (default: all but 08, the 30-minute ablations, which runs "
        "when named or with --smoke; make ablations)",
    )
    add_option(
        p,
        "--figures-dir",
        OutputPath(folder=True),
        default=None,
        help="where figures and tables go (default: the model's, figures/ for tiny-fashion, figures/tiny-digits/ ...; "
        "with --smoke: runs/smoke/figures/)",
    )
    p.set_defaults(func=cmd_notebooks)


def cmd_bench(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    for text in split_methods(args.methods):  # diffusers' caches against this run's settings, before any loading
        if is_peer(text):
            parse_peer(text, args.steps, args.cfg_scale)
    router = args.router or default_router(args.model, args.steps)
    methods, skipped = without_router(split_methods(args.methods), router)
    why = f"no --router given and none committed for {args.model} at {args.steps} steps"
    if skipped and not methods:
        committed = " or --steps 20 (its committed router's)" if default_router(args.model, 20) else ""
        need = "needs" if len(skipped) == 1 else "need"
        raise InvalidArgumentError(
            f"nothing to bench: {', '.join(skipped)} {need} a router ({why}); give --router FILE{committed}"
        )
    if skipped:
        print(f"(skipping {', '.join(skipped)}: {why})")
    tf32 = set_tf32(device, args.tf32)
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.random_weights:
        torch.manual_seed(0)
        model = create_model(args.model, args.image_size).to(device).eval()
    else:
        model = load_model(args.model, args.ckpt, args.image_size, device)
    if args.backend == "diffusers":
        model = diffusers_backend(model)
    priors = functools.partial(priors_for_run, args.model, model, args.steps, args.cfg_scale, args.priors)
    resources = Resources(router, args.router_thres, functools.cache(priors), args.model, args.cfg_scale, args.tcc_pack)
    run = RunShape.of(model, args.steps)
    resolved = [resolve_any(text, run, resources) for text in methods]
    setup = BenchSetup(args.batch, args.cfg_scale, args.repeats, args.warmup, args.compile, args.compile_mode)
    rows = run_bench(model, resolved, setup)
    header = (
        f"goc bench: {args.model}{' (random weights)' if args.random_weights else ''}, {device}, "
        f"DDIM-{args.steps}, batch {args.batch}, cfg {args.cfg_scale}, {args.repeats} repeats"
        + ("" if tf32 is None else f", TF32 {'on' if tf32 else 'off'}")
    )
    if args.json:
        print(json.dumps({"setup": header, "rows": rows_as_dicts(rows)}, indent=2))
    else:
        print(header)
        print(format_table(rows))
    return 0


def add_bench(p: argparse.ArgumentParser) -> None:
    """Time sampling under each caching method (warm-up, then repeats)."""
    add_model_arguments(p, vae=False)
    add_option(p, "--random-weights", Flag(), help="DiT-initialised random weights (timing only)")
    add_option(
        p,
        "--methods",
        Method(parse_methods, several=True, example="none,fora-50"),
        default=",".join(DEFAULT_METHODS),
        help="comma-separated method strings, e.g. fora-50+goc:auto, fora-25+taylor:k=2, fora:interval=3",
    )
    add_router_arguments(p, help_extra=" (default: the tiny tier's committed router; skipped without one)")
    add_priors_argument(p)
    add_tcc_pack_argument(p)
    add_backend_argument(p)
    add_sampling_arguments(p, seed_help=None)
    add_option(p, "--batch", Batch(), default=1, help="images per run (default 1; CFG doubles it)")
    add_option(p, "--repeats", Integer(1), default=5, help="timed runs per method (default 5)")
    add_option(p, "--warmup", Integer(0), default=1, help="untimed runs first (default 1)")
    add_threads_argument(p)
    add_tf32_argument(p)
    add_option(
        p,
        "--compile",
        Flag(),
        help="also time every method of ours compiled (one torch.compile graph per step pattern), beside its eager row",
    )
    add_option(
        p,
        "--compile-mode",
        Choice(["default", "reduce-overhead", "max-autotune"]),
        default="default",
        help="torch.compile mode of --compile (reduce-overhead: CUDA graphs on a GPU; default: default)",
    )
    add_option(p, "--json", Flag(), help="print JSON instead of a table")
    p.set_defaults(func=cmd_bench)


def cmd_report(args: argparse.Namespace) -> int:
    folder = Path(args.figures_dir) if args.figures_dir else paths.default_figures_dir(args.model)
    if args.check:
        path, expected = folder / REPORT_NAME, build_report(args.model, folder)  # a damaged CSV is refused first
        if not path.is_file() or path.read_text() != expected:
            print(f"goc report: {path} differs from what its CSVs give; run `make report`", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path = write_report(args.model, check_output_dir(folder, "--figures-dir"))
    print(f"{path}: {len(path.read_text().splitlines())} lines")
    return 0


def add_report(p: argparse.ArgumentParser) -> None:
    """Write a tiny tier's results report, README.md in its figures folder (figures/README.md for tiny-fashion,
    figures/tiny-digits/README.md), from the CSVs there: sections whose CSVs are missing are left out, numbers are
    copied as the CSVs write them."""
    add_option(p, "--model", Choice(TIERS), default="tiny-fashion", help="tier (default tiny-fashion)")
    add_option(
        p,
        "--figures-dir",
        OutputPath(folder=True),
        default=None,
        help="folder of the CSVs, where README.md is written (default: the model's figures, figures/ or "
        "figures/tiny-digits/)",
    )
    add_option(p, "--check", Flag(), help="write nothing; exit 1 when the folder's README.md differs from its CSVs'")
    p.set_defaults(func=cmd_report)
