"""`fusion distill ...`: train the student on teacher targets, evaluate it, measure its cost.

    fusion distill train --config default [key=value ...]        # configs/distill/default.yaml, also from a wheel
    fusion distill eval --weights runs/distill/default/best --data ../shared/data/roadscene --names test.txt
    fusion distill profile --weights default

Heavy imports (torch...) happen inside the handlers, so `fusion distill --help` stays light.
"""
from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="distill_verb", metavar="SUBVERB")
    configure_train(sub.add_parser("train", help="train a student on teacher targets (resumable, DDP via torchrun)",
                                   description="Train a student on teacher targets. Resumes from RUN_DIR/last."))
    configure_eval(sub.add_parser("eval", help="fuse a split with a student and print the metric table beside the "
                                               "teacher and the baselines",
                                  description="Fuse a split with a student, write the images, print the metric "
                                              "table with the teacher and baselines, save a picture grid."))
    configure_profile(sub.add_parser("profile", help="params, GMACs and ONNX Runtime CPU latency of a student",
                                     description="Params, GMACs (thop convs/linear + cross-attention matmuls) and "
                                                 "ONNX Runtime CPU latency at a size."))


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="default",
                        help="YAML file, or the name of a packaged config: NAME for configs/distill/NAME.yaml, "
                             "STAGE/NAME for another stage's (irgen/student_cpu) (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. steps=500 optim.lr=1e-3 data.augment.misalign_prob=0.5")
    parser.set_defaults(func=run_train)


def run_train(args) -> int:
    from distill.train import load_train_config, train
    from runtime.errors import require
    require("torch", "`fusion distill train`")
    cfg = load_train_config(args.config, args.overrides)
    summary = train(cfg)
    print(f"best weights: {summary['run_dir']}/best  ({_best_step(summary)}best validation score "
          f"{summary['best_score']:.4f}; the run is at step {summary['step']})")
    return 0


def _best_step(summary: dict) -> str:
    """'step N, ' for the step the best checkpoint was saved at (its config.json metadata), else ''."""
    import json
    from pathlib import Path
    try:
        meta = json.loads((Path(summary["run_dir"]) / "best" / "config.json").read_text()).get("metadata", {})
        return f"saved at step {int(meta['step'])}, "
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def configure_eval(parser: argparse.ArgumentParser) -> None:
    from distill.evaluate import configure_eval as configure
    configure(parser)


def configure_profile(parser: argparse.ArgumentParser) -> None:
    from distill.evaluate import configure_profile as configure
    configure(parser)
