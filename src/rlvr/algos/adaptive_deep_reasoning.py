"""Adaptive Deep Reasoning: long/short group reward (``adr_reward``) and mode-switching loss (``adr_switch``), arXiv 2505.20101.

**Partly inferred.** No code was found; sourced from a review and the abstract. The model is first
fine-tuned on long and short chain-of-thought data, each with and without an explicit instruction
("[Please answer with Long CoT]"); RL (GRPO) then uses **reasoning-mode-controlled sampling**: per
prompt, ``G/2`` responses are sampled under the long instruction and ``G/2`` under the short one. A
**long-short adaptive group-wise reward** judges the prompt's complexity by comparing the two halves
and rewards the preferred mode, and a **logit-based reasoning-mode switching loss** on the first
generated token (which selects the mode) teaches the model to choose the mode itself. Our forms
[INFERENCE]:

**adr_reward** (stage: reward). With ``acc_long`` / ``acc_short`` the correct fraction of each half of
a group, the preferred mode is *short* when ``acc_short >= acc_long - delta`` (the short answer is
good enough) and *long* otherwise; every correct response of the preferred mode gets ``+bonus``::

    R_i <- R_i + bonus * 1[correct_i and mode_i == preferred_g]

A group missing one of the two modes has no preference. The preferred mode of every row (0 short,
1 long, -1 none) is also written to ``ctx.extras["preferred_mode"]`` for ``adr_switch``. Defaults
``delta = 0``, ``bonus = 0.5``.

**adr_switch** (stage: regularizer). Per row with a preferred mode, on the logits ``(z_short, z_long)``
of the two mode-selecting tokens (knobs ``short_token``, ``long_token``: each one token of the
tokenizer, e.g. the token that opens each mode's responses after the two-mode SFT) at the first
response position, computed **without** the instruction in the prompt: ``form="cross_entropy"``
(default) ``-log softmax(z)[preferred]``, or ``form="margin"`` ``max(0, margin - (z_pref - z_other))``.
Both depend on ``z_pref - z_other`` only, so any per-row shift of the logits (log-probs) gives the
same loss. The loss is ``coef`` times their sum over the micro-batch divided by its row count, times
``ctx.micro_batch_fraction`` (a mean over the mini-batch's rows). Default ``coef = 0.1``, ``margin = 1``.

**What the trainer provides** (:mod:`rlvr.train.rollout_plan`): with ``adr_reward`` in the pipeline
each group is sampled in two halves, ``G/2`` responses under ``long_prompt`` and ``G/2`` under
``short_prompt`` (templates in which ``{prompt}`` is the problem's prompt; the paper's instruction
"[Please answer with Long CoT]" and its short counterpart by default), the halves sharing the
group id; ``ctx.extras["reasoning_mode"]`` is ``(B,)``, 1 for a long-instruction row, 0 for a short
one, and the rows train on the instructed prompts they were sampled from. With ``adr_switch``,
``ctx.extras["mode_logits"]`` is a callable of the micro-batch's ``ctx.extras["row_index"]`` that
runs the current policy over each row's prompt *without* the instruction followed by each mode
token (with gradient, inside the update) and returns their ``(b, 2)`` log-probs at temperature 1. A
``(B, 2)`` tensor is accepted too (custom trainers, tests). Not provided here: the SFT stage that
teaches the two modes (long and short CoT, with and without the instruction). rlvr's warm start
trains one solution per problem, so on the built-in tiny model the two halves differ only by their
instruction and the mode tokens are whatever two tokens are configured: the mechanics train, the
modes carry no meaning until a two-mode SFT (a ``model.path`` fine-tuned that way) provides them.
Absent inputs: MissingInputError.

Metrics: ``adr_reward/prefer_short_frac`` (groups preferring short), ``adr_reward/bonus_mean``;
``adr_switch/loss``, ``adr_switch/agreement`` (rows whose larger mode logit is the preferred one).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from rlvr.algos.context import AlgoContext, RegularizerOutput
from rlvr.algos.groups import group_index
from rlvr.algos.registry import regularizer, reward
from rlvr.algos.shaping import RewardShaper, check_choice, correct_mask, float_rewards, group_ids_of
from rlvr.errors import ConfigError, MissingInputError

SwitchForm = Literal["cross_entropy", "margin"]
SWITCH_FORMS: tuple[str, ...] = get_args(SwitchForm)
SHORT, LONG, NONE = 0, 1, -1
PROMPT_SLOT = "{prompt}"
LONG_PROMPT = "[Please answer with Long CoT]\n{prompt}"
SHORT_PROMPT = "[Please answer with Short CoT]\n{prompt}"


def reasoning_modes(ctx: AlgoContext, who: str) -> Tensor:
    modes = ctx.extras.get("reasoning_mode")
    if not isinstance(modes, Tensor) or modes.shape != (ctx.batch_size,):
        raise MissingInputError(
            f"{who} needs ctx.extras['reasoning_mode'], a (B,) tensor: 1 for a response sampled under the long-CoT "
            "instruction, 0 under the short one (instruction-controlled sampling; the trainer must provide it)"
        )
    return modes.long().cpu()


def preferred_modes(correct: Tensor, modes: Tensor, group_ids: Tensor, delta: float) -> Tensor:
    """Per row: the group's preferred mode (0 short, 1 long; -1 when the group lacks one of the modes)."""
    dense, k = group_index(group_ids.cpu())
    out = torch.full((correct.shape[0],), NONE, dtype=torch.long)
    ok = correct.bool().cpu()
    for g in range(k):
        rows = dense == g
        long_rows, short_rows = rows & (modes == LONG), rows & (modes == SHORT)
        if not bool(long_rows.any()) or not bool(short_rows.any()):
            continue
        acc_long = float(ok[long_rows].double().mean())
        acc_short = float(ok[short_rows].double().mean())
        out[rows] = SHORT if acc_short >= acc_long - delta else LONG
    return out


@reward.register("adr_reward", requires=("rewards", "correct", "group_ids"))
class AdrReward(RewardShaper):
    """Adaptive Deep Reasoning (arXiv 2505.20101, rule inferred): ``+bonus`` for correct responses of the group's preferred mode.

    Knobs: ``bonus`` (0.5), ``delta`` (0.0: short wins ties), ``long_prompt`` / ``short_prompt`` (the
    instruction templates of the two halves). Needs ``ctx.extras["reasoning_mode"]``; writes
    ``ctx.extras["preferred_mode"]``.
    """

    name = "adr_reward"

    def __init__(
        self, *, bonus: float = 0.5, delta: float = 0.0, long_prompt: str = LONG_PROMPT, short_prompt: str = SHORT_PROMPT
    ) -> None:
        super().__init__()
        self.bonus = float(bonus)
        self.delta = float(delta)
        for knob, template in (("long_prompt", long_prompt), ("short_prompt", short_prompt)):
            if PROMPT_SLOT not in template:
                raise ConfigError(f"{self.who()}: {knob} must contain {PROMPT_SLOT} (where the prompt goes), got {template!r}")
        if long_prompt == short_prompt:
            raise ConfigError(f"{self.who()}: long_prompt and short_prompt must differ")
        self.long_prompt, self.short_prompt = long_prompt, short_prompt

    @property
    def mode_prompts(self) -> tuple[str, str]:
        """The (short, long) instruction templates the trainer samples the two halves of each group with."""
        return self.short_prompt, self.long_prompt

    def shape(self, ctx: AlgoContext) -> tuple[Tensor, dict[str, float]]:
        who = self.who()
        rewards = float_rewards(ctx, who)
        correct = correct_mask(ctx, who)
        group_ids = group_ids_of(ctx, who)
        modes = reasoning_modes(ctx, who)
        preferred = preferred_modes(correct, modes, group_ids, self.delta)
        ctx.extras["preferred_mode"] = preferred.to(ctx.response_mask.device)
        hit = correct.cpu() & (modes == preferred) & (preferred != NONE)
        bonus = self.bonus * hit.to(torch.float64)
        dense, k = group_index(group_ids.cpu())
        first = [int((dense == g).nonzero()[0]) for g in range(k)]
        decided = [int(preferred[i]) for i in first if int(preferred[i]) != NONE]
        metrics = {
            "prefer_short_frac": sum(p == SHORT for p in decided) / len(decided) if decided else 0.0,
            "bonus_mean": float(bonus.mean()) if bonus.numel() else 0.0,
        }
        return rewards + bonus.to(device=rewards.device, dtype=rewards.dtype), metrics


@regularizer.register("adr_switch", requires=())
class AdrSwitch:
    """Adaptive Deep Reasoning mode-switching loss (arXiv 2505.20101, form inferred) on the first-token mode logits.

    Knobs: ``short_token`` / ``long_token`` (required: the text of the single token that opens each
    mode's responses), ``coef`` (0.1), ``form`` (cross_entropy | margin), ``margin`` (1.0). Needs
    ``ctx.extras["mode_logits"]`` (with gradient) and ``ctx.extras["preferred_mode"]`` (from ``adr_reward``).
    """

    name = "adr_switch"

    def __init__(
        self, *, short_token: str, long_token: str, coef: float = 0.1, form: SwitchForm = "cross_entropy", margin: float = 1.0
    ) -> None:
        who = f"regularizer '{self.name}'"
        check_choice(who, "form", form, SWITCH_FORMS)
        if margin < 0:
            raise ConfigError(f"{who}: margin must be >= 0, got {margin}")
        if not short_token or not long_token or short_token == long_token:
            raise ConfigError(f"{who}: short_token and long_token must be two different non-empty texts")
        self.short_token, self.long_token = short_token, long_token
        self.coef, self.form, self.margin = float(coef), form, float(margin)

    @property
    def mode_tokens(self) -> tuple[str, str]:
        """The (short, long) mode tokens whose first-position logits the trainer provides."""
        return self.short_token, self.long_token

    def __call__(self, ctx: AlgoContext) -> RegularizerOutput:
        who = f"regularizer '{self.name}'"
        logits, preferred = ctx.extras.get("mode_logits"), ctx.extras.get("preferred_mode")
        rows = ctx.extras.get("row_index")
        if callable(logits) and isinstance(rows, Tensor):
            logits = logits(rows)  # the trainer's forward of this micro-batch's rows, with gradient
        if not isinstance(logits, Tensor) or logits.shape != (ctx.batch_size, 2):
            raise MissingInputError(
                f"{who} needs ctx.extras['mode_logits'], a (B, 2) tensor with gradient (or a callable of "
                "ctx.extras['row_index'] giving it): the current policy's first-token logits of the (short, long) "
                "mode tokens without the instruction (the trainer must provide it)"
            )
        if not isinstance(preferred, Tensor) or preferred.shape != (ctx.batch_size,):
            raise MissingInputError(f"{who} needs ctx.extras['preferred_mode'] ((B,), set by the reward 'adr_reward')")
        return switch_loss(logits, preferred, self.coef, self.form, self.margin, ctx.batch_size, float(ctx.micro_batch_fraction))


def switch_loss(
    logits: Tensor, preferred: Tensor, coef: float, form: SwitchForm, margin: float, batch_size: int, fraction: float
) -> RegularizerOutput:
    """``coef * sum_rows l_i / B * fraction`` over the rows with a preferred mode (see the module docstring)."""
    target = preferred.to(logits.device).long()
    counted = target != NONE
    safe = target.clamp(min=0)
    if form == "cross_entropy":
        per_row = F.cross_entropy(logits, safe, reduction="none")
    else:
        chosen = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        other = logits.gather(-1, (1 - safe).unsqueeze(-1)).squeeze(-1)
        per_row = torch.clamp(margin - (chosen - other), min=0.0)
    per_row = torch.where(counted, per_row, torch.zeros_like(per_row))
    loss = coef * per_row.sum() / max(batch_size, 1) * fraction
    agree = (logits.detach().argmax(-1) == safe) & counted
    metrics = {
        "adr_switch/loss": float(per_row.detach().sum()) / max(int(counted.sum()), 1),
        "adr_switch/agreement": float(agree.sum()) / max(int(counted.sum()), 1),
    }
    return RegularizerOutput(loss=loss, metrics=metrics)
