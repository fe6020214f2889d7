"""Command line: ``rlvr train | config show | methods | report``.

Overrides are dotted ``key=value`` pairs (values parsed as YAML), e.g.
``rlvr train train.steps=20 algo.advantage=canon algo.regularizers=[siren]``.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from rlvr.errors import RLVRError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlvr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="warm start + RL on the configured task (defaults run on a CPU in minutes)")
    train.add_argument("-c", "--config", help="YAML file or packaged preset name")
    train.add_argument("--resume", action="store_true", help="continue from the newest readable checkpoint in output_dir")
    train.add_argument("--quiet", action="store_true")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the resolved, validated configuration")
    show.add_argument("-c", "--config")
    show.add_argument("overrides", nargs="*")
    config_sub.add_parser("presets", help="list packaged presets")

    sub.add_parser("methods", help="list every registered method by stage, with its knobs")

    report = sub.add_parser("report", help="render plots and a markdown report of run directories")
    report.add_argument("run_dirs", nargs="+")
    return parser


def _methods(console: Console) -> None:
    import inspect

    from rlvr.algos import REGISTRIES

    for stage, registry in REGISTRIES.items():
        console.print(f"[bold]{stage}[/]")
        for name in registry.names():
            entry = registry.entry(name)
            knobs = ", ".join(
                f"{k}={'<required>' if v is inspect.Parameter.empty else v!r}" for k, v in entry.knob_defaults().items()
            )
            summary = entry.doc.splitlines()[0] if entry.doc else ""
            console.print(f"  {name}({knobs})  {summary}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    try:
        if args.command == "train":
            from transformers.utils import logging as hf_logging

            from rlvr.train.config import load_config

            hf_logging.disable_progress_bar()
            from rlvr.train.trainer import Trainer

            cfg = load_config(args.config, args.overrides)
            Trainer(cfg, quiet=args.quiet).run(resume=args.resume)
        elif args.command == "config":
            from rlvr.train.config import dump_config, load_config, packaged_config_names

            if args.config_command == "show":
                print(dump_config(load_config(args.config, args.overrides)), end="")
            else:
                print("\n".join(packaged_config_names()))
        elif args.command == "methods":
            _methods(console)
        elif args.command == "report":
            from rlvr.eval.report import write_run_report

            for run_dir in args.run_dirs:
                console.print(f"wrote {write_run_report(run_dir)}")
    except RLVRError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
