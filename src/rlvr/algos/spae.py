"""SPAE, Step Potential Advantage Estimation (stage: advantage; probe math as helpers), arXiv 2601.03823.

**Probe** (official, cii030/SPAE-RL ``inference/probe_mechanism_example.py``): after each reasoning
step (the official steps end at tokens whose string ends with ``".\\n\\n"`` inside ``<think>``), the
prompt ``"**Final Answer**\\n\\boxed{"`` is appended to the response prefix and ``N = 5`` short
continuations are sampled (temperature 0.6, 10 tokens, top-20 log-probs). For probe ``n`` over the
first ``K_n`` positions ``j`` (at most the reference answer's token count and the probe's length):

    l_j = log-prob of the j-th reference-answer token in the top-20 list at position j (-10 if absent)
    H_j = -sum_v p_v log p_v over the top-20 list, not renormalised
    a_n = exp(sum_j l_j) / K_n           c_n = exp(-sum_j H_j) / K_n          (official: 0 when K_n = 0)
    a = mean_n a_n,  c = mean_n c_n,     Phi = 1.5 a c + 0.5 a - c,          dPhi_k = Phi_k - Phi_{k-1} (0 for k = 1)

:func:`probe_scores` and :func:`step_potential` compute these (``normalise="official"``; ``"geometric"``
uses ``exp(mean_j l_j)`` and ``exp(-mean_j H_j)`` instead: the official division of a product by
``K`` keeps ``a <= 1/K``, so a multi-token answer can never reach the "solved" potential 0.9), and
:func:`top_list_entropy` the un-renormalised entropy. Traps kept from the official probe: positions
``j > 1`` are conditioned on the *sampled* probe tokens, not on the reference answer.

**Advantage** (not released; abstract and README [ABSTRACT-ONLY]: a *potential saturation penalty*
that down-weights outcome credit after the potential saturates, discouraging post-solution checking,
and a *potential difference shaping* term, dense per step). Our form [INFERENCE], per token ``t`` of
step ``k(t)``::

    A_t = A^base_t * w_{k(t)} + lambda * dPhi_{k(t)}
    w_k = gamma   for steps after the first step with Phi > saturation, in a correct response
    w_k = 1       otherwise

(official diagnostics: a correct response's tokens after its first ``Phi > 0.9`` step are
"checking" tokens; a wrong response that reached ``Phi > 0.9`` is "right-to-wrong" and keeps its
negative credit). Defaults ``lambda = 0.5``, ``gamma = 0.5``, ``saturation = 0.9`` (the threshold is
the probe's; the two coefficients are unknown). Steps: :mod:`rlvr.algos.steps` with ``split`` (default
``"delimiter"``), ``delimiter`` (default ``".\\n\\n"``, the official boundary), ``step_len``.

**Input the trainer must provide**: ``ctx.extras["step_potential"]``, a ``(B, T)`` float tensor
holding ``Phi`` at every probed step end (the positions :meth:`Spae.probe_positions` returns for the
batch, i.e. the last token of each step) and NaN elsewhere; a step end without a probe (e.g. the
final step, which the official code does not probe) gets ``dPhi = 0`` and the potential carries over.
The trainer's probes (:mod:`rlvr.rollout.spae`, knobs ``rollout.spae.*``) provide it whenever the
advantage is ``spae``; absent: MissingInputError.

Metrics: ``spae/potential_mean`` (over probed steps), ``spae/saturated_frac`` (correct responses that
saturate), ``spae/checking_frac`` (share of valid tokens down-weighted), ``spae/shaping_abs_mean``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.entropy_advantage import WrapsBase, build_base_component
from rlvr.algos.ppo_clip import masked_float
from rlvr.algos.registry import advantage
from rlvr.algos.shaping import check_choice
from rlvr.algos.steps import StepSplit, check_step_split, step_ends
from rlvr.errors import ConfigError, MissingInputError

SPAE_REQUIRES = ("rewards", "group_ids", "correct")
ProbeNormalise = Literal["official", "geometric"]
PROBE_NORMALISE: tuple[str, ...] = get_args(ProbeNormalise)
ABSENT_LOGPROB = -10.0
"""The official log-prob of a reference token missing from the probe's top-20 list."""


def top_list_entropy(top_logprobs: Tensor) -> Tensor:
    """``-sum_v p_v log p_v`` over the last dimension of a top-k log-prob list, not renormalised (official)."""
    p = top_logprobs.exp()
    return -(p * top_logprobs).nan_to_num().sum(-1)


def probe_scores(
    target_logprobs: Tensor, top_entropy: Tensor, positions: Tensor, normalise: ProbeNormalise = "official"
) -> tuple[Tensor, Tensor]:
    """``(a, c)`` averaged over the probes: inputs ``(..., N, K)``, ``positions`` 1 on each probe's valid positions.

    ``target_logprobs`` already holds ``ABSENT_LOGPROB`` where the reference token was not listed.
    A probe with no valid position contributes 0 to both means (official).
    """
    check_choice("spae probe", "normalise", normalise, PROBE_NORMALISE)
    valid = positions > 0
    count = valid.sum(-1).to(target_logprobs.dtype)
    lp = torch.where(valid, target_logprobs, torch.zeros_like(target_logprobs)).sum(-1)
    h = torch.where(valid, top_entropy, torch.zeros_like(top_entropy)).sum(-1)
    safe = count.clamp(min=1.0)
    if normalise == "official":
        a, c = lp.exp() / safe, (-h).exp() / safe
    else:
        a, c = (lp / safe).exp(), (-h / safe).exp()
    a = torch.where(count > 0, a, torch.zeros_like(a))
    c = torch.where(count > 0, c, torch.zeros_like(c))
    return a.mean(-1), c.mean(-1)


def step_potential(a: Tensor | float, c: Tensor | float) -> Tensor | float:
    """``Phi = 1.5 a c + 0.5 a - c`` (official)."""
    return 1.5 * a * c + 0.5 * a - c


@advantage.register("spae", requires=SPAE_REQUIRES)
class Spae(WrapsBase):
    """SPAE (arXiv 2601.03823, advantage inferred): ``A w_k + lambda dPhi_k`` from probed step potentials.

    Knobs: ``lam`` (0.5), ``gamma`` (0.5), ``saturation`` (0.9), ``split`` (delimiter | length | token),
    ``delimiter`` (``".\\n\\n"``), ``step_len`` (64), ``base`` (``"grpo"``), ``base_kwargs``. Needs
    ``ctx.extras["step_potential"]`` from the trainer's probes.
    """

    name = "spae"

    def __init__(
        self,
        *,
        lam: float = 0.5,
        gamma: float = 0.5,
        saturation: float = 0.9,
        split: StepSplit = "delimiter",
        delimiter: str = ".\n\n",
        step_len: int = 64,
        base: str = "grpo",
        base_kwargs: dict[str, Any] | None = None,
    ) -> None:
        who = f"advantage '{self.name}'"
        check_step_split(who, split, step_len, delimiter)
        if not 0.0 <= gamma <= 1.0:
            raise ConfigError(f"{who}: gamma must be in [0, 1], got {gamma}")
        self.lam, self.gamma, self.saturation = float(lam), float(gamma), float(saturation)
        self.split, self.delimiter, self.step_len = split, delimiter, int(step_len)
        self.base = build_base_component(advantage, base, base_kwargs, SPAE_REQUIRES, who, self.name)
        self.metrics: dict[str, float] = {}

    def probe_positions(self, ctx: AlgoContext) -> Tensor:
        """Bool ``(B, T)``: the step ends the trainer should probe (the last token of every step)."""
        return step_ends(ctx, self.split, step_len=self.step_len, delimiter=self.delimiter, who=f"advantage '{self.name}'")

    def __call__(self, ctx: AlgoContext) -> Tensor:
        who = f"advantage '{self.name}'"
        ctx.require(*SPAE_REQUIRES, who=who)
        assert ctx.correct is not None
        potential = ctx.extras.get("step_potential")
        if not isinstance(potential, Tensor) or tuple(potential.shape) != tuple(ctx.response_mask.shape):
            raise MissingInputError(
                f"{who} needs ctx.extras['step_potential'], a (B, T) tensor of the probed step potential Phi at each "
                "step end (NaN elsewhere); the trainer must run the probes (see rlvr.rollout.spae)"
            )
        base = self.base(ctx)
        dtype = torch.promote_types(base.dtype, torch.float32)
        ends = self.probe_positions(ctx).cpu()
        phi = potential.detach().cpu().to(torch.float64)
        mask = ctx.response_mask.cpu() > 0
        weight = torch.ones(ctx.response_mask.shape, dtype=torch.float64)
        shaping = torch.zeros(ctx.response_mask.shape, dtype=torch.float64)
        probed, saturated = [], 0
        correct = ctx.correct.bool().cpu().tolist()
        for row in range(ctx.batch_size):
            previous: float | None = None
            saturated_here = False
            start = 0
            for end in (ends[row] & mask[row]).nonzero().flatten().tolist():
                span = slice(start, end + 1)
                if saturated_here and correct[row]:
                    weight[row, span] = self.gamma
                value = float(phi[row, end])
                if math.isfinite(value):
                    probed.append(value)
                    shaping[row, span] = 0.0 if previous is None else value - previous
                    previous = value
                    if value > self.saturation and not saturated_here:
                        saturated_here = True
                        saturated += int(correct[row])
                start = end + 1
        device = base.device
        weight = torch.where(mask, weight, torch.zeros_like(weight)).to(device=device, dtype=dtype)
        shaping = torch.where(mask, shaping, torch.zeros_like(shaping)).to(device=device, dtype=dtype)
        out = base.to(dtype) * weight + self.lam * shaping
        valid = ctx.response_mask
        checking = ((weight < 1) & (valid > 0)).to(valid.dtype)
        n_correct = sum(correct)
        self.metrics = {
            f"{self.name}/potential_mean": sum(probed) / len(probed) if probed else 0.0,
            f"{self.name}/saturated_frac": saturated / n_correct if n_correct else 0.0,
            f"{self.name}/checking_frac": masked_float(checking, valid),
            f"{self.name}/shaping_abs_mean": masked_float(shaping.abs(), valid),
        }
        return out.to(base.dtype)
