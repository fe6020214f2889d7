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

A *per-sequence* quantity (``per_sequence``, e.g. G2RL's :class:`GradientFeature`) yields one value
per response, ``(B, *row_shape)``, instead of a ``(B, T)`` token grid; it fills
``ctx.extras["old_<name>"]`` (no AlgoContext field).

A quantity with a **forward of its own** (:class:`OwnForward`) runs the policy over a different
input that it builds from the scored rollout (:class:`ForwardSource`: the rollout batch, its
problems, the tokenizer): the responses after an empty prompt (SAR), the prompts alone (ProGRPO), the
reference answer spliced after each response or right after its prompt (RLPR, the log-prob
reward). :meth:`OwnForward.plan` returns the rows to forward and how their log-probs become
``ctx.extras`` entries (:attr:`OwnForward.keys`); the learner runs that no-grad forward in its
micro-batches (multi-process aware) with the rollout weights, before the reward stage. A method asks
for one by listing its first key in ``requires`` (settings from its ``forward_quantities()``).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Literal, Sequence, get_args

import torch
from torch import Tensor

from rlvr.errors import ConfigError
from rlvr.ops.certainty import chunked_self_certainty
from rlvr.ops.gradient_feature import chunked_gradient_feature
from rlvr.ops.logprobs import chunked_logprobs_entropy, output_head_weight, response_hidden_states
from rlvr.ops.minp import chunked_minp_logprobs
from rlvr.ops.splice import (
    SpliceFormat,
    baseline_splice,
    check_format,
    compact,
    first_rows,
    prompt_tokens,
    splice_response,
    spliced_batch,
)
from rlvr.ops.top_p_entropy import chunked_top_p_entropy
from rlvr.rollout.base import UNMASK_STEP, RolloutBatch


@dataclass
class HeadInputs:
    """The valid response positions of one forward: hidden states ``(N, D)``, LM-head weight, targets.

    ``valid`` is the ``(B, T)`` mask the ``N`` positions were taken from (row ``i`` of the batch owns
    the positions of ``valid[i]``), for per-sequence quantities. Kernel results shared by two
    quantities are cached here for the forward's lifetime.
    """

    hidden: Tensor
    weight: Tensor
    targets: Tensor
    temperature: float
    chunk_size: int
    wanted: frozenset[str]
    valid: Tensor | None = None
    row_temperature: Tensor | None = None
    """``(N,)`` per-token temperatures already divided into ``hidden`` (then ``temperature`` is 1)."""
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
            if self.row_temperature is not None:  # the raw logit is pre-temperature: undo the row scaling
                certainty, raw = self._cache["certainty"]
                self._cache["certainty"] = (certainty, raw * self.row_temperature.to(raw.dtype))
        return self._cache["certainty"]


@dataclass(frozen=True)
class Quantity:
    """A per-token quantity of the policy forward; ``name`` is the AlgoContext field it fills."""

    name: ClassVar[str] = ""
    differentiable: ClassVar[bool] = True
    own_forward: ClassVar[bool] = False
    """True when it needs a forward of its own (a different input), not the rollout rows' hidden states."""
    per_sequence: ClassVar[bool] = False
    """True when :meth:`compute` gives one value per response, ``(B, *row_shape(model))``, not per token."""

    def compute(self, head: HeadInputs) -> Tensor:
        raise NotImplementedError

    def row_shape(self, model: torch.nn.Module) -> tuple[int, ...]:
        """The shape of one response's value of a per-sequence quantity."""
        return ()


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
class GradientFeature(Quantity):
    """Mean over a response of ``W^T (e_y - p)``, the last-layer gradient direction (G2RL, arXiv 2512.15687).

    One ``D``-vector per response (:func:`rlvr.ops.gradient_feature.chunked_gradient_feature`), of the
    rollout policy only (``old_gradient_feature``, in ``ctx.extras``).
    """

    name: ClassVar[str] = "gradient_feature"
    differentiable: ClassVar[bool] = False
    per_sequence: ClassVar[bool] = True

    def compute(self, head: HeadInputs) -> Tensor:
        if head.valid is None:
            raise ValueError("gradient_feature needs the response mask of the forward (HeadInputs.valid)")
        rows = head.valid.nonzero(as_tuple=True)[0]
        return chunked_gradient_feature(
            head.hidden.detach(),
            head.weight,
            head.targets,
            rows,
            head.valid.shape[0],
            temperature=head.temperature,
            chunk_size=head.chunk_size,
        )

    def row_shape(self, model: torch.nn.Module) -> tuple[int, ...]:
        return (int(output_head_weight(model).shape[1]),)


# ---------------------------------------------------------------------------------- own forwards


@dataclass
class ForwardSource:
    """What an own-forward quantity builds its input from: the scored rollout and how it was made.

    ``problems[i]`` is the problem of ``batch`` row ``i``; ``max_new_tokens`` the rollout's limit.
    """

    batch: RolloutBatch
    problems: Sequence[Any] = ()
    tokenizer: Any = None
    empty_prompt_ids: Tensor | None = None
    max_new_tokens: int | None = None

    def need(self, what: str, who: str) -> Any:
        value = getattr(self, what)
        if value is None or (what == "problems" and len(value) != self.batch.input_ids.shape[0]):
            raise ValueError(f"{who} builds its forward from the rollout's {what}, which the learner was not given")
        return value


@dataclass
class OwnForwardPlan:
    """The rows an own-forward quantity runs through the policy (log-probs at their ``response_mask``
    positions) and ``finish``, which turns those ``(R, T')`` log-probs into its ``ctx.extras`` entries."""

    batch: RolloutBatch
    finish: Callable[[Tensor], dict[str, Tensor]]


@dataclass(frozen=True)
class OwnForward(Quantity):
    """A rollout-policy quantity with a forward of its own (module docstring); fills ``ctx.extras[key]`` for ``keys``."""

    differentiable: ClassVar[bool] = False
    own_forward: ClassVar[bool] = True
    keys: ClassVar[tuple[str, ...]] = ()

    def plan(self, source: ForwardSource) -> OwnForwardPlan:
        raise NotImplementedError


@dataclass(frozen=True)
class AnswerOnlyLogProbs(OwnForward):
    """Log-probs of each response with its query removed (SAR's ``ppl(a)``, arXiv 2510.03757).

    The response after an empty prompt under the same formatting (just BOS, or the chat template
    with an empty user turn, as the official ``create_ans_only_batch``): ``extras["answer_only_logprobs"]``,
    ``(B, T)`` aligned with ``response_mask``.
    """

    name: ClassVar[str] = "answer_only_logprobs"
    keys: ClassVar[tuple[str, ...]] = ("answer_only_logprobs",)

    def plan(self, source: ForwardSource) -> OwnForwardPlan:
        batch = answer_only_batch(source.batch, source.need("empty_prompt_ids", self.name))
        return OwnForwardPlan(batch, lambda logprobs: {"answer_only_logprobs": logprobs})


@dataclass(frozen=True)
class PromptLogProbs(OwnForward):
    """``log pi(q_j | q_<j)`` of each prompt token (ProGRPO's prompt confidence, arXiv 2602.05281).

    One forward per distinct prompt (the prompt's tokens alone, unpadded, positions from 0 as when
    sampling). ``extras["prompt_logprobs"]`` and ``extras["prompt_mask"]`` are ``(B, P)``, aligned with
    the rollout's left-padded prompt columns ``input_ids[:, :P]``; the mask is 1 on every real prompt
    token but the first (which has no log-prob).
    """

    name: ClassVar[str] = "prompt_logprobs"
    keys: ClassVar[tuple[str, ...]] = ("prompt_logprobs", "prompt_mask")

    def plan(self, source: ForwardSource) -> OwnForwardPlan:
        batch = source.batch
        tokens = [prompt_tokens(batch, row) for row in range(batch.input_ids.shape[0])]
        first, inverse = first_rows(tokens)
        width = max(len(tokens[row]) for row in first)
        device = batch.input_ids.device
        ids = torch.zeros((len(first), max(width, 1)), dtype=batch.input_ids.dtype, device=device)
        attention = torch.zeros_like(ids, dtype=batch.attention_mask.dtype)
        for k, row in enumerate(first):
            n = len(tokens[row])
            ids[k, :n] = torch.tensor(tokens[row], dtype=ids.dtype)
            attention[k, :n] = 1
        index = torch.tensor(first, dtype=torch.long, device=device)
        prompts = RolloutBatch(
            input_ids=ids,
            attention_mask=attention,
            prompt_len=1,
            response_mask=attention[:, 1:].to(batch.response_mask.dtype),
            responses=["" for _ in first],
            truncated=torch.zeros(len(first), dtype=torch.bool, device=device),
            group_ids=batch.group_ids[index],
        )

        def finish(logprobs: Tensor) -> dict[str, Tensor]:
            p = batch.prompt_len
            out = torch.zeros((len(tokens), p), dtype=logprobs.dtype, device=logprobs.device)
            mask = torch.zeros((len(tokens), p), dtype=batch.response_mask.dtype, device=logprobs.device)
            for row, k in enumerate(inverse):
                n = len(tokens[row])
                if n > 1:
                    out[row, p - n + 1 :] = logprobs[k, : n - 1]
                    mask[row, p - n + 1 :] = 1
            return {"prompt_logprobs": out, "prompt_mask": mask}

        return OwnForwardPlan(prompts, finish)


Reference = Literal["answer", "solution"]
REFERENCES: tuple[str, ...] = get_args(Reference)
"""What a splice uses as the reference ``y*``: the problem's ``answer``, or its worked ``solution`` (the
answer where a problem has none)."""


def reference_text(problem: Any, reference: str) -> str:
    if reference == "solution" and getattr(problem, "solution", None):
        return str(problem.solution)
    return str(problem.answer)


@dataclass(frozen=True)
class ReferenceSplice(OwnForward):
    """An own forward over the reference answer ``y*`` spliced into each row: ``format`` (``r1`` | ``boxed`` |
    ``append``, :mod:`rlvr.ops.splice`) and ``reference`` (``answer`` | ``solution``, :data:`REFERENCES`)."""

    format: SpliceFormat = "r1"
    reference: Reference = "answer"

    def __post_init__(self) -> None:
        check_format(self.format, self.name)
        if self.reference not in REFERENCES:
            raise ConfigError(f"{self.name}: reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")

    def inputs(self, source: ForwardSource) -> tuple[RolloutBatch, Any, list[str]]:
        """The rollout batch, the tokenizer and each row's ``y*``."""
        problems = source.need("problems", self.name)
        return source.batch, source.need("tokenizer", self.name), [reference_text(p, self.reference) for p in problems]


@dataclass(frozen=True)
class ReferenceAnswerLogProbs(ReferenceSplice):
    """Log-probs of the reference answer spliced after each sampled response's reasoning (RLPR, arXiv 2506.18254).

    The splice (``format``: ``r1`` | ``boxed`` | ``append``) is :func:`rlvr.ops.splice.splice_response`.
    ``extras["reference_answer_logprobs"]`` / ``["reference_answer_mask"]`` are ``(B, L)``: row ``i``'s
    ``log pi(y*_j | q, z_i, y*_<j)`` in its first ``n_i`` columns (``n_i`` answer tokens, mask 1
    there); ``extras["reference_answer_valid"]`` ``(B,)`` bool: the response had the format's answer
    slot (an ``r1`` response was well-formed).
    """

    name: ClassVar[str] = "reference_answer_logprobs"
    keys: ClassVar[tuple[str, ...]] = ("reference_answer_logprobs", "reference_answer_mask", "reference_answer_valid")

    def plan(self, source: ForwardSource) -> OwnForwardPlan:
        batch, tokenizer, answers = self.inputs(source)
        eos = tokenizer.eos_token_id
        splices = []
        for row, answer in enumerate(answers):
            ids = batch.response_token_ids(row)
            if ids and eos is not None and ids[-1] == eos and not bool(batch.truncated[row]):
                ids = ids[:-1]
            splices.append(
                splice_response(
                    self.format,
                    batch.responses[row],
                    answer,
                    response_ids=ids,
                    tokenizer=tokenizer,
                    max_new_tokens=source.max_new_tokens,
                )
            )
        spliced = spliced_batch(batch, range(len(splices)), splices, tokenizer)
        valid = torch.tensor([s.valid for s in splices], dtype=torch.bool, device=batch.input_ids.device)

        def finish(logprobs: Tensor) -> dict[str, Tensor]:
            values, mask = compact(logprobs, spliced.response_mask)
            return {"reference_answer_logprobs": values, "reference_answer_mask": mask, "reference_answer_valid": valid}

        return OwnForwardPlan(spliced, finish)


@dataclass(frozen=True)
class ReferenceAnswerBaselineLogProbs(ReferenceSplice):
    """Log-probs of the reference answer right after the prompt, no reasoning (RLPR's debiasing ``scoreA``).

    One forward per distinct (prompt, reference) pair (:func:`rlvr.ops.splice.baseline_splice`);
    ``extras["reference_answer_baseline_logprobs"]`` / ``["reference_answer_baseline_mask"]`` are
    ``(B, L0)``, each row holding its prompt's values, laid out as :class:`ReferenceAnswerLogProbs`.
    """

    name: ClassVar[str] = "reference_answer_baseline_logprobs"
    keys: ClassVar[tuple[str, ...]] = ("reference_answer_baseline_logprobs", "reference_answer_baseline_mask")

    def plan(self, source: ForwardSource) -> OwnForwardPlan:
        batch, tokenizer, answers = self.inputs(source)
        first, inverse = first_rows([(prompt_tokens(batch, row), answers[row]) for row in range(len(answers))])
        spliced = spliced_batch(batch, first, [baseline_splice(self.format, answers[row]) for row in first], tokenizer)
        index = torch.tensor(inverse, dtype=torch.long, device=batch.input_ids.device)

        def finish(logprobs: Tensor) -> dict[str, Tensor]:
            values, mask = compact(logprobs, spliced.response_mask)
            return {"reference_answer_baseline_logprobs": values[index], "reference_answer_baseline_mask": mask[index]}

        return OwnForwardPlan(spliced, finish)


QUANTITIES: dict[str, type[Quantity]] = {
    q.name: q
    for q in (
        LogProbs,
        Entropy,
        TopPEntropy,
        MinPProxy,
        SelfCertainty,
        RawLogit,
        GradientFeature,
        AnswerOnlyLogProbs,
        PromptLogProbs,
        ReferenceAnswerLogProbs,
        ReferenceAnswerBaselineLogProbs,
    )
}
"""Every forward quantity by the AlgoContext field it fills; a method reads the rollout policy's
value of ``<name>`` as ``old_<name>``. Own-forward quantities are named by their first ``ctx.extras``
key and are the rollout policy's (no ``old_`` prefix); per-sequence ones exist only as ``old_<name>``."""


def quantity_field(field_name: str) -> tuple[type[Quantity], bool] | None:
    """``(quantity class, is_old)`` for an AlgoContext field such as ``old_top_p_entropy``; None if not one."""
    is_old = field_name.startswith("old_")
    cls = QUANTITIES.get(field_name.removeprefix("old_"))
    if cls is None or (is_old and cls.own_forward) or (not is_old and cls.per_sequence):
        return None
    return cls, is_old


def own_forward_quantities(components: Iterable[Any]) -> dict[str, OwnForward]:
    """The own-forward quantities the ``components`` (built methods) list in ``requires``, by name, with
    the settings they declare in ``forward_quantities()`` (else the defaults). Two methods asking for one
    with different settings is a ConfigError."""
    out: dict[str, tuple[OwnForward, str]] = {}
    for component in components:
        declared = getattr(component.fn, "forward_quantities", None)
        settings = {q.name: q for q in (declared() if callable(declared) else [])}
        for name in sorted(component.requires):
            cls = QUANTITIES.get(name)
            if cls is None or not issubclass(cls, OwnForward):
                continue
            wanted = settings.get(name, cls())
            who = f"{component.stage} '{component.name}'"
            held = out.get(name)
            if held is not None and held[0] != wanted:
                raise ConfigError(
                    f"{held[1]} and {who} both read {name} but with different settings ({held[0]} vs {wanted}); "
                    "give them the same settings"
                )
            out[name] = (wanted, who)
    return {name: q for name, (q, _) in out.items()}


def policy_forward(
    model: torch.nn.Module,
    batch: RolloutBatch,
    *,
    temperature: float,
    chunk_size: int,
    quantities: Iterable[Quantity] = (),
    agree: Callable[[bool], bool] | None = None,
    token_temperature: Tensor | None = None,
) -> dict[str, Tensor]:
    """``{quantity.name: (B, T) values}`` of the response tokens, log-probs always included.

    Gradients flow when called outside ``torch.no_grad`` (except for non-differentiable
    quantities). Padding positions hold 0. ``agree`` turns a local choice of forward path into one
    all ranks share (see :func:`rlvr.ops.logprobs.response_hidden_states`). A model prepared by
    :func:`attach_policy_forward` (FSDP2) runs this through its registered forward method.

    ``token_temperature`` ``(B, T)`` replaces ``temperature`` by one temperature per response token
    (HAPO-H adaptive sampling records them): ``z_t = (h_t / T_t) W^T``, exact, by scaling each hidden
    row before the chunked kernels (``RawLogit`` stays pre-temperature).
    """
    method = getattr(model, "rlvr_policy_forward", None)
    if method is not None:
        return method(
            batch, temperature=temperature, chunk_size=chunk_size, quantities=tuple(quantities), agree=agree,
            token_temperature=token_temperature,
        )  # fmt: skip
    return compute_policy_forward(
        model, batch, temperature=temperature, chunk_size=chunk_size, quantities=quantities, agree=agree,
        token_temperature=token_temperature,
    )  # fmt: skip


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
    token_temperature: Tensor | None = None,
) -> dict[str, Tensor]:
    """:func:`policy_forward`'s computation (a masked-diffusion batch is replayed along its trajectory)."""
    from rlvr.models.mdlm import is_mdlm

    if UNMASK_STEP in batch.extras or is_mdlm(model):
        from rlvr.ops.trajectory import trajectory_forward

        if token_temperature is not None:
            raise ValueError("per-token temperatures are for autoregressive rollouts, not masked-diffusion trajectories")

        return trajectory_forward(model, batch, temperature=temperature, chunk_size=chunk_size, quantities=quantities)
    wanted = {q.name: q for q in (LogProbs(), *quantities)}
    separate = [name for name, q in wanted.items() if q.own_forward]
    if separate:
        raise ValueError(f"policy_forward cannot compute {separate} from the rollout rows; they need a forward of their own")
    prompt_len = batch.prompt_len
    valid = batch.response_mask.bool()
    hidden = response_hidden_states(model, batch.input_ids, batch.attention_mask, prompt_len, agree=agree)[valid]
    rows = None
    if token_temperature is not None:
        rows = token_temperature[valid].to(device=hidden.device, dtype=torch.float32)
        hidden, temperature = (hidden.float() / rows.unsqueeze(-1)).to(hidden.dtype), 1.0
    head = HeadInputs(
        hidden=hidden,
        weight=output_head_weight(model),
        targets=batch.input_ids[:, prompt_len:][valid],
        temperature=temperature,
        chunk_size=chunk_size,
        wanted=frozenset(wanted),
        valid=valid,
        row_temperature=rows,
    )
    return {name: q.compute(head) if q.per_sequence else _scatter(q.compute(head), valid) for name, q in wanted.items()}


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
