"""Held-out evaluation inside a run: greedy accuracy, pass@k and response length."""

from __future__ import annotations

from typing import Callable

import torch
from transformers import PreTrainedModel

from rlvr.eval.metrics import pass_at_k
from rlvr.rollout.hf import HFRollout
from rlvr.tasks.base import Problem
from rlvr.train.rewards import safe_scores


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
    timeout_s: float = 10.0,
    batch_prompts: int = 64,
) -> dict[str, float]:
    """Greedy accuracy plus pass@k over ``samples`` sampled responses per held-out problem.

    Uses its own seeded generator state so evaluating does not perturb the training RNG stream.
    Scoring goes through :func:`safe_scores` (a crashing or hanging scorer counts as wrong).
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
            greedy_scores, _ = safe_scores(score, chunk, greedy.responses, timeout_s)
            greedy_correct += sum(s >= 1.0 for s in greedy_scores)
            sampled = engine.generate(model, prompts, n=samples, max_new_tokens=max_new_tokens, temperature=temperature)
            lengths.extend(sampled.response_mask.sum(-1).tolist())
            per_response = [p for p in chunk for _ in range(samples)]
            sampled_scores, _ = safe_scores(score, per_response, sampled.responses, timeout_s)
            for i in range(len(chunk)):
                counts.append(sum(s >= 1.0 for s in sampled_scores[i * samples : (i + 1) * samples]))
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
