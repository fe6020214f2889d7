"""Run reports: PNG plots, a markdown summary and one self-contained HTML page (``rlvr report``).

``rlvr report RUN_DIR`` writes into the run directory: ``curves.png`` (reward, accuracy, entropy
percentiles, length, KL, clip fraction, held-out pass@k over steps), ``passk.png`` (held-out pass@k
against k at the start and end of the run, and from ``rlvr eval`` summaries), ``pareto.png``
(accuracy against mean response length per evaluation step, and eval summaries), ``report.md`` and
``report.html`` (the same figures embedded as base64 PNGs, so the page stands alone).

``rlvr report RUN_A RUN_B ... --out DIR`` overlays the runs in the same figures and adds a table of
their final values. A run directory holds ``metrics.jsonl`` (from ``rlvr train``) and/or eval
summaries: its own ``summary.json`` (an ``rlvr eval`` output directory) or ``eval/*/summary.json``
and ``*/summary.json`` beneath it (``rlvr eval <run>/final_model`` writes to ``<run>/eval/<data>``).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlvr.errors import RLVRError  # noqa: E402
from rlvr.train.logging import read_metrics  # noqa: E402

PANELS: list[tuple[str, list[str]]] = [
    ("reward", ["reward/mean"]),
    ("accuracy", ["accuracy", "eval/accuracy_greedy", "eval/pass@1"]),
    ("entropy percentiles", ["entropy/p10", "entropy/p50", "entropy/mean", "entropy/p90"]),
    ("response length", ["response_length/mean", "eval/response_length"]),
    ("KL to reference", ["kl/k1_mean", "kl"]),
    ("clip fraction", ["clip_frac"]),
]
"""Training-curve panels: title and the metric keys drawn in it (the absent ones are skipped)."""

SMOOTH_ABOVE = 60
"""Series with more points than this are drawn faintly with an exponential moving average on top."""

_PASS_KEY = re.compile(r"^eval/pass@(\d+)$")
_SUMMARY_PASS_KEY = re.compile(r"^pass@(\d+)$")


@dataclass
class RunData:
    """One run directory: its training metrics and the eval summaries found in it."""

    path: Path
    label: str
    records: list[dict[str, Any]] = field(default_factory=list)
    evals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(label, summary.json content) of ``rlvr eval`` outputs."""

    @property
    def eval_records(self) -> list[dict[str, Any]]:
        """Records with a held-out evaluation (any ``eval/`` key), in step order."""
        return [r for r in self.records if any(k.startswith("eval/") for k in r)]


# --------------------------------------------------------------------------------------------------
# Loading


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("metrics"), dict) else None


def find_eval_summaries(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(label, summary) of the eval summaries in ``run_dir``: its own ``summary.json``,
    ``*/summary.json`` and ``eval/*/summary.json``; the label is the path below ``run_dir``."""
    paths = sorted({*run_dir.glob("summary.json"), *run_dir.glob("*/summary.json"), *run_dir.glob("eval/*/summary.json")})
    out = []
    for path in paths:
        summary = _read_summary(path)
        if summary is not None:
            rel = path.parent.relative_to(run_dir).as_posix()
            data_name = (summary.get("data") or {}).get("name")
            out.append(((data_name or rel) if rel == "." else rel.removeprefix("eval/"), summary))
    return out


def unique_labels(paths: list[Path]) -> list[str]:
    """Shortest trailing path parts that tell the runs apart (``grpo/seed0`` vs ``siren/seed0``)."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max((len(p) for p in parts), default=1) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def load_runs(run_dirs: list[Path | str]) -> list[RunData]:
    """Metrics and eval summaries of each directory; RLVRError naming one that has neither."""
    paths = [Path(d) for d in run_dirs]
    runs = []
    for path, label in zip(paths, unique_labels(paths)):
        records = read_metrics(path / "metrics.jsonl") if path.is_dir() else []
        evals = find_eval_summaries(path) if path.is_dir() else []
        if not records and not evals:
            raise RLVRError(
                f"{path / 'metrics.jsonl'} is missing or empty and there is no eval summary.json: "
                f"is {path} a run directory?"
            )
        runs.append(RunData(path=path, label=label, records=records, evals=evals))
    return runs


# --------------------------------------------------------------------------------------------------
# Figures


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(int(r.get("step", 0)))
            ys.append(float(value))
    return xs, ys


def _ema(ys: list[float], span: int) -> list[float]:
    alpha = 2.0 / (span + 1.0)
    out, value = [], ys[0]
    for y in ys:
        value = alpha * y + (1 - alpha) * value
        out.append(value)
    return out


def _colors(n: int) -> list[Any]:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


_STYLES = ["-", "--", ":", "-."]


def _pass_ks(records: list[dict[str, Any]]) -> list[int]:
    return sorted({int(m.group(1)) for r in records for k in r if (m := _PASS_KEY.match(k))})


def _save(fig: Any, out_path: Path) -> Path:
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def curve_panels(runs: dict[str, list[dict[str, Any]]]) -> list[tuple[str, list[str]]]:
    """The panels of :data:`PANELS` (plus held-out pass@k over steps) that some run has data for."""
    all_records = [r for records in runs.values() for r in records]
    ks = _pass_ks(all_records)
    panels = list(PANELS)
    if len(ks) > 1:
        panels.append(("held-out pass@k", [f"eval/pass@{k}" for k in ks]))
    return [(t, keys) for t, keys in panels if any(_series(r, k)[0] for r in runs.values() for k in keys)]


def plot_curves(runs: dict[str, list[dict[str, Any]]], out_path: Path) -> Path:
    """One figure with a panel per metric family; several runs are overlaid (a colour per run,
    a line style per metric). Long noisy series get an EMA line."""
    panels = curve_panels(runs)
    cols = 3
    rows = max(1, (len(panels) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    colors = _colors(len(runs))
    for ax, (title, keys) in zip(axes.flat, panels):
        for (run_name, records), color in zip(runs.items(), colors):
            for i, key in enumerate(keys):
                xs, ys = _series(records, key)
                if not xs:
                    continue
                label = key if len(runs) == 1 else f"{run_name}: {key}"
                c = f"C{i}" if len(runs) == 1 else color
                style = "-" if len(runs) == 1 else _STYLES[i % len(_STYLES)]
                if len(xs) > SMOOTH_ABOVE:
                    ax.plot(xs, ys, style, color=c, alpha=0.25, lw=0.8)
                    ax.plot(xs, _ema(ys, max(2, len(xs) // 20)), style, color=c, lw=1.6, label=f"{label} (EMA)")
                else:
                    ax.plot(xs, ys, style, color=c, marker="o" if len(xs) < 12 else None, ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    return _save(fig, out_path)


def _summary_pass_curve(summary: dict[str, Any]) -> tuple[list[int], list[float]]:
    metrics = summary.get("metrics", {})
    pairs = sorted(
        (int(m.group(1)), float(v)) for k, v in metrics.items() if (m := _SUMMARY_PASS_KEY.match(k)) and isinstance(v, (int, float))
    )
    return [k for k, _ in pairs], [v for _, v in pairs]


def plot_pass_at_k(runs: list[RunData], out_path: Path) -> Path | None:
    """Held-out pass@k against k: first (dashed) and last (solid) evaluation of each run, and
    every eval summary (dotted, square markers). None when no run has pass@k at two or more k."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    drawn = 0
    all_ks: set[int] = set()
    for run, color in zip(runs, _colors(len(runs))):
        evals = [r for r in run.eval_records if _pass_ks([r])]
        prefix = "" if len(runs) == 1 else f"{run.label}: "
        if evals:
            ends = [(evals[0], "--", "start")] + ([(evals[-1], "-", "end")] if len(evals) > 1 else [])
            for record, style, when in ends:
                ks = _pass_ks([record])
                if len(ks) < 2:
                    continue
                ys = [float(record[f"eval/pass@{k}"]) for k in ks]
                all_ks.update(ks)
                ax.plot(ks, ys, style, color=color, marker="o", ms=4, label=f"{prefix}{when} (step {record.get('step', 0)})")
                drawn += 1
        for i, (name, summary) in enumerate(run.evals):
            ks, ys = _summary_pass_curve(summary)
            if len(ks) < 2:
                continue
            shade = color if len(runs) > 1 else f"C{(i + 2) % 10}"
            all_ks.update(ks)
            ax.plot(ks, ys, ":", color=shade, marker="s", ms=4, label=f"{prefix}eval {name}")
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k")
    ax.set_title("pass@k: start vs end of training, and evals")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, handlelength=3.5)
    return _save(fig, out_path)


def _eval_accuracy_key(records: list[dict[str, Any]]) -> str | None:
    """The held-out accuracy that matches ``eval/response_length`` (sampled responses)."""
    for key in ("eval/accuracy_sampled", "eval/pass@1", "eval/accuracy_greedy"):
        if any(key in r for r in records):
            return key
    return None


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another that is at least as short and at least as accurate, by length."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plot_pareto(runs: list[RunData], out_path: Path) -> Path | None:
    """Accuracy against mean response length: each run's held-out evaluations in step order (a
    line from the first, 'o', to the last, '*'), eval summaries as squares, and (with several runs)
    the Pareto front of the final points. None when there are no such points."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    finals: list[tuple[float, float]] = []
    drawn = 0
    for run, color in zip(runs, _colors(len(runs))):
        key = _eval_accuracy_key(run.eval_records)
        prefix = "" if len(runs) == 1 else f"{run.label}: "
        if key is not None:
            points = [
                (float(r["eval/response_length"]), float(r[key]), int(r.get("step", 0)))
                for r in run.eval_records
                if isinstance(r.get("eval/response_length"), (int, float)) and isinstance(r.get(key), (int, float))
            ]
            if points:
                xs, ys, steps = zip(*points)
                ax.plot(xs, ys, "-", color=color, alpha=0.5, lw=1)
                scatter = ax.scatter(xs, ys, c=steps, cmap="viridis", s=18, zorder=3) if len(runs) == 1 else None
                ax.scatter([xs[0]], [ys[0]], marker="o", s=60, facecolors="none", edgecolors=color, zorder=4)
                ax.scatter([xs[-1]], [ys[-1]], marker="*", s=140, color=color, zorder=4,
                           label=f"{prefix}held-out {key[5:]} (step {steps[0]}->{steps[-1]})")
                finals.append((xs[-1], ys[-1]))
                drawn += 1
                if scatter is not None and len(points) > 1:
                    fig.colorbar(scatter, ax=ax, label="step")
        for name, summary in run.evals:
            metrics = summary.get("metrics", {})
            x, y = metrics.get("length/mean"), metrics.get("accuracy")
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                ax.scatter([x], [y], marker="s", s=50, color=color, edgecolors="black", zorder=5, label=f"{prefix}eval {name}")
                finals.append((float(x), float(y)))
                drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    if len(runs) > 1 and len(finals) > 1:
        front = pareto_front(finals)
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="gray", ls="--", lw=1, label="Pareto front")
    ax.set_xlabel("mean response length (tokens)")
    ax.set_ylabel("accuracy (sampled)")
    ax.set_title("accuracy vs response length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out_path)


# --------------------------------------------------------------------------------------------------
# Pages


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _eval_table(run: RunData) -> tuple[list[str], list[list[str]]]:
    evals = run.eval_records
    keys: list[str] = []
    for r in evals:
        keys += [k for k in r if k.startswith("eval/") and k not in keys]
    return ["step", *[k[5:] for k in keys]], [[_num(r.get("step", 0)), *[_num(r.get(k)) for k in keys]] for r in evals]


_SUMMARY_COLUMNS = ["num_prompts", "accuracy", "pass@1", "maj@{n}", "pass@{n}", "length/mean", "entropy/mean",
                    "answers/distinct_mean", "distinct_2", "accuracy_per_1k_tokens"]


def _summary_table(runs: list[RunData]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "eval", "n", *[c.replace("{n}", "n") for c in _SUMMARY_COLUMNS]]
    rows = []
    for run in runs:
        for name, summary in run.evals:
            metrics = summary.get("metrics", {})
            n = (summary.get("settings") or {}).get("n", "")
            cells = [_num(metrics.get(c.replace("{n}", str(n)))) for c in _SUMMARY_COLUMNS]
            rows.append([run.label, name, str(n), *cells])
    return header, rows


_FINAL_KEYS = ["eval/accuracy_greedy", "eval/accuracy_sampled", "eval/pass@1", "eval/response_length"]
_LAST_TRAIN_KEYS = ["reward/mean", "accuracy", "entropy/mean", "response_length/mean", "kl/k1_mean", "clip_frac"]


def _comparison_table(runs: list[RunData]) -> tuple[list[str], list[list[str]]]:
    ks = _pass_ks([r for run in runs for r in run.records])
    pass_keys = [f"eval/pass@{k}" for k in ks if f"eval/pass@{k}" not in _FINAL_KEYS]
    header = ["run", "steps", *[f"start {k[5:]}" for k in _FINAL_KEYS[:1]], *[k[5:] for k in _FINAL_KEYS + pass_keys],
              *[f"last {k}" for k in _LAST_TRAIN_KEYS]]
    rows = []
    for run in runs:
        evals = run.eval_records
        first, last = (evals[0], evals[-1]) if evals else ({}, {})
        train = [r for r in run.records if "reward/mean" in r]
        last_train = train[-1] if train else {}
        steps = max((int(r.get("step", 0)) for r in run.records), default=0)
        rows.append([run.label, str(steps), _num(first.get(_FINAL_KEYS[0])),
                     *[_num(last.get(k)) for k in _FINAL_KEYS + pass_keys],
                     *[_num(last_train.get(k)) for k in _LAST_TRAIN_KEYS]])
    return _drop_empty_columns(header, rows)


def _drop_empty_columns(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """Without the columns (after the first) that are empty in every row."""
    keep = [i for i in range(len(header)) if i == 0 or any(row[i] for row in rows)]
    return [header[i] for i in keep], [[row[i] for i in keep] for row in rows]


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c or " " for c in row) + " |" for row in rows]
    return lines + [""]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:0.85em;margin:0.6em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:0.8em;color:#666}
code{background:#f5f5f5;padding:1px 4px}
"""


def _figures(runs: list[RunData], out_dir: Path) -> list[tuple[Path, str]]:
    curves = {r.label: r.records for r in runs if r.records}
    made = [
        (plot_curves(curves, out_dir / "curves.png") if curve_panels(curves) else None, "training curves over steps"),
        (plot_pass_at_k(runs, out_dir / "passk.png"), "held-out pass@k vs k (start / end of training) and eval summaries"),
        (plot_pareto(runs, out_dir / "pareto.png"), "accuracy vs mean response length (per eval step, and evals)"),
    ]
    return [(p, caption) for p, caption in made if p is not None]


def _write_pages(runs: list[RunData], out_dir: Path, title: str) -> tuple[Path, Path]:
    """report.md + report.html in ``out_dir`` for ``runs`` (one run: its tables; several: a comparison)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = _figures(runs, out_dir)
    sections: list[tuple[str, tuple[list[str], list[list[str]]] | list[tuple[str, str]]]] = []
    if len(runs) > 1:
        sections.append(("Runs compared (final values)", _comparison_table(runs)))
    else:
        run = runs[0]
        if run.eval_records:
            sections.append(("Held-out evaluation", _eval_table(run)))
        train = [r for r in run.records if "reward/mean" in r]
        if train:
            last = train[-1]
            rows = [[k, _num(v)] for k, v in last.items()]
            sections.append((f"Last training step ({last.get('step')})", (["metric", "value"], rows)))
    if any(run.evals for run in runs):
        sections.append(("Eval summaries (rlvr eval)", _summary_table(runs)))

    md = [f"# {title}", "", "Runs: " + ", ".join(f"`{r.path}`" for r in runs), ""]
    body = [f"<h1>{html.escape(title)}</h1>", "<p>Runs: " + ", ".join(f"<code>{html.escape(str(r.path))}</code>" for r in runs) + "</p>"]
    for heading, (header, rows) in sections:  # type: ignore[misc]
        if rows:
            md += [f"## {heading}", "", *_md_table(header, rows)]
            body += [f"<h2>{html.escape(heading)}</h2>", _html_table(header, rows)]
    if figures:
        md += ["## Figures", ""] + [f"![{caption}]({path.name})" for path, caption in figures] + [""]
        body += ["<h2>Figures</h2>"] + [_img_tag(path, caption) for path, caption in figures]
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text("\n".join(md), encoding="utf-8")
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    html_path.write_text(page, encoding="utf-8")
    return md_path, html_path


def write_run_report(run_dir: Path | str) -> Path:
    """``report.md``, ``report.html`` and the PNGs in ``run_dir``; returns the report.md path.

    The run needs ``metrics.jsonl`` and/or eval summaries (RLVRError otherwise).
    """
    runs = load_runs([run_dir])
    md_path, _ = _write_pages(runs, Path(run_dir), f"rlvr run report: {Path(run_dir).name}")
    return md_path


def write_comparison_report(run_dirs: list[Path | str], out_dir: Path | str) -> Path:
    """One report overlaying ``run_dirs`` (figures + a table of final values) in ``out_dir``;
    returns the report.html path."""
    if not run_dirs:
        raise RLVRError("rlvr report: give at least one run directory")
    runs = load_runs(run_dirs)
    title = "rlvr comparison: " + ", ".join(r.label for r in runs) if len(runs) > 1 else f"rlvr run report: {runs[0].label}"
    _, html_path = _write_pages(runs, Path(out_dir), title)
    return html_path
