"""Forward quantities: per-token values of the policy that methods ask for, as objects with settings.

A method lists what it reads from the policy forward as :class:`Quantity` objects, e.g.
``TopPEntropy(p=0.8, top_k=10000)`` (SIREN) or ``MinPProxy(kappa=0.02)`` (Lp-Reg). Each object
names the :class:`~rlvr.algos.context.AlgoContext` field it fills (``old_<field>`` for the rollout
policy's value), says whether it carries a gradient, and computes itself from the final hidden
states of the valid response positions and the LM-head weight with the chunked kernels in
:mod:`rlvr.ops` (the full ``tokens x vocab`` logits are never held at once). Two methods asking for
equal objects share one computation; kernels that yield two quantities at once (log-probs with
entropy, self-certainty with the raw logit) run once per forward.

Logits are divided by the sampling temperature, as verl does, so that the old/current ratio refers
to the sampling distribution (``RawLogit`` is the one pre-temperature value).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import Tensor

from rlvr.ops.certainty import chunked_self_certainty
from rlvr.ops.logprobs import chunked_logprobs_entropy, output_head_weight, response_hidden_states
from rlvr.ops.minp import chunked_minp_logprobs
from rlvr.ops.top_p_entropy import chunked_top_p_entropy
from rlvr.rollout.base import UNMASK_STEP, RolloutBatch


@dataclass
class HeadInputs:
    """The valid response positions of one forward: hidden states ``(N, D)``, LM-head weight, targets.

    Kernel results shared by two quantities are cached here for the forward's lifetime.
    """

    hidden: Tensor
    weight: Tensor
    targets: Tensor
    temperature: float
    chunk_size: int
    wanted: frozenset[str]
    _cache: dict[str, Any] = field(default_factory=dict)

    def logprobs_entropy(self) -> tuple[Tensor, Tensor | None]:
        if "logprobs" not in self._cache:
            self._cache["logprobs"] = chunked_logprobs_entropy(
                self.hidden,
                self.weight,
                self.targets,
                temperature=self.temperature,
                chunk_size=self.chunk_size,
                with_entropy="entropy" in self.wanted,
            )
        return self._cache["logprobs"]

    def certainty_raw(self) -> tuple[Tensor | None, Tensor]:
        if "certainty" not in self._cache:
            self._cache["certainty"] = chunked_self_certainty(
                self.hidden.detach(),
                self.weight,
                self.targets,
                temperature=self.temperature,
                chunk_size=self.chunk_size,
                with_certainty="self_certainty" in self.wanted,
            )
        return self._cache["certainty"]


@dataclass(frozen=True)
class Quantity:
    """A per-token quantity of the policy forward; ``name`` is the AlgoContext field it fills."""

    name: ClassVar[str] = ""
    differentiable: ClassVar[bool] = True
    own_forward: ClassVar[bool] = False
    """True when it needs a forward of its own (a different input), not the rollout rows' hidden states."""

    def compute(self, head: HeadInputs) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class LogProbs(Quantity):
    """``log pi(o_t | q, o_<t)`` of each response token (always computed)."""

    name: ClassVar[str] = "logprobs"

    def compute(self, head: HeadInputs) -> Tensor:
        return head.logprobs_entropy()[0]


@dataclass(frozen=True)
class Entropy(Quantity):
    """Full-vocabulary entropy ``-sum_v p_v log p_v`` of the next-token distribution."""

    name: ClassVar[str] = "entropy"

    def compute(self, head: HeadInputs) -> Tensor:
        entropy = head.logprobs_entropy()[1]
        assert entropy is not None
        return entropy


@dataclass(frozen=True)
class TopPEntropy(Quantity):
    """Entropy of the top-p nucleus, renormalised (SIREN, arXiv 2509.25133); see rlvr.ops.top_p_entropy."""

    name: ClassVar[str] = "top_p_entropy"
    p: float = 0.8
    top_k: int = 10000

    def compute(self, head: HeadInputs) -> Tensor:
        value, _ = chunked_top_p_entropy(
            head.hidden,
            head.weight,
            p=self.p,
            top_k=self.top_k,
            temperature=head.temperature,
            chunk_size=max(1, head.chunk_size // 4),
        )
        return value


@dataclass(frozen=True)
class MinPProxy(Quantity):
    """Log-prob of the sampled token under the min-p proxy ``p_v >= kappa * max p`` (Lp-Reg, arXiv 2510.03222)."""

    name: ClassVar[str] = "minp_logprobs"
    differentiable: ClassVar[bool] = False
    kappa: float = 0.02

    def compute(self, head: HeadInputs) -> Tensor:
        return chunked_minp_logprobs(
            head.hidden.detach(),
            head.weight,
            head.targets,
            kappa=self.kappa,
            temperature=head.temperature,
            chunk_size=head.chunk_size,
        )


@dataclass(frozen=True)
class SelfCertainty(Quantity):
    """``logsumexp(z) - mean_v z`` of the next-token logits (UCAS, arXiv 2510.10649)."""

    name: ClassVar[str] = "self_certainty"
    differentiable: ClassVar[bool] = False

    def compute(self, head: HeadInputs) -> Tensor:
        certainty = head.certainty_raw()[0]
        assert certainty is not None
        return certainty


@dataclass(frozen=True)
class RawLogit(Quantity):
    """The pre-temperature logit of the sampled token (UCAS)."""

    name: ClassVar[str] = "raw_logit"
    differentiable: ClassVar[bool] = False

    def compute(self, head: HeadInputs) -> Tensor:
        return head.certainty_raw()[1]


@dataclass(frozen=True)
class AnswerOnlyLogProbs(Quantity):
    """Log-probs of each response with its query removed (SAR's ``ppl(a)``, arXiv 2510.03757).

    Needs a forward of its own: the response after an empty prompt under the same formatting (just
    BOS, or the chat template with an empty user turn, as the official ``create_ans_only_batch``).
    The learner builds that batch (:func:`answer_only_batch`) and takes its :class:`LogProbs`.
    """

    name: ClassVar[str] = "answer_only_logprobs"
    differentiable: ClassVar[bool] = False
    own_forward: ClassVar[bool] = True


QUANTITIES: dict[str, type[Quantity]] = {
    q.name: q for q in (LogProbs, Entropy, TopPEntropy, MinPProxy, SelfCertainty, RawLogit, AnswerOnlyLogProbs)
}
"""Every forward quantity by the AlgoContext field it fills; a method reads the rollout policy's
value of ``<name>`` as ``old_<name>``."""


def quantity_field(field_name: str) -> tuple[type[Quantity], bool] | None:
    """``(quantity class, is_old)`` for an AlgoContext field such as ``old_top_p_entropy``; None if not one."""
    is_old = field_name.startswith("old_")
    cls = QUANTITIES.get(field_name.removeprefix("old_"))
    if cls is None or (is_old and cls.own_forward):
        return None
    return cls, is_old


def policy_forward(
    model: torch.nn.Module,
    batch: RolloutBatch,
    *,
    temperature: float,
    chunk_size: int,
    quantities: Iterable[Quantity] = (),
    agree: Callable[[bool], bool] | None = None,
) -> dict[str, Tensor]:
    """``{quantity.name: (B, T) values}`` of the response tokens, log-probs always included.

    Gradients flow when called outside ``torch.no_grad`` (except for non-differentiable
    quantities). Padding positions hold 0. ``agree`` turns a local choice of forward path into one
    all ranks share (see :func:`rlvr.ops.logprobs.response_hidden_states`). A model prepared by
    :func:`attach_policy_forward` (FSDP2) runs this through its registered forward method.
    """
    method = getattr(model, "rlvr_policy_forward", None)
    if method is not None:
        return method(batch, temperature=temperature, chunk_size=chunk_size, quantities=tuple(quantities), agree=agree)
    return compute_policy_forward(model, batch, temperature=temperature, chunk_size=chunk_size, quantities=quantities, agree=agree)


def attach_policy_forward(model: torch.nn.Module) -> None:
    """Give ``model`` a ``rlvr_policy_forward`` method (for FSDP2's ``register_fsdp_forward_method``)."""

    def rlvr_policy_forward(self: torch.nn.Module, batch: RolloutBatch, **kwargs: Any) -> dict[str, Tensor]:
        return compute_policy_forward(self, batch, **kwargs)

    model.rlvr_policy_forward = types.MethodType(rlvr_policy_forward, model)  # type: ignore[attr-defined]


def compute_policy_forward(
    model: torch.nn.Module,
    batch: RolloutBatch,
    *,
    temperature: float,
    chunk_size: int,
    quantities: Iterable[Quantity] = (),
    agree: Callable[[bool], bool] | None = None,
) -> dict[str, Tensor]:
    """:func:`policy_forward`'s computation (a masked-diffusion batch is replayed along its trajectory)."""
    from rlvr.models.mdlm import is_mdlm

    if UNMASK_STEP in batch.extras or is_mdlm(model):
        from rlvr.ops.trajectory import trajectory_forward

        return trajectory_forward(model, batch, temperature=temperature, chunk_size=chunk_size, quantities=quantities)
    wanted = {q.name: q for q in (LogProbs(), *quantities)}
    separate = [name for name, q in wanted.items() if q.own_forward]
    if separate:
        raise ValueError(f"policy_forward cannot compute {separate} from the rollout rows; they need a forward of their own")
    prompt_len = batch.prompt_len
    valid = batch.response_mask.bool()
    head = HeadInputs(
        hidden=response_hidden_states(model, batch.input_ids, batch.attention_mask, prompt_len, agree=agree)[valid],
        weight=output_head_weight(model),
        targets=batch.input_ids[:, prompt_len:][valid],
        temperature=temperature,
        chunk_size=chunk_size,
        wanted=frozenset(wanted),
    )
    return {name: _scatter(q.compute(head), valid) for name, q in wanted.items()}


def answer_only_batch(batch: RolloutBatch, prompt_ids: Tensor) -> RolloutBatch:
    """``batch``'s responses after the token ids ``prompt_ids`` (1-D) instead of their own prompts."""
    n = batch.input_ids.shape[0]
    prompt = prompt_ids.to(batch.input_ids.device).unsqueeze(0).expand(n, -1)
    return RolloutBatch(
        input_ids=torch.cat([prompt, batch.response_ids], dim=1),
        attention_mask=torch.cat([torch.ones_like(prompt), batch.response_mask.long()], dim=1),
        prompt_len=prompt.shape[1],
        response_mask=batch.response_mask,
        responses=batch.responses,
        truncated=batch.truncated,
        group_ids=batch.group_ids,
    )


def _scatter(values: Tensor, valid: Tensor) -> Tensor:
    """Place flat per-token ``values`` back at the ``valid`` positions of a zero ``(B, T)`` grid."""
    grid = torch.zeros(valid.shape, dtype=values.dtype, device=values.device)
    return grid.masked_scatter(valid, values)
