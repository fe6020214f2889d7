"""Held-out evaluation inside a run: greedy accuracy, pass@k and response length."""

from __future__ import annotations

from typing import Callable

import torch
from transformers import PreTrainedModel

from rlvr.eval.metrics import pass_at_k
from rlvr.rollout.hf import HFRollout
from rlvr.tasks.base import Problem


def evaluate_heldout(
    model: PreTrainedModel,
    engine: HFRollout,
    problems: list[Problem],
    score: Callable[[Problem, str], float],
    *,
    samples: int,
    pass_k: list[int],
    max_new_tokens: int,
    temperature: float,
    batch_prompts: int = 64,
) -> dict[str, float]:
    """Greedy accuracy plus pass@k over ``samples`` sampled responses per held-out problem.

    Uses its own seeded generator state so evaluating does not perturb the training RNG stream.
    """
    cpu_state = torch.get_rng_state()
    torch.manual_seed(1234)
    greedy_correct, lengths = 0, []
    counts: list[int] = []
    try:
        for start in range(0, len(problems), batch_prompts):
            chunk = problems[start : start + batch_prompts]
            prompts = [p.prompt for p in chunk]
            greedy = engine.generate(model, prompts, n=1, max_new_tokens=max_new_tokens, greedy=True)
            greedy_correct += sum(score(p, r) >= 1.0 for p, r in zip(chunk, greedy.responses))
            sampled = engine.generate(model, prompts, n=samples, max_new_tokens=max_new_tokens, temperature=temperature)
            lengths.extend(sampled.response_mask.sum(-1).tolist())
            for i, problem in enumerate(chunk):
                responses = sampled.responses[i * samples : (i + 1) * samples]
                counts.append(sum(score(problem, r) >= 1.0 for r in responses))
    finally:
        torch.set_rng_state(cpu_state)
    n = len(problems)
    metrics = {
        "eval/accuracy_greedy": greedy_correct / max(1, n),
        "eval/accuracy_sampled": sum(counts) / max(1, n * samples),
        "eval/response_length": sum(lengths) / max(1, len(lengths)),
    }
    for k in pass_k:
        metrics[f"eval/pass@{k}"] = sum(pass_at_k(samples, c, k) for c in counts) / max(1, n)
    return metrics
