"""What a step samples when a method steers the rollout, and the inputs the trainer gives such methods.

* **DRIVE** (controller ``drive``, :mod:`rlvr.algos.drive`): each step's group size, response window
  and, in stage 2, the prompts (from the run's :class:`~rlvr.train.history.PromptHistory`, which
  then keeps the problems it has seen).
* **Adaptive Deep Reasoning** (``adr_reward`` / ``adr_switch``, :mod:`rlvr.algos.adaptive_deep_reasoning`):
  instruction-controlled sampling, each group's first ``G/2`` rows under the long instruction and
  the other ``G/2`` under the short one (one sampling call of the ``2P`` instructed prompts with
  ``G/2`` responses each, regrouped so the two halves of a problem share its group id);
  ``ctx.extras["reasoning_mode"]`` marks the halves, and ``ctx.extras["mode_logits"]`` is a
  :class:`ModeLogits` callable the switching loss runs on its micro-batch, with gradient.

Both replace :meth:`rlvr.rollout.stage.RolloutStage.collect` by a draw and one
:meth:`~rlvr.rollout.stage.RolloutStage.sample` (the same draw and seed as ``collect`` when nothing
changes), so they are refused with the rollout options that rebuild or filter the step's rows
(DAPO dynamic sampling, AEPO, CURE) or set its temperature (HAPO-H adaptive temperature).
Everything here depends only on the global batch and the replicated history, so every rank plans
and samples the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from rlvr.algos import AlgoContext
from rlvr.algos.adaptive_deep_reasoning import PROMPT_SLOT
from rlvr.errors import ConfigError
from rlvr.ops.forward import policy_forward
from rlvr.rollout.base import RolloutBatch
from rlvr.rollout.hf import format_prompts
from rlvr.rollout.stage import RolloutResult, RolloutStage
from rlvr.tasks.base import Problem
from rlvr.train.config import RunConfig
from rlvr.train.history import PromptHistory
from rlvr.train.pipeline import Pipeline

REASONING_MODE = "reasoning_mode"
"""``RolloutBatch.extras`` / ``ctx.extras`` key: ``(B,)`` long, 1 = sampled under the long instruction, 0 = short."""


def _only_one(found: list[Any], what: str) -> Any:
    if len(found) > 1:
        raise ConfigError(f"only one method may set {what}; found {len(found)}")
    return found[0] if found else None


class RolloutControl:
    """The rollout-steering methods of a pipeline (see the module docstring); inert when there are none."""

    def __init__(self, pipeline: Pipeline, cfg: RunConfig, tokenizer: Any) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer
        components = pipeline.all()
        self.drive = _only_one([c.fn for c in pipeline.controllers if hasattr(c.fn, "rollout_plan")], "the rollout plan")
        self.modes = _only_one([c.fn for c in components if hasattr(c.fn, "mode_prompts")], "the reasoning-mode prompts")
        self.switch = _only_one([c.fn for c in components if hasattr(c.fn, "mode_tokens")], "the mode tokens")
        r = cfg.rollout
        if self.active and (r.dynamic_sampling or r.aepo.enabled or r.cure.enabled or r.adaptive_temperature.enabled or r.r3.enabled):
            raise ConfigError(
                "DRIVE's stage plan and Adaptive Deep Reasoning's mode-controlled sampling draw the step's rows "
                "themselves: turn off rollout.dynamic_sampling, rollout.aepo, rollout.cure, rollout.adaptive_temperature "
                "and rollout.r3"
            )
        if self.switch is not None and self.modes is None:
            raise ConfigError(
                "regularizer 'adr_switch' needs adr_reward's mode-controlled sampling: add algo.reward_shaping=[adr_reward]"
            )
        if self.switch is not None and cfg.model.kind != "causal":
            raise ConfigError("regularizer 'adr_switch' reads next-token logits of a causal LM: model.kind must be causal")
        if self.modes is not None and r.group_size % 2:
            raise ConfigError(
                f"adr_reward samples G/2 responses per instruction: rollout.group_size ({r.group_size}) must be even"
            )
        if self.modes is not None and self.drive is not None and self.drive.stage2_group_size % 2:
            raise ConfigError("adr_reward with drive: stage2_group_size must be even")
        self.token_ids = self._mode_token_ids() if self.switch is not None else None
        if self.drive is not None:
            self.drive.configure(
                group_size=r.group_size, prompts_per_step=r.prompts_per_step, max_new_tokens=r.max_new_tokens, seed=cfg.seed
            )

    @property
    def active(self) -> bool:
        return self.drive is not None or self.modes is not None

    @property
    def needs_problems(self) -> bool:
        """Whether the prompt history must keep the problems it sees (DRIVE serves its hard set from them)."""
        return self.drive is not None

    def _mode_token_ids(self) -> tuple[int, int]:
        ids = []
        for text in self.switch.mode_tokens:
            encoded = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(encoded) != 1:
                raise ConfigError(
                    f"regularizer 'adr_switch': mode token {text!r} is {len(encoded)} tokens of this tokenizer; it must be one"
                )
            ids.append(int(encoded[0]))
        return ids[0], ids[1]

    # ------------------------------------------------------------------ sampling
    def collect(self, stage: RolloutStage, model: Any, step: int, history: PromptHistory) -> RolloutResult:
        """This step's rollout: ``stage.collect`` unless a method steers it."""
        if not self.active:
            return stage.collect(model, step)
        sampling = stage.sampling
        stats: dict[str, float] = {}
        if self.drive is not None:
            plan = self.drive.rollout_plan(step, history)
            sampling = dataclasses.replace(sampling, n=plan.group_size, max_new_tokens=plan.max_new_tokens)
            stats = {"drive/group_size": float(plan.group_size), "drive/max_new_tokens": float(plan.max_new_tokens)}
            problems = [history.problem(pid) for pid in plan.prompt_ids] if plan.prompt_ids else stage.draw_problems(plan.prompts)
        else:
            problems = stage.draw_problems(stage.prompts_per_step)
        if self.modes is not None:
            result = self._sample_modes(stage, model, problems, sampling, step)
        else:
            result = stage.sample(model, problems, sampling, key=(step, 0))
        result.stats.update(stats)
        return result

    def _sample_modes(self, stage: RolloutStage, model: Any, problems: list[Problem], sampling: Any, step: int) -> RolloutResult:
        """``G/2`` responses under each instruction per problem, regrouped: rows ``i*G .. i*G+G/2-1`` long, then short."""
        short, long = self.modes.mode_prompts
        half, count = sampling.n // 2, len(problems)
        instructed = [dataclasses.replace(p, prompt=long.replace(PROMPT_SLOT, p.prompt)) for p in problems]
        instructed += [dataclasses.replace(p, prompt=short.replace(PROMPT_SLOT, p.prompt)) for p in problems]
        raw = stage.sample(model, instructed, dataclasses.replace(sampling, n=half), key=(step, 0))
        order: list[int] = []
        for i in range(count):
            order += [*range(i * half, (i + 1) * half), *range((count + i) * half, (count + i + 1) * half)]
        index = torch.tensor(order, dtype=torch.long)
        device = raw.batch.input_ids.device
        batch = raw.batch.rows(index.to(device))
        batch.group_ids = torch.arange(count, device=device).repeat_interleave(2 * half)
        batch.extras[REASONING_MODE] = torch.tensor(([1] * half + [0] * half) * count, dtype=torch.long, device=device)
        return RolloutResult(
            # the problems as the task gave them (the history, DRIVE's hard set and the mode logits read
            # them); the rows' token ids hold the instructed prompts they were sampled from
            problems=[p for p in problems for _ in range(2 * half)],
            batch=batch,
            scores=raw.scores[index],
            failures=raw.failures,
            stats=dict(raw.stats),
            generate_s=raw.generate_s,
            verified=raw.correct[index],
            scored=raw.scored,
        )

    # ------------------------------------------------------------------ inputs
    def provide(self, ctx: AlgoContext, learner: Any) -> None:
        """``ctx.extras["mode_logits"]`` for ``adr_switch`` (the rows' prompts without the instruction)."""
        if self.switch is None:
            return
        texts = format_prompts(self.tokenizer, ctx.extras["problems"], self.cfg.rollout.chat_template)
        encoded = {t: self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in set(texts)}
        tokens = [list(encoded[t]) for t in texts]
        assert self.token_ids is not None
        ctx.extras["mode_logits"] = ModeLogits(learner, tokens, self.token_ids)


class ModeLogits:
    """``(b, 2)``: ``log pi(short_token | q)`` and ``log pi(long_token | q)`` at temperature 1 for the rows asked.

    ``q`` is each row's prompt without the instruction, unpadded (positions from 0, as when sampling);
    the policy is the learner's current model, so the values carry gradient inside the update. Each
    call runs one forward of ``2b`` rows (a row per mode token), on every rank alike (FSDP2's
    padding micro-batches call it too).
    """

    def __init__(self, learner: Any, prompt_tokens: list[list[int]], token_ids: tuple[int, int]) -> None:
        if any(len(t) == 0 for t in prompt_tokens):
            raise ConfigError("regularizer 'adr_switch': a prompt without any token has no first response position")
        self.learner, self.prompt_tokens, self.token_ids = learner, prompt_tokens, token_ids

    def batch(self, rows: list[int], device: torch.device) -> tuple[RolloutBatch, Tensor]:
        """The ``2b`` sequences ``q_i + [token]`` right-padded, and each one's response column of the token."""
        seqs = [self.prompt_tokens[r] + [tok] for tok in self.token_ids for r in rows]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        attention = torch.zeros_like(ids)
        mask = torch.zeros((len(seqs), width - 1))
        for k, seq in enumerate(seqs):
            ids[k, : len(seq)] = torch.tensor(seq)
            attention[k, : len(seq)] = 1
            mask[k, len(seq) - 2] = 1.0  # response column j holds token j + 1: the mode token is the last
        column = torch.tensor([len(s) - 2 for s in seqs])
        batch = RolloutBatch(
            input_ids=ids.to(device),
            attention_mask=attention.to(device),
            prompt_len=1,
            response_mask=mask.to(device),
            responses=["" for _ in seqs],
            truncated=torch.zeros(len(seqs), dtype=torch.bool, device=device),
            group_ids=torch.arange(len(seqs), device=device),
        )
        return batch, column.to(device)

    def __call__(self, rows: Tensor) -> Tensor:
        learner = self.learner
        device = learner.precision.device
        batch, column = self.batch([int(r) for r in rows.tolist()], device)
        with learner.precision.autocast():
            logprobs = policy_forward(
                learner.model,
                batch,
                temperature=1.0,
                chunk_size=learner.train.logprob_chunk_size,
                agree=learner._agree(),  # FSDP2: the forward path is agreed over ranks, as in the learner's own forwards
            )["logprobs"]
        values = logprobs.gather(1, column.unsqueeze(1)).squeeze(1)
        b = rows.shape[0]
        return torch.stack([values[:b], values[b:]], dim=-1)
