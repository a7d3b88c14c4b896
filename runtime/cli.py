"""The `fusion` command: one verb per stage of the pipeline.

    fusion teacher ...    offline teachers: fuse targets, train priors and IR generators, synthesise IR
    fusion distill ...    train and evaluate the student
    fusion export ...     ONNX / INT8 / TensorRT
    fusion run ...        live or batch fusion (also installed as `fusion-run`)
    fusion calibrate ...  IR-to-VIS homography for `fusion run --homography`
    fusion bench ...      speed and quality table
    fusion eval ...       the field's fusion metrics on a folder of fused images

Each verb lives in the package it belongs to, as a module with `configure(parser)` that adds its arguments and sets
`func` (a callable taking the parsed args and returning an exit code or None). Modules are imported only when their
verb is used, so `fusion run` never imports torch, diffusers or anything from `teacher`/`distill`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Sequence

from runtime.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, FusionError

# verb -> (module, one-line summary)
VERBS: dict[str, tuple[str, str]] = {
    "teacher": ("teacher.cli", "offline teachers: build fusion targets, train priors and IR generators, synthesise IR"),
    "distill": ("distill.cli", "train and evaluate the student on teacher targets"),
    "export": ("export.cli", "export a student to ONNX, ONNX INT8 or a TensorRT engine, checked against PyTorch"),
    "run": ("runtime.run_cli", "fuse live cameras, streams, videos or image folders"),
    "calibrate": ("runtime.calibrate_cli", "compute the IR-to-VIS homography used by `fusion run --homography`"),
    "bench": ("benchmarks.cli", "latency and quality of every available backend, beside peer models"),
    "eval": ("distill.eval_cli", "the field's fusion metrics on a folder of fused images"),
}


def build_verb_parser(verb: str, prog: str) -> argparse.ArgumentParser:
    module_name, summary = VERBS[verb]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise FusionError(f"'{verb}' is not available in this installation ({module_name} is missing)") from None
        raise
    parser = argparse.ArgumentParser(prog=prog, description=summary)
    module.configure(parser)
    return parser


def _top_parser() -> argparse.ArgumentParser:
    epilog = "verbs:\n" + "\n".join(f"  {verb:<10} {summary}" for verb, (_, summary) in VERBS.items())
    epilog += "\n\n`fusion VERB --help` shows a verb's options."
    parser = argparse.ArgumentParser(prog="fusion", description="Real-time infrared + visible image fusion toolkit.",
                                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("verb", choices=list(VERBS), metavar="VERB", help="one of: " + ", ".join(VERBS))
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("irvis-fusion")
    except Exception:
        return "unknown"


def dispatch(verb: str, argv: Sequence[str], prog: str) -> int:
    """Parse `argv` for `verb` and run it, turning errors into messages and exit codes."""
    try:
        parser = build_verb_parser(verb, prog)
        args = parser.parse_args(list(argv))
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        code = func(args)
        return EXIT_OK if code is None else int(code)
    except FusionError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except SystemExit:
        raise
    except Exception as exc:  # a bug in this project, not in the user's input
        if os.environ.get("FUSION_DEBUG"):
            traceback.print_exc()
        else:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            print(f"{prog}: internal error: {type(exc).__name__}: {exc} (at {os.path.basename(where.filename)}:"
                  f"{where.lineno}; rerun with FUSION_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        return EXIT_INTERNAL


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--version"):
        _top_parser().parse_args(argv or ["--help"])
        return EXIT_OK
    verb = argv[0]
    if verb not in VERBS:
        _top_parser().parse_args(argv[:1])  # exits 2 with argparse's "invalid choice" message
    return dispatch(verb, argv[1:], prog=f"fusion {verb}")


def run_main(argv: Sequence[str] | None = None) -> int:
    """`fusion-run` is `fusion run`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return dispatch("run", argv, prog="fusion-run")


if __name__ == "__main__":
    sys.exit(main())
