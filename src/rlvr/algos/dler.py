"""DLER truncation penalty (stage: reward), "Doing Length pEnalty Right", arXiv 2510.15110.

Code: NVlabs/DLER ``verl-dler/verl/workers/reward_manager/dapo.py`` (``stop_properly_penalty``):
a response that did not stop properly (vLLM ``finish_reason != "stop"``, i.e. it hit the
maximum response length) has its score multiplied by ``penalty_coef = 0.1``:

    R_i <- penalty_coef * R_i    if truncated_i,     else R_i unchanged.

The truncation length itself is ``rollout.max_new_tokens`` (DLER uses 4000 for the 1.5B model) and
there is no overlong buffer. The rest of the DLER recipe lives elsewhere and is *not* duplicated
here: batch-wise reward normalisation is the advantage ``reinforce_pp_baseline`` (group-mean
baseline, then whitening over all valid tokens of the batch), dynamic sampling on ``seq_reward`` is
:func:`rlvr.algos.dynamic_sampling.keep_informative_groups` (wired by the trainer), and clip-higher
(0.2 / 0.28, ``clip_ratio_c = 10``) is ``ppo_clip``'s knobs. The difficulty-aware DLER variant is
not in the released code and not implemented.
"""

from __future__ import annotations

from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.registry import reward
from rlvr.algos.shaping import RewardShaper, float_rewards, fraction, truncated_mask


def truncation_penalty(rewards: Tensor, truncated: Tensor, penalty_coef: float) -> Tensor:
    """``penalty_coef * R`` where truncated, ``R`` elsewhere."""
    return rewards * (1.0 - (1.0 - penalty_coef) * truncated.bool().to(rewards.dtype))


@reward.register("dler", requires=("rewards", "truncated"))
class DlerTruncation(RewardShaper):
    """DLER truncation penalty ``R <- penalty_coef * R`` on truncated responses (arXiv 2510.15110).

    Knob: ``penalty_coef`` (0.1). Metrics: ``frac_truncated``, ``frac_penalised`` (truncated with
    a non-zero reward, i.e. where the multiplication changed something).
    """

    name = "dler"

    def __init__(self, *, penalty_coef: float = 0.1) -> None:
        super().__init__()
        self.penalty_coef = float(penalty_coef)

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        rewards = float_rewards(ctx, self.who())
        truncated = truncated_mask(ctx, self.who())
        metrics = {"frac_truncated": fraction(truncated), "frac_penalised": fraction(truncated & (rewards != 0))}
        return truncation_penalty(rewards, truncated, self.penalty_coef), metrics
