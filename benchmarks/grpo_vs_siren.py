"""GRPO vs SIREN, side by side in one run: token entropy and accuracy per step.

    python benchmarks/grpo_vs_siren.py --model smollm2 --device cuda --steps 8 --max-new-tokens 256
    python benchmarks/grpo_vs_siren.py --model tiny --task countdown --steps 4        # CPU smoke

Both runs use the same model, task, seed and batch; SIREN is the packaged preset (Dr.GRPO advantage
and aggregation + the selective, self-anchored entropy regularizer). The table prints, per step,
the mean rollout entropy, SIREN's top-p entropy where logged, the training accuracy and the
response length of each run; the last line gives their held-out greedy accuracy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import model_overrides


def _run(name: str, preset: str | None, args: argparse.Namespace, out: Path) -> list[dict]:
    from rlvr.train.config import load_config
    from rlvr.train.logging import read_metrics
    from rlvr.train.trainer import Trainer

    task = ["task=reasoning_gym", f"task.kwargs.dataset={args.gym}"] if args.task == "gym" else [f"task={args.task}"]
    overrides = [
        *model_overrides(args.model),
        *task,
        f"train.device={args.device}",
        f"model.dtype={args.dtype}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.group_size={args.group}",
        f"train.micro_batch_size={args.micro_batch}",
        f"train.steps={args.steps}",
        f"train.lr={args.lr}",
        "train.mini_batch_size=null",
        f"eval.num_problems={args.eval_problems}",
        "eval.samples=1",
        "eval.pass_k=[1]",
        f"eval.every={args.steps}",
        "eval.report=false",
        f"seed={args.seed}",
        f"output_dir={out / name}",
    ]
    if args.model != "tiny":
        overrides.append("warmstart.steps=0")
    cfg = load_config(preset, overrides)
    t0 = time.perf_counter()
    Trainer(cfg, quiet=True).run()
    print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return read_metrics(out / name / "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="tiny | smollm2 | a local Hugging Face directory")
    parser.add_argument("--task", default="gym", help="gym (reasoning-gym, see --gym) or a registered task name")
    parser.add_argument("--gym", default="chain_sum")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--eval-problems", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="grpo-vs-siren-"))
    runs = {"grpo": _run("grpo", None, args, out), "siren": _run("siren", "siren", args, out)}
    steps = {name: [r for r in records if "reward/mean" in r] for name, records in runs.items()}
    print(f"{'step':>4} | {'grpo H':>8} {'acc':>6} {'len':>6} | {'siren H':>8} {'top-p H':>8} {'acc':>6} {'len':>6}")
    for g, s in zip(steps["grpo"], steps["siren"]):
        print(
            f"{g['step']:>4} | {g.get('entropy/mean', float('nan')):>8.3f} {g['accuracy']:>6.3f} {g['response_length/mean']:>6.1f} | "
            f"{s.get('entropy/mean', float('nan')):>8.3f} {s.get('top_p_entropy/mean', float('nan')):>8.3f} "
            f"{s['accuracy']:>6.3f} {s['response_length/mean']:>6.1f}"
        )
    final = {name: next((r for r in reversed(records) if "eval/accuracy_greedy" in r), {}) for name, records in runs.items()}
    print("held-out greedy accuracy: " + ", ".join(f"{n} {f.get('eval/accuracy_greedy', float('nan')):.3f}" for n, f in final.items()))


if __name__ == "__main__":
    main()
