"""`fusion teacher ...`: list teachers, build fusion targets, train priors and IR generators, synthesise IR.

Each sub-verb's arguments live in the module that implements it (`configure(parser)` sets `func`), imported only
when that sub-verb is used.
"""
from __future__ import annotations

import argparse
import importlib

from runtime.errors import FusionError

SUBVERBS: dict[str, tuple[str, str]] = {
    "list": ("teacher.cli", "list the fusion teachers, baselines and RGB->IR generators"),
    "fuse": ("teacher.fuse_cli", "run a fusion teacher over a dataset and write TEACHER_FUSED/ (resumable, sharded)"),
    "train-prior": ("teacher.prior", "train a small diffusers DDPM prior on your own IR/VIS frames for `ddfm`"),
    "train-irgen": ("teacher.irgen.cli", "train an RGB->IR generator on aligned pairs"),
    "synth-ir": ("teacher.irgen.cli", "synthesise IR for RGB-only images and write a dataset folder"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="teacher_verb", metavar="SUBVERB")
    for name, (module_name, summary) in SUBVERBS.items():
        child = sub.add_parser(name, help=summary, description=summary)
        if name == "list":
            configure_list(child)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # The sub-verb's module is absent from this installation, or needs an extra that is not installed:
            # the other sub-verbs keep working and this one explains itself when used.
            child.set_defaults(func=_unavailable(name, module_name, exc))
            continue
        getattr(module, "configure_" + name.replace("-", "_"), getattr(module, "configure", None))(child)


def _unavailable(name: str, module_name: str, exc: ModuleNotFoundError):
    def run(_args):
        missing = exc.name or ""
        if missing and not module_name.startswith(missing):
            from runtime.errors import require
            require(missing, purpose=f"`fusion teacher {name}`")
        raise FusionError(f"`fusion teacher {name}` is not available in this installation ({module_name} is missing)")
    return run


def configure_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=["fusion", "baseline", "irgen"], help="show only this kind")
    parser.set_defaults(func=run_list)


def run_list(args) -> int:
    from teacher.registry import TEACHERS
    rows = [e for e in TEACHERS.values() if args.kind is None or e.kind == args.kind]
    width = max(len(e.name) for e in rows)
    for entry in rows:
        weights = " [needs weights]" if entry.needs_weights else ""
        print(f"{entry.name:<{width}}  {entry.kind:<8}  {entry.summary}{weights}")
    return 0
