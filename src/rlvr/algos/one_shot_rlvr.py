"""1-shot RLVR: historical-variance example selection and the entropy-loss-only run (policy_loss ``none``).

Paper: "Reinforcement Learning for Reasoning in Large Language Models with One Training Example",
arXiv 2504.20571. Official code: ypwang61/One-Shot-RLVR ``data/data_selection.py`` (``acc_score``,
``lim``), ``data/data_selection.sh``, ``verl/trainer/ppo/ray_trainer.py`` (``history_accuracy``),
``scripts/train/training_1.5b_pi1_r128.sh``.

**Historical variance score** (:func:`historical_variance_scores`, :func:`rank_examples`): run
ordinary RLVR over the pool and record, per example, its training accuracy ``a_{i,e}`` at each
visit (the fraction of its ``n`` rollouts that were correct; the official trainer appends one
value per step the example appears in). Then::

    s_i = std(a_{i,1..E})                      population std (numpy's default), method "std"

ranked descending, ties in the history's order (a stable sort, as the official ``sorted``);
``pi_k`` is the k-th example. The paper trains on that one example duplicated to the batch size
(128). The alternative ``method="lim"`` (LIMR-style alignment with the mean learning curve, the
official ``lim``), over the first ``E = min_i |a_i|`` visits::

    abar_e = mean_i a_{i,e},    s_i = 1 - sum_e (a_{i,e} - abar_e)^2 / sum_e (1 - abar_e)^2

(``s_i = 1`` for all when every ``abar_e = 1``, where the official code divides by zero). Examples
with no recorded visit get no score and are left out of the ranking (the official script would
fail on them). The history is kept by the trainer (:class:`rlvr.train.history.PromptHistory`, one
visit per step a prompt is drawn, written to ``<run>/prompt_history.jsonl``); ``rlvr data select
RUN_DIR --k 1 --score std`` ranks it and writes the selected problems, and the ``subset`` task
(:mod:`rlvr.tasks.subset`) repeats them to fill every batch.

**Entropy loss alone** (policy loss ``none``): the paper reports that the entropy loss by itself,
with no outcome reward, raises MATH500 accuracy (Qwen2.5-Math-1.5B). ``algo.policy_loss=none``
contributes a zero per-token loss that keeps the autograd graph (``0 * log pi``), so a run with
e.g. ``algo.regularizers=[entropy_bonus]`` trains on its regularizers alone. (The 1-shot recipe
itself keeps the policy gradient: GRPO with ``entropy_coeff = 0.001``, i.e. ``entropy_bonus``.)
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence, get_args

import numpy as np
import torch

from rlvr.algos.context import AlgoContext, LossOutput
from rlvr.algos.registry import policy_loss
from rlvr.algos.shaping import check_choice

SelectionMethod = Literal["std", "lim"]
SELECTION_METHODS: tuple[str, ...] = get_args(SelectionMethod)


@policy_loss.register("none", requires=("logprobs",))
def no_policy_loss(ctx: AlgoContext) -> LossOutput:
    """No policy gradient: a zero per-token loss ``0 * log pi`` that keeps the graph (1-shot RLVR, arXiv 2504.20571).

    The run trains on its regularizers alone (e.g. ``entropy_bonus``: the paper's entropy-loss-only run).
    """
    ctx.require("logprobs", who="policy_loss 'none'")
    assert ctx.logprobs is not None
    logprobs = torch.where(ctx.response_mask > 0, ctx.logprobs, torch.zeros_like(ctx.logprobs))
    return LossOutput(per_token=logprobs * 0.0)


def historical_variance_scores(history: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """``s_i = std(a_i)`` (population) of each example's per-visit accuracies; empty histories are left out."""
    return {key: float(np.std(np.asarray(values, dtype=np.float64))) for key, values in history.items() if len(values)}


def lim_scores(history: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """``1 - sum_e (a_ie - abar_e)^2 / sum_e (1 - abar_e)^2`` over the first ``min_i |a_i|`` visits."""
    rows = {key: list(values) for key, values in history.items() if len(values)}
    if not rows:
        return {}
    epochs = min(len(values) for values in rows.values())
    table = np.asarray([values[:epochs] for values in rows.values()], dtype=np.float64)
    mean_curve = table.mean(axis=0)
    denominator = float(((1.0 - mean_curve) ** 2).sum())
    spread = ((table - mean_curve) ** 2).sum(axis=1)
    if denominator == 0.0:  # every example solved at every visit: all curves equal the mean
        return {key: 1.0 for key in rows}
    return {key: float(1.0 - s / denominator) for key, s in zip(rows, spread)}


def selection_scores(history: Mapping[str, Sequence[float]], method: SelectionMethod = "std") -> dict[str, float]:
    """The 1-shot RLVR score of each example with at least one visit (``method``: ``"std"`` | ``"lim"``)."""
    check_choice("1-shot RLVR selection", "method", method, SELECTION_METHODS)
    return historical_variance_scores(history) if method == "std" else lim_scores(history)


def rank_examples(history: Mapping[str, Sequence[float]], method: SelectionMethod = "std") -> list[str]:
    """Example keys by descending score (stable: ties keep the history's order); ``[0]`` is ``pi_1``."""
    scores = selection_scores(history, method)
    return [key for key, _ in sorted(scores.items(), key=lambda item: item[1], reverse=True)]
