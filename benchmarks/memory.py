"""Benchmark: peak memory of one rlvr update step with and without gradient checkpointing.

One update step is what :meth:`rlvr.train.learner.Learner.update` does per mini-batch: rlvr's
training forward (:func:`rlvr.ops.forward.policy_forward`: log-probs and entropy of the response
tokens from the decoder's hidden states and the chunked LM-head kernel), a token-mean policy-gradient
loss ``-sum(A * logp * mask) / sum(mask)``, backward, gradient clipping and an AdamW step. The
batch is ``--groups`` GRPO groups of ``--group-size`` rows; rows of a group share their prompt, so
without checkpointing rlvr's shared-prompt forward runs each prompt once, and with
``model.gradient_checkpointing=true`` the per-row forward recomputes each decoder layer in the
backward pass. The model is built exactly as the trainer builds it (``model.gradient_checkpointing``
on or off); ``--model tiny`` is the built-in Qwen2-style model at the size given by ``--hidden``,
``--layers`` ... (the default is larger than the trainer's tiny model, so activations dominate).

What "peak memory" measures, per configuration in a fresh subprocess:

* CPU: peak resident set size during the step minus the RSS just before it (``/proc/self/clear_refs``
  reset, then ``VmHWM - VmRSS``; see ``benchmarks/ops.py``), measured on the second step, after a
  first step has created AdamW's state;
* CUDA: ``torch.cuda.max_memory_allocated() - memory_allocated()`` around that step.

Usage: ``python benchmarks/memory.py [--model tiny|smollm2|PATH] [--groups 2] [--group-size 8]
[--prompt-len 32] [--response-len 224] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import model_overrides
from ops import _proc_status_mib, _reset_peak_rss, _sync

MiB = 1024 * 1024


def _config_overrides(args: argparse.Namespace, checkpointing: bool) -> list[str]:
    tiny = (
        [
            f"model.tiny.hidden_size={args.hidden}",
            f"model.tiny.num_layers={args.layers}",
            f"model.tiny.num_heads={args.heads}",
            f"model.tiny.num_kv_heads={args.kv_heads}",
            f"model.tiny.intermediate_size={args.intermediate}",
        ]
        if args.model == "tiny"
        else []
    )
    return [*model_overrides(args.model), *tiny, f"model.gradient_checkpointing={str(checkpointing).lower()}"]


def _batch(tokenizer, args: argparse.Namespace, device: torch.device):
    """``groups x group_size`` rows: random prompt tokens shared within a group, random full-length responses."""
    from rlvr.rollout.base import RolloutBatch

    gen = torch.Generator().manual_seed(0)
    special = set(tokenizer.all_special_ids)
    vocab = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    n = args.groups * args.group_size
    prompts = vocab[torch.randint(len(vocab), (args.groups, args.prompt_len), generator=gen)]
    responses = vocab[torch.randint(len(vocab), (n, args.response_len), generator=gen)]
    input_ids = torch.cat([prompts.repeat_interleave(args.group_size, dim=0), responses], dim=1).to(device)
    response_mask = torch.ones(n, args.response_len, device=device)
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        prompt_len=args.prompt_len,
        response_mask=response_mask,
        responses=[""] * n,
        truncated=torch.ones(n, dtype=torch.bool, device=device),
        group_ids=torch.arange(args.groups, device=device).repeat_interleave(args.group_size),
    )


def measure(args: argparse.Namespace, checkpointing: bool) -> dict[str, float]:
    """Peak extra memory (MiB) and time (s) of the second of two update steps."""
    from rlvr.models.build import build_model_and_tokenizer
    from rlvr.ops.forward import Entropy, policy_forward
    from rlvr.train.config import load_config

    device = torch.device(args.device)
    cfg = load_config(None, _config_overrides(args, checkpointing))
    model, tokenizer = build_model_and_tokenizer(cfg.model, cfg.seed)
    model.to(device)
    model.train()
    batch = _batch(tokenizer, args, device)
    advantages = torch.randn(batch.input_ids.shape[0], 1, generator=torch.Generator().manual_seed(1)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step() -> None:
        out = policy_forward(model, batch, temperature=1.0, chunk_size=cfg.train.logprob_chunk_size, quantities=[Entropy()])
        mask = batch.response_mask
        loss = -(advantages * out["logprobs"] * mask).sum() / mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    step()  # AdamW's state exists from here on, in both configurations
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        if not _reset_peak_rss():
            raise SystemExit("needs /proc/self/clear_refs (Linux) to reset the peak RSS")
        base = _proc_status_mib("VmRSS") or 0.0
    start = time.perf_counter()
    step()
    _sync(device)
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / MiB
    else:
        peak = (_proc_status_mib("VmHWM") or float("nan")) - base
    params = sum(p.numel() for p in model.parameters())
    return {"peak_mib": peak, "step_s": elapsed, "params": params, "layers": model.config.num_hidden_layers}


def run_config(args: argparse.Namespace, checkpointing: bool) -> dict[str, float]:
    """One configuration in a fresh subprocess, so memory baselines are clean."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *_passthrough(args), "--worker", str(checkpointing).lower()]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker failed: {(out.stderr or out.stdout).strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _passthrough(args: argparse.Namespace) -> list[str]:
    keys = ("model", "groups", "group_size", "prompt_len", "response_len", "hidden", "layers", "heads", "kv_heads",
            "intermediate", "device", "threads")  # fmt: skip
    return [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in keys]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (sized by the options below), smollm2, or a local HF directory")
    parser.add_argument("--groups", type=int, default=2, help="prompts in the mini-batch")
    parser.add_argument("--group-size", type=int, default=8, help="rows per prompt")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--response-len", type=int, default=224)
    parser.add_argument("--hidden", type=int, default=256, help="tiny: hidden size")
    parser.add_argument("--layers", type=int, default=8, help="tiny: decoder layers")
    parser.add_argument("--heads", type=int, default=4, help="tiny: attention heads")
    parser.add_argument("--kv-heads", type=int, default=2, help="tiny: key/value heads")
    parser.add_argument("--intermediate", type=int, default=1024, help="tiny: MLP width")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    parser.add_argument("--worker", choices=["true", "false"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(measure(args, args.worker == "true")))
        return
    off, on = run_config(args, False), run_config(args, True)
    rows = args.groups * args.group_size
    label = "peak allocated MiB" if args.device.startswith("cuda") else "peak RSS delta MiB"
    print(
        f"model={args.model} ({off['layers']} layers, {off['params'] / 1e6:.1f}M parameters) device={args.device} "
        f"threads={torch.get_num_threads()}; one update step on {rows} rows x ({args.prompt_len} prompt + "
        f"{args.response_len} response) tokens, {args.groups} groups of {args.group_size}"
    )
    print(f"{'gradient_checkpointing':<24} {label:>20} {'step s':>8}")
    for name, res in (("false", off), ("true", on)):
        print(f"{name:<24} {res['peak_mib']:>20.0f} {res['step_s']:>8.2f}")
    print(f"{'ratio true/false':<24} {on['peak_mib'] / off['peak_mib']:>20.2f} {on['step_s'] / off['step_s']:>8.2f}")


if __name__ == "__main__":
    main()
