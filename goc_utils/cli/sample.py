"""``goc sample`` (a grid, optionally cached, and an ADM npz) and ``goc info`` (a preset's facts)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from goc_utils.cache import COMPENSATORS, SCHEDULES, CacheMethod, Resources, RunShape, resolve_method
from goc_utils.cli.common import (
    MAX_IMAGE_SIZE,
    add_model_arguments,
    add_priors_argument,
    add_router_arguments,
    add_sampling_arguments,
    add_tcc_pack_argument,
    add_tf32_argument,
)
from goc_utils.cli.kinds import (
    Choice,
    ClassList,
    Flag,
    InputPath,
    Integer,
    Method,
    NumberList,
    OutputPath,
    Preset,
    StepRange,
    Weight,
    add_option,
    check_writable,
)
from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.sampling import save_samples_npz
from goc_utils.files import check_disk, check_memory
from goc_utils.model.checkpoints import load_model, resolve_device
from goc_utils.model.diffusion import NUM_TRAIN_TIMESTEPS
from goc_utils.model.macs import model_macs
from goc_utils.model.presets import model_info, preset_info, smallest_image_shape
from goc_utils.model.sampler import (
    check_sampling_args,
    class_labels,
    generate,
    image_shape,
    set_tf32,
)
from goc_utils.model.vae import load_vae, vae_spec
from goc_utils.priors.stats import priors_for_run
from goc_utils.study.viz import save_image_grid

CACHE_FLAGS = {
    # flag: (attribute, schedule or compensator it belongs to, option name)
    "--fora-interval": ("fora_interval", "fora", "interval"),
    "--matrix": ("matrix", "matrix", "path"),
    "--router": ("router", "l2c", "router"),
    "--router-thres": ("router_thres", "l2c", "thres"),
    "--goc-weight": ("goc_weight", "goc", "weight"),
    "--goc-steps": ("goc_steps", "goc", "correction_steps"),
    "--goc-coupling": ("goc_coupling", "goc", "coupling"),
    "--taylor-order": ("taylor_order", "taylor", "order"),
}
"""The per-method flags of ``goc sample``; each is refused with one line unless its schedule / compensator is chosen."""


def cache_method_from_args(args: argparse.Namespace) -> CacheMethod:
    """The :class:`CacheMethod` of ``--method``, or of its alias ``--cache`` / ``--compensator`` and their flags
    (``--cache fora --fora-interval 3 --compensator goc --goc-weight 1.0`` is ``--method fora:interval=3+goc:w=1.0``).

    Both are resolved the same way (:func:`~goc_utils.cache.method.resolve_method`), where the values are checked
    (the schedule builders, the compensator configs).
    """
    given = {flag: getattr(args, attr) for flag, (attr, _, _) in CACHE_FLAGS.items() if getattr(args, attr) is not None}
    if args.fora_range is not None:
        given["--fora-range"] = args.fora_range
    if args.method is not None:
        router_flags = [flag for flag in ("--router", "--router-thres") if flag in given]
        if args.cache != "none" or args.compensator != "none" or len(given) > len(router_flags):
            raise InvalidArgumentError(
                "--method replaces --cache, --compensator and their flags (all but --router and --router-thres); "
                "give one or another"
            )
        method = CacheMethod.parse(args.method)  # as eval-sample / eval / bench
        if router_flags and "router" not in SCHEDULES[method.schedule].options:
            raise InvalidArgumentError(f"{router_flags[0]} is for l2c methods, not {args.method!r}")
        return method
    schedule_options: dict = {}
    compensator_options: dict = {}
    for flag, value in given.items():
        if flag == "--fora-range":
            owner, options = "fora", {"start": value[0], "stop": value[1]}
        else:
            _, owner, option = CACHE_FLAGS[flag]
            options = {option: value}
        if owner not in (args.cache, args.compensator):
            kind = "--cache" if owner in SCHEDULES else "--compensator"
            raise InvalidArgumentError(f"{flag} needs {kind} {owner}")
        (schedule_options if owner == args.cache else compensator_options).update(options)
    return CacheMethod(args.cache, schedule_options, args.compensator, compensator_options)


def cmd_sample(args: argparse.Namespace) -> int:
    info = preset_info(args.model)
    out = check_writable(Path(args.out), "--out")
    npz = check_writable(Path(args.save_npz), "--save-npz") if args.save_npz else None
    method = cache_method_from_args(args)
    device = resolve_device(args.device)
    set_tf32(device, args.tf32)
    torch.set_grad_enabled(False)
    _check_sizes(args, *smallest_image_shape(args.model, args.image_size), npz)  # huge sizes: refused before loading
    model = load_model(args.model, args.ckpt, args.image_size, device)
    vae = load_vae(vae_spec(args.vae, args.ckpt, args.model), device, args.model) if info.latent else None
    upscale = _check_sizes(args, image_shape(model, vae), model.in_channels * model.input_size**2, npz)
    labels = class_labels(args.classes, args.per_class)
    check_sampling_args(model, labels, args.steps, args.cfg_scale, args.model)
    if args.priors is not None and not method.needs_priors:
        raise InvalidArgumentError("--priors needs --goc-steps auto or --goc-weight auto")
    priors = priors_for_run(args.model, model, args.steps, args.cfg_scale, args.priors) if method.needs_priors else None
    thres = 0.1 if args.router_thres is None else args.router_thres
    resources = Resources(args.router, thres, priors, args.model, args.cfg_scale, args.tcc_pack)
    resolved = resolve_method(method, RunShape.of(model, args.steps), resources)
    engine = resolved.engine(model, args.compile)
    started = time.perf_counter()
    result = generate(
        model,
        labels,
        seed=args.seed,
        steps=args.steps,
        sampler=args.sampler,
        cfg_scale=args.cfg_scale,
        vae=vae,
        forward=engine.forward,
        progress=True,
    )
    elapsed = time.perf_counter() - started
    nrow = args.per_class if args.per_class > 1 else min(len(labels), 16)
    save_image_grid(result.images, out, nrow=nrow, upscale=upscale)
    if npz is not None:
        save_samples_npz(npz, result)
    schedule, cost, config = resolved.schedule, resolved.cost(model_macs(model)), resolved.config
    if method.compensator == "goc" and isinstance(config.weight, float):
        steps = "every reused step" if config.correction_steps is None else ",".join(map(str, config.correction_steps))
        print(f"GOC: w = {config.weight:.4g}, correction steps {steps}, {config.coupling} coupling")
    print(
        f"cache {method.label()} ({schedule.name}): {100 * cost['cache_ratio']:.1f}% of unit-steps reused, "
        f"{100 * cost['cache_ratio_macs']:.1f}% of branch MACs, theoretical speedup {cost['macs_speedup']:.3f}x"
    )
    print(
        f"sampled {len(labels)} images ({args.model}, {args.sampler}-{args.steps}, cfg {args.cfg_scale}, "
        f"seed {args.seed}) in {elapsed:.2f} s ({len(labels) / elapsed:.1f} images/s) -> {out}"
        + (f", {npz}" if npz else "")
        + (f" (compiled: {engine.compile_seconds:.1f} s of compilation included)" if args.compile else "")
    )
    return 0


def _check_sizes(args: argparse.Namespace, shape: tuple[int, int, int], model_values: int, npz: Path | None) -> int:
    """Before sampling: memory for the images (``shape``: H, W, C) of ``--classes`` x ``--per-class`` and their
    latents (``model_values`` floats each: noise, CFG batch, chain state, final) and for the upscaled grid, disk for
    ``--save-npz`` (one line naming the limit); returns the grid's upscale factor."""
    height, width, channels = shape
    n = len(args.classes) * args.per_class
    check_memory(
        n * (height * width * channels + 4 * 6 * model_values),
        f"--per-class {args.per_class} ({n:,} images)",
        "sample fewer images (--per-class, --classes)",
    )
    upscale = args.upscale or (4 if height < 64 else 1)
    grid = n * (height * upscale + 2) * (width * upscale + 2) * channels
    check_memory(2 * grid, f"--upscale {upscale} ({n:,} image{'s' if n != 1 else ''})", "choose a smaller --upscale")
    if npz is not None:
        check_disk(npz.parent, n * (height * width * channels + 4 * model_values + 8), "--save-npz", "sample fewer")
    return upscale


def add_sample(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_sampling_arguments(p)
    add_option(p, "--sampler", Choice(["ddim", "ddpm"]), default="ddim", help="ddim (eta 0) or ddpm (default ddim)")
    add_option(p, "--classes", ClassList(), default="0-9", help="class ids, e.g. 207,992,387 or 0-9 (default 0-9)")
    add_option(p, "--per-class", Integer(1), default=1, help="samples per class (default 1)")
    add_option(p, "--out", OutputPath(), default="samples.png", help="grid PNG to write (default samples.png)")
    add_option(
        p, "--save-npz", OutputPath(), default=None, help="also write arr_0 (uint8 NHWC), labels, final (float32)"
    )
    add_option(
        p, "--upscale", Integer(1, name="size"), default=None,
        help="grid pixel upscaling (default 4 for images under 64 px)",
    )  # fmt: skip
    add_tf32_argument(p)
    add_option(
        p,
        "--compile",
        Flag(),
        help="run the model calls as compiled graphs, one torch.compile graph per step pattern (the same samples to "
        "float tolerance; pays a few seconds of compilation per pattern)",
    )
    g = p.add_argument_group(
        "feature caching (schedule x compensator)",
        "--method takes the method string of every command; --cache, --compensator and their flags are its alias "
        "(--cache fora --fora-interval 3 --compensator goc --goc-weight 1.0 = --method fora:interval=3+goc:w=1.0). "
        "--router, --router-thres, --priors and --tcc-pack are resources, read alike by both.",
    )
    add_option(
        g,
        "--method",
        Method(CacheMethod.parse),
        default=None,
        help="a method string instead of the flags below, e.g. fora:interval=3+goc:w=1.0 or l2c:router=r.pt+goc:auto",
    )
    add_option(g, "--cache", Choice(SCHEDULES), default="none", help="which units are reused (default none)")
    add_option(
        g, "--fora-interval", Integer(1, NUM_TRAIN_TIMESTEPS), default=None,
        help="fora: refresh every N steps (default 2)",
    )  # fmt: skip
    add_option(g, "--fora-range", StepRange(), default=None, help="fora: cache only in steps a:b")
    add_option(
        g, "--matrix", InputPath("schedule matrix", "pass {flag} PATH (.json/.csv/.npy, one row per step)"),
        default=None, help="matrix: 0/1 table (.json/.csv/.npy), rows = steps, 1 = recompute",
    )  # fmt: skip
    add_router_arguments(g, thres_default=None)
    add_option(
        g,
        "--compensator",
        Choice(COMPENSATORS),
        default="none",
        help="what a reused unit returns: none = previous output (default), " + ", ".join(list(COMPENSATORS)[1:]),
    )
    add_option(
        g,
        "--goc-weight",
        Weight(),
        default=None,
        help="goc: w, or auto (least squares on priors; default 1.2 with FORA, 0.8 with L2C)",
    )
    add_option(
        g,
        "--goc-steps",
        NumberList(int, "step list", "3,5,7,9 or auto", minimum=0, auto=True),
        default=None,
        help="goc: correction steps, e.g. 3,5,7,9, or auto (inflection-aware, from priors; default: the paper's "
        "list for the schedule)",
    )
    add_option(
        g,
        "--goc-coupling",
        Choice(["block", "unit"]),
        default=None,
        help="goc: correct a unit only when its whole block is reused (block, the published default) or each unit "
        "on its own (unit)",
    )
    add_priors_argument(g)
    add_tcc_pack_argument(g)
    add_option(
        g, "--taylor-order", Integer(0, NUM_TRAIN_TIMESTEPS), default=None, help="taylor: forecast order k (default 1)"
    )
    p.set_defaults(func=cmd_sample)


def cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps(model_info(args.model, args.image_size), indent=2))
    return 0


def add_info(p: argparse.ArgumentParser) -> None:
    add_option(p, "--model", Preset(), default="tiny-digits", help="preset name (default tiny-digits)")
    add_option(
        p, "--image-size", Integer(1, MAX_IMAGE_SIZE, name="size"), default=None, help="pixels (default: the preset's)"
    )
    p.set_defaults(func=cmd_info)
