"""Held-out evaluation inside a run: greedy accuracy, pass@k and response length.

Sampling and scoring go through :func:`rlvr.rollout.stage.sample_and_score`, the path ``rlvr eval``
and the training rollouts use.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from rlvr.eval.metrics import pass_at_k
from rlvr.rollout.engines import RolloutEngine
from rlvr.rollout.stage import Sampling, sample_and_score
from rlvr.tasks.base import Problem
from rlvr.train.device import Precision

EVAL_SEED = 1234
"""Seed of the evaluation's own random stream (the training streams are left as they were)."""


def evaluate_heldout(
    model: Any,
    engine: RolloutEngine,
    problems: list[Problem],
    score: Callable[[Problem, str], Any],
    *,
    samples: int,
    pass_k: list[int],
    max_new_tokens: int,
    temperature: float,
    timeout_s: float = 10.0,
    batch_prompts: int = 64,
    precision: Precision | None = None,
) -> dict[str, float]:
    """Greedy accuracy plus pass@k over ``samples`` sampled responses per held-out problem.

    Runs on a forked, seeded generator state (CPU and the run's CUDA device), so evaluating does
    not perturb the training RNG streams. Scoring is crash/hang-safe (a failure counts as wrong).
    """
    precision = precision or Precision(torch.device("cpu"))
    greedy_correct, lengths = 0, []
    counts: list[int] = []
    greedy = Sampling(n=1, max_new_tokens=max_new_tokens, greedy=True)
    sampled = Sampling(n=samples, max_new_tokens=max_new_tokens, temperature=temperature)
    with precision.fork_rng(), precision.autocast():
        torch.manual_seed(EVAL_SEED)
        for start in range(0, len(problems), batch_prompts):
            chunk = problems[start : start + batch_prompts]
            _, greedy_scores, _ = sample_and_score(engine, model, chunk, greedy, score, timeout_s)
            greedy_correct += int((greedy_scores >= 1.0).sum())
            batch, sampled_scores, _ = sample_and_score(engine, model, chunk, sampled, score, timeout_s)
            lengths.extend(batch.response_mask.sum(-1).tolist())
            counts.extend((sampled_scores >= 1.0).view(len(chunk), samples).sum(-1).tolist())
    n = len(problems)
    metrics = {
        "eval/accuracy_greedy": greedy_correct / max(1, n),
        "eval/accuracy_sampled": sum(counts) / max(1, n * samples),
        "eval/response_length": sum(lengths) / max(1, len(lengths)),
    }
    for k in pass_k:
        metrics[f"eval/pass@{k}"] = sum(pass_at_k(samples, c, k) for c in counts) / max(1, n)
    return metrics
