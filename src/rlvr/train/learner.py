"""The learner: the forward quantities the methods read, and the PPO-style update.

:meth:`Learner.prepare` turns a scored rollout into a :class:`TrainBatch`: an AlgoContext with the
rollout policy's quantities (``old_*``) and the reference log-probs the methods declare, computed
in no-grad micro-batches, and the ``ctx.extras`` entries of the quantities with a forward of their
own (:class:`rlvr.ops.forward.OwnForward`: the answer-only, prompt and reference-answer forwards),
each over the rows it builds from the rollout, in the same micro-batches (:meth:`Learner.own_forwards`). Where the old log-probs come from is explicit (:class:`OldLogprobSource`,
decided by :func:`old_logprob_source`): a separate rollout-policy forward, or, with one optimizer
update per rollout and nothing reading them before it, the update forward's own detached values
(ratio exactly 1, as verl and TRL do on-policy).

:meth:`Learner.update` runs ``ppo_epochs`` passes over shuffled mini-batches, each accumulated over
micro-batches with the loss normalised by mini-batch totals (so micro-batching never changes the
gradient), clips the gradient of the trainable parameters and steps AdamW; a non-finite loss or
gradient skips that update.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterator

import torch
from torch import Tensor

from rlvr.algos import AlgoContext
from rlvr.errors import ConfigError
from rlvr.models.lora import is_peft_model, reference_forward
from rlvr.ops.forward import (
    AnswerOnlyLogProbs,
    Entropy,
    ForwardSource,
    OwnForward,
    Quantity,
    own_forward_quantities,
    policy_forward,
)
from rlvr.rollout.base import TOKEN_TEMPERATURE, RolloutBatch
from rlvr.rollout.stage import RolloutResult
from rlvr.train.config import RunConfig, TrainConfig
from rlvr.train.device import Precision
from rlvr.train.distributed import SINGLE, Dist
from rlvr.train.pipeline import Pipeline

ADDITIVE_METRICS = frozenset({"train/loss", "train/pg_loss"})
"""Micro-batch values that are parts of a sum (losses normalised by mini-batch totals): they add up
within a mini-batch; every other metric is a row-weighted mean."""


class OldLogprobSource(str, Enum):
    """Where the rollout policy's log-probs (the PPO ratio's denominator) come from."""

    ROLLOUT_FORWARD = "rollout_forward"
    """A no-grad forward of the rollout weights over the whole batch, before the update."""
    UPDATE_FORWARD = "update_forward"
    """Each micro-batch's own update forward, detached (only with one update from the rollout weights)."""


def old_logprob_source(train: TrainConfig, pipeline: Pipeline, batch_size: int, rows_may_change: bool) -> OldLogprobSource:
    """:attr:`OldLogprobSource.UPDATE_FORWARD` when a separate old-policy forward would be redundant.

    With one PPO epoch and one mini-batch the only update starts from the rollout weights, so the
    rollout policy's log-probs equal the update forward's, detached. That holds only if nothing
    reads them before the update: no ``old_*`` quantity but ``old_logprobs`` is required, and only
    losses and regularizers without a ``prepare`` hook read it (Clip-Cov's batch covariance or
    SAR's perplexity need it earlier). ``rows_may_change`` (AEPO measures the rollout entropy and
    mixes rows before the update) and ``train.old_forward=always`` force the separate forward.
    """
    if train.old_forward == "always" or train.ppo_epochs != 1 or rows_may_change:
        return OldLogprobSource.ROLLOUT_FORWARD
    if train.mini_batch_size is not None and train.mini_batch_size < batch_size:
        return OldLogprobSource.ROLLOUT_FORWARD
    if {name for name in pipeline.requires if name.startswith("old_")} - {"old_logprobs"}:
        return OldLogprobSource.ROLLOUT_FORWARD
    readers = pipeline.reads("old_logprobs")
    if all(c.stage in ("policy_loss", "regularizer") and not callable(getattr(c.fn, "prepare", None)) for c in readers):
        return OldLogprobSource.UPDATE_FORWARD
    return OldLogprobSource.ROLLOUT_FORWARD


def lr_at(train: TrainConfig, step: int) -> float:
    """Learning rate of update step ``step`` (0-based): linear warmup over ``warmup_steps``, then
    ``lr_schedule`` (constant, or linear / cosine decay to ``min_lr_ratio * lr`` at ``steps``)."""
    if train.warmup_steps and step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if train.lr_schedule == "constant":
        return train.lr
    span = max(1, train.steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    floor = train.min_lr_ratio
    if train.lr_schedule == "linear":
        scale = 1.0 - (1.0 - floor) * progress
    else:
        scale = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return train.lr * scale


@dataclass
class TrainBatch:
    """A rollout ready for the update: its context, its token grid and where its old log-probs come from."""

    ctx: AlgoContext
    batch: RolloutBatch
    old_source: OldLogprobSource


class Learner:
    """Owns the policy being trained, the reference policy and the optimizer."""

    def __init__(
        self,
        cfg: RunConfig,
        model: torch.nn.Module,
        pipeline: Pipeline,
        precision: Precision,
        empty_prompt_ids: Tensor,
        dist: Dist = SINGLE,
        tokenizer: Any = None,
    ) -> None:
        self.cfg = cfg
        self.dist = dist
        self.sharded = dist.enabled and cfg.train.strategy == "fsdp2"
        self.train = cfg.train
        self.model = model
        self.pipeline = pipeline
        self.precision = precision
        self.empty_prompt_ids = empty_prompt_ids
        self.tokenizer = tokenizer  # own forwards that tokenise text (the reference-answer splice)
        self.current_quantities, self.old_quantities = pipeline.forward_quantities()
        self.own_quantities: dict[str, OwnForward] = own_forward_quantities(pipeline.all())
        self.ref_model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed)

    # ------------------------------------------------------------------ setup
    @property
    def needs_ref(self) -> bool:
        return "ref_logprobs" in self.pipeline.requires

    def start(self) -> None:
        """Reference model (a frozen copy; with LoRA the adapter-disabled policy) and optimizer."""
        self._make_ref()
        self.optimizer = self.make_optimizer()

    def _make_ref(self) -> None:
        if self.needs_ref and not is_peft_model(self.model) and self.ref_model is None:
            self.ref_model = copy.deepcopy(self.model).eval()
            for p in self.ref_model.parameters():
                p.requires_grad_(False)

    def shard(self) -> None:
        """FSDP2: shard the policy and the reference over the ranks (``train.strategy=fsdp2``), before the
        optimizer is made (it must hold the sharded parameters)."""
        from rlvr.train.distributed import shard_fsdp2

        if self.sharded:
            self._make_ref()
            self.model = shard_fsdp2(self.model, self.dist)
            if self.ref_model is not None:
                self.ref_model = shard_fsdp2(self.ref_model, self.dist)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def make_optimizer(self) -> torch.optim.Optimizer:
        t = self.train
        return torch.optim.AdamW(self.trainable(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)

    def state_dict(self) -> dict[str, Any]:
        return {
            "ref_model": self.ref_model.state_dict() if self.ref_model is not None else None,
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "shuffle_gen": self.shuffle_gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start()
        if state.get("ref_model") is not None:
            assert self.ref_model is not None
            self.ref_model.load_state_dict(state["ref_model"])
        assert self.optimizer is not None
        if state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])
        self.shuffle_gen.set_state(state["shuffle_gen"])

    def refresh_reference(self, mix: float) -> None:
        """``ref <- mix * pi + (1 - mix) * ref`` in place (T1's dynamic anchor, :func:`rlvr.algos.t1.mix_parameters_`).

        Elementwise, so under FSDP2 each rank mixes its local shards (policy and reference are sharded alike).
        """
        from rlvr.algos.t1 import mix_parameters_

        if self.ref_model is None:
            raise ConfigError(
                "the reference model cannot be refreshed: "
                + ("with LoRA it is the adapter-disabled policy" if is_peft_model(self.model) else "no method reads ref_logprobs")
                + " (add e.g. algo.regularizers=[kl] with full fine-tuning)"
            )
        if self.sharded:  # FSDP2 leaves a root unit unsharded after a forward with no backward (the reference's)
            from torch.distributed.fsdp import FSDPModule

            for module in (*self.model.modules(), *self.ref_model.modules()):
                if isinstance(module, FSDPModule):
                    module.reshard()
        mix_parameters_(self.ref_model.parameters(), self.model.parameters(), mix)

    # ------------------------------------------------------------------ prepare
    def micro_batches(self, batch: RolloutBatch) -> Iterator[tuple[Tensor, RolloutBatch | None]]:
        """This rank's consecutive row slices of ``batch`` (at most ``train.micro_batch_size`` rows each):
        ``(rows, sub-batch)``, micro-batch ``k`` belonging to rank ``k % world_size``. Under FSDP2 every
        rank yields the same number of items (forwards run collectives): padding items are ``(rows, None)``.
        """
        n, mb = batch.input_ids.shape[0], self.train.micro_batch_size
        starts = list(range(0, n, mb))
        for k in self._my_indices(len(starts)):
            if k is None:
                yield torch.arange(0), None
                continue
            rows = torch.arange(starts[k], min(starts[k] + mb, n), device=batch.input_ids.device)
            yield rows, batch.rows(rows)

    def _my_indices(self, count: int) -> list[int | None]:
        """This rank's items of ``count`` (``k % world == rank``), padded with None to the largest share under FSDP2."""
        mine: list[int | None] = [k for k in range(count) if self.dist.mine(k)]
        if self.sharded:
            mine += [None] * (math.ceil(count / self.dist.world) - len(mine))
        return mine

    def _agree(self) -> Any:
        """Under FSDP2 both forward paths run collectives, so the path choice is agreed by all ranks."""
        if not self.sharded:
            return None
        device = self.precision.device
        return lambda flag: self.dist.all_true(flag, device)

    def _assemble(
        self,
        parts: dict[str, list[tuple[Tensor, Tensor]]],
        shape: tuple[int, int],
        keys: list[str],
        shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> dict[str, Tensor]:
        """Full-batch ``(B, T)`` tensors (``shapes[key]`` where given) from this rank's ``(rows, values)``
        pieces, summed over ranks (each row is computed by exactly one rank, so the sum is exact)."""
        out: dict[str, Tensor] = {}
        for key in keys:
            full = torch.zeros((shapes or {}).get(key, shape), dtype=torch.float32, device=self.precision.device)
            for rows, values in parts.get(key, []):
                full[rows] = values.to(full.dtype)
            out[key] = self.dist.all_reduce_sum_(full) if self.dist.enabled else full
        return out

    def forward(self, model: torch.nn.Module, batch: RolloutBatch, quantities: list[Quantity] | tuple = ()) -> dict[str, Tensor]:
        """:func:`rlvr.ops.forward.policy_forward` at the sampling temperature, under the run's precision."""
        with self.precision.autocast():
            return policy_forward(
                model,
                batch,
                temperature=self.cfg.rollout.temperature,
                chunk_size=self.train.logprob_chunk_size,
                quantities=quantities,
                agree=self._agree(),
                token_temperature=self.token_temperature(batch),
            )

    def token_temperature(self, batch: RolloutBatch) -> Tensor | None:
        """The per-token sampling temperatures the log-probs are taken at: the rollout's recorded ones under
        ``rollout.adaptive_temperature.logprob_temperature=sampled``, else None (``rollout.temperature``)."""
        if self.cfg.rollout.adaptive_temperature.logprob_temperature != "sampled":
            return None
        return batch.extras.get(TOKEN_TEMPERATURE)

    def prepare(self, rollout: RolloutResult, step: int, rows_may_change: bool = False) -> TrainBatch:
        """The context of a scored rollout, with the old/reference quantities the methods read (per-sequence
        ones, e.g. ``old_gradient_feature``, and the own forwards' entries go to ``ctx.extras``)."""
        batch = rollout.batch
        device = batch.input_ids.device
        source = old_logprob_source(self.train, self.pipeline, len(rollout.problems), rows_may_change)
        old = self.old_and_ref(batch, policy=source is OldLogprobSource.ROLLOUT_FORWARD)
        fields = {f.name for f in dataclasses.fields(AlgoContext)}
        ctx = AlgoContext(
            response_mask=batch.response_mask,
            rewards=rollout.scores.to(device),
            group_ids=batch.group_ids,
            correct=rollout.correct.to(device),
            truncated=batch.truncated,
            prompt_ids=[p.id for p in rollout.problems],
            step=step,
            max_response_length=self.cfg.rollout.max_new_tokens,
            agg_mode=self.cfg.algo.agg_mode,
            generator=self.shuffle_gen,
            extras={
                "responses": batch.responses,
                "problems": rollout.problems,
                "row_index": torch.arange(len(rollout.problems), device=device),
                "refresh_reference": self.refresh_reference,  # T1's dynamic anchor (rlvr.algos.t1)
                **batch.extras,  # what the engine recorded per row (a masked-diffusion rollout's unmask_step)
                **{k: v for k, v in old.items() if k not in fields},  # per-sequence quantities (old_gradient_feature)
                **self.own_forwards(rollout),
            },
            **{k: v for k, v in old.items() if k in fields},
        )
        if rollout.advantages is not None:
            ctx.advantages = rollout.advantages.to(device)
        return TrainBatch(ctx, batch, source)

    def old_and_ref(self, batch: RolloutBatch, policy: bool = True) -> dict[str, Tensor]:
        """Rollout-policy quantities (``old_<name>``, unless ``policy`` is False) and reference log-probs, no grad.

        Each rank computes its micro-batches; the full-batch tensors are assembled over ranks.
        """
        pieces: dict[str, list[tuple[Tensor, Tensor]]] = {}
        peft_ref = self.ref_model is None and self.needs_ref and is_peft_model(self.model)
        if not policy and self.ref_model is None and not peft_ref:
            return {}
        old = list(self.old_quantities.values())
        keys = [f"old_{q.name}" for q in old] + ["old_logprobs"] if policy else []
        n = batch.response_mask.shape[0]
        shapes = {f"old_{q.name}": (n, *q.row_shape(self.model)) for q in old if q.per_sequence}
        if self.ref_model is not None or peft_ref:
            keys.append("ref_logprobs")
        with torch.no_grad():
            for rows, part in self.micro_batches(batch):
                sub = part if part is not None else batch.rows(torch.arange(1, device=batch.input_ids.device))
                if policy:
                    for key, value in self.forward(self.model, sub, old).items():
                        pieces.setdefault(f"old_{key}", []).append((rows, value))
                if self.ref_model is not None:
                    pieces.setdefault("ref_logprobs", []).append((rows, self.forward(self.ref_model, sub)["logprobs"]))
                elif peft_ref:
                    with self.precision.autocast():
                        ref = reference_forward(
                            self.model, sub, temperature=self.cfg.rollout.temperature, chunk_size=self.train.logprob_chunk_size,
                            token_temperature=self.token_temperature(sub),
                        )  # fmt: skip
                    pieces.setdefault("ref_logprobs", []).append((rows, ref["logprobs"]))
        return self._assemble(pieces, tuple(batch.response_mask.shape), sorted(set(keys)), shapes)

    def own_forwards(self, rollout: RolloutResult) -> dict[str, Tensor]:
        """The ``ctx.extras`` entries of every own-forward quantity the methods read (:class:`rlvr.ops.forward.OwnForward`)."""
        source = ForwardSource(
            batch=rollout.batch,
            problems=rollout.problems,
            tokenizer=self.tokenizer,
            empty_prompt_ids=self.empty_prompt_ids,
            max_new_tokens=self.cfg.rollout.max_new_tokens,
        )
        out: dict[str, Tensor] = {}
        for quantity in self.own_quantities.values():
            plan = quantity.plan(source)
            out.update(plan.finish(self.rollout_logprobs(plan.batch)))
        return out

    def rollout_logprobs(self, batch: RolloutBatch) -> Tensor:
        """``(R, T)`` log-probs of ``batch``'s response tokens under the policy, no grad: this rank's
        micro-batches, assembled over ranks (every rank holds the same ``batch``)."""
        if not bool(batch.response_mask.any()):  # the same on every rank: no forward, no collective
            return torch.zeros(batch.response_mask.shape, dtype=torch.float32, device=self.precision.device)
        pieces: dict[str, list[tuple[Tensor, Tensor]]] = {"logprobs": []}
        with torch.no_grad():
            for rows, part in self.micro_batches(batch):
                sub = part if part is not None else batch.rows(torch.arange(1, device=batch.input_ids.device))
                pieces["logprobs"].append((rows, self.forward(self.model, sub)["logprobs"]))
        return self._assemble(pieces, tuple(batch.response_mask.shape), ["logprobs"])["logprobs"]

    def answer_only_logprobs(self, batch: RolloutBatch) -> Tensor:
        """Log-probs of each response after the empty prompt (:class:`rlvr.ops.forward.AnswerOnlyLogProbs`)."""
        plan = AnswerOnlyLogProbs().plan(ForwardSource(batch=batch, empty_prompt_ids=self.empty_prompt_ids))
        return plan.finish(self.rollout_logprobs(plan.batch))["answer_only_logprobs"]

    # ------------------------------------------------------------------ update
    def update(self, tb: TrainBatch, step: int) -> dict[str, float]:
        """PPO epochs over mini-batches with gradient accumulation; returns the averaged update metrics.

        With :attr:`OldLogprobSource.UPDATE_FORWARD` each micro-batch takes its old log-probs and
        entropy from its own forward, detached, and the full-batch ``ctx.old_logprobs`` /
        ``ctx.old_entropy`` are assembled for the step's metrics. Under torchrun each rank runs its
        micro-batches (``k % world_size == rank``) of the same split, gradients are summed over
        ranks, the skip decision is agreed, and metrics are combined in the single-process order.
        """
        assert self.optimizer is not None
        t, ctx, batch = self.train, tb.ctx, tb.batch
        reuse = tb.old_source is OldLogprobSource.UPDATE_FORWARD
        quantities = dict(self.current_quantities)
        if reuse:
            quantities.setdefault("entropy", Entropy())
            ctx.old_logprobs = torch.zeros_like(ctx.response_mask)
            ctx.old_entropy = torch.zeros_like(ctx.response_mask)
        n = ctx.batch_size
        mini = t.mini_batch_size or n
        sums: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        updates = skipped = 0
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(t, step)
        for _epoch in range(t.ppo_epochs):
            order = self.shuffled_rows(ctx).to(ctx.response_mask.device)
            for start in range(0, n, mini):
                mini_idx = order[start : start + mini]
                mini_mask = self.pipeline.denominator_mask(ctx.select(mini_idx))
                num_tokens = float(mini_mask.sum())
                num_seqs = float((mini_mask.sum(-1) > 0).sum())
                self.optimizer.zero_grad(set_to_none=True)
                finite = True
                micro_starts = list(range(0, len(mini_idx), t.micro_batch_size))
                done: list[tuple[int, int, dict[str, float]]] = []  # (micro index, rows, metrics)
                for k in self._my_indices(len(micro_starts)):
                    dummy = k is None
                    mstart = micro_starts[0 if dummy else k]
                    idx = mini_idx[mstart : mstart + t.micro_batch_size][: 1 if dummy else None]
                    mctx = ctx.select(idx)
                    mctx.global_num_tokens = num_tokens
                    mctx.global_num_seqs = num_seqs
                    mctx.micro_batch_fraction = len(idx) / len(mini_idx)
                    for key, value in self.forward(self.model, batch.rows(idx), list(quantities.values())).items():
                        setattr(mctx, key, value)
                    if reuse:
                        mctx.old_logprobs, mctx.old_entropy = mctx.logprobs.detach(), mctx.entropy.detach()
                        if not dummy:
                            ctx.old_logprobs[idx], ctx.old_entropy[idx] = mctx.old_logprobs, mctx.old_entropy
                    loss, metrics = self.pipeline.loss(mctx)
                    if dummy:  # FSDP2: this rank has fewer micro-batches; the collectives still run
                        (loss * 0.0).backward()
                        continue
                    if not torch.isfinite(loss):
                        finite = False
                        if not self.dist.enabled:
                            break
                        continue
                    loss.backward()
                    done.append((k, len(idx), metrics))
                finite = self.dist.all_true(finite, self.precision.device)
                if not self.sharded:
                    self.dist.all_reduce_grads_(self.trainable())
                gathered = sorted(item for part in self.dist.all_gather_object(done) for item in part)
                for _k, rows, metrics in gathered:
                    for key, value in metrics.items():
                        if key not in ADDITIVE_METRICS:
                            sums[key] += value * rows
                            counts[key] += rows
                grad_norm = _global_norm(torch.nn.utils.clip_grad_norm_(self.trainable(), t.grad_clip))
                if not finite or not torch.isfinite(grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    if reuse and not finite:  # rows after the bad micro-batch were not forwarded
                        old = self.old_and_ref(batch)
                        ctx.old_logprobs, ctx.old_entropy = old["old_logprobs"], old["old_entropy"]
                    continue
                self.optimizer.step()
                updates += 1
                mini_sums: Counter[str] = Counter()
                for _k, _rows, metrics in gathered:
                    for key in ADDITIVE_METRICS & metrics.keys():
                        mini_sums[key] += metrics[key]
                for key, value in mini_sums.items():
                    sums[key] += value
                    counts[key] += 1
                sums["train/grad_norm"] += float(grad_norm)
                counts["train/grad_norm"] += 1
        if reuse and self.dist.enabled:  # each rank filled the rows of its micro-batches
            self.dist.all_reduce_sum_(ctx.old_logprobs)
            self.dist.all_reduce_sum_(ctx.old_entropy)
        out = {k: sums[k] / counts[k] for k in sums}
        out["train/updates"] = updates
        out["train/skipped_updates"] = skipped
        return out

    def shuffled_rows(self, ctx: AlgoContext) -> Tensor:
        """Row order of one PPO epoch: shuffled rows, or shuffled whole groups (``train.shuffle=groups``)."""
        n = ctx.batch_size
        if self.train.shuffle == "rows" or ctx.group_ids is None:
            return torch.randperm(n, generator=self.shuffle_gen)
        dense = torch.unique(ctx.group_ids.cpu(), return_inverse=True)[1]
        group_order = torch.randperm(int(dense.max()) + 1, generator=self.shuffle_gen)
        rank = torch.empty_like(group_order)
        rank[group_order] = torch.arange(len(group_order))
        return torch.argsort(rank[dense] * n + torch.arange(n), stable=True)


def _global_norm(norm: Tensor) -> Tensor:
    """``clip_grad_norm_``'s total norm as a plain tensor (under FSDP2 it is a DTensor)."""
    full = getattr(norm, "full_tensor", None)
    return full() if callable(full) else norm
