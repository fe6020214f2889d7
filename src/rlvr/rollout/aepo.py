"""AEPO's rollout-stage component: temperature-adjusted positive samples replace the first rows.

AEPO (arXiv 2510.08141, official ``597358816/AEPO``; the math is :mod:`rlvr.algos.aepo`). After the
step's rollout is scored and its advantages estimated, the first ``prompt_fraction`` of its prompts
get ``group_size`` extra responses at ``T_reg`` (high while the previous step's rollout entropy is
at or below the target, else low); the extra responses whose within-group GRPO advantage exceeds
``adv_threshold`` replace the first rows of the batch with advantage 1. The mixed rows go through
the learner's old/reference forward again, at the actor's normal temperature.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from rlvr.algos.aepo import aepo_temperature, mix, sub_prompt_count
from rlvr.rollout.stage import RolloutResult, RolloutStage, Sampling
from rlvr.train.config import AEPOConfig


class AEPOSampler:
    """Holds the previous step's rollout entropy (checkpointed) and builds the mixed rollout."""

    def __init__(self, cfg: AEPOConfig) -> None:
        self.cfg = cfg
        self.entropy = 0.0

    def augment(
        self,
        stage: RolloutStage,
        model: Any,
        rollout: RolloutResult,
        rewards: Tensor,
        advantages: Tensor,
        entropy: float,
        step: int = 0,
    ) -> tuple[RolloutResult | None, dict[str, float]]:
        """The mixed rollout (None when no extra sample qualifies) and AEPO's metrics.

        ``rewards``/``advantages`` are the rollout's shaped rewards and token advantages; ``entropy``
        is this step's mean rollout entropy (it sets the next step's temperature).
        """
        a = self.cfg
        measured, self.entropy = self.entropy, entropy
        temperature = aepo_temperature(measured, a.target, a.temperature_high, a.temperature_low)
        group_ids = rollout.batch.group_ids.tolist()
        firsts = sorted({int(g): i for i, g in reversed(list(enumerate(group_ids)))}.values())
        sub = [rollout.problems[i] for i in firsts][: sub_prompt_count(len(firsts), a.prompt_fraction)]
        sampling = Sampling(
            n=a.group_size,
            max_new_tokens=stage.sampling.max_new_tokens,
            temperature=temperature,
            top_p=stage.sampling.top_p,
            top_k=stage.sampling.top_k,
        )
        extra = stage.sample(model, sub, sampling, key=(step, "aepo"))
        device = rollout.batch.input_ids.device
        mixed = mix(
            rollout.batch,
            rollout.problems,
            rewards.to(device),
            rollout.correct.to(device),
            advantages.to(device),
            extra.batch,
            extra.problems,
            extra.scores.to(device),
            entropy=measured,
            target=a.target,
            max_samples=a.max_samples,
            adv_threshold=a.adv_threshold,
            pad_token_id=stage.tokenizer.pad_token_id,
        )
        stats = {**mixed.stats, "aepo/temperature": temperature, "aepo/entropy": measured}
        if mixed.batch is rollout.batch:
            return None, stats
        result = RolloutResult(
            problems=mixed.problems,
            batch=mixed.batch,
            scores=mixed.rewards.cpu(),
            failures=rollout.failures,
            stats={**rollout.stats, **stats},
            generate_s=rollout.generate_s + extra.generate_s,
            advantages=mixed.advantages,
            verified=mixed.correct.cpu(),
            scored=rollout.scored + extra.scored,
        )
        return result, stats

    def state_dict(self) -> dict[str, Any]:
        return {"entropy": self.entropy}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entropy = float(state.get("entropy", 0.0))

