"""The native RLVR trainer. One step, top to bottom (:meth:`Trainer.train_step`):

1. **rollout** (:class:`rlvr.rollout.stage.RolloutStage`): draw problems, sample ``group_size``
   responses each, score them with the task's verifier (crash/hang/NaN-safe), DAPO dynamic
   sampling with refill;
2. **prepare** (:class:`rlvr.train.learner.Learner`): the rollout policy's forward quantities and
   reference log-probs the methods declare, with the source of the old log-probs explicit;
3. **rewards -> advantages** (:class:`rlvr.train.pipeline.Pipeline`), then AEPO's positive samples
   (:class:`rlvr.rollout.aepo.AEPOSampler`) where enabled, and every method's per-step hook;
4. **update**: PPO epochs over mini-batches, micro-batches normalised by mini-batch totals;
5. weight sync to the rollout engine, controllers, metrics.

:meth:`Trainer.run` adds the warm start, held-out evaluation, checkpoints (atomic; exact resume)
and the safety around a run: one run per locked output directory, Ctrl-C/SIGTERM checkpointing.
"""

from __future__ import annotations

import contextlib
import copy
import random
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rlvr.algos.aggregation import masked_mean
from rlvr.errors import Interrupted, RLVRError
from rlvr.models.build import build_model_and_tokenizer
from rlvr.models.lora import (
    apply_lora,
    is_peft_model,
    load_lora_checkpoint_state,
    lora_checkpoint_state,
    lora_enabled,
    save_lora_model,
)
from rlvr.rollout.adaptive_temperature import AdaptiveTemperature
from rlvr.rollout.aepo import AEPOSampler
from rlvr.rollout.cure import CUREBrancher, cure_metrics
from rlvr.rollout.r3 import R3Injector, r3_metrics, sampled_rows
from rlvr.rollout.spae import STEP_POTENTIAL, SPAEProber, find_spae
from rlvr.rollout.engines import build_engine
from rlvr.rollout.hf import format_prompts
from rlvr.rollout.stage import Augment, RolloutResult, RolloutStage, Sampling, prompt_limit, usable_problems
from rlvr.tasks.base import Task, tasks
from rlvr.tasks.reward_funcs import RewardScorer
from rlvr.tasks.scoring import ScorerHealth
from rlvr.train.checkpoint import (
    WARMSTART_PREFIX,
    check_compatible,
    checkpoint_path,
    clear_partial_checkpoints,
    commit_checkpoint,
    load_latest_checkpoint,
    new_partial_dir,
    remove_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rlvr.train.config import RunConfig, check_resume_changes, dump_config
from rlvr.train.device import Precision
from rlvr.train.distributed import (
    Dist,
    apply_model_optimizer_state,
    full_state_to,
    init_distributed,
    load_sharded,
    model_optimizer_state,
    save_sharded,
)
from rlvr.train.evaluate import evaluate_heldout
from rlvr.train.history import PROMPT_HISTORY_FILE, PromptHistory
from rlvr.train.interrupt import StopSignals
from rlvr.train.learner import Learner, TrainBatch, lr_at
from rlvr.train.logging import RunLogger, TruncationMonitor
from rlvr.train.pipeline import Pipeline
from rlvr.train.rollout_plan import RolloutControl
from rlvr.train.run_dir import claimed_run_dir
from rlvr.train.warmstart import WarmStart


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _percentiles(values: torch.Tensor, prefix: str) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    qs = torch.quantile(values.float(), torch.tensor([0.1, 0.5, 0.9, 0.99], device=values.device))
    return {
        f"{prefix}/mean": float(values.mean()),
        f"{prefix}/p10": float(qs[0]),
        f"{prefix}/p50": float(qs[1]),
        f"{prefix}/p90": float(qs[2]),
        f"{prefix}/p99": float(qs[3]),
    }


class Trainer:
    """Runs warm start + RL for one :class:`RunConfig`, writing everything under ``output_dir``."""

    def __init__(self, cfg: RunConfig, console: Console | None = None, quiet: bool = False, dist: Dist | None = None) -> None:
        self.cfg = cfg
        self.dist = dist or init_distributed(cfg.train.device, cfg.train.collective_timeout_s)
        self.console = console or Console(quiet=quiet or not self.dist.is_main)
        self.run_dir = Path(cfg.output_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        seed_everything(cfg.seed)
        self.precision = Precision.from_config(_rank_device(cfg.train.device, self.dist), cfg.model.dtype)
        if cfg.rollout.shards is None:  # fixed at the first launch and saved, so a resume samples the same
            cfg.rollout.shards = self.dist.world
        self.task: Task = tasks.build(cfg.task.name, cfg.task.kwargs, "task.kwargs").fn
        self.reward_scorer = RewardScorer.from_config(cfg.reward, self.task.score)  # verifier + reward.funcs
        self.pipeline = Pipeline.from_config(cfg.algo)
        model, self.tokenizer = build_model_and_tokenizer(cfg.model, cfg.seed)
        model.to(self.precision.device)
        r = cfg.rollout
        self.engine = build_engine(
            r.backend,
            self.tokenizer,
            chat_template=r.chat_template,
            model_path=cfg.model.path,
            model=model,
            kv_decode=r.kv_decode,
            mdlm=r.mdlm.model_dump() if cfg.model.kind == "mdlm" else None,  # masked-diffusion decoding (rlvr.rollout.mdlm)
            **(self._vllm_options() if r.backend == "vllm" else {}),
        )
        limit = prompt_limit(model, r.max_prompt_tokens)
        self.rollout = RolloutStage(
            self.task,
            self.engine,
            self.tokenizer,
            sampling=Sampling(n=r.group_size, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k),
            prompts_per_step=r.prompts_per_step,
            max_prompt_tokens=limit,
            dynamic_sampling=r.dynamic_sampling,
            max_sampling_rounds=r.max_sampling_rounds,
            timeout_s=cfg.train.reward_timeout_s,
            seed=cfg.seed,
            shards=cfg.rollout.shards,
            dist=self.dist,
            autocast=self.precision.autocast,
            scorer=self.reward_scorer,
            recover_overflow=r.recover_overflow,  # Confucius3-Math RSR
            adaptive_temperature=_adaptive_temperature(r),  # HAPO-H
        )
        self.aepo = AEPOSampler(r.aepo) if r.aepo.enabled else None
        self.control = RolloutControl(self.pipeline, cfg, self.tokenizer)  # DRIVE's stage plan, ADR's instruction halves
        self.cure = CUREBrancher(r.cure) if r.cure.enabled else None
        spae = find_spae(self.pipeline)
        self.spae_probe = SPAEProber(r.spae, spae) if spae is not None else None
        empty = format_prompts(self.tokenizer, [""], r.chat_template)[0]
        empty_ids = torch.tensor(self.tokenizer(empty, add_special_tokens=False)["input_ids"])
        self.learner = Learner(cfg, model, self.pipeline, self.precision, empty_ids, dist=self.dist, tokenizer=self.tokenizer)
        self.rollout_model: torch.nn.Module | None = None  # FSDP2 + HF engine: a full-weight replica to sample from
        self._sharded_once = False
        self.heldout = usable_problems(self.task.heldout_problems(cfg.eval.num_problems), self.tokenizer, limit, "held-out")
        self.step = 0
        self.bad_steps = 0
        self.scorer_health = ScorerHealth(cfg.train.max_consecutive_bad_steps)
        self.metrics = RunLogger(self.run_dir, cfg, self.console)  # metrics.jsonl + logging.backends
        # per-prompt accuracy per visit (rlvr.train.history): replicated, rank 0 writes prompt_history.jsonl
        self.history = PromptHistory(self.run_dir / PROMPT_HISTORY_FILE if self.dist.is_main else None, self.control.needs_problems)
        self.r3 = R3Injector(r.r3, self.history) if r.r3.enabled else None  # R^3 replay (buffer in the history) and reflection
        self.truncation = TruncationMonitor(r.max_new_tokens)
        self.summary: dict[str, Any] = {}
        self.stop = StopSignals()
        self._warm_state: dict[str, Any] | None = None

    def _vllm_options(self) -> dict[str, Any]:
        options = self.cfg.rollout.vllm.model_dump()
        if options["sleep"] is None:
            options["sleep"] = self.precision.device.type == "cuda"
        return {**options, "seed": self.cfg.seed}

    @property
    def model(self) -> torch.nn.Module:
        """The policy being trained (a PEFT model once LoRA adapters are applied; FSDP2-sharded under fsdp2)."""
        return self.learner.model

    @property
    def sampler(self) -> torch.nn.Module:
        """The weights rollouts and evaluations sample from: the policy, or under FSDP2 its full replica."""
        return self.rollout_model if self.rollout_model is not None else self.model

    def _sync_sampler(self) -> None:
        """After an update: refresh the FSDP2 replica and the rollout engine's weights."""
        if self.rollout_model is not None:
            full_state_to(self.rollout_model, self.model)
        self.engine.sync_weights(self.sampler)  # no-op for the HF engine; vLLM wakes and loads the new weights

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, Any]:
        """One full RL step; returns its metrics record."""
        t0 = time.perf_counter()
        if self.control.active:  # DRIVE's stage plan / ADR's instruction halves (rlvr.train.rollout_plan)
            rollout = self.control.collect(self.rollout, self.sampler, self.step, self.history)
        else:
            rollout = self.rollout.collect(self.sampler, self.step, augment=self._round_augment())
        self.scorer_health.update(rollout.failures, rollout.scored, step=self.step + 1)
        sampled = sampled_rows(rollout)  # the history sees the policy's own samples, not R^3's injected rows
        self.history.record(self.step + 1, [rollout.problems[i] for i in sampled.tolist()], rollout.correct[sampled], rollout.scores[sampled])
        # recovered overflow rows (off_policy) take old log-probs from a separate forward of the current weights
        tb = self.learner.prepare(rollout, self.step, rows_may_change=self.aepo is not None or rollout.off_policy)
        self.control.provide(tb.ctx, self.learner)  # adr_switch's mode logits
        verified_reward = float(tb.ctx.rewards.mean())
        record: dict[str, Any] = {"step": self.step + 1, **rollout.stats, **cure_metrics(rollout)}
        if self.r3 is not None:
            record.update(r3_metrics(rollout, self.r3.pop_stats()))
        if self.spae_probe is not None:  # SPAE: step potentials from probe generations
            tb.ctx.extras[STEP_POTENTIAL], probe_stats = self.spae_probe.potentials(self.rollout, self.sampler, rollout, tb.ctx, self.step)
            record.update(probe_stats)
        record.update(self.pipeline.shape_and_estimate(tb.ctx))
        if self.aepo is not None:
            tb, rollout = self._aepo(tb, rollout, record)
        record.update(self.pipeline.prepare(tb.ctx))
        self.engine.sleep()  # a colocated vLLM frees its GPU memory for the update
        update = self.learner.update(tb, self.step)
        self._sync_sampler()
        record.update(self.pipeline.after_step(update))
        self.step += 1
        record.update(self._step_metrics(tb, rollout, update, verified_reward, time.perf_counter() - t0))
        # reward/func_<name>: every response scored this step, on every rank
        record.update(self.reward_scorer.pop_metrics(self.dist.all_gather_object if self.dist.enabled else None))
        if self.dist.is_main:  # every rank holds the same record; rank 0 speaks and writes
            self.truncation.update(record["response_length/truncated_frac"])
            self.metrics.log_completions(self.step, rollout)
        self._count_bad_step(update)
        return record

    def _round_augment(self) -> Augment | None:
        """The rollout-stage component applied to each sampled round (CURE or R^3; the config allows one)."""
        if self.cure is not None:
            return self._cure_round
        if self.r3 is not None:
            r3 = self.r3
            return lambda result, key: r3.augment(self.rollout, self.sampler, result, self.step, key)
        return None

    def _cure_round(self, first: RolloutResult, key: tuple) -> RolloutResult:
        """CURE: one sampled round with its continuations branched at high rollout-policy entropy."""
        assert self.cure is not None
        entropy = self.learner.old_and_ref(first.batch)["old_entropy"]
        return self.cure.augment(self.rollout, self.sampler, first, entropy, key)

    def _aepo(self, tb: TrainBatch, rollout: RolloutResult, record: dict[str, Any]) -> tuple[TrainBatch, RolloutResult]:
        """AEPO's positive samples replace the first rows; the mixed batch is prepared again."""
        assert self.aepo is not None and tb.ctx.advantages is not None and tb.ctx.rewards is not None
        entropy = float(masked_mean(tb.ctx.old_entropy, tb.ctx.response_mask))
        mixed, stats = self.aepo.augment(
            self.rollout, self.sampler, rollout, tb.ctx.rewards, tb.ctx.advantages, entropy, step=self.step
        )
        record.update(stats)
        if mixed is None:
            return tb, rollout
        return self.learner.prepare(mixed, self.step, rows_may_change=True), mixed

    def _step_metrics(
        self, tb: TrainBatch, rollout: RolloutResult, update: dict[str, float], verified_reward: float, elapsed: float
    ) -> dict[str, Any]:
        ctx, batch = tb.ctx, tb.batch
        assert ctx.rewards is not None and ctx.correct is not None and ctx.old_entropy is not None
        mask = batch.response_mask.bool()
        lengths = batch.response_mask.sum(-1)
        tokens = batch.num_response_tokens
        out: dict[str, Any] = {
            "reward/mean": float(ctx.rewards.mean()),
            "reward/std": float(ctx.rewards.std()) if ctx.rewards.numel() > 1 else 0.0,
            "reward/base_mean": verified_reward,
            "accuracy": float(ctx.correct.float().mean()),
            "accuracy_per_1k_tokens": 1000.0 * float(ctx.correct.sum()) / max(1, tokens),
            "reward/failures": sum(rollout.failures.values()),
            **{f"reward/failures_{k}": v for k, v in rollout.failures.items()},
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "response_length/truncated_frac": float(batch.truncated.float().mean()),
            **{f"data/skipped_{k}": v for k, v in self.rollout.skipped_data.items()},
            **_percentiles(ctx.old_entropy[mask], "entropy"),
            **update,
            "train/lr": lr_at(self.cfg.train, self.step - 1),
            "time/step_s": elapsed,
            "time/generate_s": rollout.generate_s,
            "throughput/tokens_per_s": tokens / max(elapsed, 1e-9),
        }
        if ctx.ref_logprobs is not None:
            assert ctx.old_logprobs is not None
            out["kl/k1_mean"] = float((ctx.old_logprobs - ctx.ref_logprobs)[mask].mean())
        if ctx.old_top_p_entropy is not None:
            out.update(_percentiles(ctx.old_top_p_entropy[mask], "top_p_entropy"))
        return out

    def _count_bad_step(self, update: dict[str, float]) -> None:
        """A step whose every update was skipped (non-finite) counts; K in a row stop the run."""
        if update.get("train/skipped_updates", 0) and not update.get("train/updates", 0):
            self.bad_steps += 1
            if self.dist.is_main:
                warnings.warn(f"step {self.step}: non-finite loss or gradient, update skipped ({self.bad_steps} in a row)")
            if self.bad_steps >= self.cfg.train.max_consecutive_bad_steps:
                raise RLVRError(
                    f"{self.bad_steps} consecutive steps had a non-finite loss or gradient; stopping "
                    f"(last good checkpoint under {self.ckpt_root}); lower train.lr or check the rewards"
                )
        else:
            self.bad_steps = 0

    # ------------------------------------------------------------------ eval
    def evaluate(self) -> dict[str, float]:
        e = self.cfg.eval
        return evaluate_heldout(
            self.sampler,
            self.engine,
            self.heldout,
            self.task.score,
            samples=e.samples,
            pass_k=e.pass_k,
            max_new_tokens=self.cfg.rollout.max_new_tokens,
            temperature=e.temperature,
            timeout_s=self.cfg.train.reward_timeout_s,
            precision=self.precision,
        )

    # ------------------------------------------------------------------ checkpoints
    def _warmstart_steps(self) -> int:
        w = self.cfg.warmstart.steps
        return w if w is not None else (600 if self.cfg.model.path is None else 0)

    def _apply_lora(self) -> None:
        """Wrap the (warm-started) model in LoRA adapters when ``model.lora.r`` is set."""
        lora = self.cfg.model.lora
        if lora_enabled(lora.r) and not is_peft_model(self.model):
            self.learner.model = apply_lora(
                self.model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules
            )

    def _replicated_state(self) -> dict[str, Any]:
        """What every rank holds identically: step, method state, data/shuffle streams, counters, config."""
        learner = self.learner.state_dict()
        return {
            "step": self.step,
            "shuffle_gen": learner["shuffle_gen"],
            **self.rollout.state_dict(),
            "pipeline": self.pipeline.state_dict(),
            "rng": rng_state(),
            "aepo": self.aepo.state_dict() if self.aepo is not None else None,
            "prompt_history": self.history.state_dict(),
            "bad_steps": self.bad_steps,
            "scorer_failed_steps": self.scorer_health.all_failed_steps,
            "summary": self.summary,
            "config": self.cfg.model_dump(mode="json"),
        }

    def _checkpoint_state(self) -> dict[str, Any]:
        """A single-process checkpoint: the replicated state plus the model, optimizer and reference."""
        model = (
            lora_checkpoint_state(self.model, include_base=self._warmstart_steps() > 0)
            if is_peft_model(self.model)
            else self.model.state_dict()
        )
        learner = self.learner.state_dict()
        return {**self._replicated_state(), "model": model, "ref_model": learner["ref_model"], "optimizer": learner["optimizer"]}

    def _restore(self, state: dict[str, Any], path: Path | None = None) -> None:
        """Load a checkpoint's state; ``path`` holds the sharded tensors of a multi-process checkpoint."""
        if state.get("sharded"):
            self.learner.start()
            tensors = model_optimizer_state(self.model, self.learner.optimizer, self.learner.ref_model)
            assert path is not None
            load_sharded(path / "sharded", tensors)
            apply_model_optimizer_state(tensors, self.model, self.learner.optimizer, self.learner.ref_model)
            self.learner.shuffle_gen.set_state(state["shuffle_gen"])
        else:
            if is_peft_model(self.model):
                load_lora_checkpoint_state(self.model, state["model"])
            else:
                self.model.load_state_dict(state["model"])
            self.learner.load_state_dict(state)
        self.rollout.load_state_dict(state)
        self.pipeline.load_state_dict(state["pipeline"])
        set_rng_state(state["rng"])
        if self.aepo is not None and state.get("aepo"):
            self.aepo.load_state_dict(state["aepo"])
        self.history.load_state_dict(state.get("prompt_history") or {})
        self.bad_steps = state.get("bad_steps", 0)
        self.scorer_health.all_failed_steps = int(state.get("scorer_failed_steps", 0))
        self.summary = state.get("summary", {})
        self.step = int(state["step"])

    def save(self) -> Path:
        """Checkpoint this RL step (warm-start checkpoints are dropped once an RL one exists).

        Under torchrun the model, optimizer and reference state go through
        ``torch.distributed.checkpoint`` (every rank writes its part into the same temporary
        directory) and rank 0 commits it with the replicated ``state.pt``.
        """
        keep = self.cfg.train.keep_checkpoints
        if not self.dist.enabled:
            path = save_checkpoint(self.ckpt_root, self.step, self._checkpoint_state(), keep)
            remove_checkpoints(self.ckpt_root, WARMSTART_PREFIX)
            return path
        final = checkpoint_path(self.ckpt_root, self.step)
        tmp = Path(self.dist.broadcast_object(str(new_partial_dir(final)) if self.dist.is_main else None))
        save_sharded(tmp / "sharded", model_optimizer_state(self.model, self.learner.optimizer, self.learner.ref_model))
        self.dist.barrier()
        if self.dist.is_main:
            commit_checkpoint(tmp, final, {**self._replicated_state(), "sharded": True}, keep)
            remove_checkpoints(self.ckpt_root, WARMSTART_PREFIX)
        self.dist.barrier()
        return final

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False, overwrite: bool = False, force: bool = False) -> dict[str, Any]:
        """Warm start + RL in ``output_dir``, which this run holds locked (see rlvr.train.run_dir).

        A fresh run needs an empty ``output_dir`` (``overwrite`` clears it). ``resume`` continues
        from the newest readable checkpoint (an RL step, else a warm-start checkpoint, else from the
        beginning when the run stopped before its first checkpoint); settings that change the
        algorithm, the model or the batch shape must match the checkpoint's unless ``force``.
        SIGINT/SIGTERM stop at the next safe point with a checkpoint and raise Interrupted. Under
        torchrun rank 0 holds the directory and writes metrics, reports and the final model.
        """
        with self._claim(resume, overwrite), StopSignals() as self.stop:
            started_rl = self._resume(force) if resume else False
            if self.dist.is_main:
                (self.run_dir / "config.yaml").write_text(dump_config(self.cfg))
            if not started_rl:
                self._warm_start()
                self._start_rl()
            self._rl_loop()
            if self.dist.is_main:
                self.summary["after"] = last_eval(self.metrics.path)
            self._finish()
            self.metrics.close()  # TensorBoard / wandb backends (no-op for jsonl alone)
        return self.summary

    @contextlib.contextmanager
    def _claim(self, resume: bool, overwrite: bool) -> Any:
        """Rank 0 claims the run directory; under torchrun every rank learns whether it could."""
        with contextlib.ExitStack() as stack:
            error: str | None = None
            if self.dist.is_main:
                try:
                    stack.enter_context(claimed_run_dir(self.run_dir, resume=resume, overwrite=overwrite))
                except RLVRError as exc:
                    if not self.dist.enabled:
                        raise
                    error = str(exc)
                    self.dist.broadcast_object(error)
                    raise
            error = self.dist.broadcast_object(error)
            if error is not None:
                raise RLVRError(error)
            yield

    def _resume(self, force: bool) -> bool:
        """Restore the newest checkpoint; True if it is an RL step (False: warm start or nothing yet)."""
        if not (self.run_dir / "config.yaml").is_file():
            raise RLVRError(
                f"--resume: no readable checkpoint under {self.ckpt_root} (no run in {self.run_dir}); "
                "run without --resume to start fresh"
            )
        if self.dist.is_main:
            clear_partial_checkpoints(self.ckpt_root)
        self.dist.barrier()
        found = load_latest_checkpoint(self.ckpt_root) or load_latest_checkpoint(self.ckpt_root, WARMSTART_PREFIX)
        if found is None:
            if self.dist.is_main:
                self.metrics.truncate_after_step(-1)
            self.console.print(f"no checkpoint in {self.run_dir} yet: starting the run from the beginning")
            return False
        path, state = found
        if not force:
            check_resume_changes(state.get("config") or {}, self.cfg.model_dump(mode="json"), str(path))
        if "warmstart" in state:
            self._warm_state = state
            if self.dist.is_main:
                self.metrics.truncate_after_step(-1)
            self.console.print(f"[bold]resumed[/] the warm start from {path} at step {state['warmstart']['step']}")
            return False
        self._apply_lora()
        if not state.get("sharded"):  # a sharded checkpoint's tensors are checked as they load
            check_compatible(state, self.cfg, path, self.model)
        self._prepare_parallel()
        self._restore(state, path)
        self._sync_sampler()
        if self.dist.is_main:
            self.metrics.truncate_after_step(self.step)
        self.console.print(f"[bold]resumed[/] from {path} at step {self.step}")
        return True

    def _prepare_parallel(self) -> None:
        """Under FSDP2: shard the policy (and reference); the HF engine samples from a full-weight replica
        kept beside it (vLLM holds its own full copy, loaded from the all-gathered weights)."""
        if self.learner.sharded and not self._sharded_once:
            if self.cfg.rollout.backend == "hf":
                self.rollout_model = copy.deepcopy(self.model).eval()
                for p in self.rollout_model.parameters():
                    p.requires_grad_(False)
            self.learner.shard()
            self._sharded_once = True

    def _start_rl(self) -> None:
        """After the warm start: LoRA, reference, optimizer, and the step-0 held-out evaluation."""
        self._apply_lora()
        self._prepare_parallel()
        self.learner.start()
        self.engine.sync_weights(self.sampler)
        before = self.evaluate() if self.dist.is_main else {}
        self.summary["before"] = before
        if self.dist.is_main:
            self.metrics.write({"step": 0, **before})
        label = "after warm start" if self._warmstart_steps() > 0 else "before RL"
        self.console.print(f"{label}: {_fmt_eval(before)}")

    def _stop_requested(self) -> bool:
        """Ctrl-C/SIGTERM seen by any rank (torchrun forwards SIGTERM to all; the decision is agreed)."""
        return self.dist.any_true(self.stop.requested, self.precision.device)

    def _rl_loop(self) -> None:
        cfg = self.cfg
        self.history.truncate_file_after(self.step)  # a resumed run replays the visits after its checkpoint
        with _progress(self.console) as progress:
            bar = progress.add_task("RL", total=cfg.train.steps, completed=self.step, info="")
            while self.step < cfg.train.steps:
                record = self.train_step()
                if (self.step % cfg.eval.every == 0 or self.step == cfg.train.steps) and self.dist.is_main:
                    record.update(self.evaluate())
                if self.dist.is_main:
                    self.metrics.write(record)
                stop = self._stop_requested()
                saved = self.step % cfg.train.checkpoint_every == 0 or self.step == cfg.train.steps
                if saved or stop:
                    path = self.save()
                if stop:
                    self._interrupted(f"at step {self.step}", path)
                info = f"reward {record['reward/mean']:.3f} acc {record['accuracy']:.3f} H {record.get('entropy/mean', 0):.3f}"
                progress.update(bar, completed=self.step, info=info)

    def _interrupted(self, where: str, checkpoint: Path) -> None:
        # a rank may stop because another one saw the signal (torchrun forwards SIGTERM)
        signum = self.stop.signum or (signal.SIGTERM if self.dist.enabled else signal.SIGINT)
        raise Interrupted(
            signum,
            f"{signal.Signals(signum).name}: stopped {where}, checkpoint {checkpoint}; "
            f"continue with: rlvr train --resume output_dir={self.run_dir}",
        )

    def _warm_start(self) -> None:
        """The supervised warm start, checkpointed every ``warmstart.checkpoint_every`` steps and at its end.

        Under torchrun every rank runs it (same data, same seed); rank 0 checkpoints and its weights
        are broadcast at the end, so the ranks start RL from identical weights.
        """
        steps = self._warmstart_steps()
        if steps <= 0:
            self.dist.broadcast_module_(self.model)
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
            autocast=self.precision.autocast,
            response_length=self.cfg.rollout.max_new_tokens,  # an MDLM's warm start fills the whole response width
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
                stop = self._stop_requested()
                if (ws.step % w.checkpoint_every == 0 or ws.done or stop) and self.dist.is_main:
                    self._save_warm_start(ws)
                if stop:
                    self.dist.barrier()
                    self._interrupted(f"in the warm start at step {ws.step}", checkpoint_path(self.ckpt_root, ws.step, WARMSTART_PREFIX))
        self.model.zero_grad(set_to_none=True)  # no stale warm-start gradients on weights LoRA then freezes
        self.dist.broadcast_module_(self.model)

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
        full = None
        if self.learner.sharded and self.rollout_model is None:  # FSDP2 without a replica: gather (all ranks)
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.dist.is_main:
            return
        from rlvr.eval.report import write_run_report

        final_dir = self.run_dir / "final_model"
        if is_peft_model(self.model):
            save_lora_model(self.model, self.tokenizer, final_dir, merge=self.cfg.model.lora.merge_on_save)
        else:
            self.sampler.save_pretrained(final_dir, **({"state_dict": full} if full is not None else {}))
            self.tokenizer.save_pretrained(final_dir)
        report = write_run_report(self.run_dir) if self.cfg.eval.report else None
        before, after = self.summary.get("before", {}), self.summary.get("after", {})
        self.console.print(f"after RL ({self.step} steps): {_fmt_eval(after)}")
        key = "eval/accuracy_greedy"
        if key in before and key in after:
            start = "warm start" if self._warmstart_steps() > 0 else "before RL"
            self.console.print(f"[bold]held-out greedy accuracy: {before[key]:.3f} ({start}) -> {after[key]:.3f} (RL)[/]")
        self.console.print(f"run directory: {self.run_dir}" + (f"  report: {report}" if report else ""))


def _rank_device(spec: str, dist: Dist) -> str:
    """Under torchrun each rank trains on its own GPU (``cuda:LOCAL_RANK``)."""
    if dist.enabled and (spec == "cuda" or (spec == "auto" and torch.cuda.is_available())):
        return f"cuda:{dist.local_rank}"
    return spec


def _adaptive_temperature(r: Any) -> AdaptiveTemperature | None:
    """HAPO-H's per-token sampling temperature state, when ``rollout.adaptive_temperature`` is on."""
    a = r.adaptive_temperature
    return AdaptiveTemperature(tau=a.tau, pivot=a.pivot, official_sign=a.official_sign) if a.enabled else None


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
