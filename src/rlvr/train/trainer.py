"""The native RLVR trainer: rollout -> verifiable reward -> advantage -> PPO-style updates.

One step:

1. sample ``prompts_per_step`` training problems, generate ``group_size`` responses each (the HF
   engine's KV-cache loop, transformers ``generate`` or vLLM);
2. score them with the task's verifier (crash/hang/NaN-safe), apply reward shapers;
3. old (and reference) log-probs and entropies in one no-grad forward; skipped for the policy when
   it would be redundant (one update per rollout, nothing reads them before the update: the update
   forward's detached log-probs are the old ones, ``train.old_forward=auto``);
4. advantages over the whole rollout batch; per-step ``prepare`` hooks of stateful methods;
5. ``ppo_epochs`` passes over shuffled mini-batches, each accumulated over micro-batches with the
   loss normalised by mini-batch totals (so micro-batching never changes the gradient), AdamW with
   gradient clipping; a non-finite loss or gradient skips the update;
6. metrics to ``metrics.jsonl``, checkpoint every ``checkpoint_every`` steps, held-out eval.
"""

from __future__ import annotations

import copy
import random
import signal
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rlvr.algos import REGISTRIES, AlgoContext, Component
from rlvr.errors import Interrupted, RLVRError
from rlvr.algos.dynamic_sampling import keep_informative_groups
from rlvr.rollout.base import RolloutBatch, concat_batches
from rlvr.models.lora import (
    apply_lora,
    is_peft_model,
    load_lora_checkpoint_state,
    lora_checkpoint_state,
    lora_enabled,
    reference_forward,
    save_lora_model,
)
from rlvr.rollout.engines import build_engine
from rlvr.rollout.hf import format_prompts
from rlvr.tasks.base import Problem, Task, context_length, drop_unusable, prompt_issue, tasks
from rlvr.algos.aggregation import masked_mean
from rlvr.train.aepo import mix as aepo_mix
from rlvr.train.aepo import sub_prompt_count
from rlvr.train.checkpoint import (
    WARMSTART_PREFIX,
    check_compatible,
    clear_partial_checkpoints,
    load_latest_checkpoint,
    remove_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rlvr.train.config import RunConfig, check_resume_changes, dump_config
from rlvr.train.interrupt import StopSignals
from rlvr.train.run_dir import claimed_run_dir
from rlvr.train.evaluate import evaluate_heldout
from rlvr.train.forward import FORWARD_FIELDS, MinPSpec, TopPSpec, policy_forward
from rlvr.train.logging import MetricsWriter
from rlvr.train.rewards import ScorerHealth, safe_scores
from rlvr.train.warmstart import WarmStart



def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model_and_tokenizer(cfg: RunConfig) -> tuple[Any, Any]:
    """The tiny built-in model (``model.path`` null) or a local Hugging Face model."""
    dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32
    if cfg.model.path:
        from rlvr.models.loading import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(cfg.model.path, dtype=dtype)
    else:
        from rlvr.models.tiny import char_tokenizer, tiny_qwen2

        tokenizer = char_tokenizer()
        t = cfg.model.tiny
        model = tiny_qwen2(
            tokenizer,
            hidden_size=t.hidden_size,
            num_layers=t.num_layers,
            num_heads=t.num_heads,
            num_kv_heads=t.num_kv_heads,
            intermediate_size=t.intermediate_size,
            seed=cfg.seed,
        ).to(dtype)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tokenizer


@dataclass
class Pipeline:
    """The built methods of one run, in stage order."""

    advantage: Component
    policy_loss: Component
    reward_shaping: list[Component]
    token_weights: list[Component]
    regularizers: list[Component]
    controllers: list[Component]
    requires: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "Pipeline":
        a = cfg.algo
        built = dict(
            advantage=REGISTRIES["advantage"].build(a.advantage.name, a.advantage.kwargs, "algo.advantage"),
            policy_loss=REGISTRIES["policy_loss"].build(a.policy_loss.name, a.policy_loss.kwargs, "algo.policy_loss"),
            reward_shaping=[REGISTRIES["reward"].build(m.name, m.kwargs) for m in a.reward_shaping],
            token_weights=[REGISTRIES["token_weight"].build(m.name, m.kwargs) for m in a.token_weights],
            regularizers=[REGISTRIES["regularizer"].build(m.name, m.kwargs) for m in a.regularizers],
            controllers=[REGISTRIES["controller"].build(m.name, m.kwargs) for m in a.controllers],
        )
        pipeline = cls(**built)
        pipeline.requires = frozenset().union(*(c.requires for c in pipeline.all()))
        for component in pipeline.controllers:
            bind = getattr(component.fn, "bind", None)
            if callable(bind):
                bind(pipeline)
        return pipeline

    def all(self) -> list[Component]:
        return [
            self.advantage,
            self.policy_loss,
            *self.reward_shaping,
            *self.token_weights,
            *self.regularizers,
            *self.controllers,
        ]

    def state_dict(self) -> list[dict[str, Any]]:
        return [c.state_dict() for c in self.all()]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for component, state in zip(self.all(), states):
            component.load_state_dict(state)


def _spec_for(pipeline: Pipeline, fields: set[str], make: Callable[[Component], Any]) -> Any:
    """``make(component)`` for the first method that reads one of ``fields`` (None if none does)."""
    for component in pipeline.all():
        if component.requires & fields:
            return make(component)
    return None


def _knob(component: Component, name: str, default: Any) -> Any:
    return component.knobs.get(name, getattr(component.fn, name, default))


def forward_options(pipeline: Pipeline) -> dict[str, Any]:
    """Settings of the optional forward fields, taken from the knobs of the method that reads them."""
    return {
        "top_p": _spec_for(
            pipeline,
            {"top_p_entropy", "old_top_p_entropy"},
            lambda c: TopPSpec(p=_knob(c, "top_p", 0.8), top_k=_knob(c, "top_k", 10000)),
        ),
        "min_p": _spec_for(
            pipeline, {"minp_logprobs", "old_minp_logprobs"}, lambda c: MinPSpec(kappa=_knob(c, "min_p", 0.02))
        ),
    }


def _percentiles(values: torch.Tensor, prefix: str) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    qs = torch.quantile(values.float(), torch.tensor([0.1, 0.5, 0.9, 0.99]))
    return {
        f"{prefix}/mean": float(values.mean()),
        f"{prefix}/p10": float(qs[0]),
        f"{prefix}/p50": float(qs[1]),
        f"{prefix}/p90": float(qs[2]),
        f"{prefix}/p99": float(qs[3]),
    }


class Trainer:
    """Runs warm start + RL for one :class:`RunConfig`, writing everything under ``output_dir``."""

    def __init__(self, cfg: RunConfig, console: Console | None = None, quiet: bool = False) -> None:
        self.cfg = cfg
        self.console = console or Console(quiet=quiet)
        self.run_dir = Path(cfg.output_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        seed_everything(cfg.seed)
        self.task: Task = tasks.build(cfg.task.name, cfg.task.kwargs, "task").fn
        self.pipeline = Pipeline.from_config(cfg)
        self.forward_options = forward_options(self.pipeline)
        self.model, self.tokenizer = build_model_and_tokenizer(cfg)
        r = cfg.rollout
        self.engine = build_engine(
            r.backend,
            self.tokenizer,
            chat_template=r.chat_template,
            model_path=cfg.model.path,
            model=self.model,
            kv_decode=r.kv_decode,
            **(r.vllm if r.backend == "vllm" else {}),
        )
        self.ref_model: torch.nn.Module | None = None
        self.data_rng = random.Random(cfg.seed)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed)
        self.heldout: list[Problem] = self._usable_heldout(self.task.heldout_problems(cfg.eval.num_problems))
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        self.bad_steps = 0
        self.scorer_health = ScorerHealth(cfg.train.max_consecutive_bad_steps)
        self.skipped_data: Counter[str] = Counter()
        self.aepo_entropy = 0.0
        self.metrics = MetricsWriter(self.run_dir / "metrics.jsonl")
        self.stop = StopSignals()
        self._warm_state: dict[str, Any] | None = None
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    def _warmstart_steps(self) -> int:
        w = self.cfg.warmstart.steps
        return w if w is not None else (600 if self.cfg.model.path is None else 0)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)

    def _lr_at(self, step: int) -> float:
        t = self.cfg.train
        return t.lr * min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else t.lr

    def _needs_ref(self) -> bool:
        return "ref_logprobs" in self.pipeline.requires

    def _apply_lora(self) -> None:
        """Wrap the (warm-started) model in LoRA adapters when ``model.lora.r`` is set."""
        lora = self.cfg.model.lora
        if lora_enabled(lora.r) and not is_peft_model(self.model):
            self.model = apply_lora(
                self.model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules
            )

    def _make_ref(self) -> None:
        if self._needs_ref() and not is_peft_model(self.model):  # LoRA: the reference is the adapter-disabled model
            self.ref_model = copy.deepcopy(self.model).eval()
            for p in self.ref_model.parameters():
                p.requires_grad_(False)

    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": (
                lora_checkpoint_state(self.model, include_base=self._warmstart_steps() > 0)
                if is_peft_model(self.model)
                else self.model.state_dict()
            ),
            "ref_model": self.ref_model.state_dict() if self.ref_model is not None else None,
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "pipeline": self.pipeline.state_dict(),
            "rng": rng_state(),
            "data_rng": self.data_rng.getstate(),
            "shuffle_gen": self.shuffle_gen.get_state(),
            "bad_steps": self.bad_steps,
            "scorer_failed_steps": self.scorer_health.all_failed_steps,
            "skipped_data": dict(self.skipped_data),
            "aepo_entropy": self.aepo_entropy,
            "summary": self.summary,
            "config": self.cfg.model_dump(mode="json"),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        if is_peft_model(self.model):
            load_lora_checkpoint_state(self.model, state["model"])
        else:
            self.model.load_state_dict(state["model"])
        if state.get("ref_model") is not None:
            self._make_ref()
            assert self.ref_model is not None
            self.ref_model.load_state_dict(state["ref_model"])
        self.optimizer = self._make_optimizer()
        if state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])
        self.pipeline.load_state_dict(state["pipeline"])
        set_rng_state(state["rng"])
        self.data_rng.setstate(state["data_rng"])
        self.shuffle_gen.set_state(state["shuffle_gen"])
        self.bad_steps = state.get("bad_steps", 0)
        self.scorer_health.all_failed_steps = int(state.get("scorer_failed_steps", 0))
        self.skipped_data = Counter(state.get("skipped_data", {}))
        self.aepo_entropy = float(state.get("aepo_entropy", 0.0))
        self.summary = state.get("summary", {})
        self.step = int(state["step"])

    def save(self) -> Path:
        """Checkpoint this RL step (warm-start checkpoints are dropped once an RL one exists)."""
        path = save_checkpoint(self.ckpt_root, self.step, self._checkpoint_state(), self.cfg.train.keep_checkpoints)
        remove_checkpoints(self.ckpt_root, WARMSTART_PREFIX)
        return path

    # ------------------------------------------------------------------ eval
    def evaluate(self) -> dict[str, float]:
        e = self.cfg.eval
        return evaluate_heldout(
            self.model,
            self.engine,
            self.heldout,
            self.task.score,
            samples=e.samples,
            pass_k=e.pass_k,
            max_new_tokens=self.cfg.rollout.max_new_tokens,
            temperature=e.temperature,
            timeout_s=self.cfg.train.reward_timeout_s,
        )

    # ------------------------------------------------------------------ one step
    def _prompt_limit(self) -> int:
        """Longest usable prompt in tokens: ``rollout.max_prompt_tokens``, capped by the model's context."""
        context = context_length(self.model.config.to_dict())
        limit = self.cfg.rollout.max_prompt_tokens
        return min(limit, context) if context else limit

    def _count_tokens(self, text: str) -> int:
        """Tokens of ``text`` (``verbose=False``: no "longer than the maximum" warning, long prompts are skipped)."""
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _prompt_problem(self, problem: Any) -> str | None:
        """Why ``problem`` cannot be trained on or evaluated (``None`` if it can)."""
        return prompt_issue(problem, self._count_tokens, self._prompt_limit())

    def _usable_heldout(self, problems: list[Problem]) -> list[Problem]:
        """The held-out problems that pass :meth:`_prompt_problem`; the rest are skipped with one warning."""
        kept, _, note = drop_unusable(problems, self._count_tokens, self._prompt_limit(), "held-out")
        if note:
            warnings.warn(note)
        if problems and not kept:
            raise RLVRError(
                f"every held-out problem is unusable ({note}); check the task data, or raise "
                "rollout.max_prompt_tokens (the model's context also caps prompt length)"
            )
        return kept

    def _draw_problems(self, n: int) -> list[Problem]:
        """``n`` usable training problems; bad ones are skipped, counted and the first few reported."""
        out: list[Problem] = []
        for _attempt in range(100):
            for problem in self.task.train_problems(n - len(out), self.data_rng):
                reason = self._prompt_problem(problem)
                if reason is None:
                    out.append(problem)
                    continue
                self.skipped_data[reason] += 1
                if sum(self.skipped_data.values()) <= 3:
                    shown = getattr(problem, "id", repr(problem)[:80])
                    warnings.warn(f"skipping training problem {shown}: {reason.replace('_', ' ')}")
            if len(out) == n:
                return out
        raise RLVRError(
            f"could not draw {n} usable training problems (skipped so far: {dict(self.skipped_data)}); "
            f"check the task data or raise rollout.max_prompt_tokens (prompts are capped at {self._prompt_limit()} "
            "tokens, the model's context included)"
        )

    def _rollout(self) -> tuple[list[Problem], RolloutBatch]:
        r = self.cfg.rollout
        problems = self._draw_problems(r.prompts_per_step)
        batch = self.engine.generate(
            self.model,
            [p.prompt for p in problems],
            n=r.group_size,
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
        )
        per_response = [p for p in problems for _ in range(r.group_size)]
        return per_response, batch

    def _old_fields(self) -> frozenset[str]:
        """Fields of the rollout-policy forward: log-probs, entropy (always logged) and ``old_*`` needs."""
        wanted = {name.removeprefix("old_") for name in self.pipeline.requires if name.startswith("old_")}
        return frozenset({"logprobs", "entropy"} | (wanted & FORWARD_FIELDS))

    def _current_fields(self) -> frozenset[str]:
        return frozenset({"logprobs"} | (self.pipeline.requires & FORWARD_FIELDS))

    def _micro_batches(self, batch: RolloutBatch) -> Iterator[RolloutBatch]:
        """Consecutive row slices of ``batch`` of at most ``train.micro_batch_size`` rows."""
        n, mb = batch.input_ids.shape[0], self.cfg.train.micro_batch_size
        for start in range(0, n, mb):
            yield batch.rows(torch.arange(start, min(start + mb, n)))

    def _forward_kwargs(self) -> dict[str, Any]:
        return dict(temperature=self.cfg.rollout.temperature, chunk_size=self.cfg.train.logprob_chunk_size)

    def _reuses_update_logprobs(self, batch_size: int) -> bool:
        """True when a separate no-grad old-policy forward would be redundant (``train.old_forward=auto``).

        With one PPO epoch and one mini-batch the only update starts from the rollout weights, so the
        rollout policy's log-probs equal the update forward's, detached (ratio exactly 1, as verl and
        TRL do on-policy). That holds only if nothing reads them before the update: no ``old_*``
        field but ``old_logprobs`` is required, and only losses and regularizers without a
        ``prepare`` hook read it (Clip-Cov's batch covariance or SAR's perplexity need it earlier).
        """
        t = self.cfg.train
        if t.old_forward == "always" or t.ppo_epochs != 1 or self.cfg.rollout.aepo.enabled:
            return False
        if t.mini_batch_size is not None and t.mini_batch_size < batch_size:
            return False
        if {name for name in self.pipeline.requires if name.startswith("old_")} - {"old_logprobs"}:
            return False
        readers = [c for c in self.pipeline.all() if "old_logprobs" in c.requires]
        return all(c.stage in ("policy_loss", "regularizer") and not callable(getattr(c.fn, "prepare", None)) for c in readers)

    def _old_forward(self, batch: RolloutBatch, policy: bool = True) -> dict[str, torch.Tensor]:
        """Old-policy fields (``old_<field>``, unless ``policy`` is False) and reference log-probs, no grad."""
        pieces: dict[str, list[torch.Tensor]] = {}
        kwargs = self._forward_kwargs()
        fields = self._old_fields()
        needs_peft_ref = self.ref_model is None and self._needs_ref() and is_peft_model(self.model)
        if not policy and self.ref_model is None and not needs_peft_ref:
            return {}
        with torch.no_grad():
            for rows in self._micro_batches(batch):
                if policy:
                    old = policy_forward(self.model, rows, fields=fields, **self.forward_options, **kwargs)
                    for key, value in old.items():
                        pieces.setdefault(f"old_{key}", []).append(value)
                if self.ref_model is not None:
                    ref = policy_forward(self.ref_model, rows, **kwargs)
                    pieces.setdefault("ref_logprobs", []).append(ref["logprobs"])
                elif needs_peft_ref:
                    ref = reference_forward(self.model, rows, **kwargs)
                    pieces.setdefault("ref_logprobs", []).append(ref["logprobs"])
        return {key: torch.cat(parts, dim=0) for key, parts in pieces.items()}

    def _answer_only_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """Log-probs of each response with its query removed (SAR's ``ppl(a)``), ``(B, T)``, no grad.

        The prompt is the empty prompt under the same formatting (just BOS, or the chat template with
        an empty user turn, as the official ``create_ans_only_batch``); positions continue after it.
        """
        tok = self.tokenizer
        empty = format_prompts(tok, [""], self.cfg.rollout.chat_template)[0]
        prompt_ids = torch.tensor(tok(empty, add_special_tokens=False)["input_ids"]).unsqueeze(0)
        n = batch.input_ids.shape[0]
        prompt = prompt_ids.expand(n, -1).to(batch.input_ids.device)
        answer_only = RolloutBatch(
            input_ids=torch.cat([prompt, batch.response_ids], dim=1),
            attention_mask=torch.cat([torch.ones_like(prompt), batch.response_mask.long()], dim=1),
            prompt_len=prompt.shape[1],
            response_mask=batch.response_mask,
            responses=batch.responses,
            truncated=batch.truncated,
            group_ids=batch.group_ids,
        )
        with torch.no_grad():
            parts = [
                policy_forward(self.model, rows, **self._forward_kwargs())["logprobs"]
                for rows in self._micro_batches(answer_only)
            ]
        return torch.cat(parts)

    def _update(self, ctx: AlgoContext, batch: RolloutBatch) -> dict[str, float]:
        """PPO epochs over mini-batches with gradient accumulation; returns averaged metrics.

        A context without ``old_logprobs`` comes from :meth:`_reuses_update_logprobs`: each micro-batch
        then takes its old log-probs and entropy from its own forward, detached, and the full-batch
        ``ctx.old_logprobs``/``ctx.old_entropy`` are assembled for the step's metrics.
        """
        assert self.optimizer is not None
        t = self.cfg.train
        reuse = ctx.old_logprobs is None
        fields = self._current_fields() | ({"entropy"} if reuse else set())
        if reuse:
            ctx.old_logprobs = torch.zeros_like(ctx.response_mask)
            ctx.old_entropy = torch.zeros_like(ctx.response_mask)
        n = ctx.batch_size
        mini = t.mini_batch_size or n
        sums: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        updates = skipped = 0
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr_at(self.step)
        for _epoch in range(t.ppo_epochs):
            order = self._shuffled_rows(ctx)
            for start in range(0, n, mini):
                mini_idx = order[start : start + mini]
                mini_mask = self._denominator_mask(ctx.select(mini_idx))
                num_tokens = float(mini_mask.sum())
                num_seqs = float((mini_mask.sum(-1) > 0).sum())
                self.optimizer.zero_grad(set_to_none=True)
                finite = True
                for mstart in range(0, len(mini_idx), t.micro_batch_size):
                    idx = mini_idx[mstart : mstart + t.micro_batch_size]
                    mctx = ctx.select(idx)
                    mctx.global_num_tokens = num_tokens
                    mctx.global_num_seqs = num_seqs
                    mctx.micro_batch_fraction = len(idx) / len(mini_idx)
                    cur = policy_forward(
                        self.model,
                        batch.rows(idx),
                        temperature=self.cfg.rollout.temperature,
                        chunk_size=t.logprob_chunk_size,
                        fields=fields,
                        **self.forward_options,
                    )
                    for key, value in cur.items():
                        setattr(mctx, key, value)
                    if reuse:
                        mctx.old_logprobs, mctx.old_entropy = cur["logprobs"].detach(), cur["entropy"].detach()
                        ctx.old_logprobs[idx], ctx.old_entropy[idx] = mctx.old_logprobs, mctx.old_entropy
                    loss, metrics = self._micro_loss(mctx)
                    if not torch.isfinite(loss):
                        finite = False
                        break
                    loss.backward()
                    for key, value in metrics.items():
                        sums[key] += value * len(idx)
                        counts[key] += len(idx)
                grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], t.grad_clip)
                if not finite or not torch.isfinite(grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    if reuse and not finite:  # rows after the bad micro-batch were not forwarded
                        old = self._old_forward(batch)
                        ctx.old_logprobs, ctx.old_entropy = old["old_logprobs"], old["old_entropy"]
                    continue
                self.optimizer.step()
                updates += 1
                sums["train/grad_norm"] += float(grad_norm)
                counts["train/grad_norm"] += 1
        out = {k: sums[k] / counts[k] for k in sums}
        out["train/updates"] = updates
        out["train/skipped_updates"] = skipped
        return out

    def _shuffled_rows(self, ctx: AlgoContext) -> torch.Tensor:
        """Row order of one PPO epoch: shuffled rows, or shuffled whole groups (``train.shuffle=groups``)."""
        n = ctx.batch_size
        if self.cfg.train.shuffle == "rows" or ctx.group_ids is None:
            return torch.randperm(n, generator=self.shuffle_gen)
        dense = torch.unique(ctx.group_ids, return_inverse=True)[1]
        group_order = torch.randperm(int(dense.max()) + 1, generator=self.shuffle_gen)
        rank = torch.empty_like(group_order)
        rank[group_order] = torch.arange(len(group_order))
        return torch.argsort(rank[dense] * n + torch.arange(n), stable=True)

    def _denominator_mask(self, mini_ctx: AlgoContext) -> torch.Tensor:
        """Mask whose totals normalise the mini-batch loss.

        Token selections known before the forward (token weights that read no current-policy field,
        e.g. ``mask_truncated``) shrink the denominator as in TRL; selections that need the current
        forward (e.g. forking tokens) are normalised per micro-batch, as in their official code.
        """
        mask = mini_ctx.response_mask
        for component in self.pipeline.token_weights:
            if not component.requires & FORWARD_FIELDS:
                out = component(mini_ctx)
                if out.loss_mask is not None:
                    mask = mask * out.loss_mask
        return mask

    def _micro_loss(self, mctx: AlgoContext) -> tuple[torch.Tensor, dict[str, float]]:
        """Policy loss (token-weighted, aggregated) + regularizers for one micro-batch."""
        metrics: dict[str, float] = {}
        weights = torch.ones_like(mctx.response_mask)
        loss_mask = mctx.response_mask
        for component in self.pipeline.token_weights:
            tw = component(mctx)
            weights = weights * tw.weights
            if tw.loss_mask is not None:
                loss_mask = loss_mask * tw.loss_mask
            metrics.update(tw.metrics)
        out = self.pipeline.policy_loss(mctx)
        metrics.update(out.metrics)
        if out.loss is not None:
            loss = out.loss
        else:
            loss = mctx.aggregate(out.per_token * weights, mask=loss_mask)
        metrics["train/pg_loss"] = float(loss.detach())
        for component in self.pipeline.regularizers:
            reg = component(mctx)
            loss = loss + reg.loss
            metrics.update(reg.metrics)
        metrics["train/loss"] = float(loss.detach())
        return loss, metrics

    def _sample_and_score(self) -> tuple[list[Problem], RolloutBatch, torch.Tensor, Counter[str], dict[str, float]]:
        """Rollout + verifier scores; with dynamic sampling, only groups with varying scores are kept.

        DAPO dynamic sampling (arXiv 2503.14476): groups whose verifier scores are all equal carry
        no GRPO signal; new prompts are sampled until ``prompts_per_step`` informative groups are
        collected or ``max_sampling_rounds`` rounds are spent, then the batch is cut to exactly
        ``prompts_per_step`` groups. The filter uses the verifier score (DAPO's ``acc`` metric).
        If no round yields an informative group, the last round is trained on as it is.
        """
        r = self.cfg.rollout
        failures: Counter[str] = Counter()
        kept: list[tuple[list[Problem], RolloutBatch, torch.Tensor]] = []
        kept_groups = generated_groups = rounds = 0
        while True:
            rounds += 1
            problems, batch = self._rollout()
            scores, round_failures = safe_scores(self.task.score, problems, batch.responses, self.cfg.train.reward_timeout_s)
            failures += round_failures
            rewards = torch.tensor(scores, dtype=torch.float32)
            if not r.dynamic_sampling:
                return problems, batch, rewards, failures, {}
            generated_groups += r.prompts_per_step
            keep = keep_informative_groups(rewards, batch.group_ids).nonzero().squeeze(-1)
            if keep.numel():
                kept.append(([problems[i] for i in keep.tolist()], batch.rows(keep), rewards[keep]))
                kept_groups += int(batch.group_ids[keep].unique().numel())
            if kept_groups >= r.prompts_per_step or rounds >= r.max_sampling_rounds:
                break
        stats = {
            "sampling/rounds": rounds,
            "sampling/informative_groups": kept_groups,
            "sampling/informative_frac": kept_groups / generated_groups,
        }
        if not kept:
            return problems, batch, rewards, failures, stats
        batch = concat_batches([b for _, b, _ in kept], self.tokenizer.pad_token_id)
        problems = [p for ps, _, _ in kept for p in ps]
        rewards = torch.cat([x for _, _, x in kept])
        rows = (batch.group_ids < r.prompts_per_step).nonzero().squeeze(-1)
        return [problems[i] for i in rows.tolist()], batch.rows(rows), rewards[rows], failures, stats

    def _make_ctx(
        self, problems: list[Problem], batch: RolloutBatch, rewards: torch.Tensor, correct: torch.Tensor | None = None
    ) -> AlgoContext:
        """The context of a scored rollout batch, with old/reference forward fields filled.

        ``correct`` defaults to ``rewards >= 1`` (rewards are then the verifier scores).
        """
        cfg = self.cfg
        ctx = AlgoContext(
            response_mask=batch.response_mask,
            rewards=rewards,
            group_ids=batch.group_ids,
            correct=rewards >= 1.0 if correct is None else correct,
            truncated=batch.truncated,
            prompt_ids=[p.id for p in problems],
            step=self.step,
            max_response_length=cfg.rollout.max_new_tokens,
            agg_mode=cfg.algo.agg_mode,
            generator=self.shuffle_gen,
            extras={"responses": batch.responses, "problems": problems, "row_index": torch.arange(len(problems))},
            **self._old_forward(batch, policy=not self._reuses_update_logprobs(len(problems))),
        )
        if "answer_only_logprobs" in self.pipeline.requires:
            ctx.extras["answer_only_logprobs"] = self._answer_only_logprobs(batch)
        return ctx

    def _aepo(
        self, ctx: AlgoContext, batch: RolloutBatch, problems: list[Problem]
    ) -> tuple[AlgoContext, RolloutBatch, dict[str, float]]:
        """AEPO's temperature-adjusted positive samples replace the first rows (see rlvr.train.aepo)."""
        a, r = self.cfg.rollout.aepo, self.cfg.rollout
        entropy = self.aepo_entropy
        temperature = a.temperature_high if entropy <= a.target else a.temperature_low
        assert ctx.old_entropy is not None and ctx.rewards is not None and ctx.advantages is not None
        self.aepo_entropy = float(masked_mean(ctx.old_entropy, ctx.response_mask))
        firsts = sorted({int(g): i for i, g in reversed(list(enumerate(batch.group_ids.tolist())))}.values())
        sub = [problems[i] for i in firsts][: sub_prompt_count(len(firsts), a.prompt_fraction)]
        extra = self.engine.generate(
            self.model,
            [p.prompt for p in sub],
            n=a.group_size,
            max_new_tokens=r.max_new_tokens,
            temperature=temperature,
            top_p=r.top_p,
            top_k=r.top_k,
        )
        extra_problems = [p for p in sub for _ in range(a.group_size)]
        scores, _ = safe_scores(self.task.score, extra_problems, extra.responses, self.cfg.train.reward_timeout_s)
        mixed = aepo_mix(
            batch,
            problems,
            ctx.rewards,
            ctx.correct,
            ctx.advantages,
            extra,
            extra_problems,
            torch.tensor(scores, dtype=torch.float32),
            entropy=entropy,
            target=a.target,
            max_samples=a.max_samples,
            adv_threshold=a.adv_threshold,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        stats = {**mixed.stats, "aepo/temperature": temperature, "aepo/entropy": entropy}
        if mixed.batch is batch:
            return ctx, batch, stats
        new_ctx = self._make_ctx(mixed.problems, mixed.batch, mixed.rewards, mixed.correct)
        new_ctx.advantages = mixed.advantages
        return new_ctx, mixed.batch, stats

    def train_step(self) -> dict[str, Any]:
        """One full RL step; returns its metrics record."""
        cfg = self.cfg
        t0 = time.perf_counter()
        problems, batch, rewards, failures, sampling_stats = self._sample_and_score()
        r = cfg.rollout
        scored = int(sampling_stats.get("sampling/rounds", 1)) * r.prompts_per_step * r.group_size
        self.scorer_health.update(failures, scored, step=self.step + 1)
        t_gen = time.perf_counter() - t0
        ctx = self._make_ctx(problems, batch, rewards)
        base_reward_mean = float(rewards.mean())
        record: dict[str, Any] = {"step": self.step + 1, **sampling_stats}
        for shaper in self.pipeline.reward_shaping:
            ctx.rewards = shaper(ctx)
        ctx.advantages = self.pipeline.advantage(ctx)
        record.update(getattr(self.pipeline.advantage.fn, "metrics", None) or {})
        if cfg.rollout.aepo.enabled:
            ctx, batch, aepo_stats = self._aepo(ctx, batch, problems)
            record.update(aepo_stats)
        correct = ctx.correct
        assert correct is not None
        for component in self.pipeline.all():
            record.update(component.prepare(ctx))
        update_metrics = self._update(ctx, batch)
        self.engine.sync_weights(self.model)  # no-op for the HF engine; vLLM reloads the new weights
        for component in self.pipeline.controllers:
            record.update(component.fn.after_step(update_metrics) or {})
        self.step += 1
        elapsed = time.perf_counter() - t0
        mask = batch.response_mask.bool()
        lengths = batch.response_mask.sum(-1)
        record.update(
            {
                "reward/mean": float(ctx.rewards.mean()),
                "reward/std": float(ctx.rewards.std()) if ctx.rewards.numel() > 1 else 0.0,
                "reward/base_mean": base_reward_mean,
                "accuracy": float(correct.float().mean()),
                "accuracy_per_1k_tokens": 1000.0 * float(correct.sum()) / max(1, batch.num_response_tokens),
                "reward/failures": sum(failures.values()),
                **{f"reward/failures_{k}": v for k, v in failures.items()},
                "response_length/mean": float(lengths.mean()),
                "response_length/max": float(lengths.max()),
                "response_length/truncated_frac": float(batch.truncated.float().mean()),
                **{f"data/skipped_{k}": v for k, v in self.skipped_data.items()},
                **_percentiles(ctx.old_entropy[mask], "entropy"),
                **update_metrics,
                "train/lr": self._lr_at(self.step - 1),
                "time/step_s": elapsed,
                "time/generate_s": t_gen,
                "throughput/tokens_per_s": batch.num_response_tokens / max(elapsed, 1e-9),
            }
        )
        if ctx.ref_logprobs is not None:
            diff = ctx.old_logprobs - ctx.ref_logprobs
            record["kl/k1_mean"] = float(diff[mask].mean())
        if ctx.old_top_p_entropy is not None:
            record.update(_percentiles(ctx.old_top_p_entropy[mask], "top_p_entropy"))
        if update_metrics.get("train/skipped_updates", 0) and not update_metrics.get("train/updates", 0):
            self.bad_steps += 1
            warnings.warn(f"step {self.step}: non-finite loss or gradient, update skipped ({self.bad_steps} in a row)")
            if self.bad_steps >= cfg.train.max_consecutive_bad_steps:
                raise RLVRError(
                    f"{self.bad_steps} consecutive steps had a non-finite loss or gradient; stopping "
                    f"(last good checkpoint under {self.ckpt_root}); lower train.lr or check the rewards"
                )
        else:
            self.bad_steps = 0
        return record

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False, overwrite: bool = False, force: bool = False) -> dict[str, Any]:
        """Warm start + RL in ``output_dir``, which this run holds locked (see rlvr.train.run_dir).

        A fresh run needs an empty ``output_dir`` (``overwrite`` clears it). ``resume`` continues
        from the newest readable checkpoint (an RL step, else a warm-start checkpoint, else from the
        beginning when the run stopped before its first checkpoint); settings that change the
        algorithm, the model or the batch shape must match the checkpoint's unless ``force``.
        SIGINT/SIGTERM stop at the next safe point with a checkpoint and raise Interrupted.
        """
        with claimed_run_dir(self.run_dir, resume=resume, overwrite=overwrite), StopSignals() as self.stop:
            started_rl = self._resume(force) if resume else False
            (self.run_dir / "config.yaml").write_text(dump_config(self.cfg))
            if not started_rl:
                self._warm_start()
                self._start_rl()
            self._rl_loop()
            self.summary["after"] = last_eval(self.metrics.path)
            self._finish()
        return self.summary

    def _resume(self, force: bool) -> bool:
        """Restore the newest checkpoint; True if it is an RL step (False: warm start or nothing yet)."""
        if not (self.run_dir / "config.yaml").is_file():
            raise RLVRError(
                f"--resume: no readable checkpoint under {self.ckpt_root} (no run in {self.run_dir}); "
                "run without --resume to start fresh"
            )
        clear_partial_checkpoints(self.ckpt_root)
        found = load_latest_checkpoint(self.ckpt_root) or load_latest_checkpoint(self.ckpt_root, WARMSTART_PREFIX)
        if found is None:
            self.metrics.truncate_after_step(-1)
            self.console.print(f"no checkpoint in {self.run_dir} yet: starting the run from the beginning")
            return False
        path, state = found
        if not force:
            check_resume_changes(state.get("config") or {}, self.cfg.model_dump(mode="json"), str(path))
        if "warmstart" in state:
            self._warm_state = state
            self.metrics.truncate_after_step(-1)
            self.console.print(f"[bold]resumed[/] the warm start from {path} at step {state['warmstart']['step']}")
            return False
        self._apply_lora()
        check_compatible(state, self.cfg, path, self.model)
        self._restore(state)
        self.engine.sync_weights(self.model)
        self.metrics.truncate_after_step(self.step)
        self.console.print(f"[bold]resumed[/] from {path} at step {self.step}")
        return True

    def _start_rl(self) -> None:
        """After the warm start: LoRA, reference, optimizer, and the step-0 held-out evaluation."""
        self._apply_lora()
        self._make_ref()
        self.optimizer = self._make_optimizer()
        self.engine.sync_weights(self.model)
        before = self.evaluate()
        self.summary["before"] = before
        self.metrics.write({"step": 0, **before})
        label = "after warm start" if self._warmstart_steps() > 0 else "before RL"
        self.console.print(f"{label}: {_fmt_eval(before)}")

    def _rl_loop(self) -> None:
        cfg = self.cfg
        with _progress(self.console) as progress:
            bar = progress.add_task("RL", total=cfg.train.steps, completed=self.step, info="")
            while self.step < cfg.train.steps:
                record = self.train_step()
                if self.step % cfg.eval.every == 0 or self.step == cfg.train.steps:
                    record.update(self.evaluate())
                self.metrics.write(record)
                saved = self.step % cfg.train.checkpoint_every == 0 or self.step == cfg.train.steps
                if saved or self.stop.requested:
                    path = self.save()
                if self.stop.requested:
                    self._interrupted(f"at step {self.step}", path)
                info = f"reward {record['reward/mean']:.3f} acc {record['accuracy']:.3f} H {record.get('entropy/mean', 0):.3f}"
                progress.update(bar, completed=self.step, info=info)

    def _interrupted(self, where: str, checkpoint: Path) -> None:
        signum = self.stop.signum or signal.SIGINT
        raise Interrupted(
            signum,
            f"{signal.Signals(signum).name}: stopped {where}, checkpoint {checkpoint}; "
            f"continue with: rlvr train --resume output_dir={self.run_dir}",
        )

    def _warm_start(self) -> None:
        """The supervised warm start, checkpointed every ``warmstart.checkpoint_every`` steps and at its end."""
        steps = self._warmstart_steps()
        if steps <= 0:
            return
        w = self.cfg.warmstart
        ws = WarmStart(
            self.model,
            self.tokenizer,
            self.task,
            steps=steps,
            batch_size=w.batch_size,
            lr=w.lr,
            seed=self.cfg.seed + 1,
            chat_template=self.cfg.rollout.chat_template,
        )
        resumed = self._warm_state
        if resumed is not None:
            check_compatible(resumed, self.cfg, self.ckpt_root, self.model)
            self.model.load_state_dict(resumed["model"])
            ws.load_state_dict(resumed["warmstart"])
            set_rng_state(resumed["rng"])
        with _progress(self.console) as progress:
            bar = progress.add_task("warm start", total=steps, completed=ws.step, info="")
            while not ws.done:
                loss = ws.train_step()
                progress.update(bar, completed=ws.step, info=f"loss {loss:.3f}")
                if ws.step % w.checkpoint_every == 0 or ws.done or self.stop.requested:
                    path = self._save_warm_start(ws)
                if self.stop.requested:
                    self._interrupted(f"in the warm start at step {ws.step}", path)
        self.model.zero_grad(set_to_none=True)  # no stale warm-start gradients on weights LoRA then freezes

    def _save_warm_start(self, ws: WarmStart) -> Path:
        state = {
            "step": 0,
            "warmstart": ws.state_dict(),
            "model": self.model.state_dict(),
            "rng": rng_state(),
            "config": self.cfg.model_dump(mode="json"),
        }
        return save_checkpoint(self.ckpt_root, ws.step, state, keep=1, prefix=WARMSTART_PREFIX)

    def _finish(self) -> None:
        from rlvr.eval.report import write_run_report

        final_dir = self.run_dir / "final_model"
        if is_peft_model(self.model):
            save_lora_model(self.model, self.tokenizer, final_dir, merge=self.cfg.model.lora.merge_on_save)
        else:
            self.model.save_pretrained(final_dir)
            self.tokenizer.save_pretrained(final_dir)
        report = write_run_report(self.run_dir) if self.cfg.eval.report else None
        before, after = self.summary.get("before", {}), self.summary.get("after", {})
        self.console.print(f"after RL ({self.step} steps): {_fmt_eval(after)}")
        key = "eval/accuracy_greedy"
        if key in before and key in after:
            self.console.print(
                f"[bold]held-out greedy accuracy: {before[key]:.3f} (warm start) -> {after[key]:.3f} (RL)[/]"
            )
        self.console.print(f"run directory: {self.run_dir}" + (f"  report: {report}" if report else ""))


def last_eval(metrics_path: Path) -> dict[str, float]:
    """The last held-out evaluation in metrics.jsonl (the final step always evaluates)."""
    from rlvr.train.logging import read_metrics

    for record in reversed(read_metrics(metrics_path)):
        if "eval/accuracy_greedy" in record:
            return {k: v for k, v in record.items() if k.startswith("eval/")}
    return {}


def _fmt_eval(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )
