"""DAPO overlong reward shaping (stage: reward), arXiv 2503.14476.

Code: verl ``workers/reward_manager/dapo.py``. With ``L_max`` the maximum response length,
``L_cache`` the overlong buffer and ``expected = L_max - L_cache``:

    R_i += min(-(L_i - expected) / L_cache * factor, 0)

i.e. no penalty up to ``expected`` tokens, then a penalty growing linearly to ``-factor`` at
``L_max``. Paper setting: ``L_max = 20480`` (16384 + 4096), ``L_cache = 4096``, ``factor = 1``.

Defaults: ``max_length=None`` -> ``ctx.max_response_length``; ``cache_length=None`` ->
``max_length // 5`` (DAPO's 4096 / 20480). DAPO's "overlong filtering" (masking truncated
responses out of the loss) is the token weight ``mask_truncated``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.registry import reward
from rlvr.algos.shaping import RewardShaper, check_positive, float_rewards, fraction, max_length, mean_of
from rlvr.errors import ConfigError


def overlong_penalty(lengths: Tensor, max_len: float, cache_len: float, factor: float) -> Tensor:
    """``min(-(L - (L_max - L_cache)) / L_cache * factor, 0)``, ``(B,)`` float64."""
    expected = max_len - cache_len
    penalty = -(lengths.to(torch.float64) - expected) / cache_len * factor
    return penalty.clamp(max=0.0)


@reward.register("overlong_shaping", requires=("rewards",))
class OverlongShaping(RewardShaper):
    """DAPO soft overlong punishment (arXiv 2503.14476): linear penalty in the last ``L_cache`` tokens.

    Knobs: ``cache_length`` (None = ``max_length // 5``), ``max_length`` (None =
    ``max_response_length``), ``factor`` (1.0). Metrics: ``frac_penalised``, ``mean_penalty``,
    ``expected_length``.
    """

    name = "overlong_shaping"

    def __init__(
        self, *, cache_length: int | None = None, max_length: int | None = None, factor: float = 1.0
    ) -> None:
        super().__init__()
        check_positive(self.who(), cache_length=cache_length, max_length=max_length)
        self.cache_length = cache_length
        self.max_length = max_length
        self.factor = float(factor)

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        rewards = float_rewards(ctx, self.who())
        top = max_length(ctx, self.max_length)
        cache = self.cache_length if self.cache_length is not None else max(1, top // 5)
        if cache > top:
            raise ConfigError(f"{self.who()}: cache_length {cache} exceeds max_length {top}")
        penalty = overlong_penalty(ctx.lengths, top, cache, self.factor)
        metrics = {
            "frac_penalised": fraction(penalty < 0),
            "mean_penalty": mean_of(penalty),
            "expected_length": float(top - cache),
        }
        return rewards + penalty.to(rewards.dtype), metrics
