"""The ``goc`` command: thin argument parsing over ``goc_utils``, one module per command group.

``build_parser`` lists every command; a command's own flags are added (and its module imported) only
when that command runs, so ``goc --help`` does not import torch. Every option declares its kind
(:mod:`goc_utils.cli.kinds`), checked when it is parsed and, for paths and method strings, before the command
runs. Every user error is printed as one line ``goc <command>: error: <what and how to fix>``, and ``main``
returns exit status 2.

========================  =========================================
module                    commands
========================  =========================================
:mod:`.sample`            ``sample``, ``info``
:mod:`.train`             ``train-tiny``, ``train-router``, ``train-classifier``, ``train-fashion``
:mod:`.study`             ``tiny-report``, ``notebooks``, ``bench``, ``report``
:mod:`.priors`            ``priors``, ``inflections``, ``tcc-pack``, ``tcc-packs``
:mod:`.evaluate`          ``eval-sample``, ``fid``, ``eval``, ``compare``, ``verdicts``
:mod:`.export`            ``export-diffusers``
========================  =========================================
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from goc_utils.errors import GocError

COMMANDS: dict[str, tuple[str, str]] = {
    "sample": ("sample", "sample a class-conditional image grid (and an ADM-format npz)"),
    "info": ("sample", "print a preset's architecture as JSON"),
    "train-tiny": ("train", "train (or resume) an embedded tiny DiT (tiny-digits, tiny-fashion)"),
    "train-fashion": ("train", "build the tiny-fashion tier: VAE, DiT, judge, reference, router, priors"),
    "tiny-report": ("study", "sample a tiny tier at cfg 1.5 / 4.0, judge with its classifier"),
    "train-router": ("train", "train Learning-to-Cache routers (L2C objective, frozen DiT)"),
    "train-classifier": ("train", "train a tiny tier's judge (its FID / IS features)"),
    "bench": ("study", "latency of caching methods vs MACs-theoretical speedup"),
    "notebooks": ("study", "run the study notebooks headless (papermill)"),
    "report": ("study", "write a tiny tier's results report (figures/README.md) from its committed CSVs"),
    "priors": ("priors", "extract block-feature priors (streaming statistics of un-cached sampling)"),
    "inflections": ("priors", "inflection-aware GOC steps and weight from a priors file"),
    "tcc-pack": ("priors", "fit TCC's calibrated maps (a pack) for a host schedule from same-noise sampling"),
    "tcc-packs": ("priors", "list a model's committed TCC packs: rank of M, trace(R)/D, alpha (and a table)"),
    "eval-sample": ("evaluate", "sample N images of one method to an ADM npz (resumable, torchrun)"),
    "fid": ("evaluate", "IS, FID, sFID, precision, recall of a sample npz vs a reference npz"),
    "eval": ("evaluate", "sample every method and score it -> results table"),
    "compare": ("evaluate", "paired PSNR difference of two methods vs the un-cached samples, with its spread"),
    "verdicts": ("evaluate", "paired PSNR and FID differences of method pairs of a goc eval run, resolved or not"),
    "export-diffusers": ("export", "write a preset's weights as a diffusers DiTTransformer2DModel folder"),
}
"""Command -> (module in ``goc_utils.cli``, one-line help). Each module has ``add_<command>(parser)``."""


GIVEN = "_goc_given"
"""The attribute of a :class:`Parser` that holds, during one parse, the options already given (dest -> how it was
written), so that :func:`goc_utils.cli.kinds.add_option`'s options refuse a second one; reset at each parse."""


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single line (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")

    def parse_known_args(self, args=None, namespace=None):
        setattr(self, GIVEN, {})  # each parse starts with no option given (kinds.add_option refuses a second one)
        return super().parse_known_args(args, namespace)


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every option of ``args.command`` with a value checked by its kind (``Kind.check``: inputs exist and are of
    their format, outputs can be written, method strings parse) and the options that depend on each other together
    (``kinds.check_together``), before the command does anything."""
    from goc_utils.cli.kinds import check_together  # imported with the command's flags already

    command = parser._subparsers._group_actions[0].choices[args.command]
    for action in command._actions:
        value = getattr(args, action.dest, None)
        if value is not None and hasattr(action, "kind"):
            action.kind.check_action(action, value)
    check_together(args, command._actions)


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``goc`` parser; with ``commands``, only their flags are built (their modules imported)."""
    parser = Parser(prog="goc", description="goc-study: Gradient-Optimized Cache for Diffusion Transformers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        if commands is None or name in commands:
            add = getattr(importlib.import_module(f"goc_utils.cli.{module}"), "add_" + name.replace("-", "_"))
            if add.__doc__:  # an adder's docstring is its command's description
                p.description = " ".join(add.__doc__.split())
            add(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([command] if command in COMMANDS else [])
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a refused option (its line is printed) is an exit status, as every refusal
        if not exc.code:  # --help
            raise
        return exc.code
    try:
        check_options(parser, args)
        return args.func(args)
    except GocError as exc:
        print(f"goc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"goc {args.command}: interrupted", file=sys.stderr)
        return 130
