"""EMPO, Entropy-Minimized Policy Optimization: label-free semantic-cluster reward (stage: reward).

Paper: "Right Question is Already Half the Answer: Fully Unsupervised LLM Reasoning Incentivization",
arXiv 2504.05812. Official code: QingyangZhang/EMPO ``trl/src/open_r1/rewards.py``
(``get_empo_math_reward``), ``trl/src/open_r1/semantic_uncertainty.py`` (``get_semantic_ids_by_rule``),
``trl/recipes/Qwen2.5/rl/config_EMPO_NM_COT_20K_1.5B.yaml``; the verl port
``verl-empo/verl/utils/reward_score/empo/compute_metrics.py`` (``empo_metrics``).

Per prompt with ``G`` responses (the verifier reward is *replaced*; no reference answer is read):

1. Extract each response's final answer (``extract``, :func:`rlvr.algos.seed_grpo.extract_answer`;
   default the last ``\\boxed{}``). Official: math-verify ``parse`` (LaTeX, ``boxed="all"``, the last
   match), ``""`` when nothing is found.
2. Cluster the answers: the first unassigned answer opens a cluster that takes every later
   equivalent one. Equivalence here is equality of the whitespace-normalised answer strings
   (``equivalence="exact"``), or of their values as arithmetic expressions
   (``"expression_value"``, :func:`rlvr.tasks.countdown.parse_expression`; unparsable = no answer).
   Official: math-verify ``verify`` (symbolic equality), which this does not run.
   A response without an answer is its own cluster (``missing="singleton"``: math-verify never
   equates two empty strings, and the verl port does the same), or all of them share one
   (``missing="cluster"``).
3. ``p_k = n_k / G``; semantic entropy ``H = -sum_k p_k log p_k``.
4. ``r_i = p_{c(i)}``, the frequency of the response's own cluster; a response without an answer
   gets 0 (``missing_reward="zero"``, the TRL math reward) or its cluster's frequency
   (``"frequency"``, the verl port).
5. Entropy threshold (``entropy_filter=True``, TRL math reward): when ``H >= log G``, i.e. every
   answer is different, the whole group gets 0. Tested here as "as many clusters as responses",
   which is exact. Trap [CODE observation, checked numerically]: the official test is the float
   comparison ``-(p * log p).sum() < log G`` in numpy, and for ``G = 7`` (the recipe) and 3, 6,
   10, 14, ... the sum comes out one ulp *below* ``log G``, so the filter never fires in the
   released runs: ``entropy_filter=False`` reproduces them (it matters only when some answers are
   missing; an all-distinct group of answers gets ``1/G`` each and GRPO advantage 0 either way).
   The verl port has no filter (its ``confidence >= 0.25`` rule is commented out). The paper's "filter out
   too high *and* too low uncertainty" is not in either code path (an all-identical group gets
   advantage 0 from GRPO anyway).

Then GRPO (recipe: ``G = 7``, no KL). Metrics: ``empo/semantic_entropy`` (mean over groups),
``empo/num_clusters``, ``empo/filtered_frac`` (groups zeroed by the filter), ``empo/missing_frac``.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.groups import group_index
from rlvr.algos.registry import reward
from rlvr.algos.seed_grpo import EXTRACT_MODES, MISSING_MODES, ExtractMode, MissingMode, extract_answer, semantic_entropy
from rlvr.algos.shaping import RewardShaper, check_choice, group_ids_of, response_texts

Equivalence = Literal["exact", "expression_value"]
EQUIVALENCES: tuple[str, ...] = get_args(Equivalence)
MissingReward = Literal["zero", "frequency"]
MISSING_REWARDS: tuple[str, ...] = get_args(MissingReward)


def answer_key(answer: str | None, equivalence: Equivalence) -> Any:
    """What two equivalent answers share (None: no answer)."""
    if answer is None or equivalence == "exact":
        return answer
    from rlvr.tasks.countdown import parse_expression

    parsed = parse_expression(answer)
    return None if parsed is None else parsed[1]


def cluster_ids(keys: Sequence[Any], missing: MissingMode = "singleton") -> list[int]:
    """Cluster index of each answer key in order of first appearance; None keys per ``missing``."""
    ids: dict[Any, int] = {}
    out: list[int] = []
    for i, key in enumerate(keys):
        if key is None:
            key = ("__missing__", i) if missing == "singleton" else ("__missing__",)
        out.append(ids.setdefault(key, len(ids)))
    return out


def empo_group_rewards(
    keys: Sequence[Any], *, missing: MissingMode, missing_reward: MissingReward, entropy_filter: bool
) -> tuple[list[float], float, int, bool]:
    """``(rewards, H, number of clusters, filtered)`` of one group's answer keys."""
    ids = cluster_ids(keys, missing)
    n = len(ids)
    sizes = [ids.count(k) for k in range(max(ids, default=-1) + 1)]
    entropy = semantic_entropy(sizes, "shannon")
    filtered = entropy_filter and len(sizes) == n
    if filtered:
        return [0.0] * n, entropy, len(sizes), True
    rewards = [
        0.0 if key is None and missing_reward == "zero" else sizes[c] / n for key, c in zip(keys, ids)
    ]
    return rewards, entropy, len(sizes), False


@reward.register("empo", requires=("group_ids",))
class Empo(RewardShaper):
    """EMPO label-free reward (arXiv 2504.05812): the frequency of the response's answer cluster in its group.

    Knobs: ``extract`` (``"boxed"``), ``equivalence`` (``"exact"`` | ``"expression_value"``), ``missing``
    (``"singleton"`` | ``"cluster"``), ``missing_reward`` (``"zero"`` | ``"frequency"``),
    ``entropy_filter`` (True: all-distinct groups get 0). Replaces the incoming reward.
    """

    name = "empo"

    def __init__(
        self,
        *,
        extract: ExtractMode = "boxed",
        equivalence: Equivalence = "exact",
        missing: MissingMode = "singleton",
        missing_reward: MissingReward = "zero",
        entropy_filter: bool = True,
    ) -> None:
        super().__init__()
        for knob, value, valid in (
            ("extract", extract, EXTRACT_MODES),
            ("equivalence", equivalence, EQUIVALENCES),
            ("missing", missing, MISSING_MODES),
            ("missing_reward", missing_reward, MISSING_REWARDS),
        ):
            check_choice(self.who(), knob, value, valid)
        self.extract = extract
        self.equivalence = equivalence
        self.missing = missing
        self.missing_reward = missing_reward
        self.entropy_filter = bool(entropy_filter)

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        texts = response_texts(ctx, self.who())
        dense, k = group_index(group_ids_of(ctx, self.who()).cpu())
        keys = [answer_key(extract_answer(text, self.extract), self.equivalence) for text in texts]
        members: list[list[int]] = [[] for _ in range(k)]
        for i, g in enumerate(dense.tolist()):
            members[g].append(i)
        rewards = torch.zeros(len(texts), dtype=torch.float64)
        entropies, clusters, filtered = [], [], 0
        for rows in members:
            values, entropy, n_clusters, was_filtered = empo_group_rewards(
                [keys[i] for i in rows],
                missing=self.missing,
                missing_reward=self.missing_reward,
                entropy_filter=self.entropy_filter,
            )
            rewards[rows] = torch.tensor(values, dtype=torch.float64)
            entropies.append(entropy)
            clusters.append(n_clusters)
            filtered += int(was_filtered)
        metrics = {
            "semantic_entropy": sum(entropies) / k if k else 0.0,
            "num_clusters": sum(clusters) / k if k else 0.0,
            "filtered_frac": filtered / k if k else 0.0,
            "missing_frac": sum(key is None for key in keys) / len(keys) if keys else 0.0,
        }
        dtype = ctx.rewards.dtype if ctx.rewards is not None and ctx.rewards.is_floating_point() else torch.get_default_dtype()
        return rewards.to(device=ctx.response_mask.device, dtype=dtype), metrics

