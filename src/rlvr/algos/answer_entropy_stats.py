"""Answer-level entropy and empirical support of each rollout group (stage: controller, metrics only).

"The Invisible Leash" (arXiv 2507.14843; no code released) reports that RLVR can raise token-level
entropy while the *answer-level* entropy falls: uncertain steps that end in fewer distinct final
answers. The token-level side is logged every step (``entropy/mean``, over the rollout policy's
tokens); this component logs the answer-level side of the same rollouts, per group of ``G``
responses to one prompt:

    p_a = n_a / G                    n_a: responses whose extracted final answer is a
    H_g = -sum_a p_a ln p_a          in nats; at most ln G (every answer different)

Metrics, means over the groups of the step: ``answer_entropy/entropy`` (``H_g``),
``answer_entropy/entropy_norm`` (``H_g / ln G``, groups of G > 1), ``answer_entropy/distinct``
(distinct answers), ``answer_entropy/support`` (distinct *correct* answers: the group's empirical
support, the quantity whose shrinkage the paper measures at evaluation, where ``rlvr eval
--base-results`` compares it against a base model), and ``answer_entropy/missing_frac``
(responses without an answer). It changes no loss.

Answers are read from ``ctx.extras["responses"]`` with ``extract`` (``rlvr.algos.seed_grpo``:
last ``\\boxed{}``, first / last line, whole response) and compared under ``equivalence``
(``rlvr.algos.empo``: exact strings, or the value of an arithmetic expression); the task's own
extractor is not visible from the context, so ``extract`` must match the task (``first_line``
for countdown and arithmetic). A response without an answer is its own answer
(``missing="singleton"``) or all of them share one (``"cluster"``). [INFERENCE] The paper's
exact estimator is not available; this is the plug-in entropy of the empirical answer
distribution.
"""

from __future__ import annotations

import math

from rlvr.algos.context import AlgoContext
from rlvr.algos.empo import EQUIVALENCES, Equivalence, answer_key
from rlvr.algos.groups import group_index
from rlvr.algos.registry import controller
from rlvr.algos.seed_grpo import (
    EXTRACT_MODES,
    MISSING_MODES,
    ExtractMode,
    MissingMode,
    cluster_sizes,
    extract_answer,
    semantic_entropy,
)
from rlvr.algos.shaping import check_choice, correct_mask, group_ids_of, response_texts

WHO = "controller 'answer_entropy_stats'"


def group_answer_stats(keys: list[object], correct: list[bool], missing: MissingMode) -> dict[str, float]:
    """``entropy``, ``entropy_norm``, ``distinct`` and ``support`` of one group's answer keys (None: no answer)."""
    entropy = semantic_entropy(cluster_sizes(keys, missing), "shannon")  # type: ignore[arg-type]
    n = len(keys)
    return {
        "entropy": entropy,
        "entropy_norm": entropy / math.log(n) if n > 1 else float("nan"),
        "distinct": float(len({k for k in keys if k is not None})),
        "support": float(len({k for k, ok in zip(keys, correct) if k is not None and ok})),
    }


@controller.register("answer_entropy_stats", requires=("group_ids", "correct"))
class AnswerEntropyStats:
    """Logs the answer-level entropy and empirical support of each group (The Invisible Leash, arXiv 2507.14843)."""

    def __init__(
        self, *, extract: ExtractMode = "boxed", equivalence: Equivalence = "exact", missing: MissingMode = "singleton"
    ) -> None:
        check_choice(WHO, "extract", extract, EXTRACT_MODES)
        check_choice(WHO, "equivalence", equivalence, EQUIVALENCES)
        check_choice(WHO, "missing", missing, MISSING_MODES)
        self.extract = extract
        self.equivalence = equivalence
        self.missing = missing

    def prepare(self, ctx: AlgoContext) -> dict[str, float]:
        texts = response_texts(ctx, WHO)
        correct = correct_mask(ctx, WHO).tolist()
        dense, k = group_index(group_ids_of(ctx, WHO).cpu())
        keys = [answer_key(extract_answer(text, self.extract), self.equivalence) for text in texts]
        members: list[list[int]] = [[] for _ in range(k)]
        for i, g in enumerate(dense.tolist()):
            members[g].append(i)
        groups = [group_answer_stats([keys[i] for i in rows], [correct[i] for i in rows], self.missing) for rows in members]
        metrics: dict[str, float] = {}
        for name in ("entropy", "entropy_norm", "distinct", "support"):
            values = [g[name] for g in groups if not math.isnan(g[name])]
            metrics[f"answer_entropy/{name}"] = sum(values) / len(values) if values else 0.0
        metrics["answer_entropy/missing_frac"] = sum(key is None for key in keys) / len(keys) if keys else 0.0
        return metrics

    def after_step(self, metrics: dict[str, float]) -> dict[str, float]:
        return {}
