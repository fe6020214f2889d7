"""Run reports: PNG plots of the training curves and a markdown summary (``rlvr report RUN_DIR``)."""

from __future__ import annotations

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
    ("entropy", ["entropy/p10", "entropy/p50", "entropy/mean", "entropy/p90"]),
    ("response length", ["response_length/mean", "eval/response_length"]),
    ("KL to reference", ["kl/k1_mean", "kl"]),
    ("clip fraction", ["clip_frac"]),
]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)):
            xs.append(int(r.get("step", 0)))
            ys.append(float(value))
    return xs, ys


def plot_curves(runs: dict[str, list[dict[str, Any]]], out_path: Path) -> Path:
    """One figure with a panel per metric family; several runs are overlaid for comparison."""
    panels = [(title, keys) for title, keys in PANELS if any(_series(r, k)[0] for r in runs.values() for k in keys)]
    cols = 3
    rows = max(1, (len(panels) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels):
        for run_name, records in runs.items():
            for key in keys:
                xs, ys = _series(records, key)
                if xs:
                    label = key if len(runs) == 1 else f"{run_name}: {key}"
                    ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def write_run_report(run_dir: Path | str) -> Path:
    """``report.md`` + ``curves.png`` in ``run_dir`` from its ``metrics.jsonl``."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        raise RLVRError(f"{run_dir / 'metrics.jsonl'} is missing or empty: is {run_dir} a run directory?")
    png = plot_curves({run_dir.name: records}, run_dir / "curves.png")
    evals = [r for r in records if "eval/accuracy_greedy" in r]
    lines = [f"# rlvr run report: {run_dir.name}", ""]
    if evals:
        keys = [k for k in evals[0] if k.startswith("eval/")]
        lines += ["## Held-out evaluation", "", "| step | " + " | ".join(k[5:] for k in keys) + " |"]
        lines.append("|---" * (len(keys) + 1) + "|")
        for r in evals:
            lines.append(f"| {r['step']} | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in keys) + " |")
        lines.append("")
    train = [r for r in records if "reward/mean" in r]
    if train:
        last = train[-1]
        lines += ["## Last training step", ""]
        lines += [f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in last.items()]
        lines.append("")
    lines += ["## Curves", "", f"![curves]({png.name})", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
