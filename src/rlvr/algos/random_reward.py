"""Spurious random reward: the verifier's reward replaced by a coin flip (stage: reward).

Baseline of "Exploration v.s. Exploitation: Rethinking RLVR through Clipping, Entropy, and
Spurious Reward" (arXiv 2512.16912; no code located): a reward that carries no information about
the response,

    R_i ~ Bernoulli(p)      independently for every response, whatever it says

so any change in accuracy or entropy under it comes from the optimiser itself. The paper's
account is that PPO-style clipping, under such rewards, lowers the policy entropy (clipping bias;
the PPO-clip losses log ``clip/pos_high_frac`` and ``clip/neg_low_frac``, the clipped tokens of
each advantage sign), and that clipping-free updates can raise it instead. The Qwen-Math
"spurious rewards" experiments this follows used ``p = 0.5``. [SEC] The reward form is from the
paper's reviews; the seeding below is our own.

Chained after other shapers it replaces what they produced too; the verifier's correctness
(``ctx.correct``, the logged ``accuracy``) is left as it is, so the run still reports the real
accuracy of what it samples.

**Randomness.** ``seed=None`` (default) draws from ``ctx.generator``, the trainer's checkpointed
shuffle generator (seeded with the run's ``seed``, identical on every rank), so a resumed run draws
the same rewards; without one (a caller that passes none) the component's own generator, seeded 0,
is used. An integer ``seed`` always uses the component's own generator seeded with it, so the
reward sequence does not depend on the run seed; its state is saved in checkpoints
(``state_dict``).

Metrics: ``random_reward/mean`` (share of rewards 1) and ``random_reward/agree_frac`` (share of
responses whose random reward equals their verified correctness; about 0.5 at ``p = 0.5``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.registry import reward
from rlvr.algos.shaping import RewardShaper
from rlvr.errors import ConfigError


@reward.register("random_reward", requires=())
class RandomReward(RewardShaper):
    """Spurious-reward baseline (arXiv 2512.16912): R ~ Bernoulli(p), independent of the response.

    Knobs: ``p`` (0.5, the probability of reward 1), ``seed`` (None: the trainer's generator;
    an int: an own generator seeded with it). Replaces the incoming reward.
    """

    name = "random_reward"

    def __init__(self, *, p: float = 0.5, seed: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{self.who()}: p must be in [0, 1], got {p}")
        self.p = float(p)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(0 if seed is None else int(seed))

    def generator(self, ctx: AlgoContext) -> torch.Generator:
        """``ctx.generator`` when ``seed`` is None and the caller gives one, else the own generator."""
        return ctx.generator if self.seed is None and ctx.generator is not None else self._generator

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        generator = self.generator(ctx)
        draws = torch.rand(ctx.batch_size, generator=generator, device=generator.device, dtype=torch.float64)
        ones = draws < self.p
        dtype = ctx.rewards.dtype if ctx.rewards is not None and ctx.rewards.is_floating_point() else torch.get_default_dtype()
        metrics = {"mean": float(ones.to(torch.float64).mean()) if ones.numel() else 0.0}
        if ctx.correct is not None and ones.numel():
            metrics["agree_frac"] = float((ones == ctx.correct.bool().to(ones.device)).to(torch.float64).mean())
        return ones.to(device=ctx.response_mask.device, dtype=dtype), metrics

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("generator") is not None:
            self._generator.set_state(state["generator"])
