"""HICRA, Hierarchy-Aware Credit Assignment: more credit on planning tokens (stage: advantage), arXiv 2509.03646.

**Partly inferred.** The code is "being released" (TIGER-AI-Lab/Hierarchical-Reasoner README); sourced
from the project README and secondary summaries: *planning tokens* are the tokens inside **Strategic
Grams** (SGs), 3-5-gram phrases of deduction, branching and backtracking ("let's try a different
approach", "but the problem mentions"), found by semantic clustering of n-grams from successful
solutions (ranked by how many distinct solutions use the cluster) and partly annotated by hand; HICRA
amplifies the learning signal on them. The advantage form was not retrieved; two readings are offered
(knob ``mode``), on top of a ``base`` advantage ``A`` (default ``"grpo"``):

* ``"abs"`` (default; [INFERENCE/recollection]): ``A' = A + alpha * |A|`` on planning tokens, ``A``
  elsewhere: positives are raised and negatives softened on planning tokens;
* ``"scale"`` ([SEC], a reading note): ``A' = (1 + alpha) * A`` on planning tokens: reward *and*
  penalty amplified.

Default ``alpha = 0.2`` [INFERENCE].

**The SG lexicon** (knob ``grams``) is the paper's offline product and was not released; the default
list below is ours, a few English planning phrases of the kinds the paper names [INFERENCE]. Give the
lexicon of your task (any strings). A token is a planning token when its characters overlap an
occurrence of a gram in the decoded response (case-insensitive unless ``case_sensitive``); the
per-token texts come from ``ctx.extras["token_texts"]``, or from ``ctx.extras["responses"]`` with a
one-character-per-token tokenizer (:func:`rlvr.algos.steps.token_texts_of`), else MissingInputError.

Metrics: ``hicra/frac_planning`` (planning share of valid tokens), ``hicra/responses_with_planning``.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any, Literal, Sequence, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.entropy_advantage import WrapsBase, build_base_component
from rlvr.algos.ppo_clip import masked_float
from rlvr.algos.registry import advantage
from rlvr.algos.shaping import check_choice
from rlvr.algos.steps import token_texts_of
from rlvr.errors import ConfigError, MissingInputError

HICRA_REQUIRES = ("rewards", "group_ids")
HicraMode = Literal["abs", "scale"]
HICRA_MODES: tuple[str, ...] = get_args(HicraMode)
DEFAULT_GRAMS: tuple[str, ...] = (
    "let's try",
    "a different approach",
    "but wait",
    "let me check",
    "let me verify",
    "let's verify",
    "alternatively",
    "on second thought",
    "but the problem",
    "let's consider",
    "another way",
)


def phrase_token_mask(
    token_texts: Sequence[Sequence[str]], mask: Tensor, grams: Sequence[str], case_sensitive: bool = False
) -> Tensor:
    """Bool ``(B, T)``: valid tokens whose characters overlap an occurrence of any of ``grams``.

    ``token_texts[i]`` holds the decoded text of row ``i``'s valid tokens in order.
    """
    valid = mask > 0
    out = torch.zeros_like(valid)
    flags = 0 if case_sensitive else re.IGNORECASE
    patterns = [re.compile(re.escape(g), flags) for g in grams if g]
    for row, pieces in enumerate(token_texts):
        positions = valid[row].nonzero().flatten().tolist()
        if len(pieces) != len(positions):
            raise ConfigError(f"row {row} has {len(positions)} valid tokens but {len(pieces)} token texts")
        ends = list(accumulate(len(p) for p in pieces))
        starts = [e - len(p) for e, p in zip(ends, pieces)]
        text = "".join(pieces)
        for pattern in patterns:
            for match in pattern.finditer(text):
                for j, (s, e) in enumerate(zip(starts, ends)):
                    if s < match.end() and e > match.start():
                        out[row, positions[j]] = True
    return out


def hicra_advantages(adv: Tensor, planning: Tensor, alpha: float, mode: HicraMode) -> Tensor:
    """``A + alpha |A|`` (abs) or ``(1 + alpha) A`` (scale) on planning tokens, ``A`` elsewhere."""
    check_choice("advantage 'hicra'", "mode", mode, HICRA_MODES)
    boosted = adv + alpha * adv.abs() if mode == "abs" else (1.0 + alpha) * adv
    return torch.where(planning, boosted, adv)


@advantage.register("hicra", requires=HICRA_REQUIRES)
class Hicra(WrapsBase):
    """HICRA (arXiv 2509.03646, form inferred): ``A + alpha |A|`` (or ``(1 + alpha) A``) on strategic-gram tokens.

    Knobs: ``alpha`` (0.2), ``mode`` (abs | scale), ``grams`` (planning phrases; default a short English
    list), ``case_sensitive`` (False), ``base`` (``"grpo"``), ``base_kwargs``.
    """

    name = "hicra"

    def __init__(
        self,
        *,
        alpha: float = 0.2,
        mode: HicraMode = "abs",
        grams: list[str] | tuple[str, ...] = DEFAULT_GRAMS,
        case_sensitive: bool = False,
        base: str = "grpo",
        base_kwargs: dict[str, Any] | None = None,
    ) -> None:
        who = f"advantage '{self.name}'"
        check_choice(who, "mode", mode, HICRA_MODES)
        if not alpha >= 0:
            raise ConfigError(f"{who}: alpha must be >= 0, got {alpha}")
        if isinstance(grams, str) or not all(isinstance(g, str) for g in grams):
            raise ConfigError(f"{who}: grams must be a list of strings, got {grams!r}")
        self.alpha = float(alpha)
        self.mode = mode
        self.grams = tuple(g for g in grams if g)
        self.case_sensitive = bool(case_sensitive)
        self.base = build_base_component(advantage, base, base_kwargs, HICRA_REQUIRES, who, self.name)
        self.metrics: dict[str, float] = {}

    def __call__(self, ctx: AlgoContext) -> Tensor:
        who = f"advantage '{self.name}'"
        ctx.require(*HICRA_REQUIRES, who=who)
        if "token_texts" not in ctx.extras and "responses" not in ctx.extras:
            raise MissingInputError(f"{who} needs ctx.extras['token_texts'] or the decoded ctx.extras['responses']")
        base = self.base(ctx)
        planning = phrase_token_mask(token_texts_of(ctx, who), ctx.response_mask, self.grams, self.case_sensitive)
        planning = planning.to(base.device)
        mask = ctx.response_mask
        self.metrics = {
            f"{self.name}/frac_planning": masked_float(planning.to(mask.dtype), mask),
            f"{self.name}/responses_with_planning": float(planning.any(-1).double().mean()) if ctx.batch_size else 0.0,
        }
        return hicra_advantages(base, planning, self.alpha, self.mode)
