"""rlvr advantages and policy losses inside TRL's ``GRPOTrainer`` (tested with trl 1.16, transformers 5.23).

    from rlvr.integrations.trl import RLVRGRPOTrainer
    trainer = RLVRGRPOTrainer(
        model=model, reward_funcs=[reward], args=GRPOConfig(...), train_dataset=ds, processing_class=tok,
        rlvr_advantage="rloo",                                   # or ("grpo", {"eps": 1e-4}), or None = TRL's
        rlvr_policy_loss=("ppo_clip", {"clip_high": 0.28}),      # or None = TRL's loss_type
        rlvr_agg_mode="token-mean",
    )

TRL generates, scores and batches as usual; two hooks swap in rlvr components:

* **Advantages** (``_generate_and_score_completions``): the summed, weighted rewards of the whole
  generation batch (gathered over processes, as TRL does) are fed to the rlvr advantage with
  ``group_ids`` = consecutive blocks of ``num_generations``, the gathered completion lengths as
  ``response_mask``, ``correct = reward >= correct_threshold`` and the prompt text as ``prompt_ids``.
  The result is ``(B, T)`` and replaces ``inputs["advantages"]`` (TRL's loss accepts 2-D advantages).
* **Policy loss** (``_compute_loss``): TRL's per-token log-probs (and old/ref log-probs, entropies)
  fill an :class:`~rlvr.algos.AlgoContext`; the rlvr per-token loss, times vLLM's importance ratio
  when TRL provides one, plus ``beta`` times TRL's k3 KL, is aggregated with ``rlvr_agg_mode`` over
  the *accumulation window*: ``token-mean`` divides by the window's token count (TRL's ``dapo``
  normaliser), sequence modes by ``per_device_train_batch_size x gradient_accumulation_steps``, and
  ``seq-mean-token-sum-norm`` uses ``max_completion_length`` (TRL's ``dr_grpo``).

TRL-only loss features that the replacement loss would silently drop are rejected with a
ConfigError: entropy bonus / adaptive entropy, ``top_entropy_quantile < 1``, off-policy masking,
sequence-level importance sampling and the Liger loss.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import gather_object
from torch import Tensor
from trl import GRPOTrainer

from rlvr.algos import REGISTRIES, AlgoContext, Component
from rlvr.algos.aggregation import AGG_MODES
from rlvr.errors import ConfigError
from rlvr.integrations.support import TRL_ADVANTAGE_FIELDS, TRL_POLICY_LOSS_FIELDS

TESTED_TRL = "1.16"
MethodSpec = str | tuple[str, dict[str, Any]] | Component | None

ADVANTAGE_FIELDS = TRL_ADVANTAGE_FIELDS
POLICY_LOSS_FIELDS = TRL_POLICY_LOSS_FIELDS


def build_component(stage: str, spec: MethodSpec, available: frozenset[str]) -> Component | None:
    """A built rlvr method from ``name`` / ``(name, knobs)`` / a Component, checked against ``available`` inputs."""
    if spec is None:
        return None
    if isinstance(spec, Component):
        component = spec
    else:
        name, knobs = (spec, {}) if isinstance(spec, str) else spec
        component = REGISTRIES[stage].build(name, dict(knobs), f"rlvr_{stage}")
    missing = sorted(set(component.requires) - available)
    if missing:
        raise ConfigError(f"rlvr {stage} '{component.name}' needs {missing}, which GRPOTrainer does not provide")
    if stage == "policy_loss" and callable(getattr(component.fn, "prepare", None)):
        raise ConfigError(
            f"rlvr policy_loss '{component.name}' needs the whole rollout batch before the update (a prepare hook), "
            "which GRPOTrainer's loss does not see; use rlvr's native trainer"
        )
    return component


class RLVRGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose advantage and/or policy loss come from rlvr's registries (module docstring)."""

    def __init__(
        self,
        *args: Any,
        rlvr_advantage: MethodSpec = None,
        rlvr_policy_loss: MethodSpec = None,
        rlvr_agg_mode: str = "token-mean",
        correct_threshold: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if rlvr_agg_mode not in AGG_MODES:
            raise ConfigError(f"rlvr_agg_mode '{rlvr_agg_mode}' is not one of {', '.join(AGG_MODES)}")
        self.rlvr_advantage = build_component("advantage", rlvr_advantage, ADVANTAGE_FIELDS)
        self.rlvr_policy_loss = build_component("policy_loss", rlvr_policy_loss, POLICY_LOSS_FIELDS)
        self.rlvr_agg_mode = rlvr_agg_mode
        self.correct_threshold = correct_threshold
        self._rlvr_rewards: Tensor | None = None
        super().__init__(*args, **kwargs)
        if self.rlvr_policy_loss is not None:
            self._check_loss_options()

    def _check_loss_options(self) -> None:
        a = self.args
        dropped = {
            "entropy_coef / use_adaptive_entropy": self._entropy_bonus_enabled,
            "top_entropy_quantile < 1": a.top_entropy_quantile < 1.0,
            "off_policy_mask_threshold": a.off_policy_mask_threshold is not None,
            "importance_sampling_level='sequence'": a.importance_sampling_level != "token",
            "use_liger_kernel": bool(a.use_liger_kernel),
        }
        bad = [k for k, v in dropped.items() if v]
        if bad:
            raise ConfigError(f"rlvr_policy_loss replaces TRL's loss; these GRPOConfig options would be ignored: {', '.join(bad)}")

    # ------------------------------------------------------------------ advantages
    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Tensor:
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rlvr_rewards = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if self.rlvr_advantage is None:
            return output
        assert self._rlvr_rewards is not None
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        device = self.accelerator.device
        weights = self.reward_weights.to(self._rlvr_rewards.device).unsqueeze(0)
        rewards = (self._rlvr_rewards * weights).nansum(dim=1)
        completion_mask = output["completion_mask"]
        lengths = self.accelerator.gather(completion_mask.sum(dim=1))
        is_eos = torch.isin(output["completion_ids"], torch.tensor(self.eos_token_ids, device=completion_mask.device))
        truncated = self.accelerator.gather(~(is_eos & completion_mask.bool()).any(dim=1))
        width = max(int(lengths.max()), int(completion_mask.shape[1]), 1)
        mask = (torch.arange(width, device=device)[None] < lengths[:, None]).float()
        ctx = AlgoContext(
            response_mask=mask,
            rewards=rewards.to(device),
            group_ids=torch.arange(rewards.shape[0], device=device) // group,
            correct=rewards.to(device) >= self.correct_threshold,
            truncated=truncated,
            prompt_ids=[str(x) for x in gather_object([str(item["prompt"]) for item in inputs])],
            step=int(self.state.global_step),
            max_response_length=self.max_completion_length,
            agg_mode=self.rlvr_agg_mode,
        )
        with torch.no_grad():
            self.rlvr_advantage.prepare(ctx)
            advantages = self.rlvr_advantage(ctx) * mask
        local = len(inputs)
        start = self.accelerator.process_index * local
        output["advantages"] = advantages[start : start + local, : completion_mask.shape[1]].to(completion_mask.device)
        self._metrics[mode]["rlvr/advantage_abs_mean"].append(float(advantages[mask.bool()].abs().mean()))
        return output

    # ------------------------------------------------------------------ policy loss
    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> Tensor:
        if self.rlvr_policy_loss is None:
            return super()._compute_loss(model, inputs)
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        mask = mask.to(torch.float32)
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True
        )
        advantages = inputs["advantages"]
        advantages = advantages.unsqueeze(1).expand_as(logps) if advantages.dim() == 1 else advantages
        old = inputs.get("old_per_token_logps")
        mode = "train" if self.model.training else "eval"
        ctx = AlgoContext(
            response_mask=mask,
            logprobs=logps,
            old_logprobs=logps.detach() if old is None else old,
            ref_logprobs=inputs.get("ref_per_token_logps"),
            entropy=entropies,
            advantages=advantages.to(logps.dtype),
            step=int(self.state.global_step),
            max_response_length=self.max_completion_length,
            agg_mode=self.rlvr_agg_mode,
        )
        if mode == "train":  # normalise over the accumulation window, as TRL's dapo / grpo losses do
            steps = self.current_gradient_accumulation_steps
            tokens = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            ctx.global_num_tokens = float(tokens * steps / self.args.steps_per_generation)
            ctx.global_num_seqs = float(completion_ids.size(0) * steps)
        out = self.rlvr_policy_loss(ctx)
        per_token = out.per_token
        if per_token is not None and "importance_sampling_ratio" in inputs:
            per_token = per_token * inputs["importance_sampling_ratio"]
        if self.beta != 0.0:
            ref = inputs["ref_per_token_logps"]
            kl = torch.exp(ref - logps) - (ref - logps) - 1
            per_token = (0.0 if per_token is None else per_token) + self.beta * kl
            self._metrics[mode]["kl"].append(float((kl * mask).sum() / mask.sum().clamp(min=1.0)))
        if out.loss is not None:
            loss = out.loss if self.beta == 0.0 else out.loss + ctx.aggregate(per_token)
        else:
            loss = ctx.aggregate(per_token)
        for key, value in out.metrics.items():
            self._metrics[mode][f"rlvr/{key}"].append(float(value))
        self._metrics[mode]["entropy"].append(float((entropies.detach() * mask).sum() / mask.sum().clamp(min=1.0)))
        return loss
