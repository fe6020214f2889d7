"""Typed, validated run configuration: YAML files plus dotted command-line overrides.

    rlvr train                                    # embedded default
    rlvr train -c siren                           # a packaged preset (src/rlvr/configs/siren.yaml)
    rlvr train -c my.yaml train.steps=50 algo.advantage=canon algo.advantage.mu=0.7 model=PATH

Every key is checked before any work starts: an unknown key or a bad value raises ConfigError naming
the dotted key and the valid options (and method names/knobs are checked against the registries).
Shorthands: ``model=PATH`` sets ``model.path``; ``task=NAME`` sets ``task.name``; a method given as
a string is ``{name: ...}``; knobs may be written directly under a method (``algo.policy_loss.clip_high``)
instead of under its ``kwargs``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import importlib.metadata
import importlib.resources
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlvr.errors import ConfigError
from rlvr.files import safe_load_unique
from rlvr.registry import REGISTRIES, builtin_catalog


class Strict(BaseModel):
    """Base: unknown keys are errors; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(Strict):
    """The built-in Qwen2-style model built from a config (used when ``model.path`` is empty)."""

    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(512, gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError("model.tiny.hidden_size must be divisible by model.tiny.num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("model.tiny.num_heads must be divisible by model.tiny.num_kv_heads")
        return self


class LoraConfig(Strict):
    """LoRA adapters (PEFT) for the RL phase; ``r`` null or 0 = off (full fine-tuning).

    The warm start still trains the full weights; the reference policy is the adapter-disabled model.
    """

    r: int | None = Field(None, ge=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    merge_on_save: bool = Field(True, description="final_model: merged weights (+ adapter/); false = adapter only")


class ModelConfig(Strict):
    """Policy model: a local Hugging Face directory, or the tiny built-in model when ``path`` is null."""

    path: str | None = None
    kind: Literal["causal", "mdlm"] = Field(
        "causal", description="mdlm: a bidirectional masked diffusion LM decoded by rollout.mdlm (docs/mdlm.md)"
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="compute dtype; bfloat16 = bf16 autocast over fp32 weights and optimizer state"
    )
    gradient_checkpointing: bool = False
    trust_remote_code: bool = Field(
        False, description="run Python code shipped in model.path (auto_map); only for a model directory you trust"
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="attention kernel of the training forward (rlvr's KV-cache sampler has its own)"
    )

    @model_validator(mode="before")
    @classmethod
    def _path_shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class TaskConfig(Strict):
    """Verifiable task by registered name, with its knobs."""

    name: str = "countdown"
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _name_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _known_task(self) -> "TaskConfig":
        from rlvr.tasks.base import tasks

        self.__dict__["kwargs"] = tasks.check_knobs(self.name, self.kwargs, where="task.kwargs")
        return self


class WarmStartConfig(Strict):
    """Short supervised fine-tuning on each problem's worked ``solution`` before RL."""

    steps: int | None = Field(None, ge=0, description="null: 600 for the built-in tiny model, 0 for model.path")
    batch_size: int = Field(64, gt=0)
    lr: float = Field(3e-3, gt=0)
    checkpoint_every: int = Field(100, ge=1, description="warm-start steps between checkpoints (and at the end)")


class AEPOConfig(Strict):
    """AEPO (arXiv 2510.08141): temperature-adjusted positive samples steer entropy to ``target``."""

    enabled: bool = False
    target: float = Field(0.5, ge=0, description="entropy target H* (nats)")
    temperature_high: float = Field(1.2, gt=0)
    temperature_low: float = Field(0.8, gt=0)
    prompt_fraction: float = Field(0.25, gt=0, le=1)
    group_size: int = Field(5, ge=2)
    max_samples: int = Field(60, ge=1)
    adv_threshold: float = 0.05


class VLLMConfig(Strict):
    """The vLLM engine of ``rollout.backend=vllm``, colocated with training on the same GPU(s)."""

    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="share of GPU memory vLLM may take")
    tensor_parallel_size: int = Field(1, ge=1)
    sleep: bool | None = Field(
        None, description="free vLLM's GPU memory during the update (sleep/wake); null = on for CUDA, off on CPU"
    )
    dtype: str = "auto"
    max_model_len: int | None = Field(None, ge=1)
    enforce_eager: bool = True
    trust_remote_code: bool = Field(False, description="let vLLM run Python code shipped in the model directory")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="more vllm.LLM keyword arguments")


class MDLMDecodingConfig(Strict):
    """Masked-diffusion decoding of ``model.kind=mdlm`` (rlvr.rollout.mdlm): tokens committed per step, EOSER."""

    schedule: Literal["ass", "uniform"] = Field(
        "ass", description="ass: step i commits 2^i tokens (log2 max_new_tokens steps); uniform: equal shares"
    )
    steps: int | None = Field(None, ge=1, description="uniform only: number of steps (null = max_new_tokens)")
    block_num: int = Field(1, ge=1, description="ass only: blocks, from the end of sizes 2^p, decoded left to right")
    eos_gamma_min: float | None = Field(
        None, gt=0, le=1, description="EOSER factor on EOS confidence at the first step; null = 0.01 (ass) / 0.4 (uniform)"
    )
    eos_gamma_max: float = Field(1.0, gt=0, le=1, description="EOSER factor the schedule rises to; both 1 = EOSER off")


class AdaptiveTemperatureConfig(Strict):
    """HAPO-H adaptive temperature sampling (arXiv 2509.16591; rlvr.rollout.adaptive_temperature):
    token t is sampled at ``T (1 + tau clip(h^_t, -1, 1))``, ``h^_t`` the normalised entropy of its
    distribution under the previous step's rollout-entropy statistics (rlvr's KV-cache loop only)."""

    enabled: bool = False
    tau: float = Field(0.05, ge=0, lt=1, description="range of the temperature change (official 0.05; Qwen collapses with more)")
    pivot: float = Field(0.8, ge=0, le=1, description="quantile of the log-entropies the normaliser centres on")
    official_sign: bool = Field(False, description="the released code's unsigned h^ below the pivot (see rlvr.algos.hapo_h)")
    logprob_temperature: Literal["sampled", "base"] = Field(
        "sampled",
        description="temperature of the old/current/reference log-probs: sampled = each token's recorded T_t (the "
        "first update is on-policy); base = rollout.temperature, as the official code (verl recomputes at T)",
    )


class CUREConfig(Strict):
    """CURE stage 1, critical-token re-concatenation (official bytedance/CURE; rlvr.rollout.cure): each of
    the ``group_size`` first-pass responses is branched at one of its highest-entropy positions and
    continued ``n2`` times; the group trains on all ``group_size * (1 + n2)`` responses."""

    enabled: bool = False
    n2: int = Field(3, ge=1, description="continuations per first-pass response")
    top_k: int = Field(20, ge=1, description="the branch point is drawn uniformly among this many highest-entropy valid positions")
    min_token_chars: int = Field(
        2, ge=0, description="a branch token must decode (stripped) to at least this many characters (official 2; 0 = any; "
        "a character tokenizer needs 0 or 1)"
    )
    skip_special: bool = Field(True, description="never branch at a special token (EOS included)")
    score: Literal["full", "continuation"] = Field(
        "full", description="what the verifier reads for a continuation: prefix + continuation, or the continuation alone "
        "(official: verl scores the response tokens only, i.e. the continuation)"
    )


class SPAEProbeConfig(Strict):
    """SPAE's step probes (official cii030/SPAE-RL ``inference/probe_mechanism_example.py``; rlvr.rollout.spae),
    run when the advantage is ``spae``: ``samples`` short continuations after ``prompt`` at every step end."""

    samples: int = Field(5, ge=1, description="probe continuations per step end (N)")
    temperature: float = Field(0.6, gt=0)
    max_new_tokens: int = Field(10, ge=1)
    top_logprobs: int = Field(20, ge=1, description="size of each position's log-prob list the probe reads")
    prompt: str = Field("**Final Answer**\n\\boxed{", description="text appended after the step prefix")
    normalise: Literal["official", "geometric"] = Field(
        "official", description="official: exp(sum) / K; geometric: exp(mean) (see rlvr.algos.spae.probe_scores)"
    )


class R3Config(Strict):
    """R^3 replay and reflection (arXiv 2601.19620; rlvr.rollout.r3): in a group whose every response failed,
    the last rows are replaced by a stored success of the same prompt from an earlier step (replay) or, for a
    prompt never solved so far, by a success sampled after the group's failed attempt (reflection). The
    ranking reward is the reward shaper r3_rank."""

    replay: bool = Field(False, description="cross-context replay of earlier successes of the same prompt")
    reflection: bool = Field(False, description="in-context self-reflection on never-solved prompts")
    inject: int = Field(1, ge=1, description="rows replaced per failed group (at most group size - 1)")
    buffer_size: int = Field(
        2, ge=1, description="successes kept per prompt (4 bytes per token, in memory and in every checkpoint); "
        "replay draws inject of them at random"
    )
    reflection_n: int = Field(4, ge=1, description="responses sampled per reflection prompt")
    reflection_prompt: str = Field(
        "\nWait, that answer is wrong. Let me try again.\n", description="text between the failed attempt and the new one"
    )
    reflection_context: Literal["original", "reflection"] = Field(
        "original", description="original: a reflected success trains as a response to the plain prompt (off-policy); "
        "reflection: it trains after the failed attempt and the reflection text it was sampled from"
    )
    reflect_min_visits: int = Field(1, ge=1, description="visits (this one included), all without a success, before reflecting")

    @property
    def enabled(self) -> bool:
        return self.replay or self.reflection


class RolloutConfig(Strict):
    """Generation of ``group_size`` responses for each of ``prompts_per_step`` prompts."""

    @model_validator(mode="after")
    def _rollout_components(self) -> "RolloutConfig":
        if self.recover_overflow and not self.dynamic_sampling:
            raise ValueError("rollout.recover_overflow keeps dynamic sampling's overflow groups: set rollout.dynamic_sampling=true")
        if self.adaptive_temperature.enabled:
            if self.backend != "hf" or not self.kv_decode:
                raise ValueError(
                    "rollout.adaptive_temperature needs rlvr's KV-cache sampling loop (rollout.backend=hf, rollout.kv_decode=true): "
                    "transformers generate and vLLM sample a row at one temperature"
                )
            if self.aepo.enabled:
                raise ValueError("rollout.adaptive_temperature and rollout.aepo both set the sampling temperature; enable one")
        if self.cure.enabled and self.aepo.enabled:
            raise ValueError("rollout.cure and rollout.aepo both rebuild the step's groups; enable one")
        if self.r3.enabled and (self.cure.enabled or self.aepo.enabled or self.adaptive_temperature.enabled):
            raise ValueError(
                "rollout.r3 rebuilds the rows of failed groups without per-token records: "
                "turn off rollout.cure, rollout.aepo and rollout.adaptive_temperature"
            )
        if self.r3.enabled and self.r3.inject >= self.group_size:
            raise ValueError(
                f"rollout.r3.inject ({self.r3.inject}) must be below rollout.group_size ({self.group_size}): "
                "a repaired group keeps at least one of its own failed responses"
            )
        return self

    backend: Literal["hf", "vllm"] = "hf"
    kv_decode: bool = Field(
        True, description="hf backend: rlvr's preallocated-KV sampling loop for Llama/Qwen models; false = transformers generate"
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    group_size: int = Field(8, ge=1)
    prompts_per_step: int = Field(16, ge=1)
    shards: int | None = Field(
        None,
        ge=1,
        description="the step's groups are sampled in this many shards, each with its own seed; null = the "
        "world size of the run that starts (saved, so a resumed run samples the same whatever its world size)",
    )
    max_new_tokens: int = Field(16, ge=1)
    max_prompt_tokens: int = Field(1024, ge=1, description="longer training prompts are skipped and counted")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    chat_template: Literal["auto", "on", "off"] = "auto"
    dynamic_sampling: bool = Field(False, description="DAPO: keep only groups with varying scores, refill")
    max_sampling_rounds: int = Field(10, ge=1, description="generation rounds per step with dynamic_sampling")
    recover_overflow: bool = Field(
        False, description="Confucius3-Math RSR: informative groups that did not fit into the batch come first next step"
    )
    aepo: AEPOConfig = Field(default_factory=AEPOConfig)
    adaptive_temperature: AdaptiveTemperatureConfig = Field(default_factory=AdaptiveTemperatureConfig)
    cure: CUREConfig = Field(default_factory=CUREConfig)
    spae: SPAEProbeConfig = Field(default_factory=SPAEProbeConfig)
    r3: R3Config = Field(default_factory=R3Config)
    mdlm: MDLMDecodingConfig = Field(default_factory=MDLMDecodingConfig)


ROLLOUT_METHODS = ("dynamic_sampling", "recover_overflow", "aepo", "adaptive_temperature", "cure", "spae", "r3")
"""``rollout.*`` keys that switch on a rollout-stage method (listed by ``rlvr methods``)."""


def rollout_methods() -> list[tuple[str, str, str]]:
    """``(config key, summary, knobs)`` of each rollout-stage method, from the config's own descriptions."""
    out = []
    for key in ROLLOUT_METHODS:
        field = RolloutConfig.model_fields[key]
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            summary = " ".join((annotation.__doc__ or "").split())
            knobs = ", ".join(f"{k}={v.default!r}" for k, v in annotation.model_fields.items())
        else:
            summary, knobs = field.description or "", f"{key}={field.default!r}"
        out.append((f"rollout.{key}", summary, knobs))
    return out


class MethodConfig(Strict):
    """A registered method by name with its knobs (``kwargs``)."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict):
            knobs = {k: v for k, v in value.items() if k not in ("name", "kwargs")}
            if knobs:
                merged = dict(value.get("kwargs") or {})
                merged.update(knobs)
                return {"name": value.get("name"), "kwargs": merged}
        return value


class AlgoConfig(Strict):
    """The method pipeline: reward shaping -> advantage -> token weights -> policy loss + regularizers."""

    advantage: MethodConfig = Field(default_factory=lambda: MethodConfig(name="grpo"))
    policy_loss: MethodConfig = Field(default_factory=lambda: MethodConfig(name="ppo_clip"))
    agg_mode: str = "token-mean"
    reward_shaping: list[MethodConfig] = Field(default_factory=list)
    token_weights: list[MethodConfig] = Field(default_factory=list)
    regularizers: list[MethodConfig] = Field(default_factory=list)
    controllers: list[MethodConfig] = Field(default_factory=list)

    @field_validator("agg_mode")
    @classmethod
    def _agg_mode(cls, value: str) -> str:
        modes = builtin_catalog().get("agg_modes") or [value]
        if value not in modes:
            raise ValueError(f"'{value}' is not a loss aggregation mode; valid: {', '.join(modes)}")
        return value

    @model_validator(mode="after")
    def _known_methods(self) -> "AlgoConfig":
        """Method names, knob names and knob values, checked against the registries (no torch import)."""
        for method, stage, where in self.methods():
            method.__dict__["kwargs"] = REGISTRIES[stage].check_knobs(method.name, method.kwargs, where)
        return self

    def methods(self) -> list[tuple[MethodConfig, str, str]]:
        """Every configured method with its registry stage and its dotted config key."""
        out = [(self.advantage, "advantage", "algo.advantage"), (self.policy_loss, "policy_loss", "algo.policy_loss")]
        lists = {"reward_shaping": "reward", "token_weights": "token_weight", "regularizers": "regularizer", "controllers": "controller"}
        for attr, stage in lists.items():
            out.extend((m, stage, f"algo.{attr}[{i}]") for i, m in enumerate(getattr(self, attr)))
        return out


class TrainConfig(Strict):
    """Optimisation: PPO epochs over mini-batches, gradient accumulation over micro-batches."""

    steps: int = Field(150, ge=0)
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N")
    strategy: Literal["replicate", "fsdp2"] = Field(
        "replicate",
        description="under torchrun: replicate = full model per rank, gradients summed by all-reduce; "
        "fsdp2 = FSDP2 fully_shard (parameters, gradients and optimizer state sharded)",
    )
    collective_timeout_s: float = Field(
        600.0, gt=0, description="under torchrun: a collective waiting longer fails (a dead rank never hangs the rest)"
    )
    lr: float = Field(2e-4, gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="after warmup: constant, or linear / cosine decay to min_lr_ratio * lr at train.steps"
    )
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = Field(0, ge=0, description="steps of linear warmup from lr / warmup_steps to lr")
    ppo_epochs: int = Field(1, ge=1)
    mini_batch_size: int | None = Field(64, ge=1, description="sequences per optimizer update; null = whole batch")
    micro_batch_size: int = Field(64, ge=1)
    shuffle: Literal["rows", "groups"] = Field(
        "rows", description="groups: mini/micro-batches hold whole groups (needed by drpo)"
    )
    grad_clip: float = Field(1.0, gt=0)
    logprob_chunk_size: int = Field(1024, ge=1)
    old_forward: Literal["auto", "always"] = Field(
        "auto",
        description="auto: with one optimizer update per rollout and only the loss reading old log-probs, "
        "reuse the update forward's detached log-probs instead of a separate no-grad forward",
    )
    checkpoint_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.match(r"^(auto|cpu|cuda(:\d+)?)$", value):
            raise ValueError(f"'{value}' is not a device; use auto, cpu, cuda or cuda:N")
        if value.startswith("cuda"):  # only then is torch imported to look
            from rlvr.train.device import check_device_available

            check_device_available(value)
        return value
    max_consecutive_bad_steps: int = Field(3, ge=1)
    reward_timeout_s: float = Field(10.0, gt=0)


class EvalConfig(Strict):
    """Held-out evaluation: greedy accuracy and pass@k from ``samples`` sampled responses."""

    every: int = Field(50, ge=1)
    num_problems: int = Field(128, ge=1)
    samples: int = Field(8, ge=1)
    pass_k: list[int] = Field(default_factory=lambda: [1, 4, 8])
    temperature: float = Field(1.0, gt=0)
    report: bool = Field(True, description="write report.md/.html and plots at the end of the run")

    @model_validator(mode="after")
    def _k_within_samples(self) -> "EvalConfig":
        bad = [k for k in self.pass_k if k < 1 or k > self.samples]
        if bad:
            raise ValueError(f"eval.pass_k values {bad} must be between 1 and eval.samples={self.samples}")
        return self


class LoggingConfig(Strict):
    """Where metrics go: ``metrics.jsonl`` always (resume and reports read it), plus TensorBoard / wandb.

    Every backend receives the records of ``metrics.jsonl``. ``completions_every`` N > 0 writes the
    step's samples (prompt, response, reward, length) every N steps to ``completions.jsonl`` and as a
    table to the backends that have one. When stdout is not a terminal (nohup, SLURM, ``> file``) one
    plain progress line is printed every ``progress_every`` steps.
    """

    backends: list[Literal["jsonl", "tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["jsonl"], description="jsonl is always written; tensorboard and wandb add to it"
    )
    wandb_project: str = "rlvr"
    wandb_mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: no network; upload later with `wandb sync`"
    )
    completions_every: int = Field(0, ge=0, description="log the step's sampled completions every N steps; 0 = off")
    progress_every: int = Field(10, ge=1, description="steps between plain progress lines when stdout is not a terminal")

    @field_validator("backends")
    @classmethod
    def _jsonl_first(cls, value: list[str]) -> list[str]:
        return ["jsonl", *dict.fromkeys(b for b in value if b != "jsonl")]


class RewardConfig(Strict):
    """The training reward: the task's verifier plus plain Python reward functions (TRL's ``reward_funcs``).

    ``reward = verifier_weight * verifier score + sum_k weights[k] * funcs[k](...)``; see
    :mod:`rlvr.tasks.reward_funcs` for how the functions are called and protected. Each path is
    imported (and checked to be callable) when the config loads.
    """

    funcs: list[str] = Field(
        default_factory=list, description="reward functions by import path (pkg.module:fn), called on batches"
    )
    weights: list[float] | None = Field(None, description="one weight per function in reward.funcs; null = all 1.0")
    verifier: bool = Field(True, description="include the task's verifier score; accuracy is then its score >= 1")
    verifier_weight: float = 1.0
    timeout_s: float = Field(60.0, gt=0, description="seconds one batch call of a reward function may take")

    @field_validator("funcs", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _loadable(self) -> "RewardConfig":
        from rlvr.tasks.reward_funcs import RewardFunc

        if self.weights is not None and len(self.weights) != len(self.funcs):
            raise ValueError(f"reward.weights has {len(self.weights)} values for {len(self.funcs)} reward.funcs")
        if not all(math.isfinite(w) for w in [*(self.weights or []), self.verifier_weight]):
            raise ValueError("reward.weights and reward.verifier_weight must be finite numbers")
        if not self.verifier and not self.funcs:
            raise ValueError("reward.verifier=false leaves no reward: name at least one function in reward.funcs")
        names = [RewardFunc.from_path(path, where=f"reward.funcs[{i}]").name for i, path in enumerate(self.funcs)]
        if len(set(names)) != len(names) or "verifier" in names:
            raise ValueError(f"reward.funcs: the functions' names (metrics reward/func_<name>) must be distinct, got {names}")
        return self


class RunConfig(Strict):
    """A whole run."""

    @model_validator(mode="after")
    def _whole_groups_per_shard(self) -> "RunConfig":
        shards = self.rollout.shards
        if shards is not None and self.rollout.prompts_per_step % shards:
            raise ValueError(
                f"rollout.prompts_per_step ({self.rollout.prompts_per_step}) must be a multiple of rollout.shards ({shards})"
            )
        return self

    @model_validator(mode="after")
    def _mdlm_rollout(self) -> "RunConfig":
        if self.model.kind == "mdlm":
            r = self.rollout
            if r.backend != "hf":
                raise ValueError("model.kind=mdlm samples with rlvr's masked-diffusion decoder: set rollout.backend=hf")
            if r.top_p < 1 or r.top_k:
                raise ValueError("model.kind=mdlm samples the full distribution: set rollout.top_p=1 and rollout.top_k=0")
            if r.cure.enabled or r.adaptive_temperature.enabled or r.r3.enabled:
                raise ValueError(
                    "model.kind=mdlm: rollout.cure, rollout.adaptive_temperature and rollout.r3 need an autoregressive sampler"
                )
            from rlvr.rollout.diffusion_schedule import decoding_schedule

            try:
                decoding_schedule(r.max_new_tokens, **r.mdlm.model_dump())
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _group_aligned_batches(self) -> "RunConfig":
        if self.train.shuffle == "groups":
            n = self.rollout.group_size
            for key in ("mini_batch_size", "micro_batch_size"):
                value = getattr(self.train, key)
                if value is not None and value % n:
                    raise ValueError(
                        f"train.shuffle=groups needs train.{key} ({value}) to be a multiple of rollout.group_size ({n})"
                    )
        return self

    seed: int = 0
    output_dir: str = "runs/default"
    plugins: list[str] = Field(
        default_factory=list,
        description="modules imported before the config is checked (they register tasks, methods); see load_plugins",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    warmstart: WarmStartConfig = Field(default_factory=WarmStartConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)

    @field_validator("plugins", mode="before")
    @classmethod
    def _one_plugin(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


def packaged_config_names() -> list[str]:
    """Names of the preset YAML files shipped in ``rlvr/configs``."""
    root = importlib.resources.files("rlvr") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def read_config_file(name_or_path: str) -> dict[str, Any]:
    """Raw mapping from a YAML path or a packaged preset name."""
    path = Path(name_or_path)
    if path.is_file():
        text = path.read_bytes()
    else:
        packaged = importlib.resources.files("rlvr") / "configs" / f"{name_or_path}.yaml"
        if not packaged.is_file():
            raise ConfigError(
                f"config '{name_or_path}' is neither a file nor a packaged preset; "
                f"presets: {', '.join(packaged_config_names())}"
            )
        text = packaged.read_text()
    try:
        data = safe_load_unique(text, name_or_path) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config '{name_or_path}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config '{name_or_path}' must be a mapping of keys to values")
    return data


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _valid_keys_at(path: list[str]) -> list[str]:
    """Field names of the config section at ``path`` (for 'did you mean' messages)."""
    model: Any = RunConfig
    for part in path:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = field.annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def apply_override(data: dict[str, Any], override: str) -> dict[str, Any]:
    """Set ``a.b.c=value`` (value parsed as YAML) in the raw mapping ``data``."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key.sub=value (e.g. train.steps=20)")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{override}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    out = dict(data)
    node: Any = out
    for part in parts[:-1]:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override '{override}': index '{part}' is out of range for a list of {len(node)}")
            child = node[int(part)]
        else:
            child = node.get(part)
        if isinstance(child, str):  # shorthand such as model=PATH or algo.advantage=canon
            child = {"path": child} if part == "model" else {"name": child}
        child = list(child) if isinstance(child, list) else dict(child) if isinstance(child, dict) else {}
        if isinstance(node, list):
            node[int(part)] = child
        else:
            node[part] = child
        node = child
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override '{override}': index '{last}' is out of range for a list of {len(node)}")
        node[int(last)] = value
    else:
        node[last] = value
    return out


_VALIDATOR_LOC = re.compile(r"^function-(after|before|wrap|plain)\[")
"""pydantic's location entries for validator functions (not keys a user wrote)."""


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        raised = (err.get("ctx") or {}).get("error")
        if isinstance(raised, ConfigError):  # already names its dotted key (e.g. a method knob)
            lines.append(str(raised))
            continue
        raw = [str(p) for p in err["loc"]]
        if err["type"] == "extra_forbidden":  # the last entry is the key the user wrote, whatever it is
            raw, name = raw[:-1], raw[-1]
        loc = [p for p in raw if not _VALIDATOR_LOC.match(p)]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent, loc = loc, [*loc, name]
            valid = _valid_keys_at(parent)
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean '{'.'.join(parent + close)}'?)" if close else ""
            msg = f"unknown key{hint}; valid keys here: {', '.join(valid)}"
        dotted = ".".join(loc)
        named = not dotted or msg.startswith((f"{dotted}.", f"{dotted} ", f"{dotted}="))  # the message names its key
        lines.append(msg if named else f"{dotted}: {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)


PLUGIN_GROUP = "rlvr.plugins"
"""Entry-point group of installed plug-ins, loaded by every config load (``RLVR_NO_PLUGIN_AUTOLOAD=1`` skips them)."""
_LOADED_ENTRY_POINTS: set[tuple[str, str]] = set()


def _listed(data: dict[str, Any], key: str) -> list[str]:
    """The strings at dotted ``key`` of a raw config mapping (one string is a list of one; anything else: none)."""
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, str):
        return [node]
    return [x for x in node if isinstance(x, str)] if isinstance(node, list) else []


def import_plugin(name: str) -> None:
    """Import the module ``name`` (it registers tasks, methods, ...); ConfigError naming it when that fails."""
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise ConfigError(f"plugins: '{name}' is not a module name; write pkg.module (a module on the Python path)")
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any error in the user's module is reported with its name
        raise ConfigError(f"plugins: cannot import plugin '{name}': {type(exc).__name__}: {exc}") from None


def load_entry_point_plugins() -> None:
    """Load each installed ``rlvr.plugins`` entry point once; one that points at a function is called.

    Entry points come from installed distributions (trusted like any installed package); set
    ``RLVR_NO_PLUGIN_AUTOLOAD=1`` to skip them.
    """
    if os.environ.get("RLVR_NO_PLUGIN_AUTOLOAD"):
        return
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        if (ep.name, ep.value) in _LOADED_ENTRY_POINTS:
            continue
        dist = getattr(ep.dist, "name", None)
        try:
            hook = ep.load()
            if inspect.isfunction(hook):
                hook()
        except Exception as exc:  # noqa: BLE001 - reported with the entry point and its distribution
            source = f" of distribution '{dist}'" if dist else ""
            raise ConfigError(
                f"plugins: entry point '{ep.name} = {ep.value}'{source} (group {PLUGIN_GROUP}) failed: {type(exc).__name__}: {exc}"
            ) from None
        _LOADED_ENTRY_POINTS.add((ep.name, ep.value))


def load_plugins(data: dict[str, Any]) -> None:
    """The installed entry-point plug-ins, then each module named in the raw config's ``plugins``.

    Runs before validation, since task and method names in the config may refer to them.
    """
    load_entry_point_plugins()
    for name in _listed(data, "plugins"):
        import_plugin(name)


def _layered(data: dict[str, Any], config: str | None, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``data`` <- the YAML file or preset ``config`` <- the dotted ``overrides``."""
    if config:
        data = _deep_merge(data, read_config_file(config))
    for override in overrides:
        data = apply_override(data, override)
    return data


def load_config(config: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults <- YAML file/preset <- dotted overrides, plug-ins imported (:func:`load_plugins`), validated."""
    data = _layered(RunConfig().model_dump(mode="python"), config, overrides)
    load_plugins(data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    except ConfigError as exc:
        raise ConfigError(f"invalid config:\n  {exc}") from None


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (what ``rlvr config show`` prints and each run saves)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


RESUME_LOCKED = (
    "seed",
    "rollout.shards",
    "model",
    "task",
    "warmstart",
    "algo",
    "rollout.group_size",
    "rollout.prompts_per_step",
    "rollout.temperature",
    "rollout.top_p",
    "rollout.top_k",
    "rollout.dynamic_sampling",
    "rollout.max_sampling_rounds",
    "rollout.recover_overflow",
    "rollout.aepo",
    "rollout.adaptive_temperature",
    "rollout.cure",
    "rollout.spae",
    "rollout.r3",
    "rollout.mdlm",
    "train.mini_batch_size",
    "train.ppo_epochs",
    "train.shuffle",
    "reward.funcs",
    "reward.weights",
    "reward.verifier",
    "reward.verifier_weight",
)
"""Config keys a resumed run may not change without ``--force``: they change the algorithm, the model
or the batch shape, so the continued run would no longer be the run its checkpoints belong to."""


TRUST_KEYS = ("model.trust_remote_code", "rollout.vllm.trust_remote_code")
"""Settings that let a model directory run its own code. On resume they are honoured only when the
command line (or -c file) sets them again, never from a run directory's saved config.yaml alone,
which may come from someone else (docs/security.md)."""


CODE_KEYS = ("plugins", "reward.funcs")
"""Settings that name Python code to import. On resume, code named only in the run directory's
config.yaml is not imported: the command line (or -c file) must name it again (docs/security.md)."""


def _named_code(data: dict[str, Any]) -> set[tuple[str, str]]:
    """``(key, import path)`` for each entry of the :data:`CODE_KEYS` lists of a raw config mapping."""
    return {(key, name) for key in CODE_KEYS for name in _listed(data, key)}


def _trusting(data: dict[str, Any]) -> set[str]:
    """The :data:`TRUST_KEYS` that a raw config mapping switches on."""
    on = set()
    for key in TRUST_KEYS:
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is True:
            on.add(key)
    return on


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data and not (prefix.endswith("kwargs") or prefix.startswith("algo.")):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def locked_changes(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys under :data:`RESUME_LOCKED` whose values differ between two dumped configs."""
    before, after = _flatten(saved), _flatten(new)
    default = _flatten(RunConfig().model_dump(mode="json"))  # a key added since ``saved`` was written has its default
    keys = sorted(set(before) | set(after))
    locked = [k for k in keys if any(k == p or k.startswith(f"{p}.") for p in RESUME_LOCKED)]
    return [k for k in locked if before.get(k, default.get(k)) != after.get(k, default.get(k))]


def check_resume_changes(saved: dict[str, Any], new: dict[str, Any], source: str) -> None:
    """ConfigError naming every locked key (:data:`RESUME_LOCKED`) that ``new`` changes from ``saved``."""
    changed = locked_changes(saved, new)
    if changed:
        before, after = _flatten(saved), _flatten(new)
        shown = "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed)
        raise ConfigError(
            f"--resume would change what the run in {source} trains ({shown}): these keys change the algorithm, "
            "the model or the batch shape. Drop those overrides, or pass --force to continue anyway"
        )


def load_resume_config(
    config: str | None = None, overrides: list[str] | tuple[str, ...] = (), force: bool = False
) -> RunConfig:
    """The configuration of a resumed run: ``<output_dir>/config.yaml`` <- YAML file <- overrides.

    ``output_dir`` is found from the file and overrides (default ``runs/default``). The saved file is
    the run's own resolved config, so the run continues with the method it started with; changes
    to :data:`RESUME_LOCKED` keys are refused unless ``force``.
    """
    data = _layered(RunConfig().model_dump(mode="python"), config, overrides)
    run_dir = Path(str(data.get("output_dir") or RunConfig().output_dir))
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            f"--resume: {run_dir} holds no run (no config.yaml); run without --resume to start one, "
            "or set output_dir to the run to continue"
        )
    requested, requested_code = _trusting(data), _named_code(data)
    data = read_config_file(str(saved))
    unconfirmed_code = _named_code(data) - requested_code
    if unconfirmed_code:
        keys = sorted({key for key, _ in unconfirmed_code})
        again = " ".join(f"{key}=[{','.join(_listed(data, key))}]" for key in keys)
        names = ", ".join(f"{key}: {name}" for key, name in sorted(unconfirmed_code))
        raise ConfigError(
            f"--resume: {saved} names Python code to import ({names}); a run directory may come from someone "
            f"else, so rlvr imports it only when the command line names it again. Read that code, then resume with {again}"
        )
    unconfirmed = _trusting(data) - requested
    if unconfirmed:
        keys = ", ".join(sorted(unconfirmed))
        raise ConfigError(
            f"--resume: {saved} switches on {keys}, which runs code from the model directory; a run directory "
            f"may come from someone else, so confirm it on the command line ({' '.join(k + '=true' for k in sorted(unconfirmed))}) "
            "or set it to false"
        )
    data = _layered(data, config, overrides)
    load_plugins(data)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{saved} with the command line: " + _format_validation_error(exc)) from None
    if not force:
        try:
            saved_cfg = RunConfig.model_validate(read_config_file(str(saved))).model_dump(mode="json")
        except ValidationError as exc:
            raise ConfigError(f"{saved}: " + _format_validation_error(exc)) from None
        check_resume_changes(saved_cfg, cfg.model_dump(mode="json"), str(saved))
    return cfg
