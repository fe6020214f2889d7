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
from rlvr.rollout.aepo import AEPOSampler
from rlvr.rollout.engines import build_engine
from rlvr.rollout.hf import format_prompts
from rlvr.rollout.stage import RolloutResult, RolloutStage, Sampling, prompt_limit, usable_problems
from rlvr.tasks.base import Task, tasks
from rlvr.tasks.scoring import ScorerHealth
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
from rlvr.train.device import Precision
from rlvr.train.evaluate import evaluate_heldout
from rlvr.train.interrupt import StopSignals
from rlvr.train.learner import Learner, TrainBatch, lr_at
from rlvr.train.logging import MetricsWriter
from rlvr.train.pipeline import Pipeline
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

    def __init__(self, cfg: RunConfig, console: Console | None = None, quiet: bool = False) -> None:
        self.cfg = cfg
        self.console = console or Console(quiet=quiet)
        self.run_dir = Path(cfg.output_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        seed_everything(cfg.seed)
        self.precision = Precision.from_config(cfg.train.device, cfg.model.dtype)
        self.task: Task = tasks.build(cfg.task.name, cfg.task.kwargs, "task.kwargs").fn
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
            autocast=self.precision.autocast,
        )
        self.aepo = AEPOSampler(r.aepo) if r.aepo.enabled else None
        empty = format_prompts(self.tokenizer, [""], r.chat_template)[0]
        empty_ids = torch.tensor(self.tokenizer(empty, add_special_tokens=False)["input_ids"])
        self.learner = Learner(cfg, model, self.pipeline, self.precision, empty_ids)
        self.heldout = usable_problems(self.task.heldout_problems(cfg.eval.num_problems), self.tokenizer, limit, "held-out")
        self.step = 0
        self.bad_steps = 0
        self.scorer_health = ScorerHealth(cfg.train.max_consecutive_bad_steps)
        self.metrics = MetricsWriter(self.run_dir / "metrics.jsonl")
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
        """The policy being trained (a PEFT model once LoRA adapters are applied)."""
        return self.learner.model

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, Any]:
        """One full RL step; returns its metrics record."""
        t0 = time.perf_counter()
        rollout = self.rollout.collect(self.model)
        self.scorer_health.update(rollout.failures, _scored(rollout, self.cfg), step=self.step + 1)
        tb = self.learner.prepare(rollout, self.step, rows_may_change=self.aepo is not None)
        verified_reward = float(tb.ctx.rewards.mean())
        record: dict[str, Any] = {"step": self.step + 1, **rollout.stats}
        record.update(self.pipeline.shape_and_estimate(tb.ctx))
        if self.aepo is not None:
            tb, rollout = self._aepo(tb, rollout, record)
        record.update(self.pipeline.prepare(tb.ctx))
        self.engine.sleep()  # a colocated vLLM frees its GPU memory for the update
        update = self.learner.update(tb, self.step)
        self.engine.sync_weights(self.model)  # no-op for the HF engine; vLLM wakes and loads the new weights
        record.update(self.pipeline.after_step(update))
        self.step += 1
        record.update(self._step_metrics(tb, rollout, update, verified_reward, time.perf_counter() - t0))
        self._count_bad_step(update)
        return record

    def _aepo(self, tb: TrainBatch, rollout: RolloutResult, record: dict[str, Any]) -> tuple[TrainBatch, RolloutResult]:
        """AEPO's positive samples replace the first rows; the mixed batch is prepared again."""
        assert self.aepo is not None and tb.ctx.advantages is not None and tb.ctx.rewards is not None
        entropy = float(masked_mean(tb.ctx.old_entropy, tb.ctx.response_mask))
        mixed, stats = self.aepo.augment(self.rollout, self.model, rollout, tb.ctx.rewards, tb.ctx.advantages, entropy)
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
            self.model,
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

    def _checkpoint_state(self) -> dict[str, Any]:
        model = (
            lora_checkpoint_state(self.model, include_base=self._warmstart_steps() > 0)
            if is_peft_model(self.model)
            else self.model.state_dict()
        )
        return {
            "step": self.step,
            "model": model,
            **self.learner.state_dict(),
            **self.rollout.state_dict(),
            "pipeline": self.pipeline.state_dict(),
            "rng": rng_state(),
            "aepo": self.aepo.state_dict() if self.aepo is not None else None,
            "bad_steps": self.bad_steps,
            "scorer_failed_steps": self.scorer_health.all_failed_steps,
            "summary": self.summary,
            "config": self.cfg.model_dump(mode="json"),
        }

    def _restore(self, state: dict[str, Any]) -> None:
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
        self.bad_steps = state.get("bad_steps", 0)
        self.scorer_health.all_failed_steps = int(state.get("scorer_failed_steps", 0))
        self.summary = state.get("summary", {})
        self.step = int(state["step"])

    def save(self) -> Path:
        """Checkpoint this RL step (warm-start checkpoints are dropped once an RL one exists)."""
        path = save_checkpoint(self.ckpt_root, self.step, self._checkpoint_state(), self.cfg.train.keep_checkpoints)
        remove_checkpoints(self.ckpt_root, WARMSTART_PREFIX)
        return path

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
        self.learner.start()
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
            autocast=self.precision.autocast,
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


def _scored(rollout: RolloutResult, cfg: RunConfig) -> int:
    """How many responses the step's scorer saw (every dynamic-sampling round counts)."""
    r = cfg.rollout
    return int(rollout.stats.get("sampling/rounds", 1)) * r.prompts_per_step * r.group_size


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
