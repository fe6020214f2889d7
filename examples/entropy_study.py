"""Entropy study: GRPO vs a naive entropy bonus vs SIREN vs CANON on the embedded default.

    .venv/bin/python examples/entropy_study.py                       # all four methods, 200 steps, seed 0
    .venv/bin/python examples/entropy_study.py --steps 150 --seeds 0 1 2
    .venv/bin/python examples/entropy_study.py rollout.temperature=1.2 --methods grpo siren
    .venv/bin/python examples/entropy_study.py --report-only         # re-render from existing runs
    .venv/bin/python examples/entropy_study.py --out runs/probe --methods entropy_bonus \
        --warmstart runs/entropy_study/warmstart/final_model -- algo.regularizers.0.coef=0.05

What it does (Python API, one process, one run at a time):

1. **One shared warm start.** A :class:`~rlvr.train.trainer.Trainer` with ``train.steps=0`` trains
   the supervised warm start of the embedded default (tiny char-level Qwen2 on ``countdown``) into
   ``<out>/warmstart`` and saves ``<out>/warmstart/final_model``. It uses the first seed.
2. **One RL run per method and seed**, each starting from ``model=<out>/warmstart/final_model`` with
   ``warmstart.steps=0`` (forced, so a pass-through ``warmstart.steps`` override cannot warm-start a
   second time) and the same seed, steps, rollout and optimiser settings:

   ``grpo``           the default pipeline (GRPO advantage, PPO-clip 0.2/0.2, token-mean).
   ``entropy_bonus``  the SIREN paper's naive baseline (official ``naive_entropy_reg``): the SIREN
                      preset's PG part (Dr.GRPO advantage, clip 0.2/0.2, seq-mean-token-sum-norm)
                      with the SIREN regularizer replaced by ``entropy_bonus`` coef 0.005 over all
                      tokens. So ``entropy_bonus`` vs ``siren`` isolates the regularizer.
   ``siren``          the ``siren`` preset (top-p 0.8, top-20% peak-entropy tokens, anchored at
                      step 1, coef 0.005).
   ``canon``          the ``canon`` preset (entropy-split conditional advantage, mu=1, clip-higher
                      0.28, seq-mean-token-sum).

   Several seeds vary the RL seed only (rollout sampling, data order, eval sampling); the warm-started
   model is the same for every run. Tables and plots average over seeds.
3. **Report** in ``<out>``: ``entropy_study.md`` (table per method, mean over seeds, plus observations
   computed from the numbers), ``study.json`` (the same numbers), and PNGs: ``entropy.png``,
   ``accuracy.png``, ``passk.png``, ``response_length.png`` and the standard panel figure
   ``curves.png`` (:func:`rlvr.eval.report.plot_curves`, seed-averaged).

Extra positional ``key=value`` arguments (put them before ``--methods``/``--seeds``, or after ``--``)
are passed to every run (after the method's preset), e.g.
``rollout.group_size=16`` or ``train.lr=2e-4``; ``model``, ``seed``, ``train.steps``,
``warmstart.steps`` and ``output_dir`` are set by the script.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlvr.eval.report import plot_curves  # noqa: E402
from rlvr.train.config import load_config  # noqa: E402
from rlvr.train.logging import read_metrics  # noqa: E402
from rlvr.train.trainer import Trainer  # noqa: E402

# name -> (preset or None, overrides applied on top of the preset, one-line description)
METHODS: dict[str, tuple[str | None, list[str], str]] = {
    "grpo": (None, [], "default pipeline: GRPO advantage, PPO-clip 0.2/0.2, token-mean"),
    "entropy_bonus": (
        "siren",
        ["algo.regularizers=[{name: entropy_bonus, coef: 0.005}]"],
        "SIREN's naive baseline: the siren preset with its regularizer replaced by a plain entropy bonus",
    ),
    "siren": ("siren", [], "siren preset: Dr.GRPO + selective, self-anchored entropy regularizer"),
    "canon": ("canon", [], "canon preset: conditional advantage split by mean token entropy"),
}

COLORS = {"grpo": "tab:blue", "entropy_bonus": "tab:orange", "siren": "tab:green", "canon": "tab:red"}
TAIL = 10
"""'Final' training-time numbers (entropy, accuracy, length) are means over the last TAIL steps."""


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD",
                   help=f"methods to train (default: all of {', '.join(METHODS)})")
    p.add_argument("--steps", type=int, default=200, help="RL steps per run (default 200)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="RL seeds; tables average over them (default 0)")
    p.add_argument("--out", default="runs/entropy_study", help="output directory (default runs/entropy_study)")
    p.add_argument("--smooth", type=int, default=9, help="moving-average window of the step curves (default 9)")
    p.add_argument("--reuse-warmstart", action="store_true",
                   help="reuse <out>/warmstart/final_model if it exists instead of training it again")
    p.add_argument("--warmstart", metavar="MODEL_DIR",
                   help="start every method from this saved model (e.g. another study's warmstart/final_model) "
                        "instead of training a warm start")
    p.add_argument("--report-only", action="store_true", help="do not train; rebuild the report from <out>")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides passed to every run")
    return p


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / method / f"seed{seed}"


def warm_start(out: Path, seed: int, overrides: list[str], quiet: bool, reuse: bool) -> Path:
    """Train the warm start once (``train.steps=0``); returns the ``final_model`` directory."""
    ws_dir = out / "warmstart"
    final = ws_dir / "final_model"
    if reuse and (final / "config.json").is_file():
        print(f"[entropy_study] reusing warm start {final}")
        return final
    cfg = load_config(None, [*overrides, f"seed={seed}", "train.steps=0", f"output_dir={ws_dir}"])
    if cfg.model.path:
        raise SystemExit("entropy_study: the study warm-starts the built-in tiny model; do not pass model=PATH")
    print(f"[entropy_study] warm start -> {ws_dir}")
    t0 = time.perf_counter()
    Trainer(cfg, quiet=quiet).run()
    (ws_dir / "wall_time_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return final


def method_config(method: str, model_dir: Path, seed: int, steps: int, out: Path, overrides: list[str]):
    preset, method_overrides, _ = METHODS[method]
    fixed = [
        f"model={model_dir}",
        "warmstart.steps=0",
        f"seed={seed}",
        f"train.steps={steps}",
        f"output_dir={run_dir(out, method, seed)}",
    ]
    return load_config(preset, [*method_overrides, *overrides, *fixed])


def train_all(args: argparse.Namespace, out: Path) -> None:
    # Validate every config before any training, so a bad override fails in a second, not after the warm start.
    probe = Path(args.warmstart) if args.warmstart else out / "warmstart" / "final_model"
    for method in args.methods:
        method_config(method, probe, args.seeds[0], args.steps, out, args.overrides)
    if args.warmstart:
        model_dir = Path(args.warmstart)
        if not (model_dir / "config.json").is_file():
            raise SystemExit(f"entropy_study: --warmstart {model_dir} has no config.json (not a saved model)")
    else:
        model_dir = warm_start(out, args.seeds[0], args.overrides, args.quiet, args.reuse_warmstart)
    for method in args.methods:
        for seed in args.seeds:
            cfg = method_config(method, model_dir, seed, args.steps, out, args.overrides)
            print(f"[entropy_study] {method} seed {seed} -> {cfg.output_dir}")
            t0 = time.perf_counter()
            Trainer(cfg, quiet=args.quiet).run()
            wall = time.perf_counter() - t0
            (Path(cfg.output_dir) / "wall_time_s.txt").write_text(f"{wall:.1f}\n")
            print(f"[entropy_study] {method} seed {seed}: {wall:.0f} s")


# --------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def mean_records(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Step-aligned mean over seeds of every numeric key (a key missing in a seed is averaged over the rest)."""
    by_step: dict[int, dict[str, list[float]]] = {}
    for records in runs:
        for r in records:
            slot = by_step.setdefault(int(r.get("step", 0)), {})
            for k, v in r.items():
                x = _num(v)
                if k != "step" and x is not None and math.isfinite(x):
                    slot.setdefault(k, []).append(x)
    return [{"step": s, **{k: sum(v) / len(v) for k, v in by_step[s].items()}} for s in sorted(by_step)]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        x = _num(r.get(key))
        if x is not None:
            xs.append(int(r["step"]))
            ys.append(x)
    return xs, ys


def _tail_mean(records: list[dict[str, Any]], key: str, n: int = TAIL) -> float:
    _, ys = _series([r for r in records if r.get("step", 0) > 0], key)
    return sum(ys[-n:]) / len(ys[-n:]) if ys else math.nan


def _first(records: list[dict[str, Any]], key: str) -> float:
    _, ys = _series([r for r in records if r.get("step", 0) > 0], key)
    return ys[0] if ys else math.nan


def _evals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "eval/accuracy_greedy" in r]


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    """Drop SIREN's selected entropy on steps where no token was selected (it is logged as 0 there, which is
    not an entropy measurement); ``siren/no_selection`` marks those steps."""
    for prefix in ("siren/old_", "siren/"):
        if record.get(f"{prefix}frac_selected") == 0 and f"{prefix}selected_entropy" in record:
            record = {k: v for k, v in record.items() if k != f"{prefix}selected_entropy"}
            if prefix == "siren/old_":
                record["siren/no_selection"] = 1.0
    if "siren/old_frac_selected" in record and "siren/no_selection" not in record:
        record["siren/no_selection"] = 0.0
    return record


def run_summary(records: list[dict[str, Any]], wall_s: float) -> dict[str, float]:
    """The numbers of one run that go into the table."""
    evals = _evals(records)
    before = evals[0] if evals and evals[0].get("step") == 0 else {}
    after = evals[-1] if evals else {}
    out: dict[str, float] = {"steps": float(max((r.get("step", 0) for r in records), default=0))}
    for k, v in after.items():
        if k.startswith("eval/"):
            out[f"final/{k[5:]}"] = float(v)
    for k, v in before.items():
        if k.startswith("eval/"):
            out[f"warm/{k[5:]}"] = float(v)
    h1, hf = _first(records, "entropy/mean"), _tail_mean(records, "entropy/mean")
    out.update(
        {
            "entropy/step1": h1,
            "entropy/final": hf,
            "entropy/change": hf - h1,
            "entropy/change_rel": (hf - h1) / h1 if h1 else math.nan,
            "entropy/min": min(_series(records, "entropy/mean")[1], default=math.nan),
            "entropy/max": max(_series(records, "entropy/mean")[1], default=math.nan),
            "entropy_p90/step1": _first(records, "entropy/p90"),
            "entropy_p90/final": _tail_mean(records, "entropy/p90"),
            "train_accuracy/step1": _first(records, "accuracy"),
            "train_accuracy/final": _tail_mean(records, "accuracy"),
            "response_length/step1": _first(records, "response_length/mean"),
            "response_length/final": _tail_mean(records, "response_length/mean"),
            "response_length/mean": statistics.fmean(_series(records, "response_length/mean")[1] or [math.nan]),
            "step_time_s": statistics.median(_series(records, "time/step_s")[1] or [math.nan]),
            "wall_s": wall_s,
        }
    )
    pg = _series(records, "train/pg_loss")[1]
    total = _series(records, "train/loss")[1]
    if pg and len(pg) == len(total):
        # size of everything added to the policy loss (regularizers), next to the policy loss itself
        out["loss/pg_abs"] = statistics.fmean(abs(x) for x in pg)
        out["loss/reg_abs"] = statistics.fmean(abs(t - x) for t, x in zip(total, pg))
    if _series(records, "siren/selected_entropy")[0]:
        out["siren/anchor"] = _tail_mean(records, "siren/anchor")
        out["siren/selected_entropy_step1"] = _first(records, "siren/old_selected_entropy")
        out["siren/selected_entropy_final"] = _tail_mean(records, "siren/old_selected_entropy")
        out["siren/frac_selected_step1"] = _first(records, "siren/old_frac_selected")
        out["siren/frac_selected_final"] = _tail_mean(records, "siren/old_frac_selected")
        out["siren/steps_no_selection"] = sum(_series(records, "siren/no_selection")[1])
        out["top_p_entropy/step1"] = _first(records, "top_p_entropy/mean")
        out["top_p_entropy/final"] = _tail_mean(records, "top_p_entropy/mean")
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def collect(out: Path, methods: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per method: the records of each seed, their seed-mean, and the summary (mean and std over seeds)."""
    study: dict[str, Any] = {}
    for method in methods:
        runs, summaries = [], []
        for seed in seeds:
            d = run_dir(out, method, seed)
            records = [_clean(r) for r in read_metrics(d / "metrics.jsonl")]
            if not records:
                continue
            wall_file = d / "wall_time_s.txt"
            wall = float(wall_file.read_text()) if wall_file.is_file() else math.nan
            runs.append(records)
            summaries.append(run_summary(records, wall))
        if not runs:
            continue
        keys = sorted({k for s in summaries for k in s})
        mean = {k: _mean_std([s.get(k, math.nan) for s in summaries])[0] for k in keys}
        std = {k: _mean_std([s.get(k, math.nan) for s in summaries])[1] for k in keys}
        study[method] = {"runs": runs, "mean_records": mean_records(runs), "summary": mean, "std": std,
                         "seeds": len(runs), "per_seed": summaries}
    return study


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _smooth(ys: list[float], window: int) -> list[float]:
    """Centred moving average that shrinks its window at the ends (no lag, no edge droop)."""
    if window <= 1 or len(ys) < 3:
        return list(ys)
    half = window // 2
    out = []
    for i in range(len(ys)):
        part = ys[max(0, i - half) : i + half + 1]
        out.append(sum(part) / len(part))
    return out


def _seed_band(runs: list[list[dict[str, Any]]], key: str, window: int) -> tuple[list[int], list[float], list[float]]:
    """Per-step min and max over seeds of the smoothed curves (for a shaded band)."""
    curves = []
    for records in runs:
        xs, ys = _series([r for r in records if r.get("step", 0) > 0], key)
        curves.append(dict(zip(xs, _smooth(ys, window))))
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return steps, [min(c[s] for c in curves) for s in steps], [max(c[s] for c in curves) for s in steps]


def _plot_step_curve(ax, study: dict[str, Any], key: str, window: int, title: str, ylabel: str,
                     hline: dict[str, float] | None = None) -> None:
    for method, data in study.items():
        color = COLORS.get(method)
        xs, ys = _series([r for r in data["mean_records"] if r.get("step", 0) > 0], key)
        if not xs:
            continue
        ax.plot(xs, ys, color=color, alpha=0.18, lw=0.8)
        ax.plot(xs, _smooth(ys, window), color=color, lw=1.8, label=method)
        if data["seeds"] > 1:
            bx, lo, hi = _seed_band(data["runs"], key, window)
            ax.fill_between(bx, lo, hi, color=color, alpha=0.12, lw=0)
        if hline and method in hline and math.isfinite(hline[method]):
            ax.axhline(hline[method], color=color, ls=":", lw=1.2)
    ax.set_title(title)
    ax.set_xlabel("RL step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _plot_eval_curve(ax, study: dict[str, Any], key: str, title: str) -> None:
    for method, data in study.items():
        xs, ys = _series(_evals(data["mean_records"]), key)
        if xs:
            ax.plot(xs, ys, color=COLORS.get(method), marker="o", ms=4, lw=1.6, label=method)
    ax.set_title(title)
    ax.set_xlabel("RL step (0 = after warm start)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_entropy(study: dict[str, Any], path: Path, window: int) -> Path:
    siren_like = {m: d for m, d in study.items() if _series(d["mean_records"], "siren/old_selected_entropy")[0]}
    fig, axes = plt.subplots(1, 3 if siren_like else 2, figsize=(18 if siren_like else 12, 4.4))
    _plot_step_curve(axes[0], study, "entropy/mean", window, "mean token entropy of the rollouts (nats)", "entropy")
    _plot_step_curve(axes[1], study, "entropy/p90", window, "90th-percentile token entropy of the rollouts",
                     "entropy")
    if siren_like:
        # SIREN's own quantity: top-p selected entropy of the rollout batch vs its fixed anchor (dotted), and
        # the share of response tokens it is computed on (right axis, dashed).
        ax = axes[2]
        anchors = {m: d["summary"].get("siren/anchor", math.nan) for m, d in siren_like.items()}
        _plot_step_curve(ax, siren_like, "siren/old_selected_entropy", window,
                         "SIREN internals: selected entropy (solid) vs anchor (dotted)", "selected top-p entropy",
                         hline=anchors)
        twin = ax.twinx()
        for method, d in siren_like.items():
            xs, ys = _series(d["mean_records"], "siren/old_frac_selected")
            twin.plot(xs, _smooth(ys, window), color=COLORS.get(method), ls="--", lw=1.2,
                      label=f"{method}: share of tokens selected")
            xs, ys = _series(d["mean_records"], "top_p_entropy/mean")
            twin.plot(xs, _smooth(ys, window), color="gray", ls="-.", lw=1.2,
                      label=f"{method}: mean top-p entropy (all tokens)")
        twin.set_ylim(bottom=0)
        twin.set_ylabel("share selected / mean top-p entropy (dashed)")
        twin.legend(fontsize=7, loc="center right")
    fig.suptitle("entropy over RL steps (thin: per step, thick: centred moving average of " f"{window} steps"
                 + (", band: seed min-max)" if any(d["seeds"] > 1 for d in study.values()) else ")"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy(study: dict[str, Any], path: Path, window: int) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    _plot_step_curve(axes[0], study, "accuracy", window, "training accuracy (rollouts, T=1)", "accuracy")
    _plot_eval_curve(axes[1], study, "eval/accuracy_greedy", "held-out greedy accuracy")
    axes[1].set_ylabel("accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pass_keys(study: dict[str, Any]) -> list[str]:
    keys: set[str] = set()
    for d in study.values():
        keys |= {k[6:] for k in d["summary"] if k.startswith("final/pass@")}
    return sorted(keys, key=lambda k: int(k.split("@")[1]))


def plot_passk(study: dict[str, Any], path: Path) -> Path:
    """Grouped bars: held-out pass@k after the warm start and at the end of each method's RL."""
    ks = _pass_keys(study)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
    ax = axes[0]
    first = next(iter(study.values()))["summary"]
    groups = [("warm start", "gray", {k: first.get(f"warm/{k}", math.nan) for k in ks}, None)]
    for method, d in study.items():
        groups.append((method, COLORS.get(method), {k: d["summary"].get(f"final/{k}", math.nan) for k in ks},
                       {k: d["std"].get(f"final/{k}", 0.0) for k in ks} if d["seeds"] > 1 else None))
    width = 0.8 / len(groups)
    for gi, (label, color, vals, errs) in enumerate(groups):
        xs = [i + (gi - (len(groups) - 1) / 2) * width for i in range(len(ks))]
        ys = [vals[k] for k in ks]
        ax.bar(xs, ys, width, color=color, label=label, yerr=[errs[k] for k in ks] if errs else None, capsize=2)
        for x, y in zip(xs, ys):
            if math.isfinite(y):
                ax.text(x, y + 0.01, f"{y:.2f}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(ks)), ks)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("held-out pass@k: after warm start vs end of RL")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3, axis="y")
    # pass@k curves over the eval steps: solid = pass@1, dashed = largest k
    big = ks[-1] if ks else None
    for method, d in study.items():
        for key, ls in (("eval/pass@1", "-"), (f"eval/{big}", "--")):
            xs, ys = _series(_evals(d["mean_records"]), key)
            if xs:
                axes[1].plot(xs, ys, ls=ls, marker="o", ms=3, color=COLORS.get(method),
                             label=f"{method} {key[5:]}")
    axes[1].set_title(f"held-out pass@1 (solid) and {big} (dashed) over RL")
    axes[1].set_xlabel("RL step (0 = after warm start)")
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_length(study: dict[str, Any], path: Path, window: int) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    _plot_step_curve(axes[0], study, "response_length/mean", window, "mean response length of the rollouts (tokens)",
                     "tokens")
    _plot_eval_curve(axes[1], study, "eval/response_length", "held-out mean response length")
    axes[1].set_ylabel("tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


def _f(x: float, nd: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def _pm(s: dict[str, float], sd: dict[str, float], key: str, seeds: int, nd: int = 3) -> str:
    v = _f(s.get(key, math.nan), nd)
    return v if seeds < 2 or v == "n/a" else f"{v} ± {_f(sd.get(key, math.nan), nd)}"


def _observations(study: dict[str, Any], num_problems: int | None) -> list[str]:
    """Plain statements computed from the numbers (no judgement beyond the stated thresholds)."""
    lines = []
    for method, d in study.items():
        s = d["summary"]
        rel = s.get("entropy/change_rel", math.nan)
        verdict = ""
        if math.isfinite(rel):
            if rel < -0.5:
                verdict = " (fell below half its step-1 value)"
            elif rel > 0.5:
                verdict = " (blew up: more than 1.5x its step-1 value)"
            elif abs(rel) <= 0.15:
                verdict = " (held within 15% of its step-1 value)"
        lines.append(
            f"- **{method}**: mean token entropy {_f(s['entropy/step1'])} (step 1) -> {_f(s['entropy/final'])} "
            f"(last {TAIL} steps), {rel:+.0%}{verdict}; "
            f"range over the run {_f(s['entropy/min'])}-{_f(s['entropy/max'])}. "
            f"Held-out greedy accuracy {_f(s.get('warm/accuracy_greedy', math.nan))} -> "
            f"{_f(s.get('final/accuracy_greedy', math.nan))}; training accuracy {_f(s['train_accuracy/step1'])} -> "
            f"{_f(s['train_accuracy/final'])}."
        )
        if "siren/anchor" in s:
            anchor, sel = s["siren/anchor"], s["siren/selected_entropy_final"]
            lines.append(
                f"  SIREN's regularized quantity (selected top-p entropy of the rollout batch): anchor {_f(anchor)}, "
                f"last {TAIL} steps with a selection {_f(sel)} ({(sel - anchor) / anchor:+.0%} vs anchor). It is "
                f"averaged only over the selected tokens, whose share of response tokens went "
                f"{_f(s['siren/frac_selected_step1'])} -> {_f(s['siren/frac_selected_final'])} "
                f"({s['siren/steps_no_selection']:.0f} rollout batches selected no token at all, "
                f"so the regularizer had (almost) nothing to act on); the mean top-p entropy over all tokens went "
                f"{_f(s['top_p_entropy/step1'])} -> {_f(s['top_p_entropy/final'])}."
            )
        if s.get("loss/reg_abs", 0) > 1e-12:
            lines.append(
                f"  Size of the regularizer term in the loss: mean |reg| {s['loss/reg_abs']:.2e} vs mean |policy loss| "
                f"{s['loss/pg_abs']:.2e} (ratio {s['loss/reg_abs'] / max(s['loss/pg_abs'], 1e-12):.2f}; loss values, "
                "not gradient norms, and the policy loss averages near zero by construction)."
            )
    ref = study.get("grpo", {}).get("summary", {}).get("entropy/final")
    if ref and math.isfinite(ref) and len(study) > 1:
        rel = ", ".join(f"{m} {d['summary']['entropy/final'] / ref - 1:+.0%}" for m, d in study.items() if m != "grpo")
        lines.append(f"- Final mean token entropy relative to grpo: {rel}.")
    finals = {m: d["summary"].get("final/accuracy_greedy", math.nan) for m, d in study.items()}
    finals = {m: v for m, v in finals.items() if math.isfinite(v)}
    if finals:
        best = max(finals, key=finals.get)
        spread = max(finals.values()) - min(finals.values())
        lines.append(f"- Best final held-out greedy accuracy: **{best}** ({finals[best]:.3f}); spread across "
                     f"methods {spread:.3f}.")
        if num_problems:
            p = statistics.fmean(finals.values())
            se = math.sqrt(max(p * (1 - p), 1e-9) / num_problems)
            lines.append(
                f"- Noise floor: with {num_problems} held-out problems one accuracy number has a binomial standard "
                f"error of about {se:.3f}, so a difference between two methods below ~{2 * math.sqrt(2) * se:.3f} "
                f"(2 SE of a difference) is not evidence of anything"
                + (" (and this is one seed)." if all(d['seeds'] == 1 for d in study.values()) else ".")
            )
    return lines


def write_markdown(out: Path, study: dict[str, Any], args: argparse.Namespace, pngs: dict[str, Path]) -> Path:
    cfg_file = next((run_dir(out, m, s) / "config.yaml" for m in study for s in args.seeds
                     if (run_dir(out, m, s) / "config.yaml").is_file()), None)
    cfg_data = yaml_load(cfg_file) if cfg_file else {}
    r, t, e = cfg_data.get("rollout", {}), cfg_data.get("train", {}), cfg_data.get("eval", {})
    ws_cfg_file = out / "warmstart" / "config.yaml"
    ws = (yaml_load(ws_cfg_file) if ws_cfg_file.is_file() else {})
    ks = _pass_keys(study)
    seeds = max((d["seeds"] for d in study.values()), default=0)

    lines = [
        "# Entropy study: GRPO vs naive entropy bonus vs SIREN vs CANON",
        "",
        f"Generated by `examples/entropy_study.py` ({time.strftime('%Y-%m-%d %H:%M')}). "
        f"Task `{cfg_data.get('task', {}).get('name', '?')}`, built-in tiny model "
        f"({_tiny_desc(ws)}), one shared supervised warm start "
        f"({_ws_steps(ws)}, seed {args.seeds[0]}), then "
        f"{t.get('steps', args.steps)} RL steps per method from the same weights, seeds {args.seeds} "
        f"(mean over seeds{'; ± = std over seeds' if seeds > 1 else ''}).",
        f"Rollouts: {r.get('prompts_per_step')} prompts x {r.get('group_size')} samples per step, "
        f"T={r.get('temperature')}, max {r.get('max_new_tokens')} new tokens; lr {t.get('lr')}; "
        f"held-out eval on {e.get('num_problems')} problems ({e.get('samples')} samples each for pass@k) "
        f"every {e.get('every')} steps."
        + (f" Extra overrides: `{' '.join(args.overrides)}`." if args.overrides else ""),
        "",
        "| method | what it runs | resolved pipeline (from the run's config.yaml) |",
        "|---|---|---|",
        *[f"| {m} | {METHODS[m][2]} | {_pipeline(out, m, args.seeds)} |" for m in study],
        "",
        "## Results",
        "",
        "Held-out numbers: `warm` = right after the warm start (step 0, same weights for every method), "
        "`final` = last step. Entropy, training accuracy and length: step 1 and the mean of the last "
        f"{TAIL} steps. Entropy is the full-vocabulary token entropy of the rollout policy (T-scaled), in nats. "
        "Wall time is the whole run including evals; on a shared machine it mostly measures contention, the "
        "median step time is the better speed number.",
        "",
    ]
    head = ["method", "greedy acc warm → final"] + [f"{k} warm → final" for k in ks] + [
        "entropy step 1", "entropy final", "Δ entropy (rel)", "train acc final", "resp. len (mean / final)",
        "wall time (median step)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, d in study.items():
        s, sd, n = d["summary"], d["std"], d["seeds"]
        row = [f"**{method}**",
               f"{_f(s.get('warm/accuracy_greedy', math.nan))} → {_pm(s, sd, 'final/accuracy_greedy', n)}"]
        row += [f"{_f(s.get(f'warm/{k}', math.nan))} → {_pm(s, sd, f'final/{k}', n)}" for k in ks]
        row += [
            _f(s["entropy/step1"]),
            _pm(s, sd, "entropy/final", n),
            f"{s['entropy/change']:+.3f} ({s['entropy/change_rel']:+.0%})",
            _pm(s, sd, "train_accuracy/final", n),
            f"{_f(s['response_length/mean'], 2)} / {_f(s['response_length/final'], 2)}",
            (f"{s['wall_s']:.0f} s" if math.isfinite(s["wall_s"]) else "n/a") + f" ({s['step_time_s']:.2f} s)",
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Observations (computed from the numbers above)", "",
              *_observations(study, e.get("num_problems")), ""]
    lines += [
        "## Caveats of this setting",
        "",
        "- The model is a ~0.5M-parameter character-level transformer trained from scratch; responses are "
        "~5-16 characters (countdown expressions), so there is no long chain of thought, no 'forking' "
        "reasoning tokens, and almost no room for length to change. The papers study 1.5B-7B LLMs with "
        "responses of thousands of tokens.",
        "- lr, batch size and step count differ from the papers by orders of magnitude (the papers: lr 1e-6, "
        f"hundreds of prompts per step; here lr {t.get('lr')} and {t.get('steps', args.steps)} steps), so the entropy "
        "coefficients (the papers' 0.005) and CANON's mu are carried over, not re-tuned.",
        "- One shared warm start: the seeds vary RL sampling and data order only.",
        "",
        "## Plots",
        "",
    ]
    captions = {
        "entropy": "Entropy over RL steps: mean and 90th-percentile token entropy of the rollouts; with SIREN, "
                   "a third panel shows its selected entropy vs the anchor (dotted) and, on the right axis, the "
                   "share of tokens it selects and the mean top-p entropy.",
        "accuracy": "Training accuracy (left) and held-out greedy accuracy (right).",
        "passk": "Held-out pass@k after the warm start and at the end, and over RL.",
        "response_length": "Response length (rollouts and held-out).",
        "curves": "Standard rlvr panel figure (seed-averaged), all methods overlaid.",
    }
    for name, png in pngs.items():
        lines += [f"{captions.get(name, name)}", "", f"![{name}]({png.name})", ""]
    lines += ["## Files", "", f"- runs: `{out}/<method>/seed<N>/` (metrics.jsonl, config.yaml, report.md, "
              "curves.png, final_model/)", f"- warm start: `{out}/warmstart/final_model`",
              f"- numbers: `{out}/study.json`", ""]
    path = out / "entropy_study.md"
    path.write_text("\n".join(lines))
    return path


def _method_str(m: dict[str, Any] | str) -> str:
    if isinstance(m, str):
        return f"`{m}`"
    knobs = ", ".join(f"{k}={v}" for k, v in (m.get("kwargs") or {}).items())
    return f"`{m.get('name')}({knobs})`"


def _pipeline(out: Path, method: str, seeds: list[int]) -> str:
    """advantage / policy loss / aggregation / regularizers as resolved in the first seed's config.yaml."""
    cfg_file = next((run_dir(out, method, s) / "config.yaml" for s in seeds
                     if (run_dir(out, method, s) / "config.yaml").is_file()), None)
    if cfg_file is None:
        return "n/a"
    a = yaml_load(cfg_file).get("algo", {})
    parts = [f"adv {_method_str(a.get('advantage', '?'))}", f"loss {_method_str(a.get('policy_loss', '?'))}",
             f"agg `{a.get('agg_mode')}`"]
    for stage in ("reward_shaping", "token_weights", "regularizers", "controllers"):
        for m in a.get(stage) or []:
            parts.append(f"{stage.rstrip('s').replace('_', ' ')} {_method_str(m)}")
    return "; ".join(parts)


def yaml_load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def _ws_steps(ws_cfg: dict[str, Any]) -> str:
    steps = ws_cfg.get("warmstart", {}).get("steps")
    if steps is not None:
        return f"{steps} steps"
    if not ws_cfg:
        return "a saved model given with --warmstart"
    return "600 steps (default)" if not ws_cfg.get("model", {}).get("path") else "0 steps"


def _tiny_desc(ws_cfg: dict[str, Any]) -> str:
    t = ws_cfg.get("model", {}).get("tiny", {})
    if not t:
        return "char-level Qwen2"
    return f"char-level Qwen2, {t.get('num_layers')} layers, d={t.get('hidden_size')}"


def write_report(out: Path, args: argparse.Namespace) -> Path:
    study = collect(out, args.methods, args.seeds)
    if not study:
        raise SystemExit(f"entropy_study: no runs with metrics under {out}")
    window = max(1, args.smooth)
    pngs = {
        "entropy": plot_entropy(study, out / "entropy.png", window),
        "accuracy": plot_accuracy(study, out / "accuracy.png", window),
        "passk": plot_passk(study, out / "passk.png"),
        "response_length": plot_length(study, out / "response_length.png", window),
        "curves": plot_curves({m: d["mean_records"] for m, d in study.items()}, out / "curves.png"),
    }
    numbers = {m: {"seeds": d["seeds"], "mean": d["summary"], "std": d["std"], "per_seed": d["per_seed"]}
               for m, d in study.items()}
    (out / "study.json").write_text(json.dumps(numbers, indent=1, default=lambda x: None))
    return write_markdown(out, study, args, pngs)


def main(argv: list[str] | None = None) -> Path:
    """Train (unless ``--report-only``) and write the report; returns the markdown path."""
    args = _parser().parse_args(argv)
    args.methods = list(dict.fromkeys(args.methods))
    args.seeds = list(dict.fromkeys(args.seeds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        train_all(args, out)
    md = write_report(out, args)
    print(f"[entropy_study] report: {md}")
    return md


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
