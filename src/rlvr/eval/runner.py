"""``rlvr eval MODEL --data DATA``: sample ``n`` responses per prompt, verify them, summarise.

:func:`evaluate_model` is the library entry point. DATA is one of

* a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file of math problems (the ``math_jsonl`` task; the
  question / answer fields and the answer format are guessed from the first row unless given);
* the name of a shared math set (``aime24``, ``aime25``, ``amc23``, ``math500``, ``gsm8k``,
  ``minerva_math``, ``olympiadbench``), read from ``$RLVR_DATA_DIR`` or ``../shared/data/math``
  relative to the project root (or to the working directory), with the right field mapping;
* ``gym:<dataset>``: the held-out items of a reasoning-gym dataset;
* ``task:<name>``: the held-out problems of any registered task (e.g. ``task:countdown``);
* a local Hugging Face dataset directory (``datasets.save_to_disk`` output, or a folder of data
  files read by ``datasets.load_dataset``; ``split`` picks a split, default ``test``), or
  ``hf:<owner>/<name>`` for a hub dataset (the only form that may use the network), read as math data.

Math data (files, shared sets, datasets) may hold chat ``messages`` records; the answer is read from
a response with ``answer_extract`` (last ``\\boxed{}``, ``####``, last number, or ``answer_regex``)
and the prompt's instruction matches it unless ``prompt_template`` is given (see ``math_jsonl``).

Results are appended to ``<out>/results.jsonl``, one JSON line per prompt (id, responses, scores,
extracted answers, lengths, mean token entropies), flushed as soon as the prompt's batch is done;
a second run with the same ``<out>`` skips the prompts already there (``overwrite=True`` starts
over). The summary (``summary.json`` and ``summary.md``) is always recomputed from the whole file.

Reproducibility: every batch of prompts is sampled with a seed derived from ``seed`` and the ids
in the batch, so a rerun gives the same responses for the same batches; a resumed run forms its
batches from the remaining prompts, so its samples are valid but not bitwise those of an
uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from rlvr.errors import ConfigError
from rlvr.eval.metrics import (
    accuracy_per_1k_tokens,
    answer_entropy,
    avg_at_n,
    default_ks,
    distinct_answers,
    distinct_n,
    empirical_support,
    maj_at_k,
    pass_at_k,
    percentile,
    support_change,
)
from rlvr.rollout.engines import build_engine
from rlvr.rollout.stage import Sampling, sample_and_score
from rlvr.tasks import build_task
from rlvr.tasks.base import Problem, Task, context_length, drop_unusable, stable_hash

# --------------------------------------------------------------------------------------------------
# Data

SHARED_SETS: dict[str, dict[str, str]] = {
    "aime24": {"question_field": "problem", "answer_field": "answer", "answer_format": "plain"},
    "aime25": {"question_field": "problem", "answer_field": "answer", "answer_format": "plain"},
    "amc23": {"question_field": "problem", "answer_field": "answer", "answer_format": "plain"},
    "math500": {"question_field": "problem", "answer_field": "answer", "answer_format": "plain"},
    "gsm8k": {"question_field": "question", "answer_field": "answer", "answer_format": "gsm8k"},
    "minerva_math": {"question_field": "problem", "answer_field": "solution", "answer_format": "boxed"},
    # final_answer is a list of LaTeX strings; math_jsonl joins it with ", " (one element almost always)
    "olympiadbench": {"question_field": "question", "answer_field": "final_answer", "answer_format": "plain"},
}
"""Shared math test sets (``../shared/data/math/<name>.jsonl``) and their field mapping."""

DATA_DIR_ENV = "RLVR_DATA_DIR"
"""Directory holding ``<name>.jsonl`` (or ``math/<name>.jsonl``) of the shared math sets."""

DEFAULT_PROCEDURAL_PROBLEMS = 100
"""Held-out problems evaluated for ``gym:`` / ``task:`` data when no limit is given."""

ALL_ROWS = 10**12


@dataclass
class EvalData:
    """What to evaluate: a task (the verifier), its problems, and how to read an answer from a response."""

    name: str
    """Short name, used in default output paths (file stem, shared-set name, gym dataset, task)."""
    task: Task
    problems: list[Problem]
    extract: Callable[[str], str | None]
    info: dict[str, Any] = field(default_factory=dict)


def project_root() -> Path:
    """The repository root (``src/rlvr/eval/runner.py`` -> three levels up from ``rlvr``)."""
    return Path(__file__).resolve().parents[3]


def shared_data_dirs() -> list[Path]:
    """Where shared math sets are looked for, in order: ``$RLVR_DATA_DIR`` (and its ``math/``), then
    ``../shared/data/math`` next to the project root and next to the working directory."""
    dirs: list[Path] = []
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        dirs += [Path(env).expanduser(), Path(env).expanduser() / "math"]
    dirs += [project_root().parent / "shared" / "data" / "math", Path.cwd().parent / "shared" / "data" / "math"]
    return dirs


def shared_set_path(name: str) -> Path:
    """The file of shared math set ``name``; ConfigError saying where it was looked for."""
    if name not in SHARED_SETS:
        raise ConfigError(f"--data: '{name}' is not a shared math set; known: {', '.join(SHARED_SETS)}")
    for directory in shared_data_dirs():
        candidate = directory / f"{name}.jsonl"
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(d) for d in shared_data_dirs())
    raise ConfigError(f"--data {name}: {name}.jsonl not found in {looked}; set {DATA_DIR_ENV} to its directory")


def _normalise_math_answer(answer: str) -> str:
    """Spaces, ``\\left``/``\\right``, thin spaces and a trailing period removed (for voting only)."""
    text = re.sub(r"\\left|\\right|\\[,!;: ]", "", answer)
    text = "".join(text.split())
    return text.rstrip(".")


def answer_extractor(task: Task) -> Callable[[str], str | None]:
    """How the final answer of a response to ``task`` is read, for majority voting and diversity.

    A task may provide its own ``extract_answer(response)``. Otherwise: math_jsonl -> the answer its
    scorer reads (``answer_extract``; spaces removed), reasoning_gym -> the task's extractor, anything
    else (countdown, arithmetic) -> the first line. ``None`` means no answer.
    """
    own = getattr(task, "extract_answer", None)
    if callable(own):
        return own
    from rlvr.tasks.gym import ReasoningGymTask, extract_answer
    from rlvr.tasks.math import MathJsonlTask

    if isinstance(task, MathJsonlTask):

        def math_answer(response: str) -> str | None:
            answer = task.final_answer(response)
            return (_normalise_math_answer(answer) or None) if answer is not None else None

        return math_answer
    if isinstance(task, ReasoningGymTask):

        def gym_answer(response: str) -> str | None:
            answer = extract_answer(response, task.extract, task.answer_pattern)
            return (" ".join(answer.split()) or None) if answer is not None else None

        return gym_answer

    def first_line_answer(response: str) -> str | None:
        return response.split("\n", 1)[0].strip() or None

    return first_line_answer


def _flag(knob: str) -> str:
    """The ``rlvr eval`` flag of a math_jsonl knob (``question_field`` -> ``--question-field``)."""
    return "--" + knob.replace("_", "-")


def _first_row(source: str | Path, split: str | None) -> tuple[Any, str | None]:
    """The first row of a math data source and the split it is in (``test`` by default, see
    ``rlvr.tasks.math.open_records``)."""
    from rlvr.tasks.math import open_records

    records = open_records(str(source), split, prefer=("test",), split_knob="--split")
    for _, record in records.rows:
        return record, records.split
    raise ConfigError(f"--data: '{source}' holds no rows")


def _first_record(path: str | Path) -> Any:
    """The first row of a math file (the fields are guessed from it)."""
    return _first_row(path, None)[0]


def _math_task(
    path: str | Path, fields: dict[str, Any], knobs: dict[str, Any], limit: int | None, timeout_s: float
) -> Task:
    """A math_jsonl task holding every row of ``path`` as held-out problems, in file order."""
    chosen: dict[str, Any] = dict(path=str(path), heldout_fraction=1.0, limit=limit, timeout_s=timeout_s, **fields)
    chosen.update({k: v for k, v in knobs.items() if v is not None})
    return build_task("math_jsonl", chosen, where="--data")


def resolve_data(
    spec: str,
    *,
    question_field: str | None = None,
    answer_field: str | None = None,
    answer_format: str | None = None,
    prompt_template: str | None = None,
    answer_extract: str | None = None,
    answer_regex: str | None = None,
    system_prompt: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    task_knobs: dict[str, Any] | None = None,
    timeout_s: float = 10.0,
) -> EvalData:
    """The task and problems ``spec`` names (see the module docstring for the accepted forms).

    ``answer_extract`` / ``answer_regex`` set math_jsonl's knobs of those names (reasoning_gym's
    ``extract`` / ``answer_regex`` for ``gym:`` data); ``system_prompt`` applies to math data.
    """
    from rlvr.tasks.math import DATA_SUFFIXES, HUB_PREFIX, guess_fields

    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    knobs = dict(task_knobs or {})
    if spec.startswith(("gym:", "task:")):
        kind, _, name = spec.partition(":")
        if not name:
            raise ConfigError(f"--data: '{spec}' names no {'dataset' if kind == 'gym' else 'task'}")
        if system_prompt is not None:
            raise ConfigError("--system-prompt applies to math data (files, shared sets, dataset directories, hf:)")
        if kind == "gym":
            given = {"extract": answer_extract, "answer_regex": answer_regex, "prompt_template": prompt_template}
            gym_knobs = {"dataset": name, **{k: v for k, v in given.items() if v is not None}, **knobs}
            task = build_task("reasoning_gym", gym_knobs, where="--task-arg")
        else:
            if answer_extract is not None or answer_regex is not None:
                raise ConfigError(
                    "--answer-extract and --answer-regex apply to math and gym: data; use --task-arg for task:"
                )
            task = build_task(name, knobs, where="--task-arg")
        count = limit or DEFAULT_PROCEDURAL_PROBLEMS
        problems = task.heldout_problems(count)
        if not problems:
            raise ConfigError(f"--data: task '{spec}' has no held-out problems")
        info = {"kind": kind, "name": name, "knobs": knobs, "split": "heldout"}
        return EvalData(name=name, task=task, problems=problems, extract=answer_extractor(task), info=info)
    if knobs:
        raise ConfigError("--task-arg applies to gym:<dataset> and task:<name> data only")

    mapping = dict(question_field=question_field, answer_field=answer_field, answer_format=answer_format)
    math_knobs = dict(
        prompt_template=prompt_template,
        answer_extract=answer_extract,
        answer_regex=answer_regex,
        system_prompt=system_prompt,
    )
    path = Path(spec).expanduser()
    hub = spec.startswith(HUB_PREFIX)
    if spec in SHARED_SETS and not path.exists():
        if split is not None:
            raise ConfigError(f"--split applies to dataset directories and hf: data, not the shared set {spec}")
        path = shared_set_path(spec)
        fields: dict[str, Any] = {**SHARED_SETS[spec], **{k: v for k, v in mapping.items() if v is not None}}
        task = _math_task(path, fields, math_knobs, limit, timeout_s)
        name, info = spec, {"kind": "shared", "name": spec, "path": str(path), **fields}
    elif hub or path.is_file() or path.is_dir():
        if path.is_file() and not hub and path.suffix.lower() not in DATA_SUFFIXES:
            raise ConfigError(f"--data: '{spec}' must be a {', '.join(DATA_SUFFIXES)} file")
        record, chosen = _first_row(spec, split)
        fields = guess_fields(record, **mapping, where=f"'{spec}'", source="--data", flag=_flag)
        if chosen is not None:
            fields["split"] = chosen
        task = _math_task(spec if hub else path, fields, math_knobs, limit, timeout_s)
        if path.is_file() and not hub:
            name, info = path.stem, {"kind": "file", "path": str(path.resolve()), **fields}
        else:
            label = spec[len(HUB_PREFIX) :].split(":")[0].rstrip("/").rsplit("/", 1)[-1] if hub else path.resolve().name
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", label) or "dataset"
            info = {"kind": "hub" if hub else "hf_local", "path": spec if hub else str(path.resolve()), **fields}
    else:
        raise ConfigError(
            f"--data: '{spec}' is neither a local {'/'.join(DATA_SUFFIXES)} file or dataset directory, nor a shared "
            f"math set ({', '.join(SHARED_SETS)}), nor gym:<reasoning-gym dataset>, nor task:<registered task>. "
            f"A Hugging Face hub dataset is read only when written {HUB_PREFIX}<owner>/<name>[:<config>] "
            "(it needs a network); a local one is a directory (datasets.save_to_disk output or data files)"
        )
    problems = task.heldout_problems(ALL_ROWS)  # heldout_fraction=1: every row, in file order
    info["answer_extract"] = getattr(task, "answer_extract", "boxed")
    return EvalData(name=name, task=task, problems=problems, extract=answer_extractor(task), info=info)


# --------------------------------------------------------------------------------------------------
# Results file


RESULTS_FILE = "results.jsonl"
SETTINGS_FILE = "eval_config.json"
RESUME_KEYS = (
    "model", "data", "n", "temperature", "top_p", "top_k", "max_new_tokens", "chat_template", "seed", "prompt_template",
    "answer_extract", "answer_regex", "system_prompt", "split",
)
"""Settings that must match for a run to continue an existing results file."""


def parse_results(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Records of a results file by prompt id and the number of unreadable lines (the file is only read)."""
    records: dict[str, dict[str, Any]] = {}
    bad = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and "id" in record and "correct" in record:
            records[str(record["id"])] = record
        else:
            bad += 1
    return records, bad


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Records of a results file by prompt id. A torn last line (a crash mid-write) is dropped and
    the file rewritten without it, so appending continues on a clean line."""
    if not path.exists():
        return {}
    records, bad = parse_results(path)
    raw = path.read_bytes()
    if bad or (raw and not raw.endswith(b"\n")):
        with path.open("w", encoding="utf-8") as handle:
            for record in records.values():
                handle.write(json.dumps(record) + "\n")
    return records


def _append(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _check_settings(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Start fresh (``overwrite``), or check that an existing results file used the same settings."""
    results, stored = out_dir / RESULTS_FILE, out_dir / SETTINGS_FILE
    if overwrite:
        for path in (results, stored, out_dir / "summary.json", out_dir / "summary.md"):
            path.unlink(missing_ok=True)
    elif results.exists() and stored.exists():
        try:
            old = json.loads(stored.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        for key in RESUME_KEYS:
            if key in old and old[key] != settings.get(key):
                raise ConfigError(
                    f"{out_dir} holds results made with {key}={old[key]!r}, not {settings.get(key)!r}; "
                    "use another --out, or --overwrite to start over"
                )
    out_dir.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(settings, indent=2, default=str) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Summary


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(records: list[dict[str, Any]], n: int, ks: list[int]) -> dict[str, float]:
    """Aggregate metrics over per-prompt records (each with ``n`` samples).

    pass@k: unbiased estimator, averaged over prompts. maj@k: majority vote over the first ``k``
    samples (ties: mean score of the tied answers). avg@n: mean correctness. Lengths are in tokens
    (EOS included); ``entropy/mean`` is token-weighted, its percentiles are over per-response means.
    ``distinct_<j>`` is distinct-j of a prompt's ``n`` responses (model tokens), averaged over prompts.
    ``answers/entropy`` is the answer-level entropy (nats) of a prompt's extracted answers
    (:func:`rlvr.eval.metrics.answer_entropy`), averaged over prompts: next to the token-level
    ``entropy/mean`` it shows whether uncertain tokens still end in few distinct answers.
    """
    correct = [[bool(c) for c in r["correct"]] for r in records]
    lengths = [int(x) for r in records for x in r["lengths"]]
    flat_correct = [c for cs in correct for c in cs]
    out: dict[str, float] = {
        "num_prompts": float(len(records)),
        "num_responses": float(len(flat_correct)),
        "accuracy": _mean([avg_at_n(cs) for cs in correct]),
    }
    out[f"avg@{n}"] = out["accuracy"]
    for k in ks:
        out[f"pass@{k}"] = _mean([pass_at_k(len(cs), sum(cs), k) for cs in correct])
    for k in ks:
        out[f"maj@{k}"] = _mean([maj_at_k(r["answers"], r["correct"], k) for r in records])
    out["length/mean"] = _mean([float(x) for x in lengths])
    for q in (50, 90, 99):
        out[f"length/p{q}"] = percentile(lengths, q)
    out["length/max"] = float(max(lengths)) if lengths else float("nan")
    out["length/correct_mean"] = _mean([float(x) for r in records for x, c in zip(r["lengths"], r["correct"]) if c])
    out["length/incorrect_mean"] = _mean([float(x) for r in records for x, c in zip(r["lengths"], r["correct"]) if not c])
    out["truncated_frac"] = _mean([float(t) for r in records for t in r.get("truncated", [])])
    entropies = [(float(h), int(x)) for r in records if r.get("entropy") for h, x in zip(r["entropy"], r["lengths"])]
    if entropies:
        tokens = sum(x for _, x in entropies)
        out["entropy/mean"] = sum(h * x for h, x in entropies) / tokens if tokens else float("nan")
        for q in (10, 50, 90):
            out[f"entropy/p{q}"] = percentile([h for h, x in entropies if x > 0], q)
    answers = [r["answers"] for r in records]
    out["answers/distinct_mean"] = _mean([float(distinct_answers(a)) for a in answers])
    out["answers/distinct_frac"] = _mean([distinct_answers(a) / len(a) for a in answers if a])
    out["answers/none_frac"] = _mean([float(x is None) for a in answers for x in a])
    out["answers/entropy"] = _mean([answer_entropy(a) for a in answers])
    for key in sorted({k for r in records for k in r.get("diversity", {})}):
        out[key] = _mean([float(r["diversity"][key]) for r in records if key in r.get("diversity", {})])
    out["tokens/total"] = float(sum(lengths))
    out["accuracy_per_1k_tokens"] = accuracy_per_1k_tokens(sum(flat_correct), sum(lengths))
    return out


SUPPORT_KEYS: dict[str, Callable[[dict[str, Any]], list[Any]]] = {
    "answer": lambda record: list(record["answers"]),
    "response": lambda record: [" ".join(str(text).split()) or None for text in record["responses"]],
}
"""What identifies a sample's solution in the support comparison: its extracted answer, or its whole
response (whitespace-normalised): distinct correct answers vs distinct correct completions."""


def compare_to_base(
    records: list[dict[str, Any]], base_records: list[dict[str, Any]], min_frac: float = 0.0
) -> dict[str, float]:
    """Empirical-support change of this model against a base model's samples of the same prompts.

    The Invisible Leash (arXiv 2507.14843) reports that RLVR raises pass@1 while, at large
    sampling budgets, the *shrinkage* of the base model's empirical support outweighs its
    *expansion*. Per prompt (matched by id), the support of each model is
    :func:`rlvr.eval.metrics.empirical_support` of its samples, with solutions identified by the
    extracted answer (``support/answer/*``) or by the whole response (``support/response/*``);
    summed over prompts:

    * ``base``, ``model``: total support sizes; ``preserved`` = sum |S_base & S|, ``shrunk`` =
      sum |S_base - S|, ``expanded`` = sum |S - S_base|;
    * ``preservation`` = preserved / base (NaN when the base support is empty).

    And per prompt (solved = at least one correct sample): ``support/prompts_both``,
    ``support/prompts_base_only`` (solved by the base model only), ``support/prompts_model_only``,
    ``support/prompts_neither``, over the ``support/prompts`` common prompts.

    [INFERENCE] These definitions follow the abstract and secondary summaries of the paper (its
    exact support thresholds and k values were not available): ``min_frac`` is the optional
    frequency threshold; the two sample counts should be equal for a fair comparison.
    """
    base_by_id = {str(r["id"]): r for r in base_records}
    pairs = [(r, base_by_id[str(r["id"])]) for r in records if str(r["id"]) in base_by_id]
    out: dict[str, float] = {"support/prompts": float(len(pairs))}
    for unit, keys_of in SUPPORT_KEYS.items():
        totals = {"base": 0, "model": 0, "preserved": 0, "shrunk": 0, "expanded": 0}
        for record, base in pairs:
            new_support = empirical_support(keys_of(record), record["correct"], min_frac)
            base_support = empirical_support(keys_of(base), base["correct"], min_frac)
            totals["base"] += len(base_support)
            totals["model"] += len(new_support)
            for key, value in support_change(base_support, new_support).items():
                totals[key] += value
        out.update({f"support/{unit}/{key}": float(value) for key, value in totals.items()})
        out[f"support/{unit}/preservation"] = totals["preserved"] / totals["base"] if totals["base"] else float("nan")
    solved = [(any(r["correct"]), any(b["correct"])) for r, b in pairs]
    out["support/prompts_both"] = float(sum(m and b for m, b in solved))
    out["support/prompts_base_only"] = float(sum(b and not m for m, b in solved))
    out["support/prompts_model_only"] = float(sum(m and not b for m, b in solved))
    out["support/prompts_neither"] = float(sum(not m and not b for m, b in solved))
    return out


def read_base_results(path: str | Path) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    """``(results file, records, its eval_config.json or {})`` of a base model's eval: ``path`` is an
    ``rlvr eval`` output directory or its ``results.jsonl``. Read only (a torn line is skipped)."""
    given = Path(path)
    results = given / RESULTS_FILE if given.is_dir() else given
    if not results.is_file():
        raise ConfigError(f"--base-results: no {RESULTS_FILE} at '{path}' (give an rlvr eval output directory)")
    records, _bad = parse_results(results)
    if not records:
        raise ConfigError(f"--base-results: {results} holds no results")
    try:
        settings = json.loads((results.parent / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        settings = {}
    return results, list(records.values()), settings if isinstance(settings, dict) else {}


BASE_COLUMNS = ("accuracy", "pass@{n}", "entropy/mean", "answers/entropy", "answers/distinct_mean")
"""Metrics shown side by side for the base model and this one (``{n}``: the smaller sample count)."""


def _json_safe(value: Any) -> Any:
    """NaN -> None recursively, so summary.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.0f}" if value.is_integer() and abs(value) >= 10 else f"{value:.4g}"
    return str(value)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a markdown page."""
    s = summary["settings"]
    lines = [
        f"# rlvr eval: {Path(str(s['model'])).name} on {summary['data']['name']}",
        "",
        f"- model: `{s['model']}`",
        f"- data: `{s['data']}` ({summary['data'].get('kind')}; {summary['metrics']['num_prompts']:.0f} prompts)",
        f"- sampling: n={s['n']}, temperature={s['temperature']}, top_p={s['top_p']}, top_k={s['top_k']}, "
        f"max_new_tokens={s['max_new_tokens']}, seed={s['seed']}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in summary["metrics"].items()]
    base = summary.get("base")
    if base:
        n = min(int(base["n"]), int(s["n"]))
        lines += [
            "",
            f"## Against the base model (`{base['results']}`, {base['metrics']['num_prompts']:.0f} common prompts)",
            "",
            "| metric | base | this model |",
            "|---|---|---|",
        ]
        for column in BASE_COLUMNS:
            key = column.format(n=n)
            lines.append(f"| {key} | {_fmt(base['metrics'].get(key))} | {_fmt(base['model_metrics'].get(key))} |")
        lines += [
            "",
            "support/*: distinct correct answers (or responses) per prompt, summed over the common prompts: "
            "preserved = in both, shrunk = base model only, expanded = this model only (The Invisible Leash, "
            "arXiv 2507.14843; definitions inferred from its abstract).",
        ]
    lines += [
        "",
        "pass@k: unbiased estimator (Chen et al. 2021). maj@k: majority vote of the extracted answers of the "
        "first k samples; ties score the mean of the tied answers. Lengths in tokens. distinct_j: distinct "
        "j-grams / all j-grams among a prompt's responses, averaged over prompts.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The evaluation loop


def _base_summary(
    final: list[dict[str, Any]],
    n: int,
    ks: list[int],
    base: tuple[Path, list[dict[str, Any]], dict[str, Any]],
    settings: dict[str, Any],
    console: Any,
) -> dict[str, Any]:
    """The base model's summary and this model's over their common prompts (warnings for unequal settings)."""
    from rich.markup import escape

    path, base_records, base_settings = base
    base_ids = {str(r["id"]) for r in base_records}
    common = [r for r in final if str(r["id"]) in base_ids]
    common_ids = {str(r["id"]) for r in common}
    base_common = [r for r in base_records if str(r["id"]) in common_ids]
    base_n = min((len(r["correct"]) for r in base_common), default=n)
    if any(len(r["correct"]) != base_n for r in base_common):
        raise ConfigError(f"--base-results: {path} holds prompts with different sample counts")
    notes = [f"{base_n} base samples per prompt against {n}"] if base_n != n else []
    notes += [
        f"{key}={base_settings[key]!r} there, {settings.get(key)!r} here"
        for key in ("answer_extract", "answer_regex", "temperature", "max_new_tokens")
        if key in base_settings and base_settings[key] != settings.get(key)
    ]
    if not common:
        notes.append("no prompt id in common")
    for note in notes:
        console.print(f"[yellow]warning:[/] --base-results: {escape(note)}; the support comparison is not like for like")
    shared = sorted({*ks, min(n, base_n)})
    return {
        "results": str(path),
        "n": base_n,
        "model": base_settings.get("model"),
        "metrics": summarize(base_common, base_n, [k for k in shared if k <= base_n]),
        "model_metrics": summarize(common, n, [k for k in shared if k <= n]),
    }


def default_out_dir(model_path: Path, data_name: str) -> Path:
    """``<run>/eval/<data>`` when the model is a run's ``final_model`` (``rlvr report <run>`` then
    shows it), else ``eval_results/<model dir name>/<data>``."""
    model_path = model_path.resolve()
    if (model_path.parent / "metrics.jsonl").exists():
        return model_path.parent / "eval" / data_name
    return Path("eval_results") / model_path.name / data_name


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device: '{device}' is not a torch device") from exc


def _pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"--dtype must be auto or one of {', '.join(table)}, got '{dtype}'")
    return table[dtype]


def _usable_prompts(
    problems: list[Problem], model: Path | Any, tokenizer: Any, trust_remote_code: bool, console: Any
) -> tuple[list[Problem], Counter[str]]:
    """``problems`` without prompts longer than the model's context (or empty); one warning for the rest.

    ``model`` is a model directory (its tokenizer is loaded to count tokens) or a loaded model.
    """
    from rich.markup import escape

    if isinstance(model, Path):
        from rlvr.models.loading import load_tokenizer

        tokenizer = load_tokenizer(str(model), trust_remote_code=trust_remote_code)
        try:
            config = json.loads((model / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}  # loading the model reports a broken config.json
    else:
        config = model.config.to_dict() if hasattr(getattr(model, "config", None), "to_dict") else {}
    kept, skipped, note = drop_unusable(
        problems,
        lambda text: len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]),
        context_length(config) if isinstance(config, dict) else None,
        "evaluation",
    )
    if note:
        console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False)
    if problems and not kept:
        raise ConfigError(f"--data: no prompt fits the model ({note})")
    return kept, skipped


@torch.no_grad()
def _entropies(model: Any, batch: Any, temperature: float, rows: int, chunk_size: int) -> list[float]:
    """Mean per-token entropy (of the sampling distribution) of each response."""
    from rlvr.ops.forward import Entropy, policy_forward

    out: list[float] = []
    for start in range(0, batch.input_ids.shape[0], rows):
        index = torch.arange(start, min(start + rows, batch.input_ids.shape[0]), device=batch.input_ids.device)
        part = batch.rows(index)
        fwd = policy_forward(model, part, temperature=temperature, chunk_size=chunk_size, quantities=[Entropy()])
        mask = part.response_mask.to(fwd["entropy"].dtype)
        sums = (fwd["entropy"].float() * mask).sum(-1)
        counts = mask.sum(-1).clamp(min=1)
        out.extend((sums / counts).tolist())
    return out


def _progress(console: Any, disable: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=disable,
    )


def evaluate_model(
    model: str | Path | Any,
    data: str,
    out_dir: str | Path | None = None,
    *,
    tokenizer: Any = None,
    n: int = 4,
    ks: list[int] | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 1024,
    batch_prompts: int = 8,
    limit: int | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    answer_format: str | None = None,
    prompt_template: str | None = None,
    answer_extract: str | None = None,
    answer_regex: str | None = None,
    system_prompt: str | None = None,
    split: str | None = None,
    task_knobs: dict[str, Any] | None = None,
    chat_template: str = "auto",
    seed: int = 0,
    entropy: bool = True,
    entropy_rows: int = 16,
    entropy_chunk_size: int = 1024,
    timeout_s: float = 10.0,
    device: str = "auto",
    dtype: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    console: Any = None,
    trust_remote_code: bool = False,
    base_results: str | Path | None = None,
    support_min_frac: float = 0.0,
) -> dict[str, Any]:
    """Sample ``n`` responses per prompt of ``data`` from ``model``, verify them, and summarise.

    ``model`` is a local Hugging Face model directory (e.g. a run's ``final_model``), or an already
    loaded model together with ``tokenizer``. ``temperature=0`` samples greedily (then ``n`` should
    be 1; entropies are taken at temperature 1). Writes ``results.jsonl``, ``eval_config.json``,
    ``summary.json`` and ``summary.md`` under ``out_dir`` and returns the summary dict, whose
    ``metrics`` holds accuracy (= avg@n), pass@k and maj@k for ``ks`` (default 1, 2, 4, .. n), length
    statistics, token entropy, answer-level entropy, answer diversity and accuracy per 1k tokens.
    Python code shipped in the model directory runs only with ``trust_remote_code=True``.

    ``base_results`` (another eval's output directory, e.g. of the model before RL, on the same
    data) adds the empirical-support comparison of :func:`compare_to_base` (``support/*``, with
    ``support_min_frac`` as its frequency threshold) to ``metrics``, and ``summary["base"]``: the
    base model's summary and this model's, both over the common prompts, side by side.
    """
    from rich.console import Console


    console = console or Console()
    if n < 1:
        raise ConfigError(f"-n must be >= 1, got {n}")
    if temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {temperature}")
    if max_new_tokens < 1 or batch_prompts < 1:
        raise ConfigError("--max-new-tokens and --batch-prompts must be >= 1")
    if chat_template not in ("auto", "on", "off"):
        raise ConfigError(f"--chat-template must be auto, on or off, got '{chat_template}'")
    if temperature == 0 and n > 1:
        console.print(f"[yellow]warning:[/] temperature 0 samples greedily: the {n} samples per prompt will be identical")
    ks = sorted(set(ks)) if ks else default_ks(n)
    if ks[0] < 1 or ks[-1] > n:
        raise ConfigError(f"--k values must be in 1..n={n}, got {ks}")
    if not 0.0 <= support_min_frac <= 1.0:
        raise ConfigError(f"--support-min-frac must be in [0, 1], got {support_min_frac}")
    base = read_base_results(base_results) if base_results is not None else None

    model_path = Path(model) if isinstance(model, (str, Path)) else None
    if model_path is None and tokenizer is None:
        raise ConfigError("evaluate_model: pass a tokenizer with an already loaded model")
    settings: dict[str, Any] = {
        "model": str(model_path.resolve()) if model_path else type(model).__name__,
        "data": data,
        "n": n,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "max_new_tokens": max_new_tokens,
        "chat_template": chat_template,
        "seed": seed,
        "prompt_template": prompt_template,
        "answer_extract": answer_extract,
        "answer_regex": answer_regex,
        "system_prompt": system_prompt,
        "split": split,
        "limit": limit,
        "ks": ks,
    }
    if model_path is not None:
        from rlvr.models.loading import check_model_dir

        check_model_dir(str(model_path))
    # Resolve the data before touching out_dir so a bad --data leaves nothing behind.
    eval_data = resolve_data(
        data,
        question_field=question_field,
        answer_field=answer_field,
        answer_format=answer_format,
        prompt_template=prompt_template,
        answer_extract=answer_extract,
        answer_regex=answer_regex,
        system_prompt=system_prompt,
        split=split,
        limit=limit,
        task_knobs=task_knobs,
        timeout_s=timeout_s,
    )
    if out_dir is None:
        out_dir = default_out_dir(model_path, eval_data.name) if model_path else Path("eval_results") / eval_data.name
    out = Path(out_dir)
    _check_settings(out, settings, overwrite)
    results_path = out / RESULTS_FILE

    problems: list[Problem] = []
    seen: set[str] = set()
    for problem in eval_data.problems:
        if problem.id not in seen:
            seen.add(problem.id)
            problems.append(problem)
    problems, skipped = _usable_prompts(problems, model_path or model, tokenizer, trust_remote_code, console)
    done = read_results(results_path)
    todo = [p for p in problems if p.id not in done]
    t0 = time.perf_counter()
    generated_tokens = 0
    if todo:
        if model_path is not None:
            from rlvr.models.loading import load_model_and_tokenizer

            dev = _pick_device(device)
            model, tokenizer = load_model_and_tokenizer(
                str(model_path), dtype=_pick_dtype(dtype, dev), trust_remote_code=trust_remote_code
            )
            model.to(dev)
        was_training = bool(getattr(model, "training", False))
        model.eval()
        dev = next(model.parameters()).device
        engine = build_engine("hf", tokenizer, chat_template=chat_template, model=model)  # an MDLM gets its own decoder
        greedy = temperature == 0
        sampling = Sampling(
            n=n, max_new_tokens=max_new_tokens, temperature=temperature if not greedy else 1.0, top_p=top_p, top_k=top_k, greedy=greedy
        )
        index_of = {p.id: i for i, p in enumerate(problems)}
        with _progress(console, disable=not progress) as bar_owner:
            bar = bar_owner.add_task(f"eval {eval_data.name}", total=len(problems), completed=len(problems) - len(todo), info="")
            correct_so_far, count_so_far = 0, 0
            for start in range(0, len(todo), batch_prompts):
                chunk = todo[start : start + batch_prompts]
                batch_seed = (seed * 1_000_003 + stable_hash("\n".join(p.id for p in chunk))) % (2**63 - 1)
                with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                    torch.manual_seed(batch_seed)
                    batch, scores, _ = sample_and_score(engine, model, chunk, sampling, eval_data.task.score, timeout_s)
                ents = _entropies(model, batch, temperature if not greedy else 1.0, entropy_rows, entropy_chunk_size) if entropy else None
                lengths = batch.response_mask.sum(-1).long().tolist()
                generated_tokens += sum(lengths)
                response_ids = batch.response_ids.tolist()
                mask = batch.response_mask.bool().tolist()
                records = []
                for i, problem in enumerate(chunk):
                    rows = range(i * n, (i + 1) * n)
                    texts = [batch.responses[j] for j in rows]
                    tokens = [[t for t, keep in zip(response_ids[j], mask[j]) if keep] for j in rows]
                    answers = []
                    for text in texts:
                        try:
                            answers.append(eval_data.extract(text))
                        except Exception:  # noqa: BLE001 - a broken extractor means "no answer"
                            answers.append(None)
                    record = {
                        "id": problem.id,
                        "index": index_of[problem.id],
                        "prompt": problem.prompt,
                        **({"system": problem.meta["system"]} if problem.meta.get("system") else {}),
                        "reference": problem.answer,
                        "responses": texts,
                        "scores": [float(scores[j]) for j in rows],
                        "correct": [bool(scores[j] >= 1.0) for j in rows],
                        "answers": answers,
                        "lengths": [int(lengths[j]) for j in rows],
                        "truncated": [bool(batch.truncated[j]) for j in rows],
                        "entropy": [round(float(ents[j]), 6) for j in rows] if ents is not None else None,
                        "diversity": {f"distinct_{g}": distinct_n(tokens, g) for g in (1, 2, 3)},
                    }
                    records.append(record)
                    correct_so_far += sum(record["correct"])
                    count_so_far += n
                _append(results_path, records)
                bar_owner.update(bar, advance=len(chunk), info=f"acc {correct_so_far / max(1, count_so_far):.3f}")
        model.train(was_training)

    done = read_results(results_path)
    final = [done[p.id] for p in problems if p.id in done]
    for record in final:
        if len(record["correct"]) != n:
            raise ConfigError(f"{results_path}: prompt {record['id']} has {len(record['correct'])} samples, not n={n}")
    summary = {
        "settings": settings,
        "data": {"name": eval_data.name, **eval_data.info, **({"skipped_prompts": dict(skipped)} if skipped else {})},
        "task": getattr(eval_data.task, "name", type(eval_data.task).__name__),
        "metrics": summarize(final, n, ks),
        "complete": len(final) == len(problems),
        "last_invocation": {
            "prompts_generated": len(todo),
            "seconds": time.perf_counter() - t0,
            "tokens": generated_tokens,
        },
        "results": str(results_path),
    }
    if base is not None:
        summary["metrics"].update(compare_to_base(final, base[1], support_min_frac))
        summary["base"] = _base_summary(final, n, ks, base, settings, console)
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2, default=str) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    summary["out_dir"] = str(out)
    return summary
