"""Data-parallel scaling: step time of 1 process vs N processes on the same global batch, side by side.

    python benchmarks/scaling.py                                  # CPU: 1 process x 2 threads vs 2 x 1
    python benchmarks/scaling.py --device cuda --nproc 8 --model smollm2 --prompts 64 --max-new-tokens 256

Both runs train the same config (same prompts, groups and rollout shards, so the same global work
per step) for ``--steps`` steps after ``--warmup`` untimed ones; the N-process run is launched with
``torch.distributed.run`` (gloo on CPU, NCCL on CUDA). It prints each run's median step time and
tokens/s, their ratio, and on GPUs tokens/s per GPU. On a CPU the comparison is at equal cores:
the single process gets ``--threads`` threads, each of the N processes ``--threads // N``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import model_overrides

HERE = Path(__file__).resolve().parent


def _overrides(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        *model_overrides(args.model),
        f"train.device={args.device}",
        f"train.strategy={args.strategy}",
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.group_size={args.group}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.shards={args.nproc}",
        f"train.micro_batch_size={args.micro_batch}",
        "train.mini_batch_size=null",
        f"train.steps={args.warmup + args.steps}",
        "train.checkpoint_every=100000",
        "warmstart.steps=0",
        "eval.every=100000",
        "eval.num_problems=1",
        "eval.samples=1",
        "eval.pass_k=[1]",
        "eval.report=false",
        f"output_dir={out}",
    ]


def worker(args: argparse.Namespace) -> None:
    """One rank: train and, on rank 0, print the per-step times and tokens."""
    import torch

    from rlvr.train.config import load_config
    from rlvr.train.distributed import init_distributed
    from rlvr.train.logging import read_metrics
    from rlvr.train.trainer import Trainer

    torch.set_num_threads(args.threads_each)
    cfg = load_config(None, _overrides(args, Path(args.out)))
    dist = init_distributed(cfg.train.device, cfg.train.collective_timeout_s)
    Trainer(cfg, quiet=True, dist=dist).run()
    if dist.is_main:
        steps = [r for r in read_metrics(Path(args.out) / "metrics.jsonl") if "time/step_s" in r][args.warmup :]
        tokens = [r["response_length/mean"] * args.prompts * args.group for r in steps]
        print("RESULT " + json.dumps({"times": [r["time/step_s"] for r in steps], "tokens": tokens}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: argparse.Namespace, nproc: int, threads_each: int) -> dict:
    out = tempfile.mkdtemp(prefix=f"scaling-{nproc}-")
    own = [f"--worker-out={out}", f"--threads-each={threads_each}"]
    script = [str(Path(__file__).resolve()), *sys.argv[1:], *own]
    if nproc == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}", *script]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_each), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        sys.exit(f"{nproc}-process run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(line[len("RESULT ") :])
    result["wall_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--strategy", default="replicate", choices=["replicate", "fsdp2"])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all (split over the N processes)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--threads-each", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        args.out = args.worker_out
        return worker(args)
    single = _run(args, 1, args.threads)
    multi = _run(args, args.nproc, max(1, args.threads // args.nproc))
    rows = []
    for name, r, gpus in (("1 process", single, 1), (f"{args.nproc} processes", multi, args.nproc)):
        step = statistics.median(r["times"])
        tok_s = sum(r["tokens"]) / sum(r["times"])
        rows.append((name, step, tok_s, tok_s / gpus))
    where = "CPU" if args.device == "cpu" else "GPU"
    print(f"{args.model}, {args.prompts} prompts x {args.group}, max {args.max_new_tokens} new tokens, "
          f"{args.steps} timed steps, {where}, strategy {args.strategy}")
    print(f"{'run':<14}{'s/step (median)':>17}{'tokens/s':>12}" + (f"{'tokens/s per GPU':>18}" if where == "GPU" else ""))
    for name, step, tok_s, per in rows:
        print(f"{name:<14}{step:>17.3f}{tok_s:>12.0f}" + (f"{per:>18.0f}" if where == "GPU" else ""))
    print(f"speed-up (1-process median step time / {args.nproc}-process): {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
